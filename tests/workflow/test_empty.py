"""Nothing found is a result, not a crash.

A recording of pure noise sorts to an empty result every reader opens; a
recording too short for the stages is refused before any job, a short one
finishes; NaN samples in a float recording are zeroed with a warning.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from .conftest import run_snakemake, write_small_recording

pytestmark = pytest.mark.workflow


def _read_tsv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def sorted_noise(tmp_path_factory):
    """16 channels, 4 s of noise; two ground-truth units far below the noise (SNR 0.3)."""
    folder = tmp_path_factory.mktemp("noise")
    table = write_small_recording(folder, name="noise", n_channels=16, duration_s=4.0,
                                  n_units=2, seed=1, snr_min=0.3, snr_max=0.3)
    run_snakemake(folder, "--cores", "2", config={"recordings": table})
    return folder, table


def test_pure_noise_sorts_to_an_empty_result(sorted_noise):
    work, _ = sorted_noise
    out = work / "results" / "noise"
    with h5py.File(out / "sorting.h5", "r") as f:
        assert len(f["spikes"]) == 0 and len(f["units"]) == 0
        assert f["templates"].shape[0] == 0 and f["templates"].ndim == 3
    with h5py.File(out / "templates.h5", "r") as f:
        dropped = f["cluster_dropped"][()]
        assert len(dropped) == f.attrs["n_clusters"]

    header, rows = _read_tsv(out / "metrics.tsv")
    assert header[:2] == ["unit_index", "n_spikes"] and rows == []
    # Ground truth exists: every ground-truth unit is scored, none matched.
    header, rows = _read_tsv(out / "ground_truth.tsv")
    assert "accuracy" in header and len(rows) == 2
    assert all(float(r["accuracy"]) == 0 and r["matched_unit"] == "-1" for r in rows)


def test_empty_phy_folder_opens_with_zero_units(sorted_noise):
    import spikeinterface.extractors as se

    phy = sorted_noise[0] / "results" / "noise" / "phy"
    assert se.read_phy(phy).get_num_units() == 0
    assert se.read_kilosort(phy).get_num_units() == 0
    for name, shape in (("spike_times.npy", (0,)), ("spike_templates.npy", (0,)),
                        ("amplitudes.npy", (0,)), ("similar_templates.npy", (0, 0))):
        assert np.load(phy / name).shape == shape, name
    assert np.load(phy / "templates.npy").shape[0] == 0
    assert np.load(phy / "pc_features.npy").shape[0] == 0

    from phylib.io.model import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = load_model(phy / "params.py")
        except ValueError as exc:
            # phylib (<= 2.7.1) takes np.max of the spike arrays on loading:
            # it cannot open any folder without spikes (not ours to fix).
            assert "zero-size array" in str(exc)
        else:
            assert model.n_spikes == 0 and len(model.cluster_ids) == 0
    log = (sorted_noise[0] / "results" / "noise" / "logs" / "export_phy.log").read_text()
    assert "phy folder is empty" in log


def test_empty_nwb_units_table(sorted_noise):
    from pynwb import NWBHDF5IO

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(sorted_noise[0] / "results" / "noise" / "sorting.nwb"), "r") as io:
            units = io.read().units
            assert units is not None and len(units) == 0
            assert "spike_times" in units.colnames


def test_report_says_why_there_is_no_unit(sorted_noise):
    work, table = sorted_noise
    out = work / "results" / "noise"
    page = (out / "report" / "metrics.html").read_text(encoding="utf-8")
    assert "0 units, 0 spikes" in page
    why = re.search(r"No unit: [^<]*", page).group(0)
    assert any(s in why for s in ("no spike detected", "no cluster formed",
                                  "no cluster passed the template tests"))
    assert why in (out / "logs" / "report_overview.log").read_text()
    # The whole HTML report builds from the empty result.
    report = work / "report.html"
    run_snakemake(work, "--report", str(report), config={"recordings": table})
    assert "probe map" in report.read_text(encoding="utf-8")


def test_half_second_finishes_and_a_too_short_recording_is_refused(tmp_path):
    table = write_small_recording(tmp_path / "ok", name="short", n_channels=16,
                                  duration_s=0.5, n_units=3, seed=2)
    run_snakemake(tmp_path / "ok", "--cores", "2", config={"recordings": table})
    assert (tmp_path / "ok" / "results" / "short" / "sorting.h5").exists()

    # 2 ms: less than one waveform window (2.5 ms): refused before any job.
    folder = tmp_path / "tiny"
    table = write_small_recording(folder, name="tiny", n_channels=16, duration_s=0.002,
                                  n_units=0, seed=2)
    proc = run_snakemake(folder, "--cores", "2", config={"recordings": table}, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert str(folder / "tiny.bin") in output
    assert "lasts 2 ms (60 samples at 30000 Hz); expected at least 2.53333 ms (76 samples)" in output
    assert not (folder / "results").exists()


def test_nan_samples_are_zeroed_with_a_warning(tmp_path):
    table = write_small_recording(tmp_path, name="nan", n_channels=16, duration_s=4.0,
                                  n_units=3, seed=3)
    row = next(csv.DictReader(open(table), delimiter="\t"))
    volts = np.fromfile(row["path"], dtype=np.int16).reshape(-1, 16).astype(np.float32)
    volts *= float(row["gain_to_uv"])
    volts[1000:1010, 5] = np.nan
    path = tmp_path / "nan.f32"
    volts.tofile(path)
    lines = table.read_text().splitlines()
    cells = lines[1].split("\t")
    cells[1], cells[5], cells[7] = str(path), "float32", "1.0"  # path, dtype, gain_to_uv
    table.write_text("\n".join([lines[0], "\t".join(cells)]) + "\n")

    run_snakemake(tmp_path, "--cores", "2", config={"recordings": table})
    out = tmp_path / "results" / "nan"
    (log,) = (out / "logs" / "preprocess").iterdir()  # it filters its chunk
    assert ("channel 5: 10 NaN/inf raw samples replaced by 0 before filtering, the first at "
            "sample 1000") in log.read_text()
    page = (out / "report" / "metrics.html").read_text(encoding="utf-8")
    assert ("10 NaN/inf raw samples replaced by 0 before filtering (channel 5: 10, the first "
            "at sample 1000)") in page
    with h5py.File(out / "sorting.h5", "r") as f:
        assert np.isfinite(f["templates"][()]).all()
