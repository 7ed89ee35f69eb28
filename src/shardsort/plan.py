"""The shard plan: how one recording is cut into independent jobs.

The plan is a pure function of metadata (number of samples, channels, sampling
rate) and the memory budget. It is computed at DAG-build time, before any job
runs, and the same inputs always give the same shards.

Working-set model
-----------------
The jobs that write a whole chunk (filter, preprocess, correct) hold it
once or twice: ``preprocess`` its filtered float32 chunk with margins (filtered
in place, a segment of rows read at a time), its int16 and compressed copies
(~7 bytes per value); ``correct`` its int16 and compressed output (~5). The
jobs that only read a chunk (motion_peaks, detect, template_sums, deconvolve)
work through it in blocks of at most 64 MB (``shardsort.jobs.core_blocks``), so
their memory does not grow with the chunk. We model the peak as
``BYTES_PER_VALUE`` bytes per sample and channel of the chunk with its margins,
an envelope over those stages measured with the rules' ``benchmark:`` files,
plus a fixed interpreter/library overhead ``BASE_OVERHEAD_MB``::

    peak_bytes = BASE_OVERHEAD_MB * 2**20
                 + BYTES_PER_VALUE * (chunk_samples + 2 * margin_samples) * n_channels

The longest chunk whose modelled peak fits ``max_memory_mb`` (rounded down to
a whole multiple of ``CHUNK_QUANTUM_S`` seconds so chunk borders fall on round
times) is a hard upper bound. The deconvolution objective scales with the
number of units as well; ``deconvolve`` therefore processes long chunks in
sub-blocks and keeps the same bound.

Job sizes
---------
Every job pays a fixed cost whatever its size: Python start-up, Snakemake's
script preamble and the imports (1-2 s of CPU for a ``script:`` job, numba
~0.4 s more), so the plan makes few, large jobs:

* **time chunks** as long as the memory budget allows, with the recording cut
  into the fewest chunks of (nearly) equal length (no short remainder chunk);
  only a recording that would fit in fewer than ``min_parallel_jobs`` chunks is
  cut into that many, so that several cores have work, and only as far as
  each chunk still holds ``min_job_channel_s`` channel-seconds of recording;
* **filter shards** (``channels_per_shard: auto``): all channels in one shard,
  filtered by the chunk's preprocess job itself (no filter job). The filter
  works through 32-channel blocks and keeps only its float32 output for the
  whole shard (4 bytes per value plus one block's temporaries), well inside
  the per-chunk model above, so a whole-probe shard fits wherever the chunk
  fits;
* **channel groups** (``channels_per_group: auto``): clustering is per main
  channel (a group's result does not depend on the group), and its work grows
  with channels x duration, so a group holds at least ``min_job_channel_s``
  channel-seconds and at least ``MIN_GROUP_CHANNELS`` channels; groups are of
  equal size, and at least ``min_parallel_jobs`` of them where each can still
  hold ``min_job_channel_s``.

Results do not depend on any of these sizes (same spike trains for every
chunking; clustering per channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Bytes per (sample, channel) at the peak of the most demanding per-chunk stage.
#: Measured (max RSS above the interpreter): preprocess 7.0 at 384 channels
#: (15.8-s chunks) and 7.4 at 64 (75-s chunks), correct 4.7 (drift applied);
#: the block-wise readers stay below 470 MB whatever the chunk. 10 keeps a
#: 1.35x margin (was 16 when the filter and the readers held several copies of
#: the whole chunk: 8 bytes, 11 at 64 channels).
BYTES_PER_VALUE = 10
#: Interpreter, numpy/scipy and library overhead of one job, in MiB
#: (measured 50-80 MiB after imports; the rest is headroom for small buffers).
BASE_OVERHEAD_MB = 250
#: Chunk lengths are whole multiples of this many seconds.
CHUNK_QUANTUM_S = 0.1
#: Fewest channels of an automatic clustering group (the previous fixed size):
#: a long recording does not get one clustering job per channel.
MIN_GROUP_CHANNELS = 8
#: The value of ``channels_per_shard`` / ``channels_per_group`` that lets the
#: plan choose.
AUTO = "auto"


@dataclass(frozen=True)
class Chunk:
    """One time chunk: its core ``[start, stop)`` in absolute samples."""

    index: int
    start: int
    stop: int

    @property
    def n_samples(self) -> int:
        return self.stop - self.start

    def window(self, margin_samples: int, n_samples_total: int) -> tuple[int, int]:
        """Window ``[start - margin, stop + margin)`` clipped to the recording."""
        return (
            max(0, self.start - margin_samples),
            min(n_samples_total, self.stop + margin_samples),
        )


@dataclass(frozen=True)
class ShardPlan:
    """Time chunks, channel shards and channel groups of one recording."""

    n_samples: int
    n_channels: int
    sampling_rate_hz: float
    chunk_samples: int
    chunks: tuple[Chunk, ...]
    channel_shards: tuple[tuple[int, int], ...]
    channel_groups: tuple[tuple[int, int], ...]
    margins: dict[str, int] = field(default_factory=dict)
    max_memory_mb: float = 0.0

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    def chunks_overlapping(self, start: int, stop: int) -> list[int]:
        """Indices of the chunks whose core intersects ``[start, stop)``."""
        first = max(0, start // self.chunk_samples)
        last = min(self.n_chunks - 1, max(0, (stop - 1) // self.chunk_samples))
        return [i for i in range(first, last + 1) if self.chunks[i].start < stop]

    def neighbour_chunks(self, index: int, margin_samples: int) -> list[int]:
        """Chunks a job on chunk ``index`` reads when it needs ``margin_samples``."""
        lo, hi = self.chunks[index].window(margin_samples, self.n_samples)
        return self.chunks_overlapping(lo, hi)

    def to_dict(self) -> dict:
        """Plain-type description for provenance files."""
        return {
            "n_samples": self.n_samples,
            "n_channels": self.n_channels,
            "sampling_rate_hz": self.sampling_rate_hz,
            "chunk_samples": self.chunk_samples,
            "n_chunks": self.n_chunks,
            "channel_shards": [list(s) for s in self.channel_shards],
            "channel_groups": [list(g) for g in self.channel_groups],
            "margins": dict(self.margins),
            "max_memory_mb": self.max_memory_mb,
        }


def modelled_peak_mb(
    *, chunk_samples: int, margin_samples: int, n_channels: int
) -> float:
    """Modelled peak memory (MiB) of one per-chunk job (see module docstring)."""
    values = (chunk_samples + 2 * margin_samples) * n_channels
    return BASE_OVERHEAD_MB + BYTES_PER_VALUE * values / 2**20


def chunk_samples_for_budget(
    *,
    max_memory_mb: float,
    n_channels: int,
    sampling_rate_hz: float,
    margin_samples: int,
) -> int:
    """Longest chunk whose modelled peak memory fits ``max_memory_mb``.

    Raises
    ------
    ValueError
        If the budget cannot hold even one quantum of samples plus margins.
    """
    if n_channels < 1:
        raise ValueError(f"n_channels must be >= 1, got {n_channels}")
    if sampling_rate_hz <= 0:
        raise ValueError(f"sampling_rate_hz must be > 0, got {sampling_rate_hz}")
    quantum = max(1, int(round(CHUNK_QUANTUM_S * sampling_rate_hz)))
    free_bytes = (max_memory_mb - BASE_OVERHEAD_MB) * 2**20
    values = free_bytes / BYTES_PER_VALUE
    samples = int(values // n_channels) - 2 * margin_samples
    chunk = (samples // quantum) * quantum
    if chunk < quantum:
        need = math.ceil(
            modelled_peak_mb(
                chunk_samples=quantum,
                margin_samples=margin_samples,
                n_channels=n_channels,
            )
        )
        raise ValueError(
            f"max_memory_mb={max_memory_mb} is too small for {n_channels} channels: "
            f"one {CHUNK_QUANTUM_S} s chunk with margins needs about {need} MB; "
            f"expected max_memory_mb >= {need}"
        )
    return chunk


def _ranges(n: int, size: int) -> tuple[tuple[int, int], ...]:
    return tuple((lo, min(n, lo + size)) for lo in range(0, n, size))


def balanced_chunk_samples(
    *,
    n_samples: int,
    max_chunk_samples: int,
    quantum_samples: int,
    n_channels: int,
    sampling_rate_hz: float,
    min_parallel_jobs: int = 1,
    min_job_channel_s: float = 0.0,
) -> int:
    """Chunk length cutting ``n_samples`` into the fewest nearly equal chunks.

    The count is the fewest chunks of at most ``max_chunk_samples``, raised to
    ``min_parallel_jobs`` when the recording is long enough that every chunk
    still holds ``min_job_channel_s`` channel-seconds. The length is rounded up
    to a whole ``quantum_samples`` (it never exceeds ``max_chunk_samples``, a
    multiple of the quantum), so only the last chunk is shorter, by less than
    one quantum per chunk.
    """
    n_chunks = math.ceil(n_samples / max_chunk_samples)
    if n_chunks < min_parallel_jobs:
        floor = max(
            quantum_samples,
            math.ceil(min_job_channel_s / n_channels * sampling_rate_hz),
        )
        n_chunks = max(n_chunks, min(min_parallel_jobs, n_samples // floor))
    chunk = quantum_samples * math.ceil(n_samples / n_chunks / quantum_samples)
    return max(1, min(chunk, max_chunk_samples, n_samples))


def auto_channels_per_group(
    *,
    n_channels: int,
    duration_s: float,
    min_parallel_jobs: int = 1,
    min_job_channel_s: float = 0.0,
) -> int:
    """Channels per clustering group (``channels_per_group: auto``).

    At least ``MIN_GROUP_CHANNELS`` channels and ``min_job_channel_s``
    channel-seconds per group; at least ``min_parallel_jobs`` groups where each
    still holds ``min_job_channel_s``; groups of equal size (the last one may
    be smaller).
    """
    per_work = max(1, math.ceil(min_job_channel_s / max(duration_s, 1e-9)))
    size = min(n_channels, max(MIN_GROUP_CHANNELS, per_work))
    n_groups = math.ceil(n_channels / size)
    if n_groups < min_parallel_jobs:
        n_groups = max(n_groups, min(min_parallel_jobs, n_channels // per_work))
    return math.ceil(n_channels / max(1, n_groups))


def _size(name: str, value: int | str, auto: int) -> int:
    if value == AUTO:
        return auto
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= 1 or {AUTO!r}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def make_plan(
    *,
    n_samples: int,
    n_channels: int,
    sampling_rate_hz: float,
    max_memory_mb: float,
    channels_per_shard: int | str = AUTO,
    channels_per_group: int | str = AUTO,
    margins: dict[str, int],
    min_parallel_jobs: int = 1,
    min_job_channel_s: float = 0.0,
) -> ShardPlan:
    """Cut a recording into time chunks, channel shards and channel groups.

    Parameters
    ----------
    n_samples, n_channels, sampling_rate_hz
        Recording metadata.
    max_memory_mb
        Memory budget of one job; bounds the chunk length.
    channels_per_shard
        Channels per ``filter`` job (the last shard may be smaller), or
        ``"auto"``: all channels (see the module docstring).
    channels_per_group
        Channels per ``cluster`` job (the last group may be smaller), or
        ``"auto"``: from the recording's size (:func:`auto_channels_per_group`).
    margins
        Margin in samples needed by each per-chunk stage, by stage name. The
        largest one enters the memory model.
    min_parallel_jobs
        A recording that fits in fewer chunks (or groups) than this is cut
        into this many where each keeps ``min_job_channel_s``.
    min_job_channel_s
        Smallest work of a chunk or automatic group cut for parallelism, in
        channels x seconds of recording.

    Returns
    -------
    ShardPlan
        Chunks cover ``[0, n_samples)`` without gap or overlap, all of
        ``chunk_samples`` but the last, which may be shorter; a recording
        shorter than one chunk gives one chunk.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if min_parallel_jobs < 1:
        raise ValueError(f"min_parallel_jobs must be >= 1, got {min_parallel_jobs}")
    if min_job_channel_s < 0:
        raise ValueError(f"min_job_channel_s must be >= 0, got {min_job_channel_s}")
    shard_size = _size("channels_per_shard", channels_per_shard, n_channels)
    group_size = _size(
        "channels_per_group",
        channels_per_group,
        auto_channels_per_group(
            n_channels=n_channels,
            duration_s=n_samples / sampling_rate_hz if sampling_rate_hz > 0 else 0.0,
            min_parallel_jobs=min_parallel_jobs,
            min_job_channel_s=min_job_channel_s,
        )
        if channels_per_group == AUTO and n_channels >= 1
        else 1,
    )
    for name, value in margins.items():
        if value < 0:
            raise ValueError(f"margin for stage {name!r} must be >= 0, got {value}")
    margin = max(margins.values(), default=0)
    max_chunk = chunk_samples_for_budget(
        max_memory_mb=max_memory_mb,
        n_channels=n_channels,
        sampling_rate_hz=sampling_rate_hz,
        margin_samples=margin,
    )
    chunk = balanced_chunk_samples(
        n_samples=n_samples,
        max_chunk_samples=max_chunk,
        quantum_samples=max(1, int(round(CHUNK_QUANTUM_S * sampling_rate_hz))),
        n_channels=n_channels,
        sampling_rate_hz=sampling_rate_hz,
        min_parallel_jobs=min_parallel_jobs,
        min_job_channel_s=min_job_channel_s,
    )
    chunks = tuple(
        Chunk(i, lo, hi) for i, (lo, hi) in enumerate(_ranges(n_samples, chunk))
    )
    return ShardPlan(
        n_samples=n_samples,
        n_channels=n_channels,
        sampling_rate_hz=float(sampling_rate_hz),
        chunk_samples=chunk,
        chunks=chunks,
        channel_shards=_ranges(n_channels, shard_size),
        channel_groups=_ranges(n_channels, group_size),
        margins=dict(margins),
        max_memory_mb=float(max_memory_mb),
    )


def sample_segments(
    n_samples: int, *, n_segments: int, segment_samples: int
) -> list[tuple[int, int]]:
    """Evenly spread ``[start, stop)`` segments for global estimates.

    They depend on the recording length only, never on the chunking, so noise
    statistics, whitening, the feature basis and the template noise model are
    the same whatever ``shards.max_memory_mb`` is. Overlapping segments (a
    short recording) are merged.
    """
    if n_samples < 1 or n_segments < 1 or segment_samples < 1:
        return []
    length = min(segment_samples, n_samples)
    free = n_samples - length
    starts = sorted(
        {int(round(i * free / max(n_segments - 1, 1))) for i in range(n_segments)}
    )
    if n_segments == 1:
        starts = [free // 2]
    merged: list[tuple[int, int]] = []
    for start in starts:
        stop = start + length
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged
