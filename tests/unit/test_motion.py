"""Drift estimation and correction kernels."""

from __future__ import annotations

import numpy as np
import pytest

from shardsort.detect import nearest_neighbours, neighbour_mask
from shardsort.io.geometry import SHANK_SEPARATION_UM, separate_shanks
from shardsort.motion import (
    WEIGHT_SCALE,
    channel_displacement,
    correct_motion,
    depth_bin_edges,
    depth_windows,
    estimate_motion,
    estimate_motion_per_shank,
    interpolation_matrix,
    localized_peaks,
    pairwise_shifts,
    peak_histogram,
    solve_displacement,
    time_bins_of_chunk,
)
from shardsort.preprocess import (
    apply_preprocessing,
    bandpass_filter,
    design_bandpass,
    robust_noise_scale,
)
from shardsort.synth import (
    SynthParams,
    drift_displacement_um,
    generate_spike_trains,
    generate_units,
    neuropixels_like_geometry,
    render_samples,
    spike_templates,
)

RATE = 30000.0
BIN_SAMPLES = 60000  # 2 s time bins


def _planted_peaks(drift, *, n_bins=30, n_units=40, top_um=620.0, seed=0):
    """Peaks of units at random depths that move by ``drift(time_s, depth_um)``."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.0, top_um, n_units)
    amplitude = rng.uniform(6.0, 30.0, n_units)
    samples, units = [], []
    for unit in range(n_units):
        count = rng.poisson(5.0 * n_bins * BIN_SAMPLES / RATE)
        samples.append(np.sort(rng.integers(0, n_bins * BIN_SAMPLES, count)))
        units.append(np.full(count, unit))
    samples, units = np.concatenate(samples), np.concatenate(units)
    y = depth[units] + drift(samples / RATE, depth[units]) + rng.normal(0.0, 3.0, len(units))
    amp = -amplitude[units] * rng.uniform(0.8, 1.2, len(units))
    return samples, y, amp


def _histogram(samples, y, amp, positions, n_bins, bin_um=5.0):
    edges = depth_bin_edges(positions, bin_um=bin_um)
    counts = peak_histogram(
        samples, y, amp, bin_samples=BIN_SAMPLES, first_bin=0, n_bins=n_bins,
        depth_edges_um=edges,
    )
    return counts / WEIGHT_SCALE, 0.5 * (edges[1:] + edges[:-1])


def _centred(values):
    return values - values.mean(axis=0)


# ---------------------------------------------------------------------------
# Histograms
# ---------------------------------------------------------------------------


def test_histogram_weights_are_quantised_log_amplitudes():
    positions = neuropixels_like_geometry(8)  # y 0 .. 60
    edges = depth_bin_edges(positions, bin_um=10.0)
    np.testing.assert_allclose(edges, np.arange(-10.0, 71.0, 10.0))
    counts = peak_histogram(
        [5, 7, 60_001, 200_000], [12.0, 13.0, -40.0, 30.0], [-9.0, -5.0, -4.0, -6.0],
        bin_samples=BIN_SAMPLES, first_bin=0, n_bins=2, depth_edges_um=edges,
    )
    assert counts.dtype == np.int64 and counts.shape == (2, 8)
    weight = np.rint(WEIGHT_SCALE * np.log1p([9.0, 5.0, 4.0])).astype(int)
    assert counts[0, 2] == weight[0] + weight[1]  # 12 and 13 um share bin [10, 20)
    assert counts[1, 0] == weight[2]  # below the probe: clipped into the first bin
    assert counts.sum() == weight.sum()  # sample 200 000 lies in bin 3: ignored
    empty = peak_histogram([], [], [], bin_samples=10, first_bin=4, n_bins=3,
                           depth_edges_um=edges)
    assert empty.shape == (3, 8) and not empty.any()


def test_chunk_histograms_add_up_to_the_whole_recording_exactly():
    samples, y, amp = _planted_peaks(lambda t, d: 0.0 * t, n_bins=10)
    positions = neuropixels_like_geometry(64)
    edges = depth_bin_edges(positions, bin_um=5.0)
    n_samples = 10 * BIN_SAMPLES
    whole = peak_histogram(samples, y, amp, bin_samples=BIN_SAMPLES, first_bin=0,
                           n_bins=10, depth_edges_um=edges)
    for chunk in (77_777, 150_000, n_samples):
        total = np.zeros_like(whole)
        for start in range(0, n_samples, chunk):
            stop = min(start + chunk, n_samples)
            first, n = time_bins_of_chunk(start, stop, bin_samples=BIN_SAMPLES)
            inside = (samples >= start) & (samples < stop)
            total[first : first + n] += peak_histogram(
                samples[inside], y[inside], amp[inside], bin_samples=BIN_SAMPLES,
                first_bin=first, n_bins=n, depth_edges_um=edges,
            )
        np.testing.assert_array_equal(total, whole)
    assert time_bins_of_chunk(120_000, 120_000, bin_samples=BIN_SAMPLES) == (2, 0)
    assert time_bins_of_chunk(59_999, 60_001, bin_samples=BIN_SAMPLES) == (0, 2)


def test_histogram_arguments_are_checked():
    edges = np.array([0.0, 10.0])
    with pytest.raises(ValueError, match="bin_samples must be >= 1, got 0"):
        peak_histogram([1], [1.0], [1.0], bin_samples=0, first_bin=0, n_bins=1,
                       depth_edges_um=edges)
    with pytest.raises(ValueError, match="depth_edges_um must be an increasing"):
        peak_histogram([1], [1.0], [1.0], bin_samples=1, first_bin=0, n_bins=1,
                       depth_edges_um=[3.0, 1.0])
    with pytest.raises(ValueError, match="equal length"):
        peak_histogram([1, 2], [1.0], [1.0], bin_samples=1, first_bin=0, n_bins=1,
                       depth_edges_um=edges)
    with pytest.raises(ValueError, match="bin_um must be a finite number > 0"):
        depth_bin_edges(neuropixels_like_geometry(4), bin_um=0.0)


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------


def test_pairwise_shift_of_a_moved_histogram():
    rng = np.random.default_rng(1)
    base = np.zeros(120)
    base[rng.integers(20, 100, 12)] = rng.uniform(1.0, 5.0, 12)
    hist = np.stack([np.roll(base, shift) for shift in (0, 3, -4, 7)])
    lag, corr = pairwise_shifts(hist, max_lag_bins=15)
    assert lag.shape == corr.shape == (4, 4)  # banded: lag[d, i] for pair (i, i + d)
    shifts = np.array([0, 3, -4, 7])
    expected = _to_band(shifts[None, :] - shifts[:, None], 3)
    inside = np.arange(4)[:, None] + np.arange(4)[None, :] < 4
    np.testing.assert_allclose(lag, np.where(inside, expected, 0.0), atol=1e-3)
    assert corr[inside].min() > 0.99 and not corr[~inside].any()
    # A horizon keeps the pairs at most that many bins apart.
    near, _ = pairwise_shifts(hist, max_lag_bins=15, horizon_bins=1)
    np.testing.assert_array_equal(near, lag[:2])
    # A flat histogram correlates with nothing.
    lag, corr = pairwise_shifts(np.vstack([hist[:1], np.ones((1, 120))]), max_lag_bins=5)
    assert corr[1, 0] == corr[0, 1] == 0.0


def test_least_squares_recovers_displacements_and_ignores_outlying_pairs():
    rng = np.random.default_rng(2)
    truth = _centred(np.cumsum(rng.normal(0.0, 1.0, 40)))
    lag = truth[None, :] - truth[:, None] + rng.normal(0.0, 0.05, (40, 40))
    lag = 0.5 * (lag - lag.T)
    weight = np.ones((40, 40))
    np.testing.assert_allclose(
        solve_displacement(_to_band(lag, 39), _to_band(weight, 39), robust_iterations=0),
        truth, atol=0.05,
    )
    bad = np.triu(rng.uniform(size=(40, 40)) < 0.15, 1)
    bad |= bad.T
    corrupted = _to_band(np.where(bad, lag + np.sign(lag + 0.1) * 12.0, lag), 39)
    plain = solve_displacement(corrupted, _to_band(weight, 39), robust_iterations=0)
    robust = solve_displacement(corrupted, _to_band(weight, 39), robust_iterations=10)
    assert np.abs(plain - truth).max() > 1.0
    np.testing.assert_allclose(robust, truth, atol=0.2)
    # A time bin without any pair takes the mean of its neighbours.
    holes = weight.copy()
    holes[10, :] = holes[:, 10] = 0.0
    fitted = solve_displacement(_to_band(lag, 39), _to_band(holes, 39), robust_iterations=0)
    assert abs(fitted[10] - 0.5 * (fitted[9] + fitted[11])) < 1e-3


@pytest.mark.parametrize("shape", ["linear", "step"])
def test_rigid_drift_is_recovered_from_planted_peaks(shape):
    n_bins = 30
    duration = n_bins * BIN_SAMPLES / RATE
    if shape == "linear":
        def drift(t, d):
            return 40.0 * t / duration + 0.0 * d
    else:
        def drift(t, d):
            return np.where(t >= duration / 2, -25.0, 0.0) + 0.0 * d
    samples, y, amp = _planted_peaks(drift, n_bins=n_bins)
    positions = neuropixels_like_geometry(64)
    hist, depth = _histogram(samples, y, amp, positions, n_bins)
    estimate, centres = estimate_motion(
        hist, depth_um=depth, channel_depths_um=positions[:, 1], bin_um=5.0,
        max_displacement_um=100.0,
    )
    assert estimate.shape == (n_bins, 1) and centres.shape == (1,)
    time_s = (np.arange(n_bins) + 0.5) * BIN_SAMPLES / RATE
    truth = _centred(drift(time_s, 0.0))
    assert np.abs(estimate[:, 0] - truth).max() < 2.0
    # Deterministic.
    again, _ = estimate_motion(
        hist, depth_um=depth, channel_depths_um=positions[:, 1], bin_um=5.0,
        max_displacement_um=100.0,
    )
    np.testing.assert_array_equal(again, estimate)


def test_non_rigid_drift_differs_between_top_and_bottom():
    n_bins = 30
    duration = n_bins * BIN_SAMPLES / RATE

    def drift(t, d):  # -20 um at the bottom, +20 um at the top (620 um)
        return (t / duration) * (-20.0 + 40.0 * np.clip(d / 620.0, 0.0, 1.0))

    samples, y, amp = _planted_peaks(drift, n_bins=n_bins, n_units=60)
    positions = neuropixels_like_geometry(64)
    hist, depth = _histogram(samples, y, amp, positions, n_bins)
    kwargs = dict(depth_um=depth, channel_depths_um=positions[:, 1], bin_um=5.0,
                  max_displacement_um=100.0, window_step_um=150.0, window_sigma_um=75.0)
    estimate, centres = estimate_motion(hist, rigid=False, **kwargs)
    assert len(centres) == 4
    time_s = (np.arange(n_bins) + 0.5) * BIN_SAMPLES / RATE
    truth = _centred(drift(time_s[:, None], centres[None, :]))
    assert np.abs(estimate - truth).max() < 4.0, np.abs(estimate - truth).max(axis=0)
    # Bottom and top move in opposite directions; a rigid fit cannot follow both.
    assert estimate[-1, 0] - estimate[0, 0] < -8.0 < 8.0 < estimate[-1, -1] - estimate[0, -1]
    rigid, _ = estimate_motion(hist, rigid=True, **kwargs)
    assert np.abs(rigid - truth).max() > 6.0


def test_depth_windows_tile_the_probe():
    depth = np.arange(-5.0, 630.0, 5.0)
    centres, weights = depth_windows(depth, channel_depths_um=[0.0, 620.0], rigid=False,
                                     window_step_um=200.0, window_sigma_um=100.0)
    np.testing.assert_allclose(centres, [620.0 / 6, 310.0, 620.0 * 5 / 6])
    assert weights.shape == (3, len(depth)) and weights.max() <= 1.0
    centres, weights = depth_windows(depth, channel_depths_um=[0.0, 620.0], rigid=True,
                                     window_step_um=200.0, window_sigma_um=100.0)
    np.testing.assert_array_equal(centres, [310.0])
    assert np.all(weights == 1.0)
    with pytest.raises(ValueError, match="window_sigma_um must be a finite number > 0"):
        depth_windows(depth, channel_depths_um=[0.0], rigid=False, window_step_um=1.0,
                      window_sigma_um=-1.0)


def _preprocessed(params):
    """Render, band-pass and scale a synthetic recording as the workflow does."""
    units = generate_units(params)
    samples, labels = generate_spike_trains(params)
    templates, index = spike_templates(params, units["templates_uv"], samples, labels)
    raw = render_samples(templates, samples, index, params=params, start_sample=0,
                         stop_sample=params.n_samples).astype(np.float32)
    sos = design_bandpass(sampling_rate_hz=params.sampling_rate_hz, freq_min_hz=300.0,
                          freq_max_hz=6000.0, order=3)
    filtered = bandpass_filter(raw, sos=sos, core_start=0, core_stop=len(raw),
                               at_recording_start=True, at_recording_end=True)
    return apply_preprocessing(filtered, scales=robust_noise_scale(filtered),
                               reference_mode="global")


def test_drift_of_a_synthetic_recording_is_recovered_within_a_few_um():
    """The chain of the workflow: peaks, depth, histogram, registration."""
    params = SynthParams(n_channels=32, duration_s=40.0, n_units=30, seed=7, drift_um=30.0)
    positions = neuropixels_like_geometry(params.n_channels)
    margin = 100
    window = np.pad(_preprocessed(params), ((margin, margin), (0, 0)))
    peaks = localized_peaks(
        window, core_start=margin, core_stop=len(window) - margin, threshold=5.0,
        neighbour_mask=neighbour_mask(positions, radius_um=60.0), exclude_samples=9,
        good_mask=None, neighbours=nearest_neighbours(positions, n_neighbours=10),
        positions_um=positions, pre_samples=30, post_samples=45,
    )
    n_bins = 20
    hist, depth = _histogram(peaks["sample_index"], peaks["y_um"], peaks["amplitude"],
                             positions, n_bins)
    estimate, centres = estimate_motion(
        hist, depth_um=depth, channel_depths_um=positions[:, 1], bin_um=5.0,
        max_displacement_um=100.0, edge_um=30.0,
    )
    time_s = (np.arange(n_bins) + 0.5) * BIN_SAMPLES / RATE
    truth = _centred(drift_displacement_um(params, time_s, centres[0]))
    error = estimate[:, 0] - truth
    assert np.sqrt(np.mean(error**2)) < 1.5 and np.abs(error).max() < 3.0, error.round(1)


def test_estimate_arguments_are_checked():
    hist = np.ones((3, 10))
    kwargs = dict(depth_um=np.arange(10.0), channel_depths_um=[0.0, 9.0], bin_um=1.0)
    with pytest.raises(ValueError, match="max_displacement_um must be a finite number > 0"):
        estimate_motion(hist, max_displacement_um=0.0, **kwargs)
    with pytest.raises(ValueError, match=r"edge_um \(5.0\) leaves no depth"):
        estimate_motion(hist, max_displacement_um=3.0, edge_um=5.0, **kwargs)
    with pytest.raises(ValueError, match=r"histograms must have shape \(n_time_bins, 10\)"):
        estimate_motion(np.ones((3, 4)), max_displacement_um=3.0, **kwargs)
    with pytest.raises(ValueError, match="robust_iterations must be >= 0"):
        solve_displacement(np.zeros((2, 2)), np.ones((2, 2)), robust_iterations=-1)
    zero, _ = estimate_motion(np.zeros((4, 10)), max_displacement_um=3.0, **kwargs)
    np.testing.assert_array_equal(zero, 0.0)  # no peaks: no displacement


# ---------------------------------------------------------------------------
# Correction
# ---------------------------------------------------------------------------


def test_interpolation_without_displacement_is_nearly_the_identity():
    positions = neuropixels_like_geometry(32)
    matrix = interpolation_matrix(positions, np.zeros(32), sigma_um=20.0).toarray()
    np.testing.assert_allclose(matrix, np.eye(32), atol=0.05)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=0.05)


def test_borders_and_bad_channels():
    positions = neuropixels_like_geometry(16)  # y 0 .. 140
    shift = np.full(16, 25.0)  # the top row reads 165 um: beyond 140 + 10
    zero = interpolation_matrix(positions, shift, sigma_um=20.0, border="zero").toarray()
    assert not zero[-2:].any() and np.all(zero[:-2].sum(axis=1) > 0.5)
    near = interpolation_matrix(positions, shift, sigma_um=20.0, border="nearest").toarray()
    assert np.all(near.sum(axis=1) > 0.5)
    good = np.ones(16, dtype=bool)
    good[5] = False
    masked = interpolation_matrix(positions, shift, sigma_um=20.0, good_mask=good).toarray()
    assert not masked[5].any() and not masked[:, 5].any()
    with pytest.raises(ValueError, match="border must be one of"):
        interpolation_matrix(positions, shift, sigma_um=20.0, border="wrap")
    with pytest.raises(ValueError, match="sigma_um must be a finite number > 0"):
        interpolation_matrix(positions, shift, sigma_um=0.0)
    with pytest.raises(ValueError, match=r"displacement_um must be finite with shape \(16,\)"):
        interpolation_matrix(positions, shift[:3], sigma_um=20.0)


@pytest.mark.parametrize("shift_um", [10.0, 20.0, 30.0])
def test_correction_moves_a_shifted_waveform_back(shift_um):
    params = SynthParams(n_channels=64, duration_s=1.0, n_units=12, seed=11,
                         drift_um=shift_um, drift_shape="step")
    units = generate_units(params)
    inner = np.flatnonzero((units["unit_positions_um"][:, 1] > 150.0)
                           & (units["unit_positions_um"][:, 1] < 450.0))
    assert len(inner) >= 3
    half = params.n_samples // 2
    positions = neuropixels_like_geometry(params.n_channels)
    for unit in inner:
        samples = np.array([1000, half + 1000])
        templates, index = spike_templates(params, units["templates_uv"], samples,
                                           np.array([unit, unit]))
        reference, moved = templates[index[0]], templates[index[1]]
        corrected = correct_motion(
            moved, start_sample=0, displacement_um=np.full((1, 64), shift_um),
            bin_samples=len(moved), positions_um=positions, sigma_um=20.0,
        )
        before = np.linalg.norm(moved - reference)
        after = np.linalg.norm(corrected - reference)
        assert after < 0.5 * before, (unit, after / before)


def test_chunked_correction_equals_the_whole_array():
    rng = np.random.default_rng(3)
    positions = neuropixels_like_geometry(24)
    n_samples, bin_samples = 50_000, 7_000
    traces = rng.standard_normal((n_samples, 24)).astype(np.float32)
    n_bins = -(-n_samples // bin_samples)
    displacement = np.cumsum(rng.normal(0.0, 4.0, (n_bins, 3)), axis=0)
    per_channel = channel_displacement(displacement, [40.0, 110.0, 180.0], positions[:, 1])
    good = np.ones(24, dtype=bool)
    good[7] = False
    kwargs = dict(displacement_um=per_channel, bin_samples=bin_samples, positions_um=positions,
                  sigma_um=20.0, good_mask=good)
    whole = correct_motion(traces, start_sample=0, **kwargs)
    assert whole.dtype == np.float32 and not whole[:, 7].any()
    for chunk in (1, 4_999, 7_000, 12_345):
        starts = range(0, n_samples, chunk) if chunk > 1 else [0, 1, 2, 6_999, 7_000]
        for start in starts:
            stop = min(start + max(chunk, 3), n_samples)
            part = correct_motion(traces[start:stop], start_sample=start, **kwargs)
            np.testing.assert_array_equal(part, whole[start:stop])
    # Continuous in time: no jump at bin borders beyond the signal's own.
    smooth = correct_motion(np.ones((n_samples, 24), np.float32), start_sample=0, **kwargs)
    assert np.abs(np.diff(smooth, axis=0)).max() < 1e-2


def test_channel_displacement_interpolates_between_windows():
    disp = np.array([[0.0, 10.0], [4.0, -4.0]])
    out = channel_displacement(disp, [100.0, 200.0], [0.0, 150.0, 300.0])
    np.testing.assert_allclose(out, [[0.0, 5.0, 10.0], [4.0, 0.0, -4.0]])
    rigid = channel_displacement(disp[:, :1], [150.0], [0.0, 10.0])
    np.testing.assert_allclose(rigid, [[0.0, 0.0], [4.0, 4.0]])
    with pytest.raises(ValueError, match="window_centres_um must increase"):
        channel_displacement(disp, [200.0, 100.0], [0.0])


def test_empty_and_malformed_traces():
    positions = neuropixels_like_geometry(4)
    kwargs = dict(start_sample=0, displacement_um=np.zeros((2, 4)), bin_samples=10,
                  positions_um=positions, sigma_um=20.0)
    assert correct_motion(np.zeros((0, 4), np.float32), **kwargs).shape == (0, 4)
    with pytest.raises(ValueError, match=r"must have shape \(n_time_bins >= 1, 3\)"):
        correct_motion(np.zeros((5, 3), np.float32), **kwargs)
    with pytest.raises(ValueError, match="start_sample must be >= 0"):
        correct_motion(np.zeros((5, 4), np.float32), **{**kwargs, "start_sample": -1})


# ---------------------------------------------------------------------------
# Multi-shank probes: one drift per shank
# ---------------------------------------------------------------------------


def _two_shanks(n_per_shank=64):
    """Two neuropixels-like shanks side by side, as the sort places them."""
    one = neuropixels_like_geometry(n_per_shank)
    shank_ids = np.repeat([0, 1], n_per_shank)
    positions = separate_shanks(np.concatenate([one, one + [250.0, 0.0]]), shank_ids)
    return positions, shank_ids


def test_two_shanks_drifting_differently_are_each_recovered():
    n_bins = 30
    duration = n_bins * BIN_SAMPLES / RATE
    drifts = [
        lambda t, d: 30.0 * t / duration + 0.0 * d,  # shank 0 moves up 30 um
        lambda t, d: np.where(t >= duration / 2, -20.0, 0.0) + 0.0 * d,  # shank 1 steps down
    ]
    positions, shank_ids = _two_shanks()
    hists = []
    for seed, drift in enumerate(drifts):
        samples, y, amp = _planted_peaks(drift, n_bins=n_bins, seed=seed)
        hist, depth = _histogram(samples, y, amp, positions, n_bins)
        hists.append(hist)
    kwargs = dict(depth_um=depth, bin_um=5.0, max_displacement_um=100.0)
    estimate, centres, window_shank = estimate_motion_per_shank(
        np.stack(hists), shanks=[0, 1], channel_shank_ids=shank_ids,
        channel_depths_um=positions[:, 1], **kwargs,
    )
    assert estimate.shape == (n_bins, 2)
    np.testing.assert_array_equal(window_shank, [0, 1])
    time_s = (np.arange(n_bins) + 0.5) * BIN_SAMPLES / RATE
    for k, drift in enumerate(drifts):
        truth = _centred(drift(time_s, 0.0))
        rms = np.sqrt(np.mean((estimate[:, k] - truth) ** 2))
        assert rms < 2.0, (k, rms)
        # Each shank alone gives the same as estimate_motion on its histogram.
        alone, _ = estimate_motion(hists[k], channel_depths_um=positions[:, 1], **kwargs)
        np.testing.assert_array_equal(alone[:, 0], estimate[:, k])
    # One estimate for the whole probe cannot follow both shanks.
    whole, _ = estimate_motion(sum(hists), channel_depths_um=positions[:, 1], **kwargs)
    errors = [np.sqrt(np.mean((whole[:, 0] - _centred(drift(time_s, 0.0))) ** 2))
              for drift in drifts]
    assert max(errors) > 5.0, errors

    # Non-rigid: each shank's own windows, increasing depths within a shank.
    nonrigid, centres, window_shank = estimate_motion_per_shank(
        np.stack(hists), shanks=[0, 1], channel_shank_ids=shank_ids,
        channel_depths_um=positions[:, 1], rigid=False, window_step_um=200.0,
        window_sigma_um=100.0, **kwargs,
    )
    np.testing.assert_array_equal(window_shank, [0, 0, 0, 1, 1, 1])
    assert nonrigid.shape == (n_bins, 6)
    for k, drift in enumerate(drifts):
        truth = _centred(drift(time_s, 0.0))
        assert np.abs(nonrigid[:, window_shank == k] - truth[:, None]).max() < 4.0
    with pytest.raises(ValueError, match="shank 5 has no channel"):
        estimate_motion_per_shank(np.stack(hists), shanks=[0, 5], channel_shank_ids=shank_ids,
                                  channel_depths_um=positions[:, 1], **kwargs)


def test_channel_displacement_per_shank():
    disp = np.array([[1.0, 0.0, 10.0], [2.0, 4.0, -4.0]])
    out = channel_displacement(
        disp, [50.0, 100.0, 200.0], [0.0, 150.0, 0.0, 150.0, 300.0],
        window_shank=[3, 7, 7], channel_shank_ids=[3, 3, 7, 7, 7],
    )
    np.testing.assert_allclose(out, [[1.0, 1.0, 0.0, 5.0, 10.0], [2.0, 2.0, 4.0, 0.0, -4.0]])
    with pytest.raises(ValueError, match="no displacement window for shank 9"):
        channel_displacement(disp, [50.0, 100.0, 200.0], [0.0], window_shank=[3, 7, 7],
                             channel_shank_ids=[9])


def test_kriging_never_mixes_shanks():
    positions, shank_ids = _two_shanks(32)
    assert positions[32:, 0].min() - positions[:32, 0].max() > SHANK_SEPARATION_UM
    shift = np.r_[np.full(32, 13.0), np.full(32, -7.0)]
    plain = interpolation_matrix(positions, shift, sigma_um=20.0).toarray()
    # The shanks are far beyond the kernel's support: exactly zero across them.
    assert not plain[:32, 32:].any() and not plain[32:, :32].any()
    by_shank = interpolation_matrix(positions, shift, sigma_um=20.0, shank_ids=shank_ids)
    np.testing.assert_array_equal(by_shank.toarray(), plain)
    # Each shank is corrected by its own displacement, as if it were alone.
    rng = np.random.default_rng(4)
    traces = rng.standard_normal((500, 64)).astype(np.float32)
    both = correct_motion(traces, start_sample=0, displacement_um=shift[None, :],
                          bin_samples=500, positions_um=positions, sigma_um=20.0,
                          shank_ids=shank_ids)
    for k in (0, 1):
        on = shank_ids == k
        alone = correct_motion(traces[:, on], start_sample=0, displacement_um=shift[None, on],
                               bin_samples=500, positions_um=positions[on], sigma_um=20.0)
        np.testing.assert_array_equal(both[:, on], alone)
    # Shanks of different lengths: each shank's own end is its border.
    short = np.concatenate([positions[:32], positions[32:48]])
    ids = np.r_[np.zeros(32, int), np.ones(16, int)]
    up = np.full(48, 30.0)
    zero = interpolation_matrix(short, up, sigma_um=20.0, border="zero", shank_ids=ids)
    rows_out = np.flatnonzero(~zero.toarray().any(axis=1))
    # The top row of each shank reads 30 um above it, beyond its half pitch (10 um).
    np.testing.assert_array_equal(rows_out, [30, 31, 46, 47])
    # The probe's extent alone would let the short shank read 30 um past its end.
    plain = interpolation_matrix(short, up, sigma_um=20.0, border="zero").toarray()
    np.testing.assert_array_equal(np.flatnonzero(~plain.any(axis=1)), [30, 31])


# ---------------------------------------------------------------------------
# Banded registration against the dense (all pairs, n x n) algorithm
# ---------------------------------------------------------------------------


def _dense_pairwise_shifts(hist, *, max_lag_bins, window=None):
    """The dense reference: every pair of time bins, n x n lag and correlation."""
    hist = np.asarray(hist, dtype=np.float64)
    n_time, n_depth = hist.shape
    weights = np.ones(n_depth) if window is None else np.asarray(window, dtype=np.float64)
    max_lag = min(max_lag_bins, max(n_depth - 1, 0))
    total = weights.sum()
    mean = (hist @ weights) / total if total > 0 else np.zeros(n_time)
    centred = (hist - mean[:, None]) * weights[None, :]
    norm = np.linalg.norm(centred, axis=1)
    valid = norm > 1e-12 * max(1.0, float(norm.max(initial=0.0)))
    centred[valid] /= norm[valid, None]
    centred[~valid] = 0.0
    lags = np.arange(-max_lag, max_lag + 1)
    curves = np.empty((len(lags), n_time, n_time))
    for k, lag in enumerate(lags):
        if lag >= 0:
            curves[k] = centred[:, : n_depth - lag] @ centred[:, lag:].T
        else:
            curves[k] = centred[:, -lag:] @ centred[:, : n_depth + lag].T
    best = np.argmax(curves, axis=0)
    peak = np.take_along_axis(curves, best[None], axis=0)[0]
    left = np.take_along_axis(curves, np.maximum(best - 1, 0)[None], axis=0)[0]
    right = np.take_along_axis(curves, np.minimum(best + 1, len(lags) - 1)[None], axis=0)[0]
    curvature = left - 2.0 * peak + right
    offset = np.zeros_like(peak)
    ok = (best > 0) & (best < len(lags) - 1) & (curvature < 0)
    offset[ok] = np.clip(0.5 * (left[ok] - right[ok]) / curvature[ok], -0.5, 0.5)
    lag_out = lags[best] + offset
    lag_out = 0.5 * (lag_out - lag_out.T)
    corr_out = 0.5 * (peak + peak.T)
    corr_out[~valid, :] = 0.0
    corr_out[:, ~valid] = 0.0
    lag_out[corr_out == 0.0] = 0.0
    return lag_out, corr_out


def _dense_weighted_median(values, weights):
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def _dense_least_squares(lag, w):
    n = len(lag)
    degree = w.sum(axis=1)
    laplacian = np.diag(degree) - w
    rhs = -(w * lag).sum(axis=1)
    scale = max(float(degree.mean()), 1.0)
    if n > 1:
        chain = np.zeros((n, n))
        i = np.arange(n - 1)
        chain[i, i] += 1.0
        chain[i + 1, i + 1] += 1.0
        chain[i, i + 1] -= 1.0
        chain[i + 1, i] -= 1.0
        laplacian += 1e-6 * scale * chain
    p = np.linalg.solve(laplacian + scale / n, rhs)
    return p - p.mean()


def _dense_solve_displacement(lag, weight, *, robust_iterations=10, robust_scale=2.385):
    base = np.array(weight, dtype=np.float64)
    np.fill_diagonal(base, 0.0)
    used = base > 0
    p = _dense_least_squares(lag, base)
    for _ in range(robust_iterations if np.any(used) else 0):
        residual = np.abs(lag - (p[None, :] - p[:, None]))
        sigma = max(1.4826 * _dense_weighted_median(residual[used], base[used]), 0.5)
        p = _dense_least_squares(lag, base / (1.0 + (residual / (robust_scale * sigma)) ** 2))
    return p


def _dense_estimate_motion(hist, *, depth_um, channel_depths_um, bin_um, max_displacement_um,
                           rigid=True, window_step_um=100.0, window_sigma_um=100.0,
                           min_correlation=0.1, time_horizon_bins=0, robust_iterations=10,
                           edge_um=0.0):
    """The dense algorithm of estimate_motion (no smoothing in time)."""
    from scipy.ndimage import gaussian_filter1d

    hist = gaussian_filter1d(np.asarray(hist, dtype=np.float64), 1.0, axis=1, mode="constant")
    centres, windows = depth_windows(depth_um, channel_depths_um=channel_depths_um,
                                     rigid=rigid, window_step_um=window_step_um,
                                     window_sigma_um=window_sigma_um)
    n_time = hist.shape[0]
    index = np.arange(n_time)
    near = np.ones((n_time, n_time), dtype=bool)
    if time_horizon_bins > 0:
        near = np.abs(index[:, None] - index[None, :]) <= time_horizon_bins
    channels = np.asarray(channel_depths_um)
    inner = (depth_um >= channels.min() + edge_um) & (depth_um <= channels.max() - edge_um)
    out = np.zeros((n_time, len(centres)))
    for k, window in enumerate(windows):
        lag, corr = _dense_pairwise_shifts(
            hist, max_lag_bins=int(np.ceil(max_displacement_um / bin_um)), window=window * inner
        )
        weight = np.where((corr >= min_correlation) & near & (corr > 0), corr, 0.0)
        out[:, k] = _dense_solve_displacement(lag, weight, robust_iterations=robust_iterations)
    return out * bin_um, centres


def _to_band(dense, horizon):
    """Banded rows d = 0..horizon of a dense n x n pair array: band[d, i] = dense[i, i + d]."""
    n = len(dense)
    band = np.zeros((horizon + 1, n))
    for d in range(horizon + 1):
        band[d, : n - d] = np.diagonal(dense, d)
    return band


def _moving_units(n_time, *, drift_um, n_depth=130, bin_um=5.0, n_units=8, seed=0,
                  empty=()):
    """Synthetic depth histograms of Gaussian units moving by drift_um[t] (+ noise)."""
    rng = np.random.default_rng(seed)
    depth = (np.arange(n_depth) - 1) * bin_um + 0.5 * bin_um
    centres = rng.uniform(depth[0] + 40.0, depth[-1] - 40.0, n_units)
    rates = rng.uniform(5.0, 30.0, n_units)
    shape = np.exp(-0.5 * ((depth[None, None, :] - centres[None, :, None]
                            - drift_um[:, None, None]) / 8.0) ** 2)
    hist = rng.poisson((shape * rates[None, :, None]).sum(axis=1) + 0.2).astype(np.float64)
    hist[list(empty)] = 0.0
    return hist, depth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_banded_pairwise_shifts_equal_the_dense_pairs(seed):
    rng = np.random.default_rng(seed)
    n_time = 37
    hist, _ = _moving_units(n_time, drift_um=rng.normal(0.0, 12.0, n_time), n_depth=60,
                            seed=seed, empty=(3, 20))
    window = np.exp(-0.5 * ((np.arange(60) - 25.0) / 12.0) ** 2) if seed == 1 else None
    dense_lag, dense_corr = _dense_pairwise_shifts(hist, max_lag_bins=8, window=window)
    for horizon in (0, n_time - 1, 50, 9, 1):
        lag, corr = pairwise_shifts(hist, max_lag_bins=8, window=window, horizon_bins=horizon)
        width = n_time - 1 if horizon == 0 else min(horizon, n_time - 1)
        assert lag.shape == corr.shape == (width + 1, n_time)
        np.testing.assert_allclose(lag[1:], _to_band(dense_lag, width)[1:], atol=1e-9)
        np.testing.assert_allclose(corr[1:], _to_band(dense_corr, width)[1:], atol=1e-12)
        assert not lag[0].any() and not corr[0, [3, 20]].any()
        d = np.arange(width + 1)[:, None]
        assert not corr[d + np.arange(n_time)[None, :] >= n_time].any()


@pytest.mark.parametrize("seed", [0, 1])
def test_banded_solve_equals_the_dense_solve(seed):
    rng = np.random.default_rng(seed)
    n = 60
    truth = np.cumsum(rng.normal(0.0, 1.0, n))
    lag = truth[None, :] - truth[:, None] + rng.normal(0.0, 0.3, (n, n))
    bad = np.triu(rng.uniform(size=(n, n)) < 0.1, 1)
    lag = np.where(bad | bad.T, lag + 9.0, lag)
    lag = 0.5 * (lag - lag.T)
    weight = rng.uniform(0.0, 1.0, (n, n))
    weight = 0.5 * (weight + weight.T) * (rng.uniform(size=(n, n)) < 0.7)
    weight = np.triu(weight, 1) + np.triu(weight, 1).T
    weight[:, [5, 6, 40]] = weight[[5, 6, 40], :] = 0.0  # bins without pairs
    for horizon in (n - 1, 12, 3):
        near = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]) <= horizon
        for iterations in (0, 10):
            dense = _dense_solve_displacement(lag, weight * near, robust_iterations=iterations)
            banded = solve_displacement(_to_band(lag, horizon), _to_band(weight, horizon),
                                        robust_iterations=iterations)
            np.testing.assert_allclose(banded, dense, atol=1e-6)
            assert abs(banded.mean()) < 1e-9
    assert np.array_equal(solve_displacement(np.zeros((3, 1)), np.ones((3, 1))), [0.0])
    np.testing.assert_array_equal(solve_displacement(np.zeros((4, 9)), np.zeros((4, 9))), 0.0)


@pytest.mark.parametrize(
    ("rigid", "horizon"), [(True, 0), (True, 10), (False, 0), (False, 14)]
)
def test_estimate_motion_equals_the_dense_algorithm(rigid, horizon):
    n_time = 48
    t = np.arange(n_time)
    drift = 15.0 * np.sin(t / 7.0) + 0.3 * t
    hist, depth = _moving_units(n_time, drift_um=drift, n_depth=130, seed=4, empty=(0, 17, 18))
    channels = np.arange(0.0, 621.0, 20.0)
    kwargs = dict(depth_um=depth, channel_depths_um=channels, bin_um=5.0,
                  max_displacement_um=60.0, rigid=rigid, window_step_um=150.0,
                  window_sigma_um=100.0, time_horizon_bins=horizon, edge_um=20.0)
    dense, dense_centres = _dense_estimate_motion(hist, **kwargs)
    banded, centres = estimate_motion(hist, **kwargs)
    np.testing.assert_array_equal(centres, dense_centres)
    np.testing.assert_allclose(banded / 5.0, dense / 5.0, atol=1e-6)  # in bins
    error = _centred(banded) - _centred(drift[:, None])
    assert np.abs(np.delete(error, [0, 17, 18], axis=0)).max() < (3.0 if rigid else 4.5)


def test_a_time_horizon_recovers_a_slow_drift_over_two_hours():
    """3,600 bins of 2 s: a 2-h ramp plus a zigzag, registered within 10 min."""
    n_time = 3600
    t = np.arange(n_time)
    zigzag = 6.0 * np.abs((t / 150.0) % 2.0 - 1.0)
    drift = 40.0 * t / n_time + zigzag
    hist, depth = _moving_units(n_time, drift_um=drift, n_depth=130, n_units=6, seed=5)
    estimate, _ = estimate_motion(
        hist, depth_um=depth, channel_depths_um=np.arange(0.0, 621.0, 20.0), bin_um=5.0,
        max_displacement_um=100.0, edge_um=20.0, time_horizon_bins=300,
    )
    error = estimate[:, 0] - _centred(drift)
    assert np.sqrt(np.mean(error**2)) < 1.0, np.sqrt(np.mean(error**2))


def test_solve_displacement_of_a_single_time_bin_is_zero():
    from shardsort.motion import solve_displacement

    assert solve_displacement(np.zeros((1, 1)), np.zeros((1, 1))).tolist() == [0.0]
    assert solve_displacement(np.zeros((1, 0)), np.zeros((1, 0))).shape == (0,)
