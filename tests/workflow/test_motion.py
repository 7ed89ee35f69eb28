"""Drift correction end to end: a recording whose units move 40 µm up the probe.

The recording (32 channels, 36 s, one time chunk) is sorted twice, with
``motion.enabled`` false and then true, up to the ground-truth scores; the
drift estimate is compared with the planted drift and the accuracy of the two
sorts with each other.
"""

from __future__ import annotations

import csv
import shutil

import h5py
import numpy as np
import pytest

from .conftest import run_snakemake, write_small_recording

pytestmark = pytest.mark.workflow

DRIFT = {"n_channels": 32, "duration_s": 36.0, "n_units": 20, "seed": 7, "drift_um": 40.0}
MOTION_RULES = ("motion_peaks", "motion", "correct")


def _accuracy(path):
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return (np.array([float(r["accuracy"]) for r in rows]),
            np.array([float(r["snr"]) for r in rows]))


@pytest.fixture(scope="module")
def drifting_recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drifting data")
    return write_small_recording(folder, name="drifting", **DRIFT)


@pytest.fixture(scope="module")
def sorted_with_and_without(tmp_path_factory, drifting_recording):
    """Sort without, then with drift correction in the same folder.

    The second run reuses the preprocessed chunks (kept: keep_intermediates)
    and reruns from the motion stages on. Returns the folder and the ground-truth scores without correction.
    """
    work = tmp_path_factory.mktemp("motion")
    scores = work / "results" / "drifting" / "ground_truth.tsv"
    without = work / "ground_truth_without_correction.tsv"
    for enabled in (False, True):
        targets = [str(scores.relative_to(work))]
        if enabled:
            targets.append("results/drifting/report/motion.png")
        # Targets cannot follow --config: the recordings table goes in the overrides.
        proc = run_snakemake(
            work, "--cores", "2", *targets,
            overrides={"recordings": str(drifting_recording), "motion": {"enabled": enabled},
                       "keep_intermediates": True},
        )
        if enabled:
            assert "rule preprocess:" not in proc.stdout + proc.stderr
        else:
            shutil.copyfile(scores, without)
    return work, without


def test_disabled_motion_leaves_the_dag_unchanged(tmp_path, drifting_recording):
    proc = run_snakemake(tmp_path, "-n", "--cores", "2",
                         config={"recordings": drifting_recording},
                         overrides={"motion": {"enabled": False}})
    for rule in MOTION_RULES:
        assert f"rule {rule}:" not in proc.stdout, rule
    assert "results/drifting/motion" not in proc.stdout
    assert "input: results/drifting/preprocess/chunks/t00000.bin" in proc.stdout


@pytest.mark.parametrize("enabled", [True, "auto"])
def test_enabled_motion_feeds_corrected_chunks_to_the_sort(tmp_path, drifting_recording, enabled):
    # auto (the default): a 32-channel Neuropixels-like probe is long enough.
    proc = run_snakemake(tmp_path, "-n", "--cores", "2",
                         config={"recordings": drifting_recording},
                         overrides={"motion": {"enabled": enabled}})
    for rule in MOTION_RULES:
        assert f"rule {rule}:" in proc.stdout, rule
    blocks = proc.stdout.split("\nrule ")
    for rule in ("detect", "template_sums", "deconvolve", "feature_basis"):
        block = next(b for b in blocks if b.startswith(f"{rule}:"))
        assert "results/drifting/motion/chunks/t00000.bin" in block, rule
        assert "preprocess/chunks" not in block, rule


def test_estimated_drift_matches_the_planted_drift(sorted_with_and_without):
    from shardsort.synth import SynthParams, drift_displacement_um

    base = sorted_with_and_without[0] / "results" / "drifting"
    with h5py.File(base / "motion" / "motion.h5", "r") as f:
        displacement = f["displacement_um"][()]
        time_s = f["time_s"][()]
        centres = f["window_centres_um"][()]
    assert displacement.shape == (18, 1)
    truth = drift_displacement_um(SynthParams(**DRIFT), time_s, centres[0])
    error = displacement[:, 0] - (truth - truth.mean())
    assert np.abs(error).max() < 4.0, error.round(1)
    assert np.sqrt(np.mean((error - error.mean()) ** 2)) < 2.0, error.round(1)
    table = (base / "motion" / "displacement.tsv").read_text().splitlines()
    assert table[0].startswith("time_s\tdisplacement_um_at_") and len(table) == 19
    assert (base / "report" / "motion.png").stat().st_size > 0
    for stage in MOTION_RULES:
        assert any((base / "benchmarks").glob(f"{stage}*")), stage
        assert any((base / "logs").glob(f"{stage}*")), stage


def test_correction_sorts_at_least_as_well_as_no_correction(sorted_with_and_without):
    work, scores_without = sorted_with_and_without
    without, snr = _accuracy(scores_without)
    with_correction, _ = _accuracy(work / "results" / "drifting" / "ground_truth.tsv")
    strong = snr >= 5
    print(f"accuracy of units with SNR >= 5: without {without[strong].mean():.3f}, "
          f"with correction {with_correction[strong].mean():.3f}")
    assert with_correction[strong].mean() >= without[strong].mean()
    assert with_correction[strong].mean() >= 0.55
    assert np.sum(with_correction >= 0.8) >= np.sum(without >= 0.8)


def test_drift_estimate_does_not_depend_on_the_chunking(tmp_path, sorted_with_and_without,
                                                        drifting_recording):
    target = "results/drifting/motion/motion.h5"
    run_snakemake(
        tmp_path, "--cores", "2", target,
        overrides={"recordings": str(drifting_recording), "motion": {"enabled": True},
                   # 4 chunks of 9 s (the budget alone would cut 3 of 12 s)
                   "shards": {"min_parallel_jobs": 4, "min_job_channel_s": 100}},
    )
    # Chunk borders (9 s, 27 s) cut through time bins (2 s).
    logs = tmp_path / "results" / "drifting" / "logs" / "motion_peaks"
    assert len(list(logs.iterdir())) == 4
    with h5py.File(tmp_path / target, "r") as chunked, \
            h5py.File(sorted_with_and_without[0] / target, "r") as whole:
        # Peaks and their histograms are chunk-independent up to float rounding
        # of the preprocessed traces: any difference is far below a micrometre.
        np.testing.assert_allclose(chunked["displacement_um"][()],
                                   whole["displacement_um"][()], atol=0.05)
        assert np.abs(chunked["histogram"][()] - whole["histogram"][()]).sum() <= (
            0.001 * whole["histogram"][()].sum()
        )


def test_each_planted_unit_stays_in_one_sorted_unit(sorted_with_and_without, drifting_recording):
    """No unit split by the drift: no second sorted unit holds a fifth of a unit's spikes."""
    from shardsort.groundtruth import compare_sorting

    base = sorted_with_and_without[0] / "results" / "drifting"
    with h5py.File(base / "sorting.h5", "r") as f:
        spikes = f["spikes"][()]
        rate = float(f.attrs["sampling_rate_hz"])
    gt = np.load(drifting_recording.with_name("drifting_gt.npz"))
    comparison = compare_sorting(
        gt["sample_index"], gt["unit_index"], spikes["sample_index"], spikes["unit_index"],
        sampling_rate_hz=rate,
    )
    counts = comparison["match_counts"]  # (gt units, sorted units)
    n_gt = np.bincount(gt["unit_index"], minlength=counts.shape[0])[comparison["gt_unit_ids"]]
    holders = (counts >= 0.2 * n_gt[:, None]).sum(axis=1)
    detected = comparison["gt"]["accuracy"] >= 0.5
    split = comparison["gt_unit_ids"][detected & (holders > 1)]
    assert split.size == 0, f"planted units split across sorted units: {split.tolist()}"


def test_skipped_correction_links_the_preprocessed_chunk(tmp_path, drifting_recording):
    # A displacement range below motion.min_displacement_um: the correct job
    # hands the (temporary) preprocessed chunk on unchanged, as a hard link (no
    # second copy).
    target = "results/drifting/motion/chunks/t00000.bin"
    run_snakemake(tmp_path, "--cores", "2", target,
                  overrides={"recordings": str(drifting_recording),
                             "motion": {"enabled": True, "min_displacement_um": 1000.0}})
    base = tmp_path / "results" / "drifting"
    with h5py.File(base / "motion" / "motion.h5", "r") as f:
        assert not bool(f.attrs["apply"])
    assert (tmp_path / target).stat().st_size > 0
    assert "handed on unchanged (hard link)" in (
        base / "logs" / "correct" / "t00000.log").read_text()


def test_kept_intermediates_are_copied_and_a_rerun_has_nothing_to_do(
    tmp_path, drifting_recording
):
    """With keep_intermediates, the unchanged chunk is a copy (its own file
    time), so a finished sort is up to date for the next run: a hard link
    shared the time Snakemake gives the correct job's output with the
    preprocessed chunk, and every later run redid the sort from motion_peaks."""
    overrides = {"recordings": str(drifting_recording), "keep_intermediates": True,
                 "motion": {"enabled": True, "min_displacement_um": 1000.0}}
    run_snakemake(tmp_path, "--cores", "2", overrides=overrides)
    base = tmp_path / "results" / "drifting"
    source = base / "preprocess" / "chunks" / "t00000.bin"
    copied = base / "motion" / "chunks" / "t00000.bin"
    assert copied.read_bytes() == source.read_bytes()
    assert copied.stat().st_ino != source.stat().st_ino
    assert "handed on unchanged (copy)" in (
        base / "logs" / "correct" / "t00000.log").read_text()
    dry = run_snakemake(tmp_path, "--cores", "2", "-n", overrides=overrides)
    assert "Nothing to be done" in dry.stdout + dry.stderr
