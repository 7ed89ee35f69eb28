"""Splitting units after deconvolution, on their spikes' features.

The template merge joins clusters whose templates matching could not tell
apart spike by spike; two neighbouring neurons of similar shape (tens of µm
apart, templates at cosine ~0.9) can so end up in one unit, which then holds
both spike trains. Their spikes still differ consistently: over hundreds of
spikes the features (temporal PCA scores on the unit's channels, computed for
every deconvolved spike) form two groups. A unit is cut in two when

* the discriminant of a two-component Gaussian mixture fitted to its
  features' leading principal components is bimodal (the clustering's own
  test, :func:`shardsort.cluster.bimodality_score` with ``split_threshold``),
* both parts hold at least ``min_part`` spikes and ``min_fraction`` of the
  unit's (a small tail of a big unit's spikes is its amplitude spread, not a
  second neuron),
* and the parts are not complementary in time: a drifting unit's spikes
  differ with the probe's position, and pieces that take turns in time are
  one neuron (:mod:`shardsort.unitmerge` joins them); they are never cut.

When the features give no such cut, the spikes' matched amplitudes (the
scale of the template each spike was subtracted with) are tested the same
way, on their logarithm: as they are, then, if that gives no cut, without
those on the fitting bounds (censored fits pile up there and the pile's
edge hides the valley between two neurons). Two neighbours of one shape at different distances
from the probe (cosine ~0.96, amplitudes 1.4 x apart) overlap in the
features' leading components, whose directions the noise and collisions
share, yet their amplitudes form two clear modes; the same size and time
tests apply.

Parts are cut again while the test holds (up to ``max_depth`` levels). The
larger part keeps the unit's index; each new part gets the next free one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shardsort.checks import as_index_array
from shardsort.cluster import bimodality_score
from shardsort.unitmerge import SPIKE_BLOCK, time_bins, time_overlap


@dataclass(frozen=True)
class SplitDecision:
    """One cut: ``new`` was cut from ``unit`` (indices after the cut)."""

    unit: int
    new: int
    n_kept: int
    n_new: int
    score: float
    overlap_ratio: float
    complementarity_z: float
    on: str = "features"  # what the cut was made on: "features" or "amplitude"


def _leading_components(features: npt.NDArray[np.float64], n_dims: int) -> npt.NDArray[np.float64]:
    """Whitened scores on the ``n_dims`` leading principal components."""
    centred = features - features.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    keep = singular > 1e-9 * max(singular[0], 1e-300) if singular.size else singular > 0
    keep[n_dims:] = False
    if not keep.any():
        return np.zeros((len(features), 0))
    return centred @ vt[keep].T / singular[keep] * np.sqrt(len(features))


def _two_way_cut(
    features: npt.NDArray[np.float64], *, n_dims: int, seed: int
) -> tuple[float, npt.NDArray[np.bool_]] | None:
    """Bimodality score of the best two-way cut and its side per spike."""
    from sklearn.mixture import GaussianMixture

    z = _leading_components(features, n_dims)
    if z.shape[1] == 0:
        return None
    mixture = GaussianMixture(2, covariance_type="full", random_state=seed, n_init=2,
                              reg_covar=1e-3).fit(z)
    difference = mixture.means_[0] - mixture.means_[1]
    pooled = mixture.covariances_.mean(axis=0)
    direction = np.linalg.solve(pooled, difference)
    values = z @ direction
    score, cut = bimodality_score(values)
    if not np.isfinite(cut):
        return None
    return score, values > cut


def _amplitude_cut(
    amplitudes: npt.NDArray[np.float64], bounds: tuple[float, float] | None = None
) -> tuple[float, npt.NDArray[np.bool_]] | None:
    """Bimodality score of the log amplitudes and the side of each spike.

    Amplitudes at the fitting bounds (``bounds``: the scaling range matching
    allowed) are censored values, not measurements: the spikes whose best
    scaling lay beyond a bound pile up on it, and that spike of density
    passes for a mode of its own. With ``bounds`` they are left out of the
    test and go to the side of the cut their bound lies on. (Tested as they
    are first, a pile big enough to be a part is cut off: matches that
    wanted a smaller template, which the noise-template test then removes.)
    """
    positive = amplitudes > 0
    inside = positive.copy()
    if bounds is not None:
        low, high = bounds
        inside &= (amplitudes > low * (1.0 + 1e-6)) & (amplitudes < high * (1.0 - 1e-6))
    if inside.sum() < 4:
        return None
    floor = amplitudes[positive].min()
    values = np.log(np.where(positive, amplitudes, floor))
    score, cut = bimodality_score(values[inside])
    if not np.isfinite(cut):
        return None
    return score, values > cut


def split_units(
    sample_index: npt.ArrayLike,
    unit_index: npt.ArrayLike,
    features: npt.ArrayLike,
    *,
    amplitudes: npt.ArrayLike | None = None,
    amplitude_bounds: tuple[float, float] | None = None,
    n_units: int,
    n_samples: int,
    bin_samples: int,
    min_part: int,
    split_threshold: float,
    max_overlap_ratio: float,
    max_complementarity_z: float,
    min_fraction: float = 0.0,
    n_dims: int = 6,
    max_depth: int = 2,
    seed: int = 0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], tuple[SplitDecision, ...]]:
    """Cut units whose spikes form two groups of features (module docstring).

    Parameters
    ----------
    sample_index, unit_index : array_like of int, shape (n_spikes,)
    features : array_like, shape (n_spikes, ...), or callable
        Per-spike features on each unit's own channels (flattened per spike).
        A callable ``features(unit)`` returns the features of the spikes
        whose ``unit_index`` is ``unit``, in spike order: only one unit's
        features are then held at a time (and the result is the same).
    amplitudes : array_like of float, shape (n_spikes,), optional
        Each spike's matched amplitude; when given, a unit the features do
        not cut is tested on its log amplitudes (module docstring).
    amplitude_bounds : (float, float), optional
        The scaling range the amplitudes were fitted in: amplitudes on a
        bound are censored and left out of the amplitude test.
    n_units : int
    n_samples, bin_samples : int
        Recording length and the time bin of the complementarity test.
    min_part : int
        Smallest part kept (>= 2).
    min_fraction : float
        Smallest part kept, as a fraction of the unit's spikes (in [0, 0.5]).
    split_threshold : float
        Bimodality score above which a cut is made.

    Returns
    -------
    labels : ndarray of int64, shape (n_spikes,)
        Unit of every spike after the cuts, in ``[0, n_units + n_cuts)``.
    parent : ndarray of int64, shape (n_units + n_cuts,)
        The unit each unit was cut from (itself for the original units).
    decisions : tuple of SplitDecision
    """
    times = np.asarray(sample_index, dtype=np.int64)
    # A copy in the given integer type (int32 stays int32: 4 bytes a spike).
    labels = as_index_array(unit_index).copy()
    if times.shape != labels.shape or times.ndim != 1:
        raise ValueError(
            f"sample_index {times.shape} and unit_index {labels.shape} must be 1-D of one length"
        )
    if callable(features):
        x, read_unit, original = None, features, labels.copy()
    else:
        # Converted to float64 one unit at a time (8 bytes a value, not for all spikes).
        x, read_unit, original = np.asarray(features), None, None
        if x.shape[:1] != labels.shape:
            raise ValueError(
                f"features must have one row per spike ({labels.size}), got {x.shape}"
            )
    if labels.size and (labels.min() < 0 or labels.max() >= n_units):
        raise ValueError(f"unit_index must lie in [0, {n_units}), got [{labels.min()}, {labels.max()}]")
    if min_part < 2:
        raise ValueError(f"min_part must be >= 2, got {min_part}")
    if not 0.0 <= min_fraction <= 0.5:
        raise ValueError(f"min_fraction must lie in [0, 0.5], got {min_fraction}")
    if x is not None:
        x = x.reshape(len(x), -1)
    # As given; converted to float64 one unit at a time.
    amp = None if amplitudes is None else np.asarray(amplitudes)
    if amp is not None and amp.shape != labels.shape:
        raise ValueError(f"amplitudes {amp.shape} must have one value per spike {labels.shape}")

    def unit_features(unit: int, members: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        if x is not None:
            return np.asarray(x[members], dtype=np.float64)
        root = parent[unit]  # the original unit every part of it comes from
        rows = np.flatnonzero(original == root)
        block = np.asarray(read_unit(root))
        if len(block) != len(rows):
            raise ValueError(
                f"features({root}) must give one row per spike of unit {root} "
                f"({len(rows)}), got {len(block)}"
            )
        block = block.reshape(len(block), -1)
        return np.asarray(block[np.searchsorted(rows, members)], dtype=np.float64)

    edges, fraction = time_bins(n_samples, bin_samples)
    # Time bin of every spike, in blocks (no int64 temporaries of all spikes).
    bins = np.empty(times.size, dtype=np.int32 if len(fraction) < 2**31 else np.int64)
    for lo in range(0, times.size, SPIKE_BLOCK):
        block = np.searchsorted(edges, times[lo : lo + SPIKE_BLOCK], side="right") - 1
        bins[lo : lo + SPIKE_BLOCK] = np.clip(block, 0, len(fraction) - 1)
    parent = list(range(n_units))
    decisions: list[SplitDecision] = []
    queue = [(unit, 0) for unit in range(n_units)]
    while queue:
        unit, depth = queue.pop(0)
        members = np.flatnonzero(labels == unit)
        if depth >= max_depth or members.size < 2 * min_part:
            continue
        found = None
        for attempt in ("features", "amplitude", "amplitude inside the bounds"):
            if attempt == "features":
                cut = _two_way_cut(unit_features(unit, members), n_dims=n_dims, seed=seed)
            elif amp is None or (attempt != "amplitude" and amplitude_bounds is None):
                cut = None
            else:
                bounds = amplitude_bounds if attempt != "amplitude" else None
                cut = _amplitude_cut(amp[members].astype(np.float64), bounds)
            if cut is None:
                continue
            score, side = cut
            n_high = int(side.sum())
            smaller = min(n_high, side.size - n_high)
            if score < split_threshold or smaller < max(min_part, min_fraction * side.size):
                continue
            counts_a = np.bincount(bins[members[side]], minlength=len(fraction)).astype(np.float64)
            counts_b = np.bincount(bins[members[~side]], minlength=len(fraction)).astype(np.float64)
            ratio, z = time_overlap(counts_a, counts_b, fraction)
            if ratio <= max_overlap_ratio and z <= max_complementarity_z:
                continue  # pieces taking turns in time: one drifting neuron
            found = (attempt.split()[0], score, side, n_high, ratio, z)
            break
        if found is None:
            continue
        attempt, score, side, n_high, ratio, z = found
        # The larger part keeps the index.
        moved = members[side] if n_high <= side.size - n_high else members[~side]
        new = len(parent)
        labels[moved] = new
        parent.append(parent[unit])
        decisions.append(SplitDecision(unit, new, members.size - moved.size, moved.size,
                                       float(score), float(ratio), float(z), attempt))
        queue += [(unit, depth + 1), (new, depth + 1)]
    return labels, np.asarray(parent, dtype=np.int64), tuple(decisions)
