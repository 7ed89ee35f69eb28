"""Shard plan: a pure function of metadata and the memory budget."""

import pytest

from shardsort import plan as planmod
from shardsort.plan import make_plan, modelled_peak_mb, sample_segments

MARGINS = {"filter": 900, "detect": 100, "deconvolve": 300}


def _plan(**kw):
    args = dict(
        n_samples=30000 * 60,
        n_channels=64,
        sampling_rate_hz=30000.0,
        max_memory_mb=1000,
        channels_per_shard=32,
        channels_per_group=8,
        margins=MARGINS,
    )
    args.update(kw)
    return make_plan(**args)


def _check_tiling(p):
    assert p.chunks[0].start == 0
    assert p.chunks[-1].stop == p.n_samples
    for a, b in zip(p.chunks[:-1], p.chunks[1:]):
        assert a.stop == b.start
        assert a.n_samples == p.chunk_samples
    assert 0 < p.chunks[-1].n_samples <= p.chunk_samples


def test_chunks_tile_the_recording_and_fit_the_budget():
    p = _plan()
    _check_tiling(p)
    peak = modelled_peak_mb(chunk_samples=p.chunk_samples, margin_samples=900, n_channels=64)
    assert peak <= 1000
    # one quantum more would not fit
    quantum = int(planmod.CHUNK_QUANTUM_S * 30000)
    more = modelled_peak_mb(
        chunk_samples=p.chunk_samples + quantum, margin_samples=900, n_channels=64
    )
    assert more > 1000
    assert p.chunk_samples % quantum == 0


def test_chunk_length_follows_the_budget_and_channels():
    small = _plan(max_memory_mb=600)
    big = _plan(max_memory_mb=2000)
    assert small.chunk_samples < big.chunk_samples
    many = _plan(n_channels=384)
    assert many.chunk_samples < _plan().chunk_samples


def test_partial_last_chunk():
    p = _plan(n_samples=30000 * 60 + 17)
    _check_tiling(p)
    assert p.chunks[-1].n_samples != p.chunk_samples


def test_recording_shorter_than_one_chunk():
    p = _plan(n_samples=1000)
    assert p.n_chunks == 1
    assert (p.chunks[0].start, p.chunks[0].stop) == (0, 1000)
    assert p.chunk_samples == 1000


def test_single_sample_recording():
    p = _plan(n_samples=1)
    assert [(c.start, c.stop) for c in p.chunks] == [(0, 1)]


def test_channel_count_not_divisible_by_shard_size():
    p = _plan(n_channels=70, channels_per_shard=32, channels_per_group=8)
    assert p.channel_shards == ((0, 32), (32, 64), (64, 70))
    assert p.channel_groups[-1] == (64, 70)
    assert sum(hi - lo for lo, hi in p.channel_groups) == 70


def test_plan_is_pure():
    assert _plan() == _plan()
    assert _plan().to_dict() == _plan().to_dict()


def test_neighbour_chunks_cover_margins():
    p = _plan()
    n = p.n_chunks
    assert n >= 3
    assert p.neighbour_chunks(0, 10) == [0, 1]
    assert p.neighbour_chunks(1, 10) == [0, 1, 2]
    assert p.neighbour_chunks(n - 1, 10) == [n - 2, n - 1]
    assert p.neighbour_chunks(1, 0) == [1]
    # a margin longer than a chunk reaches two chunks out
    assert p.neighbour_chunks(2, p.chunk_samples + 1) == [0, 1, 2, 3, 4][: min(5, n)]


def test_budget_too_small_names_the_parameter():
    with pytest.raises(ValueError, match="max_memory_mb=400 is too small for 4096 channels"):
        _plan(max_memory_mb=400, n_channels=4096)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n_samples": 0}, "n_samples must be >= 1, got 0"),
        ({"channels_per_shard": 0}, "channels_per_shard must be >= 1, got 0"),
        ({"channels_per_group": -1}, "channels_per_group must be >= 1, got -1"),
        ({"margins": {"filter": -5}}, "margin for stage 'filter' must be >= 0, got -5"),
        ({"sampling_rate_hz": 0}, "sampling_rate_hz must be > 0, got 0"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        _plan(**kw)


def test_sample_segments_depend_on_the_recording_only():
    segs = sample_segments(30000 * 100, n_segments=5, segment_samples=60000)
    assert segs[0] == (0, 60000) and segs[-1] == (30000 * 100 - 60000, 30000 * 100)
    assert len(segs) == 5
    assert all(b - a == 60000 for a, b in segs)
    # a short recording: segments overlap and merge into one
    assert sample_segments(50000, n_segments=4, segment_samples=60000) == [(0, 50000)]
    assert sample_segments(0, n_segments=4, segment_samples=10) == []
    one = sample_segments(1000, n_segments=1, segment_samples=100)
    assert one == [(450, 550)]
