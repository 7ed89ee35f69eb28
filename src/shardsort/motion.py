"""Drift (motion) estimation and correction kernels.

Probes move in the brain by tens of micrometres over a recording; a unit
then appears at other channels and a sorter that ignores it splits the unit.
Three stages fix that, each a pure kernel here:

1. ``motion_peaks[t]`` (per time chunk): :func:`localized_peaks` finds
   locally exclusive negative peaks in the PREPROCESSED traces and estimates
   their depth (centre of mass over the main channel's nearest channels);
   :func:`peak_histogram` bins them by time bin and depth, each peak
   weighted by ``log(1 + |amplitude|)`` quantised to integers, so histograms
   of neighbouring chunks add up exactly (the global histogram does not depend
   on the chunking).
2. ``motion`` (one global job): :func:`estimate_motion` registers the
   histograms of all time bins against each other, decentralized registration
   as in Varol et al. (2021) and SpikeInterface's ``decentralized`` method:
   every pair of time bins at most a time horizon apart is cross-correlated
   over depth lags up to a maximum displacement; the best lag of each pair is
   an estimate of the difference of their displacements; a least-squares fit
   weighted by the pairs' correlation (then refitted without outlying pairs)
   gives one displacement per time bin, which is then smoothed in time.
   Non-rigid motion repeats this in overlapping Gaussian depth windows. The
   pairs are banded in time (``n_time_bins x (H + 1)`` arrays for a horizon
   of ``H`` bins) and the fit is a banded Cholesky solve, so memory grows
   linearly and time as ``n H (depth bins x lags + H)`` with the recording's
   length; a 4-h recording fits (all pairs would need ``n**2`` memory and an
   ``n**3`` solve).
3. ``correct[t]`` (per time chunk): :func:`correct_motion` resamples the
   traces at positions moved by the displacement (Gaussian-kernel kriging over
   the probe geometry, as Kilosort's ``datashift`` and SpikeInterface's
   ``interpolate_motion``), blending the corrections of neighbouring time
   bins linearly in time. Each output sample depends only on its own input
   sample and its absolute index, so corrected chunks equal a whole-array
   correction exactly.

Multi-shank probes: the shanks of one probe need not move together, so
``motion_peaks`` histograms the peaks of each shank (by main channel) apart,
:func:`estimate_motion_per_shank` registers each shank on its own (rigid or
non-rigid windows per shank), and :func:`channel_displacement` /
:func:`correct_motion` move each shank's channels by their own shank's
displacement, kriging from that shank's channels only.

Sign convention: ``displacement[t] > 0`` means that at time bin ``t`` the
units appear that many micrometres higher up the probe (larger ``y``) than
their reference position, the average over the recording (each depth window's
displacement has mean zero over time). Correction reads the recorded field at
``y + displacement`` and writes it at ``y``, which moves every unit back to
its reference position.

All kernels are pure: arrays in, arrays out, no I/O, no global state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # imported where used: the per-chunk jobs import this module
    from scipy import sparse  # without needing scipy's sparse, linalg or ndimage

from .checks import check_int as _check_int
from .checks import check_positive as _check_positive
from .detect import detect_peaks, extract_snippets, localize_spikes
from .memory import transpose_into

#: Peaks are weighted by ``log(1 + |amplitude|)`` in steps of ``1 / WEIGHT_SCALE``.
WEIGHT_SCALE = 256
#: Border handling of :func:`correct_motion`.
BORDER_MODES = ("nearest", "zero")
#: Ridge added to the kriging kernel matrix (relative to its unit diagonal).
KRIGING_RIDGE = 0.01
#: Source channels farther than this many ``sigma_um`` from a target are left out.
KRIGING_SUPPORT_SIGMAS = 3.0
#: At most this many correlation values are held at once in :func:`pairwise_shifts`.
_PAIR_BLOCK_VALUES = 4_000_000


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_positions(positions_um: npt.ArrayLike) -> npt.NDArray[np.float64]:
    positions = np.asarray(positions_um, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) == 0:
        raise ValueError(
            f"positions_um must have shape (n_channels, 2) with n_channels >= 1, "
            f"got {positions.shape}"
        )
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions_um must be finite, got NaN or inf values")
    return positions


def _check_good(good_mask: npt.ArrayLike | None, n_channels: int) -> npt.NDArray[np.bool_]:
    if good_mask is None:
        return np.ones(n_channels, dtype=bool)
    good = np.asarray(good_mask)
    if good.dtype != np.bool_ or good.shape != (n_channels,):
        raise ValueError(
            f"good_mask must be a bool array of shape ({n_channels},), "
            f"got {good.dtype} {good.shape}"
        )
    return good


def _check_non_negative(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not np.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


# ---------------------------------------------------------------------------
# Per chunk: peaks and their depth histogram
# ---------------------------------------------------------------------------


def localized_peaks(
    window: npt.NDArray[np.float32],
    *,
    core_start: int,
    core_stop: int,
    threshold: float,
    neighbour_mask: npt.NDArray[np.bool_],
    exclude_samples: int,
    good_mask: npt.NDArray[np.bool_] | None,
    neighbours: npt.NDArray[np.integer],
    positions_um: npt.NDArray[np.floating],
    pre_samples: int,
    post_samples: int,
) -> np.ndarray:
    """Peaks in the core of a window, with their estimated position.

    :func:`shardsort.detect.detect_peaks`, then
    :func:`shardsort.detect.localize_spikes` on snippets of each peak's
    ``neighbours`` row (centre of mass of the floor-subtracted squared
    peak-to-peak amplitudes). The window needs
    ``detect_margin_samples(...)`` samples beyond the core on both sides.

    Returns
    -------
    ndarray of PEAK_DTYPE, shape (n_peaks,)
        Core-local ``sample_index``, ``x_um`` / ``y_um`` filled in.
    """
    peaks = detect_peaks(
        window,
        core_start=core_start,
        core_stop=core_stop,
        threshold=threshold,
        neighbour_mask=neighbour_mask,
        exclude_samples=exclude_samples,
        good_mask=good_mask,
    )
    table = np.asarray(neighbours)
    if table.ndim != 2 or table.shape[0] != np.shape(window)[1]:
        raise ValueError(
            f"neighbours must have shape ({np.shape(window)[1]}, k), got {table.shape}"
        )
    channels = table[peaks["channel_index"]]
    snippets = extract_snippets(
        np.asarray(window, dtype=np.float32),
        peaks["sample_index"] + core_start,
        channels,
        pre_samples=pre_samples,
        post_samples=post_samples,
    )
    peaks["x_um"], peaks["y_um"] = localize_spikes(snippets, channels, positions_um)
    return peaks


def depth_bin_edges(
    positions_um: npt.ArrayLike, *, bin_um: float
) -> npt.NDArray[np.float64]:
    """Edges of the depth bins: the probe's y extent plus one bin on each side.

    Parameters
    ----------
    positions_um : array_like, shape (n_channels, 2)
        Channel (x, y) positions.
    bin_um : float
        Bin width (> 0).

    Returns
    -------
    ndarray of float64, shape (n_bins + 1,)
        Increasing edges, ``bin_um`` apart, from ``min(y) - bin_um``.
    """
    positions = _check_positions(positions_um)
    bin_um = _check_positive("bin_um", bin_um)
    low = positions[:, 1].min() - bin_um
    n_bins = int(np.ceil((positions[:, 1].max() + bin_um - low) / bin_um - 1e-9))
    return low + bin_um * np.arange(max(n_bins, 1) + 1, dtype=np.float64)


def time_bins_of_chunk(start: int, stop: int, *, bin_samples: int) -> tuple[int, int]:
    """First time bin and number of time bins that samples ``[start, stop)`` touch."""
    bin_samples = _check_int("bin_samples", bin_samples, 1)
    start = _check_int("start", start, 0)
    stop = _check_int("stop", stop, start)
    if stop == start:
        return start // bin_samples, 0
    first = start // bin_samples
    return first, (stop - 1) // bin_samples - first + 1


def peak_histogram(
    sample_index: npt.ArrayLike,
    depth_um: npt.ArrayLike,
    amplitude: npt.ArrayLike,
    *,
    bin_samples: int,
    first_bin: int,
    n_bins: int,
    depth_edges_um: npt.ArrayLike,
) -> npt.NDArray[np.int64]:
    """Depth histogram per time bin of peaks, weighted by log amplitude.

    Each peak adds ``round(WEIGHT_SCALE * log(1 + |amplitude|))`` to its
    (time bin, depth bin). Integer weights make histograms of neighbouring
    chunks add up exactly, whatever the chunking.

    Parameters
    ----------
    sample_index : array_like of int, shape (n_peaks,)
        Absolute sample of each peak.
    depth_um, amplitude : array_like, shape (n_peaks,)
        Estimated depth (y) and peak amplitude of each peak.
    bin_samples : int
        Samples per time bin (>= 1); bin ``b`` is ``[b, b + 1) * bin_samples``.
    first_bin, n_bins : int
        The time bins histogrammed (peaks in other bins are ignored).
    depth_edges_um : array_like, shape (n_depth_bins + 1,)
        From :func:`depth_bin_edges`; peaks outside are clipped into the
        first or last bin.

    Returns
    -------
    ndarray of int64, shape (n_bins, n_depth_bins)
    """
    bin_samples = _check_int("bin_samples", bin_samples, 1)
    first_bin = _check_int("first_bin", first_bin, 0)
    n_bins = _check_int("n_bins", n_bins, 0)
    edges = np.asarray(depth_edges_um, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(
            f"depth_edges_um must be an increasing 1-D array of >= 2 edges, got {edges!r}"
        )
    samples = np.asarray(sample_index, dtype=np.int64)
    depth = np.asarray(depth_um, dtype=np.float64)
    amp = np.asarray(amplitude, dtype=np.float64)
    if not samples.shape == depth.shape == amp.shape or samples.ndim != 1:
        raise ValueError(
            "sample_index, depth_um and amplitude must be 1-D of equal length, got "
            f"shapes {samples.shape}, {depth.shape} and {amp.shape}"
        )
    n_depth = len(edges) - 1
    time_bin = samples // bin_samples - first_bin
    keep = (time_bin >= 0) & (time_bin < n_bins) & np.isfinite(depth) & np.isfinite(amp)
    depth_bin = np.clip(np.searchsorted(edges, depth[keep], side="right") - 1, 0, n_depth - 1)
    weight = np.rint(WEIGHT_SCALE * np.log1p(np.abs(amp[keep]))).astype(np.int64)
    flat = np.zeros(n_bins * n_depth, dtype=np.int64)
    np.add.at(flat, time_bin[keep] * n_depth + depth_bin, weight)
    return flat.reshape(n_bins, n_depth)


# ---------------------------------------------------------------------------
# Global: decentralized registration
# ---------------------------------------------------------------------------


def depth_windows(
    depth_um: npt.ArrayLike,
    *,
    channel_depths_um: npt.ArrayLike,
    rigid: bool,
    window_step_um: float,
    window_sigma_um: float,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Depth windows of the (non-)rigid registration.

    Parameters
    ----------
    depth_um : array_like, shape (n_depth_bins,)
        Centres of the histogram's depth bins.
    channel_depths_um : array_like
        Depths (y) of the channels: windows span their range.
    rigid : bool
        One window of weight 1 everywhere (centred on the probe).
    window_step_um, window_sigma_um : float
        Non-rigid: the channels' depth range is cut into
        ``round(range / window_step_um)`` (at least one) equal blocks; each
        block's centre carries a Gaussian window of standard deviation
        ``window_sigma_um``.

    Returns
    -------
    centres_um : ndarray, shape (n_windows,)
    weights : ndarray, shape (n_windows, n_depth_bins)
    """
    depth = np.asarray(depth_um, dtype=np.float64)
    channels = np.asarray(channel_depths_um, dtype=np.float64)
    if channels.size == 0:
        raise ValueError("channel_depths_um must hold at least one depth, got none")
    low, high = float(channels.min()), float(channels.max())
    if rigid:
        return np.array([(low + high) / 2.0]), np.ones((1, len(depth)))
    step = _check_positive("window_step_um", window_step_um)
    sigma = _check_positive("window_sigma_um", window_sigma_um)
    n_windows = max(1, int(round((high - low) / step)))
    centres = low + (np.arange(n_windows) + 0.5) * (high - low) / n_windows
    weights = np.exp(-0.5 * ((depth[None, :] - centres[:, None]) / sigma) ** 2)
    return centres, weights


def band_pairs(n_time_bins: int, *, horizon_bins: int = 0) -> int:
    """Band width of the pairs registered: the largest time-bin distance of a pair.

    Parameters
    ----------
    n_time_bins : int
        Number of time bins (>= 0).
    horizon_bins : int
        Pairs at most this many bins apart (>= 0; 0: all pairs).

    Returns
    -------
    int
        ``min(horizon_bins, n_time_bins - 1)`` (``n_time_bins - 1`` for 0),
        at least 0: the banded arrays of :func:`pairwise_shifts` have this
        plus one rows.
    """
    n_time_bins = _check_int("n_time_bins", n_time_bins, 0)
    horizon_bins = _check_int("horizon_bins", horizon_bins, 0)
    widest = max(n_time_bins - 1, 0)
    return widest if horizon_bins == 0 else min(horizon_bins, widest)


def _refined_lag(curves: np.ndarray, best: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Lag of the maximum at index ``best`` refined by a parabola through its neighbours."""
    n_lags = len(lags)
    peak = np.take_along_axis(curves, best[None], axis=0)[0]
    left = np.take_along_axis(curves, np.maximum(best - 1, 0)[None], axis=0)[0]
    right = np.take_along_axis(curves, np.minimum(best + 1, n_lags - 1)[None], axis=0)[0]
    interior = (best > 0) & (best < n_lags - 1)
    curvature = left - 2.0 * peak + right
    offset = np.zeros_like(peak)
    ok = interior & (curvature < 0)
    offset[ok] = np.clip(0.5 * (left[ok] - right[ok]) / curvature[ok], -0.5, 0.5)
    return lags[best] + offset


def pairwise_shifts(
    histograms: npt.ArrayLike,
    *,
    max_lag_bins: int,
    window: npt.ArrayLike | None = None,
    horizon_bins: int = 0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Best depth lag and its correlation for every pair of time bins within a horizon.

    Each histogram is centred (its ``window``-weighted mean over depth
    removed), multiplied by ``window`` and scaled to unit norm;
    ``c[i, j](l) = sum_y h_i(y) h_j(y + l)`` for ``|l| <= max_lag_bins``
    (zero beyond the ends). Outside the window the centred histograms are 0,
    so empty depths beyond the probe do not pull the lags towards 0. The best
    lag (the first maximum) is refined to a fraction of a bin by a parabola
    through the peak and its two neighbours. The reversed pair's curve is the
    mirrored curve, ``c[j, i](l) = c[i, j](-l)``; the lag of a pair is the
    mean of the two directions' lags (antisymmetric), its correlation the
    common maximum (symmetric).

    Only pairs at most ``horizon_bins`` time bins apart are computed and
    stored, block by block of time bins: memory ``O(n_time_bins * H)`` with
    ``H = band_pairs(n_time_bins, horizon_bins=horizon_bins)``.

    Parameters
    ----------
    histograms : array_like, shape (n_time_bins, n_depth_bins)
    max_lag_bins : int
        Largest lag tried (>= 0).
    window : array_like, shape (n_depth_bins,), optional
        Non-negative depth weights (default: all 1).
    horizon_bins : int
        Pairs at most this many time bins apart (>= 0; 0: all pairs).

    Returns
    -------
    lag : ndarray of float64, shape (H + 1, n_time_bins)
        Banded: ``lag[d, i]`` is the shift (in bins) that best maps histogram
        ``i`` onto ``i + d``, an estimate of ``displacement[i + d] -
        displacement[i]`` (the reversed pair's lag is ``-lag[d, i]``). Row 0
        (each bin with itself) is 0, as are the entries with ``i + d >=
        n_time_bins``.
    correlation : ndarray of float64, shape (H + 1, n_time_bins)
        The correlation at that lag, banded as ``lag``; 0 where a histogram
        is flat and beyond the last bin.
    """
    hist = np.asarray(histograms, dtype=np.float64)
    if hist.ndim != 2:
        raise ValueError(
            f"histograms must have shape (n_time_bins, n_depth_bins), got {hist.shape}"
        )
    max_lag = _check_int("max_lag_bins", max_lag_bins, 0)
    n_time, n_depth = hist.shape
    band = band_pairs(n_time, horizon_bins=horizon_bins)
    weights = np.ones(n_depth) if window is None else np.asarray(window, dtype=np.float64)
    if weights.shape != (n_depth,) or np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError(
            f"window must hold {n_depth} finite values >= 0, got shape {weights.shape}"
        )
    max_lag = min(max_lag, max(n_depth - 1, 0))
    total = weights.sum()
    mean = (hist @ weights) / total if total > 0 else np.zeros(n_time)
    centred = (hist - mean[:, None]) * weights[None, :]
    norm = np.linalg.norm(centred, axis=1)
    valid = norm > 1e-12 * max(1.0, float(norm.max(initial=0.0)))
    centred[valid] /= norm[valid, None]
    centred[~valid] = 0.0
    lags = np.arange(-max_lag, max_lag + 1)
    n_lags = len(lags)
    lag_out = np.zeros((band + 1, n_time))
    corr_out = np.zeros((band + 1, n_time))
    # Rows [lo, hi) against partners [lo, hi + band): the block's band pairs
    # and a few more; blocks of about band / 4 rows waste about a quarter.
    block = max(1, min(max(16, (band + 1) // 4), n_time))
    while block > 1 and n_lags * block * (block + band) > _PAIR_BLOCK_VALUES:
        block //= 2
    offsets = np.arange(band + 1)
    for lo in range(0, n_time, block):
        hi = min(lo + block, n_time)
        rows = centred[lo:hi]
        partners = centred[lo : min(hi + band, n_time)]
        curves = np.empty((n_lags, hi - lo, len(partners)))
        for k, lag in enumerate(lags):
            if lag >= 0:
                curves[k] = rows[:, : n_depth - lag] @ partners[:, lag:].T
            else:
                curves[k] = rows[:, -lag:] @ partners[:, : n_depth + lag].T
        # Column of pair (lo + b, lo + b + d): b + d; beyond the last bin: padding.
        column = np.arange(hi - lo)[:, None] + offsets[None, :]
        inside = column < len(partners)
        pairs = curves[:, np.arange(hi - lo)[:, None], np.minimum(column, len(partners) - 1)]
        first = np.argmax(pairs, axis=0)  # first maximum: deterministic
        last = n_lags - 1 - np.argmax(pairs[::-1], axis=0)
        peak = np.take_along_axis(pairs, first[None], axis=0)[0]
        # The reversed pair's first maximum is this curve's last, mirrored.
        lag = 0.5 * (_refined_lag(pairs, first, lags) + _refined_lag(pairs, last, lags))
        lag_out[:, lo:hi] = np.where(inside, lag, 0.0).T
        corr_out[:, lo:hi] = np.where(inside, peak, 0.0).T
    lag_out[0] = 0.0
    corr_out[:, ~valid] = 0.0
    for d in range(1, band + 1):
        corr_out[d, : n_time - d][~valid[d:]] = 0.0
    lag_out[corr_out == 0.0] = 0.0
    return lag_out, corr_out


def solve_displacement(
    lag: npt.ArrayLike,
    weight: npt.ArrayLike,
    *,
    robust_iterations: int = 10,
    robust_scale: float = 2.385,
) -> npt.NDArray[np.float64]:
    """Displacements whose differences best match the pairwise lags.

    Minimises ``sum_(d>=1, i) w[d, i] (p[i + d] - p[i] - lag[d, i])**2`` with
    ``mean(p) = 0`` (each pair once; the same minimum as counting both
    directions), first with ``w = weight``, then by iteratively reweighted
    least squares with Cauchy weights ``weight / (1 + (r / c)**2)`` of the
    residuals ``r`` of the previous fit, where ``c`` is ``robust_scale``
    robust standard deviations of the residuals (1.4826 x their weighted
    median absolute value, at least 0.5): pairs whose best lag is a spurious
    match barely count. Time bins without any weighted pair take the linear
    interpolation of their neighbours (a vanishing first-difference penalty
    keeps the problem well posed).

    The normal equations are a banded graph Laplacian (bandwidth ``H``); the
    gauge is pinned at the best-connected bin and the symmetric
    positive-definite banded system is solved by a banded Cholesky
    factorisation: ``O(n H**2)`` time, ``O(n H)`` memory.

    Parameters
    ----------
    lag : array_like, shape (H + 1, n)
        Banded pairwise lags (as from :func:`pairwise_shifts`): ``lag[d, i]``
        estimates ``p[i + d] - p[i]``. Row 0 and the entries with ``i + d >=
        n`` are ignored.
    weight : array_like, shape (H + 1, n)
        Non-negative pair weights, banded as ``lag``.
    robust_iterations : int
        Reweighted refits (>= 0; 0: plain weighted least squares).
    robust_scale : float
        Cauchy scale in robust standard deviations (> 0; 2.385 gives 95 %
        efficiency for Gaussian residuals).

    Returns
    -------
    ndarray of float64, shape (n,)
        Displacement per time bin, in the unit of ``lag``, mean zero.
    """
    lag = np.asarray(lag, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if lag.ndim != 2 or lag.shape[0] < 1 or weight.shape != lag.shape:
        raise ValueError(
            f"lag and weight must be banded arrays (H + 1, n) of one shape, got "
            f"{lag.shape} and {weight.shape}"
        )
    if np.any(weight < 0) or not np.all(np.isfinite(weight)):
        raise ValueError("weight must be finite and >= 0")
    robust_iterations = _check_int("robust_iterations", robust_iterations, 0)
    robust_scale = _check_positive("robust_scale", robust_scale)
    n_rows, n = lag.shape
    if n <= 1:  # one time bin (or none): nothing to register, no displacement
        return np.zeros(n)
    offsets = np.arange(n_rows)[:, None]
    target = offsets + np.arange(n)[None, :]  # the pair's second bin, i + d
    inside = target < n
    inside[0] = False  # a bin with itself
    base = np.where(inside, weight, 0.0)
    lag = np.where(inside, lag, 0.0)
    target = np.where(inside, target, 0)
    used = base > 0
    p = _weighted_least_squares(lag, base, target)
    for _ in range(robust_iterations if np.any(used) else 0):
        residual = np.abs(lag - (p[target] - p[None, :]))
        sigma = max(1.4826 * _weighted_median(residual[used], base[used]), 0.5)
        w = base / (1.0 + (residual / (robust_scale * sigma)) ** 2)
        p = _weighted_least_squares(lag, w, target)
    return p


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    # Tied values are interchangeable: any sort order gives the same value.
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def _weighted_least_squares(lag: np.ndarray, w: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Banded weighted least squares; ``w`` is 0 wherever ``target`` is not a pair."""
    n = lag.shape[1]
    wl = w * lag
    # Each pair (i, i + d) enters the rows of both of its bins.
    degree = w.sum(axis=0) + np.bincount(target.ravel(), w.ravel(), minlength=n)
    rhs = np.bincount(target.ravel(), wl.ravel(), minlength=n) - wl.sum(axis=0)
    scale = max(float(degree.mean()), 1.0)
    # Lower banded storage of the normal matrix: band[d, i] = A[i + d, i].
    band = np.zeros((max(lag.shape[0], 2), n))
    band[0] = degree
    band[1 : lag.shape[0]] = -w[1:]
    if n > 1:  # a vanishing chain penalty bridges bins without pairs
        chain = 1e-6 * scale
        band[0, :-1] += chain
        band[0, 1:] += chain
        band[1, :-1] -= chain
    # The constant vector spans the null space: pin the best-connected bin
    # (adding to one diagonal entry sets that bin to 0; the right-hand side
    # sums to zero), then shift to mean zero.
    band[0, int(np.argmax(degree))] += scale
    from scipy.linalg import solveh_banded

    p = solveh_banded(band, rhs, lower=True, check_finite=False)
    return p - p.mean()


def estimate_motion(
    histograms: npt.ArrayLike,
    *,
    depth_um: npt.ArrayLike,
    channel_depths_um: npt.ArrayLike,
    bin_um: float,
    max_displacement_um: float,
    rigid: bool = True,
    window_step_um: float = 100.0,
    window_sigma_um: float = 100.0,
    min_correlation: float = 0.1,
    time_horizon_bins: int = 0,
    robust_iterations: int = 10,
    smoothing_bins: float = 0.0,
    edge_um: float = 0.0,
    depth_smoothing_um: float | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Displacement per time bin (and depth window) by decentralized registration.

    Parameters
    ----------
    histograms : array_like, shape (n_time_bins, n_depth_bins)
        Summed :func:`peak_histogram` of the whole recording.
    depth_um : array_like, shape (n_depth_bins,)
        Centres of the depth bins.
    channel_depths_um : array_like
        Channel depths (y), for the placement of the depth windows.
    bin_um : float
        Depth bin width.
    max_displacement_um : float
        Largest displacement difference between two time bins considered.
    rigid : bool
        One displacement per time bin (True) or one per depth window.
    window_step_um, window_sigma_um : float
        Non-rigid depth windows (see :func:`depth_windows`).
    min_correlation : float
        Pairs whose best correlation is below this are ignored.
    time_horizon_bins : int
        Only pairs at most this many time bins apart are registered (0: all
        pairs); memory and time grow as ``n_time_bins x time_horizon_bins``
        instead of ``n_time_bins**2`` (see :func:`pairwise_shifts`).
    robust_iterations : int
        Refits without outlying pairs (see :func:`solve_displacement`).
    smoothing_bins : float
        Standard deviation (time bins) of the Gaussian smoothing of the
        displacement over time; 0: none.
    edge_um : float
        Depths closer than this to the outermost channels are left out:
        units beyond the probe's ends are localized at its edge whatever
        their drift, a stationary pile-up that drags the estimate to zero.
    depth_smoothing_um : float, optional
        Standard deviation of the Gaussian smoothing of the histograms along
        depth before registration; default ``bin_um``; 0: none.

    Returns
    -------
    displacement_um : ndarray of float64, shape (n_time_bins, n_windows)
        Mean zero over time in each window.
    window_centres_um : ndarray of float64, shape (n_windows,)
    """
    hist = np.asarray(histograms, dtype=np.float64)
    depth = np.asarray(depth_um, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[1] != len(depth):
        raise ValueError(
            f"histograms must have shape (n_time_bins, {len(depth)}), got {hist.shape}"
        )
    bin_um = _check_positive("bin_um", bin_um)
    max_displacement_um = _check_positive("max_displacement_um", max_displacement_um)
    min_correlation = _check_non_negative("min_correlation", min_correlation)
    time_horizon_bins = _check_int("time_horizon_bins", time_horizon_bins, 0)
    smoothing_bins = _check_non_negative("smoothing_bins", smoothing_bins)
    edge_um = _check_non_negative("edge_um", edge_um)
    depth_sigma = bin_um if depth_smoothing_um is None else _check_non_negative(
        "depth_smoothing_um", depth_smoothing_um
    )
    centres, windows = depth_windows(
        depth,
        channel_depths_um=channel_depths_um,
        rigid=rigid,
        window_step_um=window_step_um,
        window_sigma_um=window_sigma_um,
    )
    from scipy.ndimage import gaussian_filter1d

    if depth_sigma > 0 and hist.shape[1] > 1:
        hist = gaussian_filter1d(hist, depth_sigma / bin_um, axis=1, mode="constant")
    n_time = hist.shape[0]
    max_lag = int(np.ceil(max_displacement_um / bin_um))
    channels = np.asarray(channel_depths_um, dtype=np.float64)
    inner = (depth >= channels.min() + edge_um) & (depth <= channels.max() - edge_um)
    if not np.any(inner):
        raise ValueError(
            f"edge_um ({edge_um}) leaves no depth of the probe "
            f"({channels.min()} to {channels.max()} um)"
        )
    displacement = np.zeros((n_time, len(centres)))
    for k, window in enumerate(windows):
        lag, corr = pairwise_shifts(
            hist, max_lag_bins=max_lag, window=window * inner, horizon_bins=time_horizon_bins
        )
        weight = np.where((corr >= min_correlation) & (corr > 0), corr, 0.0)
        p = solve_displacement(lag, weight, robust_iterations=robust_iterations)
        if smoothing_bins > 0 and n_time > 1:
            p = gaussian_filter1d(p, smoothing_bins, mode="nearest")
            p -= p.mean()
        displacement[:, k] = p * bin_um
    return displacement, centres


def estimate_motion_per_shank(
    histograms: npt.ArrayLike,
    *,
    shanks: npt.ArrayLike,
    channel_shank_ids: npt.ArrayLike,
    channel_depths_um: npt.ArrayLike,
    **kwargs,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """:func:`estimate_motion` on each shank of a multi-shank probe on its own.

    Shanks of one probe need not move together (the brain tilts, a shank
    bends); each shank's displacement is estimated from the peaks whose main
    channel is on it, placing its depth windows (and ``edge_um``) on its own
    channels' depths.

    Parameters
    ----------
    histograms : array_like, shape (n_shanks, n_time_bins, n_depth_bins)
        One summed :func:`peak_histogram` per shank, in the order of ``shanks``.
    shanks : array_like of int, shape (n_shanks,)
        Shank id of each histogram.
    channel_shank_ids : array_like of int, shape (n_channels,)
        Shank of each channel.
    channel_depths_um : array_like, shape (n_channels,)
        Depth (y) of each channel.
    **kwargs
        ``depth_um``, ``bin_um``, ``max_displacement_um`` and the optional
        arguments of :func:`estimate_motion`.

    Returns
    -------
    displacement_um : ndarray of float64, shape (n_time_bins, n_windows)
        The windows of all shanks, shank after shank (one per shank when rigid).
    window_centres_um : ndarray of float64, shape (n_windows,)
        Increasing within each shank.
    window_shank : ndarray of int64, shape (n_windows,)
        Shank id of each window.
    """
    hist = np.asarray(histograms, dtype=np.float64)
    ids = np.asarray(shanks).astype(np.int64)
    channel_shanks = np.asarray(channel_shank_ids).astype(np.int64)
    depths = np.asarray(channel_depths_um, dtype=np.float64)
    if hist.ndim != 3 or hist.shape[0] != len(ids) or len(ids) == 0:
        raise ValueError(
            f"histograms must have shape (n_shanks={len(ids)} >= 1, n_time_bins, "
            f"n_depth_bins), got {hist.shape}"
        )
    if channel_shanks.shape != depths.shape or depths.ndim != 1:
        raise ValueError(
            "channel_shank_ids and channel_depths_um must be 1-D of equal length, got "
            f"shapes {channel_shanks.shape} and {depths.shape}"
        )
    parts, centres, owners = [], [], []
    for shank, shank_hist in zip(ids, hist):
        on_shank = depths[channel_shanks == shank]
        if on_shank.size == 0:
            raise ValueError(f"shank {shank} has no channel in channel_shank_ids")
        disp, cent = estimate_motion(shank_hist, channel_depths_um=on_shank, **kwargs)
        parts.append(disp)
        centres.append(cent)
        owners.append(np.full(len(cent), shank, dtype=np.int64))
    return np.concatenate(parts, axis=1), np.concatenate(centres), np.concatenate(owners)


# ---------------------------------------------------------------------------
# Per chunk: correction
# ---------------------------------------------------------------------------


def channel_displacement(
    displacement_um: npt.ArrayLike,
    window_centres_um: npt.ArrayLike,
    channel_depths_um: npt.ArrayLike,
    *,
    window_shank: npt.ArrayLike | None = None,
    channel_shank_ids: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float64]:
    """Displacement of every channel per time bin, interpolated between windows.

    Linear in depth between window centres, constant beyond the outermost ones.
    With ``window_shank`` and ``channel_shank_ids`` (multi-shank probes,
    :func:`estimate_motion_per_shank`) each channel reads only its own
    shank's windows.

    Returns
    -------
    ndarray of float64, shape (n_time_bins, n_channels)
    """
    disp = np.asarray(displacement_um, dtype=np.float64)
    centres = np.asarray(window_centres_um, dtype=np.float64)
    depths = np.asarray(channel_depths_um, dtype=np.float64)
    if window_shank is not None and channel_shank_ids is not None:
        owners = np.asarray(window_shank).astype(np.int64)
        channel_shanks = np.asarray(channel_shank_ids).astype(np.int64)
        if owners.shape != centres.shape or channel_shanks.shape != depths.shape:
            raise ValueError(
                f"window_shank must have shape {centres.shape} and channel_shank_ids "
                f"{depths.shape}, got {owners.shape} and {channel_shanks.shape}"
            )
        if disp.ndim != 2 or disp.shape[1] != len(centres):
            raise ValueError(
                f"displacement_um must have shape (n_time_bins, {len(centres)}), "
                f"got {disp.shape}"
            )
        out = np.zeros((disp.shape[0], len(depths)))
        for shank in np.unique(channel_shanks):
            mine = owners == shank
            if not np.any(mine):
                raise ValueError(f"no displacement window for shank {shank}")
            on_shank = channel_shanks == shank
            out[:, on_shank] = channel_displacement(
                disp[:, mine], centres[mine], depths[on_shank]
            )
        return out
    if disp.ndim != 2 or disp.shape[1] != len(centres) or len(centres) == 0:
        raise ValueError(
            f"displacement_um must have shape (n_time_bins, {len(centres)}) with at "
            f"least one window, got {disp.shape}"
        )
    if len(centres) > 1 and np.any(np.diff(centres) <= 0):
        raise ValueError(f"window_centres_um must increase, got {centres!r}")
    if len(centres) == 1:
        return np.repeat(disp, len(depths), axis=1)
    return np.stack([np.interp(depths, centres, row) for row in disp])


def _probe_extent(positions: np.ndarray) -> tuple[float, float]:
    """Depth range a target may lie in: channel depths widened by half the row pitch."""
    levels = np.unique(positions[:, 1])
    half_pitch = 0.5 * float(np.min(np.diff(levels))) if len(levels) > 1 else 0.0
    return float(levels[0]) - half_pitch, float(levels[-1]) + half_pitch


def interpolation_matrix(
    positions_um: npt.ArrayLike,
    displacement_um: npt.ArrayLike,
    *,
    sigma_um: float,
    good_mask: npt.ArrayLike | None = None,
    border: str = "nearest",
    shank_ids: npt.ArrayLike | None = None,
) -> sparse.csr_matrix:
    """Sparse kriging matrix that reads each channel at its displaced position.

    Row ``i`` holds the weights that estimate the field at ``(x_i, y_i +
    displacement_um[i])`` from the good channels within
    ``KRIGING_SUPPORT_SIGMAS * sigma_um`` of it: ``K_ts (K_ss + r I)^-1``
    with the Gaussian kernel ``exp(-d**2 / (2 sigma_um**2))`` and ridge
    ``r = KRIGING_RIDGE``. Bad channels give and receive nothing (their rows
    and columns are zero).

    Parameters
    ----------
    positions_um : array_like, shape (n_channels, 2)
    displacement_um : array_like, shape (n_channels,)
        Depth displacement of each channel.
    sigma_um : float
        Kernel width (> 0), about the channel pitch.
    good_mask : array_like of bool, shape (n_channels,), optional
    border : {"nearest", "zero"}
        A target beyond the probe (the channels' depth range widened by half
        the row pitch) is read at the nearest depth inside it (``"nearest"``:
        a unit near the end stays visible, smeared over the end rows) or set
        to zero (``"zero"``: those channels go blank while they are out).
    shank_ids : array_like of int, shape (n_channels,), optional
        Multi-shank probes: a channel is read from its own shank's channels
        only, within its own shank's depth range. (Shanks
        ``SHANK_SEPARATION_UM`` apart are beyond the kernel's support anyway.)

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape (n_channels, n_channels)
        Corrected traces are ``(matrix @ traces.T).T``.
    """
    positions = _check_positions(positions_um)
    n_channels = len(positions)
    shift = np.asarray(displacement_um, dtype=np.float64)
    if shift.shape != (n_channels,) or not np.all(np.isfinite(shift)):
        raise ValueError(
            f"displacement_um must be finite with shape ({n_channels},), got {shift.shape}"
        )
    sigma = _check_positive("sigma_um", sigma_um)
    good = _check_good(good_mask, n_channels)
    if border not in BORDER_MODES:
        raise ValueError(f"border must be one of {BORDER_MODES}, got {border!r}")
    shanks = np.zeros(n_channels, dtype=np.int64)
    if shank_ids is not None and np.size(shank_ids):
        shanks = np.asarray(shank_ids).astype(np.int64)
        if shanks.shape != (n_channels,):
            raise ValueError(
                f"shank_ids must have shape ({n_channels},), got {shanks.shape}"
            )
    low = np.empty(n_channels)
    high = np.empty(n_channels)
    for shank in np.unique(shanks):
        on_shank = shanks == shank
        low[on_shank], high[on_shank] = _probe_extent(positions[on_shank])
    target = positions.copy()
    target[:, 1] += shift
    inside = (target[:, 1] >= low - 1e-9) & (target[:, 1] <= high + 1e-9)
    if border == "nearest":
        target[:, 1] = np.clip(target[:, 1], low, high)
        inside[:] = True
    support = KRIGING_SUPPORT_SIGMAS * sigma
    rows, cols, vals = [], [], []
    for i in np.flatnonzero(good & inside):
        sources = np.flatnonzero(good & (shanks == shanks[i]))
        d2 = np.sum((positions[sources] - target[i]) ** 2, axis=1)
        near = sources[d2 <= support**2]
        if len(near) == 0:
            continue
        delta = positions[near][:, None, :] - positions[near][None, :, :]
        k_ss = np.exp(-np.sum(delta**2, axis=-1) / (2 * sigma**2))
        k_ss[np.diag_indices_from(k_ss)] += KRIGING_RIDGE
        k_ts = np.exp(-d2[d2 <= support**2] / (2 * sigma**2))
        weights = np.linalg.solve(k_ss, k_ts)
        rows.append(np.full(len(near), i))
        cols.append(near)
        vals.append(weights)
    if rows:
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    else:
        r = c = np.zeros(0, dtype=np.int64)
        v = np.zeros(0)
    from scipy import sparse

    matrix = sparse.csr_matrix(
        (v.astype(np.float32), (r, c)), shape=(n_channels, n_channels), dtype=np.float32
    )
    matrix.sort_indices()
    return matrix


def correct_motion(
    traces: npt.ArrayLike,
    *,
    start_sample: int,
    displacement_um: npt.ArrayLike,
    bin_samples: int,
    positions_um: npt.ArrayLike,
    sigma_um: float,
    good_mask: npt.ArrayLike | None = None,
    border: str = "nearest",
    shank_ids: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float32]:
    """Move the traces of samples ``[start_sample, start_sample + n)`` back by their drift.

    Time bin ``b`` covers samples ``[b, b + 1) * bin_samples``; its centre
    is at sample ``b * bin_samples + (bin_samples - 1) / 2``. Between two bin
    centres the output is the linear blend (by time) of the two bins'
    corrections; before the first centre and after the last the nearest bin's
    correction is used. An output sample depends only on the same input
    sample and its absolute index, so correcting chunks gives exactly the
    whole-array result.

    Parameters
    ----------
    traces : array_like, shape (n_samples, n_channels)
        Preprocessed traces of the samples starting at ``start_sample``.
    start_sample : int
        Absolute index of the first row (>= 0).
    displacement_um : array_like, shape (n_time_bins, n_channels)
        Displacement of every channel per time bin
        (:func:`channel_displacement`).
    bin_samples : int
        Samples per time bin (>= 1).
    positions_um, sigma_um, good_mask, border, shank_ids
        As in :func:`interpolation_matrix`.

    Returns
    -------
    ndarray of float32, shape (n_samples, n_channels)
    """
    data = np.asarray(traces, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"traces must have shape (n_samples, n_channels), got {data.shape}")
    n_samples, n_channels = data.shape
    start_sample = _check_int("start_sample", start_sample, 0)
    bin_samples = _check_int("bin_samples", bin_samples, 1)
    disp = np.asarray(displacement_um, dtype=np.float64)
    if disp.ndim != 2 or disp.shape[1] != n_channels or disp.shape[0] == 0:
        raise ValueError(
            f"displacement_um must have shape (n_time_bins >= 1, {n_channels}), "
            f"got {disp.shape}"
        )
    out = np.zeros_like(data)
    if n_samples == 0:
        return out
    n_bins = disp.shape[0]
    position = (
        start_sample + np.arange(n_samples) - 0.5 * (bin_samples - 1)
    ) / bin_samples
    lower = np.clip(np.floor(position).astype(np.int64), 0, max(n_bins - 2, 0))
    alpha = np.clip(position - lower, 0.0, 1.0).astype(np.float32)
    if n_bins == 1:
        alpha[:] = 0.0
    matrices: dict[int, sparse.csr_matrix] = {}

    def matrix(b: int) -> sparse.csr_matrix:
        if b not in matrices:
            matrices[b] = interpolation_matrix(
                positions_um, disp[b], sigma_um=sigma_um, good_mask=good_mask,
                border=border, shank_ids=shank_ids,
            )
        return matrices[b]

    bounds = np.flatnonzero(np.diff(lower)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n_samples]):
        b = int(lower[lo])
        # Channels x samples (tiled transposes: shardsort.memory).
        block = np.empty((n_channels, hi - lo), dtype=np.float32)
        transpose_into(block, data[lo:hi])
        first = np.asarray(matrix(b) @ block)
        if n_bins > 1:
            second = np.asarray(matrix(b + 1) @ block)
            first += alpha[None, lo:hi] * (second - first)
        transpose_into(out[lo:hi], first)
    return out
