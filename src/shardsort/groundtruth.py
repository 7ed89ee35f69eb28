"""Scoring spike sorting and spike detection against ground truth.

A ground-truth (GT) spike and a sorted (or detected) spike *match* when their
sample indices differ by at most ``delta`` samples. Counting is one-to-one:
each spike takes part in at most one matched pair, and the count is the
largest possible (a maximum matching, found exactly by the classic greedy:
visit GT spikes in time order, give each the earliest free spike in its
window).

Sorted units are assigned to GT units one-to-one with the Hungarian
algorithm, maximising the agreement score
``matches / (n_gt + n_sorted - matches)``, as in SpikeInterface's
ground-truth comparison.

:func:`compare_sorting` matches one GT unit at a time against the sorted
train in time order (int32 samples where they fit, int32 unit indices), so
besides the two trains it holds one unit's candidate pairs, not every pair of
the recording.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: One row per GT unit.
GT_SCORE_DTYPE = np.dtype(
    [
        ("gt_unit", "<i8"),
        ("matched_unit", "<i8"),  # sorted unit, -1 if none
        ("n_gt", "<i8"),
        ("n_sorted", "<i8"),  # spikes of the matched unit, 0 if none
        ("tp", "<i8"),
        ("fn", "<i8"),
        ("fp", "<i8"),
        ("accuracy", "<f8"),  # tp / (tp + fn + fp)
        ("precision", "<f8"),  # tp / (tp + fp), 0 if tp + fp == 0
        ("recall", "<f8"),  # tp / (tp + fn)
    ]
)

#: One row per sorted unit.
SORTED_SCORE_DTYPE = np.dtype(
    [
        ("sorted_unit", "<i8"),
        ("matched_gt_unit", "<i8"),  # -1 if none
        ("n_sorted", "<i8"),
        ("best_gt_unit", "<i8"),  # GT unit of highest agreement, -1 if none
        ("best_score", "<f8"),
        ("second_score", "<f8"),  # second highest agreement with a GT unit
    ]
)


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _integers(name: str, values: npt.ArrayLike) -> np.ndarray:
    """``values`` as a 1-D integer array, in its own integer dtype (no copy)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    if not array.size:
        return array.astype(np.int64)
    return array


def _events(
    samples_name: str,
    samples: npt.ArrayLike,
    units_name: str,
    units: npt.ArrayLike,
) -> tuple[np.ndarray, np.ndarray]:
    sample_array = _integers(samples_name, samples)
    unit_array = _integers(units_name, units)
    if len(sample_array) != len(unit_array):
        raise ValueError(
            f"{samples_name} and {units_name} must have the same length, got "
            f"{len(sample_array)} and {len(unit_array)}"
        )
    return sample_array, unit_array


def _delta_samples(delta_ms: float, sampling_rate_hz: float) -> int:
    if not (math.isfinite(sampling_rate_hz) and sampling_rate_hz > 0):
        raise ValueError(f"sampling_rate_hz must be > 0, got {sampling_rate_hz!r}")
    if not (math.isfinite(delta_ms) and delta_ms >= 0):
        raise ValueError(f"delta_ms must be >= 0, got {delta_ms!r}")
    return round(delta_ms * sampling_rate_hz / 1000.0)


# ---------------------------------------------------------------------------
# One-to-one matching of events
# ---------------------------------------------------------------------------


def _candidate_pairs(
    first: npt.NDArray[np.int64], second: npt.NDArray[np.int64], delta: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """All pairs ``(i, j)`` with ``|first[i] - second[j]| <= delta``.

    Both arrays must be sorted; pairs come ordered by ``i`` then ``j``.
    """
    return _candidate_pairs_between(first - delta, first + delta, second)


def _one_to_one(
    i: npt.NDArray[np.int64],
    j: npt.NDArray[np.int64],
    group: npt.NDArray[np.int64],
    n_first: int,
) -> npt.NDArray[np.bool_]:
    """Select a maximum one-to-one matching among candidate pairs, per group.

    Within each ``group`` every ``i`` and every ``j`` is used at most once.
    Pairs must be ordered by ``i`` then ``j`` with both indices in time
    order. Where no index repeats within a group, all pairs are kept; only
    the connected pieces that hold a conflict are resolved by the greedy.
    """
    selected = np.ones(len(i), dtype=bool)
    if len(i) == 0:
        return selected
    n_nodes = n_first + int(j.max()) + 1
    graph = coo_matrix(
        (np.ones(len(i), dtype=np.int8), (i, n_first + j)), shape=(n_nodes, n_nodes)
    )
    n_components, component = connected_components(graph, directed=False)
    # Pairs of one group in one component form an independent subproblem.
    _, piece = np.unique(group * n_components + component[i], return_inverse=True)
    conflicted = np.zeros(piece.max() + 1, dtype=bool)
    for index in (i, j):
        order = np.lexsort((index, piece))
        repeated = (np.diff(piece[order]) == 0) & (np.diff(index[order]) == 0)
        conflicted[piece[order][1:][repeated]] = True
    redo = np.flatnonzero(conflicted[piece])
    selected[redo] = False
    # Greedy on the conflicted pieces: pairs by piece, then i, then j.
    order = redo[np.lexsort((j[redo], i[redo], piece[redo]))]
    taken_first: set[tuple[int, int]] = set()
    taken_second: set[tuple[int, int]] = set()
    for pair, p, a, b in zip(
        order.tolist(), piece[order].tolist(), i[order].tolist(), j[order].tolist()
    ):
        if (p, a) not in taken_first and (p, b) not in taken_second:
            taken_first.add((p, a))
            taken_second.add((p, b))
            selected[pair] = True
    return selected


# ---------------------------------------------------------------------------
# Compact per-spike arrays (the sorting comparison holds two whole trains)
# ---------------------------------------------------------------------------

#: Rows per block when labels are mapped to unit indices.
_BLOCK_ROWS = 1 << 20


def _unit_index(units: np.ndarray) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Ascending labels and each spike's position among them (int32), block by block."""
    ids = np.zeros(0, dtype=units.dtype)
    for lo in range(0, len(units), _BLOCK_ROWS):
        ids = np.union1d(ids, units[lo : lo + _BLOCK_ROWS])
    index = np.empty(len(units), dtype=np.int32)
    for lo in range(0, len(units), _BLOCK_ROWS):
        index[lo : lo + _BLOCK_ROWS] = np.searchsorted(ids, units[lo : lo + _BLOCK_ROWS])
    return ids.astype(np.int64), index


def compact_samples(samples: np.ndarray) -> np.ndarray:
    """Samples as int32 where every value fits (exact), else int64.

    :func:`compare_sorting` holds its trains this way; a caller that reads
    int64 samples can convert them first and drop the int64 copy.
    """
    limits = np.iinfo(np.int32)
    if len(samples) == 0 or (samples.min() >= limits.min and samples.max() <= limits.max):
        return samples.astype(np.int32, copy=False)
    return samples.astype(np.int64, copy=False)


def _is_ascending(values: np.ndarray) -> bool:
    for lo in range(0, max(len(values) - 1, 0), _BLOCK_ROWS):
        block = values[lo : lo + _BLOCK_ROWS + 1]
        if np.any(block[1:] < block[:-1]):
            return False
    return True


def _window_bounds(
    times: npt.NDArray[np.int64], delta: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """``times - delta`` and ``times + delta`` clipped to ``dtype`` (searchsorted results unchanged)."""
    limits = np.iinfo(dtype)
    wide = times.astype(np.int64)
    low = np.clip(wide - delta, limits.min, limits.max).astype(dtype)
    high = np.clip(wide + delta, limits.min, limits.max).astype(dtype)
    return low, high


def _pair_match_counts(
    times: np.ndarray,
    train_times: np.ndarray,
    train_units: npt.NDArray[np.int32],
    delta: int,
    n_units: int,
) -> npt.NDArray[np.int64]:
    """Maximum one-to-one matches of one unit's spikes with each unit of a train.

    ``times`` (one unit's spikes) and ``train_times`` must be ascending;
    ``train_units`` holds the unit index (``0 .. n_units - 1``) of every
    train spike. Returns int64 ``(n_units,)``: for every unit of the train,
    the size of a maximum matching between ``times`` and that unit's spikes
    with ``|difference| <= delta``.
    """
    counts = np.zeros(n_units, dtype=np.int64)
    low, high = _window_bounds(times, delta, train_times.dtype)
    i, j = _candidate_pairs_between(low, high, train_times)
    if len(i) == 0:
        return counts
    unit = train_units[j]
    order = np.argsort(unit, kind="stable")  # pairs by unit, then i, then j
    i, j, unit = i[order], j[order], unit[order]
    # A pair whose two spikes take part in no other pair of its unit pair is
    # an isolated edge: in every maximum matching. The rest (rare: two spikes
    # of one unit within 2 delta) go to the greedy, which is exact per unit
    # pair (windows of equal width: earliest free spike, in time order).
    shared = np.zeros(len(i), dtype=bool)
    same_i = (unit[1:] == unit[:-1]) & (i[1:] == i[:-1])
    shared[1:] |= same_i
    shared[:-1] |= same_i
    ranked = np.sort(j)
    repeated_j = ranked[1:][ranked[1:] == ranked[:-1]]
    if len(repeated_j):
        shared |= np.isin(j, repeated_j)  # a train spike belongs to one unit
    counts += np.bincount(unit[~shared], minlength=n_units)
    taken_first: set[tuple[int, int]] = set()
    taken_second: set[int] = set()
    redo = np.flatnonzero(shared)
    for u, a, b in zip(unit[redo].tolist(), i[redo].tolist(), j[redo].tolist()):
        if (u, a) not in taken_first and b not in taken_second:
            taken_first.add((u, a))
            taken_second.add(b)
            counts[u] += 1
    return counts


def _candidate_pairs_between(
    low: np.ndarray, high: np.ndarray, train_times: np.ndarray
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """All ``(i, j)`` with ``low[i] <= train_times[j] <= high[i]``, by ``i`` then ``j``."""
    start = np.searchsorted(train_times, low, side="left")
    stop = np.searchsorted(train_times, high, side="right")
    per_first = stop - start
    i = np.repeat(np.arange(len(low)), per_first)
    pair_starts = np.cumsum(per_first) - per_first
    j = start[i] + np.arange(len(i)) - pair_starts[i]
    return i, j


# ---------------------------------------------------------------------------
# Sorting comparison
# ---------------------------------------------------------------------------


def compare_sorting(
    gt_samples: npt.ArrayLike,
    gt_units: npt.ArrayLike,
    sorted_samples: npt.ArrayLike,
    sorted_units: npt.ArrayLike,
    *,
    sampling_rate_hz: float,
    delta_ms: float = 0.4,
    min_score: float = 0.1,
) -> dict[str, np.ndarray]:
    """Compare a sorting with ground truth, unit by unit.

    Parameters
    ----------
    gt_samples, gt_units : array_like of int, shape (n_gt_spikes,)
        Ground-truth spike samples and unit labels (any order).
    sorted_samples, sorted_units : array_like of int, shape (n_sorted_spikes,)
        Sorted spike samples and unit labels (any order).
    sampling_rate_hz : float
        Sampling rate, > 0.
    delta_ms : float
        Match window: spikes match when ``|difference| <= delta`` samples,
        ``delta = round(delta_ms * sampling_rate_hz / 1000)``.
    min_score : float
        A Hungarian assignment counts only if its agreement score is above
        this, in [0, 1).

    Returns
    -------
    comparison : dict
        ``gt``: GT_SCORE_DTYPE table, one row per GT unit (sorted labels);
        ``sorted``: SORTED_SCORE_DTYPE table, one row per sorted unit;
        ``gt_unit_ids`` and ``sorted_unit_ids``: the labels, ascending;
        ``match_counts`` int64 (n_gt_units, n_sorted_units): one-to-one
        matched spikes of every pair of units;
        ``agreement`` float64 (n_gt_units, n_sorted_units): agreement scores.
    """
    gt_samples, gt_units = _events("gt_samples", gt_samples, "gt_units", gt_units)
    sorted_samples, sorted_units = _events(
        "sorted_samples", sorted_samples, "sorted_units", sorted_units
    )
    delta = _delta_samples(delta_ms, sampling_rate_hz)
    if not (math.isfinite(min_score) and 0 <= min_score < 1):
        raise ValueError(f"min_score must be in [0, 1), got {min_score!r}")

    # Per GT unit against the whole sorted train in time order: the train is
    # held as int32 samples (where they fit) and int32 unit indices, the GT
    # spikes as int32 unit indices and one int64 grouping order.
    gt_ids, gt_index = _unit_index(gt_units)
    sorted_ids, sorted_index = _unit_index(sorted_units)
    n_gt = np.bincount(gt_index, minlength=len(gt_ids))
    n_sorted = np.bincount(sorted_index, minlength=len(sorted_ids))
    train_times = compact_samples(sorted_samples)
    if not _is_ascending(train_times):
        order = np.argsort(train_times, kind="stable")
        train_times, sorted_index = train_times[order], sorted_index[order]
        del order
    gt_times = compact_samples(gt_samples)
    by_unit = np.argsort(gt_index, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(n_gt)])
    counts = np.zeros((len(gt_ids), len(sorted_ids)), dtype=np.int64)
    for unit in range(len(gt_ids)):
        times = np.sort(gt_times[by_unit[bounds[unit] : bounds[unit + 1]]])
        counts[unit] = _pair_match_counts(
            times, train_times, sorted_index, delta, len(sorted_ids)
        )
    del by_unit, train_times, sorted_index
    # Every listed unit has at least one spike, so denominators are >= 1.
    agreement = counts / (n_gt[:, None] + n_sorted[None, :] - counts)

    rows, columns = linear_sum_assignment(agreement, maximize=True)
    kept = agreement[rows, columns] > min_score
    rows, columns = rows[kept], columns[kept]

    gt_table = np.zeros(len(gt_ids), dtype=GT_SCORE_DTYPE)
    gt_table["gt_unit"] = gt_ids
    gt_table["matched_unit"] = -1
    gt_table["n_gt"] = n_gt
    gt_table["matched_unit"][rows] = sorted_ids[columns]
    gt_table["n_sorted"][rows] = n_sorted[columns]
    gt_table["tp"][rows] = counts[rows, columns]
    gt_table["fn"] = n_gt - gt_table["tp"]
    gt_table["fp"][rows] = n_sorted[columns] - counts[rows, columns]
    tp, fp = gt_table["tp"], gt_table["fp"]
    gt_table["accuracy"] = tp / (n_gt + fp)
    gt_table["precision"] = np.divide(
        tp, tp + fp, out=np.zeros(len(gt_ids)), where=tp + fp > 0
    )
    gt_table["recall"] = tp / n_gt

    sorted_table = np.zeros(len(sorted_ids), dtype=SORTED_SCORE_DTYPE)
    sorted_table["sorted_unit"] = sorted_ids
    sorted_table["n_sorted"] = n_sorted
    sorted_table["matched_gt_unit"] = -1
    sorted_table["matched_gt_unit"][columns] = gt_ids[rows]
    sorted_table["best_gt_unit"] = -1
    if len(gt_ids):
        ranked = np.sort(agreement, axis=0)
        sorted_table["best_score"] = ranked[-1]
        if len(gt_ids) > 1:
            sorted_table["second_score"] = ranked[-2]
        best = np.argmax(agreement, axis=0)
        has_best = ranked[-1] > 0
        sorted_table["best_gt_unit"][has_best] = gt_ids[best[has_best]]

    return {
        "gt": gt_table,
        "sorted": sorted_table,
        "gt_unit_ids": gt_ids,
        "sorted_unit_ids": sorted_ids,
        "match_counts": counts,
        "agreement": agreement,
    }


def summarize(
    comparison: dict[str, np.ndarray],
    *,
    well_detected_accuracy: float = 0.8,
    redundant_score: float = 0.2,
    overmerged_score: float = 0.2,
) -> dict[str, float | int]:
    """Summary numbers of a :func:`compare_sorting` result.

    Parameters
    ----------
    comparison : dict
        Output of :func:`compare_sorting`.
    well_detected_accuracy : float
        A GT unit is well detected when its accuracy is >= this.
    redundant_score : float
        An unmatched sorted unit whose best agreement with a GT unit is >=
        this is redundant; below it, it is a false-positive unit.
    overmerged_score : float
        A sorted unit with agreement >= this with two or more GT units is
        overmerged.

    Returns
    -------
    summary : dict
        ``n_gt_units``, ``n_sorted_units``, ``n_matched``, ``n_well_detected``,
        ``fraction_well_detected``, ``mean_accuracy``, ``median_accuracy``,
        ``mean_precision``, ``mean_recall`` (means over GT units, unmatched
        ones counting 0; NaN when there are no GT units),
        ``n_false_positive_units``, ``n_redundant_units``,
        ``n_overmerged_units``.
    """
    for name, value in (
        ("well_detected_accuracy", well_detected_accuracy),
        ("redundant_score", redundant_score),
        ("overmerged_score", overmerged_score),
    ):
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    gt, units = comparison["gt"], comparison["sorted"]
    n_gt_units = len(gt)

    def over_gt(values: np.ndarray, statistic) -> float:
        return float(statistic(values)) if n_gt_units else math.nan

    n_well = int(np.count_nonzero(gt["accuracy"] >= well_detected_accuracy))
    unmatched = units["matched_gt_unit"] < 0
    return {
        "n_gt_units": n_gt_units,
        "n_sorted_units": len(units),
        "n_matched": int(np.count_nonzero(gt["matched_unit"] >= 0)),
        "n_well_detected": n_well,
        "fraction_well_detected": n_well / n_gt_units if n_gt_units else math.nan,
        "mean_accuracy": over_gt(gt["accuracy"], np.mean),
        "median_accuracy": over_gt(gt["accuracy"], np.median),
        "mean_precision": over_gt(gt["precision"], np.mean),
        "mean_recall": over_gt(gt["recall"], np.mean),
        "n_false_positive_units": int(
            np.count_nonzero(unmatched & (units["best_score"] < redundant_score))
        ),
        "n_redundant_units": int(
            np.count_nonzero(unmatched & (units["best_score"] >= redundant_score))
        ),
        "n_overmerged_units": int(
            np.count_nonzero(units["second_score"] >= overmerged_score)
        ),
    }


# ---------------------------------------------------------------------------
# Detection scores
# ---------------------------------------------------------------------------


def detection_scores(
    gt_samples: npt.ArrayLike,
    gt_units: npt.ArrayLike,
    detected_samples: npt.ArrayLike,
    *,
    delta_samples: int,
) -> dict[str, np.ndarray | int]:
    """Score spike detection against ground truth, ignoring unit labels.

    GT spikes and detections are matched one-to-one (maximum matching) when
    ``|difference| <= delta_samples``; GT labels only group the recall.

    Parameters
    ----------
    gt_samples, gt_units : array_like of int, shape (n_gt_spikes,)
        Ground-truth spike samples and unit labels (any order).
    detected_samples : array_like of int, shape (n_detections,)
        Detected spike samples (any order).
    delta_samples : int
        Match window in samples, >= 0.

    Returns
    -------
    scores : dict
        ``gt_unit_ids`` (ascending labels); per GT unit ``n_gt``,
        ``n_detected`` (matched spikes) and ``recall`` (float64);
        ``gt_matched`` bool (n_gt_spikes,), in input order;
        ``n_detections`` and ``n_unmatched_detections`` (detections matching
        no GT spike).
    """
    gt_samples, gt_units = (
        a.astype(np.int64, copy=False)
        for a in _events("gt_samples", gt_samples, "gt_units", gt_units)
    )
    detected = _integers("detected_samples", detected_samples).astype(np.int64, copy=False)
    if isinstance(delta_samples, bool) or not isinstance(
        delta_samples, (int, np.integer)
    ):
        raise ValueError(f"delta_samples must be an integer, got {delta_samples!r}")
    if delta_samples < 0:
        raise ValueError(f"delta_samples must be >= 0, got {delta_samples}")

    gt_ids, gt_index = np.unique(gt_units, return_inverse=True)
    gt_order = np.argsort(gt_samples, kind="stable")
    i, j = _candidate_pairs(gt_samples[gt_order], np.sort(detected), delta_samples)
    matched = _one_to_one(i, j, np.zeros(len(i), np.int64), len(gt_samples))

    gt_matched = np.zeros(len(gt_samples), dtype=bool)
    gt_matched[gt_order[i[matched]]] = True
    n_gt = np.bincount(gt_index, minlength=len(gt_ids))
    n_detected = np.bincount(gt_index[gt_matched], minlength=len(gt_ids))
    return {
        "gt_unit_ids": gt_ids,
        "n_gt": n_gt,
        "n_detected": n_detected,
        "recall": n_detected / n_gt,
        "gt_matched": gt_matched,
        "n_detections": len(detected),
        "n_unmatched_detections": len(detected) - int(np.count_nonzero(matched)),
    }
