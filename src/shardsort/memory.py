"""Memory-access helpers shared by the kernels.

:func:`transpose_into` copies a transposed array tile by tile. A whole-array
transposed copy (``out[...] = x.T``) writes or reads one value per row of a
long-strided array at a time, a new memory page for every row, and runs at
~150 MB/s once the rows span more pages than the TLB holds (a 1,024-channel
block); 64 x 64 tiles keep their pages in the TLB and copy 10x faster. The
values are the same either way.
"""

from __future__ import annotations

import numpy as np

#: Side of the square tiles :func:`transpose_into` copies at a time.
TILE = 64


def transpose_into(out: np.ndarray, x: np.ndarray, *, add: bool = False) -> None:
    """``out[...] = x.T`` (or ``out += x.T``), tile by tile.

    Parameters
    ----------
    out : ndarray, shape (n, m)
        Written (or added to) in place.
    x : ndarray, shape (m, n)
    add : bool
        Add ``x.T`` to ``out`` instead of assigning it.
    """
    if x.ndim != 2 or out.shape != x.shape[::-1]:
        raise ValueError(
            f"out must have the transposed shape of x {x.shape[::-1]}, got {out.shape}"
        )
    n_rows, n_cols = x.shape
    for r in range(0, n_rows, TILE):
        for c in range(0, n_cols, TILE):
            tile = x[r : r + TILE, c : c + TILE].T
            if add:
                out[c : c + TILE, r : r + TILE] += tile
            else:
                out[c : c + TILE, r : r + TILE] = tile
