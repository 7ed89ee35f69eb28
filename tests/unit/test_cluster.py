"""Tests of the clustering kernel (shardsort.cluster)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from shardsort.cluster import bimodality_score, cluster_spikes

N_NEIGHBOURS, N_PCS = 4, 3
N_FEATURES = N_NEIGHBOURS * N_PCS


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1):
        yield


def _blobs(rng, sizes, centres):
    """Gaussian clusters (unit noise) as (n, k, P) float32 features + truth."""
    truth = np.repeat(np.arange(len(sizes)), sizes)
    flat = rng.normal(size=(truth.size, N_FEATURES)) + np.asarray(centres)[truth]
    return flat.reshape(-1, N_NEIGHBOURS, N_PCS).astype(np.float32), truth


def _random_centres(rng, n, norm):
    """``n`` random centres at distance ``norm`` from the origin."""
    centres = rng.normal(size=(n, N_FEATURES))
    return norm * centres / np.linalg.norm(centres, axis=1, keepdims=True)


def _one_channel(n):
    return np.zeros(n, dtype=np.int64)


def _n_units(labels):
    return np.unique(labels[labels >= 0]).size


# --- bimodality_score ------------------------------------------------------


def test_bimodality_score_is_low_for_unimodal_samples():
    rng = np.random.default_rng(0)
    for sample in (
        rng.normal(size=3000),
        rng.uniform(size=3000),
        rng.gamma(2, size=3000),
    ):
        assert bimodality_score(sample)[0] < 2.0


def test_bimodality_score_is_high_for_two_modes_and_cuts_between_them():
    rng = np.random.default_rng(1)
    sample = np.r_[rng.normal(-3, 1, 1000), rng.normal(3, 1, 1000)]
    score, cut = bimodality_score(sample)
    assert score > 5.0
    assert -1.0 < cut < 1.0


def test_bimodality_score_degenerate_samples():
    assert bimodality_score([1.0, 2.0, 3.0])[0] == 0.0
    score, cut = bimodality_score(np.full(50, 7.0))
    assert score == 0.0 and np.isnan(cut)


# --- accuracy on constructed feature sets ------------------------------------


def test_four_separated_clusters_of_different_sizes_are_recovered():
    rng = np.random.default_rng(2)
    features, truth = _blobs(rng, [1500, 600, 200, 60], _random_centres(rng, 4, 12.0))
    labels = cluster_spikes(features, main_channels=_one_channel(truth.size), seed=0)
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    assert _n_units(labels) == 4
    assert adjusted_rand_score(truth, labels) >= 0.95


def test_touching_clusters_bimodal_along_one_axis_are_split():
    rng = np.random.default_rng(3)
    centres = np.zeros((2, N_FEATURES))
    centres[1, 0] = 4.5  # 4.5 noise deviations apart: touching but bimodal
    features, truth = _blobs(rng, [800, 800], centres)
    labels = cluster_spikes(features, main_channels=_one_channel(truth.size), seed=0)
    assert _n_units(labels) == 2
    assert adjusted_rand_score(truth, labels) >= 0.8


def test_small_distant_cluster_beside_a_big_one_is_split():
    rng = np.random.default_rng(4)
    centres = np.zeros((2, N_FEATURES))
    centres[1, :3] = 6.0  # about 10 noise deviations away
    features, truth = _blobs(rng, [2000, 60], centres)
    labels = cluster_spikes(features, main_channels=_one_channel(truth.size), seed=0)
    assert _n_units(labels) == 2
    assert np.mean(labels[truth == 1] == labels[truth == 1][0]) >= 0.95
    assert adjusted_rand_score(truth, labels) >= 0.9


@pytest.mark.parametrize("shape", ["uniform slab", "skewed drift"])
def test_one_elongated_cluster_is_not_split(shape):
    rng = np.random.default_rng(5)
    n = 3000
    template = _random_centres(rng, 1, 15.0)[0]
    if shape == "uniform slab":
        scale = rng.uniform(0.4, 1.6, n)
    else:
        scale = 0.5 + rng.gamma(2.0, 0.2, n)
    flat = rng.normal(size=(n, N_FEATURES)) + scale[:, None] * template
    features = flat.reshape(n, N_NEIGHBOURS, N_PCS)
    labels = cluster_spikes(features, main_channels=_one_channel(n), seed=0)
    assert _n_units(labels) == 1
    assert np.mean(labels == 0) >= 0.97


def test_distant_outliers_are_triaged():
    rng = np.random.default_rng(6)
    features, _ = _blobs(rng, [800], np.zeros((1, N_FEATURES)))
    outliers = _random_centres(rng, 6, 25.0).reshape(-1, N_NEIGHBOURS, N_PCS)
    features = np.concatenate([features, outliers.astype(np.float32)])
    labels = cluster_spikes(features, main_channels=_one_channel(806), seed=0)
    np.testing.assert_array_equal(labels[800:], -1)
    assert np.mean(labels[:800] == 0) >= 0.98


def test_min_cluster_size_is_respected():
    rng = np.random.default_rng(7)
    features, truth = _blobs(rng, [400, 25], _random_centres(rng, 2, 15.0))
    main = _one_channel(truth.size)
    strict = cluster_spikes(features, main_channels=main, seed=0, min_cluster_size=30)
    assert _n_units(strict) == 1
    np.testing.assert_array_equal(strict[truth == 1], -1)
    loose = cluster_spikes(features, main_channels=main, seed=0, min_cluster_size=20)
    assert _n_units(loose) == 2
    assert adjusted_rand_score(truth, loose) >= 0.9


def test_spikes_outside_the_fit_subsample_are_labelled():
    rng = np.random.default_rng(8)
    features, truth = _blobs(rng, [1500, 1000, 500], _random_centres(rng, 3, 12.0))
    labels = cluster_spikes(
        features, main_channels=_one_channel(truth.size), seed=0, max_fit_spikes=400
    )
    assert _n_units(labels) == 3
    assert adjusted_rand_score(truth, labels) >= 0.95


# --- contract: numbering, channels, determinism, edge cases ------------------


def test_channels_are_clustered_independently_and_numbered_in_order():
    rng = np.random.default_rng(9)
    a, _ = _blobs(rng, [300, 200], _random_centres(rng, 2, 12.0))
    b, _ = _blobs(rng, [250, 150], _random_centres(rng, 2, 12.0))
    features = np.concatenate([a, b])
    main = np.repeat([3, 7], [500, 400])
    labels = cluster_spikes(features, main_channels=main, seed=4)
    alone_3 = cluster_spikes(a, main_channels=main[:500], seed=4)
    alone_7 = cluster_spikes(b, main_channels=main[500:], seed=4)
    np.testing.assert_array_equal(labels[:500], alone_3)
    np.testing.assert_array_equal(labels[500:], np.where(alone_7 >= 0, alone_7 + 2, -1))
    np.testing.assert_array_equal(np.unique(labels[labels >= 0]), [0, 1, 2, 3])


def test_units_of_a_channel_are_numbered_by_decreasing_size_of_mean():
    rng = np.random.default_rng(10)
    centres = np.zeros((3, N_FEATURES))
    centres[:, 0] = [10.0, -30.0, 20.0]
    features, truth = _blobs(rng, [200, 200, 200], centres)
    labels = cluster_spikes(features, main_channels=_one_channel(600), seed=0)
    np.testing.assert_array_equal([labels[truth == t][0] for t in (1, 2, 0)], [0, 1, 2])


def test_same_seed_same_labels_and_row_order_does_not_matter():
    rng = np.random.default_rng(11)
    features, truth = _blobs(rng, [700, 300, 120], _random_centres(rng, 3, 9.0))
    main = rng.integers(0, 2, truth.size)
    labels = cluster_spikes(features, main_channels=main, seed=5, max_fit_spikes=300)
    again = cluster_spikes(features, main_channels=main, seed=5, max_fit_spikes=300)
    np.testing.assert_array_equal(labels, again)
    permutation = rng.permutation(truth.size)
    permuted = cluster_spikes(
        features[permutation],
        main_channels=main[permutation],
        seed=5,
        max_fit_spikes=300,
    )
    np.testing.assert_array_equal(permuted, labels[permutation])


def test_empty_input_gives_empty_labels():
    labels = cluster_spikes(
        np.zeros((0, N_NEIGHBOURS, N_PCS), np.float32),
        main_channels=np.zeros(0, np.int64),
        seed=0,
    )
    assert labels.shape == (0,) and labels.dtype == np.int32


def test_single_spike():
    features = np.ones((1, N_NEIGHBOURS, N_PCS), np.float32)
    main = np.array([2])
    np.testing.assert_array_equal(
        cluster_spikes(features, main_channels=main, seed=0), [-1]
    )
    labels = cluster_spikes(features, main_channels=main, seed=0, min_cluster_size=1)
    np.testing.assert_array_equal(labels, [0])


def test_identical_spikes_form_one_unit():
    features = np.full((50, N_NEIGHBOURS, N_PCS), 3.0, np.float32)
    labels = cluster_spikes(features, main_channels=_one_channel(50), seed=0)
    np.testing.assert_array_equal(labels, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": np.zeros(5)}, r"features must be 2-D .* got shape \(5,\)"),
        ({"features": np.zeros((5, 2), int)}, "features must be a float array"),
        ({"features": np.full((5, 2), np.nan)}, "features must be finite"),
        ({"main_channels": np.zeros(4, int)}, r"main_channels must have shape \(5,\)"),
        (
            {"main_channels": np.full(5, -1)},
            "main_channels must be >= 0, got minimum -1",
        ),
        ({"main_channels": np.zeros(5)}, "main_channels must be integers"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"min_cluster_size": 0}, "min_cluster_size must be an integer >= 1, got 0"),
        ({"n_local_pcs": 0}, "n_local_pcs must be an integer >= 1, got 0"),
        ({"max_depth": -1}, "max_depth must be an integer >= 0, got -1"),
        ({"max_fit_spikes": 5}, "max_fit_spikes must be an integer >= 20, got 5"),
        ({"split_threshold": 0.0}, r"split_threshold must be > 0, got 0.0"),
        ({"triage_quantile": 1.5}, r"triage_quantile must be in \(0, 1\], got 1.5"),
    ],
)
def test_bad_arguments_raise(change, message):
    arguments = {
        "features": np.zeros((5, 2), np.float32),
        "main_channels": np.zeros(5, int),
        "seed": 0,
    }
    arguments.update(change)
    features = arguments.pop("features")
    with pytest.raises(ValueError, match=message):
        cluster_spikes(features, **arguments)


# --- realistic: features of synthetic waveforms ------------------------------


def _biphasic(n_samples, trough_width, peak_delay, peak_ratio):
    t = np.arange(n_samples) - n_samples // 3
    trough = -np.exp(-0.5 * (t / trough_width) ** 2)
    peak = peak_ratio * np.exp(-0.5 * ((t - peak_delay) / (2.5 * trough_width)) ** 2)
    return trough + peak


def test_waveform_features_of_four_neurons_are_sorted():
    """Four neurons on 8 channels, two of them sharing a main channel."""
    rng = np.random.default_rng(12)
    n_channels, n_samples = 8, 32
    # (main channel, trough amplitude, footprint decay, trough width, delay, ratio)
    neurons = [
        (2, 12.0, 0.45, 1.0, 5.0, 0.3),
        (2, 9.0, 0.75, 2.0, 9.0, 0.6),
        (5, 10.0, 0.5, 1.3, 6.0, 0.4),
        (6, 14.0, 0.4, 1.6, 7.0, 0.25),
    ]
    counts = [500, 300, 400, 200]
    truth = np.repeat(np.arange(len(neurons)), counts)
    channels = np.arange(n_channels)
    waveforms = np.empty((truth.size, n_samples, n_channels))
    for unit, (main, amplitude, decay, width, delay, ratio) in enumerate(neurons):
        footprint = amplitude * decay ** np.abs(channels - main)
        template = _biphasic(n_samples, width, delay, ratio)[:, None] * footprint
        scale = rng.normal(1.0, 0.08, counts[unit])
        waveforms[truth == unit] = scale[:, None, None] * template
    waveforms += rng.normal(size=waveforms.shape)
    trough = n_samples // 3
    main_channels = np.argmin(waveforms[:, trough - 1 : trough + 2].min(axis=1), axis=1)
    # Temporal PCA basis and features on all 8 channels, nearest first.
    _, _, components = np.linalg.svd(
        waveforms[np.arange(truth.size), :, main_channels], full_matrices=False
    )
    basis = components[:3].T
    order = np.argsort(
        np.abs(channels[:, None] - channels[None]), axis=1, kind="stable"
    )
    local = np.take_along_axis(waveforms, order[main_channels][:, None, :], axis=2)
    features = np.einsum("ntk,tp->nkp", local, basis).astype(np.float32)

    labels = cluster_spikes(features, main_channels=main_channels, seed=0)
    assert adjusted_rand_score(truth, labels) >= 0.9


def test_isotonic_fit_equals_scipy():
    from scipy.optimize import isotonic_regression

    from shardsort.cluster import _isotonic_fit

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(1, 40))
        values = rng.normal(size=n)
        weights = np.ones(n) if rng.random() < 0.3 else rng.uniform(0.1, 3.0, n)
        np.testing.assert_allclose(
            _isotonic_fit(values, weights), isotonic_regression(values, weights=weights).x
        )


def test_chi2_quantile_close_to_scipy():
    from scipy.stats import chi2

    from shardsort.cluster import _chi2_quantile

    for df in (3, 5, 10, 30, 60):
        for q in (0.99, 0.999):
            assert _chi2_quantile(q, df) == pytest.approx(chi2.ppf(q, df), rel=2e-2)
