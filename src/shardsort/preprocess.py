"""Preprocessing kernels: band-pass filter, noise statistics, bad channels,
common reference and local whitening.

The workflow runs them in this order:

1. ``filter[c, t]``: :func:`zero_nonfinite`, then :func:`bandpass_filter`
   on a channel shard x time chunk read with :func:`filter_margin_samples`
   samples of margin on each side;
   the concatenated chunk outputs equal whole-array
   ``scipy.signal.sosfiltfilt(sos, x, axis=0)``.
2. ``noise_stats``: :func:`robust_noise_scale`, :func:`detect_bad_channels`
   and :func:`noise_covariance` on a sample of filtered chunks.
3. ``whitening``: :func:`local_whitening_matrix` from the pooled covariance.
4. ``preprocess[t]``: :func:`apply_preprocessing` (common reference, unit
   noise scaling, whitening, bad channels set to zero).

All kernels take traces shaped ``(n_samples, n_channels)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from .checks import check_positive as _check_positive
from .compiled import sos_cascade

#: Meaning of the labels returned by :func:`detect_bad_channels`.
BAD_CHANNEL_LABELS = {0: "good", 1: "dead", 2: "noisy", 3: "out"}

#: Modes accepted by :func:`common_reference`.
REFERENCE_MODES = ("none", "global", "local")

#: Median absolute deviation of a standard normal variable (= Phi^-1(3/4)).
MAD_TO_SIGMA = 0.6744897501960817

#: Output channels per product in :func:`apply_preprocessing`'s whitening.
_WHITENING_TILE_CHANNELS = 64

#: Rows per float32 product accumulated in float64 by :func:`noise_covariance`.
_COVARIANCE_BLOCK_SAMPLES = 65536


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------


def _as_traces(traces: npt.ArrayLike, name: str = "traces") -> np.ndarray:
    array = np.asarray(traces)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_channels), got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def _as_positions(positions_um: npt.ArrayLike | None, n_channels: int) -> np.ndarray:
    if positions_um is None:
        raise ValueError("positions_um is required, got None")
    positions = np.asarray(positions_um, dtype=np.float64)
    if positions.shape != (n_channels, 2):
        raise ValueError(
            f"positions_um must have shape ({n_channels}, 2), got {positions.shape}"
        )
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions_um must be finite, got NaN or inf")
    return positions


def _as_good_mask(good_mask: npt.ArrayLike | None, n_channels: int) -> np.ndarray:
    if good_mask is None:
        return np.ones(n_channels, dtype=bool)
    mask = np.asarray(good_mask)
    if mask.shape != (n_channels,) or mask.dtype != bool:
        raise ValueError(
            f"good_mask must be a boolean array of shape ({n_channels},), "
            f"got {mask.dtype} array of shape {mask.shape}"
        )
    return mask


def _as_groups(groups: npt.ArrayLike | None, n_channels: int) -> np.ndarray | None:
    if groups is None:
        return None
    array = np.asarray(groups)
    if array.size == 0:
        return None
    if array.shape != (n_channels,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"groups must be an integer array of shape ({n_channels},), "
            f"got {array.dtype} {array.shape}"
        )
    return array


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_sos(sos: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(sos, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 6 or array.shape[0] == 0:
        raise ValueError(f"sos must have shape (n_sections, 6), got {array.shape}")
    if not np.allclose(array[:, 3], 1.0):
        raise ValueError(f"sos must have a0 == 1 in every section, got {array[:, 3]}")
    poles = np.concatenate([np.roots(section[3:]) for section in array])
    if np.max(np.abs(poles)) >= 1.0:
        raise ValueError(
            f"sos must be a stable filter (all poles inside the unit circle), "
            f"got a pole of modulus {np.max(np.abs(poles)):.6f}"
        )
    return array


def _neighbourhoods(
    positions: np.ndarray,
    radius_um: float,
    candidates: np.ndarray,
    inner_radius_um: float = 0.0,
) -> list[np.ndarray]:
    """Sorted indices of the candidate channels at ``inner <= distance <= radius``."""
    from scipy.spatial import cKDTree  # imported here: most jobs never need it

    tree = cKDTree(positions)
    neighbourhoods = []
    in_ball = tree.query_ball_point(positions, r=radius_um, return_sorted=True)
    for i, found in enumerate(in_ball):
        found = np.asarray(found, dtype=np.intp)
        found = found[candidates[found]]
        if inner_radius_um > 0:
            distance = np.hypot(*(positions[found] - positions[i]).T)
            found = found[distance >= inner_radius_um]
        neighbourhoods.append(found)
    return neighbourhoods


#: Samples referenced at a time by :func:`common_reference` ('global').
_REFERENCE_BLOCK_SAMPLES = 16384


def _median(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.median(values, axis=axis)``, several times faster.

    One single-pivot partition (``np.median`` partitions around two pivots
    for even lengths, which is slow); the lower middle value is then the
    maximum of the lower part.
    """
    half = values.shape[axis] // 2
    parted = np.moveaxis(np.partition(values, half, axis=axis), axis, 0)
    if values.shape[axis] % 2:
        return parted[half]
    return 0.5 * (parted[half] + parted[:half].max(axis=0))


# --------------------------------------------------------------------------
# band-pass filter
# --------------------------------------------------------------------------


def design_bandpass(
    *,
    sampling_rate_hz: float,
    freq_min_hz: float,
    freq_max_hz: float | None,
    order: int,
) -> npt.NDArray[np.float64]:
    """Design a Butterworth band-pass (or high-pass) filter in SOS form.

    Parameters
    ----------
    sampling_rate_hz : float
        Sampling rate of the recording.
    freq_min_hz : float
        Lower cut-off (-3 dB), ``0 < freq_min_hz < nyquist``.
    freq_max_hz : float or None
        Upper cut-off, ``freq_min_hz < freq_max_hz < nyquist``; None designs a
        high-pass filter.
    order : int
        Butterworth order, 1 to 10 (a band-pass of order N has 2N poles).

    Returns
    -------
    sos : ndarray of float64, shape (n_sections, 6)
        Second-order sections for :func:`bandpass_filter`.
    """
    sampling_rate_hz = _check_positive("sampling_rate_hz", sampling_rate_hz)
    nyquist_hz = sampling_rate_hz / 2.0
    if not np.isfinite(freq_min_hz) or not 0 < freq_min_hz < nyquist_hz:
        raise ValueError(
            f"freq_min_hz must be in (0, {nyquist_hz:g}) (the Nyquist frequency), "
            f"got {freq_min_hz!r}"
        )
    if freq_max_hz is not None and (
        not np.isfinite(freq_max_hz) or not freq_min_hz < freq_max_hz < nyquist_hz
    ):
        raise ValueError(
            f"freq_max_hz must be None or in ({freq_min_hz:g}, {nyquist_hz:g}), "
            f"got {freq_max_hz!r}"
        )
    if (
        isinstance(order, bool)
        or not isinstance(order, (int, np.integer))
        or not (1 <= order <= 10)
    ):
        raise ValueError(f"order must be an integer in [1, 10], got {order!r}")
    from scipy import signal  # design only: the per-chunk jobs get the sos as a param

    if freq_max_hz is None:
        return signal.butter(
            order, freq_min_hz, btype="highpass", fs=sampling_rate_hz, output="sos"
        )
    return signal.butter(
        order,
        [freq_min_hz, freq_max_hz],
        btype="bandpass",
        fs=sampling_rate_hz,
        output="sos",
    )


def _scipy_padlen(sos: np.ndarray) -> int:
    """Odd-extension length ``sosfiltfilt`` uses by default: 3 * its tap count."""
    n_taps = 2 * sos.shape[0] + 1
    n_taps -= min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * n_taps


def filter_margin_samples(sos: npt.ArrayLike, *, rtol: float = 1e-7) -> int:
    """Margin a chunk needs on each side so that its filtered core is exact.

    The margin is the lag beyond which the impulse response of the
    forward-backward filter stays below ``rtol`` times its peak, and at least
    scipy's padding length (the odd extension at the recording edges is taken
    from inside the window). The error of a chunk's core is about 30 times
    ``rtol`` relative to the output's maximum, hence the default of 1e-7
    (425 samples for 300-6000 Hz, order 3, at 30 kHz).

    Parameters
    ----------
    sos : array_like, shape (n_sections, 6)
        Second-order sections of a stable filter.
    rtol : float, optional
        Relative decay of the impulse response, in (0, 1).

    Returns
    -------
    int
        Margin in samples.
    """
    sos = _as_sos(sos)
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol!r}")
    pole_radius = max(np.max(np.abs(np.roots(section[3:]))) for section in sos)
    # Long enough for the forward response to fall far below rtol.
    n_response = 64 + 2 * int(
        np.ceil(np.log(rtol * 1e-3) / np.log(max(pole_radius, 1e-3)))
    )
    from scipy import signal

    while True:
        forward = signal.sosfilt(sos, signal.unit_impulse(n_response))
        round_trip = signal.fftconvolve(forward, forward[::-1])[n_response - 1 :]
        above = np.flatnonzero(np.abs(round_trip) > rtol * np.abs(round_trip[0]))
        margin = int(above[-1]) + 1
        if margin < n_response // 2:
            return max(margin, _scipy_padlen(sos))
        n_response *= 2


def _sosfilt_zi(sos: np.ndarray) -> np.ndarray:
    """Steady-state initial state of an SOS cascade for a unit step input.

    Equals ``scipy.signal.sosfilt_zi``: each section's ``lfilter_zi`` scaled by
    the DC gain of the sections before it.
    """
    zi = np.empty((sos.shape[0], 2))
    scale = 1.0
    for k, section in enumerate(sos):
        b, a = section[:3] / section[3], section[3:] / section[3]
        # Transposed direct form II at rest: (I - companion(a).T) zi = b[1:] - a[1:] b[0]
        system = np.array([[1.0 + a[1], -1.0], [a[2], 1.0]])
        zi[k] = scale * np.linalg.solve(system, b[1:] - a[1:] * b[0])
        scale *= b.sum() / a.sum()
    return zi


class NonFinite(NamedTuple):
    """Non-finite samples found by :func:`zero_nonfinite`, per channel."""

    counts: npt.NDArray[np.int64]
    """NaN or infinite samples in the core, shape (n_channels,)."""
    first: npt.NDArray[np.int64]
    """Index of the first one in the core (from ``core_start``), -1 if none."""


def zero_nonfinite(
    window: npt.ArrayLike, *, core_start: int, core_stop: int
) -> tuple[np.ndarray, NonFinite]:
    """Replace NaN and infinite samples by 0 and count those of the core.

    A float recording may hold a few NaN samples (a dropped packet, a
    saturated converter); one of them would spread over a whole channel
    through the filter. The filter job zeroes them in its whole window (the
    same samples in every chunk that reads them, so sharding does not change
    the answer) and reports only those of its core (each sample once).

    Parameters
    ----------
    window : array_like, shape (n_window, n_channels)
        Raw samples, any numeric dtype (integer windows are returned as is).
    core_start, core_stop : int
        Core of the chunk as indices into ``window``.

    Returns
    -------
    window : ndarray, shape (n_window, n_channels)
        ``window`` itself when every sample is finite, else a copy with the
        non-finite samples set to 0.
    found : NonFinite
        Per channel: how many non-finite samples the core holds and where the
        first one lies, relative to ``core_start``.
    """
    window = _as_traces(window, "window")
    n_window, n_channels = window.shape
    if not 0 <= core_start <= core_stop <= n_window:
        raise ValueError(
            f"core_start, core_stop must satisfy 0 <= core_start <= core_stop <= "
            f"{n_window} (window length), got {core_start}, {core_stop}"
        )
    none = NonFinite(np.zeros(n_channels, np.int64), np.full(n_channels, -1, np.int64))
    if not np.issubdtype(window.dtype, np.floating):
        return window, none
    bad = ~np.isfinite(window)
    if not bad.any():
        return window, none
    window = np.where(bad, window.dtype.type(0), window)
    core = bad[core_start:core_stop]
    counts = core.sum(axis=0, dtype=np.int64)
    first = np.where(counts > 0, core.argmax(axis=0), -1).astype(np.int64)
    return window, NonFinite(counts, first)


def bandpass_filter(
    window: npt.ArrayLike,
    *,
    sos: npt.ArrayLike,
    core_start: int,
    core_stop: int,
    at_recording_start: bool,
    at_recording_end: bool,
) -> npt.NDArray[np.float32]:
    """Zero-phase filter a chunk read with margins; return its core.

    Equals ``scipy.signal.sosfiltfilt(sos, x, axis=0)[core]`` of the whole
    recording ``x`` (default odd padding) when the margins are
    :func:`filter_margin_samples` long or reach the recording edges: to
    about 1e-6 of the output's maximum absolute value from float32 rounding,
    plus the margin truncation (2e-5 at most with the default margin on
    the filters tested: Butterworth 150-9000 Hz order 2, 300-6000 Hz order 3,
    300 Hz high-pass order 5, at 30 kHz).

    Parameters
    ----------
    window : array_like, shape (n_window, n_channels)
        Raw samples ``[core_start_abs - margin_before, core_stop_abs +
        margin_after)`` of the recording, any real dtype (int16 typically).
        Margins may be shorter (even 0) where they reach the recording edges.
    sos : array_like, shape (n_sections, 6)
        Second-order sections, e.g. from :func:`design_bandpass`.
    core_start, core_stop : int
        Core of the chunk as indices into ``window``.
    at_recording_start, at_recording_end : bool
        Whether ``window[0]`` is the first / ``window[-1]`` the last sample of
        the recording; there the filter applies scipy's odd extension and
        initial conditions exactly.

    Returns
    -------
    ndarray of float32, shape (core_stop - core_start, n_channels)
        Filtered core, in the units of ``window``.

    Raises
    ------
    ValueError
        If a window touching a recording edge holds no more than scipy's
        padding length samples (``sosfiltfilt`` raises the same way on a
        recording that short), or on malformed arguments.

    Notes
    -----
    Stores float32 and computes in float64 with a compiled loop over
    samples whose inner loop runs over contiguous channels
    (:func:`shardsort.compiled.sos_cascade`), both passes in place: several
    hundred MB/s of int16 input per core, several times faster than
    ``scipy.signal.sosfiltfilt`` (``benchmarks/results/kernels.csv``); peak
    memory is one float32 copy of the window besides the window itself.
    The forward pass filters the
    first difference of the signal through the filter with one zero at
    z = 1 taken out: the same output in exact arithmetic, but neither DC
    offsets nor large low-frequency (LFP) swings cost float32 precision.
    """
    window = _as_traces(window, "window")
    sos = _as_sos(sos)
    n_window, n_channels = window.shape
    core_start = _check_int("core_start", core_start, 0)
    core_stop = _check_int("core_stop", core_stop, 0)
    if not core_start <= core_stop <= n_window:
        raise ValueError(
            f"core_start, core_stop must satisfy 0 <= core_start <= core_stop <= "
            f"{n_window} (window length), got {core_start}, {core_stop}"
        )
    after_differencer = _remove_dc_zero(sos)
    if core_stop == core_start:
        return np.zeros((0, n_channels), dtype=np.float32)
    pad_start, pad_end = _edge_padding(sos, n_window, at_recording_start, at_recording_end)

    # Forward pass on the first difference d[k] = x[k] - x[k-1] (exact in
    # float32 for integer samples). scipy starts from the steady state of a
    # signal constant at its first sample: for d, zero input and zero state.
    # scipy's odd extensions of x are mirror images of d.
    difference = np.empty(
        (pad_start + n_window + pad_end, n_channels), dtype=np.float32
    )
    difference[0] = 0
    start, stop = pad_start + 1, pad_start + n_window
    np.subtract(window[1:], window[:-1], out=difference[start:stop], dtype=np.float32)
    if pad_start:
        difference[1:start] = difference[start : start + pad_start][::-1]
    if pad_end:
        difference[stop:] = difference[stop - pad_end : stop][::-1]
    # Both passes run in place: ``difference`` becomes the forward output,
    # then (from the core start on) the backward output.
    state = np.zeros((sos.shape[0], 2, n_channels))
    sos_cascade(difference, after_differencer, state, False, difference)
    # Backward pass, from scipy's initial state at the window end, only as
    # far back as the core start.
    tail = difference[pad_start + core_start :]
    state = _sosfilt_zi(sos)[:, :, None] * tail[-1].astype(np.float64)
    sos_cascade(tail, sos, state, True, tail)
    return tail[: core_stop - core_start]


def _edge_padding(
    sos: np.ndarray, n_window: int, at_recording_start: bool, at_recording_end: bool
) -> tuple[int, int]:
    """Samples of scipy's odd extension before and after a window (at the
    recording's edges only), checking the window is long enough for it."""
    pad = _scipy_padlen(sos)
    if (at_recording_start or at_recording_end) and n_window <= pad:
        raise ValueError(
            f"window touching the recording edge must hold more than padlen={pad} "
            f"samples, got {n_window} (scipy.signal.sosfiltfilt raises likewise)"
        )
    return (pad if at_recording_start else 0), (pad if at_recording_end else 0)


def _remove_dc_zero(sos: np.ndarray) -> np.ndarray:
    """Sections of ``H(z) / (1 - z^-1)`` for a filter ``H`` with a zero at z = 1."""
    numerators = sos[:, :3]
    residual = np.abs(numerators.sum(axis=1)) / np.abs(numerators).sum(axis=1)
    section = int(np.argmin(residual))
    if residual[section] > 1e-9:
        raise ValueError(
            "sos must block DC (a high-pass or band-pass filter with a zero at "
            f"z = 1), got a smallest relative numerator sum of {residual[section]:.2e}"
        )
    # b0 + b1 z^-1 + b2 z^-2 = (1 - z^-1) (b0 - b2 z^-1) when b0 + b1 + b2 = 0
    reduced = sos.copy()
    reduced[section, :3] = [numerators[section, 0], -numerators[section, 2], 0.0]
    return reduced


# --------------------------------------------------------------------------
# noise statistics and bad channels
# --------------------------------------------------------------------------


def robust_noise_scale(traces: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Per-channel noise standard deviation from the median absolute deviation.

    Parameters
    ----------
    traces : array_like, shape (n_samples, n_channels)
        Filtered traces, ``n_samples >= 1``.

    Returns
    -------
    ndarray of float32, shape (n_channels,)
        ``median(|x - median(x)|) / 0.6745`` per channel (0 for a constant
        channel).
    """
    traces = _as_traces(traces)
    if traces.shape[0] == 0:
        raise ValueError("traces must hold at least one sample, got 0")
    # Channel-major copy: the medians then partition contiguous rows.
    by_channel = np.array(traces.T, dtype=np.float32, order="C")
    by_channel -= _median(by_channel, axis=1)[:, None]
    np.abs(by_channel, out=by_channel)
    return (_median(by_channel, axis=1) / MAD_TO_SIGMA).astype(np.float32)


def detect_bad_channels(
    traces: npt.ArrayLike,
    positions_um: npt.ArrayLike,
    *,
    dead_scale_max: float,
    noisy_factor: float,
    neighbour_radius_um: float,
    coherence_min: float | None = None,
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Label dead, noisy and (optionally) low-coherence channels.

    Parameters
    ----------
    traces : array_like, shape (n_samples, n_channels)
        Filtered traces in microvolts.
    positions_um : array_like, shape (n_channels, 2)
        Channel positions.
    dead_scale_max : float
        Channels whose robust noise scale (µV) is below this, or that are
        exactly constant, are dead (label 1). ``>= 0``.
    noisy_factor : float
        Channels whose scale exceeds ``noisy_factor`` times the median scale
        of their live neighbours (or of all live channels when they have
        none) are noisy (label 2). ``> 1``.
    neighbour_radius_um : float
        Neighbourhood radius (the channel itself excluded).
    coherence_min : float or None, optional
        If given, live channels whose largest correlation with a live
        neighbour is below it are labelled 3 ('out', e.g. outside the
        brain). Channels without live neighbours are not tested.

    Returns
    -------
    labels : ndarray of int8, shape (n_channels,)
        Keys of :data:`BAD_CHANNEL_LABELS`; dead wins over noisy over out.
    scales : ndarray of float32, shape (n_channels,)
        :func:`robust_noise_scale` of each channel.
    """
    traces = _as_traces(traces)
    n_channels = traces.shape[1]
    positions = _as_positions(positions_um, n_channels)
    if dead_scale_max is None or not np.isfinite(dead_scale_max) or dead_scale_max < 0:
        raise ValueError(
            f"dead_scale_max must be a finite number >= 0, got {dead_scale_max!r}"
        )
    if noisy_factor is None or not np.isfinite(noisy_factor) or noisy_factor <= 1:
        raise ValueError(
            f"noisy_factor must be a finite number > 1, got {noisy_factor!r}"
        )
    neighbour_radius_um = _check_positive("neighbour_radius_um", neighbour_radius_um)
    if coherence_min is not None and not -1 <= coherence_min <= 1:
        raise ValueError(
            f"coherence_min must be None or in [-1, 1], got {coherence_min!r}"
        )

    scales = robust_noise_scale(traces)
    constant = np.all(traces == traces[:1], axis=0)
    dead = constant | (scales < dead_scale_max)
    live = ~dead
    labels = np.where(dead, 1, 0).astype(np.int8)
    if not live.any():
        return labels, scales

    neighbourhoods = _neighbourhoods(positions, neighbour_radius_um, live)
    neighbourhoods = [nb[nb != i] for i, nb in enumerate(neighbourhoods)]
    global_median = np.median(scales[live])
    reference = np.array(
        [np.median(scales[nb]) if nb.size else global_median for nb in neighbourhoods]
    )
    noisy = live & (scales > noisy_factor * reference)
    labels[noisy] = 2

    if coherence_min is not None:
        correlation = _correlation(traces[:, live])
        column = np.cumsum(live) - 1  # channel index -> column of correlation
        for i in np.flatnonzero(live & ~noisy):
            nb = neighbourhoods[i]
            if nb.size and correlation[column[i], column[nb]].max() < coherence_min:
                labels[i] = 3
    return labels, scales


def _correlation(traces: np.ndarray) -> np.ndarray:
    """Pearson correlation matrix of non-constant columns."""
    centred = traces.astype(np.float32) - traces.mean(axis=0, dtype=np.float64).astype(
        np.float32
    )
    product = (centred.T @ centred).astype(np.float64)
    norm = np.sqrt(np.diag(product))
    return product / np.outer(norm, norm)


def noise_covariance(
    traces: npt.ArrayLike,
    *,
    threshold: float,
    exclusion_samples: int,
) -> tuple[npt.NDArray[np.float64], int]:
    """Spatial noise covariance from the samples free of spikes.

    Samples within ``exclusion_samples`` of any sample whose absolute value
    exceeds ``threshold`` on any channel are dropped.

    Parameters
    ----------
    traces : array_like, shape (n_samples, n_channels)
        Filtered traces scaled to unit noise per channel.
    threshold : float
        Spike threshold in noise units, ``> 0``.
    exclusion_samples : int
        Half-width of the window removed around each crossing, ``>= 0``.

    Returns
    -------
    covariance : ndarray of float64, shape (n_channels, n_channels)
        ``X.T @ X / n_used`` of the kept samples, not mean-subtracted
        (band-passed data has zero mean), so that covariances of several
        chunks pool exactly as ``sum(n_i * C_i) / sum(n_i)``. Zeros when no
        sample is kept.
    n_used : int
        Number of samples kept.
    """
    traces = _as_traces(traces)
    threshold = _check_positive("threshold", threshold)
    exclusion_samples = _check_int("exclusion_samples", exclusion_samples, 0)
    n_samples, n_channels = traces.shape

    crossings = np.flatnonzero((np.abs(traces) > threshold).any(axis=1))
    starts = np.clip(crossings - exclusion_samples, 0, n_samples)
    stops = np.clip(crossings + exclusion_samples + 1, 0, n_samples)
    excluded = np.cumsum(
        np.bincount(starts, minlength=n_samples + 1)
        - np.bincount(stops, minlength=n_samples + 1)
    )[:n_samples]
    kept = traces[excluded == 0].astype(np.float32, copy=False)

    covariance = np.zeros((n_channels, n_channels))
    for start in range(0, kept.shape[0], _COVARIANCE_BLOCK_SAMPLES):
        rows = kept[start : start + _COVARIANCE_BLOCK_SAMPLES]
        covariance += rows.T @ rows
    n_used = kept.shape[0]
    if n_used:
        covariance /= n_used
    return covariance, n_used


# --------------------------------------------------------------------------
# whitening, common reference, apply
# --------------------------------------------------------------------------


def _zca(covariance: np.ndarray, eps: float) -> np.ndarray:
    """ZCA matrix ``C^{-1/2}``, eigenvalues regularised by ``eps * mean eigenvalue``."""
    from scipy import linalg

    eigenvalues, eigenvectors = linalg.eigh(covariance)
    scale = eigenvalues.mean()
    if scale <= 0:
        return np.zeros_like(covariance)
    inverse_root = 1.0 / np.sqrt(np.clip(eigenvalues, 0, None) + eps * scale)
    return (eigenvectors * inverse_root) @ eigenvectors.T


def local_whitening_matrix(
    covariance: npt.ArrayLike,
    positions_um: npt.ArrayLike,
    *,
    radius_um: float,
    eps: float = 1e-6,
    good_mask: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float32]:
    """Local ZCA whitening matrix.

    Row ``i`` is the row of ``C_N^{-1/2}`` belonging to channel ``i``, where
    ``N`` holds the good channels within ``radius_um`` of ``i`` (``i``
    included); entries outside ``N`` are zero. A radius covering every
    channel gives global ZCA.

    Parameters
    ----------
    covariance : array_like, shape (n_channels, n_channels)
        Noise covariance, e.g. from :func:`noise_covariance`.
    positions_um : array_like, shape (n_channels, 2)
        Channel positions.
    radius_um : float
        Neighbourhood radius, ``> 0``.
    eps : float, optional
        Regularisation added to the eigenvalues, relative to their mean.
    good_mask : array_like of bool, shape (n_channels,), optional
        Bad channels (False) are left out of every neighbourhood and get a
        zero row and column, so their whitened trace is 0.

    Returns
    -------
    ndarray of float32, shape (n_channels, n_channels)
        ``W``; whitened traces are ``traces @ W.T``. A neighbourhood with
        zero variance gives a zero row.
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    if covariance.ndim != 2 or covariance.shape[0] != covariance.shape[1]:
        raise ValueError(
            f"covariance must be a square matrix, got shape {covariance.shape}"
        )
    n_channels = covariance.shape[0]
    positions = _as_positions(positions_um, n_channels)
    radius_um = _check_positive("radius_um", radius_um)
    if eps is None or not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    good = _as_good_mask(good_mask, n_channels)

    whitening = np.zeros((n_channels, n_channels))
    zca_of = {}  # neighbourhood -> its ZCA; regular probes repeat neighbourhoods
    for i, nb in enumerate(_neighbourhoods(positions, radius_um, good)):
        if not good[i]:
            continue
        key = nb.tobytes()
        if key not in zca_of:
            zca_of[key] = _zca(covariance[np.ix_(nb, nb)], eps)
        whitening[i, nb] = zca_of[key][np.searchsorted(nb, i)]
    return whitening.astype(np.float32)


def common_reference(
    traces: npt.ArrayLike,
    *,
    mode: str,
    positions_um: npt.ArrayLike | None = None,
    good_mask: npt.ArrayLike | None = None,
    radius_um: float | None = None,
    inner_radius_um: float = 0.0,
    groups: npt.ArrayLike | None = None,
    overwrite: bool = False,
) -> npt.NDArray[np.float32]:
    """Subtract a median reference taken over good channels.

    ``overwrite=True`` lets the 'none' and 'global' modes work in ``traces``
    itself when it is a C-contiguous float32 array (its caller's own copy):
    a preprocess job then holds one copy of its chunk, not three.

    Parameters
    ----------
    traces : array_like, shape (n_samples, n_channels)
        Filtered traces.
    mode : {'none', 'global', 'local'}
        'global' subtracts, at each sample, the median over all good
        channels; 'local' subtracts from each channel the median over the
        good channels at ``inner_radius_um <= distance <= radius_um`` (the
        channel itself included when ``inner_radius_um == 0``); 'none'
        returns a float32 copy.
    positions_um : array_like, shape (n_channels, 2), optional
        Channel positions ('local' only).
    good_mask : array_like of bool, shape (n_channels,), optional
        Channels usable as reference (default all). Bad channels are
        referenced like the others but never used as reference.
    radius_um : float, optional
        Outer radius ('local' only), ``> 0``.
    inner_radius_um : float, optional
        Inner radius ('local' only), ``0 <= inner_radius_um < radius_um``.
    groups : array_like of int, shape (n_channels,), optional
        Group (shank) of each channel ('global' only): each group's channels
        are referenced to the median over that group's good channels. None
        or a single group: one median over all good channels.

    Returns
    -------
    ndarray of float32, shape (n_samples, n_channels)
        Referenced traces. A channel without good reference channels (all
        channels of its group in 'global' mode) is returned unreferenced.
    """
    traces = _as_traces(traces)
    if mode not in REFERENCE_MODES:
        raise ValueError(f"mode must be one of {REFERENCE_MODES}, got {mode!r}")
    n_channels = traces.shape[1]
    good = _as_good_mask(good_mask, n_channels)
    group_of = _as_groups(groups, n_channels)
    if mode != "local":
        out = (np.require(traces, dtype=np.float32, requirements="C") if overwrite
               else np.array(traces, dtype=np.float32, order="C"))
        if mode != "global":
            return out
        if group_of is None or np.unique(group_of).size < 2:
            sets = [(slice(None), None if good.all() else np.flatnonzero(good))]
        else:
            sets = [(group_of == g, np.flatnonzero((group_of == g) & good))
                    for g in np.unique(group_of)]
        # Rows are independent: blocks of samples keep the median's
        # partition copy small.
        for lo in range(0, out.shape[0], _REFERENCE_BLOCK_SAMPLES):
            block = out[lo : lo + _REFERENCE_BLOCK_SAMPLES]
            for members, sources in sets:
                if sources is not None and sources.size == 0:
                    continue
                reference = block if sources is None else block[:, sources]
                median = _median(reference, axis=1)[:, None]
                if isinstance(members, slice):
                    block -= median
                else:
                    block[:, members] -= median
        return out

    positions = _as_positions(positions_um, n_channels)
    radius_um = _check_positive("radius_um", radius_um)
    if inner_radius_um is None or not 0 <= inner_radius_um < radius_um:
        raise ValueError(
            f"inner_radius_um must be in [0, radius_um={radius_um:g}), "
            f"got {inner_radius_um!r}"
        )
    groups: dict[bytes, tuple[np.ndarray, list[int]]] = {}
    for i, nb in enumerate(
        _neighbourhoods(positions, radius_um, good, inner_radius_um)
    ):
        if nb.size:
            groups.setdefault(nb.tobytes(), (nb, []))[1].append(i)
    # Channel-major: gathering neighbours and subtracting are row copies.
    source = np.array(traces.T, dtype=np.float32, order="C")
    referenced = source.copy()
    for nb, channels in groups.values():
        referenced[channels] -= _median(source[nb], axis=0)
    return np.ascontiguousarray(referenced.T)


def _apply_whitening(traces: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """``traces @ whitening.T`` for a local (banded) whitening matrix.

    Each tile of output channels only reads the span of input channels its
    rows touch, so the cost grows with n_channels, not n_channels**2, when
    channels are numbered along the probe (else it is a dense product).
    """
    out = np.empty(traces.shape, dtype=np.float32)
    for start in range(0, whitening.shape[0], _WHITENING_TILE_CHANNELS):
        rows = whitening[start : start + _WHITENING_TILE_CHANNELS]
        used = np.flatnonzero(rows.any(axis=0))
        if used.size == 0:
            out[:, start : start + len(rows)] = 0
            continue
        span = slice(used[0], used[-1] + 1)
        out[:, start : start + len(rows)] = traces[:, span] @ rows[:, span].T
    return out


def apply_preprocessing(
    traces: npt.ArrayLike,
    *,
    scales: npt.ArrayLike,
    reference_mode: str,
    whitening: npt.ArrayLike | None = None,
    positions_um: npt.ArrayLike | None = None,
    good_mask: npt.ArrayLike | None = None,
    radius_um: float | None = None,
    inner_radius_um: float = 0.0,
    output_dtype: str = "float32",
    int16_scale: float | None = None,
    groups: npt.ArrayLike | None = None,
    overwrite: bool = False,
) -> npt.NDArray[np.float32] | npt.NDArray[np.int16]:
    """Common reference, unit-noise scaling, whitening; bad channels set to 0.

    Parameters
    ----------
    traces : array_like, shape (n_samples, n_channels)
        Filtered traces.
    scales : array_like, shape (n_channels,)
        Noise scale per channel (:func:`robust_noise_scale`); channels with
        scale <= 0 are not divided.
    reference_mode : {'none', 'global', 'local'}
        See :func:`common_reference` (with ``positions_um``, ``good_mask``,
        ``radius_um``, ``inner_radius_um``).
    whitening : array_like, shape (n_channels, n_channels), optional
        ``W`` from :func:`local_whitening_matrix`, applied as ``x @ W.T``.
    positions_um, good_mask, radius_um, inner_radius_um, groups
        Passed to :func:`common_reference`; ``good_mask`` also selects the
        channels kept (others are set to 0).
    overwrite : bool, optional
        ``traces`` (C-contiguous float32) may be used as the working array
        and is then left modified (see :func:`common_reference`).
    output_dtype : {'float32', 'int16'}, optional
        'int16' stores ``round(x * int16_scale)``, saturated to +-32767; read
        back as ``q / int16_scale``.
    int16_scale : float, optional
        Quantisation factor, required for 'int16' (e.g. 200: steps of 0.005
        noise units, range +-164 noise units).

    Returns
    -------
    ndarray of float32 or int16, shape (n_samples, n_channels)
        Preprocessed traces in noise units (times ``int16_scale`` for int16).
    """
    traces = _as_traces(traces)
    n_channels = traces.shape[1]
    scales = np.asarray(scales, dtype=np.float32)
    if scales.shape != (n_channels,):
        raise ValueError(f"scales must have shape ({n_channels},), got {scales.shape}")
    if output_dtype not in ("float32", "int16"):
        raise ValueError(
            f"output_dtype must be 'float32' or 'int16', got {output_dtype!r}"
        )
    if output_dtype == "int16":
        int16_scale = _check_positive("int16_scale", int16_scale)
    if whitening is not None:
        whitening = np.asarray(whitening, dtype=np.float32)
        if whitening.shape != (n_channels, n_channels):
            raise ValueError(
                f"whitening must have shape ({n_channels}, {n_channels}), "
                f"got {whitening.shape}"
            )
    good = _as_good_mask(good_mask, n_channels)

    out = common_reference(
        traces,
        mode=reference_mode,
        positions_um=positions_um,
        good_mask=good,
        radius_um=radius_um,
        inner_radius_um=inner_radius_um,
        groups=groups,
        overwrite=overwrite,
    )
    out /= np.where(scales > 0, scales, np.float32(1.0))
    if whitening is not None:
        out = _apply_whitening(out, whitening)
    out[:, ~good] = 0
    if output_dtype == "float32":
        return out
    out *= int16_scale
    np.rint(out, out=out)
    np.clip(out, -32767, 32767, out=out)
    return out.astype(np.int16)
