"""Tests for the preprocessing kernels (shardsort.preprocess)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg, signal

from shardsort.preprocess import (
    BAD_CHANNEL_LABELS,
    apply_preprocessing,
    bandpass_filter,
    common_reference,
    design_bandpass,
    detect_bad_channels,
    filter_margin_samples,
    local_whitening_matrix,
    noise_covariance,
    robust_noise_scale,
    zero_nonfinite,
)

FS = 30_000.0
SOS = design_bandpass(
    sampling_rate_hz=FS, freq_min_hz=300.0, freq_max_hz=6000.0, order=3
)
PADLEN = 21  # scipy's default for SOS: 3 * (2 * 3 sections + 1)


def two_column_probe(n_rows: int) -> np.ndarray:
    """Channels at x in {0, 32} um, rows 20 um apart; channel = 2 * row + column."""
    return np.array([[x, 20.0 * row] for row in range(n_rows) for x in (0.0, 32.0)])


def correlated_noise(
    positions: np.ndarray, n_samples: int, *, length_um: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance Gaussian noise; off-diagonal correlation 0.7 exp(-d / length)."""
    distance = np.hypot(*(positions[:, None] - positions[None]).transpose(2, 0, 1))
    covariance = 0.7 * np.exp(-distance / length_um) + 0.3 * np.eye(len(positions))
    white = np.random.default_rng(seed).standard_normal((n_samples, len(positions)))
    return (white @ linalg.cholesky(covariance, lower=True).T).astype(
        np.float32
    ), covariance


def raw_recording(n_samples: int, n_channels: int, seed: int) -> np.ndarray:
    """int16 'raw' data: DC offsets, a large 3 Hz LFP swing, noise and spikes."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / FS
    x = rng.normal(0.0, 20.0, (n_samples, n_channels))
    x += rng.integers(-3000, 3000, n_channels)
    x += 800.0 * np.sin(2 * np.pi * 3.0 * t[:, None] + rng.uniform(0, 6, n_channels))
    n_spikes = 30 if n_samples > 30 else 0
    spikes = rng.integers(0, n_samples - 30, n_spikes)
    for start, channel in zip(
        spikes, rng.integers(0, n_channels, n_spikes), strict=True
    ):
        x[start : start + 30, channel] -= 250.0 * np.hanning(30)
    return np.round(x).astype(np.int16)


def filter_in_chunks(raw: np.ndarray, chunk: int, margin: int, sos=SOS) -> np.ndarray:
    """What the workflow does: chunks with margins, cores concatenated."""
    n = raw.shape[0]
    cores = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        lo, hi = max(0, start - margin), min(n, stop + margin)
        cores.append(
            bandpass_filter(
                raw[lo:hi],
                sos=sos,
                core_start=start - lo,
                core_stop=stop - lo,
                at_recording_start=lo == 0,
                at_recording_end=hi == n,
            )
        )
    return np.concatenate(cores)


def relative_error(result: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(result - reference).max() / np.abs(reference).max())


# --------------------------------------------------------------------------
# band-pass filter
# --------------------------------------------------------------------------


def test_design_bandpass_matches_butterworth() -> None:
    expected = signal.butter(3, [300, 6000], btype="bandpass", fs=FS, output="sos")
    np.testing.assert_array_equal(SOS, expected)
    highpass = design_bandpass(
        sampling_rate_hz=FS, freq_min_hz=300.0, freq_max_hz=None, order=4
    )
    np.testing.assert_array_equal(
        highpass, signal.butter(4, 300, btype="highpass", fs=FS, output="sos")
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"sampling_rate_hz": -1.0},
            "sampling_rate_hz must be a finite number > 0, got -1.0",
        ),
        ({"freq_min_hz": 0.0}, r"freq_min_hz must be in \(0, 15000\)"),
        ({"freq_min_hz": 15000.0}, r"freq_min_hz must be in \(0, 15000\)"),
        (
            {"freq_max_hz": 200.0},
            r"freq_max_hz must be None or in \(300, 15000\), got 200.0",
        ),
        ({"freq_max_hz": 15000.0}, r"freq_max_hz must be None or in \(300, 15000\)"),
        ({"order": 0}, r"order must be an integer in \[1, 10\], got 0"),
        ({"order": 11}, r"order must be an integer in \[1, 10\], got 11"),
        ({"order": 2.5}, r"order must be an integer in \[1, 10\], got 2.5"),
    ],
)
def test_design_bandpass_errors(kwargs: dict, message: str) -> None:
    arguments = dict(
        sampling_rate_hz=FS, freq_min_hz=300.0, freq_max_hz=6000.0, order=3
    )
    with pytest.raises(ValueError, match=message):
        design_bandpass(**{**arguments, **kwargs})


@pytest.mark.parametrize(
    ("frequency_hz", "low", "high"),
    [(1000.0, 0.99, 1.01), (50.0, 0, 0.01), (12000.0, 0, 0.01)],
)
def test_bandpass_frequency_response(
    frequency_hz: float, low: float, high: float
) -> None:
    n = 30_000
    sine = 1000.0 * np.sin(2 * np.pi * frequency_hz * np.arange(n) / FS)
    out = bandpass_filter(
        sine[:, None],
        sos=SOS,
        core_start=0,
        core_stop=n,
        at_recording_start=True,
        at_recording_end=True,
    )
    middle = out[n // 4 : 3 * n // 4, 0]
    gain = np.sqrt(2) * middle.std() / 1000.0
    assert low <= gain <= high, gain


def test_filter_margin_samples() -> None:
    margin = filter_margin_samples(SOS)
    assert 300 < margin < 600  # decay time of a 300 Hz high-pass at 30 kHz
    assert (
        filter_margin_samples(SOS, rtol=1e-4)
        < margin
        < filter_margin_samples(SOS, rtol=1e-9)
    )
    # A response that dies out at once still leaves room for scipy's padding,
    # 6 samples for one first-order section.
    fast = signal.butter(1, 0.9, btype="highpass", output="sos")
    assert filter_margin_samples(fast, rtol=0.5) == 6


@pytest.mark.parametrize("chunk", [97, 424, 1999, 6000])
def test_bandpass_chunks_equal_whole_sosfiltfilt(chunk: int) -> None:
    raw = raw_recording(6000, 4, seed=1)
    reference = signal.sosfiltfilt(SOS, raw.astype(np.float64), axis=0)
    margin = filter_margin_samples(SOS)
    result = filter_in_chunks(raw, chunk, margin)
    assert result.dtype == np.float32 and result.shape == raw.shape
    assert relative_error(result, reference) <= 1e-4


@pytest.mark.parametrize("sample", [0, 1, 2999, 5998, 5999])
def test_bandpass_single_sample_core(sample: int) -> None:
    raw = raw_recording(6000, 3, seed=2)
    reference = signal.sosfiltfilt(SOS, raw.astype(np.float64), axis=0)
    margin = filter_margin_samples(SOS)
    lo, hi = max(0, sample - margin), min(6000, sample + 1 + margin)
    core = bandpass_filter(
        raw[lo:hi],
        sos=SOS,
        core_start=sample - lo,
        core_stop=sample + 1 - lo,
        at_recording_start=lo == 0,
        at_recording_end=hi == 6000,
    )
    error = np.abs(core[0] - reference[sample]).max() / np.abs(reference).max()
    assert error <= 1e-4


def test_bandpass_short_margin_is_detected() -> None:
    """The chunk test can fail: a margin far below the decay time breaks it."""
    raw = raw_recording(6000, 2, seed=3)
    reference = signal.sosfiltfilt(SOS, raw.astype(np.float64), axis=0)
    assert relative_error(filter_in_chunks(raw, 500, 40), reference) > 1e-3


def test_bandpass_highpass_and_other_orders() -> None:
    raw = raw_recording(5000, 2, seed=4)
    for sos in (
        design_bandpass(
            sampling_rate_hz=FS, freq_min_hz=300.0, freq_max_hz=None, order=5
        ),
        design_bandpass(
            sampling_rate_hz=FS, freq_min_hz=150.0, freq_max_hz=9000.0, order=2
        ),
    ):
        reference = signal.sosfiltfilt(sos, raw.astype(np.float64), axis=0)
        result = filter_in_chunks(raw, 1234, filter_margin_samples(sos), sos=sos)
        assert relative_error(result, reference) <= 1e-4


@pytest.mark.parametrize("n_samples", [PADLEN + 1, 100, 700])
def test_bandpass_short_recording_mirrors_scipy(n_samples: int) -> None:
    raw = raw_recording(n_samples, 2, seed=5)
    reference = signal.sosfiltfilt(SOS, raw.astype(np.float64), axis=0)
    result = bandpass_filter(
        raw,
        sos=SOS,
        core_start=0,
        core_stop=n_samples,
        at_recording_start=True,
        at_recording_end=True,
    )
    assert relative_error(result, reference) <= 1e-5


def test_bandpass_too_short_recording_raises_like_scipy() -> None:
    raw = raw_recording(PADLEN, 2, seed=6)
    with pytest.raises(ValueError, match="padlen"):
        signal.sosfiltfilt(SOS, raw, axis=0)
    with pytest.raises(
        ValueError, match=f"more than padlen={PADLEN} samples, got {PADLEN}"
    ):
        bandpass_filter(
            raw,
            sos=SOS,
            core_start=0,
            core_stop=PADLEN,
            at_recording_start=True,
            at_recording_end=True,
        )


def test_bandpass_dtypes_agree_and_empty_core() -> None:
    raw = raw_recording(3000, 3, seed=7)
    kwargs = dict(
        sos=SOS,
        core_start=500,
        core_stop=2500,
        at_recording_start=False,
        at_recording_end=True,
    )
    as_int16 = bandpass_filter(raw, **kwargs)
    np.testing.assert_allclose(
        bandpass_filter(raw.astype(np.float64), **kwargs), as_int16, atol=1e-3
    )
    empty = bandpass_filter(raw, **{**kwargs, "core_start": 700, "core_stop": 700})
    assert empty.shape == (0, 3) and empty.dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"core_stop": 3001},
            r"core_start <= core_stop <= 3000 \(window length\), got 0, 3001",
        ),
        ({"core_start": 10, "core_stop": 5}, "got 10, 5"),
        ({"core_start": -1}, "core_start must be an integer >= 0, got -1"),
        (
            {"sos": np.ones((2, 5))},
            r"sos must have shape \(n_sections, 6\), got \(2, 5\)",
        ),
        ({"sos": signal.butter(3, 0.2, output="sos")}, "sos must block DC"),
        ({"sos": [[1, 0, 0, 1, -1.5, 0.0]]}, "sos must be a stable filter"),
    ],
)
def test_bandpass_errors(kwargs: dict, message: str) -> None:
    arguments = dict(
        sos=SOS,
        core_start=0,
        core_stop=3000,
        at_recording_start=False,
        at_recording_end=False,
    )
    with pytest.raises(ValueError, match=message):
        bandpass_filter(np.zeros((3000, 2), np.int16), **{**arguments, **kwargs})


def test_bandpass_window_must_be_2d() -> None:
    with pytest.raises(
        ValueError,
        match=r"window must be 2-D \(n_samples, n_channels\), got shape \(100,\)",
    ):
        bandpass_filter(
            np.zeros(100),
            sos=SOS,
            core_start=0,
            core_stop=100,
            at_recording_start=False,
            at_recording_end=False,
        )


# --------------------------------------------------------------------------
# noise scale and bad channels
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [40_000, 40_001])
def test_robust_noise_scale(n_samples: int) -> None:
    sigma = np.array([1.0, 5.0, 20.0], dtype=np.float32)
    traces = (
        np.random.default_rng(8).normal(size=(n_samples, 3)).astype(np.float32) * sigma
    )
    traces[::200, 1] -= 300.0  # sparse spikes barely move a robust estimate
    scales = robust_noise_scale(traces)
    assert scales.dtype == np.float32 and scales.shape == (3,)
    np.testing.assert_allclose(scales, sigma, rtol=0.03)
    mad = (
        np.median(np.abs(traces - np.median(traces, axis=0)), axis=0)
        / 0.6744897501960817
    )
    np.testing.assert_allclose(scales, mad, rtol=1e-6)


def test_robust_noise_scale_constant_and_errors() -> None:
    np.testing.assert_array_equal(robust_noise_scale(np.full((10, 2), 7.0)), [0.0, 0.0])
    with pytest.raises(ValueError, match="traces must hold at least one sample, got 0"):
        robust_noise_scale(np.zeros((0, 4)))


def test_bad_channels_none_on_clean_correlated_noise() -> None:
    positions = two_column_probe(16)
    noise, _ = correlated_noise(positions, 20_000, length_um=40.0, seed=9)
    labels, scales = detect_bad_channels(
        10.0 * noise,
        positions,
        dead_scale_max=1.0,
        noisy_factor=3.0,
        neighbour_radius_um=60.0,
        coherence_min=0.3,
    )
    assert labels.dtype == np.int8 and scales.dtype == np.float32
    np.testing.assert_array_equal(labels, 0)
    np.testing.assert_allclose(scales, 10.0, rtol=0.05)


def test_bad_channels_finds_planted_dead_noisy_and_out() -> None:
    positions = two_column_probe(16)
    noise, _ = correlated_noise(positions, 20_000, length_um=40.0, seed=10)
    traces = 10.0 * noise
    traces[:, 5] = 3.0  # constant: dead
    traces[:, 9] *= 0.01  # 0.1 uV: dead
    traces[:, 14] *= 5.0  # noisy
    traces[:, 20] = np.random.default_rng(11).normal(0.0, 10.0, 20_000)  # incoherent
    labels, _ = detect_bad_channels(
        traces,
        positions,
        dead_scale_max=1.0,
        noisy_factor=3.0,
        neighbour_radius_um=60.0,
        coherence_min=0.3,
    )
    expected = np.zeros(32, dtype=np.int8)
    expected[[5, 9]], expected[14], expected[20] = 1, 2, 3
    np.testing.assert_array_equal(labels, expected)
    assert [BAD_CHANNEL_LABELS[k] for k in (0, 1, 2, 3)] == [
        "good",
        "dead",
        "noisy",
        "out",
    ]
    # Without the coherence test the incoherent channel passes.
    labels, _ = detect_bad_channels(
        traces,
        positions,
        dead_scale_max=1.0,
        noisy_factor=3.0,
        neighbour_radius_um=60.0,
    )
    assert labels[20] == 0


def test_bad_channels_isolated_channel_uses_global_median() -> None:
    positions = np.array([[0.0, 0.0], [0.0, 20.0], [0.0, 40.0], [500.0, 0.0]])
    traces = np.random.default_rng(12).normal(size=(5000, 4)) * [1.0, 1.0, 1.0, 4.0]
    labels, _ = detect_bad_channels(
        traces,
        positions,
        dead_scale_max=0.1,
        noisy_factor=3.0,
        neighbour_radius_um=30.0,
    )
    np.testing.assert_array_equal(labels, [0, 0, 0, 2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"dead_scale_max": -1.0},
            "dead_scale_max must be a finite number >= 0, got -1.0",
        ),
        ({"noisy_factor": 1.0}, "noisy_factor must be a finite number > 1, got 1.0"),
        (
            {"neighbour_radius_um": 0.0},
            "neighbour_radius_um must be a finite number > 0, got 0.0",
        ),
        (
            {"coherence_min": 2.0},
            r"coherence_min must be None or in \[-1, 1\], got 2.0",
        ),
    ],
)
def test_bad_channels_errors(kwargs: dict, message: str) -> None:
    arguments = dict(dead_scale_max=1.0, noisy_factor=3.0, neighbour_radius_um=60.0)
    with pytest.raises(ValueError, match=message):
        detect_bad_channels(
            np.ones((10, 4)), two_column_probe(2), **{**arguments, **kwargs}
        )
    with pytest.raises(
        ValueError, match=r"positions_um must have shape \(4, 2\), got \(3, 2\)"
    ):
        detect_bad_channels(np.ones((10, 4)), two_column_probe(2)[:3], **arguments)


# --------------------------------------------------------------------------
# common reference
# --------------------------------------------------------------------------


def test_global_reference_removes_common_signal_and_ignores_bad() -> None:
    rng = np.random.default_rng(13)
    common = 50.0 * rng.standard_normal(5000)
    noise = rng.standard_normal((5000, 16))
    out = common_reference(noise + common[:, None], mode="global")
    assert out.dtype == np.float32
    for channel in range(16):
        assert abs(np.corrcoef(out[:, channel], common)[0, 1]) < 0.05
    assert out.std() < 1.1

    # Exact: good channels hold the signal, two bad channels an offset that
    # would move the median if they were used.
    traces = np.repeat(common[:, None], 4, axis=1)
    traces[:, [1, 3]] += 1000.0
    good = np.array([True, False, True, False])
    out = common_reference(traces, mode="global", good_mask=good)
    np.testing.assert_allclose(out[:, good], 0.0, atol=1e-3)
    np.testing.assert_allclose(out[:, ~good], 1000.0, atol=1e-3)


def test_local_reference_exact_annulus() -> None:
    positions = np.column_stack([np.zeros(8), 10.0 * np.arange(8)])
    values = np.arange(8, dtype=float) ** 2
    traces = np.tile(values, (3, 1))
    good = np.ones(8, dtype=bool)
    good[5] = False
    out = common_reference(
        traces,
        mode="local",
        positions_um=positions,
        good_mask=good,
        radius_um=20.0,
        inner_radius_um=10.0,
    )
    # neighbours: good channels 10 or 20 um (1 or 2 rows) away, bounds included
    expected = [
        values[i]
        - np.median([values[j] for j in range(8) if 1 <= abs(i - j) <= 2 and good[j]])
        for i in range(8)
    ]
    np.testing.assert_allclose(out, np.tile(expected, (3, 1)), rtol=1e-6)


def test_local_reference_removes_per_shank_signals() -> None:
    rng = np.random.default_rng(14)
    second_shank = two_column_probe(8) + np.array([1000.0, 0.0])
    positions = np.concatenate([two_column_probe(8), second_shank])
    shank_signals = 50.0 * rng.standard_normal((4000, 2))
    traces = rng.standard_normal((4000, 32)) + np.repeat(shank_signals, 16, axis=1)
    local = common_reference(
        traces, mode="local", positions_um=positions, radius_um=200.0
    )
    global_ = common_reference(traces, mode="global")
    assert local.std() < 1.1
    assert global_.std() > 10.0  # one median cannot remove two shank signals


def test_global_reference_per_shank() -> None:
    """groups: one median over each shank's good channels; one group = no groups."""
    rng = np.random.default_rng(15)
    shank_signals = 50.0 * rng.standard_normal((4000, 4))
    groups = np.repeat([3, 0, 2, 1], 8)  # any ids, shank blocks
    traces = rng.standard_normal((4000, 32)) + np.repeat(shank_signals, 8, axis=1)
    per_shank = common_reference(traces, mode="global", groups=groups)
    assert per_shank.std() < 1.1
    assert common_reference(traces, mode="global").std() > 10.0
    # Exact: the median of each shank's good channels only.
    good = np.ones(32, dtype=bool)
    good[[1, 9, 10]] = False
    out = common_reference(traces, mode="global", good_mask=good, groups=groups)
    for g in np.unique(groups):
        members = groups == g
        reference = np.median(traces[:, members & good], axis=1)
        np.testing.assert_allclose(
            out[:, members], traces[:, members] - reference[:, None], atol=1e-4
        )
    # A shank without good channels is left unreferenced.
    out = common_reference(traces, mode="global", good_mask=groups != 2, groups=groups)
    np.testing.assert_array_equal(out[:, groups == 2], traces[:, groups == 2].astype(np.float32))
    # One shank (or none given) is byte-identical to the plain global median.
    plain = common_reference(traces, mode="global", good_mask=good)
    for same in (None, np.zeros(32, int), ()):
        np.testing.assert_array_equal(
            common_reference(traces, mode="global", good_mask=good, groups=same), plain
        )
    with pytest.raises(ValueError, match=r"groups must be an integer array of shape \(32,\)"):
        common_reference(traces, mode="global", groups=np.zeros(31, int))


def test_reference_none_is_a_float32_copy() -> None:
    traces = np.arange(12, dtype=np.int16).reshape(4, 3)
    out = common_reference(traces, mode="none")
    assert out.dtype == np.float32 and np.shares_memory(out, traces) is False
    np.testing.assert_array_equal(out, traces)
    assert common_reference(np.zeros((0, 3)), mode="global").shape == (0, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"mode": "median"},
            r"mode must be one of \('none', 'global', 'local'\), got 'median'",
        ),
        ({"positions_um": None}, "positions_um is required, got None"),
        ({"radius_um": -3.0}, "radius_um must be a finite number > 0, got -3.0"),
        (
            {"inner_radius_um": 50.0},
            r"inner_radius_um must be in \[0, radius_um=40\), got 50.0",
        ),
        (
            {"good_mask": np.ones(3, bool)},
            r"good_mask must be a boolean array of shape \(4,\)",
        ),
    ],
)
def test_reference_errors(kwargs: dict, message: str) -> None:
    arguments = dict(mode="local", positions_um=two_column_probe(2), radius_um=40.0)
    with pytest.raises(ValueError, match=message):
        common_reference(np.zeros((10, 4)), **{**arguments, **kwargs})


# --------------------------------------------------------------------------
# noise covariance and whitening
# --------------------------------------------------------------------------


def test_noise_covariance_ignores_planted_spikes() -> None:
    positions = two_column_probe(4)
    noise, _ = correlated_noise(positions, 20_000, length_um=40.0, seed=15)
    clean = noise.T.astype(np.float64) @ noise / len(noise)
    spiky = noise.copy()
    spike_times = [5, 5000, 12000, 19994]  # exclusion clipped at both recording ends
    for time in spike_times:
        spiky[time - 5 : time + 6, 2:5] += 40.0 * np.hanning(11)[:, None]
    covariance, n_used = noise_covariance(spiky, threshold=6.0, exclusion_samples=20)
    assert covariance.dtype == np.float64 and covariance.shape == (8, 8)
    np.testing.assert_allclose(covariance, clean, atol=0.03)
    assert np.abs(spiky.T.astype(np.float64) @ spiky / len(spiky) - clean).max() > 0.1
    kept = np.ones(20_000, dtype=bool)
    for sample in np.flatnonzero(np.abs(spiky).max(axis=1) > 6.0):
        kept[max(0, sample - 20) : sample + 21] = False
    assert n_used == kept.sum()
    np.testing.assert_allclose(
        covariance, spiky[kept].T.astype(np.float64) @ spiky[kept] / n_used, rtol=1e-5
    )


def test_noise_covariance_pools_exactly_and_handles_empty() -> None:
    noise = np.random.default_rng(16).standard_normal((3000, 3)).astype(np.float32)
    whole, n_whole = noise_covariance(noise, threshold=10.0, exclusion_samples=5)
    first, n_first = noise_covariance(noise[:1000], threshold=10.0, exclusion_samples=5)
    second, n_second = noise_covariance(
        noise[1000:], threshold=10.0, exclusion_samples=5
    )
    np.testing.assert_allclose(
        (n_first * first + n_second * second) / n_whole, whole, rtol=1e-5
    )
    empty, n_used = noise_covariance(
        np.zeros((0, 3)), threshold=5.0, exclusion_samples=5
    )
    assert n_used == 0 and empty.shape == (3, 3) and not empty.any()
    with pytest.raises(
        ValueError, match=r"exclusion_samples must be an integer >= 0, got 2\.5"
    ):
        noise_covariance(noise, threshold=5.0, exclusion_samples=2.5)
    with pytest.raises(
        ValueError, match="threshold must be a finite number > 0, got 0"
    ):
        noise_covariance(noise, threshold=0, exclusion_samples=5)


def test_local_whitening_gives_identity_within_neighbourhoods() -> None:
    positions = two_column_probe(16)
    train, covariance = correlated_noise(positions, 20_000, length_um=40.0, seed=17)
    test, _ = correlated_noise(positions, 20_000, length_um=40.0, seed=18)
    estimate, _ = noise_covariance(train, threshold=8.0, exclusion_samples=10)
    whitening = local_whitening_matrix(estimate, positions, radius_um=80.0)
    assert whitening.dtype == np.float32
    distance = np.hypot(*(positions[:, None] - positions[None]).transpose(2, 0, 1))
    np.testing.assert_array_equal(whitening != 0, distance <= 80.0)

    whitened = test @ whitening.T
    result = whitened.T.astype(np.float64) @ whitened / len(whitened)
    in_neighbourhood = (distance <= 80.0) & ~np.eye(32, dtype=bool)
    assert np.abs(covariance[in_neighbourhood]).max() > 0.3  # there was work to do
    assert np.abs(result[in_neighbourhood]).max() < 0.05
    np.testing.assert_allclose(np.diag(result), 1.0, rtol=0.05)


def test_whitening_with_large_radius_is_global_zca() -> None:
    positions = two_column_probe(6)
    _, covariance = correlated_noise(positions, 10, length_um=40.0, seed=19)
    whitening = local_whitening_matrix(covariance, positions, radius_um=1e4, eps=0.0)
    expected = linalg.fractional_matrix_power(covariance, -0.5).real
    np.testing.assert_allclose(whitening, expected, atol=1e-5)


def test_whitening_bad_channels_and_zero_variance() -> None:
    positions = two_column_probe(4)
    _, covariance = correlated_noise(positions, 10, length_um=40.0, seed=20)
    good = np.ones(8, dtype=bool)
    good[3] = False
    whitening = local_whitening_matrix(
        covariance, positions, radius_um=39.0, good_mask=good
    )
    assert not whitening[3].any() and not whitening[:, 3].any()
    # channel 0's neighbourhood without channel 3 (37.7 um away): {0, 1, 2}
    expected = linalg.fractional_matrix_power(covariance[:3, :3], -0.5).real[0]
    np.testing.assert_allclose(whitening[0, :3], expected, rtol=1e-4)
    np.testing.assert_array_equal(
        local_whitening_matrix(np.zeros((8, 8)), positions, radius_um=50.0), 0.0
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            (np.eye(3), two_column_probe(2)),
            {},
            r"positions_um must have shape \(3, 2\)",
        ),
        (
            (np.ones((3, 4)), two_column_probe(2)),
            {},
            r"covariance must be a square matrix, got shape \(3, 4\)",
        ),
        (
            (np.eye(4), two_column_probe(2)),
            {"radius_um": 0.0},
            "radius_um must be a finite number > 0",
        ),
        (
            (np.eye(4), two_column_probe(2)),
            {"eps": -1.0},
            "eps must be a finite number >= 0, got -1.0",
        ),
    ],
)
def test_whitening_errors(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        local_whitening_matrix(*args, **{"radius_um": 50.0, **kwargs})


# --------------------------------------------------------------------------
# apply_preprocessing
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_apply_preprocessing_composes_the_steps(shuffle: bool) -> None:
    positions = two_column_probe(75)  # 150 channels: several whitening tiles
    if shuffle:  # channel numbers unrelated to position: no band structure
        positions = positions[np.random.default_rng(21).permutation(150)]
    noise, covariance = correlated_noise(positions, 2000, length_um=30.0, seed=22)
    traces = 7.0 * noise
    scales = np.full(150, 7.0, dtype=np.float32)
    scales[4] = 0.0
    good = np.ones(150, dtype=bool)
    good[[4, 77]] = False
    whitening = local_whitening_matrix(
        covariance, positions, radius_um=60.0, good_mask=good
    )
    kwargs = dict(
        positions_um=positions, good_mask=good, radius_um=80.0, inner_radius_um=10.0
    )
    out = apply_preprocessing(
        traces, scales=scales, whitening=whitening, reference_mode="local", **kwargs
    )
    referenced = common_reference(traces, mode="local", **kwargs)
    referenced /= np.where(scales > 0, scales, 1.0)
    expected = referenced.astype(np.float64) @ whitening.T
    expected[:, ~good] = 0.0
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert not out[:, [4, 77]].any()


def test_apply_preprocessing_zeroes_bad_channels_without_whitening() -> None:
    traces = np.arange(1.0, 13.0).reshape(4, 3)
    good = np.array([True, False, True])
    out = apply_preprocessing(
        traces, scales=np.array([1.0, 1.0, 2.0]), reference_mode="none", good_mask=good
    )
    np.testing.assert_array_equal(out, traces * [1.0, 0.0, 0.5])


def test_apply_preprocessing_int16() -> None:
    traces = np.array([[0.5, -1.0, 400.0], [0.0126, 2.0, -400.0]], dtype=np.float32)
    out = apply_preprocessing(
        traces,
        scales=np.ones(3),
        reference_mode="none",
        output_dtype="int16",
        int16_scale=100.0,
    )
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, [[50, -100, 32767], [1, 200, -32767]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scales": np.ones(3)}, r"scales must have shape \(4,\), got \(3,\)"),
        (
            {"output_dtype": "int8"},
            "output_dtype must be 'float32' or 'int16', got 'int8'",
        ),
        (
            {"output_dtype": "int16"},
            "int16_scale must be a finite number > 0, got None",
        ),
        ({"whitening": np.eye(3)}, r"whitening must have shape \(4, 4\), got \(3, 3\)"),
        ({"reference_mode": "car"}, "mode must be one of"),
    ],
)
def test_apply_preprocessing_errors(kwargs: dict, message: str) -> None:
    arguments = dict(scales=np.ones(4), reference_mode="global")
    with pytest.raises(ValueError, match=message):
        apply_preprocessing(np.zeros((10, 4)), **{**arguments, **kwargs})


def test_filter_helpers_equal_scipy():
    """sosfilt_zi and the compiled cascade used by the filter jobs (which do
    not import scipy.signal) equal scipy's, forward, backward and in place."""
    from scipy import signal

    from shardsort.compiled import sos_cascade
    from shardsort.preprocess import _sosfilt_zi, design_bandpass

    rng = np.random.default_rng(0)
    for order in (1, 2, 3, 5):
        sos = design_bandpass(
            sampling_rate_hz=30000.0, freq_min_hz=300.0, freq_max_hz=6000.0, order=order
        )
        np.testing.assert_allclose(_sosfilt_zi(sos), signal.sosfilt_zi(sos), rtol=1e-10)
        # 300 rows: more than one block of rows, a partial last block.
        x = rng.normal(size=(300, 7)).astype(np.float32)
        zi = rng.normal(size=(sos.shape[0], 2, 7))
        for reverse in (False, True):
            source = x[::-1] if reverse else x
            y, z = signal.sosfilt(sos, source.astype(np.float64), axis=0, zi=zi)
            out, state = x.copy(), zi.copy()
            sos_cascade(out, sos, state, reverse, out)
            np.testing.assert_allclose(
                out[::-1] if reverse else out, y, rtol=1e-5, atol=1e-5
            )
            np.testing.assert_allclose(state, z, rtol=1e-9, atol=1e-9)


def test_zero_nonfinite_zeroes_the_window_and_counts_the_core() -> None:
    window = np.ones((100, 3), np.float32)
    window[5, 1] = np.nan  # in the left margin: zeroed, not counted here
    window[20, 1] = np.inf
    window[30:33, 1] = np.nan
    window[95, 2] = -np.inf  # right margin
    out, found = zero_nonfinite(window, core_start=10, core_stop=90)
    assert np.isfinite(out).all() and out.dtype == np.float32
    assert out[5, 1] == out[20, 1] == out[31, 1] == out[95, 2] == 0 and out[0, 0] == 1
    np.testing.assert_array_equal(found.counts, [0, 4, 0])
    np.testing.assert_array_equal(found.first, [-1, 10, -1])
    clean = np.ones((10, 2), np.float32)
    same, found = zero_nonfinite(clean, core_start=0, core_stop=10)
    assert same is clean and not found.counts.any() and (found.first == -1).all()
    ints = np.ones((10, 2), np.int16)
    assert zero_nonfinite(ints, core_start=0, core_stop=10)[0] is ints
    with pytest.raises(ValueError, match="core_start, core_stop"):
        zero_nonfinite(clean, core_start=5, core_stop=11)


def test_check_compression_accepts_the_codecs_and_names_a_bad_value() -> None:
    from shardsort.workflow import ConfigError, check_compression

    for value in ("none", "lz4", "zstd"):
        check_compression(value)
    with pytest.raises(ConfigError, match=r"preprocess.compression must be one of "
                                          r"\['none', 'lz4', 'zstd'\], got 'gzip'"):
        check_compression("gzip")


def test_int16_chunks_at_32_steps_per_sd_compress_and_cost_no_precision(tmp_path) -> None:
    """The default storage of preprocessed chunks: int16 in steps of 1/32 noise SD
    adds 1/(12 * 32**2) of the noise variance and compresses to ~0.57 of int16;
    the compressed file reads back exactly."""
    from shardsort.io.arrays import read_array, write_array

    rng = np.random.default_rng(2)
    traces = rng.standard_normal((60000, 16)).astype(np.float32) * np.float32(7.0)
    out = apply_preprocessing(traces, scales=np.full(16, 7.0), reference_mode="none",
                              output_dtype="int16", int16_scale=32.0)
    error = out / np.float32(32.0) - traces / np.float32(7.0)
    assert abs(float(np.var(error)) - 1 / (12 * 32**2)) < 1e-5
    write_array(tmp_path / "c.bin", out, compression="lz4", scale=1 / 32)
    write_array(tmp_path / "p.bin", out, scale=1 / 32)
    np.testing.assert_array_equal(read_array(tmp_path / "c.bin"), out)
    ratio = (tmp_path / "c.bin").stat().st_size / (tmp_path / "p.bin").stat().st_size
    assert 0.45 < ratio < 0.65, ratio


@pytest.mark.parametrize("groups", [None, [0] * 20 + [1] * 20])
def test_global_reference_in_blocks_and_in_place_equals_the_whole_median(monkeypatch, groups):
    import shardsort.preprocess as pre

    rng = np.random.default_rng(5)
    traces = rng.normal(size=(1000, 40)).astype(np.float32)
    good = np.ones(40, dtype=bool)
    good[[3, 25]] = False
    expected = traces.copy()
    group_of = np.zeros(40, dtype=int) if groups is None else np.asarray(groups)
    for g in np.unique(group_of):
        members = group_of == g
        expected[:, members] -= np.median(traces[:, members & good], axis=1)[:, None]
    monkeypatch.setattr(pre, "_REFERENCE_BLOCK_SAMPLES", 300)  # blocks of unequal length
    kept = traces.copy()
    copied = pre.common_reference(traces, mode="global", good_mask=good, groups=groups)
    np.testing.assert_array_equal(traces, kept)  # not modified without overwrite
    np.testing.assert_allclose(copied, expected, atol=1e-6)
    in_place = pre.common_reference(traces, mode="global", good_mask=good, groups=groups,
                                    overwrite=True)
    assert in_place is traces
    np.testing.assert_array_equal(in_place, copied)
