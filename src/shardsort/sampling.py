"""Deterministic samples of the recording for the global estimates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .io.arrays import ChunkedRecording, read_sidecar

#: At most this many values (samples x channels) are held for noise estimates.
MAX_SAMPLE_VALUES = 32 * 2**20


def load_noise_sample(
    paths: Sequence[str],
    *,
    n_channels: int,
    n_samples: int,
    segments: Sequence[Sequence[int]],
    max_values: int = MAX_SAMPLE_VALUES,
) -> np.ndarray:
    """Stitch the ``filter`` outputs of absolute ``segments`` into one array.

    ``paths`` are channel-shard x time-chunk files (sidecar attrs
    ``start_sample``, ``channel_start``) covering the segments. Each segment is
    cut to its first ``max_values / (n_segments * n_channels)`` samples, so
    memory stays bounded; the result depends on the segments only, never on
    how the recording was chunked or sharded.

    Returns
    -------
    ndarray of float32, shape (n, n_channels)
    """
    by_shard: dict[int, list[str]] = defaultdict(list)
    for path in paths:
        by_shard[int(read_sidecar(path)["channel_start"])].append(path)
    if not by_shard or not segments:
        return np.zeros((0, n_channels), dtype=np.float32)
    shards = [ChunkedRecording(by_shard[c], n_samples=n_samples) for c in sorted(by_shard)]
    if sum(s.n_channels for s in shards) != n_channels:
        raise ValueError(
            f"filtered shards cover {sum(s.n_channels for s in shards)} channels, "
            f"expected {n_channels}"
        )
    per_segment = max(1, max_values // (len(segments) * n_channels))
    blocks = []
    for start, stop in segments:
        stop = min(stop, start + per_segment)
        blocks.append(np.concatenate([s.get_traces(start, stop) for s in shards], axis=1))
    return np.ascontiguousarray(np.concatenate(blocks, axis=0), dtype=np.float32)
