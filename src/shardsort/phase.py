"""Neuropixels inter-sample shift: align channels sampled at different instants.

Neuropixels probes digitise their channels with a few multiplexed ADCs: an
ADC converts its channels one after another within each sample period
(Neuropixels 1.0: 32 ADCs of 12 channels in 13 conversion slots, the 13th
for the LFP band; 2.0: 24 ADCs of 16 channels in 16 slots). Channel ``c`` of
sample ``n`` was therefore taken at ``(n + s_c) / fs``, ``s_c`` being its
*sample shift*, a fraction of a sample period (``adc_sample_order /
n_cycles``, as probeinterface and SpikeInterface define it). A common-mode
signal (line noise, movement, reference noise) then differs between channels
by its own slope times the shift, and a common median reference subtracts a
median that does not line up with any channel.

:func:`align_sample_shifts` resamples each channel at the sample instants,
``y_c[n] = x_c(n - s_c)``, by a Kaiser-windowed sinc fractional-delay filter
of ``2 * half_width + 1`` taps. The filter is short and exact in its support,
so a chunk read with ``half_width`` samples of margin on each side gives the
same core as the whole recording (samples beyond the recording's edges count
as zero: the band-passed signal has zero mean). Its response is flat to
~1e-4 up to 0.45 of the sampling rate with the default 32-sample
half-width (13.5 kHz at 30 kHz), far above the spike band.

:func:`bandpass_and_align` is what a filter job runs: band-pass (the same
:func:`shardsort.preprocess.bandpass_filter`) over the core widened by the
half-width, then the alignment, returning the core.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .preprocess import bandpass_filter

#: Half-width (samples) of the fractional-delay filter: 65 taps.
PHASE_HALF_WIDTH = 32
#: Kaiser window parameter of the fractional-delay filter (~1e-4 ripple).
PHASE_KAISER_BETA = 8.6
#: Samples per FFT segment of the overlap-save convolution (bounds memory).
_SEGMENT_SAMPLES = 1 << 15


def check_sample_shifts(
    sample_shifts: npt.ArrayLike, n_channels: int, *, source: str = "sample_shifts"
) -> npt.NDArray[np.float64]:
    """Validate per-channel sample shifts: finite, one per channel, in [-1, 1].

    Raises
    ------
    ValueError
        Naming ``source``, the value and what was expected.
    """
    try:
        shifts = np.asarray(sample_shifts, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{source} must be numbers (fractions of a sample period), "
            f"got {sample_shifts!r}"
        ) from None
    if shifts.ndim != 1 or shifts.size != n_channels:
        raise ValueError(
            f"{source} must hold one shift per channel, n_channels={n_channels}, "
            f"got shape {shifts.shape}"
        )
    if not np.all(np.isfinite(shifts)) or np.any(np.abs(shifts) > 1):
        raise ValueError(
            f"{source} must be finite fractions of a sample period in [-1, 1], "
            f"got min {np.nanmin(shifts) if shifts.size else None}, "
            f"max {np.nanmax(shifts) if shifts.size else None}"
        )
    return shifts


def fractional_delay_taps(
    delays_samples: npt.ArrayLike,
    *,
    half_width: int = PHASE_HALF_WIDTH,
    kaiser_beta: float = PHASE_KAISER_BETA,
) -> npt.NDArray[np.float64]:
    """Taps ``h[k, c]``, ``k = -half_width..half_width``, delaying channel c.

    ``y[n] = sum_k h[k] x[n - k]`` approximates ``x(n - d)``: a
    Kaiser-windowed sinc centred on the delay ``d``, normalised to unit DC
    gain. A delay of 0 gives the unit impulse exactly.

    Returns
    -------
    ndarray of float64, shape (2 * half_width + 1, n_channels)
    """
    delays = np.atleast_1d(np.asarray(delays_samples, dtype=np.float64))
    if half_width < 1:
        raise ValueError(f"half_width must be an integer >= 1, got {half_width!r}")
    lags = np.arange(-half_width, half_width + 1, dtype=np.float64)[:, None]
    t = lags - delays[None, :]
    span = half_width + 1.0
    inside = np.clip(1.0 - (t / span) ** 2, 0.0, None)
    sinc = np.sinc(t)
    whole = t == np.round(t)  # integer delays: an exact unit impulse
    sinc[whole] = t[whole] == 0
    taps = sinc * np.i0(kaiser_beta * np.sqrt(inside)) / np.i0(kaiser_beta)
    taps /= taps.sum(axis=0, keepdims=True)
    return taps


def _convolve_valid(
    x: np.ndarray, taps: np.ndarray, n_out: int
) -> npt.NDArray[np.float32]:
    """``out[n] = sum_k taps[k] x[n + 2H - k]`` for n < n_out, per channel."""
    n_taps, n_channels = taps.shape
    out = np.empty((n_out, n_channels), dtype=np.float32)
    n_fft = _SEGMENT_SAMPLES
    step = n_fft - (n_taps - 1)
    spectrum = np.fft.rfft(taps.astype(np.float32), n=n_fft, axis=0)
    for first in range(0, n_out, step):
        count = min(step, n_out - first)
        segment = x[first : first + count + n_taps - 1]
        product = np.fft.rfft(segment, n=n_fft, axis=0)
        product *= spectrum
        full = np.fft.irfft(product, n=n_fft, axis=0)
        out[first : first + count] = full[n_taps - 1 : n_taps - 1 + count]
    return out


def align_sample_shifts(
    window: npt.ArrayLike,
    *,
    sample_shifts: npt.ArrayLike,
    core_start: int,
    core_stop: int,
    at_recording_start: bool,
    at_recording_end: bool,
    half_width: int = PHASE_HALF_WIDTH,
) -> npt.NDArray[np.float32]:
    """Resample each channel at the sample instants; return the core.

    Parameters
    ----------
    window : array_like, shape (n_window, n_channels)
        Traces (band-passed, zero-mean) around the core.
    sample_shifts : array_like, shape (n_channels,)
        When each channel was sampled after the sample's tick, in sample
        periods; channel ``c`` is delayed by ``sample_shifts[c]``.
    core_start, core_stop : int
        Core as indices into ``window``.
    at_recording_start, at_recording_end : bool
        Whether the window starts / ends at the recording's edge; beyond an
        edge samples count as zero. Elsewhere the window must hold
        ``half_width`` samples on each side of the core.
    half_width : int
        Half-width of the fractional-delay filter (its margin).

    Returns
    -------
    ndarray of float32, shape (core_stop - core_start, n_channels)

    Raises
    ------
    ValueError
        For a margin shorter than ``half_width`` away from the recording's
        edges, shifts of the wrong length or out of [-1, 1], malformed
        arguments.
    """
    window = np.asarray(window)
    if window.ndim != 2:
        raise ValueError(
            f"window must be 2-D (n_samples, n_channels), got shape {window.shape}"
        )
    n_window, n_channels = window.shape
    shifts = check_sample_shifts(sample_shifts, n_channels)
    if not 0 <= core_start <= core_stop <= n_window:
        raise ValueError(
            f"core_start, core_stop must satisfy 0 <= core_start <= core_stop <= "
            f"{n_window} (window length), got {core_start}, {core_stop}"
        )
    before, after = core_start, n_window - core_stop
    for side, have, at_edge in (
        ("before", before, at_recording_start),
        ("after", after, at_recording_end),
    ):
        if have < half_width and not at_edge:
            raise ValueError(
                f"margin {side} the core is {have} samples, expected at least "
                f"half_width={half_width} away from the recording's edges"
            )
    if core_stop == core_start:
        return np.zeros((0, n_channels), dtype=np.float32)
    lo = max(0, core_start - half_width)
    hi = min(n_window, core_stop + half_width)
    padded = np.zeros(
        (core_stop - core_start + 2 * half_width, n_channels), dtype=np.float32
    )
    offset = half_width - (core_start - lo)
    padded[offset : offset + hi - lo] = window[lo:hi]
    taps = fractional_delay_taps(shifts, half_width=half_width)
    return _convolve_valid(padded, taps, core_stop - core_start)


def bandpass_and_align(
    window: npt.ArrayLike,
    *,
    sos: npt.ArrayLike,
    sample_shifts: npt.ArrayLike | None,
    core_start: int,
    core_stop: int,
    at_recording_start: bool,
    at_recording_end: bool,
    half_width: int = PHASE_HALF_WIDTH,
) -> npt.NDArray[np.float32]:
    """Band-pass a raw window, then align its channels' sample instants.

    The band-pass covers the core widened by ``half_width`` (clipped to the
    window), so the window needs the filter's margin plus ``half_width``
    (:func:`shardsort.preprocess.filter_margin_samples` + ``half_width``).
    With ``sample_shifts`` None this is :func:`bandpass_filter` alone.
    Equals ``align_sample_shifts(sosfiltfilt(sos, x))[core]`` of the whole
    recording to the band-pass's tolerance.

    Returns
    -------
    ndarray of float32, shape (core_stop - core_start, n_channels)
    """
    flags = {
        "at_recording_start": at_recording_start,
        "at_recording_end": at_recording_end,
    }
    if sample_shifts is None:
        return bandpass_filter(
            window, sos=sos, core_start=core_start, core_stop=core_stop, **flags
        )
    n_window = np.shape(window)[0]
    wide_start = max(0, core_start - half_width) if at_recording_start else (
        core_start - half_width
    )
    wide_stop = min(n_window, core_stop + half_width) if at_recording_end else (
        core_stop + half_width
    )
    if wide_start < 0 or wide_stop > n_window:
        raise ValueError(
            f"window of {n_window} samples leaves less than half_width={half_width} "
            f"samples (plus the filter's margin) around the core "
            f"[{core_start}, {core_stop}); widen the margin"
        )
    filtered = bandpass_filter(
        window, sos=sos, core_start=wide_start, core_stop=wide_stop, **flags
    )
    return align_sample_shifts(
        filtered,
        sample_shifts=sample_shifts,
        core_start=core_start - wide_start,
        core_stop=core_stop - wide_start,
        half_width=half_width,
        **flags,
    )


#: Mantissa bits the filtered float32 keeps when a sort stores it compressed
#: (``preprocess.compression`` other than ``none``): relative error <= 2**-8,
#: 5e-6 of the noise variance on band-passed noise (the int16 preprocessed
#: chunks add 8e-5); a filtered shard file shrinks to ~0.42 of float32. A
#: preprocess job that filters its chunk itself rounds the same way, so both
#: routes give identical preprocessed chunks.
FILTERED_MANTISSA_BITS = 7


#: Rows of raw samples a whole-shard filter reads, converts and differences at
#: a time (:func:`_bandpass_rows`): 8,192 rows of 384 channels are 12.6 MB of
#: float32, small enough that each segment's temporaries reuse the same memory.
_FILTER_SEGMENT_ROWS = 8192


def filter_channels(
    recording,
    *,
    start: int,
    stop: int,
    channel_start: int,
    channel_stop: int,
    margin_samples: int,
    sos: npt.ArrayLike,
    sample_shifts: npt.ArrayLike | None,
    block_channels: int = 32,
    segment_rows: int = _FILTER_SEGMENT_ROWS,
) -> tuple[npt.NDArray[np.float32], dict[int, list[int]]]:
    """Band-pass (and align) channels ``[channel_start, channel_stop)`` of samples
    ``[start, stop)`` of a recording, read ``margin_samples`` wider on each side
    (clipped at the recording's ends).

    NaN/inf raw samples are replaced by 0 before filtering
    (:func:`shardsort.preprocess.zero_nonfinite`).

    Without sample shifts, all channels are filtered together, the raw window
    read ``segment_rows`` samples at a time (:func:`_bandpass_rows`): the job
    holds one float32 array of the core and its right margin besides one
    segment's temporaries. With sample shifts, ``block_channels`` channels at
    a time are band-passed and aligned (:func:`bandpass_and_align`). Both give
    the values :func:`bandpass_and_align` gives on the whole window: the same
    float32 differences and the same float64 recursion, sample by sample.

    Parameters
    ----------
    recording
        Has ``n_samples`` and ``get_traces(start, stop, channels=...)``
        (:mod:`shardsort.recordings`).
    sample_shifts : array_like of shape (n_channels_of_recording,), optional
        Per-channel sample shifts (None: no alignment).

    Returns
    -------
    filtered : ndarray of float32, shape (stop - start, channel_stop - channel_start)
    nonfinite : dict
        ``{channel: [count, first absolute sample]}`` of the NaN/inf samples
        found in ``[start, stop)``.
    """
    from .preprocess import zero_nonfinite

    lo = max(0, start - margin_samples)
    hi = min(recording.n_samples, stop + margin_samples)
    sos = np.asarray(sos, dtype=np.float64)
    if sample_shifts is None:
        return _bandpass_rows(
            recording, lo=lo, hi=hi, start=start, stop=stop,
            channels=np.arange(channel_start, channel_stop), sos=sos,
            segment_rows=segment_rows,
        )
    shifts = np.asarray(sample_shifts, dtype=np.float64)
    filtered = np.empty((stop - start, channel_stop - channel_start), np.float32)
    nonfinite: dict[int, list[int]] = {}
    for first in range(channel_start, channel_stop, block_channels):
        channels = np.arange(first, min(first + block_channels, channel_stop))
        window = recording.get_traces(lo, hi, channels=channels)
        window, found = zero_nonfinite(window, core_start=start - lo, core_stop=stop - lo)
        for i in np.flatnonzero(found.counts):
            nonfinite[int(channels[i])] = [int(found.counts[i]), start + int(found.first[i])]
        # A slice, not the index array: fancy column assignment costs ~10x more.
        column = first - channel_start
        filtered[:, column : column + channels.size] = bandpass_and_align(
            window,
            sos=sos,
            sample_shifts=shifts[channels],
            core_start=start - lo,
            core_stop=stop - lo,
            at_recording_start=lo == 0,
            at_recording_end=hi == recording.n_samples,
        )
    return filtered, nonfinite


def _bandpass_rows(
    recording,
    *,
    lo: int,
    hi: int,
    start: int,
    stop: int,
    channels: np.ndarray,
    sos: np.ndarray,
    segment_rows: int,
) -> tuple[npt.NDArray[np.float32], dict[int, list[int]]]:
    """:func:`shardsort.preprocess.bandpass_filter` of the raw window ``[lo, hi)``
    (core ``[start, stop)``), its rows read and differenced a segment at a time.

    The forward pass runs over the window's first differences (with scipy's
    odd extensions at the recording's edges) segment by segment, carrying the
    cascade's state; its output from the core start on goes into the one
    array the backward pass then runs over in place.
    """
    from .compiled import sos_cascade
    from .preprocess import _edge_padding, _remove_dc_zero, _sosfilt_zi, zero_nonfinite

    if segment_rows < 2:
        raise ValueError(f"segment_rows must be an integer >= 2, got {segment_rows!r}")
    n_channels = channels.size
    n_window, core_start, core_stop = hi - lo, start - lo, stop - lo
    at_start, at_end = lo == 0, hi == recording.n_samples
    if stop == start:
        return np.zeros((0, n_channels), dtype=np.float32), {}
    pad_start, pad_end = _edge_padding(sos, n_window, at_start, at_end)
    after_differencer = _remove_dc_zero(sos)
    # Rows of the differenced, extended window: d[0] = 0, d[1 : pad_start + 1]
    # the mirror image of d[pad_start + 1 : 2 pad_start + 1], then
    # d[pad_start + k] = x[k] - x[k - 1] for k in [1, n_window), then the
    # mirror image of the last pad_end rows. Rows from `keep` on are kept.
    n_rows = pad_start + n_window + pad_end
    keep = pad_start + core_start
    tail = np.empty((n_rows - keep, n_channels), dtype=np.float32)
    state = np.zeros((sos.shape[0], 2, n_channels))
    nonfinite: dict[int, list[int]] = {}

    def read(a: int, b: int, count: bool = True) -> np.ndarray:
        """Window rows [a, b) in microvolts, non-finite samples zeroed; those of
        the core counted (``count``: each row is counted by one read only)."""
        x = recording.get_traces(lo + a, lo + b, channels=channels)
        c0, c1 = min(max(core_start - a, 0), b - a), min(max(core_stop - a, 0), b - a)
        if not count or c1 <= c0:  # zeroed, not counted
            return zero_nonfinite(x, core_start=0, core_stop=b - a)[0]
        x, found = zero_nonfinite(x, core_start=c0, core_stop=c1)
        for i in np.flatnonzero(found.counts):
            channel, at = int(channels[i]), start + a - core_start + c0 + int(found.first[i])
            count, first = nonfinite.get(channel, [0, at])
            nonfinite[channel] = [count + int(found.counts[i]), min(first, at)]
        return x

    def forward(d: np.ndarray, row: int) -> None:
        """Run rows [row, row + len(d)) of the forward pass, in place; keep the kept ones."""
        sos_cascade(d, after_differencer, state, False, d)
        skip = max(0, keep - row)
        if skip < len(d):
            tail[row + skip - keep : row + len(d) - keep] = d[skip:]

    head = np.zeros((pad_start + 1, n_channels), dtype=np.float32)
    if pad_start:
        x = read(0, pad_start + 1, count=False)
        head[1:] = np.subtract(x[1:], x[:-1], dtype=np.float32)[::-1]
    forward(head, 0)
    previous = read(0, 1)
    for a in range(1, n_window, segment_rows):
        b = min(n_window, a + segment_rows)
        x = read(a, b)
        d = np.empty((b - a, n_channels), dtype=np.float32)
        np.subtract(x[:1], previous, out=d[:1], dtype=np.float32)
        np.subtract(x[1:], x[:-1], out=d[1:], dtype=np.float32)
        previous = x[-1:].copy()
        forward(d, pad_start + a)
    if pad_end:
        x = read(n_window - pad_end - 1, n_window, count=False)
        forward(np.subtract(x[1:], x[:-1], dtype=np.float32)[::-1].copy(),
                pad_start + n_window)
    state = _sosfilt_zi(sos)[:, :, None] * tail[-1].astype(np.float64)
    sos_cascade(tail, sos, state, True, tail)
    return tail[: core_stop - core_start], dict(sorted(nonfinite.items()))
