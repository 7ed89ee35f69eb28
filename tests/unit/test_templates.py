"""Tests of template estimation, cleaning and merging."""

from __future__ import annotations

import numpy as np
import pytest

from shardsort.templates import (
    CLEAN_REASONS,
    accumulate_templates,
    align_templates,
    clean_templates,
    merge_similar_templates,
    noise_factors,
    noise_lag_correlation,
    reduce_templates,
    select_spikes_per_unit,
    template_amplitudes,
    template_peak_channels,
    template_positions,
    template_similarity,
)

PRE = 10
POST = 20
T = PRE + POST


def probe(n_channels: int = 16) -> np.ndarray:
    """One column, a channel every 20 um."""
    return np.column_stack([np.zeros(n_channels), 20.0 * np.arange(n_channels)])


def unit_template(
    centre_channel: float,
    *,
    peak: float = 10.0,
    width: float = 2.0,
    trough_at: int = PRE,
    length_um: float = 30.0,
    n_channels: int = 16,
) -> np.ndarray:
    """Biphasic waveform with a Gaussian spatial footprint."""
    t = np.arange(T, dtype=np.float64)[:, None] - trough_at
    waveform = -np.exp(-0.5 * (t / width) ** 2) + 0.3 * np.exp(
        -0.5 * ((t - 4 * width) / (2 * width)) ** 2
    )
    distance_um = 20.0 * (np.arange(n_channels) - centre_channel)
    footprint = np.exp(-0.5 * (distance_um / length_um) ** 2)
    return (peak * waveform * footprint[None, :]).astype(np.float32)


# ---------------------------------------------------------------------------
# Accumulation
# ---------------------------------------------------------------------------


def test_accumulate_then_reduce_equals_mean_of_snippets():
    rng = np.random.default_rng(0)
    traces = rng.standard_normal((5_000, 8)).astype(np.float32)
    times = np.sort(rng.choice(np.arange(PRE, 5_000 - POST), 300, replace=False))
    labels = rng.integers(-1, 4, times.size)  # -1 = unassigned, unit 4 stays empty
    n_units = 5

    # Two chunks [0, 2500) and [2500, 5000), windows with margins of 40.
    sums, counts = [], []
    for start, stop in [(0, 2_500), (2_500, 5_000)]:
        low, high = max(0, start - 40), min(5_000, stop + 40)
        core = (times >= start) & (times < stop)
        part = accumulate_templates(
            traces[low:high],
            times[core] - low,
            labels[core],
            n_units=n_units,
            pre_samples=PRE,
            post_samples=POST,
        )
        sums.append(part[0])
        counts.append(part[1])
    templates, total = reduce_templates(zip(sums, counts))

    assert templates.dtype == np.float32 and templates.shape == (n_units, T, 8)
    for unit in range(n_units):
        mine = times[labels == unit]
        assert total[unit] == mine.size
        if mine.size == 0:
            np.testing.assert_array_equal(templates[unit], 0.0)
            continue
        snippets = np.stack([traces[s - PRE : s + POST] for s in mine])
        np.testing.assert_allclose(templates[unit], snippets.mean(axis=0), atol=1e-5)


def test_accumulate_skips_spikes_whose_snippet_leaves_the_window():
    traces = np.ones((100, 2), dtype=np.float32)
    sums, counts = accumulate_templates(
        traces,
        np.array([5, 50, 95]),
        np.array([0, 0, 0]),
        n_units=1,
        pre_samples=PRE,
        post_samples=POST,
    )
    assert counts.tolist() == [1]
    np.testing.assert_array_equal(sums[0], 1.0)


def test_accumulate_with_no_spikes_returns_zeros():
    sums, counts = accumulate_templates(
        np.zeros((100, 3), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        n_units=2,
        pre_samples=PRE,
        post_samples=POST,
    )
    assert sums.shape == (2, T, 3) and sums.dtype == np.float64
    assert counts.tolist() == [0, 0]


def test_select_spikes_per_unit_caps_each_unit_deterministically():
    labels = np.array([0] * 50 + [1] * 3 + [-1] * 10 + [2] * 20)
    np.random.default_rng(1).shuffle(labels)
    keep = select_spikes_per_unit(labels, n_units=4, max_per_unit=10, seed=7)
    assert np.bincount(labels[keep], minlength=4).tolist() == [10, 3, 10, 0]
    assert not np.any(keep & (labels == -1))
    again = select_spikes_per_unit(labels, n_units=4, max_per_unit=10, seed=7)
    np.testing.assert_array_equal(keep, again)
    other = select_spikes_per_unit(labels, n_units=4, max_per_unit=10, seed=8)
    assert not np.array_equal(keep, other)


# ---------------------------------------------------------------------------
# Summaries, cleaning, alignment
# ---------------------------------------------------------------------------


def test_peak_channels_amplitudes_and_positions():
    templates = np.stack(
        [unit_template(4.0), unit_template(10.5, peak=6.0), np.zeros((T, 16))]
    )
    assert template_peak_channels(templates).tolist() == [4, 10, 0]
    amplitudes = template_amplitudes(templates)
    # Trough -1 (+ the bump's tail 0.3 e^-2) and bump top 0.3, times the peak 10.
    assert amplitudes[0] == pytest.approx(10.0 * (1.3 - 0.3 * np.exp(-2.0)), rel=1e-3)
    assert amplitudes[2] == 0.0
    positions = template_positions(templates, probe())
    np.testing.assert_allclose(positions[0], [0.0, 80.0], atol=1e-6)
    np.testing.assert_allclose(positions[1], [0.0, 210.0], atol=1e-6)
    np.testing.assert_allclose(positions[2], [0.0, 0.0])  # peak channel 0


def test_clean_templates_flags_each_criterion():
    templates = np.stack(
        [
            unit_template(5.0),  # good
            unit_template(8.0, peak=1.0),  # tiny
            unit_template(3.0, trough_at=PRE + 6),  # off-centre
            unit_template(8.0, length_um=400.0),  # spread over the whole probe
            unit_template(11.0),  # too few spikes
        ]
    )
    counts = np.array([100, 100, 100, 100, 3])
    keep, reasons = clean_templates(
        templates,
        counts,
        probe(),
        pre_samples=PRE,
        min_amplitude=4.0,
        min_count=20,
        max_spread_um=60.0,
        peak_window_samples=3,
    )
    assert set(reasons) == set(CLEAN_REASONS)
    assert keep.tolist() == [True, False, False, False, False]
    assert np.flatnonzero(reasons["too_small"]).tolist() == [1]
    assert np.flatnonzero(reasons["off_centre"]).tolist() == [2]
    assert np.flatnonzero(reasons["too_spread"]).tolist() == [3]
    assert np.flatnonzero(reasons["too_few_spikes"]).tolist() == [4]


def test_clean_templates_accepts_zero_units():
    keep, reasons = clean_templates(
        np.zeros((0, T, 16), np.float32),
        np.zeros(0, np.int64),
        probe(),
        pre_samples=PRE,
        min_amplitude=4.0,
        min_count=20,
        max_spread_um=60.0,
        peak_window_samples=3,
    )
    assert keep.shape == (0,) and all(mask.shape == (0,) for mask in reasons.values())


def test_align_templates_moves_trough_to_pre_samples():
    templates = np.stack([unit_template(5.0, trough_at=PRE + 3), unit_template(9.0)])
    aligned, shifts = align_templates(templates, pre_samples=PRE)
    assert shifts.tolist() == [3, 0]
    assert aligned[0, :, 5].argmin() == PRE
    np.testing.assert_array_equal(aligned[0, : T - 3], templates[0, 3:])
    np.testing.assert_array_equal(aligned[0, T - 3 :], 0.0)
    np.testing.assert_array_equal(aligned[1], templates[1])


# ---------------------------------------------------------------------------
# Similarity and merging
# ---------------------------------------------------------------------------


@pytest.fixture
def trio():
    """A, a 2-sample-delayed 0.8x copy of A, and a different unit C."""
    a = unit_template(5.0)
    b = np.zeros_like(a)
    b[2:] = 0.8 * a[:-2]
    c = unit_template(11.0, width=3.5)
    return np.stack([a, b, c])


def test_template_similarity_sees_shifted_copies(trio):
    similarity = template_similarity(trio, max_shift_samples=3)
    assert similarity.dtype == np.float32
    np.testing.assert_allclose(similarity, similarity.T)
    np.testing.assert_allclose(np.diag(similarity), 1.0, rtol=1e-6)
    assert similarity[0, 1] > 0.99
    assert similarity[0, 2] < 0.1
    assert template_similarity(trio, max_shift_samples=0)[0, 1] < 0.9


def test_merge_joins_shifted_scaled_copy_only(trio):
    counts = np.array([300, 100, 50])
    merged, new_counts, mapping, groups, shifts = merge_similar_templates(
        trio, counts, max_shift_samples=3, min_cosine=0.9, max_amplitude_ratio=1.5
    )
    assert groups == [[0, 1], [2]]
    assert mapping.tolist() == [0, 0, 1]
    assert new_counts.tolist() == [400, 50]
    assert shifts.tolist() == [0, 2, 0]  # unit 1 trails A by 2 samples
    # Count-weighted mean after alignment: (300 A + 100 * 0.8 A) / 400.
    expected = trio[0] * (300 + 80) / 400
    np.testing.assert_allclose(merged[0, : T - 2], expected[: T - 2], atol=1e-5)
    np.testing.assert_array_equal(merged[1], trio[2])


def test_merge_reference_is_the_unit_with_most_spikes(trio):
    *_, groups, shifts = merge_similar_templates(
        trio,
        np.array([10, 100, 5]),
        max_shift_samples=3,
        min_cosine=0.9,
        max_amplitude_ratio=1.5,
    )
    assert groups == [[0, 1], [2]]
    assert shifts.tolist() == [-2, 0, 0]


def test_merge_respects_amplitude_ratio(trio):
    small = trio.copy()
    small[1] *= 0.3 / 0.8  # same shape, 0.3x the size of A
    *_, groups, shifts = merge_similar_templates(
        small,
        np.array([1, 1, 1]),
        max_shift_samples=3,
        min_cosine=0.9,
        max_amplitude_ratio=1.5,
    )
    assert groups == [[0], [1], [2]]
    assert shifts.tolist() == [0, 0, 0]


def test_merge_of_no_templates():
    merged, counts, mapping, groups, shifts = merge_similar_templates(
        np.zeros((0, T, 4), np.float32),
        np.zeros(0, np.int64),
        max_shift_samples=2,
        min_cosine=0.9,
        max_amplitude_ratio=1.5,
    )
    assert merged.shape == (0, T, 4) and counts.size == 0
    assert mapping.size == 0 and groups == [] and shifts.size == 0


def test_zero_templates_pass_every_step_of_the_templates_job():
    """A recording of pure noise: every cluster dropped, the steps still run."""
    from shardsort.templates import matched_snr, noise_factors, sparsify_templates

    empty = np.zeros((0, T, 4), np.float32)
    windows = np.random.default_rng(0).normal(size=(50, T, 4)).astype(np.float32)
    factors = noise_factors(empty, windows)
    assert factors.shape == (0,) and factors.dtype == np.float32
    assert matched_snr(empty, factors).shape == (0,)
    assert sparsify_templates(empty, np.zeros(0, np.int64), min_fraction=0.1,
                              noise_ptp=6.0).shape == (0, T, 4)
    merged, counts, mapping, groups, shifts = merge_similar_templates(
        empty, np.zeros(0, np.int64), max_shift_samples=2, min_cosine=0.9,
        max_amplitude_ratio=1.5, noise_factors=factors, max_difference=20.0,
        distinct=np.zeros((0, 0), bool),
    )
    assert merged.shape == (0, T, 4) and counts.shape == mapping.shape == (0,)
    assert groups == [] and shifts.shape == (0,)


# ---------------------------------------------------------------------------
# Argument errors
# ---------------------------------------------------------------------------


def test_accumulate_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[-1, 1\] \(n_units=2\)"):
        accumulate_templates(
            np.zeros((100, 2), np.float32),
            np.array([50]),
            np.array([2]),
            n_units=2,
            pre_samples=PRE,
            post_samples=POST,
        )
    with pytest.raises(ValueError, match="post_samples must be >= 1, got 0"):
        accumulate_templates(
            np.zeros((100, 2), np.float32),
            np.array([50]),
            np.array([0]),
            n_units=1,
            pre_samples=PRE,
            post_samples=0,
        )


def test_reduce_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="at least one"):
        reduce_templates([])
    with pytest.raises(
        ValueError, match=r"every sums array must have shape \(1, 3, 2\)"
    ):
        reduce_templates(
            zip([np.zeros((1, 3, 2)), np.zeros((1, 3, 3))], [np.ones(1, int)] * 2)
        )


def test_select_rejects_bad_cap():
    with pytest.raises(ValueError, match="max_per_unit must be >= 1, got 0"):
        select_spikes_per_unit(np.array([0, 1]), n_units=2, max_per_unit=0, seed=0)


def test_merge_and_clean_reject_bad_arguments(trio):
    with pytest.raises(ValueError, match=r"max_shift_samples must lie in \[0, 29\]"):
        template_similarity(trio, max_shift_samples=30)
    with pytest.raises(ValueError, match="max_amplitude_ratio must be >= 1, got 0.5"):
        merge_similar_templates(
            trio,
            np.ones(3, int),
            max_shift_samples=2,
            min_cosine=0.9,
            max_amplitude_ratio=0.5,
        )
    with pytest.raises(
        ValueError, match=r"counts must be an integer array of shape \(3,\)"
    ):
        merge_similar_templates(
            trio,
            np.ones(2, int),
            max_shift_samples=2,
            min_cosine=0.9,
            max_amplitude_ratio=1.5,
        )
    with pytest.raises(ValueError, match=r"positions_um must have shape \(16, 2\)"):
        template_positions(trio, np.zeros((15, 2)))
    with pytest.raises(ValueError, match="max_spread_um must be > 0, got -3.0"):
        clean_templates(
            trio,
            np.ones(3, int),
            probe(),
            pre_samples=PRE,
            min_amplitude=1.0,
            min_count=1,
            max_spread_um=-3.0,
            peak_window_samples=2,
        )


def test_noise_windows_avoid_spikes_and_factors_measure_colour():
    from scipy.signal import lfilter

    from shardsort.templates import matched_snr, noise_factors, sample_noise_windows

    rng = np.random.default_rng(0)
    white = rng.standard_normal((20000, 4)).astype(np.float32)
    white[5000, 1] = 50.0  # a "spike" no window may contain
    windows = sample_noise_windows(white, n_windows=500, window_samples=30, threshold=8.0, seed=1)
    assert windows.shape == (500, 30, 4)
    assert np.abs(windows).max() < 8.0
    again = sample_noise_windows(white, n_windows=500, window_samples=30, threshold=8.0, seed=1)
    np.testing.assert_array_equal(windows, again)
    template = np.zeros((1, 30, 4), dtype=np.float32)
    template[0, 10:14, 0] = [-1.0, -2.0, -1.0, 0.5]
    # white noise: factor ~1
    f_white = noise_factors(template, windows)
    assert 0.85 < f_white[0] < 1.15
    # low-pass coloured noise: a smooth template sees much more noise
    coloured = lfilter([1.0], [1.0, -0.9], white, axis=0).astype(np.float32)
    coloured /= coloured.std(axis=0)
    cw = sample_noise_windows(coloured, n_windows=500, window_samples=30, threshold=8.0, seed=1)
    smooth = np.zeros((1, 30, 4), dtype=np.float32)
    smooth[0, 5:25, 0] = -1.0
    assert noise_factors(smooth, cw)[0] > 5.0
    snr = matched_snr(template, f_white)
    assert snr[0] == pytest.approx(np.sqrt(6.25) / np.sqrt(f_white[0]), rel=1e-5)
    empty = sample_noise_windows(white, n_windows=0, window_samples=30, threshold=8.0, seed=1)
    assert empty.shape == (0, 30, 4)


def test_noise_aware_merge_joins_faint_copies_but_not_distinct_bright_units():
    from shardsort.templates import merge_similar_templates

    rng = np.random.default_rng(5)
    base = np.zeros((40, 6), dtype=np.float32)
    base[10:20, :3] = -np.hanning(10)[:, None] * np.array([1.0, 0.6, 0.3])
    other = base.copy()
    other[10:20, 3] = -0.45 * np.hanning(10)  # a second neuron: similar, not equal
    faint_a = 2.0 * base + 0.05 * rng.standard_normal(base.shape).astype(np.float32)
    faint_b = 2.0 * other
    bright_a, bright_b = 12.0 * base, 12.0 * other
    templates = np.stack([faint_a, faint_b, bright_a, bright_b])
    counts = np.array([50, 50, 50, 50])
    factors = np.ones(4, dtype=np.float32)
    kwargs = dict(max_shift_samples=2, min_cosine=0.99, max_amplitude_ratio=2.0)
    _, _, plain, _, _ = merge_similar_templates(templates, counts, **kwargs)
    assert len(set(plain.tolist())) == 4
    _, _, aware, _, _ = merge_similar_templates(
        templates, counts, noise_factors=factors, max_difference=20.0, **kwargs
    )
    assert aware[0] == aware[1]  # indistinguishable in the noise
    assert aware[2] != aware[3]  # clearly different at high SNR


def test_noise_factors_are_robust_to_spikes_in_random_windows():
    """Random windows (threshold None) include the odd spike; the robust
    spread still gives ~1 for white noise, and quiet-only windows would not
    be needed."""
    from shardsort.templates import noise_factors, sample_noise_windows

    rng = np.random.default_rng(3)
    x = rng.standard_normal((60000, 8)).astype(np.float32)
    template = np.zeros((1, 30, 8), dtype=np.float32)
    template[0, 10:14, 2] = [-1.0, -2.0, -1.0, 0.5]
    for start in range(100, 60000, 2000):  # 30 large spikes shaped like the template
        x[start : start + 30] += 12.0 * template[0]
    windows = sample_noise_windows(x, n_windows=2000, window_samples=30, threshold=None, seed=0)
    assert windows.shape == (2000, 30, 8)
    assert 0.9 < noise_factors(template, windows)[0] < 1.1


def test_sparsify_zeroes_channels_of_averaged_noise_only():
    from shardsort.templates import sparsify_templates

    rng = np.random.default_rng(0)
    n = 100
    unit = np.zeros((30, 40), dtype=np.float32)
    unit[10:14, 3] = [-4.0, -8.0, -4.0, 2.0]  # peak channel, ptp 10
    unit[10:14, 4] = [-1.0, -2.0, -1.0, 0.5]  # 25 %: kept
    unit[10:14, 5] = [-0.3, -0.6, -0.3, 0.15]  # 7.5 %: below 10 % of the peak
    mean = unit + rng.standard_normal((n, 30, 40)).mean(axis=0).astype(np.float32)
    out = sparsify_templates(mean[None], [n], min_fraction=0.1, noise_ptp=6.0)
    kept = np.flatnonzero(np.abs(out[0]).max(axis=0) > 0)
    assert kept.tolist() == [3, 4]
    np.testing.assert_array_equal(out[0][:, kept], mean[:, kept])
    # with few spikes the noise floor dominates: channel 4 goes too
    few = sparsify_templates(mean[None], [1], min_fraction=0.1, noise_ptp=6.0)
    assert np.flatnonzero(np.abs(few[0]).max(axis=0) > 0).tolist() == [3]
    with pytest.raises(ValueError, match="floor_fraction"):
        sparsify_templates(mean[None], [n], min_fraction=1.5)


def test_sparsify_zeroes_channels_beyond_the_radius_from_the_peak():
    from shardsort.templates import sparsify_templates

    positions = np.stack([np.zeros(40), 20.0 * np.arange(40)], axis=1)  # 780 um long
    unit = np.zeros((30, 40), dtype=np.float32)
    unit[10:14, 3] = [-4.0, -8.0, -4.0, 2.0]  # peak channel at 60 um
    unit[10:14, 5] = [-1.0, -2.0, -1.0, 0.5]  # 40 um away: kept
    unit[10:14, 30] = [-1.0, -2.0, -1.0, 0.5]  # 540 um away: averaged noise's excursion
    out = sparsify_templates(unit[None], [100], min_fraction=0.1, noise_ptp=6.0)
    assert np.flatnonzero(np.abs(out[0]).max(axis=0) > 0).tolist() == [3, 5, 30]
    near = sparsify_templates(
        unit[None], [100], min_fraction=0.1, noise_ptp=6.0, positions_um=positions, radius_um=150.0
    )
    assert np.flatnonzero(np.abs(near[0]).max(axis=0) > 0).tolist() == [3, 5]
    with pytest.raises(ValueError, match="radius_um must be > 0"):
        sparsify_templates(unit[None], [100], positions_um=positions, radius_um=0.0)


def test_merge_does_not_chain_through_a_noisy_bridge():
    """A small template similar to two distinct units joins the larger one
    only; the two units stay apart (star groups, not connected components)."""
    from shardsort.templates import merge_similar_templates

    t = np.zeros((3, 20, 3), dtype=np.float32)
    t[0, 8:11, 0] = [-1.0, -2.0, -1.0]
    t[1, 8:11, 1] = [-1.0, -2.0, -1.0]
    t[2, 8:11, 0] = [-0.7, -1.4, -0.7]  # the bridge: halfway between 0 and 1
    t[2, 8:11, 1] = [-0.7, -1.4, -0.7]
    merged, counts, mapping, groups, _ = merge_similar_templates(
        t, [500, 400, 30], max_shift_samples=1, min_cosine=0.7, max_amplitude_ratio=2.0
    )
    assert groups == [[0, 2], [1]]
    assert mapping.tolist() == [0, 1, 0] and counts.tolist() == [530, 400]


def _refractory_train(rng, rate_hz, duration_s, refractory_samples, fs=30_000.0):
    """Poisson train with a dead time: intervals = refractory + exponential."""
    intervals = refractory_samples + rng.exponential(fs / rate_hz, int(2 * rate_hz * duration_s))
    train = np.cumsum(intervals).astype(np.int64)
    return train[train < duration_s * fs]


def test_refractory_conflicts_tell_two_neurons_from_two_pieces_of_one():
    from shardsort.templates import refractory_conflicts

    rng = np.random.default_rng(3)
    fs, duration_s = 30_000.0, 300.0
    a = _refractory_train(rng, 12.0, duration_s, 60)  # 2 ms dead time
    b = _refractory_train(rng, 9.0, duration_s, 60)
    # unit 0 and 1: independent neurons; units 2 and 3: one neuron split at
    # random; unit 4: copies of unit 0's spikes 2 samples later (one spike
    # detected twice) plus a label -1 (outliers) that must be ignored
    piece = rng.random(b.size) < 0.5
    times = np.concatenate([a, b, b[piece], b[~piece], a[:100] + 2, [5]])
    labels = np.concatenate(
        [np.zeros(a.size), np.ones(b.size), np.full(piece.sum(), 2),
         np.full((~piece).sum(), 3), np.full(100, 4), [-1]]
    ).astype(int)
    observed, expected = refractory_conflicts(
        times, labels, 5, duration_samples=int(duration_s * fs),
        min_lag_samples=15, max_lag_samples=45,
    )
    assert observed.shape == expected.shape == (5, 5)
    np.testing.assert_array_equal(observed, observed.T)
    # independent trains: observed ~ expected (Poisson, expected ~ 65)
    assert expected[0, 1] == pytest.approx(a.size * b.size * 62 / (duration_s * fs))
    assert abs(observed[0, 1] - expected[0, 1]) < 4 * np.sqrt(expected[0, 1])
    # two pieces of one refractory neuron: none, though ~12 are expected
    assert expected[2, 3] > 10 and observed[2, 3] == 0
    # duplicates 2 samples apart fall below min_lag
    assert observed[0, 4] == 0
    with pytest.raises(ValueError, match="min_lag_samples <= max_lag_samples"):
        refractory_conflicts(times, labels, 5, duration_samples=10,
                             min_lag_samples=5, max_lag_samples=4)
    with pytest.raises(ValueError, match="labels must be < n_units=4"):
        refractory_conflicts(times, labels, 4, duration_samples=10,
                             min_lag_samples=0, max_lag_samples=4)


def test_refractory_conflicts_in_blocks_equal_the_whole_table():
    from shardsort.templates import refractory_conflicts, refractory_conflicts_in_blocks

    rng = np.random.default_rng(11)
    # dense bursts (many spikes within max_lag, ties included) and quiet stretches
    times = np.sort(np.concatenate([
        rng.integers(0, 200_000, 3_000),
        rng.integers(50_000, 50_200, 400),  # a burst longer than any small block
        np.full(20, 120_000),
    ]))
    labels = rng.integers(-1, 9, times.size)
    kwargs = dict(duration_samples=200_000, min_lag_samples=3, max_lag_samples=45)
    whole_obs, whole_exp = refractory_conflicts(times, labels, 9, **kwargs)
    assert whole_obs.sum() > 1_000  # the bursts give many pairs to count
    # brute force on a subset: every pair once
    sub = slice(0, 600)
    t, u = times[sub], labels[sub]
    lag = np.abs(t[:, None] - t[None, :])
    close = np.triu((lag >= 3) & (lag <= 45), 1) & (u[:, None] >= 0) & (u[None, :] >= 0)
    brute = np.zeros((9, 9), dtype=np.int64)
    np.add.at(brute, (u[:, None].repeat(t.size, 1)[close], u[None, :].repeat(t.size, 0)[close]), 1)
    brute = brute + brute.T
    np.fill_diagonal(brute, 0)
    np.testing.assert_array_equal(refractory_conflicts(t, u, 9, **kwargs)[0], brute)
    # int32 labels (a spike table's column) are read as they are: the same counts
    np.testing.assert_array_equal(
        refractory_conflicts(times, labels.astype(np.int32), 9, **kwargs)[0], whole_obs)
    for block in (1, 7, 256, 1_000, times.size + 5):
        obs, exp = refractory_conflicts(times, labels, 9, block_spikes=block, **kwargs)
        np.testing.assert_array_equal(obs, whole_obs)
        np.testing.assert_array_equal(exp, whole_exp)
        # the same from a generator of time-ordered blocks (as scripts/templates.py reads them)
        gen = ((times[i : i + block], labels[i : i + block]) for i in range(0, times.size, block))
        obs, _ = refractory_conflicts_in_blocks(gen, 9, **kwargs)
        np.testing.assert_array_equal(obs, whole_obs)
    with pytest.raises(ValueError, match="must not decrease"):
        refractory_conflicts_in_blocks([(times[::-1], labels)], 9, **kwargs)
    with pytest.raises(ValueError, match="must not decrease"):
        refractory_conflicts_in_blocks([(times[500:], labels[500:]), (times[:500], labels[:500])],
                                       9, **kwargs)


def test_merge_never_joins_pairs_known_to_be_distinct():
    from shardsort.templates import merge_similar_templates

    t = np.zeros((3, 20, 2), dtype=np.float32)
    t[:, 8:11, 0] = [-1.0, -2.0, -1.0]
    t[2] *= 1.2
    distinct = np.zeros((3, 3), dtype=bool)
    distinct[0, 2] = True  # one direction is enough
    kwargs = dict(max_shift_samples=1, min_cosine=0.9, max_amplitude_ratio=2.0)
    _, _, _, groups, _ = merge_similar_templates(t, [300, 200, 100], **kwargs)
    assert groups == [[0, 1, 2]]
    _, _, _, groups, _ = merge_similar_templates(
        t, [300, 200, 100], distinct=distinct, **kwargs
    )
    # 2 may not join 0, so it joins 1... which already belongs to 0's group:
    # 1 joins 0 (accepted, larger); 2 is left on its own.
    assert groups == [[0, 1], [2]]
    with pytest.raises(ValueError, match=r"distinct must have shape \(3, 3\)"):
        merge_similar_templates(t, [3, 2, 1], distinct=np.zeros((2, 2), bool), **kwargs)


def test_merge_member_joins_the_most_similar_reference():
    """A piece accepted by two references joins the one it resembles most,
    not the one with more spikes."""
    from shardsort.templates import merge_similar_templates

    shape = np.array([-1.0, -2.0, -1.0])
    t = np.zeros((3, 20, 2), dtype=np.float32)
    t[0, 8:11, 0] = shape  # large unit on channel 0
    t[1, 8:11, 1] = shape  # smaller unit on channel 1
    t[2, 8:11, 0] = 0.6 * shape  # a piece: cosine 0.6 with unit 0, 0.8 with unit 1
    t[2, 8:11, 1] = 0.8 * shape
    _, counts, mapping, groups, _ = merge_similar_templates(
        t, [900, 300, 50], max_shift_samples=1, min_cosine=0.55, max_amplitude_ratio=2.0
    )
    assert groups == [[0], [1, 2]]
    assert mapping.tolist() == [0, 1, 1] and counts.tolist() == [900, 350]


def test_reduce_templates_from_sparse_rows_equals_full_sums():
    from shardsort.templates import reduce_templates

    rng = np.random.default_rng(3)
    full = [rng.standard_normal((6, 5, 4)) for _ in range(3)]
    counts = [rng.integers(0, 4, 6) for _ in range(3)]
    for f, c in zip(full, counts):
        f[c == 0] = 0.0
    dense = reduce_templates(zip(full, counts))
    rows = [np.flatnonzero(c) for c in counts]
    sparse = reduce_templates((f[r], c, r) for f, c, r in zip(full, counts, rows))
    np.testing.assert_array_equal(dense[0], sparse[0])
    np.testing.assert_array_equal(dense[1], sparse[1])
    with pytest.raises(ValueError, match="rows"):
        reduce_templates([(full[0][:2], counts[0], np.array([3, 1]))])


def test_template_sums_added_block_by_block_equal_the_whole_chunk():
    """accumulate_templates(out=...) adds to running sums: int16-step data
    summed block by block gives exactly the whole chunk's sums."""
    rng = np.random.default_rng(5)
    window = (rng.integers(-2000, 2000, (3000, 6)) / 32.0).astype(np.float32)
    samples = np.sort(rng.choice(np.arange(20, 2980), 300, replace=False))
    labels = rng.integers(-1, 4, samples.size)
    whole, counts = accumulate_templates(window, samples, labels, n_units=4,
                                         pre_samples=5, post_samples=10)
    out = None
    for first, last in [(0, 700), (700, 1900), (1900, 3000)]:
        inside = (samples >= first) & (samples < last)
        lo, hi = max(0, first - 5), min(3000, last + 10)
        out = accumulate_templates(
            window[lo:hi], samples[inside] - lo, labels[inside], n_units=4,
            pre_samples=5, post_samples=10, out=out,
        )
    np.testing.assert_array_equal(out[0], whole)
    np.testing.assert_array_equal(out[1], counts)
    with pytest.raises(ValueError, match="out must be float64 sums of shape"):
        accumulate_templates(window, samples, labels, n_units=4, pre_samples=5,
                             post_samples=10, out=(np.zeros((4, 15, 5)), counts))


def test_noise_projections_on_the_templates_channels_equal_the_full_products():
    """noise_factors / noise_lag_correlation project noise on each block's
    channels only; the results equal the products over all channels."""
    rng = np.random.default_rng(9)
    n_units, n_times, n_channels = 70, 12, 48
    t = np.zeros((n_units, n_times, n_channels), np.float32)
    for k in range(n_units):
        c = rng.integers(0, n_channels)
        lo, hi = max(0, c - 4), min(n_channels, c + 4)
        t[k, :, lo:hi] = rng.normal(0, 1, (n_times, hi - lo))
    t[3] = 0
    noise = rng.normal(0, 1, (300, n_times, n_channels)).astype(np.float32)
    flat_t = t.reshape(n_units, -1).astype(np.float64)
    flat_n = noise.reshape(len(noise), -1).astype(np.float64)
    projections = flat_n @ flat_t.T
    variance = (1.4826 * np.median(np.abs(projections - np.median(projections, axis=0)),
                                   axis=0)) ** 2
    norms = (flat_t**2).sum(axis=1)
    expected = np.maximum(np.where(norms > 0, variance / np.where(norms > 0, norms, 1), 1.0),
                          1e-3)
    np.testing.assert_allclose(noise_factors(t, noise), expected, rtol=1e-6)
    assert noise_factors(t, noise)[3] == 1.0
    head = t[:, :-1].reshape(n_units, -1).astype(np.float64)
    a = noise[:, :-1].reshape(len(noise), -1).astype(np.float64) @ head.T
    b = noise[:, 1:].reshape(len(noise), -1).astype(np.float64) @ head.T

    def robust_var(x):
        return (1.4826 * np.median(np.abs(x - np.median(x, axis=0)), axis=0)) ** 2

    spread = 0.5 * (robust_var(a) + robust_var(b))
    rho = np.where(spread > 0, 1 - robust_var(a - b) / (2 * np.where(spread > 0, spread, 1)), 0)
    np.testing.assert_allclose(noise_lag_correlation(t, noise), rho, rtol=1e-5, atol=1e-6)
    assert noise_lag_correlation(t, noise)[3] == 0.0
