"""Merging units after deconvolution, on their spike trains.

Clustering sometimes cuts one neuron into pieces: most often by where the
probe was (drift correction leaves a waveform that still changes a little with
the unit's position, enough for the clustering to separate the spikes recorded
at one end of the drift from those at the other), sometimes by amplitude. The
template merge cannot rejoin such pieces on their templates alone: they differ
by more than the noise, as two close neurons' templates do. Their spike trains
tell them apart. After deconvolution every spike of a neuron is matched by one
of its pieces, so two pieces of one neuron

* are **complementary in time**: when the unit sits at one depth, one piece
  takes its spikes and the other is silent. Counted in short time bins, their
  spikes fall together much less often than two independent trains with the
  same counts would (``overlap_ratio`` well below 1, a strongly negative
  ``complementarity_z``), whereas two neurons fire independently (ratio ~1)
  or together (ratio > 1);
* or, when both pieces fire throughout, they **never come within a refractory
  period** of each other, while two independent neurons do, about
  ``sum_t n_a(t) n_b(t) W / bin`` times (the time-resolved version of the
  expectation used at the template merge);

and two neurons are never merged when their spikes do come within a
refractory period of each other as often as independent neurons' would.

Pairs are merged one at a time, most similar first; the statistics of the
merged unit are then updated (counts and refractory coincidences add up, its
template is the spike-count weighted average of the aligned templates), so a
neuron cut in several pieces joins up piece by piece.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from shardsort.checks import as_index_array
from shardsort.templates import refractory_conflicts


@dataclass(frozen=True)
class MergeDecision:
    """One merge: ``absorbed`` joined ``kept`` (old indices), and why."""

    kept: int
    absorbed: int
    cosine: float
    lag_samples: int
    overlap_ratio: float
    complementarity_z: float
    observed: int
    expected: float
    reason: str


@dataclass(frozen=True)
class UnitMerge:
    """Result of :func:`merge_units`."""

    mapping: npt.NDArray[np.int64]  # (n_units,) new index of every old unit
    shifts: npt.NDArray[np.int64]  # (n_units,) samples to add to an old unit's spike times
    templates: npt.NDArray[np.float32]  # (n_new, T, n_channels)
    decisions: tuple[MergeDecision, ...] = field(default_factory=tuple)


#: Spikes binned in time at a time (memory follows the block, not the recording).
SPIKE_BLOCK = 1_000_000

def _best_lag_cosine(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], max_shift_samples: int
) -> tuple[float, int]:
    """Best cosine over lags and the lag ``d`` with ``b[t] ~ a[t - d]``."""
    n_times = a.shape[0]
    norm = float(np.sqrt((a**2).sum() * (b**2).sum()))
    if norm == 0.0:
        return 0.0, 0
    best, best_lag = -np.inf, 0
    for lag in range(-max_shift_samples, max_shift_samples + 1):
        if lag >= 0:
            value = float((a[: n_times - lag] * b[lag:]).sum())
        else:
            value = float((a[-lag:] * b[: n_times + lag]).sum())
        if value > best:
            best, best_lag = value, lag
    return best / norm, best_lag


def _advance(template: npt.NDArray[np.float64], shift: int) -> npt.NDArray[np.float64]:
    """``out[t] = template[t + shift]`` with zeros beyond the ends."""
    out = np.zeros_like(template)
    n_times = template.shape[0]
    if shift >= 0:
        out[: n_times - shift] = template[shift:]
    else:
        out[-shift:] = template[: n_times + shift]
    return out


def _amplitude(template: npt.NDArray[np.float64]) -> float:
    return float((template.max(axis=0) - template.min(axis=0)).max())


def time_bins(n_samples: int, bin_samples: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Edges of time bins of ``bin_samples`` (the last one shorter) and each bin's share."""
    if n_samples < 1 or bin_samples < 1:
        raise ValueError(f"n_samples and bin_samples must be >= 1, got {n_samples}, {bin_samples}")
    edges = np.arange(0, n_samples + bin_samples, bin_samples)
    edges[-1] = n_samples
    edges = np.unique(edges)
    return edges, np.diff(edges) / float(n_samples)


def time_overlap(
    counts_a: npt.NDArray[np.float64],
    counts_b: npt.NDArray[np.float64],
    bin_fraction: npt.NDArray[np.float64],
) -> tuple[float, float]:
    """How often two trains fall in the same time bins, against chance.

    Returns ``(ratio, z)``: ``sum_t a_t b_t`` over what independent Poisson
    trains with the same totals give, and its deviation from that in SDs
    (negative: complementary in time).
    """
    mean_a, mean_b = counts_a.sum() * bin_fraction, counts_b.sum() * bin_fraction
    together = float((counts_a * counts_b).sum())
    chance = float((mean_a * mean_b).sum())
    variance = float((mean_a * mean_b * (1.0 + mean_a + mean_b)).sum())
    ratio = together / chance if chance > 0 else 1.0
    z = (together - chance) / np.sqrt(variance) if variance > 0 else 0.0
    return ratio, float(z)


def merge_units(
    sample_index: npt.ArrayLike,
    unit_index: npt.ArrayLike,
    templates: npt.ArrayLike,
    positions_um: npt.ArrayLike,
    *,
    n_samples: int,
    bin_samples: int,
    max_shift_samples: int,
    radius_um: float,
    min_cosine: float,
    max_amplitude_ratio: float,
    min_lag_samples: int,
    max_lag_samples: int,
    max_overlap_ratio: float,
    max_complementarity_z: float,
    min_expected: float,
    max_violation_fraction: float,
    distinct_min_violations: int,
    distinct_violation_fraction: float,
) -> UnitMerge:
    """Merge units that are pieces of one neuron (see the module docstring).

    A pair is a candidate when the peak channels of its templates are at most
    ``radius_um`` apart, their best cosine over shifts of up to
    ``max_shift_samples`` is at least ``min_cosine`` and their amplitudes
    differ by at most ``max_amplitude_ratio``. A candidate is two neurons, and
    never merged, when its spikes come ``min_lag``-``max_lag`` samples apart at
    least ``distinct_min_violations`` times and at least
    ``distinct_violation_fraction`` x the time-resolved expectation. Otherwise
    it merges when it is complementary in time (overlap ratio at most
    ``max_overlap_ratio`` and complementarity z at most
    ``max_complementarity_z``) or when independent trains would give at least
    ``min_expected`` refractory coincidences and it has at most
    ``max_violation_fraction`` x that many.

    Parameters
    ----------
    sample_index, unit_index : array_like of int, shape (n_spikes,)
        The deconvolved spike train; units in ``[0, n_units)``.
    templates : array_like of float, shape (n_units, T, n_channels)
    positions_um : array_like of float, shape (n_channels, 2)
    n_samples : int
        Length of the recording in samples.
    bin_samples : int
        Time bin of the complementarity test (a few seconds: the time scale
        on which a probe drifts).

    Returns
    -------
    UnitMerge
        ``mapping`` and ``shifts`` relabel and re-time the spikes; merged
        units are numbered in the order of their lowest old index.
    """
    times = np.asarray(sample_index, dtype=np.int64)
    units = as_index_array(unit_index)
    tpl = np.asarray(templates, dtype=np.float64)
    positions = np.asarray(positions_um, dtype=np.float64)
    if tpl.ndim != 3:
        raise ValueError(f"templates must be (n_units, T, n_channels), got shape {tpl.shape}")
    n_units, n_times, n_channels = tpl.shape
    if times.shape != units.shape or times.ndim != 1:
        raise ValueError(
            f"sample_index {times.shape} and unit_index {units.shape} must be 1-D of one length"
        )
    if units.size and (units.min() < 0 or units.max() >= n_units):
        raise ValueError(f"unit_index must lie in [0, {n_units}), got [{units.min()}, {units.max()}]")
    if positions.shape != (n_channels, 2):
        raise ValueError(f"positions_um must have shape ({n_channels}, 2), got {positions.shape}")
    if n_samples < 1 or bin_samples < 1:
        raise ValueError(f"n_samples and bin_samples must be >= 1, got {n_samples}, {bin_samples}")
    if not 0 <= max_shift_samples < max(n_times, 1):
        raise ValueError(f"max_shift_samples must lie in [0, {n_times}), got {max_shift_samples}")

    mapping = np.arange(n_units, dtype=np.int64)
    shifts = np.zeros(n_units, dtype=np.int64)
    if n_units < 2:
        return UnitMerge(mapping, shifts, tpl.astype(np.float32), ())

    # Per-unit state, updated as units merge (indexed by the surviving old index).
    edges, bin_fraction = time_bins(n_samples, bin_samples)
    n_bins = len(bin_fraction)
    binned = np.zeros(n_units * n_bins)
    for lo in range(0, times.size, SPIKE_BLOCK):  # spikes per (unit, time bin), by blocks
        bins = np.searchsorted(edges, times[lo : lo + SPIKE_BLOCK], side="right") - 1
        np.clip(bins, 0, n_bins - 1, out=bins)
        bins += units[lo : lo + SPIKE_BLOCK].astype(np.int64) * n_bins
        binned += np.bincount(bins, minlength=n_units * n_bins)
    binned = binned.reshape(n_units, n_bins)
    observed, _ = refractory_conflicts(
        times, units, n_units,
        duration_samples=n_samples,
        min_lag_samples=min_lag_samples,
        max_lag_samples=max_lag_samples,
    )
    observed = observed.astype(np.int64)
    counts = np.bincount(units, minlength=n_units).astype(np.float64)
    width = 2.0 * (max_lag_samples - min_lag_samples + 1)
    merged_templates = tpl.copy()
    alive = counts > 0

    def peak_position(unit: int) -> npt.NDArray[np.float64]:
        ptp = merged_templates[unit].max(axis=0) - merged_templates[unit].min(axis=0)
        return positions[int(ptp.argmax())]

    peaks = np.array([peak_position(unit) for unit in range(n_units)])

    def pair_stats(a: int, b: int) -> tuple[float, int, float, float, float] | None:
        if np.linalg.norm(peaks[a] - peaks[b]) > radius_um:
            return None
        amp_a, amp_b = _amplitude(merged_templates[a]), _amplitude(merged_templates[b])
        if min(amp_a, amp_b) <= 0 or max(amp_a, amp_b) > max_amplitude_ratio * min(amp_a, amp_b):
            return None
        used = np.flatnonzero(
            np.abs(merged_templates[a]).max(axis=0) + np.abs(merged_templates[b]).max(axis=0) > 0
        )
        cosine, lag = _best_lag_cosine(
            merged_templates[a][:, used], merged_templates[b][:, used], max_shift_samples
        )
        if cosine < min_cosine:
            return None
        ratio, z = time_overlap(binned[a], binned[b], bin_fraction)
        # Coincidences independent trains with these time-resolved rates give.
        expected = float((binned[a] * binned[b] / np.diff(edges)).sum()) * width
        return cosine, lag, ratio, z, expected

    def judge(a: int, b: int) -> tuple | None:
        """Merge evidence of a candidate pair, or None."""
        stats = pair_stats(a, b)
        if stats is None:
            return None
        cosine, lag, ratio, z, expected = stats
        seen = int(observed[a, b])
        if seen >= distinct_min_violations and seen >= distinct_violation_fraction * expected:
            return None
        if ratio <= max_overlap_ratio and z <= max_complementarity_z:
            reason = "complementary in time"
        elif expected >= min_expected and seen <= max_violation_fraction * expected:
            reason = "no refractory violations"
        else:
            return None
        return cosine, lag, ratio, z, seen, expected, reason

    live = np.flatnonzero(alive)
    near = np.linalg.norm(peaks[live, None] - peaks[None, live], axis=2) <= radius_um
    candidates = {
        (int(live[i]), int(live[j])): verdict
        for i, j in zip(*np.nonzero(np.triu(near, 1)))
        if (verdict := judge(int(live[i]), int(live[j]))) is not None
    }
    decisions: list[MergeDecision] = []
    while candidates:
        (a, b), verdict = max(
            candidates.items(), key=lambda item: (item[1][0], -item[0][0], -item[0][1])
        )
        cosine, lag, ratio, z, seen, expected, reason = verdict
        # The unit with more spikes keeps its place; the other moves onto it.
        # For the pair (a, b), template b[t] ~ template a[t - lag].
        kept, absorbed, lag = (a, b, lag) if counts[a] >= counts[b] else (b, a, -lag)
        decisions.append(
            MergeDecision(kept, absorbed, cosine, lag, ratio, z, seen, expected, reason)
        )
        # A spike of `absorbed` at s is the kept template placed at s + lag.
        members = mapping == absorbed
        mapping[members] = kept
        shifts[members] += lag
        weights = np.array([counts[kept], counts[absorbed]], dtype=np.float64)
        weights /= weights.sum()
        merged_templates[kept] = (
            weights[0] * merged_templates[kept]
            + weights[1] * _advance(merged_templates[absorbed], lag)
        )
        counts[kept] += counts[absorbed]
        counts[absorbed] = 0.0
        binned[kept] += binned[absorbed]
        observed[kept] += observed[absorbed]
        observed[:, kept] = observed[kept]
        observed[kept, kept] = 0
        alive[absorbed] = False
        peaks[kept] = peak_position(kept)
        candidates = {
            pair: verdict for pair, verdict in candidates.items()
            if kept not in pair and absorbed not in pair
        }
        for other in np.flatnonzero(alive):
            other = int(other)
            if other != kept:
                pair = (min(kept, other), max(kept, other))
                if (verdict := judge(*pair)) is not None:
                    candidates[pair] = verdict

    survivors = np.unique(mapping)
    new_index = np.full(n_units, -1, dtype=np.int64)
    new_index[survivors] = np.arange(len(survivors))
    return UnitMerge(
        new_index[mapping],
        shifts,
        merged_templates[survivors].astype(np.float32),
        tuple(decisions),
    )
