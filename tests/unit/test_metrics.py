"""Tests for shardsort.metrics: every metric on a case with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import silhouette_samples

from shardsort import metrics
from shardsort.tables import SPIKE_DTYPE

FS = 30_000.0


def make_spikes(samples, units, amplitudes=None) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.int64)
    order = np.argsort(samples, kind="stable")
    spikes = np.zeros(samples.size, dtype=SPIKE_DTYPE)
    spikes["sample_index"] = samples[order]
    spikes["unit_index"] = np.asarray(units)[order]
    spikes["amplitude"] = 1.0 if amplitudes is None else np.asarray(amplitudes)[order]
    return spikes


def exactly_standard(n: int, n_features: int, seed: int) -> np.ndarray:
    """Points whose sample mean is 0 and sample covariance the identity."""
    points = np.random.default_rng(seed).normal(size=(n, n_features))
    points -= points.mean(axis=0)
    chol = np.linalg.cholesky(np.cov(points, rowvar=False))
    return points @ np.linalg.inv(chol).T


# ---------------------------------------------------------------------------
# Spike-train metrics
# ---------------------------------------------------------------------------


def test_firing_rate_counts_over_duration():
    spikes = make_spikes([0, 10, 20, 30, 40], [0, 0, 0, 2, 2])
    rate = metrics.firing_rate(spikes, n_units=3, n_samples=60_000, sampling_rate_hz=FS)
    np.testing.assert_allclose(rate, [1.5, 0.0, 1.0])


def test_firing_rate_of_zero_length_recording_is_nan():
    rate = metrics.firing_rate(
        make_spikes([], []), n_units=2, n_samples=0, sampling_rate_hz=FS
    )
    assert rate.shape == (2,) and np.all(np.isnan(rate))


def test_presence_ratio_uniform_half_and_silent_units():
    n_samples = 100_000
    whole = np.arange(0, n_samples, 500)
    first_half = np.arange(0, n_samples // 2, 500)
    spikes = make_spikes(
        np.concatenate([whole, first_half]),
        np.r_[np.zeros(whole.size, int), np.ones(first_half.size, int)],
    )
    ratio = metrics.presence_ratio(spikes, n_units=3, n_samples=n_samples, n_bins=100)
    np.testing.assert_array_equal(ratio, [1.0, 0.5, 0.0])


def test_isi_violations_counts_planted_violations_exactly():
    n_samples = int(10 * FS)
    regular = np.arange(0, n_samples - 100, 3000)  # every 100 ms: 100 spikes
    extra = regular[[3, 17, 40, 41, 80]] + 30  # 1 ms later: 5 violations
    duplicate = regular[[50]]  # same sample: removed, not a violation
    other = np.arange(0, n_samples, 40)  # unit 1: 1.33 ms apart, all violate
    spikes = make_spikes(
        np.concatenate([regular, extra, duplicate, other]),
        np.r_[np.zeros(106, int), np.ones(other.size, int)],
    )
    ratio, count = metrics.isi_violations(
        spikes, n_units=3, n_samples=n_samples, sampling_rate_hz=FS
    )
    np.testing.assert_array_equal(count, [5, other.size - 1, 0])
    expected = 5 * 10.0 / (2 * 105**2 * 0.0015)
    assert ratio[0] == pytest.approx(expected, rel=1e-12)
    assert ratio[1] == pytest.approx(
        (other.size - 1) * 10.0 / (2 * other.size**2 * 0.0015), rel=1e-12
    )
    assert np.isnan(ratio[2])


def test_isi_violations_min_isi_removes_near_duplicates():
    spikes = make_spikes([0, 5, 40, 3000], [0, 0, 0, 0])
    _, count = metrics.isi_violations(
        spikes, n_units=1, n_samples=6000, sampling_rate_hz=FS, min_isi_s=0.0002
    )
    assert count[0] == 1  # 5 is dropped (0.17 ms), then 40 violates


def test_isi_violations_rejects_min_isi_above_threshold():
    with pytest.raises(ValueError, match=r"min_isi_s must be >= 0 and < isi_thresh"):
        metrics.isi_violations(
            make_spikes([], []),
            n_units=1,
            n_samples=10,
            sampling_rate_hz=FS,
            min_isi_s=0.002,
        )


def truncated_normal(n: int, cut_sd: float) -> np.ndarray:
    """Evenly spaced quantiles of N(1, 0.2) above mean - cut_sd * sd."""
    lost = stats.norm.cdf(-cut_sd)
    return 1 + 0.2 * stats.norm.ppf(np.linspace(lost, 1, n + 2)[1:-1])


@pytest.mark.parametrize("cut_sd", [1.0, 1.5])
def test_amplitude_cutoff_recovers_missing_fraction(cut_sd):
    lost = stats.norm.cdf(-cut_sd)
    estimate = metrics.amplitude_cutoff(truncated_normal(20_000, cut_sd))
    assert estimate == pytest.approx(lost / (1 - lost), abs=0.012)


def test_amplitude_cutoff_complete_and_half_distributions():
    assert metrics.amplitude_cutoff(truncated_normal(20_000, 6.0)) < 1e-3
    assert metrics.amplitude_cutoff(truncated_normal(20_000, 0.0)) == 0.5
    assert np.isnan(metrics.amplitude_cutoff(np.array([])))


def test_snr_is_best_channel_ptp_over_noise():
    templates = np.zeros((2, 20, 3), np.float32)
    templates[0, 10, 1] = -5.0
    templates[0, 12, 1] = 2.0
    templates[0, 10, 2] = -6.0
    templates[1, 10, 0] = -3.0
    np.testing.assert_allclose(metrics.snr(templates), [7.0, 3.0])
    np.testing.assert_allclose(
        metrics.snr(templates, noise_levels=[1.0, 0.5, 4.0]), [14.0, 3.0]
    )
    with pytest.raises(ValueError, match="noise_levels must be 3 values > 0"):
        metrics.snr(templates, noise_levels=[1.0, 0.0, 1.0])


# ---------------------------------------------------------------------------
# PC-space metrics
# ---------------------------------------------------------------------------


def test_mahalanobis_metrics_exact_on_whitened_cluster():
    own = exactly_standard(40, 3, seed=1)
    radii = np.linspace(1.0, 8.0, 60)
    directions = np.eye(3)[np.arange(60) % 3]
    other = radii[:, None] * directions
    isolation, l_ratio = metrics.mahalanobis_metrics(own, other)
    assert isolation == pytest.approx(radii[39] ** 2, rel=1e-9)
    assert l_ratio == pytest.approx(stats.chi2.sf(radii**2, 3).sum() / 40, rel=1e-9)


def test_mahalanobis_metrics_undefined_cases():
    own = exactly_standard(40, 3, seed=1)
    isolation, l_ratio = metrics.mahalanobis_metrics(own, own[:10] + 5)
    assert np.isnan(isolation) and np.isfinite(l_ratio)  # fewer others than own
    assert np.all(np.isnan(metrics.mahalanobis_metrics(own[:3], own)))  # n <= dims
    flat = np.c_[own[:, :2], np.zeros(40)]
    assert np.all(np.isnan(metrics.mahalanobis_metrics(flat, own)))  # singular
    assert np.all(np.isnan(metrics.mahalanobis_metrics(own, np.zeros((0, 3)))))


def test_d_prime_of_gaussian_clusters_matches_separation():
    rng = np.random.default_rng(2)
    own = rng.normal(size=(2000, 6))
    other = rng.normal(size=(2000, 6))
    other[:, 2] += 3.0
    assert metrics.d_prime(own, other) == pytest.approx(3.0, abs=0.15)
    assert np.isnan(metrics.d_prime(own[:1], other))


def test_nearest_neighbor_rates_separated_and_mixed():
    rng = np.random.default_rng(3)
    own = rng.normal(size=(300, 4))
    far = rng.normal(size=(300, 4)) + 50.0
    assert metrics.nearest_neighbor_metrics(own, far) == (1.0, 0.0)
    same = rng.normal(size=(300, 4))
    hit, miss = metrics.nearest_neighbor_metrics(own, same, n_neighbors=5)
    assert 0.4 < hit < 0.6 and 0.4 < miss < 0.6
    assert np.all(np.isnan(metrics.nearest_neighbor_metrics(own[:1], far)))


def test_nearest_neighbor_rates_ignore_self_with_duplicate_points():
    own = np.zeros((4, 2))
    other = np.full((4, 2), 10.0)
    assert metrics.nearest_neighbor_metrics(own, other) == (1.0, 0.0)


def test_silhouette_equals_sklearn_definition():
    rng = np.random.default_rng(4)
    own = rng.normal(size=(30, 3))
    other = np.concatenate([rng.normal(size=(20, 3)) + 2, rng.normal(size=(25, 3)) - 3])
    labels_other = np.r_[np.full(20, 7), np.full(25, 5)]
    expected = silhouette_samples(
        np.concatenate([own, other]), np.r_[np.zeros(30, int), labels_other]
    )[:30].mean()
    assert metrics.silhouette(own, other, labels_other) == pytest.approx(expected)
    assert np.isnan(metrics.silhouette(own[:1], other, labels_other))


def test_pc_metrics_reject_mismatched_feature_counts():
    with pytest.raises(ValueError, match=r"features_other must have as many features"):
        metrics.d_prime(np.zeros((5, 3)), np.zeros((5, 4)))


# ---------------------------------------------------------------------------
# Depth and drift
# ---------------------------------------------------------------------------


def test_spike_depths_from_pc_features():
    positions = np.array([[0.0, 0.0], [0.0, 20.0], [0.0, 40.0]])
    pc_feature_ind = np.array([[0, 1], [2, 1]])
    features = np.zeros((3, 2, 2), np.float32)
    features[0, :, 1] = [3.0, 4.0]  # all energy on channel 1
    features[1, 0, :] = [1.0, 1.0]  # equal energy on channels 2 and 1
    depths = metrics.spike_depths_from_pc_features(
        features, pc_feature_ind, np.array([0, 1, 1]), positions
    )
    np.testing.assert_allclose(depths, [20.0, 30.0, np.nan])


def test_drift_metrics_linear_and_back_and_forth():
    duration_s = 510.0  # ten intervals of 51 s
    n_samples = int(duration_s * FS)
    times = (np.arange(1530) + 0.5) * (duration_s / 1530)  # 153 per interval
    samples = np.round(times * FS).astype(np.int64)
    linear = 100.0 + 2.0 * times
    tent = 100.0 + 2.0 * np.minimum(times, duration_s - times)
    spikes = make_spikes(np.r_[samples, samples], np.r_[np.zeros(1530), np.ones(1530)])
    depths = np.r_[linear, tent][np.argsort(np.r_[samples, samples], kind="stable")]
    max_drift, cumulative = metrics.drift_metrics(
        spikes, depths, n_units=3, n_samples=n_samples, sampling_rate_hz=FS
    )
    step = 2.0 * 51.0
    np.testing.assert_allclose(max_drift[:2], [9 * step, 4 * step], rtol=1e-3)
    np.testing.assert_allclose(cumulative[:2], [9 * step, 8 * step], rtol=1e-3)
    assert np.isnan(max_drift[2]) and np.isnan(cumulative[2])


def test_drift_metrics_need_two_populated_intervals():
    spikes = make_spikes(np.arange(20) * 100, np.zeros(20, int))
    max_drift, _ = metrics.drift_metrics(
        spikes, np.ones(20), n_units=1, n_samples=int(200 * FS), sampling_rate_hz=FS
    )
    assert np.isnan(max_drift[0])


# ---------------------------------------------------------------------------
# All metrics together
# ---------------------------------------------------------------------------


def synthetic_sort(seed: int = 5):
    """Three units: 0 and 1 share channels 0-3 and separate by 4 SD; 2 is alone."""
    rng = np.random.default_rng(seed)
    n_per_unit, n_pcs = 400, 3
    n_samples = int(120 * FS)
    units = np.repeat(np.arange(3), n_per_unit)
    samples = rng.choice(n_samples, size=units.size, replace=False)
    order = np.argsort(samples)
    units, samples = units[order], samples[order]
    pc_feature_ind = np.array([[0, 1, 2, 3, 4], [1, 0, 2, 3, 5], [6, 7, 8, 9, 10]])
    features = rng.normal(size=(units.size, n_pcs, 5)).astype(np.float32)
    features[units == 1, 0, 1] += 4.0  # channel 0 of unit 1 sits in column 1
    templates = np.zeros((3, 30, 11), np.float32)
    for unit, channels in enumerate(pc_feature_ind):
        templates[unit, 10, channels] = -np.linspace(8, 4, 5)
    spikes = make_spikes(samples, units, rng.normal(1.0, 0.1, units.size))
    return spikes, n_samples, templates, features, pc_feature_ind


def test_compute_quality_metrics_on_synthetic_sort():
    spikes, n_samples, templates, features, pc_feature_ind = synthetic_sort()
    result = metrics.compute_quality_metrics(
        spikes,
        n_samples=n_samples,
        sampling_rate_hz=FS,
        templates=templates,
        pc_features=features,
        pc_feature_ind=pc_feature_ind,
        spike_depths_um=np.full(spikes.size, 50.0),
        max_spikes_per_unit=300,
    )
    assert tuple(result) == metrics.METRIC_NAMES
    assert all(value.shape == (3,) for value in result.values())
    np.testing.assert_allclose(result["firing_rate"], 400 / 120.0)
    np.testing.assert_allclose(result["snr"], 8.0)
    assert np.all(result["d_prime"][:2] > 3.0)
    assert np.all(result["nn_hit_rate"][:2] > 0.9)
    assert np.all(result["isolation_distance"][:2] > 20.0)
    # Unit 2 shares no channel with the others: nothing to compare against.
    for name in ("isolation_distance", "l_ratio", "d_prime", "silhouette_score"):
        assert np.isnan(result[name][2])
    np.testing.assert_array_equal(result["max_drift"], 0.0)
    again = metrics.compute_quality_metrics(
        spikes,
        n_samples=n_samples,
        sampling_rate_hz=FS,
        templates=templates,
        pc_features=features,
        pc_feature_ind=pc_feature_ind,
        max_spikes_per_unit=300,
    )
    for name in metrics.METRIC_NAMES[:-2]:
        np.testing.assert_array_equal(result[name], again[name])
    assert np.all(np.isnan(again["max_drift"]))


def test_compute_quality_metrics_small_unit_gets_nan():
    spikes, n_samples, templates, features, pc_feature_ind = synthetic_sort()
    keep = (spikes["unit_index"] != 1) | (np.cumsum(spikes["unit_index"] == 1) <= 5)
    result = metrics.compute_quality_metrics(
        spikes[keep],
        n_samples=n_samples,
        sampling_rate_hz=FS,
        templates=templates,
        pc_features=features[keep],
        pc_feature_ind=pc_feature_ind,
    )
    assert result["firing_rate"][1] == pytest.approx(5 / 120.0)
    for name in ("amplitude_cutoff", "isolation_distance", "d_prime", "nn_hit_rate"):
        assert np.isnan(result[name][1])


def test_compute_quality_metrics_empty_inputs():
    result = metrics.compute_quality_metrics(
        make_spikes([], []),
        n_samples=1000,
        sampling_rate_hz=FS,
        templates=np.zeros((0, 30, 4), np.float32),
        pc_features=np.zeros((0, 3, 2), np.float32),
        pc_feature_ind=np.zeros((0, 2), int),
    )
    assert all(value.shape == (0,) for value in result.values())
    result = metrics.compute_quality_metrics(
        make_spikes([], []),
        n_samples=1000,
        sampling_rate_hz=FS,
        templates=np.zeros((2, 30, 4), np.float32),
        pc_features=np.zeros((0, 3, 2), np.float32),
        pc_feature_ind=np.zeros((2, 2), int),
    )
    np.testing.assert_array_equal(result["firing_rate"], [0.0, 0.0])
    assert np.all(np.isnan(result["d_prime"]))


def test_compute_quality_metrics_argument_errors():
    spikes = make_spikes([0, 5], [0, 3])
    kwargs = {
        "n_samples": 100,
        "sampling_rate_hz": FS,
        "templates": np.zeros((2, 10, 4), np.float32),
        "pc_features": np.zeros((2, 3, 2), np.float32),
        "pc_feature_ind": np.zeros((2, 2), int),
    }
    with pytest.raises(ValueError, match=r"unit_index'\] must lie in \[0, 2\)"):
        metrics.compute_quality_metrics(spikes, **kwargs)
    spikes = make_spikes([0, 500], [0, 1])
    with pytest.raises(ValueError, match=r"sample_index'\] must lie in \[0, n_samples"):
        metrics.compute_quality_metrics(spikes, **kwargs)
    spikes = make_spikes([0, 50], [0, 1])
    with pytest.raises(ValueError, match=r"pc_feature_ind must have shape \(2, 2\)"):
        metrics.compute_quality_metrics(
            spikes, **{**kwargs, "pc_feature_ind": np.zeros((2, 3), int)}
        )
    with pytest.raises(ValueError, match=r"pc_feature_ind must lie in \[0, 4\)"):
        metrics.compute_quality_metrics(
            spikes, **{**kwargs, "pc_feature_ind": np.full((2, 2), 4)}
        )
    with pytest.raises(ValueError, match="max_spikes_per_unit must be >= 2, got 1"):
        metrics.compute_quality_metrics(spikes, **kwargs, max_spikes_per_unit=1)
    with pytest.raises(ValueError, match="sampling_rate_hz must be a finite number"):
        metrics.firing_rate(spikes, n_units=2, n_samples=100, sampling_rate_hz=-1.0)
