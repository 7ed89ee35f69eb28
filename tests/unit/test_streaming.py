"""Streamed readers and writers of the global jobs equal their whole-array versions."""

import h5py
import numpy as np
import pytest

from shardsort.export import phy
from shardsort.metrics import _take_rows
from shardsort.tables import gather_rows, merge_event_tables
from shardsort.unitsplit import split_units

from test_unitsplit import SETTINGS, _features, _times


@pytest.mark.parametrize("block_rows", [1, 7, 1000])
@pytest.mark.parametrize("shuffle", [False, True])
def test_gather_rows_equals_indexing_the_concatenation(block_rows, shuffle):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 3, 2)).astype(np.float32) for n in (5, 0, 17, 9)]
    rows = np.arange(31)
    if shuffle:
        rows = rng.permutation(rows)[:20]
    loaded = []

    def load(i):
        loaded.append(i)
        return parts[i]

    out = np.empty((len(rows), 3, 2), np.float32)
    for lo, values in gather_rows(load, [len(p) for p in parts], rows, block_rows=block_rows,
                                  cached_parts=2):
        out[lo : lo + len(values)] = values
    np.testing.assert_array_equal(out, np.concatenate(parts)[rows])
    if not shuffle and block_rows == 1000:
        assert loaded == [0, 2, 3]  # in-order rows: every part read once


def test_merge_event_tables_drops_border_duplicates_first_wins():
    dtype = [("sample_index", "<i8"), ("unit_index", "<i4")]
    a = np.array([(5, 1), (9, 0)], dtype=dtype)
    b = np.array([(9, 0), (2, 3)], dtype=dtype)
    merged, kept = merge_event_tables([a, b], keys=("sample_index", "unit_index"))
    assert merged["sample_index"].tolist() == [2, 5, 9]
    assert kept.tolist() == [3, 0, 1] and kept.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint64, np.int32])
@pytest.mark.parametrize("n", [0, 3, 70_000])
def test_save_rows_writes_the_bytes_of_np_save(tmp_path, monkeypatch, dtype, n):
    monkeypatch.setattr(phy, "_COPY_ROWS", 1000)
    values = np.random.default_rng(1).standard_normal((n, 3, 4)) * 100
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=values)
        phy._save_rows(tmp_path / "streamed.npy", f["x"], dtype)
    np.save(tmp_path / "whole.npy", values.astype(dtype))
    assert (tmp_path / "streamed.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_ascending_is_checked_across_blocks(monkeypatch):
    monkeypatch.setattr(phy, "_COPY_ROWS", 4)
    assert phy._ascending(np.arange(10))
    values = np.arange(10)
    values[4] = 2  # a drop exactly at a block border
    assert not phy._ascending(values)


def test_take_rows_from_a_dataset_equals_fancy_indexing(tmp_path, monkeypatch):
    import shardsort.metrics as metrics

    monkeypatch.setattr(metrics, "_READ_ROWS", 16)
    values = np.random.default_rng(2).standard_normal((100, 3, 5)).astype(np.float32)
    rows = np.array([99, 3, 15, 16, 40, 0, 64])
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=values)
        np.testing.assert_array_equal(_take_rows(f["x"], rows), values[rows])


def test_split_units_reading_one_unit_at_a_time_gives_the_same_cuts():
    rng = np.random.default_rng(0)
    centre = rng.standard_normal((3, 10)) * 3
    a = _features(rng, 400, centre)
    b = _features(rng, 300, centre + 2.5 * rng.standard_normal((3, 10)) / np.sqrt(3))
    times = np.concatenate([_times(rng, 400), _times(rng, 300)])
    other = _features(rng, 500, -centre)
    times = np.concatenate([times, _times(rng, 500)])
    features = np.concatenate([a, b, other])
    units = np.r_[np.zeros(700, int), np.ones(500, int)]
    whole = split_units(times, units, features, n_units=2, **SETTINGS)
    read = []

    def unit_features(unit):
        read.append(unit)
        return features[units == unit]

    streamed = split_units(times, units, unit_features, n_units=2, **SETTINGS)
    assert len(whole[2]) == 1 and whole[2] == streamed[2]
    np.testing.assert_array_equal(whole[0], streamed[0])
    np.testing.assert_array_equal(whole[1], streamed[1])
    assert set(read) == {0, 1}
