"""Job helpers of shardsort.jobs."""

import numpy as np
import pytest


def test_h5_rows_are_read_in_blocks_equal_to_fancy_indexing(tmp_path):
    import h5py

    from shardsort.jobs import read_h5_rows

    rng = np.random.default_rng(4)
    data = rng.standard_normal((5_000, 4, 3)).astype(np.float32)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("features", data=data, chunks=(256, 4, 3))
    with h5py.File(tmp_path / "t.h5", "r") as f:
        ds = f["features"]
        for rows in (np.sort(rng.choice(5_000, 700, replace=False)), np.arange(5_000),
                     np.array([0]), np.array([4_999]), np.array([3, 3, 900])):
            for block in (1, 7, 1_000, 65_536):
                np.testing.assert_array_equal(read_h5_rows(ds, rows, block_rows=block),
                                              data[rows])
        assert read_h5_rows(ds, np.zeros(0, dtype=int)).shape == (0, 4, 3)
        with pytest.raises(ValueError, match="ascending"):
            read_h5_rows(ds, np.array([5, 2]))
        with pytest.raises(ValueError, match="ascending"):
            read_h5_rows(ds, np.array([5_000]))
