"""A four-shank probe (NP 2.0 four-shank layout) sorted from the command line.

Four small synthetic recordings (16 channels each, 20 s) sit on the four shanks
of one SpikeGLX ``.ap.bin``/``.meta`` pair (``~snsGeomMap`` gives the shanks).
Each shank has its own drift and its own common-mode noise, so the sort only
does well when the median reference and the drift are taken per shank.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.unit.test_io import np1_meta, write_spikeglx

pytestmark = pytest.mark.workflow

SHARDSORT = str(Path(sys.executable).parent / "shardsort")
NP1_GAIN_UV = 2.34375  # 0.6 V / 512 / gain 500
PER_SHANK = 16
N_SHANKS = 4
UNITS_PER_SHANK = 5
DURATION_S = 20.0
DRIFT_UM = (12.0, 0.0, -12.0, 6.0)  # linear over the recording, per shank
#: Seeds that put at least 3 of a shank's units away from its ends (a unit
#: beyond an end is localized at the edge and says nothing about drift).
SEEDS = (27, 33, 49, 30)
COMMON_UV = 25.0  # white common-mode noise of each shank (rms, full band)


@pytest.fixture(scope="module")
def four_shanks(tmp_path_factory):
    """Sorted results folder, ground truth per shank."""
    from shardsort.synth import SynthParams, ground_truth_arrays, write_recording

    folder = tmp_path_factory.mktemp("four shanks")
    rng = np.random.default_rng(5)
    columns, samples, units, snrs, geom = [], [], [], [], []
    for shank, (drift, seed) in enumerate(zip(DRIFT_UM, SEEDS)):
        params = SynthParams(
            n_channels=PER_SHANK, duration_s=DURATION_S, n_units=UNITS_PER_SHANK,
            seed=seed, gain_to_uv=NP1_GAIN_UV, rate_min_hz=5.0, snr_min=5.0,
            drift_um=drift,
        )
        path = folder / f"shank{shank}.bin"
        write_recording(path, params)
        data = np.fromfile(path, np.int16).reshape(-1, PER_SHANK).astype(np.float64)
        common = rng.normal(0.0, COMMON_UV / NP1_GAIN_UV, len(data))
        columns.append(np.clip(np.rint(data + common[:, None]), -32767, 32767))
        gt = ground_truth_arrays(params)
        samples.append(gt["spike_sample_index"])
        units.append(gt["spike_unit_index"] + shank * UNITS_PER_SHANK)
        snrs.append(gt["snr"])
        geom += [f"({shank}:{x:g}:{y:g}:1)" for x, y in gt["positions_um"]]
    n_channels = PER_SHANK * N_SHANKS
    data = np.hstack(columns + [np.zeros((len(columns[0]), 1))]).astype(np.int16)
    meta = np1_meta(n_channels)
    del meta["~imroTbl"]  # geometry and shanks from ~snsGeomMap
    meta.update({"imSampRate": "30000", "imChan0apGain": "500", "imDatPrb_pn": "NP2014",
                 "~snsGeomMap": f"(NP2014,{N_SHANKS},250,70)" + "".join(geom)})
    bin_path = write_spikeglx(folder / "run_g0", data, meta)
    order = np.argsort(np.concatenate(samples), kind="stable")
    np.savez(folder / "gt.npz", sample_index=np.concatenate(samples)[order],
             unit_index=np.concatenate(units)[order], snr=np.concatenate(snrs))
    out = tmp_path_factory.mktemp("sorted four shanks")
    result = subprocess.run(
        [SHARDSORT, "sort", str(bin_path), "--out", str(out), "--cores", "2",
         "--ground-truth", str(folder / "gt.npz")],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise AssertionError(f"shardsort sort failed:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return out / "results" / "run_g0_t0.imec0"


def test_four_shank_probe_is_referenced_drift_corrected_and_sorted_per_shank(four_shanks):
    results = four_shanks
    logs = results / "logs"
    assert "reference global per shank (4 shanks)" in (
        logs / "preprocess" / "t00000.log").read_text()
    motion_log = (logs / "motion.log").read_text()
    assert "drift correction applied" in motion_log
    for shank in range(N_SHANKS):
        assert f"shank {shank}: 1 window(s)" in motion_log
    assert "per shank (4 shanks)" in (logs / "correct" / "t00000.log").read_text()

    # One rigid displacement per shank, each near its own planted drift.
    with h5py.File(results / "motion" / "motion.h5", "r") as f:
        displacement = f["displacement_um"][()]
        np.testing.assert_array_equal(f["window_shank"][()], np.arange(N_SHANKS))
        assert f["shank_histograms"].shape[0] == N_SHANKS
        time_s = f["time_s"][()]
    assert displacement.shape == (len(time_s), N_SHANKS)
    errors = []
    for shank, drift in enumerate(DRIFT_UM):
        truth = drift * time_s / DURATION_S
        truth -= truth.mean()
        errors.append(float(np.sqrt(np.mean((displacement[:, shank] - truth) ** 2))))
    print("per-shank drift RMS error (um):", np.round(errors, 2).tolist())
    assert max(errors) < 3.0, errors

    with open(results / "ground_truth.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    accuracy = np.array([float(r["accuracy"]) for r in rows])
    print("accuracy per unit:", np.round(accuracy, 2).tolist())
    assert len(rows) == N_SHANKS * UNITS_PER_SHANK
    assert np.mean(accuracy >= 0.8) >= 0.7 and accuracy.mean() >= 0.75, accuracy
