"""Tests of the template-matching kernels on planted spikes."""

from __future__ import annotations

import numpy as np
import pytest

from shardsort.deconvolve import (
    DeconvBasis,
    _initial_objective,
    _shift_templates,
    deconvolve_chunk,
    prepare_templates,
)
from shardsort.tables import SPIKE_DTYPE

PRE = 20
POST = 40
T = PRE + POST
N_SAMPLES = 90_000
SAMPLING_RATE_HZ = 30_000.0
MATCH = {
    "threshold": 30.0,
    "amplitude_min": 0.5,
    "amplitude_max": 2.0,
    "refractory_samples": 30,
}


def make_probe(n_channels: int = 32) -> np.ndarray:
    """Two columns 32 um apart, rows every 20 um."""
    index = np.arange(n_channels)
    return np.column_stack([np.where(index % 2 == 0, 0.0, 32.0), 20.0 * (index // 2)])


def make_templates(positions: np.ndarray) -> np.ndarray:
    """Five biphasic units with distinct positions, widths and sizes.

    Amplitude decays with distance from the soma and the waveform is delayed
    on far channels (so templates are not rank one).
    """
    centres = [(0, 40), (32, 100), (0, 130), (16, 200), (32, 260)]
    peaks = [10.0, 12.0, 9.0, 14.0, 8.0]
    widths = [2.0, 3.0, 1.5, 2.5, 2.0]
    t = np.arange(T, dtype=np.float64)
    templates = np.zeros((len(centres), T, len(positions)))
    for unit, (centre, peak, width) in enumerate(zip(centres, peaks, widths)):
        distance = np.hypot(*(positions - np.asarray(centre, float)).T)
        lag = t[:, None] - PRE - distance[None, :] / 50.0
        trough = -np.exp(-0.5 * (lag / width) ** 2)
        bump = 0.35 * np.exp(-0.5 * ((lag - 4 * width) / (2 * width)) ** 2)
        templates[unit] = peak * np.exp(-distance / 40.0) * (trough + bump)
    return templates.astype(np.float32)


def plant(templates, times, units, amplitudes, *, noise_seed=None):
    """Sum of scaled templates (trough at each time) plus unit white noise."""
    if noise_seed is None:
        traces = np.zeros((N_SAMPLES, templates.shape[2]), dtype=np.float32)
    else:
        rng = np.random.default_rng(noise_seed)
        traces = rng.standard_normal((N_SAMPLES, templates.shape[2]))
        traces = traces.astype(np.float32)
    for time, unit, amplitude in zip(times, units, amplitudes):
        traces[time - PRE : time + POST] += amplitude * templates[unit]
    return traces


def match(found, times, units, tolerance=1):
    """Greedy one-to-one matching with exact unit and |time error| <= tolerance.

    Returns the index into ``found`` of each planted spike (-1 if missed).
    """
    taken = np.zeros(found.size, dtype=bool)
    matched = np.full(times.size, -1)
    for index, (time, unit) in enumerate(zip(times, units)):
        close = np.abs(found["sample_index"] - time) <= tolerance
        candidates = np.flatnonzero(close & (found["unit_index"] == unit) & ~taken)
        if candidates.size:
            matched[index] = candidates[0]
            taken[candidates[0]] = True
    return matched


@pytest.fixture(scope="module")
def templates():
    return make_templates(make_probe())


@pytest.fixture(scope="module")
def basis(templates):
    return prepare_templates(templates, pre_samples=PRE)


@pytest.fixture(scope="module")
def planted(templates):
    """Poisson-like trains of the 5 units plus 30 overlapping pairs."""
    rng = np.random.default_rng(0)
    times, units = [], []
    for unit in range(templates.shape[0]):
        intervals = rng.exponential(SAMPLING_RATE_HZ / 15.0, 60) + 60
        train = (np.cumsum(intervals) + T).astype(np.int64)
        train = train[train < N_SAMPLES - 2 * T]
        times.append(train)
        units.append(np.full(train.size, unit))
    times, units = np.concatenate(times), np.concatenate(units)
    # Pairs of neighbouring units (shared channels) within 5 samples.
    pair_times = rng.choice(np.arange(400, N_SAMPLES - 400, 400), 30, replace=False)
    pairs = np.array([(0, 1), (1, 2), (2, 3), (3, 4)])[rng.integers(0, 4, 30)]
    delays = rng.integers(-5, 6, 30)
    far = np.abs(times[:, None] - pair_times[None, :]).min(axis=1) > 2 * T
    times = np.concatenate([times[far], pair_times, pair_times + delays])
    units = np.concatenate([units[far], pairs[:, 0], pairs[:, 1]])
    is_pair = np.concatenate([np.zeros(far.sum(), bool), np.ones(60, bool)])
    amplitudes = rng.uniform(0.8, 1.2, times.size)
    order = np.argsort(times, kind="stable")
    traces = plant(templates, times, units, amplitudes, noise_seed=1)
    return {
        "traces": traces,
        "times": times[order],
        "units": units[order],
        "amplitudes": amplitudes[order],
        "is_pair": is_pair[order],
    }


@pytest.fixture(scope="module")
def whole(planted, basis):
    return deconvolve_chunk(
        planted["traces"], basis, core_start=0, core_stop=N_SAMPLES, **MATCH
    )


def test_recovers_planted_spikes_with_exact_labels(planted, whole):
    matched = match(whole, planted["times"], planted["units"])
    recall = np.mean(matched >= 0)
    precision = np.unique(matched[matched >= 0]).size / whole.size
    assert recall >= 0.97
    assert precision >= 0.97
    assert whole.dtype == SPIKE_DTYPE
    assert np.all(np.diff(whole["sample_index"]) >= 0)


def test_resolves_overlapping_pairs(planted, whole):
    matched = match(whole, planted["times"], planted["units"])
    assert planted["is_pair"].sum() == 60
    assert np.mean(matched[planted["is_pair"]] >= 0) >= 0.95


def test_amplitudes_match_planted_scaling(planted, whole):
    matched = match(whole, planted["times"], planted["units"])
    found = whole["amplitude"][matched[matched >= 0]]
    error = np.abs(found / planted["amplitudes"][matched >= 0] - 1.0)
    assert np.median(error) < 0.03
    assert np.mean(error <= 0.10) >= 0.97


def test_refitting_improves_overlapping_amplitudes(planted, basis, whole):
    greedy = deconvolve_chunk(
        planted["traces"],
        basis,
        core_start=0,
        core_stop=N_SAMPLES,
        refit_sweeps=0,
        **MATCH,
    )

    def pair_error(found):
        matched = match(found, planted["times"], planted["units"])
        ok = (matched >= 0) & planted["is_pair"]
        ratio = found["amplitude"][matched[ok]] / planted["amplitudes"][ok]
        return np.mean(np.abs(ratio - 1.0) > 0.10)

    assert pair_error(whole) < 0.5 * pair_error(greedy)


@pytest.mark.parametrize("chunk_samples", [7_000, 20_011])
def test_chunked_run_equals_whole_run(planted, basis, whole, chunk_samples):
    margin = basis.margin_samples
    assert margin >= 2 * T
    parts = []
    for start in range(0, N_SAMPLES, chunk_samples):
        stop = min(start + chunk_samples, N_SAMPLES)
        low, high = max(0, start - margin), min(N_SAMPLES, stop + margin)
        spikes = deconvolve_chunk(
            planted["traces"][low:high],
            basis,
            core_start=start - low,
            core_stop=stop - low,
            **MATCH,
        )
        spikes["sample_index"] += start
        parts.append(spikes)
    chunked = np.concatenate(parts)
    np.testing.assert_array_equal(chunked["sample_index"], whole["sample_index"])
    np.testing.assert_array_equal(chunked["unit_index"], whole["unit_index"])
    np.testing.assert_allclose(chunked["amplitude"], whole["amplitude"], atol=1e-4)


def test_refractory_period_is_respected(templates, basis, whole):
    refractory = MATCH["refractory_samples"]
    for unit in range(templates.shape[0]):
        times = whole["sample_index"][whole["unit_index"] == unit]
        assert np.all(np.diff(times) > refractory)
    # Two spikes of one unit 20 samples apart: only one may be reported.
    traces = plant(templates, [30_000, 30_020], [3, 3], [1.0, 1.0], noise_seed=2)
    spikes = deconvolve_chunk(traces, basis, core_start=0, core_stop=N_SAMPLES, **MATCH)
    near = spikes[np.abs(spikes["sample_index"] - 30_010) <= 40]
    assert np.sum(near["unit_index"] == 3) == 1


def test_pure_noise_gives_empty_table(basis):
    noise = np.random.default_rng(3).standard_normal((N_SAMPLES, 32))
    spikes = deconvolve_chunk(
        noise.astype(np.float32), basis, core_start=0, core_stop=N_SAMPLES, **MATCH
    )
    assert spikes.dtype == SPIKE_DTYPE
    assert spikes.shape == (0,)


def test_subsample_shifts_give_exact_fit_without_noise(templates, basis):
    rng = np.random.default_rng(4)
    times = np.arange(1_000, N_SAMPLES - 1_000, 1_500)
    units = rng.integers(0, templates.shape[0], times.size)
    offsets = rng.uniform(-0.45, 0.45, times.size)
    traces = np.zeros((N_SAMPLES, templates.shape[2]), dtype=np.float32)
    for time, unit, offset in zip(times, units, offsets):
        shifted = _shift_templates(templates[unit : unit + 1].astype(float), [offset])
        traces[time - PRE : time + POST] += shifted[0, 0].astype(np.float32)
    spikes = deconvolve_chunk(traces, basis, core_start=0, core_stop=N_SAMPLES, **MATCH)
    np.testing.assert_array_equal(spikes["sample_index"], times)
    np.testing.assert_array_equal(spikes["unit_index"], units)
    np.testing.assert_allclose(spikes["amplitude"], 1.0, atol=0.01)


def test_core_only_and_core_local_indices(planted, basis, whole):
    spikes = deconvolve_chunk(
        planted["traces"], basis, core_start=30_000, core_stop=60_000, **MATCH
    )
    expected = whole[
        (whole["sample_index"] >= 30_000) & (whole["sample_index"] < 60_000)
    ]
    np.testing.assert_array_equal(
        spikes["sample_index"], expected["sample_index"] - 30_000
    )
    np.testing.assert_array_equal(spikes["unit_index"], expected["unit_index"])


def test_objective_equals_direct_inner_products(templates, basis):
    rng = np.random.default_rng(5)
    traces = rng.standard_normal((300, 32)).astype(np.float32)
    objective = _initial_objective(traces, basis)
    rank = basis.rank
    for unit in (0, 3):
        columns = slice(unit * rank, (unit + 1) * rank)
        low_rank = basis.temporal[:, columns] @ basis.spatial[:, columns].T
        padded = np.concatenate([np.zeros((T - 1, 32)), traces, np.zeros((T - 1, 32))])
        direct = [np.sum(padded[i : i + T] * low_rank) for i in range(300 + T - 1)]
        np.testing.assert_allclose(objective[:, unit], direct, rtol=1e-4, atol=1e-3)
    # The rank-5 approximation keeps almost all template energy.
    np.testing.assert_allclose(basis.norms, (templates**2).sum(axis=(1, 2)), rtol=1e-3)


def test_cross_correlations_equal_direct_inner_products(templates, basis):
    shifted = _shift_templates(templates.astype(float), basis.offsets)
    rank = basis.rank
    cross = basis.dense_cross()
    for first, offset_index, second, lag in [(1, 0, 2, 3), (2, 4, 2, 0), (0, 2, 4, -7)]:
        columns = slice(second * rank, (second + 1) * rank)
        low_rank = basis.temporal[:, columns] @ basis.spatial[:, columns].T
        moving = np.zeros((3 * T, 32))
        moving[T + lag : 2 * T + lag] = low_rank
        direct = np.sum(shifted[first, offset_index] * moving[T : 2 * T])
        value = cross[first, offset_index, T - 1 + lag, second]
        assert value == pytest.approx(direct, rel=1e-4, abs=1e-3)


def test_basis_round_trips_through_arrays(planted, basis, whole):
    arrays = basis.to_arrays()
    assert all(isinstance(value, np.ndarray) for value in arrays.values())
    restored = DeconvBasis.from_arrays(arrays)
    spikes = deconvolve_chunk(
        planted["traces"], restored, core_start=0, core_stop=N_SAMPLES, **MATCH
    )
    np.testing.assert_array_equal(spikes, whole)


def test_sparse_cross_skips_only_disjoint_pairs_and_reads_dense_bases(planted, whole):
    """Templates on disjoint channels have no stored cross-correlation; a basis
    saved with the dense (n_units, upsample, 2 T - 1, n_units) layout reads
    back to the same matching."""
    templates = make_templates(make_probe())
    sparse = templates.copy()
    sparse[0, :, 16:] = 0.0  # unit 0 on channels 0-15 only
    sparse[4, :, :16] = 0.0  # unit 4 on channels 16-31 only
    basis = prepare_templates(sparse, pre_samples=PRE)
    overlapping = basis.overlap_units[basis.overlap_start[0] : basis.overlap_start[1]]
    assert 0 in overlapping and 4 not in overlapping
    assert basis.cross.size < basis.dense_cross().size
    legacy = basis.to_arrays()
    legacy["cross"] = basis.dense_cross()
    for key in ("cross_start", "overlap_start", "overlap_units"):
        del legacy[key]
    restored = DeconvBasis.from_arrays(legacy)
    np.testing.assert_array_equal(restored.dense_cross(), basis.dense_cross())
    kwargs = dict(core_start=0, core_stop=N_SAMPLES, **MATCH)
    np.testing.assert_array_equal(
        deconvolve_chunk(planted["traces"], restored, **kwargs),
        deconvolve_chunk(planted["traces"], basis, **kwargs),
    )


def test_empty_inputs_give_empty_tables(templates, basis):
    no_units = prepare_templates(np.zeros((0, T, 32), np.float32), pre_samples=PRE)
    traces = np.zeros((1_000, 32), np.float32)
    for current, window in [(no_units, traces), (basis, traces[: T - 1])]:
        spikes = deconvolve_chunk(
            window, current, core_start=0, core_stop=window.shape[0], **MATCH
        )
        assert spikes.dtype == SPIKE_DTYPE and spikes.size == 0
    zero_template = prepare_templates(np.zeros((1, T, 32), np.float32), pre_samples=PRE)
    spikes = deconvolve_chunk(
        traces + 1.0, zero_template, core_start=0, core_stop=1_000, **MATCH
    )
    assert spikes.size == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold": 0.0}, "threshold must be > 0, got 0.0"),
        ({"amplitude_min": 0.0}, "0 < amplitude_min <= amplitude_max"),
        ({"amplitude_max": 0.4}, "amplitude_max=0.4"),
        ({"refractory_samples": -1}, "refractory_samples must be >= 0, got -1"),
        ({"max_iterations": 0}, "max_iterations must be >= 1, got 0"),
        ({"refit_sweeps": -2}, "refit_sweeps must be >= 0, got -2"),
        ({"core_stop": 2_000}, "core_stop <= 1000, got 0 and 2000"),
    ],
)
def test_deconvolve_rejects_bad_arguments(basis, changes, message):
    arguments = {**MATCH, "core_start": 0, "core_stop": 1_000, **changes}
    with pytest.raises(ValueError, match=message):
        deconvolve_chunk(np.zeros((1_000, 32), np.float32), basis, **arguments)


def test_deconvolve_rejects_wrong_channel_count(basis):
    with pytest.raises(ValueError, match=r"window must have shape \(n_samples, 32\)"):
        deconvolve_chunk(
            np.zeros((1_000, 31), np.float32),
            basis,
            core_start=0,
            core_stop=10,
            **MATCH,
        )


@pytest.mark.parametrize(
    ("templates", "changes", "message"),
    [
        (np.zeros((2, 60)), {}, "templates must have shape"),
        (np.zeros((2, 2, 4)), {}, "at least 3 samples"),
        (np.full((1, 60, 4), np.nan), {}, "templates must be finite"),
        (
            np.zeros((1, 60, 4)),
            {"pre_samples": 60},
            r"pre_samples must lie in \[0, 59\]",
        ),
        (np.zeros((1, 60, 4)), {"rank": 0}, "rank must be >= 1, got 0"),
        (np.zeros((1, 60, 4)), {"upsample": 0}, "upsample must be >= 1, got 0"),
    ],
)
def test_prepare_rejects_bad_arguments(templates, changes, message):
    arguments = {"pre_samples": PRE, **changes}
    with pytest.raises(ValueError, match=message):
        prepare_templates(templates, **arguments)


def _weak_and_strong_unit():
    """Two units (template energies ~27 and ~108), alternating spikes at
    200, 500, ... in faint white noise: (templates, traces)."""
    rng = np.random.default_rng(11)
    n_t, n_ch = 30, 4
    templates = np.zeros((2, n_t, n_ch), dtype=np.float32)
    templates[0, 8:16, 0] = -3.0 * np.hanning(8)  # energy ~ 27
    templates[1, 8:16, 2] = -6.0 * np.hanning(8)  # energy ~ 108
    traces = 0.2 * rng.standard_normal((3000, n_ch)).astype(np.float32)
    for i, t in enumerate(np.arange(200, 2800, 300)):
        traces[t - 10 : t - 10 + n_t] += templates[i % 2]
    return templates, traces


_WEAK_STRONG_MATCH = {
    "core_start": 0,
    "core_stop": 3000,
    "amplitude_min": 0.7,
    "amplitude_max": 1.3,
    "refractory_samples": 10,
}


def test_noise_factors_raise_a_units_bar_without_changing_others():
    templates, traces = _weak_and_strong_unit()
    kwargs = dict(threshold=15.0, **_WEAK_STRONG_MATCH)
    plain = deconvolve_chunk(traces, prepare_templates(templates, pre_samples=10), **kwargs)
    assert sorted(plain["unit_index"].tolist()) == [0] * 5 + [1] * 4
    raised = deconvolve_chunk(
        traces,
        prepare_templates(templates, pre_samples=10, noise_factors=[4.0, 1.0]),
        **kwargs,
    )
    # unit 0 (energy ~27 < 15 * 4) is no longer significant; unit 1 is untouched
    assert raised["unit_index"].tolist() == [1] * 4
    np.testing.assert_array_equal(
        raised["sample_index"], plain["sample_index"][plain["unit_index"] == 1]
    )


def test_unit_thresholds_lower_the_bar_only_for_weak_units():
    from shardsort.deconvolve import unit_thresholds

    t = np.zeros((3, 30, 4), dtype=np.float32)
    for unit, peak in enumerate((2.0, 4.0, 12.0)):
        t[unit, 10, unit] = -peak  # a one-sample template: norm = peak^2
    basis = prepare_templates(t, pre_samples=10, noise_factors=[1.0, 1.0, 4.0])
    thresholds = unit_thresholds(basis, highest=25.0, lowest=9.0, recall_margin=1.0)
    # matched SNRs 2, 4 and 12 / 2 = 6: (snr - 1)^2 = 1, 9 and 25, clipped to [9, 25]
    np.testing.assert_allclose(thresholds, [9.0, 9.0, 25.0], rtol=1e-5)
    with pytest.raises(ValueError, match="0 < lowest <= highest"):
        unit_thresholds(basis, highest=5.0, lowest=9.0, recall_margin=1.0)
    with pytest.raises(ValueError, match="recall_margin must be >= 0"):
        unit_thresholds(basis, highest=25.0, lowest=9.0, recall_margin=-1.0)


def test_per_unit_thresholds_apply_to_their_own_unit_only():
    templates, traces = _weak_and_strong_unit()
    basis = prepare_templates(templates, pre_samples=10)
    kwargs = _WEAK_STRONG_MATCH
    both = deconvolve_chunk(traces, basis, threshold=[15.0, 15.0], **kwargs)
    assert sorted(both["unit_index"].tolist()) == [0] * 5 + [1] * 4
    np.testing.assert_array_equal(
        both, deconvolve_chunk(traces, basis, threshold=15.0, **kwargs)
    )
    strict = deconvolve_chunk(traces, basis, threshold=[60.0, 15.0], **kwargs)
    assert strict["unit_index"].tolist() == [1] * 4
    with pytest.raises(ValueError, match=r"threshold must be a number or have shape \(2,\)"):
        deconvolve_chunk(traces, basis, threshold=[15.0, 15.0, 15.0], **kwargs)
    with pytest.raises(ValueError, match="threshold must be > 0"):
        deconvolve_chunk(traces, basis, threshold=[15.0, 0.0], **kwargs)
