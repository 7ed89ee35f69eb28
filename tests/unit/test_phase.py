"""Inter-sample shift correction: planted delays removed, chunking changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from shardsort.phase import (
    PHASE_HALF_WIDTH,
    align_sample_shifts,
    bandpass_and_align,
    filter_channels,
    fractional_delay_taps,
)
from shardsort.preprocess import design_bandpass, filter_margin_samples

FS = 30000.0
NP1_SHIFTS = ((np.arange(24) % 24) // 2) / 13.0  # one block of NP 1.0 channels


def band_limited_noise(n, n_channels, shifts, seed=0, band=(300.0, 6000.0)):
    """Noise band-limited to ``band``, channel c sampled ``shifts[c]`` late.

    Built in the frequency domain so the late sampling is exact: the
    channel's spectrum is multiplied by exp(+2 pi i f s / fs).
    """
    rng = np.random.default_rng(seed)
    freqs = np.fft.rfftfreq(n, d=1 / FS)
    spectrum = rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size)
    spectrum[(freqs < band[0]) | (freqs > band[1])] = 0
    late = np.exp(2j * np.pi * freqs[:, None] * np.asarray(shifts)[None, :] / FS)
    common = np.fft.irfft(spectrum, n=n)
    traces = np.fft.irfft(spectrum[:, None] * late, n=n, axis=0)
    scale = 1.0 / common.std()
    return (common * scale).astype(np.float32), (traces * scale).astype(np.float32)


@pytest.mark.parametrize("frequency_hz", [300.0, 1000.0, 3000.0, 6000.0])
def test_planted_delay_of_a_sinusoid_is_removed(frequency_hz):
    n = 6000
    t = np.arange(n)
    shifts = np.array([0.0, 0.1, 0.25, 0.5, 12 / 13, 15 / 16])
    late = np.sin(2 * np.pi * frequency_hz * (t[:, None] + shifts) / FS)
    aligned = align_sample_shifts(
        late.astype(np.float32),
        sample_shifts=shifts,
        core_start=100,
        core_stop=n - 100,
        at_recording_start=True,
        at_recording_end=True,
    )
    truth = np.sin(2 * np.pi * frequency_hz * t[100 : n - 100] / FS)
    error = np.abs(aligned - truth[:, None]).max(axis=0)
    assert np.all(error < 1e-3), error
    # Uncorrected, the late channels are far off: the test can fail.
    assert np.abs(late[100 : n - 100, 4] - truth).max() > 1e-2


def test_planted_delay_of_band_limited_noise_is_removed():
    common, late = band_limited_noise(20000, 24, NP1_SHIFTS)
    aligned = align_sample_shifts(
        late,
        sample_shifts=NP1_SHIFTS,
        core_start=0,
        core_stop=late.shape[0],
        at_recording_start=True,
        at_recording_end=True,
    )
    core = slice(PHASE_HALF_WIDTH, -PHASE_HALF_WIDTH)  # edges: zero padding
    rel = np.abs(aligned[core] - common[core, None]).max() / np.abs(common).max()
    assert rel < 1e-3
    before = np.abs(late[core] - common[core, None]).max() / np.abs(common).max()
    assert before > 0.1


def test_zero_shift_is_identity():
    taps = fractional_delay_taps(np.zeros(3))
    expected = np.zeros_like(taps)
    expected[PHASE_HALF_WIDTH] = 1.0
    np.testing.assert_array_equal(taps, expected)
    x = np.random.default_rng(1).standard_normal((500, 3)).astype(np.float32)
    y = align_sample_shifts(
        x,
        sample_shifts=np.zeros(3),
        core_start=40,
        core_stop=460,
        at_recording_start=False,
        at_recording_end=False,
    )
    np.testing.assert_allclose(y, x[40:460], atol=1e-5)


def test_integer_shift_is_a_plain_delay():
    x = np.random.default_rng(2).standard_normal((400, 1)).astype(np.float32)
    y = align_sample_shifts(
        x,
        sample_shifts=[1.0],
        core_start=50,
        core_stop=350,
        at_recording_start=False,
        at_recording_end=False,
    )
    np.testing.assert_allclose(y[:, 0], x[49:349, 0], atol=1e-5)


def chunked(raw, sos, shifts, chunk, margin):
    out = []
    n = raw.shape[0]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        lo, hi = max(0, start - margin), min(n, stop + margin)
        out.append(
            bandpass_and_align(
                raw[lo:hi],
                sos=sos,
                sample_shifts=shifts,
                core_start=start - lo,
                core_stop=stop - lo,
                at_recording_start=lo == 0,
                at_recording_end=hi == n,
            )
        )
    return np.concatenate(out)


@pytest.mark.parametrize("chunk", [3000, 4567])
def test_chunked_equals_whole_array(chunk):
    rng = np.random.default_rng(3)
    raw = (rng.standard_normal((20000, 24)) * 50).astype(np.int16)
    raw[:, :] += (400 * np.sin(np.arange(20000) / 700.0)).astype(np.int16)[:, None]
    sos = design_bandpass(
        sampling_rate_hz=FS, freq_min_hz=300.0, freq_max_hz=6000.0, order=3
    )
    margin = filter_margin_samples(sos) + PHASE_HALF_WIDTH
    whole_filtered = signal.sosfiltfilt(sos, raw.astype(np.float64), axis=0)
    whole = align_sample_shifts(
        whole_filtered,
        sample_shifts=NP1_SHIFTS,
        core_start=0,
        core_stop=raw.shape[0],
        at_recording_start=True,
        at_recording_end=True,
    )
    pieces = chunked(raw, sos, NP1_SHIFTS, chunk, margin)
    scale = np.abs(whole).max()
    assert np.abs(pieces - whole).max() / scale < 2e-5
    # The margin matters: without the half-width the chunks do not fit.
    with pytest.raises(ValueError, match="half_width=32"):
        chunked(raw, sos, NP1_SHIFTS, chunk, PHASE_HALF_WIDTH - 1)


def test_bandpass_and_align_without_shifts_is_the_band_pass():
    raw = np.random.default_rng(4).standard_normal((5000, 3)).astype(np.float32)
    sos = design_bandpass(
        sampling_rate_hz=FS, freq_min_hz=300.0, freq_max_hz=6000.0, order=3
    )
    from shardsort.preprocess import bandpass_filter

    args = dict(
        sos=sos, core_start=0, core_stop=5000, at_recording_start=True,
        at_recording_end=True,
    )
    np.testing.assert_array_equal(
        bandpass_and_align(raw, sample_shifts=None, **args), bandpass_filter(raw, **args)
    )


def test_errors_name_the_parameter():
    x = np.zeros((100, 2), np.float32)
    kwargs = dict(core_start=40, core_stop=60, at_recording_start=True, at_recording_end=True)
    with pytest.raises(ValueError, match=r"one shift per channel, n_channels=2"):
        align_sample_shifts(x, sample_shifts=[0.1], **kwargs)
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        align_sample_shifts(x, sample_shifts=[0.1, 3.0], **kwargs)
    with pytest.raises(ValueError, match="margin before the core is 10 samples"):
        align_sample_shifts(
            x, sample_shifts=[0.0, 0.0], core_start=10, core_stop=60,
            at_recording_start=False, at_recording_end=True,
        )
    empty = align_sample_shifts(x, sample_shifts=[0.0, 0.5], core_start=50, core_stop=50,
                                at_recording_start=True, at_recording_end=True)
    assert empty.shape == (0, 2) and empty.dtype == np.float32


class _ArrayRecording:
    """The raw-recording interface filter_channels reads (microvolts, float32)."""

    def __init__(self, x):
        self.x, self.n_samples = x, len(x)

    def get_traces(self, start, stop, channels=None):
        return self.x[start:stop][:, channels].astype(np.float32)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_segmented_shard_filter_equals_the_whole_window_filter(dtype):
    """Without shifts, filter_channels reads and differences the window a
    segment at a time; the cores and the NaN/inf reports equal those of the
    whole window's bandpass_filter, at the recording's edges and inside it,
    for any segment length."""
    from shardsort.preprocess import bandpass_filter, zero_nonfinite

    rng = np.random.default_rng(7)
    x = (rng.normal(0, 50, (30000, 12)) + 300).astype(dtype)
    if dtype == np.float32:
        x[100, 3] = np.nan
        x[20000, 5] = np.inf
        x[20001, 5] = np.nan
        x[5, 7] = np.nan
    recording = _ArrayRecording(x)
    sos = design_bandpass(
        sampling_rate_hz=30000.0, freq_min_hz=300.0, freq_max_hz=6000.0, order=3
    )
    margin = filter_margin_samples(sos)
    cases = [(0, 8000, 0, 12, 1000), (8000, 16000, 3, 11, 777), (22000, 30000, 0, 12, 8192),
             (0, 30000, 0, 12, 3000), (0, 30000, 0, 12, 2), (100, 101, 0, 12, 50)]
    for start, stop, first, last, segment in cases:
        got, nonfinite = filter_channels(
            recording, start=start, stop=stop, channel_start=first, channel_stop=last,
            margin_samples=margin, sos=sos, sample_shifts=None, segment_rows=segment,
        )
        lo, hi = max(0, start - margin), min(len(x), stop + margin)
        window, found = zero_nonfinite(
            recording.get_traces(lo, hi, np.arange(first, last)),
            core_start=start - lo, core_stop=stop - lo,
        )
        expected = bandpass_filter(
            window, sos=sos, core_start=start - lo, core_stop=stop - lo,
            at_recording_start=lo == 0, at_recording_end=hi == len(x),
        )
        np.testing.assert_array_equal(got, expected)
        assert got.flags.c_contiguous
        assert nonfinite == {
            first + int(i): [int(found.counts[i]), start + int(found.first[i])]
            for i in np.flatnonzero(found.counts)
        }
    if dtype == np.float32:  # the planted samples, each counted once
        assert filter_channels(
            recording, start=0, stop=30000, channel_start=0, channel_stop=12,
            margin_samples=margin, sos=sos, sample_shifts=None, segment_rows=999,
        )[1] == {3: [1, 100], 5: [2, 20000], 7: [1, 5]}
