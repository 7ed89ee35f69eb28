"""Merging per-chunk event tables."""

import numpy as np
import pytest

from shardsort.tables import PEAK_DTYPE, SPIKE_DTYPE, empty, merge_event_tables


def _spikes(rows):
    t = np.zeros(len(rows), dtype=SPIKE_DTYPE)
    for i, (s, u, a) in enumerate(rows):
        t[i] = (s, u, a)
    return t


def test_merge_sorts_and_removes_border_duplicates():
    a = _spikes([(10, 1, 1.0), (99, 0, 1.0)])
    b = _spikes([(99, 0, 2.0), (100, 2, 1.0), (5, 3, 1.0)])
    merged, kept = merge_event_tables([a, b], keys=("sample_index", "unit_index"))
    assert merged["sample_index"].tolist() == [5, 10, 99, 100]
    # the first table's copy of the duplicate wins
    assert merged["amplitude"][2] == 1.0
    joined = np.concatenate([a, b])
    assert np.array_equal(joined[kept], merged)


def test_same_sample_different_unit_is_kept():
    a = _spikes([(50, 0, 1.0), (50, 1, 1.0)])
    merged, _ = merge_event_tables([a], keys=("sample_index", "unit_index"))
    assert len(merged) == 2


def test_empty_tables():
    merged, kept = merge_event_tables([empty(PEAK_DTYPE)] * 3, keys=("sample_index",))
    assert merged.dtype == PEAK_DTYPE and len(merged) == 0 and kept.shape == (0,)
    with pytest.raises(ValueError, match="at least one table"):
        merge_event_tables([], keys=("sample_index",))


def test_tiled_transpose_equals_the_transposed_copy():
    from shardsort.memory import transpose_into

    rng = np.random.default_rng(3)
    for shape in [(1, 1), (63, 65), (130, 7), (200, 129)]:
        x = rng.normal(size=shape).astype(np.float32)
        out = np.full(shape[::-1], np.nan, dtype=np.float32)
        transpose_into(out, x)
        np.testing.assert_array_equal(out, x.T)
        base = rng.normal(size=shape[::-1]).astype(np.float32)
        added = base.copy()
        transpose_into(added, x, add=True)
        np.testing.assert_array_equal(added, base + x.T)
    with pytest.raises(ValueError, match=r"out must have the transposed shape of x \(3, 2\)"):
        transpose_into(np.zeros((2, 3)), np.zeros((2, 3)))
