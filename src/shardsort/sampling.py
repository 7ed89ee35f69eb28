"""Deterministic samples of filtered chunks for the global estimates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .io.arrays import read_array, read_sidecar

#: At most this many values (samples x channels) are held for noise estimates.
MAX_SAMPLE_VALUES = 32 * 2**20


def load_noise_sample(
    paths: Sequence[str], *, n_channels: int, max_values: int = MAX_SAMPLE_VALUES
) -> np.ndarray:
    """Stitch sampled ``filter`` outputs into one (n, n_channels) float32 array.

    ``paths`` are shard files of some time chunks (each covering a channel
    range, sidecar attrs ``start_sample``, ``channel_start``). From each chunk
    the first ``max_values / (n_chunks * n_channels)`` samples are kept, so
    memory stays bounded whatever the chunk length or channel count.
    """
    by_chunk: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for path in paths:
        meta = read_sidecar(path)
        by_chunk[int(meta["start_sample"])].append((int(meta["channel_start"]), path))
    if not by_chunk:
        return np.zeros((0, n_channels), dtype=np.float32)
    per_chunk = max(1, max_values // (len(by_chunk) * n_channels))
    blocks = []
    for start in sorted(by_chunk):
        shards = sorted(by_chunk[start])
        parts = [np.asarray(read_array(p)[:per_chunk]) for _, p in shards]
        block = np.concatenate(parts, axis=1)
        if block.shape[1] != n_channels:
            raise ValueError(
                f"chunk starting at sample {start}: shards cover {block.shape[1]} "
                f"channels, expected {n_channels}"
            )
        blocks.append(block)
    return np.ascontiguousarray(np.concatenate(blocks, axis=0), dtype=np.float32)
