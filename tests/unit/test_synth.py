"""Synthetic ground-truth recordings."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from shardsort.synth import (
    DRIFT_STEP_UM,
    GENERATION_BLOCK_SAMPLES,
    SynthParams,
    drift_displacement_um,
    generate_spike_trains,
    generate_units,
    ground_truth_arrays,
    neuropixels_like_geometry,
    render_samples,
    spike_templates,
    write_recording,
)

#: Short recording with dense firing so that many spikes straddle the
#: borders of generation blocks and of write blocks.
DENSE = SynthParams(
    n_channels=16,
    duration_s=1.5,
    n_units=6,
    seed=5,
    rate_min_hz=40.0,
    rate_max_hz=80.0,
)


def _read(path, params: SynthParams) -> np.ndarray:
    return np.fromfile(path, dtype="<i2").reshape(params.n_samples, params.n_channels)


def _band_pass(traces_uv: np.ndarray, sampling_rate_hz: float) -> np.ndarray:
    sos = signal.butter(
        5, [300.0, 6000.0], btype="bandpass", fs=sampling_rate_hz, output="sos"
    )
    return signal.sosfiltfilt(sos, traces_uv, axis=0)


# ---------------------------------------------------------------------------
# Geometry and parameters
# ---------------------------------------------------------------------------


def test_geometry_is_a_staggered_two_column_layout():
    positions = neuropixels_like_geometry(6)
    assert positions.tolist() == [
        [43.0, 0.0],
        [11.0, 0.0],
        [59.0, 20.0],
        [27.0, 20.0],
        [43.0, 40.0],
        [11.0, 40.0],
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_channels": 0}, "n_channels must be >= 1 and <= 4096, got 0"),
        ({"n_channels": 2.5}, "n_channels must be an integer"),
        ({"noise_uv": -3.0}, r"noise_uv must be > 0, got -3.0"),
        ({"duration_s": -1.0}, "duration_s must be >= 0"),
        ({"sampling_rate_hz": 10000.0}, "sampling_rate_hz must be > 12000"),
        ({"snr_min": 30.0}, "snr_min must be <= snr_max"),
        ({"depth_min_um": 0.0}, "depth_min_um must be > 0"),
        ({"rate_max_hz": 600.0}, "rate_max_hz must leave a mean interval"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"noise_correlation_um": float("nan")}, "noise_correlation_um must be finite"),
        ({"drift_um": float("inf")}, "drift_um must be finite"),
        ({"drift_top_um": "up"}, "drift_top_um must be a number"),
        ({"drift_shape": "sine"}, "drift_shape must be one of"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthParams(**kwargs)


def test_derived_sizes():
    params = SynthParams(duration_s=2.0)
    assert params.n_samples == 60000
    assert params.trough_index == 30
    assert params.template_samples == 90
    assert params.refractory_samples == 60


# ---------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------


def test_units_trough_lies_on_the_declared_channel_and_sample():
    params = SynthParams(n_channels=64, n_units=12, seed=2)
    units = generate_units(params)
    templates = units["templates_uv"]
    assert templates.shape == (12, 90, 64)
    assert templates.dtype == np.float32
    positions = neuropixels_like_geometry(64)
    for unit in range(12):
        peak = units["peak_channel"][unit]
        time, channel = np.unravel_index(np.argmin(templates[unit]), (90, 64))
        assert (time, channel) == (params.trough_index, peak)
        assert templates[unit, time, peak] == -units["peak_amplitude_uv"][unit]
        # The peak channel is the channel nearest to the soma.
        distance = np.hypot(*(positions - units["unit_positions_um"][unit, :2]).T)
        assert peak == np.argmin(distance)
        # A positive after-hyperpolarization follows the trough.
        assert (
            templates[unit, time:, peak].max() > 0.1 * units["peak_amplitude_uv"][unit]
        )
        # Far channels see smaller, later troughs.
        far = np.argsort(distance)[8]
        if templates[unit, :, far].any():
            assert np.argmin(templates[unit, :, far]) >= time
            assert templates[unit, :, far].min() > templates[unit, time, peak]


def test_units_positions_and_snr_within_bounds():
    params = SynthParams(n_channels=32, n_units=200, seed=7, noise_uv=8.0)
    units = generate_units(params)
    x, y, z = units["unit_positions_um"].T
    assert np.all((x >= 11 - 20) & (x <= 59 + 20))
    assert np.all((y >= -20) & (y <= 300 + 20))
    assert np.all((z >= 15) & (z <= 60))
    np.testing.assert_allclose(
        units["snr"], units["peak_amplitude_uv"] / 8.0, rtol=1e-6
    )
    assert np.all(
        (units["snr"] >= 3.0 * (1 - 1e-6)) & (units["snr"] <= 25.0 * (1 + 1e-6))
    )
    assert np.mean(units["snr"] >= 5.0) > 0.5
    rates = units["firing_rate_hz"]
    assert np.all((rates >= 2.0) & (rates <= 15.0))


def test_units_are_seeded_and_stable_when_adding_units():
    few = generate_units(SynthParams(n_units=3, seed=4))
    more = generate_units(SynthParams(n_units=5, seed=4))
    other = generate_units(SynthParams(n_units=3, seed=5))
    np.testing.assert_array_equal(few["templates_uv"], more["templates_uv"][:3])
    assert not np.array_equal(few["templates_uv"], other["templates_uv"])


# ---------------------------------------------------------------------------
# Spike trains
# ---------------------------------------------------------------------------


def test_spike_trains_respect_refractory_period_and_rates():
    params = SynthParams(n_units=8, duration_s=300.0, seed=11)
    samples, units = generate_spike_trains(params)
    assert samples.dtype == np.int64
    assert units.dtype == np.int32
    assert np.all(np.diff(samples) >= 0)
    assert samples.min() >= params.trough_index
    post = params.template_samples - params.trough_index
    assert samples.max() <= params.n_samples - post
    rates = generate_units(params)["firing_rate_hz"]
    for unit in range(8):
        own = samples[units == unit]
        assert np.diff(own).min() > params.refractory_samples
        expected = rates[unit] * params.duration_s
        assert abs(len(own) - expected) < 4 * np.sqrt(expected)


def test_no_units_or_no_time_gives_empty_trains():
    for params in (SynthParams(n_units=0), SynthParams(duration_s=0.001)):
        samples, units = generate_spike_trains(params)
        assert samples.shape == units.shape == (0,)
        assert samples.dtype == np.int64
        assert units.dtype == np.int32


# ---------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------


def test_recording_bytes_are_deterministic_and_block_size_free(tmp_path):
    reference = tmp_path / "reference.bin"
    write_recording(reference, DENSE)
    expected = reference.read_bytes()
    assert len(expected) == DENSE.n_samples * DENSE.n_channels * 2
    for block_samples in (777, GENERATION_BLOCK_SAMPLES, 20000, 10**6):
        path = tmp_path / f"block{block_samples}.bin"
        write_recording(path, DENSE, block_samples=block_samples)
        assert path.read_bytes() == expected
    assert not list(tmp_path.glob("*.part"))
    other = tmp_path / "other.bin"
    write_recording(other, SynthParams(**{**DENSE.__dict__, "seed": 6}))
    assert other.read_bytes() != expected


def test_render_samples_matches_the_written_file(tmp_path):
    path = tmp_path / "recording.bin"
    write_recording(path, DENSE)
    whole = _read(path, DENSE)
    units = generate_units(DENSE)
    samples, labels = generate_spike_trains(DENSE)
    start, stop = GENERATION_BLOCK_SAMPLES - 50, GENERATION_BLOCK_SAMPLES + 70
    part = render_samples(
        units["templates_uv"],
        samples,
        labels,
        params=DENSE,
        start_sample=start,
        stop_sample=stop,
    )
    np.testing.assert_array_equal(part, whole[start:stop])


def test_spike_appears_at_its_trough_sample():
    params = SynthParams(n_channels=16, duration_s=0.5, n_units=2, seed=9)
    templates = generate_units(params)["templates_uv"]
    peak = int(np.argmin(templates[1].min(axis=0)))
    spike = 7000
    kwargs = {"params": params, "start_sample": 0, "stop_sample": params.n_samples}
    with_spike = render_samples(templates, np.array([spike]), np.array([1]), **kwargs)
    without = render_samples(templates, np.zeros(0, int), np.zeros(0, int), **kwargs)
    added_uv = (with_spike.astype(float) - without) * params.gain_to_uv
    window = added_uv[spike - params.trough_index : spike - params.trough_index + 90]
    np.testing.assert_allclose(window, templates[1], atol=params.gain_to_uv)
    assert np.argmin(added_uv[:, peak]) == spike
    outside = np.ones(params.n_samples, bool)
    outside[spike - params.trough_index : spike - params.trough_index + 90] = False
    assert not added_uv[outside].any()


def test_default_recording_is_not_clipped(tmp_path):
    params = SynthParams(duration_s=1.0, n_units=20)
    path = tmp_path / "recording.bin"
    write_recording(path, params)
    traces = _read(path, params)
    assert np.abs(traces.astype(np.int32)).max() < 32767 // 4


@pytest.mark.parametrize("correlation_um", [0.0, 20.0])
def test_noise_rms_in_band_matches_request(tmp_path, correlation_um):
    params = SynthParams(
        n_channels=32,
        duration_s=1.0,
        n_units=0,
        noise_uv=12.0,
        noise_correlation_um=correlation_um,
        seed=3,
    )
    path = tmp_path / "noise.bin"
    write_recording(path, params)
    traces_uv = _read(path, params) * params.gain_to_uv
    # Offsets and the slow component are there before filtering...
    assert np.abs(traces_uv.mean(axis=0)).max() > 12.0
    filtered = _band_pass(traces_uv, params.sampling_rate_hz)[3000:-3000]
    rms = filtered.std(axis=0)
    # ... and gone after it: only the requested noise is left.
    np.testing.assert_allclose(rms, 12.0, rtol=0.08)
    correlation = np.corrcoef(filtered.T)
    # Channels 0 and 2 are 25.6 um apart (16 um across, 20 um down).
    expected = np.exp(-25.6 / correlation_um) if correlation_um else 0.0
    assert abs(correlation[0, 2] - expected) < 0.05


def test_zero_duration_writes_an_empty_file(tmp_path):
    path = tmp_path / "empty.bin"
    write_recording(path, SynthParams(duration_s=0.0))
    assert path.read_bytes() == b""


def test_bad_render_arguments_are_rejected(tmp_path):
    params = SynthParams(n_channels=4, duration_s=0.1, n_units=0)
    empty_templates = np.zeros((0, 90, 4), np.float32)
    with pytest.raises(
        ValueError, match="stop_sample <= n_samples=3000, got 0 and 3001"
    ):
        render_samples(
            empty_templates,
            np.zeros(0, int),
            np.zeros(0, int),
            params=params,
            start_sample=0,
            stop_sample=3001,
        )
    with pytest.raises(ValueError, match=r"spike_unit_index must be in \[0, 0\), got"):
        render_samples(
            empty_templates,
            np.array([100]),
            np.array([0]),
            params=params,
            start_sample=0,
            stop_sample=10,
        )
    with pytest.raises(
        ValueError, match=r"templates_uv must have shape \(n_units, 90, 4\)"
    ):
        render_samples(
            np.zeros((1, 90, 5)),
            np.zeros(0, int),
            np.zeros(0, int),
            params=params,
            start_sample=0,
            stop_sample=10,
        )
    with pytest.raises(ValueError, match="block_samples must be >= 1, got 0"):
        write_recording(tmp_path / "x.bin", params, block_samples=0)


# ---------------------------------------------------------------------------
# Ground truth bundle
# ---------------------------------------------------------------------------


def test_ground_truth_arrays_are_consistent():
    params = SynthParams(n_channels=8, duration_s=2.0, n_units=3, seed=1)
    truth = ground_truth_arrays(params)
    samples, units = generate_spike_trains(params)
    np.testing.assert_array_equal(truth["spike_sample_index"], samples)
    np.testing.assert_array_equal(truth["spike_unit_index"], units)
    assert truth["templates_uv"].shape == (3, 90, 8)
    assert truth["positions_um"].shape == (8, 2)
    assert truth["unit_positions_um"].shape == (3, 3)
    assert int(truth["trough_index"]) == 30
    assert int(truth["n_samples"]) == 60000
    empty = ground_truth_arrays(SynthParams(n_channels=8, n_units=0))
    assert empty["templates_uv"].shape == (0, 90, 8)
    assert empty["peak_channel"].shape == empty["snr"].shape == (0,)
    assert empty["unit_positions_um"].shape == (0, 3)


# ---------------------------------------------------------------------------
# Drift
# ---------------------------------------------------------------------------


def test_drift_time_courses_and_depth_profile():
    linear = SynthParams(n_channels=32, duration_s=10.0, drift_um=20.0)
    np.testing.assert_allclose(
        drift_displacement_um(linear, [0.0, 5.0, 10.0, 20.0], 100.0), [0.0, 10.0, 20.0, 20.0]
    )
    step = SynthParams(n_channels=32, duration_s=10.0, drift_um=-8.0, drift_shape="step")
    np.testing.assert_allclose(drift_displacement_um(step, [4.99, 5.0], 0.0), [0.0, -8.0])
    # Non-rigid: drift_um at y = 0, drift_top_um at the top channel (y = 300).
    sheared = SynthParams(n_channels=32, duration_s=10.0, drift_um=-10.0, drift_top_um=20.0)
    np.testing.assert_allclose(
        drift_displacement_um(sheared, 10.0, [-50.0, 0.0, 150.0, 300.0, 400.0]),
        [-10.0, -10.0, 5.0, 20.0, 20.0],
    )
    assert not SynthParams().drifts and sheared.drifts


def test_without_drift_spikes_use_the_unit_templates():
    params = SynthParams(n_channels=8, duration_s=1.0, n_units=3, seed=2)
    units = generate_units(params)
    samples, labels = generate_spike_trains(params)
    templates, index = spike_templates(params, units["templates_uv"], samples, labels)
    np.testing.assert_array_equal(templates, units["templates_uv"])
    np.testing.assert_array_equal(index, labels)
    assert not ground_truth_arrays(params)["spike_displacement_um"].any()


def test_drifting_spikes_move_up_the_probe():
    params = SynthParams(
        n_channels=32, duration_s=4.0, n_units=4, seed=3, drift_um=40.0, rate_min_hz=10.0
    )
    units = generate_units(params)
    samples, labels = generate_spike_trains(params)
    templates, index = spike_templates(params, units["templates_uv"], samples, labels)
    truth = ground_truth_arrays(params)["spike_displacement_um"]
    depth = neuropixels_like_geometry(params.n_channels)[:, 1]

    def footprint_depth(template):
        weight = np.ptp(template, axis=0) ** 2
        return weight @ depth / weight.sum()

    checked = 0
    for unit in range(params.n_units):
        mine = np.flatnonzero(labels == unit)
        first, last = templates[index[mine[0]]], templates[index[mine[-1]]]
        moved = truth[mine[-1]] - truth[mine[0]]
        assert moved > 30.0
        if 30.0 < units["unit_positions_um"][unit, 1] < 260.0:  # away from the ends
            # The amplitude-weighted depth of the footprint follows the drift.
            assert abs(footprint_depth(last) - footprint_depth(first) - moved) < 8.0, unit
            checked += 1
    assert checked >= 2
    # Each (unit, rounded displacement) has one template.
    assert len(templates) <= params.n_units * (40.0 / DRIFT_STEP_UM + 1)
    alone, _ = spike_templates(params, units["templates_uv"], samples[:1], labels[:1])
    np.testing.assert_array_equal(templates[index[0]], alone[0])


def test_drifting_recording_is_written_from_the_moved_templates(tmp_path):
    params = SynthParams(n_channels=16, duration_s=1.0, n_units=3, seed=4, drift_um=25.0)
    path = tmp_path / "drift.bin"
    write_recording(path, params, block_samples=7000)
    units = generate_units(params)
    samples, labels = generate_spike_trains(params)
    templates, index = spike_templates(params, units["templates_uv"], samples, labels)
    whole = render_samples(
        templates, samples, index, params=params, start_sample=0, stop_sample=params.n_samples
    )
    np.testing.assert_array_equal(_read(path, params), whole)
    still = SynthParams(**{**params.__dict__, "drift_um": 0.0})
    write_recording(tmp_path / "still.bin", still)
    assert (tmp_path / "still.bin").read_bytes() != path.read_bytes()
