"""Tests for the detection and feature kernels (shardsort.detect)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shardsort.detect import (
    TemporalBasis,
    detect_chunk,
    detect_margin_samples,
    detect_peaks,
    extract_snippets,
    fallback_temporal_basis,
    fit_temporal_pca,
    localize_spikes,
    nearest_neighbours,
    neighbour_mask,
    project_temporal,
)
from shardsort.tables import PEAK_DTYPE

PRE, POST = 12, 20
EXCLUDE = 8
THRESHOLD = 5.0


def two_column_probe(n_rows: int) -> np.ndarray:
    """Channels at x in {0, 32} um, rows 20 um apart; channel = 2 * row + column."""
    return np.array(
        [[x, 20.0 * row] for row in range(n_rows) for x in (0.0, 32.0)], dtype=float
    )


def biphasic(amplitude: float) -> np.ndarray:
    """Waveform of PRE + POST samples with its (negative) trough at index PRE."""
    t = np.arange(-PRE, POST, dtype=float)
    wave = -np.exp(-0.5 * (t / 2.0) ** 2) + 0.35 * np.exp(-0.5 * ((t - 7.0) / 3.5) ** 2)
    return amplitude * wave / -wave.min()


def footprint(
    positions: np.ndarray, source_xy: np.ndarray, depth_um: float
) -> np.ndarray:
    """Monopolar amplitude profile, 1.0 on a channel right above the source."""
    dist = np.sqrt(((positions - source_xy) ** 2).sum(axis=1) + depth_um**2)
    return depth_um / dist


def plant(
    n_samples: int,
    positions: np.ndarray,
    spikes: list[tuple[int, tuple[float, float], float]],
    *,
    noise: float,
    seed: int,
    depth_um: float = 10.0,
) -> np.ndarray:
    """Noise plus biphasic spikes (sample, source (x, y), peak amplitude)."""
    rng = np.random.default_rng(seed)
    traces = noise * rng.standard_normal((n_samples, positions.shape[0]))
    for sample, source, amplitude in spikes:
        profile = footprint(positions, np.asarray(source), depth_um)
        traces[sample - PRE : sample + POST] += np.outer(biphasic(amplitude), profile)
    return traces.astype(np.float32)


def chunked(traces: np.ndarray, chunk: int, margin: int, kernel, **kwargs):
    """Run a per-chunk kernel the way the workflow does: zero-padded windows."""
    n_samples, n_channels = traces.shape
    peak_parts, feature_parts = [], []
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        window = np.zeros((stop - start + 2 * margin, n_channels), dtype=np.float32)
        lo, hi = max(0, start - margin), min(n_samples, stop + margin)
        window[lo - (start - margin) : hi - (start - margin)] = traces[lo:hi]
        out = kernel(
            window, core_start=margin, core_stop=margin + stop - start, **kwargs
        )
        peaks, features = out if isinstance(out, tuple) else (out, None)
        peaks = peaks.copy()
        peaks["sample_index"] += start
        peak_parts.append(peaks)
        feature_parts.append(features)
    features = None if feature_parts[0] is None else np.concatenate(feature_parts)
    return np.concatenate(peak_parts), features


def brute_force_peaks(traces, *, threshold, mask, exclude, good):
    """Direct transcription of the peak definition, for small arrays."""
    n_samples, n_channels = traces.shape
    found = []
    for t, c in itertools.product(range(n_samples), range(n_channels)):
        value = traces[t, c]
        if not good[c] or value > -threshold:
            continue
        wins = True
        for t2 in range(max(0, t - exclude), min(n_samples, t + exclude + 1)):
            for c2 in np.flatnonzero(mask[c] & good):
                other = traces[t2, c2]
                if (t2, c2) == (t, c):
                    continue
                if other < value or (other == value and (t2, c2) < (t, c)):
                    wins = False
        if wins:
            found.append((t, c))
    return found


@pytest.fixture(scope="module")
def probe():
    positions = two_column_probe(16)
    return {
        "positions": positions,
        "mask": neighbour_mask(positions, radius_um=60.0),
        "neighbours": nearest_neighbours(positions, n_neighbours=6),
    }


@pytest.fixture(scope="module")
def basis():
    rng = np.random.default_rng(3)
    waves = np.array([biphasic(a) for a in rng.uniform(5, 30, 300)])
    waves += 0.2 * rng.standard_normal(waves.shape)
    return fit_temporal_pca(waves, n_components=3, seed=0)


# --------------------------------------------------------------------------
# Neighbourhoods
# --------------------------------------------------------------------------


def test_neighbour_mask_uses_inclusive_radius():
    positions = two_column_probe(3)
    mask = neighbour_mask(positions, radius_um=20.0)
    # Channel 0 at (0, 0): itself and channel 2 at (0, 20); channel 1 is 32 away.
    np.testing.assert_array_equal(np.flatnonzero(mask[0]), [0, 2])
    np.testing.assert_array_equal(np.flatnonzero(mask[2]), [0, 2, 4])
    assert mask.dtype == bool and np.array_equal(mask, mask.T)
    assert neighbour_mask(positions, radius_um=38.0)[0, 3]  # hypot(32, 20) = 37.7


def test_nearest_neighbours_sorted_by_distance_then_index():
    positions = np.array([[0.0, 0.0], [10.0, 0.0], [-10.0, 0.0], [0.0, 5.0], [30.0, 0]])
    table = nearest_neighbours(positions, n_neighbours=4)
    np.testing.assert_array_equal(table[0], [0, 3, 1, 2])  # 1 and 2 tie at 10 um
    np.testing.assert_array_equal(table[4], [4, 1, 0, 3])
    assert table.shape == (5, 4)


# --------------------------------------------------------------------------
# Peak detection
# --------------------------------------------------------------------------


def test_planted_spikes_found_at_exact_sample_and_main_channel(probe):
    pos = probe["positions"]
    # Sources right under a channel, so the main channel is known exactly.
    planted = [(100, 5), (260, 12), (400, 30), (555, 0), (700, 19), (860, 26)]
    spikes = [(s, tuple(pos[c]), 20.0) for s, c in planted]
    # Channels outside the 60 um radius see at most 2.9 (10 um deep source):
    # with noise 0.5 they stay above -threshold.
    traces = plant(1000, pos, spikes, noise=0.5, seed=1)
    peaks = detect_peaks(
        traces,
        core_start=0,
        core_stop=1000,
        threshold=THRESHOLD,
        neighbour_mask=probe["mask"],
        exclude_samples=EXCLUDE,
    )
    assert peaks.dtype == PEAK_DTYPE
    np.testing.assert_array_equal(peaks["sample_index"], [s for s, _ in planted])
    np.testing.assert_array_equal(peaks["channel_index"], [c for _, c in planted])
    np.testing.assert_allclose(peaks["amplitude"], -20.0, atol=1.5)
    assert np.all(peaks["x_um"] == 0) and np.all(peaks["y_um"] == 0)


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_spike_at_chunk_boundary_found_once(probe, offset):
    pos = probe["positions"]
    chunk = 300
    spike = chunk + offset
    traces = plant(900, pos, [(spike, tuple(pos[9]), 20.0)], noise=0.5, seed=2)
    margin = detect_margin_samples(
        exclude_samples=EXCLUDE, pre_samples=PRE, post_samples=POST
    )
    peaks, _ = chunked(
        traces,
        chunk,
        margin,
        detect_peaks,
        threshold=THRESHOLD,
        neighbour_mask=probe["mask"],
        exclude_samples=EXCLUDE,
    )
    np.testing.assert_array_equal(peaks["sample_index"], [spike])
    np.testing.assert_array_equal(peaks["channel_index"], [9])


def test_chunking_does_not_change_table_or_features(probe, basis):
    pos = probe["positions"]
    rng = np.random.default_rng(5)
    n_samples = 4000
    # Spikes everywhere, including close to the recording edges.
    samples = np.concatenate(
        [[PRE - 2, n_samples - 3], rng.integers(PRE, n_samples - POST, 60)]
    )
    spikes = [
        (int(s), (rng.uniform(0, 32), rng.uniform(0, 300)), rng.uniform(6, 30))
        for s in samples
        if s >= PRE and s + POST <= n_samples
    ]
    traces = plant(n_samples, pos, spikes, noise=1.0, seed=6)
    traces[: PRE - 1, 3] = -9.0  # a plateau at the recording start: sample 0 wins
    kwargs = dict(
        threshold=THRESHOLD,
        neighbour_mask=probe["mask"],
        exclude_samples=EXCLUDE,
        good_mask=None,
        neighbours=probe["neighbours"],
        positions_um=pos,
        pre_samples=PRE,
        post_samples=POST,
        pca_basis=basis,
    )
    margin = detect_margin_samples(
        exclude_samples=EXCLUDE, pre_samples=PRE, post_samples=POST
    )
    whole, whole_features = chunked(traces, n_samples, margin, detect_chunk, **kwargs)
    assert 30 < whole.size < 80 and 0 in whole["sample_index"]
    for chunk in (250, 777):
        peaks, features = chunked(traces, chunk, margin, detect_chunk, **kwargs)
        np.testing.assert_array_equal(peaks, whole)
        np.testing.assert_array_equal(features, whole_features)


def test_exclusion_window_on_one_channel(probe):
    pos = probe["positions"]
    source = tuple(pos[14])
    close = plant(
        600,
        pos,
        [(200, source, 20.0), (200 + EXCLUDE - 2, source, 15.0)],
        noise=0.0,
        seed=0,
    )
    far = plant(
        600,
        pos,
        [(200, source, 20.0), (200 + 3 * EXCLUDE, source, 15.0)],
        noise=0.0,
        seed=0,
    )
    kwargs = dict(
        core_start=0,
        core_stop=600,
        threshold=THRESHOLD,
        neighbour_mask=probe["mask"],
        exclude_samples=EXCLUDE,
    )
    one = detect_peaks(close, **kwargs)
    two = detect_peaks(far, **kwargs)
    np.testing.assert_array_equal(one["sample_index"], [200])
    np.testing.assert_array_equal(two["sample_index"], [200, 200 + 3 * EXCLUDE])
    np.testing.assert_array_equal(two["channel_index"], [14, 14])


def test_distant_channels_same_sample_both_found(probe):
    pos = probe["positions"]
    traces = plant(
        500,
        pos,
        [(250, tuple(pos[2]), 20.0), (250, tuple(pos[29]), 12.0)],
        noise=0.3,
        seed=4,
    )
    peaks = detect_peaks(
        traces,
        core_start=0,
        core_stop=500,
        threshold=THRESHOLD,
        neighbour_mask=probe["mask"],
        exclude_samples=EXCLUDE,
    )
    np.testing.assert_array_equal(peaks["sample_index"], [250, 250])
    np.testing.assert_array_equal(peaks["channel_index"], [2, 29])


def test_bad_channel_never_spikes_and_is_ignored(probe):
    pos = probe["positions"]
    traces = np.zeros((200, pos.shape[0]), dtype=np.float32)
    traces[100, 10] = -50.0  # bad channel: huge artefact
    traces[102, 12] = -8.0  # good neighbour 20 um away: would be excluded by it
    good = np.ones(pos.shape[0], dtype=bool)
    good[10] = False
    kwargs = dict(
        core_start=0,
        core_stop=200,
        threshold=THRESHOLD,
        neighbour_mask=probe["mask"],
        exclude_samples=EXCLUDE,
    )
    with_bad = detect_peaks(traces, good_mask=good, **kwargs)
    all_good = detect_peaks(traces, **kwargs)
    assert with_bad[["sample_index", "channel_index"]].tolist() == [(102, 12)]
    assert all_good[["sample_index", "channel_index"]].tolist() == [(100, 10)]


def test_matches_definition_with_ties_and_partial_margin():
    # Coarsely quantized values make equal minima common, so tie-breaking is
    # exercised; an asymmetric mask and a bad channel complete the picture.
    rng = np.random.default_rng(11)
    traces = np.round(rng.standard_normal((300, 7)) * 1.5).astype(np.float32)
    mask = rng.random((7, 7)) < 0.5
    np.fill_diagonal(mask, True)
    good = np.array([True, True, False, True, True, True, True])
    reference = brute_force_peaks(
        traces, threshold=2.0, mask=mask, exclude=3, good=good
    )
    assert len(reference) > 20
    for start, stop in [(0, 300), (1, 299), (3, 297), (100, 140)]:
        peaks = detect_peaks(
            traces,
            core_start=start,
            core_stop=stop,
            threshold=2.0,
            neighbour_mask=mask,
            exclude_samples=3,
            good_mask=good,
        )
        expected = [(t - start, c) for t, c in reference if start <= t < stop]
        assert peaks[["sample_index", "channel_index"]].tolist() == expected
    zero = detect_peaks(
        traces,
        core_start=0,
        core_stop=300,
        threshold=2.0,
        neighbour_mask=mask,
        exclude_samples=0,
        good_mask=good,
    )
    expected = brute_force_peaks(traces, threshold=2.0, mask=mask, exclude=0, good=good)
    assert zero[["sample_index", "channel_index"]].tolist() == expected


def test_noise_only_chunk_returns_shaped_empty(probe, basis):
    traces = np.random.default_rng(8).standard_normal((1000, 32)).astype(np.float32)
    margin = detect_margin_samples(
        exclude_samples=EXCLUDE, pre_samples=PRE, post_samples=POST
    )
    peaks, features = detect_chunk(
        traces,
        core_start=margin,
        core_stop=1000 - margin,
        threshold=6.0,
        neighbour_mask=probe["mask"],
        exclude_samples=EXCLUDE,
        good_mask=None,
        neighbours=probe["neighbours"],
        positions_um=probe["positions"],
        pre_samples=PRE,
        post_samples=POST,
        pca_basis=basis,
    )
    assert peaks.dtype == PEAK_DTYPE and peaks.shape == (0,)
    assert features.dtype == np.float32 and features.shape == (0, 6, 3)
    flat = detect_peaks(
        np.zeros((0, 32), np.float32),
        core_start=0,
        core_stop=0,
        threshold=THRESHOLD,
        neighbour_mask=probe["mask"],
        exclude_samples=EXCLUDE,
    )
    assert flat.shape == (0,)


# --------------------------------------------------------------------------
# Snippets, PCA, localization
# --------------------------------------------------------------------------


def test_extract_snippets_cuts_exact_samples_and_channels():
    window = (100 * np.arange(50)[:, None] + np.arange(4)[None, :]).astype(np.float32)
    snippets = extract_snippets(
        window,
        np.array([3, 40]),
        np.array([[2, 0], [3, 3]]),
        pre_samples=3,
        post_samples=10,
    )
    assert snippets.shape == (2, 13, 2) and snippets.dtype == np.float32
    np.testing.assert_array_equal(snippets[0, :, 0], 100 * np.arange(0, 13) + 2)
    np.testing.assert_array_equal(snippets[1, 3], [4003, 4003])  # trough at index pre
    empty = extract_snippets(
        window[:5],  # shorter than a snippet: fine when there is no spike
        np.zeros(0, np.int64),
        np.zeros((0, 2), np.int64),
        pre_samples=3,
        post_samples=10,
    )
    assert empty.shape == (0, 13, 2) and empty.dtype == np.float32


def test_temporal_pca_is_deterministic_and_reconstructs(basis):
    rng = np.random.default_rng(21)
    waves = np.array([biphasic(a) for a in rng.uniform(5, 30, 400)])
    waves += 0.2 * rng.standard_normal(waves.shape)
    first = fit_temporal_pca(waves, n_components=3, seed=7, max_waveforms=200)
    again = fit_temporal_pca(waves, n_components=3, seed=7, max_waveforms=200)
    other = fit_temporal_pca(waves, n_components=3, seed=8, max_waveforms=200)
    np.testing.assert_array_equal(first.components, again.components)
    np.testing.assert_array_equal(first.mean, again.mean)
    assert not np.array_equal(first.mean, other.mean)
    assert first.components.shape == (3, PRE + POST)
    assert first.components.dtype == np.float32 and first.mean.dtype == np.float32
    clean = np.stack([biphasic(8.0), biphasic(27.0)], axis=1)[None]  # (1, T, 2)
    scores = project_temporal(clean, first)
    assert scores.shape == (1, 2, 3) and scores.dtype == np.float32
    rebuilt = scores[0] @ first.components + first.mean
    error = np.linalg.norm(rebuilt - clean[0].T, axis=1) / np.linalg.norm(
        clean[0].T, axis=1
    )
    assert np.all(error < 0.03)


@pytest.mark.parametrize(
    "source", [(0.0, 150.0), (16.0, 150.0), (10.0, 163.0), (28.0, 141.0), (5.0, 171.0)]
)
def test_localization_of_a_clean_spike(source):
    positions = two_column_probe(16)
    traces = plant(
        200, positions, [(100, source, 20.0)], noise=0.0, seed=0, depth_um=20.0
    )
    main = int(np.argmin(traces[100]))
    channels = nearest_neighbours(positions, n_neighbours=10)[main][None]
    snippets = extract_snippets(
        traces, np.array([100]), channels, pre_samples=PRE, post_samples=POST
    )
    x, y = localize_spikes(snippets, channels, positions)
    assert x.dtype == np.float32 and x.shape == (1,)
    # Plain peak-to-peak weights miss (0, 150) by 14 um, floor-subtracted ones by 8.
    assert np.hypot(x[0] - source[0], y[0] - source[1]) < 5.0
    # Amplitudes directly give the same answer as snippets.
    x2, y2 = localize_spikes(np.ptp(snippets, axis=1), channels, positions)
    np.testing.assert_allclose([x2[0], y2[0]], [x[0], y[0]], rtol=1e-6)


def test_localization_flat_neighbourhood_is_mean_position():
    positions = two_column_probe(2)
    x, y = localize_spikes(np.ones((1, 4)), np.array([[0, 1, 2, 3]]), positions)
    np.testing.assert_allclose([x[0], y[0]], [16.0, 10.0])


# --------------------------------------------------------------------------
# Margins and argument errors
# --------------------------------------------------------------------------


def test_detect_margin_samples():
    assert (
        detect_margin_samples(exclude_samples=9, pre_samples=30, post_samples=45) == 45
    )
    assert (
        detect_margin_samples(exclude_samples=50, pre_samples=30, post_samples=45) == 50
    )


def _detect(**overrides):
    kwargs = dict(
        window=np.zeros((100, 4), np.float32),
        core_start=10,
        core_stop=90,
        threshold=5.0,
        neighbour_mask=np.eye(4, dtype=bool),
        exclude_samples=3,
    )
    kwargs.update(overrides)
    window = kwargs.pop("window")
    return detect_peaks(window, **kwargs)


def _detect_chunk(**overrides):
    """detect_chunk on a window with one spike at window sample 5, channel 1."""
    window = np.zeros((100, 4), np.float32)
    window[5, 1] = -9.0
    kwargs = dict(
        core_start=5,
        core_stop=95,
        threshold=5.0,
        neighbour_mask=np.eye(4, dtype=bool),
        exclude_samples=3,
        good_mask=None,
        neighbours=np.array([[0, 1], [1, 0], [2, 3], [3, 2]]),
        positions_um=two_column_probe(2),
        pre_samples=3,
        post_samples=7,
        pca_basis=TemporalBasis(
            np.eye(10, dtype=np.float32)[[3, 0]], np.zeros(10, np.float32)
        ),
    )
    kwargs.update(overrides)
    return detect_chunk(window, **kwargs)


def test_detect_chunk_fills_positions_and_features():
    peaks, features = _detect_chunk()
    assert peaks[["sample_index", "channel_index"]].tolist() == [(0, 1)]
    np.testing.assert_allclose([peaks["x_um"][0], peaks["y_um"][0]], [32.0, 0.0])
    # The basis picks the trough sample and the first sample of each channel;
    # the feature channels of main channel 1 are [1, 0].
    assert features.shape == (1, 2, 2) and features.dtype == np.float32
    np.testing.assert_array_equal(features[0], [[-9.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: neighbour_mask(np.zeros((3, 3)), radius_um=1.0),
            r"positions_um must have shape \(n_channels, 2\), got \(3, 3\)",
        ),
        (
            lambda: neighbour_mask(np.zeros((3, 2)), radius_um=-3.0),
            "radius_um must be a finite value >= 0, got -3.0",
        ),
        (
            lambda: nearest_neighbours(np.zeros((3, 2)), n_neighbours=4),
            "n_neighbours must be <= n_channels=3, got 4",
        ),
        (
            lambda: nearest_neighbours(np.zeros((3, 2)), n_neighbours=0),
            "n_neighbours must be >= 1, got 0",
        ),
        (
            lambda: _detect(threshold=-1.0),
            "threshold must be a finite value > 0, got -1.0",
        ),
        (lambda: _detect(exclude_samples=-2), "exclude_samples must be >= 0, got -2"),
        (
            lambda: _detect(exclude_samples=2.5),
            "exclude_samples must be an integer, got 2.5",
        ),
        (lambda: _detect(core_stop=5), "core_stop must be >= 10, got 5"),
        (
            lambda: _detect(core_stop=101),
            "core_stop must be <= window length 100, got 101",
        ),
        (
            lambda: _detect(neighbour_mask=np.eye(3, dtype=bool)),
            r"neighbour_mask must be a bool array of shape \(4, 4\)",
        ),
        (
            lambda: _detect(good_mask=np.ones(4)),
            r"good_mask must be a bool array of shape \(4,\), got float64",
        ),
        (
            lambda: _detect(window=np.zeros(10)),
            r"window must have shape \(n_samples, n_channels\), got \(10,\)",
        ),
        (
            lambda: extract_snippets(
                np.zeros((50, 2)),
                np.array([2]),
                np.array([[0]]),
                pre_samples=3,
                post_samples=4,
            ),
            r"sample_index_in_window must lie in \[3, 46\]",
        ),
        (
            lambda: extract_snippets(
                np.zeros((50, 2)),
                np.array([20]),
                np.array([[2]]),
                pre_samples=3,
                post_samples=4,
            ),
            r"channels must lie in \[0, 1\], got range \[2, 2\]",
        ),
        (
            lambda: extract_snippets(
                np.zeros((50, 2)),
                np.array([20]),
                np.array([0]),
                pre_samples=3,
                post_samples=4,
            ),
            r"channels must be an integer array of shape \(1, k\)",
        ),
        (
            lambda: fit_temporal_pca(np.zeros((2, 10)), n_components=3, seed=0),
            r"n_components must be <= min\(n_waveforms, n_times\) = 2, got 3",
        ),
        (
            lambda: project_temporal(
                np.zeros((2, 9, 3), np.float32),
                TemporalBasis(np.zeros((3, 10), np.float32), np.zeros(10, np.float32)),
            ),
            r"snippets must have shape \(n_spikes, 10, k\)",
        ),
        (
            lambda: localize_spikes(
                np.ones((1, 4)),
                np.array([[0, 1, 2, 3]]),
                two_column_probe(2),
                method="monopole",
            ),
            "method must be 'center_of_mass', got 'monopole'",
        ),
        (
            lambda: _detect_chunk(neighbours=np.zeros((3, 2), np.int64)),
            r"neighbours must have shape \(4, k\), got \(3, 2\)",
        ),
        (
            lambda: _detect_chunk(pre_samples=4),
            r"snippets must have shape \(n_spikes, 10, k\) to match the basis",
        ),
        (
            lambda: _detect_chunk(core_start=0, pre_samples=7, post_samples=3),
            r"sample_index_in_window must lie in \[7, 97\]",
        ),
    ],
)
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_fallback_basis_is_orthonormal_and_projects_an_empty_spike_set():
    basis = fallback_temporal_basis(75, n_components=3)
    assert basis.components.shape == (3, 75) and basis.components.dtype == np.float32
    np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(3), atol=1e-6)
    assert not basis.mean.any()
    assert project_temporal(np.zeros((0, 75, 4), np.float32), basis).shape[0] == 0
    with pytest.raises(ValueError, match="n_components must be <= n_times=2, got 3"):
        fallback_temporal_basis(2, n_components=3)


def test_chunk_read_block_by_block_gives_the_whole_chunks_spikes(
    tmp_path, probe, basis, monkeypatch
):
    """A detect job reads its chunk block by block (shardsort.jobs.chunk_windows);
    spikes planted across the block borders come out as from the whole chunk."""
    from shardsort import jobs
    from shardsort.io.arrays import ChunkedRecording, write_array

    n_samples = 6000
    spikes = [(int(t), (16.0, 20.0 * (k % 16)), 25.0)
              for k, t in enumerate(range(150, n_samples - 150, 233))]
    traces = plant(n_samples, probe["positions"], spikes, noise=1.0, seed=11)
    for start in (0, 3000):  # two chunk files, as the preprocess jobs write them
        write_array(tmp_path / f"t{start}.bin", traces[start : start + 3000],
                    sampling_rate_hz=30000.0, start_sample=start)
    recording = ChunkedRecording([tmp_path / "t0.bin", tmp_path / "t3000.bin"])
    margin = detect_margin_samples(exclude_samples=EXCLUDE, pre_samples=PRE, post_samples=POST)
    kwargs = dict(threshold=THRESHOLD, neighbour_mask=probe["mask"], exclude_samples=EXCLUDE,
                  good_mask=None, neighbours=probe["neighbours"],
                  positions_um=probe["positions"], pre_samples=PRE, post_samples=POST,
                  pca_basis=basis)
    chunk = {"start": 1000, "stop": 5000}
    whole = recording.get_traces(1000 - margin, 5000 + margin)
    expected, expected_features = detect_chunk(
        whole, core_start=margin, core_stop=margin + 4000, **kwargs
    )
    monkeypatch.setattr(jobs, "BLOCK_VALUES", 700 * traces.shape[1])  # 6 blocks of ~667
    blocks = list(jobs.chunk_windows(recording, chunk, margin))
    assert len(blocks) == 6 and blocks[0][0] == 0 and blocks[-1][1] == 4000
    parts = []
    for first, last, window in blocks:
        assert window.shape == (last - first + 2 * margin, traces.shape[1])
        peaks, features = detect_chunk(
            window, core_start=margin, core_stop=margin + last - first, **kwargs
        )
        peaks["sample_index"] += first
        parts.append((peaks, features))
    peaks = np.concatenate([p for p, _ in parts])
    assert len(expected) >= 15
    np.testing.assert_array_equal(peaks, expected)
    np.testing.assert_array_equal(np.concatenate([f for _, f in parts]), expected_features)


def test_core_blocks_cover_the_core_in_nearly_equal_blocks():
    from shardsort.jobs import BLOCK_VALUES, core_blocks

    for n_core, n_channels, margin, most in [(276_000, 384, 120, None), (9, 4, 1, None),
                                             (1_650_000, 64, 300, None), (50_000, 384, 100, 7_000),
                                             (1000, 8, 400, None)]:
        blocks = core_blocks(n_core, n_channels=n_channels, margin_samples=margin,
                             max_samples=most)
        sizes = [last - first for first, last in blocks]
        assert blocks[0][0] == 0 and blocks[-1][1] == n_core
        assert all(b[1] == c[0] for b, c in zip(blocks, blocks[1:]))
        assert max(sizes) - min(sizes) < len(blocks)  # only the last is shorter
        cap = max(BLOCK_VALUES // n_channels, 4 * margin)
        assert max(sizes) <= (cap if most is None else min(cap, most))
        assert len(blocks) == 1 or min(sizes) >= min(4 * margin, n_core) // 2
    assert core_blocks(0, n_channels=4, margin_samples=3) == []
