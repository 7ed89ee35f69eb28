"""Small helpers shared by the thin scripts under ``scripts/``.

Scripts read ``snakemake.input``/``params``, call kernels and write
``snakemake.output``; these helpers give each job one log file, atomic HDF5 and
NPZ writes and a stitched view of the preprocessed chunks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .io.arrays import atomic_path

# One job = one core unless the rule asks for more: keep BLAS from
# oversubscribing the cores Snakemake hands out (Snakemake itself sets these
# to the rule's threads in a job's environment; this covers other callers
# that import this module before numpy).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

#: glibc ``mallopt`` parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_MAX.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Let this process reuse the memory of freed arrays instead of returning it.

    glibc serves every allocation above 32 MiB by a fresh ``mmap`` and unmaps
    it on free, so each large temporary of a per-chunk job (a 384-channel
    chunk's float32 copy is ~400 MB) costs the kernel zeroing its pages again:
    measured at 384 channels, 30-40 % of a preprocess or detect job's CPU was
    system time in ``clear_page``. With large blocks taken from the heap and
    freed memory kept (``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` 2 GiB), a freed
    temporary's pages are reused. Peak memory stays bounded by the same
    working set (each stage allocates the same arrays; the heap can hold a
    freed hole next to a live array, measured +0-14 % peak RSS). Call it at
    the start of a single-threaded job; returns whether glibc accepted it
    (False elsewhere, e.g. on macOS, where nothing changes).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


#: Values (samples x channels) of one block of a per-chunk job's window:
#: 16 Mi float32 values (64 MiB), 1.4 s of 384 channels, 8.7 s of 64.
BLOCK_VALUES = 16 * 2**20


def core_blocks(
    n_core: int, *, n_channels: int, margin_samples: int, max_samples: int | None = None
) -> list[tuple[int, int]]:
    """Cut a chunk's core ``[0, n_core)`` into nearly equal blocks ``[first, last)``.

    A per-chunk job works through its chunk a block at a time, each block's
    window read with the full margin on both sides: the same as cutting the
    recording into shorter chunks, which gives the same results (every
    kernel keeps only events of its core and sees ``margin_samples`` around
    it), while the job holds one block's window and temporaries instead of
    the whole chunk's (hundreds of MB at 384 channels, each page of them a
    fresh page the kernel must clear). Blocks hold at most
    :data:`BLOCK_VALUES` values (and ``max_samples`` samples), and at least
    four margins, so that the re-read margins stay a small share.
    """
    if n_core <= 0:
        return []
    size = max(BLOCK_VALUES // max(int(n_channels), 1), 4 * int(margin_samples), 1)
    if max_samples is not None:
        size = max(1, min(size, int(max_samples)))
    count = -(-n_core // size)
    size = -(-n_core // count)
    return [(first, min(n_core, first + size)) for first in range(0, n_core, size)]


def chunk_windows(recording, chunk: Mapping, margin_samples: int, **blocks):
    """Yield ``(first, last, window)`` for each :func:`core_blocks` block of ``chunk``.

    ``window`` holds samples ``[start + first - margin, start + last + margin)``
    of ``recording`` (a :class:`~shardsort.io.arrays.ChunkedRecording`), zero
    beyond the recording; ``first``/``last`` are offsets from the chunk's
    ``start``; ``blocks`` go to :func:`core_blocks`.
    """
    start, stop = int(chunk["start"]), int(chunk["stop"])
    for first, last in core_blocks(
        stop - start, n_channels=recording.n_channels, margin_samples=margin_samples, **blocks
    ):
        yield first, last, recording.get_traces(
            start + first - margin_samples, start + last + margin_samples, pad="zero"
        )


def job_logger(snakemake, name: str | None = None) -> logging.Logger:
    """Logger writing to the job's ``log:`` file (and stderr)."""
    rule = name or getattr(snakemake, "rule", "job")
    logger = logging.getLogger(f"shardsort.{rule}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(snakemake.log) > 0:
        Path(snakemake.log[0]).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(snakemake.log[0], mode="w")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    logger.addHandler(sh)
    logger.propagate = False
    return logger


@contextmanager
def timed(logger: logging.Logger, what: str):
    """Log how long a block took."""
    t0 = time.perf_counter()
    yield
    logger.info("%s took %.2f s", what, time.perf_counter() - t0)


def write_h5(
    path: str | os.PathLike,
    datasets: Mapping[str, np.ndarray],
    attrs: Mapping[str, object] | None = None,
) -> None:
    """Write arrays (keys may contain '/') and root attributes atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in datasets.items():
                f.create_dataset(key, data=np.asarray(value))
            for key, value in (attrs or {}).items():
                f.attrs[key] = value


def read_h5(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict:
    """Read datasets (all, or the given keys) and root attributes of an HDF5 file."""
    out: dict = {}
    with h5py.File(path, "r") as f:
        names: list[str] = []
        if keys is None:
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        else:
            names = list(keys)
        for name in names:
            out[name] = f[name][()]
        out["attrs"] = {k: f.attrs[k] for k in f.attrs}
    return out


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` with an atomic rename (no compression: speed first)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, packed ones (:func:`pack_array`) unpacked."""
    with np.load(path, allow_pickle=False) as data:
        blocked = [k[: -len(_ROW_BLOCKS)] for k in data.files if k.endswith(_ROW_BLOCKS)]
        out = {k: data[k] for k in data.files
               if not any(k.startswith(name + _PACKED) for name in blocked)}
        for name in blocked:
            n_rows = int(out.pop(name + "__shape")[0])
            out[name] = read_packed_rows(data, name, 0, n_rows, path=path)
            out.pop(name + _ROW_BLOCKS), out.pop(name + "__dtype")
    for key in [k for k in out if k.endswith(_PACKED)]:
        name = key[: -len(_PACKED)]
        out[name] = unpack_array(out.pop(key), out.pop(name + "__shape"),
                                 out.pop(name + "__dtype"), path=path)
    return out


def read_packed_rows(data, name: str, start: int, stop: int, *,
                     path: str | os.PathLike = "") -> np.ndarray:
    """Rows ``start:stop`` of array ``name`` of an ``.npz`` file; of one packed by
    :func:`pack_array` with ``rows_per_block``, only the blocks holding them
    are decoded.

    ``data`` is an open ``np.load`` of the ``.npz`` file (its members are read
    on access).
    """
    if name + _ROW_BLOCKS not in data.files:  # stored whole (packed or not)
        whole = (unpack_array(data[name + _PACKED], data[name + "__shape"],
                              data[name + "__dtype"], path=path)
                 if name + _PACKED in data.files else data[name])
        if not 0 <= start <= stop <= len(whole):
            raise ValueError(f"{os.fspath(path)!r}: rows {start}:{stop} of {name!r} outside "
                             f"its {len(whole)} rows")
        return whole[start:stop]
    rows_per_block = int(data[name + _ROW_BLOCKS])
    shape = tuple(int(n) for n in data[name + "__shape"])
    dtype = data[name + "__dtype"]
    if not 0 <= start <= stop <= shape[0]:
        raise ValueError(
            f"{os.fspath(path)!r}: rows {start}:{stop} of {name!r} outside its {shape[0]} rows"
        )
    out = np.empty((stop - start,) + shape[1:], dtype=np.dtype(str(dtype)))
    first = start // rows_per_block
    for block in range(first, -(-stop // rows_per_block)):
        lo = block * rows_per_block
        hi = min(lo + rows_per_block, shape[0])
        values = unpack_array(data[f"{name}{_PACKED}{block:05d}"],
                              np.asarray((hi - lo,) + shape[1:]), dtype, path=path)
        a, b = max(start, lo), min(stop, hi)
        out[a - start : b - start] = values[a - lo : b - lo]
    return out


#: Suffix of a packed array's bytes in an ``.npz`` file (:func:`pack_array`).
_PACKED = "__packed"
#: Key holding the rows per block of an array packed block by block.
_ROW_BLOCKS = "__rows_per_block"
#: Blosc keeps a buffer under 2 GiB; larger arrays are stored as they are.
_PACK_MAX_BYTES = 2**31 - 2**20


def pack_array(name: str, array: np.ndarray, *,
               rows_per_block: int | None = None) -> dict[str, np.ndarray]:
    """``{name: array}``, or its lossless Blosc (zstd, bit shuffle) packing for
    :func:`write_npz` / :func:`read_npz`.

    Template sums of int16 chunks are exact multiples of the int16 step held
    in float64: most of their mantissa bits are zero, which bit shuffling
    turns into long runs the codec stores almost for free.

    With ``rows_per_block``, blocks of that many leading-axis rows are packed
    apart (always packed, whatever the size), so that
    :func:`read_packed_rows` decodes only the rows a reader needs.
    """
    array = np.ascontiguousarray(array)
    from numcodecs import Blosc

    codec = Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE)
    if rows_per_block is not None:
        # Blocks of rows packed apart: a reader decodes only the rows it needs
        # (read_packed_rows).
        if rows_per_block < 1 or array.ndim == 0:
            raise ValueError(f"rows_per_block must be >= 1 for an array of >= 1 dimension, "
                             f"got {rows_per_block} for shape {array.shape}")
        row_bytes = max(array.nbytes // max(len(array), 1), 1)
        rows_per_block = max(1, min(rows_per_block, _PACK_MAX_BYTES // row_bytes))
        packed = {
            f"{name}{_PACKED}{i // rows_per_block:05d}": np.frombuffer(
                codec.encode(array[i : i + rows_per_block]), dtype=np.uint8)
            for i in range(0, len(array), rows_per_block)
        }
        return {
            **packed,
            name + _ROW_BLOCKS: np.asarray(rows_per_block, dtype=np.int64),
            name + "__shape": np.asarray(array.shape, dtype=np.int64),
            name + "__dtype": np.asarray(array.dtype.str),
        }
    if array.nbytes == 0 or array.nbytes > _PACK_MAX_BYTES:
        return {name: array}
    return {
        name + _PACKED: np.frombuffer(codec.encode(array), dtype=np.uint8),
        name + "__shape": np.asarray(array.shape, dtype=np.int64),
        name + "__dtype": np.asarray(array.dtype.str),
    }


def unpack_array(packed: np.ndarray, shape: np.ndarray, dtype: np.ndarray, *,
                 path: str | os.PathLike = "") -> np.ndarray:
    """The array :func:`pack_array` packed."""
    from numcodecs import Blosc

    dtype = np.dtype(str(dtype))
    shape = tuple(int(n) for n in shape)
    from numcodecs.blosc import cbuffer_sizes

    expected = int(np.prod(shape)) * dtype.itemsize
    raw_bytes = cbuffer_sizes(packed)[0]
    if raw_bytes != expected:
        raise ValueError(
            f"{os.fspath(path)!r}: a packed array decodes to {raw_bytes} bytes, expected "
            f"{shape} of {dtype}"
        )
    out = np.empty(shape, dtype=dtype)  # decoded in place: no second copy
    Blosc().decode(packed, out=out)
    return out
