"""Fast checks of the peer benchmark's own machinery (no sorter runs).

.venv/bin/python -m pytest -q -p no:cacheprovider benchmarks/peers/test_peers.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import run_measured  # noqa: E402
from recordings import (
    RecordingSpec,
    make_probe,
    neuropixels_positions,
    sorting_from_arrays,
    unit_snr,
)  # noqa: E402
from run_peers import failure_reason, parse_args  # noqa: E402
from scoring import markdown_table, row_from, score_sorting, write_csv  # noqa: E402

FS = 30000.0


def test_run_measured_reports_exit_code_time_and_memory(tmp_path):
    # A child that holds ~300 MB for a moment, prints, and exits with code 3.
    code = (
        "import time, numpy as np; a = np.ones(300 * 2**20 // 8); time.sleep(0.5); "
        "print('hi'); raise SystemExit(3)"
    )
    m = run_measured(
        [sys.executable, "-c", code], log_path=tmp_path / "log.txt", poll_s=0.05
    )
    assert m.returncode == 3
    assert not m.timed_out
    assert m.wall_s >= 0.5
    assert 0 < m.cpu_s < m.wall_s * 2 + 1
    assert 300 <= m.max_process_rss_mb < 1000
    assert m.peak_rss_mb >= m.max_process_rss_mb
    assert (tmp_path / "log.txt").read_text().strip() == "hi"


def test_run_measured_counts_grandchildren_and_kills_on_timeout(tmp_path):
    # The grandchild holds 200 MB and would sleep for a minute.
    inner = "import time, numpy as np; a = np.ones(200 * 2**20 // 8); time.sleep(60)"
    outer = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {inner!r}])"
    m = run_measured(
        [sys.executable, "-c", outer],
        log_path=tmp_path / "log.txt",
        timeout_s=5.0,
        poll_s=0.05,
    )
    assert m.timed_out
    assert m.returncode == -9
    assert m.wall_s < 20
    assert m.peak_rss_mb >= 200


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(poll_s=0.0), "poll_s must be > 0, got 0.0"),
        (dict(timeout_s=-1.0), "timeout_s must be > 0 or None, got -1.0"),
    ],
)
def test_run_measured_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_measured(["true"], log_path=tmp_path / "log.txt", **kwargs)


def test_failure_reason_prefers_the_last_error_line(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text(
        "start\nValueError: first\nmore\nRuntimeError: Motion estimation failed\n\ntail\n"
    )
    assert failure_reason(log) == "RuntimeError: Motion estimation failed"
    log.write_text(
        "Traceback (most recent call last):\nValueError: chunks do not tile\n"
        "CalledProcessError in file rules/detect.smk\nError in rule feature_basis:\n"
        "WorkflowError:\nAt least one job did not complete successfully.\n"
    )
    assert failure_reason(log) == "ValueError: chunks do not tile"
    log.write_text("Error in rule x:\nWorkflowError:\ndone\n")
    assert failure_reason(log) == "WorkflowError:"
    log.write_text("only output\n")
    assert failure_reason(log) == "only output"
    log.write_text("x" * 500)
    assert len(failure_reason(log, max_chars=50)) == 50


def test_unit_snr_uses_each_units_best_channel():
    templates = np.zeros((2, 5, 3))
    templates[0, 2, 1] = -60.0  # unit 0: trough on channel 1
    templates[1, 3, 2] = 40.0  # unit 1: peak on channel 2
    noise = np.array([1.0, 6.0, 10.0])
    np.testing.assert_allclose(unit_snr(templates, noise), [10.0, 4.0])


def test_neuropixels_probe_geometry():
    positions = neuropixels_positions(64)
    assert positions.shape == (64, 2)
    assert set(np.unique(positions[:, 0])) == {0.0, 16.0, 32.0, 48.0}
    assert np.ptp(positions[:, 1]) == 620.0  # 32 rows, 20 µm apart
    assert make_probe(positions).get_contact_count() == 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_channels=4, duration_s=60.0, n_units=5), "n_channels must be in"),
        (
            dict(n_channels=64, duration_s=5.0, n_units=5),
            "duration_s must be >= 20, got 5.0",
        ),
        (
            dict(n_channels=64, duration_s=60.0, n_units=0),
            "n_units must be >= 1, got 0",
        ),
    ],
)
def test_recording_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecordingSpec(**kwargs)


def _planted():
    """Ground truth of 3 units (100 spikes each) and a sorting that finds unit 0
    exactly, unit 1 split in halves, misses unit 2 and adds a noise unit."""
    rng = np.random.default_rng(0)
    times = [
        np.sort(rng.choice(np.arange(1000, 9_000_000, 90), 100, replace=False))
        for _ in range(3)
    ]
    gt = sorting_from_arrays(
        np.concatenate(times), np.repeat([0, 1, 2], 100), sampling_rate_hz=FS, n_units=3
    )
    noise = 1045 + 90_000 * np.arange(
        100
    )  # >= 45 samples from every ground-truth spike
    sample = np.concatenate([times[0] + 3, times[1][::2], times[1][1::2] + 1, noise])
    label = np.concatenate(
        [np.full(100, 7), np.full(50, 8), np.full(50, 9), np.full(100, 10)]
    )
    return gt, sorting_from_arrays(sample, label, sampling_rate_hz=FS)


def test_score_sorting_on_planted_sortings():
    gt, sorting = _planted()
    score, per_unit = score_sorting(
        gt, sorting, delta_ms=0.4, well_detected_accuracy=0.8
    )
    assert per_unit.shape == (3, 3)
    np.testing.assert_allclose(per_unit[0], [1.0, 1.0, 1.0])  # 3 samples = 0.1 ms off
    np.testing.assert_allclose(per_unit[1], [0.5, 1.0, 0.5])  # best half only
    np.testing.assert_allclose(per_unit[2], [0.0, 0.0, 0.0])
    assert score.n_gt_units == 3 and score.n_sorted_units == 4
    assert score.well_detected == 1
    assert score.mean_accuracy == pytest.approx(0.5)
    assert score.mean_recall == pytest.approx(0.5)
    assert score.false_positive_units == 1  # the noise unit
    assert score.redundant_units == 1  # the second half of unit 1


def test_score_sorting_rejects_bad_arguments():
    gt, sorting = _planted()
    with pytest.raises(ValueError, match="delta_ms must be > 0, got 0"):
        score_sorting(gt, sorting, delta_ms=0)
    with pytest.raises(
        ValueError, match=r"well_detected_accuracy must be in \(0, 1\], got 1.5"
    ):
        score_sorting(gt, sorting, well_detected_accuracy=1.5)


def test_tables_show_failures_with_their_reason(tmp_path):
    gt, sorting = _planted()
    score, _ = score_sorting(gt, sorting)
    rows = [
        row_from("static", "A", "1.0", "ok", score=score),
        row_from("static", "B", "2.0", "failed", note="exit 1: RuntimeError: boom"),
    ]
    table = markdown_table(rows)
    assert "| static | A 1.0 | ok |" in table
    assert "| 1 / 3 | 0.500 |" in table
    assert "| static | B 2.0 | failed | – | – | – |" in table
    assert "- B on static: failed: exit 1: RuntimeError: boom" in table
    write_csv(rows, tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("recording,sorter,version,status,note,wall_s,cpu_s")
    assert lines[2].startswith("static,B,2.0,failed,exit 1: RuntimeError: boom,,")
    assert math.isnan(rows[1].mean_accuracy)


def test_parse_args_validates_choices():
    args = parse_args(["--quick", "--sorters", "shardsort,mountainsort5"])
    assert args.quick and args.sorters == ["shardsort", "mountainsort5"]
    assert args.recordings == ["static", "drifting"]
    with pytest.raises(SystemExit):
        parse_args(["--sorters", "kilosort4"])


# ---------------------------------------------------------------- drift matrix


def test_drift_spec_rejects_bad_values():
    from recordings import DriftSpec

    with pytest.raises(ValueError, match="mode"):
        DriftSpec("sine", 10.0)
    with pytest.raises(ValueError, match="peak_to_peak_um"):
        DriftSpec("zigzag", 0.0)
    with pytest.raises(ValueError, match="non_rigid_gradient"):
        DriftSpec("zigzag", 10.0, non_rigid_gradient=1.5)


def test_linear_drift_is_one_ramp_of_the_planted_range():
    from recordings import DriftSpec, drift_displacement_data

    locations = np.array([[0.0, 100.0], [16.0, 300.0], [32.0, 500.0]])
    unit_disp, vectors, factor, rate, _ = drift_displacement_data(
        DriftSpec("linear", 30.0), 60.0, locations, seed=0
    )
    y = unit_disp[:, :, 1]
    assert y.shape == (300, 3) and rate == 5.0
    assert np.ptp(y[:, 0]) == pytest.approx(30.0)
    assert np.all(np.diff(y[:, 0]) < 0)  # monotone
    np.testing.assert_allclose(y, y[:, :1].repeat(3, axis=1))  # rigid
    # depth-varying: the unit farthest from the tip moves by the gradient's fraction
    unit_disp, *_ = drift_displacement_data(
        DriftSpec("linear", 30.0, non_rigid_gradient=0.5), 60.0, locations, seed=0
    )
    spans = np.ptp(unit_disp[:, :, 1], axis=0)
    np.testing.assert_allclose(spans, [30.0, 22.5, 15.0])  # SpikeInterface: full motion at the tip (y = 0)


def test_drift_error_recovers_sign_and_rms(tmp_path):
    import h5py
    from drift_matrix import bin_planted, drift_error

    rate_d, fs, bin_samples = 5.0, 30000.0, 60000  # 2 s bins
    t = np.arange(600) / rate_d  # 120 s
    planted = 10.0 * np.sin(2 * np.pi * t / 60.0)
    unit_disp = np.zeros((600, 2, 2))
    unit_disp[:, :, 1] = planted[:, None]
    binned = bin_planted(planted[:, None], rate_d, bin_samples / fs, 60)[:, 0]
    assert binned[0] == pytest.approx(planted[:10].mean())
    noise = np.random.default_rng(0).normal(0, 0.5, 60)
    est = -(binned + 3.0) + noise  # opposite sign, offset: removed
    with h5py.File(tmp_path / "motion.h5", "w") as h5:
        h5["displacement_um"] = est[:, None]
        h5["window_centres_um"] = np.array([300.0])
        h5.attrs["bin_samples"] = bin_samples
        h5.attrs["sampling_rate_hz"] = fs
        h5.attrs["apply"] = True
    np.savez(
        tmp_path / "gt.npz",
        unit_displacements=unit_disp,
        displacement_sampling_frequency=rate_d,
        unit_locations_um=np.array([[0.0, 100.0, 20.0], [0.0, 400.0, 20.0]]),
    )
    out = drift_error(tmp_path / "motion.h5", tmp_path / "gt.npz")
    assert out["est_sign"] == -1 and out["est_corr"] < -0.99
    assert out["est_rms_um"] == pytest.approx(np.std(noise), abs=0.05)
    assert out["est_rms_units_um"] == pytest.approx(out["est_rms_um"])
