"""Named structured dtypes for every event table the workflow passes around.

Columns are always addressed by name, never by position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

#: One row per detected spike (output of ``detect``/``merge_spikes``).
#: Per-spike features live in a separate array aligned row by row.
PEAK_DTYPE = np.dtype(
    [
        ("sample_index", "<i8"),  # absolute sample in the recording
        ("channel_index", "<i4"),  # channel of the (negative) peak
        ("amplitude", "<f4"),  # signed peak value in noise units (negative)
        ("x_um", "<f4"),  # position estimate
        ("y_um", "<f4"),
    ]
)

#: One row per sorted spike (output of ``deconvolve``/``merge_units``).
SPIKE_DTYPE = np.dtype(
    [
        ("sample_index", "<i8"),  # absolute sample of the template peak
        ("unit_index", "<i4"),
        ("amplitude", "<f4"),  # scaling of the template (1.0 = template amplitude)
    ]
)


def empty(dtype: np.dtype) -> np.ndarray:
    """Return a correctly typed empty table."""
    return np.zeros(0, dtype=dtype)


def merge_event_tables(
    tables: list[np.ndarray], *, keys: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-chunk tables, sort by ``keys`` and drop duplicate rows.

    Chunk jobs report core-only events, so duplicates only arise if two
    chunks both claimed an event at their shared border; the first one wins.

    Returns
    -------
    merged : structured array
        Sorted by ``keys`` (the first key varies slowest), duplicates removed.
    kept : int64 array
        Row indices into the concatenation of ``tables`` of the kept rows, so
        arrays aligned with the tables (features) can follow.
    """
    if not tables:
        raise ValueError("tables must hold at least one table, got none")
    joined = np.concatenate(tables)
    if len(joined) == 0:
        return joined, np.zeros(0, dtype=np.int64)
    order = np.lexsort([joined[k] for k in reversed(keys)]).astype(np.int64, copy=False)
    ordered = joined[order]
    del joined
    same = np.ones(len(ordered) - 1, dtype=bool)
    for k in keys:
        same &= ordered[k][1:] == ordered[k][:-1]
    if not same.any():  # no border duplicates (the usual case): no copies
        return ordered, order
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ~same
    return ordered[first], order[first]


def gather_rows(
    load: Callable[[int], np.ndarray],
    sizes: Sequence[int],
    rows: np.ndarray,
    *,
    block_rows: int = 65_536,
    cached_parts: int = 4,
) -> Iterator[tuple[int, np.ndarray]]:
    """Rows of a concatenation of parts, read part by part, in blocks.

    Yields ``(lo, values)`` with ``values == concatenate(parts)[rows[lo:lo +
    block_rows]]`` without ever concatenating the parts: ``load(i)`` returns
    part ``i`` (``sizes[i]`` rows), and the last ``cached_parts`` parts
    loaded are kept. Rows that move little (a merge of time-ordered chunk
    tables) touch each part once or twice; any order is correct.
    """
    starts = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))])
    cache: dict[int, np.ndarray] = {}
    for lo in range(0, len(rows), block_rows):
        wanted = np.asarray(rows[lo : lo + block_rows], dtype=np.int64)
        part = np.searchsorted(starts, wanted, side="right") - 1
        values = None
        for i in np.unique(part):
            if i not in cache:
                if len(cache) >= cached_parts:
                    cache.pop(next(iter(cache)))
                cache[int(i)] = load(int(i))
            source = cache[int(i)]
            if values is None:
                values = np.empty((len(wanted),) + source.shape[1:], dtype=source.dtype)
            mine = part == i
            values[mine] = source[wanted[mine] - starts[i]]
        yield lo, values


class NpzParts:
    """The per-chunk ``.npz`` files of a global job, read one array at a time.

    ``parts.load(i, key)`` reads array ``key`` of file ``i`` (nothing else is
    held); ``parts.tables(key)`` reads ``key`` of every file, and
    ``parts.sizes`` gives their lengths (set by :meth:`tables`).
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self.sizes: list[int] = []

    def load(self, i: int, key: str) -> np.ndarray:
        with np.load(self.paths[i], allow_pickle=False) as data:
            return data[key]

    def tables(self, key: str) -> list[np.ndarray]:
        tables = [self.load(i, key) for i in range(len(self.paths))]
        self.sizes = [len(t) for t in tables]
        return tables


#: Rows read at a time by :func:`take_rows`.
TAKE_BLOCK_ROWS = 65_536


def take_rows(array, rows: np.ndarray, *, block_rows: int = TAKE_BLOCK_ROWS) -> np.ndarray:
    """``array[rows]`` (any order, repeats allowed), reading ``array`` (an HDF5
    dataset, a memory map or an array) a block of ``block_rows`` contiguous
    rows at a time and picking the rows from each block in memory.

    h5py's own point selection takes time quadratic in the number of rows
    (38,000 rows of a table of 815,000: about a minute); blocks holding none
    of the rows are not read.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n_rows = int(array.shape[0])
    if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= n_rows)):
        raise ValueError(f"rows must be 1-D indices in [0, {n_rows}), got "
                         f"{rows.min() if rows.size else ''}..{rows.max() if rows.size else ''}")
    out = np.empty((rows.size,) + tuple(array.shape[1:]), dtype=array.dtype)
    reading_order = np.argsort(rows, kind="stable")
    wanted = rows[reading_order]
    bounds = np.searchsorted(wanted, np.arange(0, n_rows + block_rows, block_rows))
    for block, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if hi > lo:
            start = block * block_rows
            values = np.asarray(array[start : start + block_rows])
            out[reading_order[lo:hi]] = values[wanted[lo:hi] - start]
    return out

