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


# ---------------------------------------------------------------------------
# deconvolution (matching pursuit)
# ---------------------------------------------------------------------------


@jit
def subtract_spikes(
    objective: np.ndarray,
    cross: np.ndarray,
    cross_start: np.ndarray,
    overlap_start: np.ndarray,
    overlap_units: np.ndarray,
    rows: np.ndarray,
    units: np.ndarray,
    choice: np.ndarray,
    scale: np.ndarray,
    half: int,
    stride: int,
) -> None:
    """Subtract scaled template cross-correlations from the objective, in place.

    ``objective[rows[i] - half + lag, k] -= scale[i] * cross(j, choice[i], lag, k)``
    with ``j = units[i]``, for every lag in ``[0, 2 half]``.

    Only for the units ``k`` whose cross-correlation with unit ``j`` is not
    zero, ``overlap_units[overlap_start[j] : overlap_start[j + 1]]`` (the
    others would subtract exact zeros). ``cross`` holds, flat from
    ``cross_start[j]``, unit ``j``'s values for those units only, shaped
    (n_offsets, n_lags, n_overlapping). Spikes are applied in interleaved
    groups (``parity, parity + stride, ...`` for each parity, see
    :meth:`shardsort.deconvolve._Pursuit.subtract`), each update one float32
    product and difference, so the rounding is fixed by the spikes alone.
    """
    n_spikes = rows.shape[0]
    n_lags = 2 * half + 1
    for parity in range(stride):
        for i in range(parity, n_spikes, stride):
            unit = units[i]
            factor = scale[i]
            first = rows[i] - half
            start = overlap_start[unit]
            n_overlap = overlap_start[unit + 1] - start
            base = cross_start[unit] + choice[i] * n_lags * n_overlap
            for lag in range(n_lags):
                row = first + lag
                at = base + lag * n_overlap
                for index in range(n_overlap):
                    other = overlap_units[start + index]
                    objective[row, other] -= factor * cross[at + index]


@jit
def best_units(
    objective: np.ndarray,
    rows: np.ndarray,
    norms: np.ndarray,
    inverse_norms: np.ndarray,
    amplitude_min: np.float32,
    amplitude_max: np.float32,
    floor: np.ndarray,
    locked: np.ndarray,
    best: np.ndarray,
    winner: np.ndarray,
) -> None:
    """Largest explained energy over units, and its unit, on ``rows``.

    For each row ``i`` and unit ``k``, with ``c = objective[i, k]`` and
    ``a = clip(c / ||What_k||^2, amplitude_min, amplitude_max)``, the energy
    ``a (2 c - a ||What_k||^2)`` is a candidate where it reaches ``floor[k]``
    and ``locked[i, k]`` is false. ``best[i]`` gets the largest candidate
    (``-inf`` if none) and ``winner[i]`` its unit (the first on ties, 0 if
    none), as ``numpy.argmax`` would pick among the float32 energies
    computed in this order: ``((c - a ||What_k||^2) + c) * a``.
    """
    n_units = objective.shape[1]
    energy = np.empty(n_units, np.float32)
    for i in rows:
        # Energies first (a loop the compiler vectorises), then the first
        # largest candidate.
        for k in range(n_units):
            c = objective[i, k]
            a = min(max(c * inverse_norms[k], amplitude_min), amplitude_max)
            e = ((c - a * norms[k]) + c) * a
            energy[k] = e if e >= floor[k] and not locked[i, k] else -np.inf
        top = energy[0]
        arg = 0
        for k in range(1, n_units):
            if energy[k] > top:
                top = energy[k]
                arg = k
        best[i] = top
        winner[i] = arg
