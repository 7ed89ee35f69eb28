"""Quality metrics per sorted unit.

The metrics follow the definitions used by the Allen Institute ecephys
pipeline (Siegle et al. 2021) and the papers they cite; every one is
re-implemented here from its published definition.

==========================  =================================================
metric                      definition
==========================  =================================================
``firing_rate``             spikes per second over the whole recording (Hz)
``presence_ratio``          fraction of ``n_bins`` equal time bins holding at
                            least one spike of the unit
``isi_violations_ratio``    Hill et al. 2011: rate of inter-spike intervals
                            shorter than the refractory threshold divided by
                            the rate expected if the whole train were
                            contamination; ``isi_violations_count`` is the
                            number of such intervals
``amplitude_cutoff``        fraction of spikes missed below the detection
                            threshold, from the symmetry of the amplitude
                            histogram (capped at 0.5)
``snr``                     template peak-to-peak on the best channel divided
                            by that channel's noise level
``isolation_distance``      Harris et al. 2001: squared Mahalanobis distance
                            of the n-th closest other spike, n = unit size
``l_ratio``                 Schmitzer-Torbert et al. 2005: summed chi-square
                            tail probability of the other spikes, per spike
``d_prime``                 separation of unit and neighbours along the
                            Fisher linear discriminant, in pooled SDs
``nn_hit_rate``             Chung et al. 2017: fraction of the unit's spikes'
                            nearest neighbours that belong to the unit
``nn_miss_rate``            fraction of the neighbours' spikes' nearest
                            neighbours that belong to the unit
``silhouette_score``        mean silhouette of the unit's spikes against the
                            neighbouring units (Rousseeuw 1987)
``max_drift``               range of the median spike depth over intervals (µm)
``cumulative_drift``        summed change of that median between intervals (µm)
==========================  =================================================

PC-space metrics use the per-spike principal-component features of the
unit and of its *neighbours*: the units whose feature channels include the
unit's ``n_channels_to_compare`` largest-template channels, so that every
spike compared has features on the same channels. Spikes are subsampled per
unit (at most ``max_spikes_per_unit``, chosen with a seeded generator) to
bound the cost, as the Allen pipeline does.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import linalg, ndimage, spatial, stats

from .checks import check_int as _check_int
from .checks import check_positive as _check_positive
from .tables import take_rows

#: Names of the arrays returned by :func:`compute_quality_metrics`, in order.
METRIC_NAMES = (
    "firing_rate",
    "presence_ratio",
    "isi_violations_ratio",
    "isi_violations_count",
    "amplitude_cutoff",
    "snr",
    "isolation_distance",
    "l_ratio",
    "d_prime",
    "nn_hit_rate",
    "nn_miss_rate",
    "silhouette_score",
    "max_drift",
    "cumulative_drift",
)

#: Largest number of float64 distances held at once by :func:`silhouette`.
_DISTANCE_BLOCK_VALUES = 2_000_000


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_spikes(
    spikes: np.ndarray, *, n_units: int, n_samples: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Validate a spike table; return its sample and unit indices as int64."""
    names = getattr(getattr(spikes, "dtype", None), "names", None) or ()
    if "sample_index" not in names or "unit_index" not in names:
        raise ValueError(
            "spikes must be a structured array with fields 'sample_index' and "
            f"'unit_index' (SPIKE_DTYPE), got fields {names}"
        )
    if spikes.ndim != 1:
        raise ValueError(f"spikes must be one-dimensional, got shape {spikes.shape}")
    samples = spikes["sample_index"].astype(np.int64)
    units = spikes["unit_index"].astype(np.int64)
    if units.size and (units.min() < 0 or units.max() >= n_units):
        raise ValueError(
            f"spikes['unit_index'] must lie in [0, {n_units}), got values in "
            f"[{units.min()}, {units.max()}]"
        )
    if samples.size and (samples.min() < 0 or samples.max() >= n_samples):
        raise ValueError(
            f"spikes['sample_index'] must lie in [0, n_samples={n_samples}), got "
            f"values in [{samples.min()}, {samples.max()}]"
        )
    return samples, units


def _check_features(name: str, features: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must have shape (n_spikes, n_features), got {array.shape}"
        )
    return array


def _check_feature_pair(
    features_self: npt.ArrayLike, features_other: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    own = _check_features("features_self", features_self)
    other = _check_features("features_other", features_other)
    if own.shape[1] != other.shape[1]:
        raise ValueError(
            "features_other must have as many features as features_self "
            f"({own.shape[1]}), got {other.shape[1]}"
        )
    return own, other


# ---------------------------------------------------------------------------
# Spike-train metrics (all units at once)
# ---------------------------------------------------------------------------


def firing_rate(
    spikes: np.ndarray, *, n_units: int, n_samples: int, sampling_rate_hz: float
) -> npt.NDArray[np.float64]:
    """Mean firing rate of every unit over the whole recording.

    Parameters
    ----------
    spikes : ndarray of SPIKE_DTYPE
        Sorted spikes; only ``sample_index`` and ``unit_index`` are used.
    n_units : int
        Number of units; ``unit_index`` lies in ``[0, n_units)``.
    n_samples : int
        Length of the recording in samples.
    sampling_rate_hz : float
        Sampling rate.

    Returns
    -------
    ndarray of float64, shape (n_units,)
        Spikes per second; NaN for every unit when ``n_samples`` is 0.
    """
    n_units = _check_int("n_units", n_units, 0)
    n_samples = _check_int("n_samples", n_samples, 0)
    sampling_rate_hz = _check_positive("sampling_rate_hz", sampling_rate_hz)
    _, units = _check_spikes(spikes, n_units=n_units, n_samples=n_samples)
    if n_samples == 0:
        return np.full(n_units, np.nan)
    counts = np.bincount(units, minlength=n_units)
    return counts / (n_samples / sampling_rate_hz)


def presence_ratio(
    spikes: np.ndarray, *, n_units: int, n_samples: int, n_bins: int = 100
) -> npt.NDArray[np.float64]:
    """Fraction of equal time bins of the recording in which each unit fires.

    Parameters
    ----------
    spikes : ndarray of SPIKE_DTYPE
        Sorted spikes.
    n_units : int
        Number of units.
    n_samples : int
        Length of the recording in samples; the bins tile ``[0, n_samples)``.
    n_bins : int, default 100
        Number of bins.

    Returns
    -------
    ndarray of float64, shape (n_units,)
        Values in [0, 1]; NaN for every unit when ``n_samples`` is 0.
    """
    n_units = _check_int("n_units", n_units, 0)
    n_samples = _check_int("n_samples", n_samples, 0)
    n_bins = _check_int("n_bins", n_bins, 1)
    samples, units = _check_spikes(spikes, n_units=n_units, n_samples=n_samples)
    if n_samples == 0:
        return np.full(n_units, np.nan)
    bins = samples * n_bins // n_samples
    occupied = np.unique(units * n_bins + bins)
    return np.bincount(occupied // n_bins, minlength=n_units) / n_bins


def isi_violations(
    spikes: np.ndarray,
    *,
    n_units: int,
    n_samples: int,
    sampling_rate_hz: float,
    isi_threshold_s: float = 0.0015,
    min_isi_s: float = 0.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Refractory-period violations (Hill et al. 2011).

    Spikes closer than or exactly ``min_isi_s`` to the previous spike of the
    same unit are treated as duplicates and removed first. With ``N`` the
    remaining spikes, ``V`` the intervals shorter than ``isi_threshold_s``
    and ``T`` the recording duration, the ratio is the violation rate over
    the rate expected from a fully contaminated unit::

        ratio = (V / (2 N (isi_threshold_s - min_isi_s))) / (N / T)

    A value of 1 means violations as frequent as for a random spike train.

    Parameters
    ----------
    spikes : ndarray of SPIKE_DTYPE
        Sorted spikes (any order; each unit's train is sorted internally).
    n_units : int
        Number of units.
    n_samples : int
        Length of the recording in samples.
    sampling_rate_hz : float
        Sampling rate.
    isi_threshold_s : float, default 0.0015
        Refractory period; intervals strictly shorter are violations.
    min_isi_s : float, default 0.0
        Shortest interval the sorter can produce; must be < ``isi_threshold_s``.

    Returns
    -------
    ratio : ndarray of float64, shape (n_units,)
        Violation ratio; NaN for units without spikes.
    count : ndarray of int64, shape (n_units,)
        Number of violating intervals.
    """
    n_units = _check_int("n_units", n_units, 0)
    n_samples = _check_int("n_samples", n_samples, 0)
    sampling_rate_hz = _check_positive("sampling_rate_hz", sampling_rate_hz)
    isi_threshold_s = _check_positive("isi_threshold_s", isi_threshold_s)
    if not 0 <= min_isi_s < isi_threshold_s:
        raise ValueError(
            f"min_isi_s must be >= 0 and < isi_threshold_s={isi_threshold_s}, "
            f"got {min_isi_s!r}"
        )
    samples, units = _check_spikes(spikes, n_units=n_units, n_samples=n_samples)
    order = np.lexsort((samples, units))
    times_s = samples[order] / sampling_rate_hz
    units = units[order]

    duplicate = (units[1:] == units[:-1]) & (np.diff(times_s) <= min_isi_s)
    keep = np.ones(units.size, dtype=bool)
    keep[1:][duplicate] = False
    times_s, units = times_s[keep], units[keep]

    violating = (units[1:] == units[:-1]) & (np.diff(times_s) < isi_threshold_s)
    count = np.bincount(units[1:][violating], minlength=n_units).astype(np.int64)
    n_spikes = np.bincount(units, minlength=n_units)
    duration_s = n_samples / sampling_rate_hz
    ratio = np.full(n_units, np.nan)
    has = n_spikes > 0
    ratio[has] = (
        count[has]
        * duration_s
        / (2.0 * n_spikes[has].astype(np.float64) ** 2 * (isi_threshold_s - min_isi_s))
    )
    return ratio, count


def amplitude_cutoff(
    amplitudes: npt.ArrayLike, *, n_bins: int = 500, smoothing_bins: float = 3.0
) -> float:
    """Estimated fraction of a unit's spikes missed below threshold.

    The amplitude histogram (density, ``n_bins`` bins) is smoothed with a
    Gaussian of ``smoothing_bins`` bins. Above its peak, the bin whose
    density is closest to that of the lowest-amplitude bin mirrors the cut;
    the density mass above it estimates the mass missing below the cut,
    relative to the observed spikes (Allen's convention), capped at 0.5.

    Parameters
    ----------
    amplitudes : array_like, shape (n_spikes,)
        Spike amplitudes of one unit (any positive scale, e.g. template
        scalings).
    n_bins : int, default 500
        Histogram bins.
    smoothing_bins : float, default 3.0
        Standard deviation of the smoothing Gaussian, in bins.

    Returns
    -------
    float
        Missing fraction in [0, 0.5]; NaN without finite amplitudes.
    """
    n_bins = _check_int("n_bins", n_bins, 1)
    smoothing_bins = _check_positive("smoothing_bins", smoothing_bins)
    values = np.asarray(amplitudes, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    density, edges = np.histogram(values, bins=n_bins, density=True)
    smoothed = ndimage.gaussian_filter1d(density, smoothing_bins)
    peak = int(np.argmax(smoothed))
    mirror = peak + int(np.argmin(np.abs(smoothed[peak:] - smoothed[0])))
    missing = smoothed[mirror:].sum() * (edges[1] - edges[0])
    return float(min(missing, 0.5))


def snr(
    templates: npt.ArrayLike, *, noise_levels: npt.ArrayLike | None = None
) -> npt.NDArray[np.float64]:
    """Template peak-to-peak amplitude on the best channel over its noise.

    Parameters
    ----------
    templates : array_like, shape (n_units, n_times, n_channels)
        Mean waveforms.
    noise_levels : array_like, shape (n_channels,), optional
        Noise standard deviation per channel, in the units of ``templates``.
        Default: ones, right for whitened noise-normalised templates.

    Returns
    -------
    ndarray of float64, shape (n_units,)
        Largest per-channel ``ptp / noise``; NaN for a template without
        samples or channels.
    """
    templates = np.asarray(templates, dtype=np.float64)
    if templates.ndim != 3:
        raise ValueError(
            "templates must have shape (n_units, n_times, n_channels), got "
            f"{templates.shape}"
        )
    n_units, n_times, n_channels = templates.shape
    noise = (
        np.ones(n_channels)
        if noise_levels is None
        else np.asarray(noise_levels, dtype=np.float64)
    )
    if noise.shape != (n_channels,) or not np.all(noise > 0):
        raise ValueError(
            f"noise_levels must be {n_channels} values > 0, got shape {noise.shape} "
            f"with minimum {noise.min() if noise.size else None}"
        )
    if n_times == 0 or n_channels == 0:
        return np.full(n_units, np.nan)
    return (np.ptp(templates, axis=1) / noise).max(axis=1)


# ---------------------------------------------------------------------------
# PC-space metrics (one unit against its neighbours)
# ---------------------------------------------------------------------------


def mahalanobis_metrics(
    features_self: npt.ArrayLike, features_other: npt.ArrayLike
) -> tuple[float, float]:
    """Isolation distance and L-ratio of one unit in feature space.

    Distances are squared Mahalanobis distances from the unit's mean under
    its own sample covariance. Isolation distance (Harris et al. 2001) is
    the distance of the ``n_self``-th closest other spike; it is undefined
    (NaN) when there are fewer other spikes than own spikes. L-ratio
    (Schmitzer-Torbert et al. 2005) is ``sum(chi2.sf(d2_other, n_features))
    / n_self``.

    Parameters
    ----------
    features_self : array_like, shape (n_self, n_features)
        Features of the unit's spikes.
    features_other : array_like, shape (n_other, n_features)
        Features of the other spikes, on the same channels.

    Returns
    -------
    isolation_distance : float
        NaN when undefined (see above), when ``n_self <= n_features`` or the
        covariance is singular, or when there are no other spikes.
    l_ratio : float
        NaN in the same cases except ``n_other < n_self``.
    """
    own, other = _check_feature_pair(features_self, features_other)
    n_self, n_features = own.shape
    if n_self <= n_features or other.shape[0] == 0:
        return float("nan"), float("nan")
    mean = own.mean(axis=0)
    try:
        chol = linalg.cholesky(np.atleast_2d(np.cov(own, rowvar=False)), lower=True)
    except linalg.LinAlgError:
        return float("nan"), float("nan")
    unmix = linalg.solve_triangular(chol, np.eye(n_features), lower=True)
    whitened = (other - mean) @ unmix.T
    d2_other = np.einsum("ij,ij->i", whitened, whitened)
    l_ratio = float(stats.chi2.sf(d2_other, n_features).sum() / n_self)
    if other.shape[0] < n_self:
        return float("nan"), l_ratio
    isolation = float(np.partition(d2_other, n_self - 1)[n_self - 1])
    return isolation, l_ratio


def d_prime(features_self: npt.ArrayLike, features_other: npt.ArrayLike) -> float:
    """Separation of a unit from its neighbours along the Fisher discriminant.

    The features are projected on ``w = Sw^-1 (mean_self - mean_other)``,
    ``Sw`` the summed within-class scatter (linear discriminant analysis);
    d' is the difference of the projected means over
    ``sqrt((var_self + var_other) / 2)``.

    Parameters
    ----------
    features_self : array_like, shape (n_self, n_features)
        Features of the unit's spikes.
    features_other : array_like, shape (n_other, n_features)
        Features of the other spikes.

    Returns
    -------
    float
        d' (>= 0); NaN with fewer than 2 spikes in either class or when the
        projections have no spread.
    """
    own, other = _check_feature_pair(features_self, features_other)
    if own.shape[0] < 2 or other.shape[0] < 2:
        return float("nan")
    centred_own = own - own.mean(axis=0)
    centred_other = other - other.mean(axis=0)
    scatter = centred_own.T @ centred_own + centred_other.T @ centred_other
    direction = linalg.lstsq(scatter, own.mean(axis=0) - other.mean(axis=0))[0]
    projected_own = own @ direction
    projected_other = other @ direction
    spread = np.sqrt(0.5 * (projected_own.var() + projected_other.var()))
    if not spread > 0:
        return float("nan")
    return float((projected_own.mean() - projected_other.mean()) / spread)


def _nearest_neighbours(
    points: npt.NDArray[np.float64], n_neighbors: int
) -> npt.NDArray[np.int64]:
    """Indices of each point's ``n_neighbors`` nearest other points (any order).

    Brute force in float32 on blocks of rows with a matrix product, about
    twice as fast as a k-d tree in the 10-30 dimensions of PC features. Rows
    are ranked by ``|y|^2 - 2 x.y``, which orders ``|x - y|^2`` for a fixed
    ``x``; centring the points first keeps that difference accurate.
    """
    centred = (points - points.mean(axis=0)).astype(np.float32)
    n_points = centred.shape[0]
    squared = np.einsum("ij,ij->i", centred, centred)
    out = np.empty((n_points, n_neighbors), dtype=np.int64)
    block = max(1, _DISTANCE_BLOCK_VALUES // n_points)
    for lo in range(0, n_points, block):
        rows = centred[lo : lo + block]
        rank = rows @ centred.T
        rank *= -2.0
        rank += squared
        rank[np.arange(rows.shape[0]), np.arange(lo, lo + rows.shape[0])] = np.inf
        out[lo : lo + block] = np.argpartition(rank, n_neighbors - 1, axis=1)[
            :, :n_neighbors
        ]
    return out


def nearest_neighbor_metrics(
    features_self: npt.ArrayLike,
    features_other: npt.ArrayLike,
    *,
    n_neighbors: int = 3,
) -> tuple[float, float]:
    """Nearest-neighbour hit and miss rates (Chung et al. 2017).

    Each spike's ``n_neighbors`` nearest other spikes (Euclidean, itself
    excluded) are found among the unit's and the other spikes together.

    Parameters
    ----------
    features_self : array_like, shape (n_self, n_features)
        Features of the unit's spikes.
    features_other : array_like, shape (n_other, n_features)
        Features of the other spikes.
    n_neighbors : int, default 3
        Neighbours per spike, the spike itself not counted.

    Returns
    -------
    hit_rate : float
        Fraction of the unit's spikes' neighbours that belong to the unit.
    miss_rate : float
        Fraction of the other spikes' neighbours that belong to the unit.
        Both NaN with fewer than 2 own spikes, no other spike, or fewer than
        ``n_neighbors + 1`` spikes in all.
    """
    own, other = _check_feature_pair(features_self, features_other)
    n_neighbors = _check_int("n_neighbors", n_neighbors, 1)
    n_self, n_total = own.shape[0], own.shape[0] + other.shape[0]
    if n_self < 2 or other.shape[0] == 0 or n_total <= n_neighbors:
        return float("nan"), float("nan")
    neighbours = _nearest_neighbours(np.concatenate([own, other]), n_neighbors)
    hit_rate = float(np.mean(neighbours[:n_self] < n_self))
    miss_rate = float(np.mean(neighbours[n_self:] < n_self))
    return hit_rate, miss_rate


def silhouette(
    features_self: npt.ArrayLike,
    features_other: npt.ArrayLike,
    labels_other: npt.ArrayLike,
) -> float:
    """Mean silhouette of a unit's spikes against the other clusters.

    For each own spike, ``a`` is its mean distance to the other own spikes
    and ``b`` the smallest mean distance to the spikes of one other
    cluster; its silhouette is ``(b - a) / max(a, b)`` (0 where both are 0).

    Parameters
    ----------
    features_self : array_like, shape (n_self, n_features)
        Features of the unit's spikes.
    features_other : array_like, shape (n_other, n_features)
        Features of the other spikes.
    labels_other : array_like, shape (n_other,)
        Cluster of each other spike.

    Returns
    -------
    float
        Mean silhouette in [-1, 1]; NaN with fewer than 2 own spikes or no
        other spike.
    """
    own, other = _check_feature_pair(features_self, features_other)
    labels = np.asarray(labels_other).ravel()
    if labels.shape != (other.shape[0],):
        raise ValueError(
            f"labels_other must have shape ({other.shape[0]},), got {labels.shape}"
        )
    n_self = own.shape[0]
    if n_self < 2 or other.shape[0] == 0:
        return float("nan")
    order = np.argsort(labels, kind="stable")
    other = other[order]
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    block = max(1, _DISTANCE_BLOCK_VALUES // (n_self + other.shape[0]))
    values = np.empty(n_self)
    for lo in range(0, n_self, block):
        rows = own[lo : lo + block]
        a = spatial.distance.cdist(rows, own).sum(axis=1) / (n_self - 1)
        to_other = spatial.distance.cdist(rows, other)
        b = (np.add.reduceat(to_other, starts, axis=1) / counts).min(axis=1)
        largest = np.maximum(a, b)
        values[lo : lo + block] = np.divide(
            b - a, largest, out=np.zeros_like(a), where=largest > 0
        )
    return float(values.mean())


# ---------------------------------------------------------------------------
# Depth and drift
# ---------------------------------------------------------------------------


def spike_depths_from_pc_features(
    pc_features: npt.ArrayLike,
    pc_feature_ind: npt.ArrayLike,
    unit_index: npt.ArrayLike,
    positions_um: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """Per-spike depth as the feature-energy-weighted mean channel depth.

    Each spike's weight on a feature channel is its summed squared PC
    features there; its depth is the weighted mean ``y`` of those channels.

    Parameters
    ----------
    pc_features : array_like, shape (n_spikes, n_pcs, n_pc_channels)
        Per-spike PC features.
    pc_feature_ind : array_like of int, shape (n_units, n_pc_channels)
        Channels of each unit's features.
    unit_index : array_like of int, shape (n_spikes,)
        Unit of each spike.
    positions_um : array_like, shape (n_channels, 2)
        Channel positions (x, y).

    Returns
    -------
    ndarray of float64, shape (n_spikes,)
        Depth (y) in µm; NaN for a spike whose features are all zero.
    """
    features = np.asarray(pc_features, dtype=np.float64)
    channels = np.asarray(pc_feature_ind)
    units = np.asarray(unit_index).ravel()
    positions = np.asarray(positions_um, dtype=np.float64)
    if features.ndim != 3 or features.shape[0] != units.size:
        raise ValueError(
            f"pc_features must have shape ({units.size}, n_pcs, n_pc_channels), "
            f"got {features.shape}"
        )
    if channels.ndim != 2 or channels.shape[1] != features.shape[2]:
        raise ValueError(
            f"pc_feature_ind must have shape (n_units, {features.shape[2]}), "
            f"got {channels.shape}"
        )
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(
            f"positions_um must have shape (n_channels, 2), got {positions.shape}"
        )
    weights = np.einsum("spc,spc->sc", features, features)
    depths = positions[channels[units], 1]
    total = weights.sum(axis=1)
    return np.divide(
        (weights * depths).sum(axis=1),
        total,
        out=np.full(units.size, np.nan),
        where=total > 0,
    )


def drift_metrics(
    spikes: np.ndarray,
    spike_depths_um: npt.ArrayLike,
    *,
    n_units: int,
    n_samples: int,
    sampling_rate_hz: float,
    interval_s: float = 51.0,
    min_spikes_per_interval: int = 10,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Drift of each unit's median depth over consecutive time intervals.

    The recording is cut into intervals of ``interval_s`` from sample 0 (the
    last one may be shorter). The median finite depth of a unit is taken in
    every interval where it has at least ``min_spikes_per_interval`` spikes;
    intervals below that are skipped.

    Parameters
    ----------
    spikes : ndarray of SPIKE_DTYPE
        Sorted spikes.
    spike_depths_um : array_like, shape (n_spikes,)
        Depth (y) of each spike in µm; NaN depths are ignored.
    n_units : int
        Number of units.
    n_samples : int
        Length of the recording in samples.
    sampling_rate_hz : float
        Sampling rate.
    interval_s : float, default 51.0
        Interval length (Allen's default).
    min_spikes_per_interval : int, default 10
        Spikes needed for an interval's median to count.

    Returns
    -------
    max_drift : ndarray of float64, shape (n_units,)
        Largest minus smallest interval median, in µm.
    cumulative_drift : ndarray of float64, shape (n_units,)
        Sum of absolute changes between successive kept intervals, in µm.
        Both NaN for units with fewer than 2 kept intervals.
    """
    n_units = _check_int("n_units", n_units, 0)
    n_samples = _check_int("n_samples", n_samples, 0)
    sampling_rate_hz = _check_positive("sampling_rate_hz", sampling_rate_hz)
    interval_s = _check_positive("interval_s", interval_s)
    min_spikes = _check_int("min_spikes_per_interval", min_spikes_per_interval, 1)
    samples, units = _check_spikes(spikes, n_units=n_units, n_samples=n_samples)
    depths = np.asarray(spike_depths_um, dtype=np.float64).ravel()
    if depths.shape != samples.shape:
        raise ValueError(
            f"spike_depths_um must have shape {samples.shape}, got {depths.shape}"
        )
    finite = np.isfinite(depths)
    samples, units, depths = samples[finite], units[finite], depths[finite]
    interval_samples = interval_s * sampling_rate_hz
    n_intervals = max(1, int(np.ceil(n_samples / interval_samples)))
    keys = units * n_intervals + (samples / interval_samples).astype(np.int64)
    order = np.lexsort((depths, keys))
    keys, depths = keys[order], depths[order]

    group_keys, starts, counts = np.unique(keys, return_index=True, return_counts=True)
    kept = counts >= min_spikes
    group_keys, starts, counts = group_keys[kept], starts[kept], counts[kept]
    medians = 0.5 * (depths[starts + (counts - 1) // 2] + depths[starts + counts // 2])
    group_units = group_keys // n_intervals

    n_kept = np.bincount(group_units, minlength=n_units)
    highest = np.full(n_units, -np.inf)
    lowest = np.full(n_units, np.inf)
    np.maximum.at(highest, group_units, medians)
    np.minimum.at(lowest, group_units, medians)
    same_unit = group_units[1:] == group_units[:-1]
    steps = np.abs(np.diff(medians))[same_unit]
    cumulative = np.bincount(group_units[1:][same_unit], steps, minlength=n_units)

    measurable = n_kept >= 2
    max_drift = np.where(measurable, highest - lowest, np.nan)
    cumulative_drift = np.where(measurable, cumulative, np.nan)
    return max_drift, cumulative_drift


# ---------------------------------------------------------------------------
# All metrics
# ---------------------------------------------------------------------------


def _subsample_per_unit(
    units: npt.NDArray[np.int64], *, n_units: int, max_per_unit: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pick at most ``max_per_unit`` random spikes of every unit.

    Returns the picked spike indices grouped by unit (ascending within a
    unit) and the offsets of each unit's group, shape (n_units + 1,).
    """
    keys = np.random.default_rng(seed).random(units.size)
    by_unit = np.lexsort((keys, units))
    counts = np.bincount(units, minlength=n_units)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    rank = np.arange(units.size) - offsets[units[by_unit]]
    picked = by_unit[rank < max_per_unit]
    picked = picked[np.lexsort((picked, units[picked]))]
    picked_counts = np.minimum(counts, max_per_unit)
    return picked, np.concatenate([[0], np.cumsum(picked_counts)])


def _pc_metrics(
    units: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    templates: npt.NDArray[np.float32],
    pc_features: npt.ArrayLike,
    pc_feature_ind: npt.NDArray[np.int64],
    *,
    min_spikes: int,
    max_spikes_per_unit: int,
    n_channels_to_compare: int,
    n_neighbors: int,
    seed: int,
) -> dict[str, npt.NDArray[np.float64]]:
    n_units = templates.shape[0]
    names = (
        "isolation_distance",
        "l_ratio",
        "d_prime",
        "nn_hit_rate",
        "nn_miss_rate",
        "silhouette_score",
    )
    out = {name: np.full(n_units, np.nan) for name in names}
    if units.size == 0:
        return out
    picked, offsets = _subsample_per_unit(
        units, n_units=n_units, max_per_unit=max_spikes_per_unit, seed=seed
    )
    # Read a block of rows at a time (an HDF5 dataset: no point selection).
    features = take_rows(pc_features, picked).astype(np.float32, copy=False)
    n_pcs, n_pc_channels = features.shape[1:]

    slot = np.full((n_units, templates.shape[2]), -1, dtype=np.int64)
    slot[np.arange(n_units)[:, None], pc_feature_ind] = np.arange(n_pc_channels)
    template_ptp = np.ptp(templates, axis=1)
    n_compare = min(n_channels_to_compare, n_pc_channels)

    for unit in np.flatnonzero(counts >= min_spikes):
        own_channels = pc_feature_ind[unit]
        strength = template_ptp[unit, own_channels]
        channels = own_channels[np.argsort(-strength, kind="stable")[:n_compare]]
        columns = slot[:, channels]
        neighbours = np.flatnonzero((columns >= 0).all(axis=1) & (counts > 0))
        rows = np.concatenate(
            [np.arange(offsets[v], offsets[v + 1]) for v in neighbours]
        )
        row_units = units[picked[rows]]
        row_columns = columns[row_units]
        local = features[
            rows[:, None, None],
            np.arange(n_pcs)[None, :, None],
            row_columns[:, None, :],
        ].reshape(rows.size, n_pcs * n_compare)
        is_self = row_units == unit
        own, other = local[is_self], local[~is_self]
        isolation, l_ratio = mahalanobis_metrics(own, other)
        hit, miss = nearest_neighbor_metrics(own, other, n_neighbors=n_neighbors)
        out["isolation_distance"][unit] = isolation
        out["l_ratio"][unit] = l_ratio
        out["d_prime"][unit] = d_prime(own, other)
        out["nn_hit_rate"][unit] = hit
        out["nn_miss_rate"][unit] = miss
        out["silhouette_score"][unit] = silhouette(own, other, row_units[~is_self])
    return out


def compute_quality_metrics(
    spikes: np.ndarray,
    *,
    n_samples: int,
    sampling_rate_hz: float,
    templates: npt.ArrayLike,
    pc_features: npt.ArrayLike,
    pc_feature_ind: npt.ArrayLike,
    spike_depths_um: npt.ArrayLike | None = None,
    seed: int = 0,
    isi_threshold_s: float = 0.0015,
    min_isi_s: float = 0.0,
    n_presence_bins: int = 100,
    min_spikes: int = 10,
    max_spikes_per_unit: int = 500,
    n_channels_to_compare: int = 4,
    n_neighbors: int = 3,
    drift_interval_s: float = 51.0,
    min_spikes_per_interval: int = 10,
) -> dict[str, np.ndarray]:
    """Every quality metric of every unit (see the module docstring).

    Parameters
    ----------
    spikes : ndarray of SPIKE_DTYPE, shape (n_spikes,)
        Sorted spikes; ``amplitude`` is used for ``amplitude_cutoff``.
    n_samples : int
        Length of the recording in samples.
    sampling_rate_hz : float
        Sampling rate.
    templates : array_like, shape (n_units, n_times, n_channels)
        Templates in whitened, noise-normalised units (noise SD 1); sets
        ``n_units``, ``snr`` and the channel order of the PC metrics.
    pc_features : array_like, shape (n_spikes, n_pcs, n_pc_channels)
        Per-spike PC features, aligned with ``spikes``. Only subsampled
        rows are read (sorted fancy indexing), so a memory map works.
    pc_feature_ind : array_like of int, shape (n_units, n_pc_channels)
        Channels of each unit's features. All units must share one PC basis.
    spike_depths_um : array_like, shape (n_spikes,), optional
        Depth (y) of each spike, for the drift metrics (NaN without it);
        :func:`spike_depths_from_pc_features` gives one.
    seed : int, default 0
        Seed of the per-unit subsampling.
    isi_threshold_s, min_isi_s : float
        See :func:`isi_violations`.
    n_presence_bins : int, default 100
        See :func:`presence_ratio`.
    min_spikes : int, default 10
        Units with fewer spikes get NaN for ``amplitude_cutoff`` and the
        PC-space metrics.
    max_spikes_per_unit : int, default 500
        Subsampling cap per unit for the PC-space metrics.
    n_channels_to_compare : int, default 4
        Feature channels (a unit's largest-template ones) compared across
        units; units whose feature channels include them all are the
        neighbours.
    n_neighbors : int, default 3
        See :func:`nearest_neighbor_metrics`.
    drift_interval_s, min_spikes_per_interval
        See :func:`drift_metrics`.

    Returns
    -------
    dict of str to ndarray, each shape (n_units,)
        Keys :data:`METRIC_NAMES`; ``isi_violations_count`` is int64, the
        others float64 with NaN where undefined.
    """
    templates = np.asarray(templates, dtype=np.float32)
    if templates.ndim != 3:
        raise ValueError(
            "templates must have shape (n_units, n_times, n_channels), got "
            f"{templates.shape}"
        )
    n_units = templates.shape[0]
    n_samples = _check_int("n_samples", n_samples, 0)
    min_spikes = _check_int("min_spikes", min_spikes, 1)
    max_spikes_per_unit = _check_int("max_spikes_per_unit", max_spikes_per_unit, 2)
    n_channels_to_compare = _check_int(
        "n_channels_to_compare", n_channels_to_compare, 1
    )
    _check_int("n_neighbors", n_neighbors, 1)
    _check_int("seed", seed, 0)
    _, units = _check_spikes(spikes, n_units=n_units, n_samples=n_samples)

    if not hasattr(pc_features, "shape"):
        pc_features = np.asarray(pc_features, dtype=np.float32)
    if len(pc_features.shape) != 3 or pc_features.shape[0] != units.size:
        raise ValueError(
            f"pc_features must have shape ({units.size}, n_pcs, n_pc_channels), "
            f"got {tuple(pc_features.shape)}"
        )
    pc_feature_ind = np.asarray(pc_feature_ind, dtype=np.int64)
    if pc_feature_ind.shape != (n_units, pc_features.shape[2]):
        raise ValueError(
            f"pc_feature_ind must have shape ({n_units}, {pc_features.shape[2]}), "
            f"got {pc_feature_ind.shape}"
        )
    n_channels = templates.shape[2]
    if pc_feature_ind.size and (
        pc_feature_ind.min() < 0 or pc_feature_ind.max() >= n_channels
    ):
        raise ValueError(
            f"pc_feature_ind must lie in [0, {n_channels}) (template channels), got "
            f"values in [{pc_feature_ind.min()}, {pc_feature_ind.max()}]"
        )

    rate_args = {"n_units": n_units, "n_samples": n_samples}
    metrics: dict[str, npt.NDArray[np.float64]] = {
        "firing_rate": firing_rate(
            spikes, sampling_rate_hz=sampling_rate_hz, **rate_args
        ),
        "presence_ratio": presence_ratio(spikes, n_bins=n_presence_bins, **rate_args),
    }
    ratio, count = isi_violations(
        spikes,
        sampling_rate_hz=sampling_rate_hz,
        isi_threshold_s=isi_threshold_s,
        min_isi_s=min_isi_s,
        **rate_args,
    )
    metrics["isi_violations_ratio"] = ratio
    metrics["isi_violations_count"] = count

    counts = np.bincount(units, minlength=n_units)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    amplitudes = spikes["amplitude"][np.argsort(units, kind="stable")]
    metrics["amplitude_cutoff"] = np.array(
        [
            amplitude_cutoff(amplitudes[offsets[u] : offsets[u + 1]])
            if counts[u] >= min_spikes
            else np.nan
            for u in range(n_units)
        ],
        dtype=np.float64,
    )
    metrics["snr"] = snr(templates)
    metrics.update(
        _pc_metrics(
            units,
            counts,
            templates,
            pc_features,
            pc_feature_ind,
            min_spikes=min_spikes,
            max_spikes_per_unit=max_spikes_per_unit,
            n_channels_to_compare=n_channels_to_compare,
            n_neighbors=n_neighbors,
            seed=seed,
        )
    )
    if spike_depths_um is None:
        metrics["max_drift"] = np.full(n_units, np.nan)
        metrics["cumulative_drift"] = np.full(n_units, np.nan)
    else:
        metrics["max_drift"], metrics["cumulative_drift"] = drift_metrics(
            spikes,
            spike_depths_um,
            sampling_rate_hz=sampling_rate_hz,
            interval_s=drift_interval_s,
            min_spikes_per_interval=min_spikes_per_interval,
            **rate_args,
        )
    return {name: metrics[name] for name in METRIC_NAMES}
