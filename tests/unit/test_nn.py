"""Tests for the neural-network detector and triage (shardsort.nn)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from shardsort.detect import neighbour_mask
from shardsort.nn import (
    DEFAULT_MODELS_DIR,
    augment,
    configure_tensorflow,
    modelinfo,
    training,
)
from shardsort.nn import detector as nn_detector
from shardsort.nn import triage as nn_triage
from shardsort.tables import PEAK_DTYPE

RATE_HZ = 30000.0
N_CHANNELS = 16
K = 5
PRE, POST = 16, 32
EXCLUDE = 10
RADIUS_UM = 40.0

configure_tensorflow(n_threads=2)


def two_column_probe(n_rows: int) -> np.ndarray:
    """Channels at x in {0, 32} um, rows 20 um apart; channel = 2 * row + column."""
    return np.array(
        [[x, 20.0 * row] for row in range(n_rows) for x in (0.0, 32.0)], dtype=float
    )


POSITIONS = two_column_probe(N_CHANNELS // 2)
NEIGHBOURS = nn_detector.neighbour_table(POSITIONS, n_neighbours=K)
MASK = neighbour_mask(POSITIONS, radius_um=RADIUS_UM)


def make_templates() -> np.ndarray:
    """Six units, trough at PRE on their main channel, peak 6-10 noise units."""
    t = np.arange(-PRE, POST, dtype=float)
    units = [
        (3, 6.0, 1.5),
        (6, 8.0, 2.5),
        (8, 10.0, 2.0),
        (11, 7.0, 3.0),
        (13, 9.0, 1.8),
        (2, 6.5, 2.2),
    ]
    templates = np.zeros((len(units), t.size, N_CHANNELS), np.float32)
    for u, (main, amplitude, width) in enumerate(units):
        wave = -np.exp(-0.5 * (t / width) ** 2) + 0.3 * np.exp(
            -0.5 * ((t - 3 * width) / (2 * width)) ** 2
        )
        wave /= -wave.min()
        distance = np.hypot(*(POSITIONS - POSITIONS[main]).T)
        templates[u] = amplitude * np.outer(wave, np.exp(-distance / 25.0))
    return templates


TEMPLATES = make_templates()
MAIN = TEMPLATES.min(axis=1).argmin(axis=1)


def coloured_noise(n_samples: int, seed: int) -> np.ndarray:
    """Unit-variance MA(1) noise, independent channels."""
    white = np.random.default_rng(seed).standard_normal((n_samples + 1, N_CHANNELS))
    return (
        signal.lfilter([1.0, 0.5], [1.0], white, axis=0)[1:] / np.sqrt(1.25)
    ).astype(np.float32)


NOISE_MODEL = augment.estimate_noise_model(coloured_noise(20000, seed=0), n_lags=4)


def planted_recording(
    n_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise plus whole templates every ~120 samples: (traces, troughs, units)."""
    rng = np.random.default_rng(seed)
    grid = np.arange(100, n_samples - 100, 120)
    troughs = grid + rng.integers(-15, 16, grid.size)
    units = rng.integers(0, len(TEMPLATES), troughs.size)
    traces = augment.simulate_noise(NOISE_MODEL, n_samples=n_samples, seed=seed)
    for trough, unit in zip(troughs, units):
        traces[trough - PRE : trough + POST] += TEMPLATES[unit]
    return traces, troughs, units


@pytest.fixture(scope="module")
def trained_detector():
    windows, targets = augment.make_detector_training_set(
        TEMPLATES,
        NOISE_MODEL,
        NEIGHBOURS,
        pre_samples=PRE,
        n_windows=2400,
        window_samples=48,
        seed=1,
    )
    return training.train_detector(
        windows, targets, seed=0, epochs=6, batch_size=64, temporal_samples=11
    )


@pytest.fixture(scope="module")
def trained_triage():
    snippets, labels = augment.make_triage_training_set(
        TEMPLATES, NOISE_MODEL, NEIGHBOURS, pre_samples=PRE, n_snippets=2000, seed=2
    )
    return training.train_triage(snippets, labels, seed=0, epochs=8, batch_size=64)


def detect(
    traces, model, *, core_start=0, core_stop=None, threshold=0.5, good_mask=None
):
    return nn_detector.detect_nn(
        traces,
        model,
        core_start=core_start,
        core_stop=traces.shape[0] if core_stop is None else core_stop,
        neighbours=NEIGHBOURS,
        neighbour_mask=MASK,
        exclude_samples=EXCLUDE,
        probability_threshold=threshold,
        good_mask=good_mask,
    )


# ---------------------------------------------------------------------------
# Noise model
# ---------------------------------------------------------------------------


def test_estimate_noise_model_recovers_ar_process_and_channel_covariance():
    rng = np.random.default_rng(5)
    ar1 = signal.lfilter([1.0], [1.0, -0.6], rng.standard_normal((100000, 3)), axis=0)
    mixing = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 2.0]])
    model = augment.estimate_noise_model(ar1 @ mixing.T, n_lags=3)
    np.testing.assert_allclose(model.autocorrelation, 0.6 ** np.arange(4), atol=0.02)
    np.testing.assert_allclose(model.ar_coefficients, [0.6, 0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(model.innovation_std, np.sqrt(1 - 0.36), atol=0.01)
    expected = mixing @ mixing.T / (1 - 0.36)
    np.testing.assert_allclose(model.spatial_covariance, expected, rtol=0.05, atol=0.05)


def test_simulated_noise_reproduces_the_model():
    noise = augment.simulate_noise(NOISE_MODEL, n_samples=50000, seed=3)
    assert noise.dtype == np.float32 and noise.shape == (50000, N_CHANNELS)
    again = augment.estimate_noise_model(noise, n_lags=4)
    np.testing.assert_allclose(
        again.autocorrelation, NOISE_MODEL.autocorrelation, atol=0.02
    )
    np.testing.assert_allclose(
        again.spatial_covariance, NOISE_MODEL.spatial_covariance, atol=0.05
    )
    # MA(1) with coefficient 0.5: lag-1 correlation 0.4, nothing beyond.
    np.testing.assert_allclose(
        NOISE_MODEL.autocorrelation[:3], [1.0, 0.4, 0.0], atol=0.03
    )


def test_noise_windows_are_stationary_from_the_first_sample():
    windows, targets = augment.make_detector_training_set(
        TEMPLATES,
        NOISE_MODEL,
        NEIGHBOURS,
        pre_samples=PRE,
        n_windows=20000,
        window_samples=6,
        seed=4,
        noise_fraction=1.0,
        misaligned_fraction=0.0,
    )
    assert not targets.any()
    variance = windows[:, :, 0].var(axis=0)
    np.testing.assert_allclose(variance, 1.0, atol=0.05)
    lag1 = np.mean(windows[:, :-1, 0] * windows[:, 1:, 0], axis=0)
    np.testing.assert_allclose(lag1, 0.4, atol=0.04)


def test_estimate_noise_model_of_constant_traces_is_silent_white_noise():
    model = augment.estimate_noise_model(np.full((100, 3), 7.0), n_lags=2)
    np.testing.assert_array_equal(model.spatial_covariance, np.zeros((3, 3)))
    np.testing.assert_array_equal(model.autocorrelation, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(augment.simulate_noise(model, n_samples=5, seed=0), 0)


def test_estimate_noise_model_pools_segments_and_checks_arguments():
    segments = coloured_noise(3000, seed=1).reshape(3, 1000, N_CHANNELS)
    assert augment.estimate_noise_model(segments, n_lags=2).n_channels == N_CHANNELS
    with pytest.raises(ValueError, match="n_lags must be >= 0, got -1"):
        augment.estimate_noise_model(segments, n_lags=-1)
    with pytest.raises(ValueError, match="more than n_lags=5 samples"):
        augment.estimate_noise_model(np.zeros((5, 2)), n_lags=5)
    with pytest.raises(ValueError, match="noise_traces must have shape"):
        augment.estimate_noise_model(np.zeros(10), n_lags=1)


# ---------------------------------------------------------------------------
# Training examples
# ---------------------------------------------------------------------------

SILENT = augment.estimate_noise_model(np.zeros((10, N_CHANNELS)), n_lags=0)
SILENT_3 = augment.estimate_noise_model(np.zeros((10, 3)), n_lags=0)


def test_clean_detector_windows_hold_the_template_and_target_its_trough():
    windows, targets = augment.make_detector_training_set(
        TEMPLATES,
        SILENT,
        NEIGHBOURS,
        pre_samples=PRE,
        n_windows=400,
        window_samples=40,
        seed=0,
        amplitude_range=(1.0, 1.0),
        jitter_samples=0,
        noise_fraction=0.0,
        misaligned_fraction=0.0,
        collision_fraction=0.0,
    )
    middle = 20
    # The window centre's channel sees its own unit's trough exactly there.
    on_main = targets.any(axis=1)
    assert 0.4 < on_main.mean() < 0.6  # main_channel_fraction = 0.5
    np.testing.assert_array_equal(np.flatnonzero(targets[on_main][0]), [19, 20, 21])
    assert np.all(targets[on_main].sum(axis=1) == 3)
    troughs = windows[on_main, :, 0].argmin(axis=1)
    np.testing.assert_array_equal(troughs, middle)
    peaks = -windows[on_main, middle, 0]
    assert set(np.round(peaks, 4)) <= set(np.round(-TEMPLATES.min(axis=(1, 2)), 4))


def test_misaligned_windows_have_no_target_near_the_centre():
    windows, targets = augment.make_detector_training_set(
        TEMPLATES,
        SILENT,
        NEIGHBOURS,
        pre_samples=PRE,
        n_windows=300,
        window_samples=40,
        seed=1,
        noise_fraction=0.0,
        misaligned_fraction=1.0,
        collision_fraction=0.0,
        main_channel_fraction=1.0,
    )
    assert not targets[:, 20 - 3 : 20 + 4].any()
    assert targets.any(axis=1).mean() > 0.9  # the trough is elsewhere in the window
    assert np.abs(windows).max(axis=(1, 2)).min() > 0


def test_triage_snippets_are_clean_templates_or_collisions():
    snippets, labels = augment.make_triage_training_set(
        TEMPLATES,
        SILENT,
        NEIGHBOURS,
        pre_samples=PRE,
        n_snippets=300,
        seed=0,
        amplitude_range=(1.0, 1.0),
        jitter_samples=0,
    )
    assert snippets.shape == (300, PRE + POST, K) and labels.dtype == np.float32
    assert 0.4 < labels.mean() < 0.6
    clean = TEMPLATES[np.arange(len(TEMPLATES))[:, None], :, NEIGHBOURS[MAIN]]
    clean = clean.transpose(0, 2, 1)  # (n_units, n_times, K)
    matches = np.array(
        [np.any(np.all(np.isclose(s, clean, atol=1e-5), axis=(1, 2))) for s in snippets]
    )
    np.testing.assert_array_equal(matches, labels == 1)


def test_training_sets_check_arguments_and_allow_no_units():
    empty = np.zeros((0, PRE + POST, N_CHANNELS), np.float32)
    windows, targets = augment.make_detector_training_set(
        empty,
        NOISE_MODEL,
        NEIGHBOURS,
        pre_samples=PRE,
        n_windows=5,
        window_samples=10,
        seed=0,
    )
    assert windows.shape == (5, 10, K) and not targets.any()
    with pytest.raises(ValueError, match="at least one non-zero template"):
        augment.make_triage_training_set(
            empty, NOISE_MODEL, NEIGHBOURS, pre_samples=PRE, n_snippets=5, seed=0
        )
    with pytest.raises(ValueError, match="pre_samples must be < n_times=48"):
        augment.make_triage_training_set(
            TEMPLATES, NOISE_MODEL, NEIGHBOURS, pre_samples=48, n_snippets=5, seed=0
        )
    with pytest.raises(
        ValueError, match=r"neighbours must be an integer array of shape \(16, k\)"
    ):
        augment.make_triage_training_set(
            TEMPLATES,
            NOISE_MODEL,
            NEIGHBOURS[:3],
            pre_samples=PRE,
            n_snippets=5,
            seed=0,
        )
    with pytest.raises(ValueError, match="collision_min_amplitude must be a finite"):
        augment.make_detector_training_set(
            TEMPLATES,
            NOISE_MODEL,
            NEIGHBOURS,
            pre_samples=PRE,
            n_windows=5,
            window_samples=10,
            seed=0,
            collision_min_amplitude=-1.0,
        )
    with pytest.raises(ValueError, match="noise_model must describe 16 channels"):
        augment.make_triage_training_set(
            TEMPLATES, SILENT_3, NEIGHBOURS, pre_samples=PRE, n_snippets=5, seed=0
        )


def test_training_sets_are_seeded():
    first = augment.make_triage_training_set(
        TEMPLATES, NOISE_MODEL, NEIGHBOURS, pre_samples=PRE, n_snippets=50, seed=9
    )
    second = augment.make_triage_training_set(
        TEMPLATES, NOISE_MODEL, NEIGHBOURS, pre_samples=PRE, n_snippets=50, seed=9
    )
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


# ---------------------------------------------------------------------------
# Detector network
# ---------------------------------------------------------------------------


def test_neighbour_table_pads_small_probes_with_silent_channels():
    table = nn_detector.neighbour_table(two_column_probe(1), n_neighbours=4)
    np.testing.assert_array_equal(table, [[0, 1, -1, -1], [1, 0, -1, -1]])
    offsets = nn_detector.neighbour_offsets_um(two_column_probe(1), table)
    np.testing.assert_array_equal(offsets[:2], [[0.0, 0.0], [32.0, 0.0]])
    assert np.isnan(offsets[2:]).all()
    offsets = nn_detector.neighbour_offsets_um(POSITIONS, NEIGHBOURS)
    np.testing.assert_array_equal(offsets[:3], [[0.0, 0.0], [0.0, -20.0], [0.0, 20.0]])


def test_whole_window_inference_equals_the_patch_model():
    model = nn_detector.build_detector(
        n_neighbours=K, temporal_samples=7, n_temporal_filters=4, n_mixed_filters=3
    )
    table = NEIGHBOURS.copy()
    table[0, -1] = -1  # a missing neighbour reads zeros
    traces = coloured_noise(300, seed=2) * 3
    logits = nn_detector.detector_logits(traces, model, table)
    padded = np.concatenate([traces, np.zeros((300, 1), np.float32)], axis=1)
    patches = padded[:, table].transpose(1, 0, 2)  # (n_channels, n_samples, K)
    probability = model(patches).numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits.T)), probability, atol=1e-5)
    assert (
        nn_detector.nn_margin_samples(model, exclude_samples=EXCLUDE) == 3 + EXCLUDE + 2
    )


def test_detect_nn_reports_the_trough_of_each_exclusive_logit_peak():
    # Hand-set network: logit[t, c] = max(0, -x[t + 2, c]) - 3, so every
    # logit peak sits 2 samples before its trough and p >= 0.5 <=> x <= -3.
    model = nn_detector.build_detector(
        n_neighbours=K, temporal_samples=5, n_temporal_filters=1, n_mixed_filters=1
    )
    temporal = np.zeros((5, 1, 1, 1), np.float32)
    temporal[4] = -1.0
    spatial = np.zeros((1, K, 1, 1), np.float32)
    spatial[0, 0] = 1.0
    model.get_layer("temporal").set_weights([temporal, np.zeros(1, np.float32)])
    model.get_layer("mixing").set_weights(
        [np.ones((1, 1, 1, 1), np.float32), np.zeros(1)]
    )
    model.get_layer("spatial").set_weights([spatial, np.full(1, -3.0, np.float32)])
    traces = np.zeros((400, N_CHANNELS), np.float32)
    traces[99:102, 4] = [-4.0, -8.0, -4.0]
    traces[102, 6] = -5.0  # 20 um away, 2 samples later: suppressed
    traces[300, 9] = -6.0
    traces[200, 12] = -2.0  # below the threshold
    peaks = detect(traces, model)
    assert peaks.tolist() == [(100, 4, -8.0, 0.0, 0.0), (300, 9, -6.0, 0.0, 0.0)]
    # The core decides by the trough: a trough just inside is kept, and one
    # whose logit peak is inside but trough outside is left out.
    inner = detect(traces, model, core_start=100, core_stop=300)
    assert inner.tolist() == [(0, 4, -8.0, 0.0, 0.0)]


def test_detector_finds_planted_spikes(trained_detector):
    model, metrics = trained_detector
    assert metrics["validation_recall"] > 0.5
    traces, troughs, units = planted_recording(12000, seed=21)
    peaks = detect(traces, model)
    assert peaks.dtype == PEAK_DTYPE
    near = np.abs(peaks["sample_index"][:, None] - troughs[None, :]) <= 2
    hit = near & MASK[peaks["channel_index"][:, None], MAIN[units][None, :]]
    precision, recall = hit.any(axis=1).mean(), hit.any(axis=0).mean()
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    # Reported at the trough of the trace: the amplitude is the local minimum.
    i = peaks["sample_index"]
    c = peaks["channel_index"]
    np.testing.assert_array_equal(peaks["amplitude"], traces[i, c])


def test_detector_chunked_equals_whole(trained_detector):
    model, _ = trained_detector
    traces, _, _ = planted_recording(4000, seed=22)
    whole = detect(traces, model)
    margin = nn_detector.nn_margin_samples(model, exclude_samples=EXCLUDE)
    parts = []
    for start in range(0, 4000, 700):
        stop = min(start + 700, 4000)
        low, high = max(0, start - margin), min(4000, stop + margin)
        found = detect(
            traces[low:high], model, core_start=start - low, core_stop=stop - low
        )
        found["sample_index"] += start
        parts.append(found)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert whole.size > 20
    half_width = margin - EXCLUDE - nn_detector.REFINE_SAMPLES
    np.testing.assert_allclose(
        nn_detector.detector_logits(traces[1000:2000], model, NEIGHBOURS)[
            half_width:-half_width
        ],
        nn_detector.detector_logits(traces, model, NEIGHBOURS)[
            1000 + half_width : 2000 - half_width
        ],
        rtol=0,
        atol=1e-5,
    )


def test_detector_on_noise_and_empty_windows(trained_detector):
    model, _ = trained_detector
    noise = augment.simulate_noise(NOISE_MODEL, n_samples=3000, seed=23)
    for window in (noise, np.zeros((500, N_CHANNELS), np.float32)):
        assert detect(window, model).size == 0
    empty = detect(np.zeros((0, N_CHANNELS), np.float32), model)
    assert empty.dtype == PEAK_DTYPE and empty.shape == (0,)
    no_channels = nn_detector.detect_nn(
        np.zeros((50, 0), np.float32),
        model,
        core_start=0,
        core_stop=50,
        neighbours=np.zeros((0, K), np.int64),
        neighbour_mask=np.zeros((0, 0), bool),
        exclude_samples=EXCLUDE,
        probability_threshold=0.5,
    )
    assert no_channels.dtype == PEAK_DTYPE and no_channels.shape == (0,)


def test_detector_skips_bad_channels(trained_detector):
    model, _ = trained_detector
    traces, _, _ = planted_recording(4000, seed=24)
    good = np.ones(N_CHANNELS, bool)
    good[MAIN[2]] = False
    traces[:, MAIN[2]] = 0.0
    peaks = detect(traces, model, good_mask=good)
    assert peaks.size and MAIN[2] not in peaks["channel_index"]


def test_detect_nn_checks_arguments(trained_detector, trained_triage):
    model, _ = trained_detector
    traces = np.zeros((100, N_CHANNELS), np.float32)
    with pytest.raises(
        ValueError, match=r"probability_threshold must be in \(0, 1\), got 1.5"
    ):
        detect(traces, model, threshold=1.5)
    with pytest.raises(
        ValueError, match=r"neighbours must be an integer array of shape \(16, 5\)"
    ):
        nn_detector.detector_logits(traces, model, NEIGHBOURS[:, :3])
    with pytest.raises(ValueError, match="core_stop must be <= window length 100"):
        detect(traces, model, core_stop=101)
    with pytest.raises(ValueError, match="model must be a detector"):
        detect(traces, trained_triage[0])
    with pytest.raises(ValueError, match="temporal_samples must be odd, got 4"):
        nn_detector.build_detector(
            n_neighbours=K, temporal_samples=4, n_temporal_filters=2, n_mixed_filters=2
        )


# ---------------------------------------------------------------------------
# Triage network
# ---------------------------------------------------------------------------


def test_triage_separates_clean_from_collided(trained_triage):
    model, metrics = trained_triage
    snippets, labels = augment.make_triage_training_set(
        TEMPLATES, NOISE_MODEL, NEIGHBOURS, pre_samples=PRE, n_snippets=600, seed=31
    )
    probability = nn_triage.triage_spikes(snippets, model)
    assert probability.dtype == np.float32 and probability.shape == (600,)
    accuracy = np.mean((probability >= 0.5) == (labels == 1))
    assert accuracy >= 0.75, accuracy
    assert metrics["validation_accuracy"] >= 0.75
    # Snippets cut from a window, with a missing neighbour read as zeros.
    traces, troughs, units = planted_recording(3000, seed=32)
    rows = NEIGHBOURS[MAIN[units]]
    rows[:, -1] = -1
    cut = nn_triage.cut_triage_snippets(
        traces, troughs, rows, pre_samples=PRE, post_samples=POST
    )
    samples = troughs[:, None, None] + np.arange(-PRE, POST)[None, :, None]
    np.testing.assert_array_equal(cut[:, :, :-1], traces[samples, rows[:, None, :-1]])
    np.testing.assert_array_equal(cut[:, :, -1], 0.0)
    assert np.mean(nn_triage.triage_spikes(cut, model) >= 0.5) >= 0.75
    with pytest.raises(ValueError, match=r"channels must be integers in \[-1, 15\]"):
        nn_triage.cut_triage_snippets(
            traces, troughs, rows + 16, pre_samples=PRE, post_samples=POST
        )
    empty = nn_triage.triage_spikes(np.zeros((0, PRE + POST, K), np.float32), model)
    assert empty.dtype == np.float32 and empty.shape == (0,)
    with pytest.raises(
        ValueError, match=r"snippets must have shape \(n_spikes, 48, 5\)"
    ):
        nn_triage.triage_spikes(np.zeros((3, 40, K), np.float32), model)


# ---------------------------------------------------------------------------
# Training, saving, loading
# ---------------------------------------------------------------------------


def test_training_is_deterministic_given_the_seed():
    windows, targets = augment.make_detector_training_set(
        TEMPLATES,
        NOISE_MODEL,
        NEIGHBOURS,
        pre_samples=PRE,
        n_windows=128,
        window_samples=24,
        seed=5,
    )
    runs = [
        training.train_detector(
            windows,
            targets,
            seed=3,
            epochs=1,
            batch_size=32,
            temporal_samples=5,
            n_temporal_filters=2,
            n_mixed_filters=2,
        )
        for _ in range(2)
    ]
    for first, second in zip(runs[0][0].get_weights(), runs[1][0].get_weights()):
        np.testing.assert_array_equal(first, second)
    assert runs[0][1] == runs[1][1]


def test_training_checks_arguments():
    with pytest.raises(ValueError, match=r"targets must have shape \(4, 10\)"):
        training.train_detector(
            np.zeros((4, 10, K)), np.zeros((4, 9)), seed=0, epochs=1, batch_size=2
        )
    with pytest.raises(ValueError, match="labels must hold only 0 and 1"):
        training.train_triage(
            np.zeros((4, 10, K)), np.full(4, 0.5), seed=0, epochs=1, batch_size=2
        )
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        training.train_triage(
            np.zeros((4, 10, K)), np.ones(4), seed=0, epochs=0, batch_size=2
        )


def test_saved_models_reload_with_identical_outputs(
    tmp_path, trained_detector, trained_triage
):
    detector, metrics = trained_detector
    folder = tmp_path / "detector"
    training.save_model(
        folder,
        detector,
        {
            "sampling_rate_hz": RATE_HZ,
            "metrics": metrics,
            "seed": np.int64(0),
            "neighbour_offsets_um": nn_detector.neighbour_offsets_um(
                POSITIONS, NEIGHBOURS
            ),
        },
    )
    loaded, sidecar = training.load_model(
        folder, expected_sampling_rate_hz=RATE_HZ, expected_n_neighbours=K
    )
    assert sorted(p.name for p in folder.iterdir()) == ["model.keras", "model.yaml"]
    assert sidecar["kind"] == "detector" and sidecar["n_neighbours"] == K
    assert sidecar["architecture"]["temporal_samples"] == 11
    assert sidecar["metrics"] == metrics and len(sidecar["neighbour_offsets_um"]) == K
    traces, _, _ = planted_recording(2000, seed=41)
    np.testing.assert_array_equal(
        nn_detector.detector_logits(traces, loaded, NEIGHBOURS),
        nn_detector.detector_logits(traces, detector, NEIGHBOURS),
    )

    triage, _ = trained_triage
    training.save_model(
        tmp_path / "triage", triage, {"sampling_rate_hz": RATE_HZ, "pre_samples": PRE}
    )
    loaded, sidecar = training.load_model(tmp_path / "triage")
    assert sidecar["kind"] == "triage" and sidecar["pre_samples"] == PRE
    snippets, _ = augment.make_triage_training_set(
        TEMPLATES, NOISE_MODEL, NEIGHBOURS, pre_samples=PRE, n_snippets=50, seed=42
    )
    np.testing.assert_array_equal(
        nn_triage.triage_spikes(snippets, loaded),
        nn_triage.triage_spikes(snippets, triage),
    )


def test_load_model_rejects_a_recording_it_does_not_fit(tmp_path, trained_detector):
    folder = tmp_path / "model"
    training.save_model(folder, trained_detector[0], {"sampling_rate_hz": RATE_HZ})
    with pytest.raises(
        ValueError,
        match=r"model\.yaml: sampling_rate_hz of the model is 30000 Hz but the "
        r"recording's is 20000 Hz",
    ):
        training.load_model(folder, expected_sampling_rate_hz=20000.0)
    with pytest.raises(
        ValueError,
        match=r"model\.yaml: n_neighbours of the model is 5 but the recording's "
        r"neighbour table has 7",
    ):
        training.load_model(folder, expected_n_neighbours=7)
    training.load_model(folder, expected_sampling_rate_hz=30000.4)  # within 1%
    with pytest.raises(FileNotFoundError, match="model sidecar not found"):
        training.load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="sidecar must hold 'sampling_rate_hz'"):
        training.save_model(folder, trained_detector[0], {})


def test_default_models_load_small_and_detect_planted_spikes():
    assert sum(p.stat().st_size for p in DEFAULT_MODELS_DIR.rglob("*")) < 1_000_000
    triage, sidecar = training.load_model(DEFAULT_MODELS_DIR / "triage")
    assert sidecar["kind"] == "triage" and 0 <= sidecar["pre_samples"] < 90
    assert triage.input_shape == (None, 90, 7)
    detector, sidecar = training.load_model(
        DEFAULT_MODELS_DIR / "detector",
        expected_sampling_rate_hz=30000.0,
        expected_n_neighbours=7,
    )
    assert sidecar["kind"] == "detector"
    # Trained on a synthetic Neuropixels-like probe, it carries over to the
    # test probe and templates.
    traces, troughs, units = planted_recording(6000, seed=51)
    peaks = nn_detector.detect_nn(
        traces,
        detector,
        core_start=0,
        core_stop=6000,
        neighbours=nn_detector.neighbour_table(POSITIONS, n_neighbours=7),
        neighbour_mask=MASK,
        exclude_samples=EXCLUDE,
        probability_threshold=0.5,
    )
    near = np.abs(peaks["sample_index"][:, None] - troughs[None, :]) <= 2
    hit = near & MASK[peaks["channel_index"][:, None], MAIN[units][None, :]]
    assert hit.any(axis=1).mean() >= 0.8 and hit.any(axis=0).mean() >= 0.8


# ---------------------------------------------------------------------------
# Fitting a saved model to a recording (no TensorFlow needed)
# ---------------------------------------------------------------------------


def _sidecar(**extra):
    return {
        "kind": "detector",
        "sampling_rate_hz": RATE_HZ,
        "n_neighbours": K,
        "neighbour_offsets_um": nn_detector.neighbour_offsets_um(
            POSITIONS, NEIGHBOURS
        ).tolist(),
        "preprocessing": {"whiten": False, "reference": "global"},
        **extra,
    }


def test_check_model_fits_accepts_the_training_geometry_and_rejects_others():
    offsets = nn_detector.neighbour_offsets_um(POSITIONS, NEIGHBOURS)
    modelinfo.check_model_fits(
        _sidecar(),
        source="m.yaml",
        kind="detector",
        sampling_rate_hz=RATE_HZ * 1.005,
        n_neighbours=K,
        neighbour_offsets_um=offsets,
        whiten=False,
    )
    with pytest.raises(ValueError, match=r"m\.yaml: kind of the model is 'detector'"):
        modelinfo.check_model_fits(_sidecar(), source="m.yaml", kind="triage")
    with pytest.raises(ValueError, match="sampling_rate_hz of the model is 30000 Hz"):
        modelinfo.check_model_fits(_sidecar(), source="m", sampling_rate_hz=25000.0)
    with pytest.raises(
        ValueError,
        match=r"trained on unwhitened traces .* but preprocess\.whiten is true",
    ):
        modelinfo.check_model_fits(_sidecar(), source="m", whiten=True)
    # A probe of twice the pitch does not fit; nor one with too few channels.
    wide = two_column_probe(N_CHANNELS // 2) * 2
    table = nn_detector.neighbour_table(wide, n_neighbours=K)
    with pytest.raises(ValueError, match=r"neighbour 1 of a central channel is 40\.0 um"):
        modelinfo.check_model_fits(
            _sidecar(),
            source="m",
            neighbour_offsets_um=nn_detector.neighbour_offsets_um(wide, table),
        )
    small = np.array([[0.0, 0.0], [0.0, 20.0]])
    table = nn_detector.neighbour_table(small, n_neighbours=K)
    with pytest.raises(ValueError, match="uses 5 channels per neighbourhood but .* only 2"):
        modelinfo.check_model_fits(
            _sidecar(),
            source="m",
            neighbour_offsets_um=nn_detector.neighbour_offsets_um(small, table),
        )
    # Sidecars without geometry or preprocessing skip those checks.
    bare = {"kind": "detector", "sampling_rate_hz": RATE_HZ, "n_neighbours": K}
    modelinfo.check_model_fits(bare, source="m", neighbour_offsets_um=offsets, whiten=True)


def test_read_sidecar_needs_both_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model sidecar not found"):
        modelinfo.read_sidecar(tmp_path)
    (tmp_path / "model.yaml").write_text("kind: detector\n")
    with pytest.raises(ValueError, match=r"missing entries \['sampling_rate_hz'"):
        modelinfo.read_sidecar(tmp_path)
    (tmp_path / "model.yaml").write_text(
        "kind: detector\nsampling_rate_hz: 30000.0\nn_neighbours: 7\n"
    )
    with pytest.raises(FileNotFoundError, match="model file not found"):
        modelinfo.read_sidecar(tmp_path)


def test_default_models_record_the_default_preprocessing():
    for kind in ("detector", "triage"):
        sidecar = modelinfo.read_sidecar(DEFAULT_MODELS_DIR / kind)
        assert sidecar["kind"] == kind
        assert sidecar["preprocessing"] == {"whiten": False, "reference": "global"}


def test_detect_nn_reports_a_spike_on_the_channel_where_it_is_largest():
    # Hand-set network: logit[t, c] = max(0, -x[t, c]) - 3 on the channel's
    # own trace (slot 0 of its neighbour table row).
    model = nn_detector.build_detector(
        n_neighbours=K, temporal_samples=1, n_temporal_filters=1, n_mixed_filters=1
    )
    model.get_layer("temporal").set_weights(
        [np.full((1, 1, 1, 1), -1.0, np.float32), np.zeros(1, np.float32)]
    )
    model.get_layer("mixing").set_weights(
        [np.ones((1, 1, 1, 1), np.float32), np.zeros(1)]
    )
    spatial = np.zeros((1, K, 1, 1), np.float32)
    spatial[0, 0] = 1.0
    model.get_layer("spatial").set_weights([spatial, np.full(1, -3.0, np.float32)])
    traces = np.zeros((200, N_CHANNELS), np.float32)
    traces[100, 4] = -4.0
    traces[101, 6] = -9.0  # larger, one sample later, on a neighbour 20 um away
    # The network sees nothing on channel 6 (its row reads silent channels),
    # so it answers on channel 4 only; the spike is reported on channel 6.
    table = NEIGHBOURS.copy()
    table[6] = -1
    peaks = nn_detector.detect_nn(
        traces,
        model,
        core_start=0,
        core_stop=200,
        neighbours=table,
        neighbour_mask=MASK,
        exclude_samples=EXCLUDE,
        probability_threshold=0.5,
    )
    assert peaks[["sample_index", "channel_index", "amplitude"]].tolist() == [
        (101, 6, -9.0)
    ]
    # A bad channel is never chosen.
    good = np.ones(N_CHANNELS, bool)
    good[6] = False
    peaks = detect(traces, model, good_mask=good)
    assert peaks[["sample_index", "channel_index", "amplitude"]].tolist() == [
        (100, 4, -4.0)
    ]


# ---------------------------------------------------------------------------
# One spike, one detection: the threshold detector's exclusion on the troughs
# ---------------------------------------------------------------------------


def rectifier_detector() -> object:
    """Hand-set network: logit[t, c] = |x[t, c]| - 3 on the channel's own trace.

    It answers a spike at its trough and again at its rebound, and on every
    channel where the spike reaches 3 noise units.
    """
    model = nn_detector.build_detector(
        n_neighbours=K, temporal_samples=1, n_temporal_filters=2, n_mixed_filters=1
    )
    temporal = np.array([-1.0, 1.0], np.float32).reshape(1, 1, 1, 2)
    model.get_layer("temporal").set_weights([temporal, np.zeros(2, np.float32)])
    model.get_layer("mixing").set_weights(
        [np.ones((1, 1, 2, 1), np.float32), np.zeros(1, np.float32)]
    )
    spatial = np.zeros((1, K, 1, 1), np.float32)
    spatial[0, 0] = 1.0
    model.get_layer("spatial").set_weights([spatial, np.full(1, -3.0, np.float32)])
    return model


def spike_with_rebound() -> np.ndarray:
    """One channel's waveform: trough -8 at index 20, rebound +5 at index 34."""
    wave = np.zeros(60, np.float32)
    wave[19:22] = [-4.0, -8.0, -4.0]
    wave[22:34] = np.linspace(-3.0, 4.0, 12)
    wave[34:40] = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5]
    return wave


def test_detect_nn_reports_a_spike_answered_twice_once():
    model = rectifier_detector()
    traces = np.zeros((300, N_CHANNELS), np.float32)
    # Trough at sample 100 on channel 4; the rebound 14 samples later (beyond
    # the exclusion window) is a second logit peak.
    traces[80:140, 4] = spike_with_rebound()
    # A second spike whose network answers on a channel 60 um from its main
    # channel (beyond the radius): channels 10 and 12 read as silent, so
    # channel 14's logit peaks alone there and refines onto channel 12,
    # 20 um from channel 10 where the spike is deeper.
    table = NEIGHBOURS.copy()
    table[[10, 12]] = -1
    traces[200, [10, 12, 14]] = [-9.0, -6.0, -4.0]
    peaks = nn_detector.detect_nn(
        traces,
        model,
        core_start=0,
        core_stop=300,
        neighbours=table,
        neighbour_mask=MASK,
        exclude_samples=EXCLUDE,
        probability_threshold=0.5,
    )
    # (Before the troughs' own exclusion, (112, 2) on the rebound's flank
    # and (200, 12) were reported as well.)
    assert peaks[["sample_index", "channel_index", "amplitude"]].tolist() == [
        (100, 4, -8.0),
        (200, 10, -9.0),
    ]


def test_planted_spikes_are_detected_once_each(trained_detector):
    model, _ = trained_detector
    traces, troughs, units = planted_recording(12000, seed=25)
    # The same spikes, also answered at their rebound by the rectifier.
    for found in (detect(traces, model), detect(traces, rectifier_detector())):
        t, c = found["sample_index"], found["channel_index"]
        # No two detections within the exclusion window and radius.
        close = (np.abs(t[:, None] - t[None, :]) <= EXCLUDE) & MASK[c[:, None], c]
        np.fill_diagonal(close, False)
        assert not close.any()
        # Each planted spike: exactly one detection within the window of its
        # trough and the radius of its main channel.
        near = (np.abs(t[:, None] - troughs[None, :]) <= EXCLUDE) & MASK[
            c[:, None], MAIN[units][None, :]
        ]
        per_spike = near.sum(axis=0)
        assert per_spike.max() == 1 and per_spike.mean() >= 0.9, per_spike.mean()


def test_exclusion_chunked_equals_whole():
    # The rectifier answers each planted spike several times, so every chunk
    # border near a spike exercises the troughs' exclusion.
    model = rectifier_detector()
    traces, troughs, _ = planted_recording(3000, seed=26)
    whole = detect(traces, model)
    assert whole.size >= troughs.size
    margin = nn_detector.nn_margin_samples(model, exclude_samples=EXCLUDE)
    for size in (97, 250, 701):
        parts = []
        for start in range(0, 3000, size):
            stop = min(start + size, 3000)
            low, high = max(0, start - margin), min(3000, stop + margin)
            found = detect(
                traces[low:high], model, core_start=start - low, core_stop=stop - low
            )
            found["sample_index"] += start
            parts.append(found)
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_exclusive_minima_is_the_threshold_detectors_peak_test():
    from shardsort.detect import detect_peaks, exclusive_minima

    rng = np.random.default_rng(27)
    traces = np.round(rng.standard_normal((3000, N_CHANNELS)), 1).astype(np.float32)
    good = np.ones(N_CHANNELS, bool)
    good[5] = False
    kwargs = {"neighbour_mask": MASK, "exclude_samples": EXCLUDE, "good_mask": good}
    peaks = detect_peaks(traces, core_start=0, core_stop=3000, threshold=2.0, **kwargs)
    t, c = np.nonzero(traces <= -2.0)
    won = exclusive_minima(traces, t, c, **kwargs)
    assert peaks.size > 50
    assert list(zip(t[won], c[won])) == list(
        zip(peaks["sample_index"], peaks["channel_index"])
    )
    empty = exclusive_minima(traces, np.zeros(0, int), np.zeros(0, int), **kwargs)
    assert empty.dtype == bool and empty.shape == (0,)
    with pytest.raises(ValueError, match="samples must lie within traces"):
        exclusive_minima(traces, np.array([3000]), np.array([0]), **kwargs)
    with pytest.raises(ValueError, match="neighbour_mask must be a bool array"):
        exclusive_minima(traces, t, c, neighbour_mask=MASK[:2], exclude_samples=3)
