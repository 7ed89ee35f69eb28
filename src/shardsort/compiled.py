"""Compiled inner loops (numba) of the kernels whose work NumPy cannot vectorise.

Each function here is a plain loop over arrays, compiled on its first call
by :func:`jit`. They are private helpers: the public, checked kernels live
in :mod:`shardsort.preprocess` and :mod:`shardsort.deconvolve`.

Determinism: no ``fastmath``, no ``parallel``; every output element is
computed by the same sequence of IEEE operations whatever the array sizes,
so results do not depend on threads, chunking or the machine's vector width.

Cost per process: importing numba (~0.2 s) and loading the cached machine
code (~0.25 s) on the first call; compiling (1-3 s per function) only when
no cache is found. The cache goes to ``__pycache__`` next to this file, or,
where that is read-only (an installed package), to numba's per-user cache
directory (``NUMBA_CACHE_DIR`` or ``~/.cache``); where neither is writable
the functions are compiled in each process without a cache. Keeping the
loops in this module (rather than next to their kernels) means edits to
the kernels' modules do not invalidate the cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np


def jit(func: Callable[..., Any]) -> Callable[..., Any]:
    """Compile ``func`` with ``numba.njit`` on its first call (lazily).

    Importing this module does not import numba: the scripts and the
    Snakefile that only need the kernels' checks and designs never pay for it.
    """
    compiled: list[Callable[..., Any]] = []

    @functools.wraps(func)
    def call(*args: Any) -> Any:
        if not compiled:
            import numba

            try:
                compiled.append(numba.njit(cache=True)(func))
            except RuntimeError:  # no writable cache directory: compile per process
                compiled.append(numba.njit(cache=False)(func))
        return compiled[0](*args)

    return call


# ---------------------------------------------------------------------------
# band-pass filter
# ---------------------------------------------------------------------------


#: Rows filtered section by section at a time by :func:`sos_cascade`.
_CASCADE_BLOCK_ROWS = 128


@jit
def sos_cascade(
    x: np.ndarray,
    coefficients: np.ndarray,
    state: np.ndarray,
    reverse: bool,
    out: np.ndarray,
) -> None:
    """Run a cascade of second-order sections along axis 0 of ``x``.

    ``x`` and ``out`` are float32 (n_samples, n_channels), C-contiguous; they
    may be the same array (rows are read before they are written).
    ``coefficients`` (n_sections, 6) float64 is ``sos`` with ``a0 == 1``;
    ``state`` (n_sections, 2, n_channels) float64 holds ``scipy.signal.sosfilt``'s
    ``zi`` (transposed direct form II), updated in place. ``reverse`` runs from
    the last row to the first.

    Arithmetic is float64 (float32 arithmetic is 1.5 times faster but 20
    times less accurate on a 300 Hz high-pass: its poles lie near z = 1).
    Rows go through all sections in blocks of :data:`_CASCADE_BLOCK_ROWS`
    (a float64 copy that stays in cache); the inner loops run over
    contiguous channels, so one section costs a few vector operations per row.
    """
    n_samples, n_channels = x.shape
    n_sections = coefficients.shape[0]
    block = np.empty((_CASCADE_BLOCK_ROWS, n_channels), np.float64)
    for first in range(0, n_samples, _CASCADE_BLOCK_ROWS):
        n_rows = min(_CASCADE_BLOCK_ROWS, n_samples - first)
        for i in range(n_rows):
            t = n_samples - 1 - first - i if reverse else first + i
            for j in range(n_channels):
                block[i, j] = x[t, j]
        for s in range(n_sections):
            b0 = coefficients[s, 0]
            b1 = coefficients[s, 1]
            b2 = coefficients[s, 2]
            a1 = coefficients[s, 4]
            a2 = coefficients[s, 5]
            z0 = state[s, 0]
            z1 = state[s, 1]
            for i in range(n_rows):
                for j in range(n_channels):
                    u = block[i, j]
                    y = b0 * u + z0[j]
                    z0[j] = b1 * u - a1 * y + z1[j]
                    z1[j] = b2 * u - a2 * y
                    block[i, j] = y
        for i in range(n_rows):
            t = n_samples - 1 - first - i if reverse else first + i
            for j in range(n_channels):
                out[t, j] = block[i, j]
