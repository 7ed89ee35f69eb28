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
    # the longest chunk the budget allows: one quantum more would not fit
    quantum = int(planmod.CHUNK_QUANTUM_S * 30000)
    longest = planmod.chunk_samples_for_budget(
        max_memory_mb=1000, n_channels=64, sampling_rate_hz=30000.0, margin_samples=900
    )
    more = modelled_peak_mb(chunk_samples=longest + quantum, margin_samples=900, n_channels=64)
    assert more > 1000 >= modelled_peak_mb(
        chunk_samples=longest, margin_samples=900, n_channels=64
    )
    # the fewest chunks of at most that length, of (nearly) equal length
    assert p.chunk_samples <= longest
    assert p.n_chunks == -(-p.n_samples // longest)
    assert p.chunk_samples % quantum == 0


def test_chunks_are_balanced_without_a_short_remainder():
    # 384 channels x 49 s at 2000 MB: at most 15.8 s per chunk; four chunks of
    # 12.3 s (the last 12.1 s) rather than three of 15.8 s and a 1.6 s remainder.
    p = _plan(n_samples=30000 * 49, n_channels=384, max_memory_mb=2000)
    _check_tiling(p)
    assert p.n_chunks == 4
    assert [c.n_samples for c in p.chunks] == [369000] * 3 + [363000]
    quantum = int(planmod.CHUNK_QUANTUM_S * 30000)
    for n_samples in (30000 * 60 + 17, 30000 * 121, 30000 * 600 + 1):
        p = _plan(n_samples=n_samples, n_channels=384, max_memory_mb=2000)
        _check_tiling(p)
        # the last chunk is shorter by less than one quantum per chunk
        assert p.chunk_samples - p.chunks[-1].n_samples < p.n_chunks * quantum


@pytest.mark.parametrize(
    "n_channels, seconds, memory, expected",
    [
        (16, 120, 2000, 1),  # 2 x 960 channel-s would be below min_job_channel_s
        (64, 60, 4000, 2),  # fits one chunk; cut in two chunks of 1,920 channel-s
        (64, 240, 2000, 3),  # the budget cuts it finer anyway
        (32, 20, 2000, 1),
    ],
)
def test_short_recordings_get_min_parallel_jobs_chunks_when_big_enough(
    n_channels, seconds, memory, expected
):
    p = _plan(
        n_samples=30000 * seconds, n_channels=n_channels, max_memory_mb=memory,
        min_parallel_jobs=2, min_job_channel_s=1900,
    )
    _check_tiling(p)
    assert p.n_chunks == expected


def test_memory_budget_stays_a_hard_bound():
    for n_channels in (16, 64, 384, 1024):
        for seconds in (1, 20, 120, 3600):
            for memory in (800, 2000):
                p = _plan(
                    n_samples=30000 * seconds, n_channels=n_channels, max_memory_mb=memory,
                    channels_per_shard="auto", channels_per_group="auto",
                    min_parallel_jobs=4, min_job_channel_s=100,
                )
                _check_tiling(p)
                peak = modelled_peak_mb(
                    chunk_samples=p.chunk_samples, margin_samples=900, n_channels=n_channels
                )
                assert peak <= memory


def test_auto_shards_hold_every_channel():
    p = _plan(n_channels=384, channels_per_shard="auto")
    assert p.channel_shards == ((0, 384),)
    assert _plan(n_channels=70, channels_per_shard=32).channel_shards[-1] == (64, 70)


@pytest.mark.parametrize(
    "n_channels, seconds, size",
    [
        (384, 60, 32),  # 2000 channel-s -> 34 channels, 12 equal groups of 32
        (384, 3600, 8),  # long: never below MIN_GROUP_CHANNELS
        (16, 120, 16),  # small: one group
        (64, 120, 16),  # 17 channels -> 4 groups of 16
        (4, 10, 4),
    ],
)
def test_auto_groups_follow_the_work(n_channels, seconds, size):
    p = _plan(
        n_samples=30000 * seconds, n_channels=n_channels, max_memory_mb=2000,
        channels_per_group="auto", min_parallel_jobs=2, min_job_channel_s=2000,
    )
    assert p.channel_groups[0] == (0, size)
    assert p.channel_groups[-1][1] == n_channels
    assert all(hi - lo <= size for lo, hi in p.channel_groups)


def test_auto_groups_split_for_parallel_jobs_when_big_enough():
    # 64 channels x 120 s = 7,680 channel-s: at least 4 groups of 1,920
    p = _plan(
        n_samples=30000 * 120, channels_per_group="auto", min_parallel_jobs=4,
        min_job_channel_s=1000,
    )
    assert len(p.channel_groups) == 8  # MIN_GROUP_CHANNELS binds first
    p = _plan(
        n_samples=30000 * 120, channels_per_group="auto", min_parallel_jobs=4,
        min_job_channel_s=3000,
    )
    assert len(p.channel_groups) == 3  # 25 channels each: 3 groups, not 4


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
    p = _plan(max_memory_mb=600)
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
        ({"channels_per_group": "all"}, "channels_per_group must be an integer >= 1 or 'auto'"),
        ({"min_parallel_jobs": 0}, "min_parallel_jobs must be >= 1, got 0"),
        ({"min_job_channel_s": -1}, "min_job_channel_s must be >= 0, got -1"),
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
