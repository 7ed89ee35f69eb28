"""The shard plan: how one recording is cut into independent jobs.

The plan is a pure function of metadata (number of samples, channels, sampling
rate) and the memory budget. It is computed at DAG-build time, before any job
runs, and the same inputs always give the same shards.

Working-set model
-----------------
Every per-chunk job (filter, preprocess, detect, templates, deconvolve) holds a
window of ``(chunk_samples + 2 * margin_samples) * n_channels`` values plus a
bounded number of working copies of it (float64 filter state and padded
extension in ``filter``; reference, scaled and whitened copies in
``preprocess``; the residual and per-unit objective in ``deconvolve``). We model
the peak as ``BYTES_PER_VALUE`` bytes per sample and channel, a conservative
envelope over those stages measured with the rules' ``benchmark:`` files, plus a
fixed interpreter/library overhead ``BASE_OVERHEAD_MB``::

    peak_bytes = BASE_OVERHEAD_MB * 2**20
                 + BYTES_PER_VALUE * (chunk_samples + 2 * margin_samples) * n_channels

The chunk length is the largest one whose modelled peak fits ``max_memory_mb``,
rounded down to a whole multiple of ``CHUNK_QUANTUM_S`` seconds so chunk borders
fall on round times. The deconvolution objective scales with the number of
units as well; ``deconvolve`` therefore processes long chunks in sub-blocks and
keeps the same bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Bytes per (sample, channel) at the peak of the most demanding per-chunk stage.
#: Measured (benchmarks/results/scale_memory.csv): 11-14 bytes above the
#: interpreter for preprocess and deconvolve; 24 keeps a 2x safety margin.
BYTES_PER_VALUE = 24
#: Interpreter, numpy/scipy and library overhead of one job, in MiB
#: (measured 50-80 MiB after imports; the rest is headroom for small buffers).
BASE_OVERHEAD_MB = 250
#: Chunk lengths are whole multiples of this many seconds.
CHUNK_QUANTUM_S = 0.1


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


def make_plan(
    *,
    n_samples: int,
    n_channels: int,
    sampling_rate_hz: float,
    max_memory_mb: float,
    channels_per_shard: int,
    channels_per_group: int,
    margins: dict[str, int],
) -> ShardPlan:
    """Cut a recording into time chunks, channel shards and channel groups.

    Parameters
    ----------
    n_samples, n_channels, sampling_rate_hz
        Recording metadata.
    max_memory_mb
        Memory budget of one job; determines the chunk length.
    channels_per_shard
        Channels per ``filter`` job (the last shard may be smaller).
    channels_per_group
        Channels per ``cluster`` job (the last group may be smaller).
    margins
        Margin in samples needed by each per-chunk stage, by stage name. The
        largest one enters the memory model.

    Returns
    -------
    ShardPlan
        Chunks cover ``[0, n_samples)`` without gap or overlap; the last chunk
        may be shorter; a recording shorter than one chunk gives one chunk.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    for name, value in (
        ("channels_per_shard", channels_per_shard),
        ("channels_per_group", channels_per_group),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for name, value in margins.items():
        if value < 0:
            raise ValueError(f"margin for stage {name!r} must be >= 0, got {value}")
    margin = max(margins.values(), default=0)
    chunk = chunk_samples_for_budget(
        max_memory_mb=max_memory_mb,
        n_channels=n_channels,
        sampling_rate_hz=sampling_rate_hz,
        margin_samples=margin,
    )
    chunk = min(chunk, n_samples)
    chunks = tuple(
        Chunk(i, lo, hi) for i, (lo, hi) in enumerate(_ranges(n_samples, chunk))
    )
    return ShardPlan(
        n_samples=n_samples,
        n_channels=n_channels,
        sampling_rate_hz=float(sampling_rate_hz),
        chunk_samples=chunk,
        chunks=chunks,
        channel_shards=_ranges(n_channels, channels_per_shard),
        channel_groups=_ranges(n_channels, channels_per_group),
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
