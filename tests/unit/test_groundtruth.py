"""Scoring against ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shardsort.groundtruth import compare_sorting, detection_scores, summarize

RATE_HZ = 30000.0
DELTA = 12  # round(0.4 ms * 30 kHz)


def _ground_truth(n_units: int = 3, n_spikes: int = 100, seed: int = 0):
    """Spikes of each unit 1000 samples apart, units offset by 300 samples."""
    samples = np.concatenate(
        [300 * unit + 1000 * np.arange(n_spikes) for unit in range(n_units)]
    )
    units = np.repeat(np.arange(n_units), n_spikes)
    order = np.random.default_rng(seed).permutation(len(samples))
    return samples[order], units[order]


def _compare(gt_samples, gt_units, sorted_samples, sorted_units, **kwargs):
    return compare_sorting(
        gt_samples,
        gt_units,
        sorted_samples,
        sorted_units,
        sampling_rate_hz=RATE_HZ,
        **kwargs,
    )


def test_perfect_sorting_scores_one_with_any_labels():
    gt_samples, gt_units = _ground_truth()
    labels = np.array([7, 3, 12])[gt_units]
    result = _compare(gt_samples, gt_units, gt_samples, labels)
    gt = result["gt"]
    assert gt["gt_unit"].tolist() == [0, 1, 2]
    assert gt["matched_unit"].tolist() == [7, 3, 12]
    assert gt["tp"].tolist() == [100, 100, 100]
    assert gt["fn"].tolist() == gt["fp"].tolist() == [0, 0, 0]
    for column in ("accuracy", "precision", "recall"):
        assert gt[column].tolist() == [1.0, 1.0, 1.0]
    assert result["sorted"]["matched_gt_unit"].tolist() == [1, 0, 2]
    np.testing.assert_array_equal(result["match_counts"], np.eye(3)[:, [1, 0, 2]] * 100)


@pytest.mark.parametrize(
    ("shift", "accuracy"), [(DELTA, 1.0), (-DELTA, 1.0), (DELTA + 1, 0.0)]
)
def test_match_window_is_exact(shift, accuracy):
    gt_samples, gt_units = _ground_truth()
    result = _compare(gt_samples, gt_units, gt_samples + shift, gt_units)
    assert result["gt"]["accuracy"].tolist() == [accuracy] * 3
    if accuracy == 0.0:
        assert result["gt"]["matched_unit"].tolist() == [-1, -1, -1]
        assert result["gt"]["precision"].tolist() == [0.0, 0.0, 0.0]


def test_delta_follows_delta_ms():
    gt_samples, gt_units = _ground_truth()
    shifted = gt_samples + 30
    near = _compare(gt_samples, gt_units, shifted, gt_units, delta_ms=1.0)
    far = _compare(gt_samples, gt_units, shifted, gt_units, delta_ms=0.95)
    assert near["gt"]["accuracy"].tolist() == [1.0] * 3
    assert far["gt"]["accuracy"].tolist() == [0.0] * 3


def test_half_the_spikes_missing_halves_recall():
    gt_samples, gt_units = _ground_truth()
    keep = np.arange(len(gt_samples)) % 2 == 0
    result = _compare(gt_samples, gt_units, gt_samples[keep], gt_units[keep])
    gt = result["gt"]
    assert gt["tp"].sum() == keep.sum()
    for unit in range(3):
        expected = np.count_nonzero(keep & (gt_units == unit)) / 100
        assert gt["recall"][unit] == expected
        assert gt["accuracy"][unit] == expected
        assert gt["precision"][unit] == 1.0


def test_false_spikes_lower_precision_exactly():
    gt_samples, gt_units = _ground_truth(n_units=1)
    false = 500 + 1000 * np.arange(25)  # halfway between true spikes
    sorted_samples = np.concatenate([gt_samples, false])
    sorted_units = np.zeros(len(sorted_samples), int)
    gt = _compare(gt_samples, gt_units, sorted_samples, sorted_units)["gt"]
    assert (gt["tp"][0], gt["fp"][0], gt["fn"][0]) == (100, 25, 0)
    assert gt["precision"][0] == 100 / 125
    assert gt["accuracy"][0] == 100 / 125
    assert gt["recall"][0] == 1.0


def test_split_unit_is_matched_to_its_larger_part():
    gt_samples, gt_units = _ground_truth(n_units=1)
    sorted_units = np.where(gt_samples < 70_000, 4, 9)  # 70 spikes and 30 spikes
    result = _compare(gt_samples, gt_units, gt_samples, sorted_units)
    gt, units = result["gt"], result["sorted"]
    assert gt["matched_unit"][0] == 4
    assert (gt["tp"][0], gt["fn"][0], gt["fp"][0]) == (70, 30, 0)
    assert units["sorted_unit"].tolist() == [4, 9]
    assert units["matched_gt_unit"].tolist() == [0, -1]
    assert units["best_gt_unit"].tolist() == [0, 0]
    np.testing.assert_allclose(units["best_score"], [0.7, 0.3])
    summary = summarize(result)
    assert summary["n_redundant_units"] == 1
    assert summary["n_false_positive_units"] == 0


def test_merged_units_are_matched_once_and_flagged_overmerged():
    gt_samples, gt_units = _ground_truth(n_units=2, n_spikes=50)
    sorted_units = np.zeros(len(gt_samples), int)
    result = _compare(gt_samples, gt_units, gt_samples, sorted_units)
    gt = result["gt"]
    assert np.count_nonzero(gt["matched_unit"] == 0) == 1
    assert sorted(gt["accuracy"].tolist()) == [0.0, 0.5]
    assert result["sorted"]["second_score"][0] == 0.5
    assert summarize(result)["n_overmerged_units"] == 1


def test_hungarian_maximises_the_total_score():
    # GT unit 0 agrees best with sorted unit 0 (0.35 > 0.30), but GT unit 1
    # agrees only with sorted unit 0 (0.59): the best one-to-one assignment
    # is 0 -> 1 and 1 -> 0, not "each GT unit takes its best".
    gt_samples = np.concatenate([1000 * np.arange(100), 1000 * np.arange(100) + 400])
    gt_units = np.repeat([0, 1], 100)
    sorted_samples = np.concatenate(
        [
            1000 * np.arange(70),  # GT 0, first 70
            1000 * np.arange(100) + 400,  # all of GT 1
            1000 * np.arange(70, 100),  # GT 0, last 30
        ]
    )
    sorted_units = np.repeat([0, 0, 1], [70, 100, 30])
    result = _compare(gt_samples, gt_units, sorted_samples, sorted_units)
    np.testing.assert_allclose(result["agreement"], [[70 / 200, 0.3], [100 / 170, 0.0]])
    assert result["gt"]["matched_unit"].tolist() == [1, 0]
    assert result["gt"]["tp"].tolist() == [30, 100]


def test_spikes_are_matched_one_to_one():
    gt_samples, gt_units = _ground_truth(n_units=1)
    doubled = np.concatenate([gt_samples, gt_samples + 1])
    gt = _compare(gt_samples, gt_units, doubled, np.zeros(200, int))["gt"]
    assert (gt["tp"][0], gt["fp"][0]) == (100, 100)
    assert gt["precision"][0] == 0.5


def test_matching_is_maximum_not_closest_first():
    # Closest-first would pair GT 0 with sorted 2 and leave GT 5 alone.
    result = compare_sorting(
        [0, 5], [0, 0], [2, -4], [0, 0], sampling_rate_hz=1000.0, delta_ms=4.0
    )
    assert result["gt"]["tp"][0] == 2


def test_scores_do_not_depend_on_order_or_labels():
    rng = np.random.default_rng(1)
    gt_samples = np.sort(rng.choice(200_000, 600, replace=False))
    gt_units = rng.integers(0, 4, 600)
    keep = rng.random(600) < 0.8
    sorted_samples = gt_samples[keep] + rng.integers(-15, 16, keep.sum())
    sorted_units = gt_units[keep]
    reference = _compare(gt_samples, gt_units, sorted_samples, sorted_units)["gt"]
    order = rng.permutation(keep.sum())
    relabel = np.array([30, 10, 40, 20])
    permuted = _compare(
        gt_samples[::-1],
        gt_units[::-1],
        sorted_samples[order],
        relabel[sorted_units[order]],
    )["gt"]
    np.testing.assert_array_equal(permuted["accuracy"], reference["accuracy"])
    np.testing.assert_array_equal(
        permuted["matched_unit"], relabel[reference["matched_unit"]]
    )


def test_empty_inputs():
    none = np.zeros(0, np.int64)
    gt_samples, gt_units = _ground_truth(n_units=2, n_spikes=5)

    empty = _compare(none, none, none, none)
    assert empty["gt"].shape == empty["sorted"].shape == (0,)
    assert empty["match_counts"].shape == (0, 0)
    summary = summarize(empty)
    assert summary["n_gt_units"] == 0
    assert math.isnan(summary["mean_accuracy"])

    nothing_sorted = _compare(gt_samples, gt_units, none, none)
    assert nothing_sorted["gt"]["matched_unit"].tolist() == [-1, -1]
    assert nothing_sorted["gt"]["fn"].tolist() == [5, 5]
    assert summarize(nothing_sorted)["mean_accuracy"] == 0.0

    nothing_true = _compare(none, none, gt_samples, gt_units)
    assert nothing_true["sorted"]["best_gt_unit"].tolist() == [-1, -1]
    assert summarize(nothing_true)["n_false_positive_units"] == 2


def test_summary_counts_well_detected_units():
    gt_samples, gt_units = _ground_truth(n_units=3, n_spikes=10)
    keep = ~((gt_units == 2) & (gt_samples > 3000))  # unit 2 keeps 3 of 10 spikes
    result = _compare(gt_samples, gt_units, gt_samples[keep], gt_units[keep])
    summary = summarize(result)
    assert summary["n_well_detected"] == 2
    assert summary["fraction_well_detected"] == 2 / 3
    assert summary["mean_accuracy"] == pytest.approx((1 + 1 + 0.3) / 3)
    assert summarize(result, well_detected_accuracy=0.3)["n_well_detected"] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampling_rate_hz": 0.0}, "sampling_rate_hz must be > 0, got 0.0"),
        ({"sampling_rate_hz": RATE_HZ, "delta_ms": -1.0}, "delta_ms must be >= 0"),
        (
            {"sampling_rate_hz": RATE_HZ, "min_score": 1.0},
            r"min_score must be in \[0, 1\)",
        ),
    ],
)
def test_bad_comparison_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compare_sorting([1], [0], [1], [0], **kwargs)


def test_bad_event_arrays():
    with pytest.raises(
        ValueError,
        match="gt_samples and gt_units must have the same length, got 2 and 1",
    ):
        compare_sorting([1, 2], [0], [1], [0], sampling_rate_hz=RATE_HZ)
    with pytest.raises(
        ValueError, match="sorted_samples must hold integers, got dtype float64"
    ):
        compare_sorting([1], [0], [1.5], [0], sampling_rate_hz=RATE_HZ)
    with pytest.raises(ValueError, match="well_detected_accuracy must be in"):
        summarize(
            compare_sorting([1], [0], [1], [0], sampling_rate_hz=RATE_HZ),
            well_detected_accuracy=2.0,
        )


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------


def test_detection_recall_per_unit_and_unmatched_detections():
    gt_samples, gt_units = _ground_truth(n_units=2, n_spikes=10)
    found = gt_samples[(gt_units == 0) | (gt_samples < 5000)]  # unit 1: 5 of 10
    extra = np.array([10_650, 20_700])  # far from every GT spike
    detected = np.concatenate([found + 3, extra])
    scores = detection_scores(gt_samples, gt_units, detected, delta_samples=3)
    assert scores["gt_unit_ids"].tolist() == [0, 1]
    assert scores["n_gt"].tolist() == [10, 10]
    assert scores["n_detected"].tolist() == [10, 5]
    assert scores["recall"].tolist() == [1.0, 0.5]
    assert scores["n_detections"] == 17
    assert scores["n_unmatched_detections"] == 2
    np.testing.assert_array_equal(
        scores["gt_matched"], (gt_units == 0) | (gt_samples < 5000)
    )
    tighter = detection_scores(gt_samples, gt_units, detected, delta_samples=2)
    assert tighter["n_detected"].tolist() == [0, 0]


def test_one_detection_serves_one_of_two_overlapping_spikes():
    scores = detection_scores([100, 104], [0, 1], [102], delta_samples=5)
    assert scores["n_detected"].sum() == 1
    assert scores["n_unmatched_detections"] == 0


def test_detection_empty_and_bad_inputs():
    scores = detection_scores([], [], [], delta_samples=2)
    assert scores["recall"].shape == (0,)
    assert scores["n_unmatched_detections"] == 0
    only_detections = detection_scores([], [], [5, 9], delta_samples=2)
    assert only_detections["n_unmatched_detections"] == 2
    with pytest.raises(ValueError, match="delta_samples must be >= 0, got -1"):
        detection_scores([1], [0], [1], delta_samples=-1)


# ---------------------------------------------------------------------------
# Per-unit matching against a straightforward reference
# ---------------------------------------------------------------------------


def _reference_counts(gt_samples, gt_units, sorted_samples, sorted_units, delta):
    """Maximum bipartite matching of every unit pair, from the dense window graph."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    gt_ids, sorted_ids = np.unique(gt_units), np.unique(sorted_units)
    counts = np.zeros((len(gt_ids), len(sorted_ids)), dtype=np.int64)
    for a, g in enumerate(gt_ids):
        first = np.asarray(gt_samples)[gt_units == g].astype(np.int64)
        for b, s in enumerate(sorted_ids):
            second = np.asarray(sorted_samples)[sorted_units == s].astype(np.int64)
            graph = csr_matrix(np.abs(first[:, None] - second[None, :]) <= delta)
            matched = maximum_bipartite_matching(graph, perm_type="column")
            counts[a, b] = np.count_nonzero(matched >= 0)
    return gt_ids, sorted_ids, counts


def _random_trains(rng, dtype):
    n_gt = int(rng.integers(0, 120))
    span = int(rng.choice([40, 400, 4000]))
    gt_samples = rng.integers(0, span, n_gt)
    gt_units = rng.integers(0, rng.integers(1, 6), n_gt) * int(rng.choice([1, 9]))
    # Half the sorted spikes near GT spikes (some exactly at +-DELTA), the rest
    # anywhere; coincident spikes within a unit occur at the short spans.
    near = gt_samples[: n_gt // 2] + rng.choice([-DELTA - 1, -DELTA, 0, DELTA, DELTA + 1,
                                                 *range(-DELTA, DELTA + 1, 5)], n_gt // 2)
    sorted_samples = np.concatenate([near, rng.integers(0, span, int(rng.integers(0, 60)))])
    sorted_units = rng.integers(-1, rng.integers(1, 7), len(sorted_samples))
    order = rng.permutation(len(sorted_samples))
    return (gt_samples.astype(dtype), gt_units.astype(dtype),
            sorted_samples[order].astype(dtype), sorted_units[order].astype(dtype))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16])
def test_match_counts_equal_a_maximum_matching_per_unit_pair(dtype):
    rng = np.random.default_rng(5)
    for _ in range(60):
        trains = _random_trains(rng, dtype)
        if dtype == np.uint16:
            trains = tuple(np.abs(t.astype(np.int64)).astype(dtype) for t in trains)
        result = _compare(*trains)
        gt_ids, sorted_ids, counts = _reference_counts(*trains, DELTA)
        np.testing.assert_array_equal(result["gt_unit_ids"], gt_ids)
        np.testing.assert_array_equal(result["sorted_unit_ids"], sorted_ids)
        np.testing.assert_array_equal(result["match_counts"], counts)
        assert result["match_counts"].dtype == np.int64
        assert result["gt_unit_ids"].dtype == result["sorted_unit_ids"].dtype == np.int64
        n_gt = np.array([np.count_nonzero(trains[1] == g) for g in gt_ids])
        n_sorted = np.array([np.count_nonzero(trains[3] == s) for s in sorted_ids])
        agreement = counts / (n_gt[:, None] + n_sorted[None, :] - counts)
        np.testing.assert_array_equal(result["agreement"], agreement)


def test_coincident_spikes_and_the_window_boundary():
    # GT unit 0: two coincident spikes; sorted unit 5: one at +DELTA, one at
    # -DELTA - 1 (outside), two coincident at +DELTA + 1 (outside) and one
    # coincident pair exactly on the GT spikes of unit 1.
    gt_samples = [100, 100, 500, 500]
    gt_units = [0, 0, 1, 1]
    sorted_samples = [100 + DELTA, 100 - DELTA - 1, 100 + DELTA + 1, 100 + DELTA + 1, 500, 500]
    sorted_units = [5, 5, 5, 5, 5, 5]
    result = _compare(gt_samples, gt_units, sorted_samples, sorted_units)
    assert result["match_counts"].tolist() == [[1], [2]]


def test_samples_beyond_int32_are_matched_exactly():
    base = np.int64(2**31 - 5)
    gt_samples = base + np.array([0, 10, 40])
    result = _compare(gt_samples, [0, 0, 0], gt_samples + DELTA, [1, 1, 1])
    assert result["match_counts"].tolist() == [[3]]
    edge = _compare([2**31 - 1], [0], [2**31 - 1 - DELTA], [0])
    assert edge["match_counts"].tolist() == [[1]]
