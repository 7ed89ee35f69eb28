"""Clustering kernel: spike features of one channel group -> unit labels.

Algorithm
---------
Spikes are clustered separately for each main channel: spikes sharing a main
channel share a feature space (temporal-PCA coefficients on the same ordered
neighbour channels), and clustering one channel never looks at another, so the
labels of a channel do not depend on how channels are grouped into shards.

For each main channel, a deterministic subsample of at most ``max_fit_spikes``
spikes builds a tree by recursive split and merge (in the spirit of YASS and of
isosplit, Magland & Barnett 2016). At each node:

1. the node's spikes are projected on their top ``n_local_pcs`` principal
   components;
2. a Gaussian mixture over-clusters them into up to ``MAX_COMPONENTS`` pieces;
3. neighbouring pieces are merged, least separated pair first, while the union
   of a pair looks like one cluster on the pair's discriminant axis (see
   :func:`bimodality_score` and ``SEPARATION_SPLIT``); testing pieces of
   similar size is what lets a small cluster beside a big one be told apart,
   and merging a chain of pieces keeps an elongated or skewed cluster whole;
4. each resulting group becomes a child node and is analysed again in its own
   principal subspace; a group smaller than ``min_cluster_size`` is set aside
   as outliers. A node whose pieces all merge is a leaf.

A final pass merges leaves of the channel whose union is unimodal (pieces of
one neuron cut apart high in the tree). Every spike of the channel, not only
the subsample, is then labelled by descending the tree (each node assigns a
spike to its most probable mixture piece). Last, spikes far from their cluster
(probabilistic-PCA Mahalanobis distance above the chi-square
``triage_quantile``) and clusters smaller than ``min_cluster_size`` get ``-1``.

The result depends only on the multiset of (main channel, feature row) pairs
and on ``seed``: rows are sorted internally by value, so the caller may pass
spikes in any order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

#: Fewest subsampled spikes a child node may keep (the floor of
#: ``min_cluster_size`` scaled to the subsample); a node needs twice this to be
#: split at all, as the unimodality test has no power on fewer points.
MIN_FIT_PART = 10

#: Most mixture pieces a node is over-clustered into.
MAX_COMPONENTS = 8

#: Each piece is tested for merging with this many nearest pieces.
MERGE_NEIGHBOURS = 3

#: Most rows of a node used to fit its mixture.
EM_MAX_POINTS = 1000

#: Random starts of each mixture fit (the likeliest fit is kept).
EM_STARTS = 3

#: Most expectation-maximisation iterations of one mixture fit.
EM_ITERATIONS = 50

#: EM stops when the mean log-likelihood per row gains less than this.
EM_TOLERANCE = 1e-3

#: Variance added to covariance diagonals, in squared noise units.
COVARIANCE_RIDGE = 1e-3

#: Separation (gap between side means over pooled standard deviation) of the
#: two sides of a cut that splits whatever the density test says. Cutting a
#: large unimodal sample gives at most about 3.5 (a uniform cut in halves).
SEPARATION_SPLIT = 4.5

#: Sample size at which the separation bar is doubled (it is raised by the
#: factor ``1 + SEPARATION_SMALL_SAMPLE / n``): the best cut of a few dozen
#: unimodal points often looks separated by 4-6 deviations.
SEPARATION_SMALL_SAMPLE = 16.0

#: Count of the outermost density intervals of :func:`bimodality_score`.
FIRST_INTERVAL_COUNT = 3

#: Most refits of a cluster's model while triaging its outliers.
TRIAGE_ROUNDS = 3

#: Leaf id of spikes set aside as outliers inside the tree.
_TRIAGED = -1


def bimodality_score(values: npt.ArrayLike) -> tuple[float, float]:
    """Test 1-D data for unimodality and locate the best cut.

    The sorted data are cut into intervals whose counts grow from 3 at each
    tail towards the middle; their densities are fitted by the closest
    unimodal (non-decreasing then non-increasing) step density, by weighted
    isotonic regression that keeps the counts of each fitted block. Starting
    from each tail and moving towards the mode, the empirical and fitted
    cumulative counts of every prefix are compared as a Kolmogorov-Smirnov
    distance scaled by the square root of the prefix count; the score is the
    largest of these. The cut is at the deepest dip of observed over fitted
    counts (a down-up isotonic fit of their ratio).

    Parameters
    ----------
    values : array_like
        1-D sample (any order).

    Returns
    -------
    score : float
        Bimodality score: below about 2 for unimodal samples of any size
        (uniform being the worst case), growing like the square root of the
        count for bimodal ones.
    cut : float
        Cut point at the deepest density valley relative to the unimodal fit;
        NaN when fewer than 4 values or all values are equal.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = x.size
    if n < 4 or x[-1] == x[0]:
        return 0.0, math.nan
    edges = _interval_edges(n)
    counts = np.diff(edges).astype(np.float64)
    counts[0] += 1.0
    widths = np.maximum(np.diff(x[edges]), 1e-9 * (x[-1] - x[0]))
    fit = _unimodal_fit(counts / widths, widths)
    fitted_counts = fit * widths
    peak_first = int(np.argmax(fit))
    peak_last = fit.size - 1 - int(np.argmax(fit[::-1]))
    score = max(
        _tail_scan(counts[: peak_first + 1], fitted_counts[: peak_first + 1]),
        _tail_scan(counts[peak_last:][::-1], fitted_counts[peak_last:][::-1]),
    )
    valley = -_unimodal_fit(-counts / fitted_counts, fitted_counts)
    lowest = np.flatnonzero(valley == valley.min())
    widest = lowest[np.argmax(widths[lowest])]
    cut = 0.5 * (x[edges[widest]] + x[edges[widest + 1]])
    return float(score), float(cut)


def cluster_spikes(
    features: npt.NDArray[np.floating],
    *,
    main_channels: npt.NDArray[np.integer],
    seed: int,
    min_cluster_size: int = 30,
    n_local_pcs: int = 5,
    split_threshold: float = 2.25,
    max_depth: int = 6,
    triage_quantile: float = 0.999,
    max_fit_spikes: int = 5000,
) -> npt.NDArray[np.int32]:
    """Cluster the spikes of one channel group into units.

    Parameters
    ----------
    features : ndarray, shape (n, k, P) or (n, n_features)
        Per-spike features in noise units: temporal-PCA coefficients of the
        waveform on the ``k`` nearest channels of its main channel. Spikes
        sharing a main channel must share the channel order.
    main_channels : ndarray of int, shape (n,)
        Main (peak) channel of each spike.
    seed : int
        Seed of the subsampling and of the mixture fits; each channel derives
        its own stream from ``(seed, channel)``.
    min_cluster_size : int, optional
        Smallest unit kept; smaller clusters are labelled ``-1``.
    n_local_pcs : int, optional
        Dimensions of the local PCA in which each node is clustered.
    split_threshold : float, optional
        :func:`bimodality_score` from which two pieces stay apart (below it
        they merge). Larger gives fewer units.
    max_depth : int, optional
        Maximum depth of the split tree.
    triage_quantile : float, optional
        Spikes whose squared Mahalanobis distance to their cluster exceeds this
        chi-square quantile are labelled ``-1``; 1 disables triage.
    max_fit_spikes : int, optional
        Most spikes per main channel used to build the tree; all spikes are
        labelled by it.

    Returns
    -------
    labels : ndarray of int32, shape (n,)
        Unit of each spike, ``0..m-1``, or ``-1`` for outliers. Units are
        numbered by main channel, then by decreasing norm of their mean feature
        vector (largest spikes first).

    Raises
    ------
    ValueError
        If an argument has the wrong shape, type or range.

    Notes
    -----
    The result depends only on the set of (main channel, feature row) pairs
    and on ``seed``, not on the order of the rows, so spikes may be passed in
    any order. Channels are independent: clustering a group equals clustering
    each of its channels alone, up to the numbering of units. Linear algebra
    runs on one thread (the matrices are small; more threads only contend).
    """
    flat = _validated_features(features)
    channels = _validated_channels(main_channels, flat.shape[0])
    settings = _Settings(
        min_cluster_size=min_cluster_size,
        n_local_pcs=n_local_pcs,
        split_threshold=split_threshold,
        max_depth=max_depth,
        triage_quantile=triage_quantile,
        max_fit_spikes=max_fit_spikes,
    )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    labels = np.full(flat.shape[0], -1, dtype=np.int32)
    if labels.size == 0:
        return labels
    # Rows sorted by value (channel first) make the result order-independent.
    order = np.lexsort((*flat.T[::-1], channels))
    sorted_channels = channels[order]
    starts = np.flatnonzero(np.r_[True, sorted_channels[1:] != sorted_channels[:-1]])
    stops = np.r_[starts[1:], order.size]
    n_units = 0
    with threadpool_limits(limits=1):
        for start, stop in zip(starts, stops):
            rows = order[start:stop]
            channel = int(sorted_channels[start])
            channel_labels = _cluster_channel(
                flat[rows],
                rng=np.random.default_rng([seed, channel]),
                settings=settings,
            )
            kept = channel_labels >= 0
            labels[rows[kept]] = channel_labels[kept] + n_units
            n_units += int(channel_labels.max(initial=-1)) + 1
    return labels


def _validated_features(features: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Features as a C-ordered (n, n_features) float64 array."""
    array = np.asarray(features)
    if array.ndim not in (2, 3):
        raise ValueError(
            "features must be 2-D (n, n_features) or 3-D (n, k, P), "
            f"got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"features must be a float array, got dtype {array.dtype}")
    n_features = math.prod(array.shape[1:])
    flat = np.ascontiguousarray(
        array.reshape(array.shape[0], n_features), dtype=np.float64
    )
    if flat.shape[1] == 0:
        raise ValueError(f"features must have at least one feature, got {array.shape}")
    if not np.isfinite(flat).all():
        raise ValueError("features must be finite, got NaN or infinity")
    return flat


def _validated_channels(
    main_channels: npt.ArrayLike, n_spikes: int
) -> npt.NDArray[np.int64]:
    """Main channels as an int64 array of length ``n_spikes``."""
    array = np.asarray(main_channels)
    if array.shape != (n_spikes,):
        raise ValueError(
            f"main_channels must have shape ({n_spikes},) like features, "
            f"got {array.shape}"
        )
    if n_spikes and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"main_channels must be integers, got dtype {array.dtype}")
    if n_spikes and array.min() < 0:
        raise ValueError(f"main_channels must be >= 0, got minimum {array.min()}")
    return array.astype(np.int64)


@dataclass(frozen=True)
class _Settings:
    """Scalar parameters of :func:`cluster_spikes`, checked on creation."""

    min_cluster_size: int
    n_local_pcs: int
    split_threshold: float
    max_depth: int
    triage_quantile: float
    max_fit_spikes: int

    def __post_init__(self) -> None:
        lowest_allowed = {
            "min_cluster_size": 1,
            "n_local_pcs": 1,
            "max_depth": 0,
            "max_fit_spikes": 2 * MIN_FIT_PART,
        }
        for name, lowest in lowest_allowed.items():
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or value < lowest
            ):
                raise ValueError(
                    f"{name} must be an integer >= {lowest}, got {value!r}"
                )
        if not self.split_threshold > 0:
            raise ValueError(
                f"split_threshold must be > 0, got {self.split_threshold!r}"
            )
        if not 0 < self.triage_quantile <= 1:
            raise ValueError(
                f"triage_quantile must be in (0, 1], got {self.triage_quantile!r}"
            )


@dataclass(frozen=True)
class _Mixture:
    """Gaussian mixture pieces: log weights, means and inverse Cholesky factors."""

    log_weights: npt.NDArray[np.float64]  # (K,)
    means: npt.NDArray[np.float64]  # (K, d)
    whiteners: npt.NDArray[np.float64]  # (K, d, d)

    def log_densities(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Weighted log density of each piece at each row, shape (K, n).

        The constant ``-d/2 log(2 pi)`` is left out.
        """
        n_pieces, n_dims = self.means.shape
        # One product whitens the rows for every piece: column k*d + i holds
        # row i of piece k's whitener.
        stacked = self.whiteners.transpose(2, 0, 1).reshape(n_dims, -1)
        offsets = (self.whiteners @ self.means[:, :, None])[:, :, 0]
        whitened = (x @ stacked).reshape(-1, n_pieces, n_dims) - offsets
        # log(weight) - log|covariance| / 2, as log|whitener| = -log|covariance| / 2
        log_scale = self.log_weights + np.log(
            np.diagonal(self.whiteners, axis1=1, axis2=2)
        ).sum(axis=1)
        return log_scale[:, None] - 0.5 * np.sum(whitened**2, axis=2).T

    def subset(self, pieces: npt.NDArray[np.intp]) -> _Mixture:
        """Mixture of only the given pieces (weights not renormalised)."""
        return _Mixture(
            log_weights=self.log_weights[pieces],
            means=self.means[pieces],
            whiteners=self.whiteners[pieces],
        )


@dataclass(frozen=True)
class _Node:
    """Inner node: rows go to the child of their most probable mixture piece."""

    mean: npt.NDArray[np.float64]
    basis: npt.NDArray[np.float64]
    mixture: _Mixture
    child_of_piece: tuple[int, ...]
    children: tuple[_Node | int, ...]

    def route(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        """Child index of each row of ``x``."""
        pieces = np.argmax(self.mixture.log_densities((x - self.mean) @ self.basis), 0)
        return np.asarray(self.child_of_piece, dtype=np.intp)[pieces]


def _cluster_channel(
    x: npt.NDArray[np.float64], *, rng: np.random.Generator, settings: _Settings
) -> npt.NDArray[np.int32]:
    """Labels ``0..m-1`` or ``-1`` of the spikes of one main channel."""
    n = x.shape[0]
    if n < settings.min_cluster_size:
        return np.full(n, -1, dtype=np.int32)
    if n > settings.max_fit_spikes:
        fit_rows = np.sort(rng.choice(n, settings.max_fit_spikes, replace=False))
    else:
        fit_rows = np.arange(n)
    min_part = max(
        MIN_FIT_PART, math.ceil(settings.min_cluster_size * fit_rows.size / n)
    )
    builder = _TreeBuilder(x[fit_rows], rng=rng, settings=settings, min_part=min_part)
    tree = builder.build()
    cluster_of_leaf = _merge_leaves(x[fit_rows], builder.leaf_members, settings)
    leaves = _descend(tree, x)
    clusters = np.full(n, -1, dtype=np.intp)
    placed = leaves >= 0
    clusters[placed] = cluster_of_leaf[leaves[placed]]
    clusters = _triage(x, clusters, settings)
    return _renumber(x, clusters, settings.min_cluster_size)


class _TreeBuilder:
    """Recursive split and merge of one channel's subsample."""

    def __init__(
        self,
        x: npt.NDArray[np.float64],
        *,
        rng: np.random.Generator,
        settings: _Settings,
        min_part: int,
    ) -> None:
        self.x = x
        self.rng = rng
        self.settings = settings
        self.min_part = min_part
        self.leaf_members: list[npt.NDArray[np.intp]] = []

    def build(self) -> _Node | int:
        """Tree of all rows; its leaves index :attr:`leaf_members`."""
        return self._grow(np.arange(self.x.shape[0]), depth=0)

    def _grow(self, rows: npt.NDArray[np.intp], *, depth: int) -> _Node | int:
        split = None
        if depth < self.settings.max_depth and rows.size >= 2 * MIN_FIT_PART:
            split = self._split(rows)
        if split is None:
            self.leaf_members.append(rows)
            return len(self.leaf_members) - 1
        mean, basis, mixture, groups, row_groups = split
        children: list[_Node | int] = []
        for group in range(groups.max() + 1):
            members = rows[row_groups == group]
            if members.size >= self.min_part:
                children.append(self._grow(members, depth=depth + 1))
            else:
                children.append(_TRIAGED)
        return _Node(
            mean=mean,
            basis=basis,
            mixture=mixture,
            child_of_piece=tuple(groups.tolist()),
            children=tuple(children),
        )

    def _split(
        self, rows: npt.NDArray[np.intp]
    ) -> (
        tuple[
            npt.NDArray[np.float64],
            npt.NDArray[np.float64],
            _Mixture,
            npt.NDArray[np.intp],
            npt.NDArray[np.intp],
        ]
        | None
    ):
        """Over-cluster then merge ``rows``; None if they stay one group.

        Returns the node's mean and principal basis, its mixture, the group of
        each mixture piece and the group of each row.
        """
        x = self.x[rows]
        mean = x.mean(axis=0)
        basis = _principal_axes(x - mean, self.settings.n_local_pcs)
        if basis.shape[1] == 0:
            return None
        local = (x - mean) @ basis
        n_pieces = min(MAX_COMPONENTS, max(2, rows.size // self.min_part))
        mixture = _fit_mixture(local, n_pieces, rng=self.rng)
        if mixture is None:
            return None
        pieces = np.argmax(mixture.log_densities(local), axis=0)
        occupied = np.unique(pieces)
        if occupied.size < 2:
            return None
        mixture = mixture.subset(occupied)
        pieces = np.searchsorted(occupied, pieces)
        groups = _merge_pieces(
            local,
            pieces,
            mixture.means,
            n_dims=self.settings.n_local_pcs,
            threshold=self.settings.split_threshold,
        )
        if groups.max() == 0:
            return None
        return mean, basis, mixture, groups, groups[pieces]


def _fit_mixture(
    x: npt.NDArray[np.float64], n_pieces: int, *, rng: np.random.Generator
) -> _Mixture | None:
    """Full-covariance Gaussian mixture of up to ``n_pieces`` pieces.

    Expectation-maximisation on at most ``EM_MAX_POINTS`` random rows from
    ``EM_STARTS`` k-means++ starts; the likeliest fit wins. Pieces too light
    for a covariance are dropped along the way. None if no fit keeps two
    pieces.
    """
    if x.shape[0] > EM_MAX_POINTS:
        x = x[rng.choice(x.shape[0], EM_MAX_POINTS, replace=False)]
    best, best_likelihood = None, -math.inf
    for _ in range(EM_STARTS):
        mixture = _expectation_maximisation(x, _kmeans_plus_plus(x, n_pieces, rng))
        if mixture is not None:
            likelihood = _posteriors(mixture.log_densities(x))[1].sum()
            if likelihood > best_likelihood:
                best, best_likelihood = mixture, likelihood
    return best


def _kmeans_plus_plus(
    x: npt.NDArray[np.float64], n_pieces: int, rng: np.random.Generator
) -> npt.NDArray[np.intp]:
    """Initial piece of each row: nearest of k-means++ seeded centres."""
    centres = [x[rng.integers(x.shape[0])]]
    nearest = np.sum((x - centres[0]) ** 2, axis=1)
    for _ in range(n_pieces - 1):
        if not nearest.any():
            break
        centres.append(x[rng.choice(x.shape[0], p=nearest / nearest.sum())])
        nearest = np.minimum(nearest, np.sum((x - centres[-1]) ** 2, axis=1))
    return np.argmin(np.sum((x - np.array(centres)[:, None, :]) ** 2, axis=2), axis=0)


def _expectation_maximisation(
    x: npt.NDArray[np.float64], labels: npt.NDArray[np.intp]
) -> _Mixture | None:
    """Mixture refined by EM from hard initial labels.

    Stops when the mean log-likelihood per row gains less than ``EM_TOLERANCE``.
    """
    responsibility = (labels == np.arange(labels.max() + 1)[:, None]).astype(np.float64)
    outer = (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)
    likelihood = -math.inf
    for _ in range(EM_ITERATIONS):
        mixture = _maximisation(x, outer, responsibility)
        if mixture is None:
            return None
        responsibility, log_total = _posteriors(mixture.log_densities(x))
        previous, likelihood = likelihood, float(log_total.mean())
        if likelihood - previous < EM_TOLERANCE:
            break
    return _maximisation(x, outer, responsibility)


def _posteriors(
    log_density: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Posterior of each piece (pieces, rows) and log total density of each row."""
    peak = log_density.max(axis=0)
    density = np.exp(log_density - peak)
    total = density.sum(axis=0)
    return density / total, peak + np.log(total)


def _maximisation(
    x: npt.NDArray[np.float64],
    outer: npt.NDArray[np.float64],
    responsibility: npt.NDArray[np.float64],
) -> _Mixture | None:
    """Mixture fitted to soft assignments (pieces, rows).

    ``outer`` holds the flattened outer product of each row with itself.

    Pieces lighter than ``d + 2`` rows are dropped; None if fewer than two
    remain or a covariance is not positive definite.
    """
    n_dims = x.shape[1]
    totals = responsibility.sum(axis=1)
    heavy = totals >= n_dims + 2
    if np.count_nonzero(heavy) < 2:
        return None
    responsibility, totals = responsibility[heavy], totals[heavy]
    means = responsibility @ x / totals[:, None]
    second_moments = (responsibility @ outer).reshape(-1, n_dims, n_dims)
    covariances = second_moments / totals[:, None, None]
    covariances -= means[:, :, None] * means[:, None, :]
    covariances += COVARIANCE_RIDGE * np.eye(n_dims)
    try:
        whiteners = np.linalg.inv(np.linalg.cholesky(covariances))
    except np.linalg.LinAlgError:  # rounding on huge feature values
        return None
    log_weights = np.log(totals / totals.sum())
    return _Mixture(log_weights=log_weights, means=means, whiteners=whiteners)


def _merge_pieces(
    x: npt.NDArray[np.float64],
    pieces: npt.NDArray[np.intp],
    centres: npt.NDArray[np.float64],
    *,
    n_dims: int,
    threshold: float,
) -> npt.NDArray[np.intp]:
    """Group of each piece after merging pieces that form one cluster.

    Pieces are linked to their ``MERGE_NEIGHBOURS`` nearest pieces (centre
    distance). Linked pairs of groups are visited from the least to the most
    separated (discriminant separation, which unlike the split strength does
    not grow with the number of spikes, so pieces of one neuron meet first);
    a pair merges if its split strength is below 1, and a merged group
    inherits the links of its parts. Groups are numbered by their first piece.
    """
    n_pieces = centres.shape[0]
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    nearest = np.argsort(distance, axis=1)[:, :MERGE_NEIGHBOURS]
    links = {
        (min(a, b), max(a, b))
        for a in range(n_pieces)
        for b in nearest[a].tolist()
        if distance[a, b] < np.inf
    }
    group_of_piece = np.arange(n_pieces)
    separation: dict[tuple[int, int], float] = {}
    apart: set[tuple[int, int]] = set()
    while links - apart:
        row_groups = group_of_piece[pieces]
        projections = {}
        for pair in sorted(links - separation.keys()):
            projection, second = _pair_projection(
                x, row_groups == pair[0], row_groups == pair[1], n_dims=n_dims
            )
            projections[pair] = projection
            separation[pair] = _separation(projection[~second], projection[second])
        pair = min(sorted(links - apart), key=separation.__getitem__)
        if pair not in projections:
            projections[pair] = _pair_projection(
                x, row_groups == pair[0], row_groups == pair[1], n_dims=n_dims
            )[0]
        if _split_strength(projections[pair], threshold)[0] >= 1.0:
            apart.add(pair)
            continue
        keep, gone = pair
        group_of_piece[group_of_piece == gone] = keep
        links = {
            (min(a, b), max(a, b))
            for a, b in (
                (keep if a == gone else a, keep if b == gone else b) for a, b in links
            )
            if a != b
        }
        separation = {
            p: v for p, v in separation.items() if keep not in p and gone not in p
        }
        apart = {p for p in apart if keep not in p and gone not in p}
    return np.unique(group_of_piece, return_inverse=True)[1]


def _pair_projection(
    x: npt.NDArray[np.float64],
    first: npt.NDArray[np.bool_],
    second: npt.NDArray[np.bool_],
    *,
    n_dims: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Two row sets' union on their discriminant axis, and which rows are second.

    The discriminant is computed in the union's top ``n_dims`` principal axes,
    where it cannot over-fit the noise of many feature dimensions.
    """
    union = first | second
    centred = x[union] - x[union].mean(axis=0)
    local = centred @ _principal_axes(centred, n_dims)
    labels = second[union]
    return local @ _discriminant(local, labels), labels


def _separation(
    first: npt.NDArray[np.float64], second: npt.NDArray[np.float64]
) -> float:
    """Distance between two 1-D samples' means over their pooled deviation."""
    if min(first.size, second.size) < 2:
        return math.inf
    spread = math.sqrt(0.5 * (first.var() + second.var()))
    gap = abs(second.mean() - first.mean())
    return gap / spread if spread > 0 else math.inf


def _split_strength(
    values: npt.NDArray[np.float64], threshold: float
) -> tuple[float, float]:
    """Evidence for cutting 1-D data in two, as ``(strength, cut)``.

    ``strength >= 1`` means two clusters: either the :func:`bimodality_score`
    reaches ``threshold``, or the two sides of its cut are separated by at
    least ``SEPARATION_SPLIT * (1 + SEPARATION_SMALL_SAMPLE / n)`` pooled
    standard deviations. The second test catches a small, distant cluster
    whose few points give the density test little power; its bar rises for
    small samples, whose best cut looks separated by chance.
    """
    score, cut = bimodality_score(values)
    if math.isnan(cut):
        return 0.0, cut
    high = values > cut
    separation = _separation(values[~high], values[high])
    if math.isinf(separation):
        return score / threshold, cut
    bar = SEPARATION_SPLIT * (1.0 + SEPARATION_SMALL_SAMPLE / values.size)
    return max(score / threshold, separation / bar), cut


def _principal_axes(
    centred: npt.NDArray[np.float64], n_dims: int
) -> npt.NDArray[np.float64]:
    """Top principal axes (columns) with non-zero variance, at most ``n_dims``."""
    eigenvalues, eigenvectors = np.linalg.eigh(_scatter(centred))
    keep = eigenvalues[::-1][:n_dims] > 1e-12 * max(eigenvalues[-1], 1e-300)
    return eigenvectors[:, ::-1][:, :n_dims][:, keep]


def _discriminant(
    x: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Unit Fisher discriminant direction between two labelled groups.

    The pooled scatter is shrunk towards its mean variance by ``d / n`` (rows
    ``n``, dimensions ``d``) so that few rows in many dimensions do not yield
    a direction that separates noise.
    """
    a, b = x[~labels], x[labels]
    n_dims = x.shape[1]
    pooled = _covariance(a) + _covariance(b)
    shrinkage = min(1.0, n_dims / x.shape[0])
    target = shrinkage * np.trace(pooled) / n_dims + COVARIANCE_RIDGE
    scatter = (1.0 - shrinkage) * pooled + target * np.eye(n_dims)
    direction = np.linalg.solve(scatter, b.mean(axis=0) - a.mean(axis=0))
    norm = np.linalg.norm(direction)
    return direction / norm if norm > 0 else np.eye(n_dims)[0]


def _covariance(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Sample covariance of the rows of ``x``."""
    return _scatter(x - x.mean(axis=0))


def _scatter(centred: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Covariance of already centred rows."""
    return centred.T @ centred / max(centred.shape[0] - 1, 1)


def _merge_leaves(
    x: npt.NDArray[np.float64],
    leaf_members: list[npt.NDArray[np.intp]],
    settings: _Settings,
) -> npt.NDArray[np.intp]:
    """Cluster index of each leaf after merging leaves that form one cluster.

    Leaves from different branches may be parts of one neuron cut apart high
    in the tree; they are merged as in :func:`_merge_pieces`.
    """
    if len(leaf_members) < 2:
        return np.zeros(len(leaf_members), dtype=np.intp)
    rows = np.concatenate(leaf_members)
    leaves = np.repeat(np.arange(len(leaf_members)), [r.size for r in leaf_members])
    centres = np.array([x[members].mean(axis=0) for members in leaf_members])
    return _merge_pieces(
        x[rows],
        leaves,
        centres,
        n_dims=settings.n_local_pcs,
        threshold=settings.split_threshold,
    )


def _descend(tree: _Node | int, x: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """Leaf of every row of ``x`` in the tree (``-1``: set aside)."""
    leaves = np.empty(x.shape[0], dtype=np.intp)
    stack = [(tree, np.arange(x.shape[0]))]
    while stack:
        node, rows = stack.pop()
        if isinstance(node, _Node):
            routes = node.route(x[rows])
            stack.extend(
                (child, rows[routes == index])
                for index, child in enumerate(node.children)
            )
        else:
            leaves[rows] = node
    return leaves


def _triage(
    x: npt.NDArray[np.float64],
    clusters: npt.NDArray[np.intp],
    settings: _Settings,
) -> npt.NDArray[np.intp]:
    """Set to -1 the spikes too far from their cluster.

    The distance is the squared Mahalanobis distance under a probabilistic PCA
    model of the cluster (``n_local_pcs`` principal axes plus isotropic
    residual), compared with the chi-square quantile of ``n_features`` degrees
    of freedom. The model is refitted to the remaining spikes up to
    ``TRIAGE_ROUNDS`` times, so that a few distant outliers, which would
    otherwise capture a principal axis, are found too.
    """
    if settings.triage_quantile >= 1.0:
        return clusters
    limit = _chi2_quantile(settings.triage_quantile, x.shape[1])
    triaged = clusters.copy()
    for cluster in np.unique(clusters[clusters >= 0]):
        rows = np.flatnonzero(clusters == cluster)
        inliers = np.ones(rows.size, dtype=bool)
        for _ in range(TRIAGE_ROUNDS):
            if np.count_nonzero(inliers) <= settings.n_local_pcs + 1:
                break
            distance = _ppca_distance(x[rows], inliers, settings.n_local_pcs)
            updated = distance <= limit
            if np.array_equal(updated, inliers):
                break
            inliers = updated
        triaged[rows[~inliers]] = -1
    return triaged


def _ppca_distance(
    x: npt.NDArray[np.float64], fit_rows: npt.NDArray[np.bool_], n_dims: int
) -> npt.NDArray[np.float64]:
    """Squared Mahalanobis distance of every row under a PPCA fit to some rows.

    Probabilistic PCA: ``n_dims`` principal axes with their own variances and
    the mean remaining variance on the other axes.
    """
    mean = x[fit_rows].mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(_scatter(x[fit_rows] - mean))
    eigenvalues = np.maximum(eigenvalues[::-1], COVARIANCE_RIDGE)
    eigenvectors = eigenvectors[:, ::-1]
    n_dims = min(n_dims, x.shape[1])
    centred = x - mean
    scores = centred @ eigenvectors[:, :n_dims]
    distance = np.sum(scores**2 / eigenvalues[:n_dims], axis=1)
    if n_dims < x.shape[1]:
        residual = np.sum(centred**2, axis=1) - np.sum(scores**2, axis=1)
        distance += np.maximum(residual, 0.0) / eigenvalues[n_dims:].mean()
    return distance


def _renumber(
    x: npt.NDArray[np.float64], clusters: npt.NDArray[np.intp], min_size: int
) -> npt.NDArray[np.int32]:
    """Drop small clusters and number the rest by decreasing mean norm."""
    ids, sizes = np.unique(clusters[clusters >= 0], return_counts=True)
    ids = ids[sizes >= min_size]
    norms = np.array([np.linalg.norm(x[clusters == i].mean(axis=0)) for i in ids])
    ranked = ids[np.lexsort((ids, -norms))] if ids.size else ids
    labels = np.full(clusters.size, -1, dtype=np.int32)
    for rank, cluster in enumerate(ranked):
        labels[clusters == cluster] = rank
    return labels


def _interval_edges(n: int) -> npt.NDArray[np.intp]:
    """Indices into ``n`` sorted values bounding intervals for the density.

    Interval counts grow by one from each tail (3, 4, 5, ...) towards the
    middle, so the tails, where small clusters hide, are finely resolved and
    the bulk coarsely.
    """
    half = np.arange(FIRST_INTERVAL_COUNT, n)
    half = half[np.cumsum(half) <= (n - 1) // 2]
    middle = n - 1 - 2 * int(half.sum())
    counts = np.concatenate([half, [middle] if middle else [], half[::-1]])
    return np.r_[0, np.cumsum(counts)].astype(np.intp)


def _tail_scan(
    counts: npt.NDArray[np.float64], fitted_counts: npt.NDArray[np.float64]
) -> float:
    """Largest Kolmogorov-Smirnov distance over prefixes, times sqrt(count).

    For every prefix ``[0, j]`` of the intervals, the observed and fitted
    cumulative counts are each normalised to 1 at ``j`` and compared.
    """
    observed = np.cumsum(counts)
    expected = np.cumsum(fitted_counts)
    gaps = np.tril(np.abs(observed / observed[:, None] - expected / expected[:, None]))
    return float(np.max(gaps.max(axis=1) * np.sqrt(observed)))


def _unimodal_fit(
    values: npt.NDArray[np.float64], weights: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Weighted least-squares non-decreasing-then-non-increasing fit."""
    rising_error = _prefix_isotonic_errors(values, weights)
    falling_error = _prefix_isotonic_errors(values[::-1], weights[::-1])
    # Split at s: rising on [0, s), falling on [s, m).
    total = np.r_[falling_error[::-1], 0.0] + np.r_[0.0, rising_error]
    split = int(np.argmin(total))
    fit = np.empty_like(values)
    if split:
        fit[:split] = _isotonic_fit(values[:split], weights[:split])
    if split < values.size:
        fit[split:] = _isotonic_fit(values[split:][::-1], weights[split:][::-1])[::-1]
    return fit


def _chi2_quantile(q: float, df: int) -> float:
    """Chi-square quantile by the Wilson-Hilferty approximation.

    Relative error below 2 % for df >= 3 and below 0.2 % for df >= 30 at
    q = 0.999 (the triage use);
    avoids importing scipy.special (0.3 s per clustering job).
    """
    from statistics import NormalDist

    z = NormalDist().inv_cdf(q)
    a = 2.0 / (9.0 * df)
    return float(df * (1.0 - a + z * np.sqrt(a)) ** 3)


def _isotonic_fit(
    values: npt.NDArray[np.float64], weights: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    block_weight: list[float] = []
    block_sum: list[float] = []
    block_size: list[int] = []
    for value, weight in zip(values.tolist(), weights.tolist()):
        value_sum, size = weight * value, 1
        while block_weight and block_sum[-1] * weight >= value_sum * block_weight[-1]:
            weight += block_weight.pop()
            value_sum += block_sum.pop()
            size += block_size.pop()
        block_weight.append(weight)
        block_sum.append(value_sum)
        block_size.append(size)
    means = np.array(block_sum) / np.array(block_weight)
    return np.repeat(means, block_size)


def _prefix_isotonic_errors(
    values: npt.NDArray[np.float64], weights: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Weighted squared error of the non-decreasing fit of every prefix.

    Pool-adjacent-violators run online: after element ``i`` the block stack is
    the isotonic fit of ``values[: i + 1]``, and pooling two blocks adds
    ``gap**2 * w1 * w2 / (w1 + w2)`` to their errors.
    """
    prefix_error = np.empty(values.size)
    block_weight: list[float] = []
    block_sum: list[float] = []
    block_error: list[float] = []
    total = 0.0
    for i, (value, weight) in enumerate(zip(values.tolist(), weights.tolist())):
        value_sum, error = weight * value, 0.0
        # Pool while the previous block's mean is not below this block's mean.
        while block_weight and block_sum[-1] * weight >= value_sum * block_weight[-1]:
            previous_weight, previous_sum = block_weight.pop(), block_sum.pop()
            previous_error = block_error.pop()
            total -= previous_error
            gap = previous_sum / previous_weight - value_sum / weight
            error += previous_error + gap**2 * (
                previous_weight * weight / (previous_weight + weight)
            )
            weight, value_sum = previous_weight + weight, previous_sum + value_sum
        block_weight.append(weight)
        block_sum.append(value_sum)
        block_error.append(error)
        total += error
        prefix_error[i] = total
    return prefix_error
