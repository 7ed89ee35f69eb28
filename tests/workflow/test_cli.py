"""Real files in, one command: SpikeGLX, NWB and a SpikeInterface recording sorted
end to end through ``shardsort`` (the installed command) and ``run_shardsort``.

One small synthetic recording (32 channels, 10 s) is written three ways; each is
sorted once (module-scoped fixtures) and checked against its ground truth.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_io import np1_meta, write_spikeglx
from tests.unit.test_nwb_io import write_nwb

pytestmark = pytest.mark.workflow

SHARDSORT = str(Path(sys.executable).parent / "shardsort")
#: Microvolts per unit of a Neuropixels 1.0 AP channel at gain 500 (0.6 V / 512 / 500).
NP1_GAIN_UV = 2.34375
N_CHANNELS = 32


def shardsort(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([SHARDSORT, *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"shardsort {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(folder, int16 samples, ground-truth npz, positions) of one recording."""
    from shardsort.synth import SynthParams, ground_truth_arrays, write_recording

    folder = tmp_path_factory.mktemp("cli data")
    params = SynthParams(
        n_channels=N_CHANNELS, duration_s=10.0, n_units=6, seed=11,
        gain_to_uv=NP1_GAIN_UV, rate_min_hz=5.0,
    )
    write_recording(folder / "synth.bin", params)
    data = np.fromfile(folder / "synth.bin", np.int16).reshape(-1, N_CHANNELS)
    gt = ground_truth_arrays(params)
    np.savez(
        folder / "gt.npz",
        sample_index=gt["spike_sample_index"],
        unit_index=gt["spike_unit_index"],
        snr=gt["snr"],
    )
    return folder, data, folder / "gt.npz", gt["positions_um"]


@pytest.fixture(scope="module")
def spikeglx_sorted(synthetic, tmp_path_factory):
    """An NP 1.0 .ap.bin (+ sync channel) and .meta sorted from the command line."""
    folder, data, gt, positions = synthetic
    meta = np1_meta(N_CHANNELS)
    meta["imSampRate"] = "30000"
    meta["~snsGeomMap"] = "(NP1000,1,0,70)" + "".join(
        f"(0:{x:g}:{y:g}:1)" for x, y in positions
    )
    sync = np.zeros((len(data), 1), np.int16)
    bin_path = write_spikeglx(folder / "run_g0", np.hstack([data, sync]), meta)
    out = tmp_path_factory.mktemp("sorted spikeglx")
    shardsort("sort", str(bin_path), "--out", str(out), "--cores", "2",
              "--ground-truth", str(gt))
    return out / "results" / "run_g0_t0.imec0"


@pytest.fixture(scope="module")
def nwb_file(synthetic):
    folder, data, _, positions = synthetic
    return write_nwb(
        folder / "sub-01_ecephys.nwb", data, conversion=NP1_GAIN_UV * 1e-6,
        positions_um=positions,
    )


@pytest.fixture(scope="module")
def nwb_sorted(synthetic, nwb_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sorted nwb")
    shardsort("sort", str(nwb_file), "--out", str(out), "--cores", "2",
              "--ground-truth", str(synthetic[2]))
    return out


@pytest.fixture(scope="module")
def si_sorted(synthetic, tmp_path_factory):
    """(Sorting, results folder) of run_shardsort on a NumpyRecording."""
    from probeinterface import Probe
    from spikeinterface.core import NumpyRecording

    from shardsort.spikeinterface import run_shardsort

    _, data, _, positions = synthetic
    recording = NumpyRecording([data], 30000.0)
    recording.set_channel_gains(NP1_GAIN_UV)
    recording.set_channel_offsets(0.0)
    probe = Probe(ndim=2)
    probe.set_contacts(positions)
    probe.set_device_channel_indices(np.arange(N_CHANNELS))
    recording.set_probe(probe)
    folder = tmp_path_factory.mktemp("sorted si")
    sorting = run_shardsort(recording, folder, n_jobs=2, seed=0)
    return sorting, folder / "results" / "recording"


def accuracy_of_strong_units(results: Path) -> np.ndarray:
    with open(results / "ground_truth.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 6
    return np.array([float(r["accuracy"]) for r in rows if float(r["snr"]) >= 5])


def spikes(results: Path) -> np.ndarray:
    from shardsort.sortingfile import load_sorting

    return load_sorting(results / "sorting.h5")["spikes"]


def test_spikeglx_file_sorts_from_the_command_line(spikeglx_sorted):
    for name in ("sorting.h5", "phy/params.py", "phy/spike_times.npy", "sorting.nwb"):
        assert (spikeglx_sorted / name).is_file(), name
    accuracy = accuracy_of_strong_units(spikeglx_sorted)
    assert accuracy.size >= 3 and accuracy.mean() >= 0.8, accuracy
    table = (spikeglx_sorted.parents[1] / "recordings.tsv").read_text()
    assert "\tspikeglx\t" in table and "\tbinary\t" not in table


def test_nwb_file_checks_and_sorts_from_the_command_line(nwb_sorted, nwb_file, synthetic):
    results = nwb_sorted / "results" / "sub-01_ecephys"
    for name in ("sorting.h5", "phy/params.py", "metrics.tsv"):
        assert (results / name).is_file(), name
    accuracy = accuracy_of_strong_units(results)
    assert accuracy.size >= 3 and accuracy.mean() >= 0.8, accuracy
    # check: the plan from the file's metadata; after the sort nothing is left to run.
    report = shardsort(
        "check", str(nwb_file), "--out", str(nwb_sorted), "--ground-truth", str(synthetic[2])
    ).stdout
    assert f"sub-01_ecephys: nwb {nwb_file}" in report
    assert f"{N_CHANNELS} channels x 300000 samples at 30000 Hz (10.0 s), int16" in report
    assert "geometry from nwb" in report
    assert "nothing to run: the results are up to date" in report
    # report: snakemake --report of that sort, from the run it recorded.
    shardsort("report", "--out", str(nwb_sorted))
    assert (nwb_sorted / "report.html").stat().st_size > 10_000


def test_check_counts_the_jobs_of_a_fresh_sort(nwb_file, tmp_path):
    report = shardsort("check", str(nwb_file), "--out", str(tmp_path)).stdout
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("jobs to run ("))
    counts = {rule: int(n) for rule, n in (line.split() for line in lines[start + 1 :])}
    # One channel shard: the preprocess jobs filter, no filter job.
    assert counts["preprocess"] == counts["detect"] == counts["deconvolve"]
    assert counts["all"] == 1 and counts["preprocess"] >= 1 and "filter" not in counts


def test_run_shardsort_returns_the_phy_spike_trains(si_sorted, nwb_sorted):
    from spikeinterface.extractors import read_phy

    sorting, results = si_sorted
    phy = results / "phy"
    times = np.load(phy / "spike_times.npy").ravel()
    clusters = np.load(phy / "spike_clusters.npy").ravel()
    vector = sorting.to_spike_vector()
    assert len(vector) == len(times) > 0
    order = np.lexsort((clusters, times))
    unit_ids = np.asarray(sorting.get_unit_ids())
    np.testing.assert_array_equal(vector["sample_index"], times[order])
    np.testing.assert_array_equal(unit_ids[vector["unit_index"]], clusters[order])
    from_phy = read_phy(phy)
    assert set(from_phy.get_unit_ids()) == set(unit_ids)
    for unit in unit_ids:
        np.testing.assert_array_equal(
            sorting.get_unit_spike_train(unit), from_phy.get_unit_spike_train(unit)
        )
    # The same samples, gain and probe as the NWB file: the same sort.
    np.testing.assert_array_equal(
        spikes(results), spikes(nwb_sorted / "results" / "sub-01_ecephys")
    )
