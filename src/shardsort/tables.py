"""Named structured dtypes for every event table the workflow passes around.

Columns are always addressed by name, never by position.
"""

from __future__ import annotations

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
    order = np.lexsort([joined[k] for k in reversed(keys)])
    ordered = joined[order]
    first = np.ones(len(ordered), dtype=bool)
    same = np.ones(len(ordered) - 1, dtype=bool)
    for k in keys:
        same &= ordered[k][1:] == ordered[k][:-1]
    first[1:] = ~same
    return ordered[first], order[first].astype(np.int64)
