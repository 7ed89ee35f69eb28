"""Drift correction end to end: a recording whose units move 40 µm up the probe.

The recording (32 channels, 36 s, one time chunk) is sorted twice, with
``motion.enabled`` false and true, up to the ground-truth scores; the drift
estimate is compared with the planted drift and the accuracy of the two
sorts with each other.
"""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest

from .conftest import run_snakemake, write_small_recording

pytestmark = pytest.mark.workflow

DRIFT = {"n_channels": 32, "duration_s": 36.0, "n_units": 20, "seed": 7, "drift_um": 40.0}
MOTION_RULES = ("motion_peaks", "motion", "correct")


def _accuracy(workdir):
    with open(workdir / "results" / "drifting" / "ground_truth.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return (np.array([float(r["accuracy"]) for r in rows]),
            np.array([float(r["snr"]) for r in rows]))


@pytest.fixture(scope="module")
def drifting_recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drifting data")
    return write_small_recording(folder, name="drifting", **DRIFT)


@pytest.fixture(scope="module")
def sorted_with_and_without(tmp_path_factory, drifting_recording):
    runs = {}
    for enabled in (False, True):
        work = tmp_path_factory.mktemp(f"motion_{enabled}")
        targets = ["results/drifting/ground_truth.tsv"]
        if enabled:
            targets.append("results/drifting/report/motion.png")
        # Targets cannot follow --config: the recordings table goes in the overrides.
        run_snakemake(
            work, "--cores", "2", *targets,
            overrides={"recordings": str(drifting_recording), "motion": {"enabled": enabled}},
        )
        runs[enabled] = work
    return runs


def test_disabled_motion_leaves_the_dag_unchanged(tmp_path, drifting_recording):
    proc = run_snakemake(tmp_path, "-n", "--cores", "2",
                         config={"recordings": drifting_recording})
    for rule in MOTION_RULES:
        assert f"rule {rule}:" not in proc.stdout, rule
    assert "results/drifting/motion" not in proc.stdout
    assert "input: results/drifting/preprocess/chunks/t00000.bin" in proc.stdout


def test_enabled_motion_feeds_corrected_chunks_to_the_sort(tmp_path, drifting_recording):
    proc = run_snakemake(tmp_path, "-n", "--cores", "2",
                         config={"recordings": drifting_recording},
                         overrides={"motion": {"enabled": True}})
    for rule in MOTION_RULES:
        assert f"rule {rule}:" in proc.stdout, rule
    blocks = proc.stdout.split("\nrule ")
    for rule in ("detect", "template_sums", "deconvolve", "feature_basis"):
        block = next(b for b in blocks if b.startswith(f"{rule}:"))
        assert "results/drifting/motion/chunks/t00000.bin" in block, rule
        assert "preprocess/chunks" not in block, rule


def test_estimated_drift_matches_the_planted_drift(sorted_with_and_without):
    from shardsort.synth import SynthParams, drift_displacement_um

    base = sorted_with_and_without[True] / "results" / "drifting"
    with h5py.File(base / "motion" / "motion.h5", "r") as f:
        displacement = f["displacement_um"][()]
        time_s = f["time_s"][()]
        centres = f["window_centres_um"][()]
    assert displacement.shape == (18, 1)
    truth = drift_displacement_um(SynthParams(**DRIFT), time_s, centres[0])
    error = displacement[:, 0] - (truth - truth.mean())
    assert np.abs(error).max() < 4.0, error.round(1)
    table = (base / "motion" / "displacement.tsv").read_text().splitlines()
    assert table[0].startswith("time_s\tdisplacement_um_at_") and len(table) == 19
    assert (base / "report" / "motion.png").stat().st_size > 0
    for stage in MOTION_RULES:
        assert any((base / "benchmarks").glob(f"{stage}*")), stage
        assert any((base / "logs").glob(f"{stage}*")), stage


def test_correction_sorts_at_least_as_well_as_no_correction(sorted_with_and_without):
    without, snr = _accuracy(sorted_with_and_without[False])
    with_correction, _ = _accuracy(sorted_with_and_without[True])
    strong = snr >= 5
    print(f"accuracy of units with SNR >= 5: without {without[strong].mean():.3f}, "
          f"with correction {with_correction[strong].mean():.3f}")
    assert with_correction[strong].mean() >= without[strong].mean()
    assert with_correction[strong].mean() >= 0.55
    assert np.sum(with_correction >= 0.8) >= np.sum(without >= 0.8)
