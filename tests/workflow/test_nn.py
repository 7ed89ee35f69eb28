"""detect.method: nn end to end on the small generated recording.

A first threshold pass up to templates, the detector and triage networks
trained on the recording (few examples and epochs: seconds), then network
detection, clustering of the clean spikes, templates and deconvolution.
"""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import yaml

from .conftest import copy_tree, dry_run_rules, run_snakemake

pytestmark = pytest.mark.workflow

#: Network detection with a small training set (the defaults take minutes).
NN_FAST = {
    "detect": {"method": "nn"},
    "nn": {"detector_windows": 6000, "triage_snippets": 4000, "epochs": 5},
}
#: The trained sort keeps its intermediates: later tests rerun parts of it.
NN_FAST_KEPT = {**NN_FAST, "keep_intermediates": True}
NN_DEFAULT_MODEL = {"detect": {"method": "nn", "nn_model": "default"}}
PASS1_AND_TRAINING = {
    "detect_pass1",
    "merge_spikes_pass1",
    "cluster_pass1",
    "merge_clusters_pass1",
    "template_sums_pass1",
    "templates_pass1",
    "train_detector",
    "train_triage",
}
PREPROCESSING = {"filter", "noise_stats", "whitening", "preprocess", "feature_basis"}


def _dry_run(workdir, table, overrides=None) -> set[str]:
    proc = run_snakemake(
        workdir,
        "-n",
        "--cores",
        "2",
        "--quiet",
        "rules",
        config={"recordings": table},
        overrides=overrides,
    )
    return dry_run_rules(proc.stdout + proc.stderr)


def _accuracy(workdir):
    with open(workdir / "results" / "small" / "ground_truth.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    acc = np.array([float(r["accuracy"]) for r in rows])
    snr = np.array([float(r["snr"]) for r in rows])
    return acc, snr


@pytest.fixture(scope="module")
def sorted_nn(tmp_path_factory, small_recording):
    """The small recording sorted with networks trained on it."""
    work = tmp_path_factory.mktemp("nn_trained")
    run_snakemake(
        work, "--cores", "2", config={"recordings": small_recording}, overrides=NN_FAST_KEPT
    )
    return work


def test_dry_run_trains_on_a_first_pass_then_detects_again(tmp_path, small_recording):
    rules = _dry_run(tmp_path, small_recording, NN_FAST)
    assert PASS1_AND_TRAINING <= rules, sorted(PASS1_AND_TRAINING - rules)
    assert {"detect_nn", "merge_spikes", "cluster", "templates", "deconvolve"} <= rules
    assert "detect" not in rules  # threshold detection runs as detect_pass1 only


def test_dry_run_with_the_default_model_has_no_first_pass(tmp_path, small_recording):
    rules = _dry_run(tmp_path, small_recording, NN_DEFAULT_MODEL)
    assert "detect_nn" in rules
    assert not rules & PASS1_AND_TRAINING, sorted(rules & PASS1_AND_TRAINING)


def test_threshold_dag_has_no_network_rule(tmp_path, small_recording):
    rules = _dry_run(tmp_path, small_recording)
    assert "detect" in rules
    assert not rules & (PASS1_AND_TRAINING | {"detect_nn"})


def test_nn_sort_is_accurate_on_ground_truth(sorted_nn):
    acc, snr = _accuracy(sorted_nn)
    assert len(acc) == 10
    # As the threshold workflow's test: units clearly above the noise are found.
    strong = snr >= 5
    assert strong.sum() >= 5
    assert np.mean(acc[strong] >= 0.8) >= 0.7, list(zip(snr.round(1), acc.round(2)))


def test_trained_models_and_sidecars(sorted_nn):
    base = sorted_nn / "results" / "small"
    for kind in ("detector", "triage"):
        folder = base / "nn" / kind
        assert sorted(p.name for p in folder.iterdir()) == ["model.keras", "model.yaml"]
        sidecar = yaml.safe_load((folder / "model.yaml").read_text())
        assert sidecar["kind"] == kind
        assert sidecar["sampling_rate_hz"] == 30000.0
        assert sidecar["n_neighbours"] == 7 and len(sidecar["neighbour_offsets_um"]) == 7
        assert sidecar["preprocessing"] == {"whiten": False, "reference": "global"}
        assert sidecar["seed"] == 0
        # Held-out examples: better than chance (the larger class's share).
        metrics = sidecar["metrics"]
        assert metrics["n_validation"] > 0
        assert metrics["validation_accuracy"] > (0.98 if kind == "detector" else 0.7)
        assert metrics["validation_recall"] > 0.5 and metrics["validation_precision"] > 0.5
    assert (base / "logs" / "train_detector.log").stat().st_size > 0
    assert (base / "benchmarks" / "train_triage.tsv").exists()
    for stage in ("detect_pass1", "detect_nn", "cluster_pass1"):
        assert any((base / "benchmarks" / stage).iterdir())
        assert any((base / "logs" / stage).iterdir())


def test_collided_spikes_skip_clustering_but_are_deconvolved(sorted_nn):
    base = sorted_nn / "results" / "small"
    with h5py.File(base / "spikes.h5", "r") as f:
        peaks = f["peaks"][()]
        collided = f["collided"][()]
        probability = f["clean_probability"][()]
    with h5py.File(base / "clusters.h5", "r") as f:
        labels = f["labels"][()]
    with h5py.File(base / "sorting.h5", "r") as f:
        sorted_samples = np.sort(f["spikes"]["sample_index"])
    assert collided.dtype == bool and len(collided) == len(peaks) == len(labels)
    np.testing.assert_array_equal(collided, probability < 0.5)
    assert 0 < collided.sum() < 0.5 * len(collided)
    assert np.all(labels[collided] == -1)
    # Spikes of collided detections are still in the sorting (deconvolution).
    t = peaks["sample_index"][collided & (np.abs(peaks["amplitude"]) > 8)]
    right = np.searchsorted(sorted_samples, t).clip(max=len(sorted_samples) - 1)
    left = (right - 1).clip(min=0)
    distance = np.minimum(
        np.abs(sorted_samples[right] - t), np.abs(sorted_samples[left] - t)
    )
    assert t.size == 0 or np.mean(distance <= 12) >= 0.5


def test_network_detections_are_locally_exclusive_across_chunks(sorted_nn):
    """One spike, one detection: no two within the exclusion window and radius,
    chunk borders included (the threshold detector's exclusion)."""
    base = sorted_nn / "results" / "small"
    with h5py.File(base / "spikes.h5", "r") as f:
        peaks = f["peaks"][()]
    with h5py.File(base / "detect" / "basis.h5", "r") as f:
        mask = f["neighbour_mask"][()].astype(bool)
        exclude = int(f.attrs["exclude_samples"])
    order = np.argsort(peaks["sample_index"], kind="stable")
    t = peaks["sample_index"][order].astype(np.int64)
    c = peaks["channel_index"][order].astype(np.int64)
    assert t.size > 100
    for step in range(1, 64):
        close = t[step:] - t[:-step] <= exclude
        if not close.any():
            break
        pairs = np.flatnonzero(close)
        assert not mask[c[pairs], c[pairs + step]].any(), step


def test_switching_detector_keeps_preprocessing(sorted_nn, small_recording):
    """Back to threshold detection: preprocessing and the PCA basis are reused."""
    rules = _dry_run(sorted_nn, small_recording)
    assert "detect" in rules and "merge_spikes" in rules
    assert not rules & PREPROCESSING, sorted(rules & PREPROCESSING)


def test_training_again_gives_identical_networks(sorted_nn, small_recording, tmp_path):
    from shardsort.nn.training import load_model

    work = tmp_path / "again"
    copy_tree(sorted_nn, work)
    run_snakemake(
        work,
        "--cores",
        "2",
        "--forcerun",
        "train_detector",
        "train_triage",
        "--until",
        "train_detector",
        "train_triage",
        config={"recordings": small_recording},
        overrides=NN_FAST_KEPT,
    )
    for kind in ("detector", "triage"):
        first, _ = load_model(sorted_nn / "results" / "small" / "nn" / kind)
        again, _ = load_model(work / "results" / "small" / "nn" / kind)
        for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_default_model_sorts_without_a_first_pass(tmp_path, small_recording):
    run_snakemake(
        tmp_path,
        "--cores",
        "2",
        config={"recordings": small_recording},
        overrides=NN_DEFAULT_MODEL,
    )
    base = tmp_path / "results" / "small"
    assert not (base / "pass1").exists() and not (base / "nn").exists()
    acc, snr = _accuracy(tmp_path)
    strong = snr >= 5
    assert np.mean(acc[strong] >= 0.8) >= 0.7, list(zip(snr.round(1), acc.round(2)))
