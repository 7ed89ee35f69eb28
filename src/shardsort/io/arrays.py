"""Binary arrays with YAML sidecars, atomic writes, and chunked recordings.

Every binary array the workflow writes is raw C-order bytes at ``path`` plus a
YAML sidecar at ``path + ".yaml"`` that records ``dtype``, ``shape``,
``order`` (always ``"C"``), ``sampling_rate_hz`` and any extra attributes, so
any stage's output can be reopened without knowing who wrote it.

Atomicity
---------
All writes go to a temporary name in the destination directory, are flushed
with ``fsync`` and then moved into place with ``os.replace`` (atomic on POSIX
within one file system). :func:`write_array` orders the steps so that a job
killed at any moment never leaves a pair that looks complete:

1. the old data file, if any, is removed (so a stale array can never be paired
   with a new sidecar);
2. the data and the sidecar are written to temporary names and fsynced;
3. the sidecar is renamed into place;
4. the data file is renamed into place last.

The data file (the path Snakemake tracks) therefore exists only once its
sidecar is complete. :func:`read_array` also checks that the data file holds
exactly ``prod(shape) * itemsize`` bytes.

Compressed arrays
-----------------
``write_array(..., compression="lz4" | "zstd")`` stores the array (any dtype,
at least 1-D) as independently compressed blocks of ``block_rows`` rows (Blosc
with bit shuffle, one block ~0.07 s of a 30 kHz recording), so a reader of a
short window decodes only the blocks it overlaps. The data file is::

    b"SSBLOCK1"                      8 bytes
    n_blocks                         uint64
    offsets[n_blocks + 1]            uint64, byte offset of each block in the file
    crc32[n_blocks]                  uint32, of each compressed block
    block 0, block 1, ...

and the sidecar gains ``compression: {codec, cname, clevel, shuffle,
block_rows, file_bytes}`` (``dtype`` and ``shape`` describe the decoded
array). A sidecar without ``compression`` is a plain array, as before.
:func:`read_array` and :class:`ChunkedRecording` decode transparently; a
file that disagrees with its sidecar (size, header, checksum, decoded size)
raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from .raw import check_channels, check_window

#: Suffix of the sidecar written next to every binary array.
SIDECAR_SUFFIX = ".yaml"
#: Sidecar keys owned by :func:`write_array`; extra attributes may not use them.
RESERVED_KEYS = frozenset({"dtype", "shape", "order", "sampling_rate_hz", "compression"})
#: Values of ``compression`` (``preprocess.compression``); ``none``: plain bytes.
COMPRESSIONS = ("none", "lz4", "zstd")
#: Blosc level per codec: measured on preprocessed int16 chunks (32 steps per
#: noise SD), lz4 5 and zstd 1 compress to 0.57 of the int16 size; higher zstd
#: levels were no smaller with bit shuffle and several times slower.
CLEVELS = {"lz4": 5, "zstd": 1}
#: Rows per compressed block: 2048 samples = 68 ms at 30 kHz (a window read
#: with margins decodes at most one block more on each side than it needs).
BLOCK_ROWS = 2048
_MAGIC = b"SSBLOCK1"

PathLike = str | os.PathLike


def sidecar_path(path: PathLike) -> str:
    """Return the sidecar path of the binary array at ``path``."""
    return os.fspath(path) + SIDECAR_SUFFIX


def _fsync_directory(directory: str) -> None:
    """Flush a directory entry (the rename) to disk where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _temporary_name(path: PathLike) -> str:
    """Create an empty, unique temporary file next to ``path`` and return its name.

    The name keeps the suffix of ``path`` (``.out.npz.k2j4.tmp.npz``), so writers
    that append a missing suffix (``np.savez``) write to exactly this name.
    """
    target = Path(path)
    # Leftovers of an earlier write of the same file that was killed (SIGKILL
    # gives no chance to clean up). Snakemake runs one job per output at a
    # time, so no live writer owns them.
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp{target.suffix}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent
    )
    os.close(fd)
    return name


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path that replaces ``path`` only if the block succeeds.

    The temporary file lives in the same directory as ``path`` (so the final
    ``os.replace`` is atomic), ends with the same suffix, and already exists,
    empty, when the block starts; writers such as ``h5py.File(tmp, "w")``,
    ``np.savez(tmp, ...)`` or ``open(tmp, "w")`` simply overwrite it. On
    success the file is fsynced and renamed to ``path``; on any exception it
    is removed and the exception propagates. (A job killed by SIGKILL can
    leave a hidden ``.<name>.*.tmp*`` file behind, never a file at ``path``.)

    Parameters
    ----------
    path : str or os.PathLike
        Final destination. Its directory must exist.

    Yields
    ------
    str
        Temporary path to write to.

    Examples
    --------
    >>> with atomic_path("out.h5") as tmp:  # doctest: +SKIP
    ...     with h5py.File(tmp, "w") as f:
    ...         f["x"] = data
    """
    target = os.fspath(path)
    tmp = _temporary_name(target)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(target)))


def atomic_write_bytes(path: PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically (temporary name, fsync, rename).

    Parameters
    ----------
    path : str or os.PathLike
        Destination file. Its directory must exist.
    data : bytes-like
        Content to write.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def _descr_to_yaml(descr: list) -> list:
    """Structured-dtype description with tuples as lists (YAML-safe)."""
    return [
        [
            name,
            kind if isinstance(kind, str) else _descr_to_yaml(kind),
            *map(list, shape),
        ]
        for name, kind, *shape in descr
    ]


def _descr_from_yaml(descr: list) -> list:
    return [
        (
            name,
            kind if isinstance(kind, str) else _descr_from_yaml(kind),
            *map(tuple, shape),
        )
        for name, kind, *shape in descr
    ]


def _dtype_to_yaml(dtype: np.dtype) -> str | list:
    """Sidecar form of a dtype: ``'<f4'``, or the field list of a structured dtype."""
    return dtype.str if dtype.fields is None else _descr_to_yaml(dtype.descr)


def _dtype_from_yaml(value: str | list) -> np.dtype:
    return (
        np.dtype(value) if isinstance(value, str) else np.dtype(_descr_from_yaml(value))
    )


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples to YAML-safe Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_array(
    path: PathLike,
    array: npt.ArrayLike,
    *,
    sampling_rate_hz: float | None = None,
    compression: str | None = None,
    block_rows: int = BLOCK_ROWS,
    mantissa_bits: int | None = None,
    **attrs: Any,
) -> None:
    """Write ``array`` as raw C-order bytes plus a YAML sidecar, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination of the binary data; the sidecar goes to ``path + ".yaml"``.
    array : array_like
        Any numeric or structured array (0-d and empty arrays included).
    sampling_rate_hz : float, optional
        Sampling rate of the first axis, when it is time.
    compression : {None, 'none', 'lz4', 'zstd'}, optional
        Store the array as independently compressed blocks of ``block_rows``
        rows (see the module notes); None or 'none': plain bytes.
    block_rows : int, default BLOCK_ROWS
        Rows per compressed block (first axis), >= 1.
    mantissa_bits : int, optional
        float32 arrays with compression only: first round every value to
        this many mantissa bits (:func:`round_mantissa`; lossy, relative
        error <= 2**-(mantissa_bits + 1)), so the dropped bits compress away.
        Recorded in the sidecar's ``compression``.
    **attrs
        Extra sidecar attributes (numbers, strings, lists, dicts, numpy
        scalars or small arrays). ``start_sample`` and ``scale`` are read by
        :class:`ChunkedRecording`.

    Raises
    ------
    ValueError
        If an attribute name is one of ``dtype``, ``shape``, ``order``,
        ``sampling_rate_hz``, ``compression``, ``sampling_rate_hz`` is not a
        positive number, ``compression`` is not one of :data:`COMPRESSIONS`,
        ``block_rows`` < 1, a compressed array is 0-d, or ``mantissa_bits``
        is given without compression or for an array that is not float32.
    """
    compression = _check_write_args(attrs, sampling_rate_hz, compression, block_rows)
    data = np.asarray(array, order="C")
    target = os.fspath(path)
    sidecar = {
        "dtype": _dtype_to_yaml(data.dtype),
        "shape": list(data.shape),
        "order": "C",
        "sampling_rate_hz": None
        if sampling_rate_hz is None
        else float(sampling_rate_hz),
    }
    if mantissa_bits is not None:
        if compression == "none" or data.dtype != np.float32:
            raise ValueError(
                "mantissa_bits needs compression and a float32 array, got "
                f"compression={compression!r} and dtype {data.dtype}"
            )
        data = round_mantissa(data, bits=mantissa_bits)
    if compression != "none":
        if data.ndim == 0:
            raise ValueError("a compressed array must be at least 1-D, got a 0-d array")
        # One block of rows: the same file as written block by block.
        write_array_rows(
            path, [data], shape=data.shape, dtype=data.dtype, sampling_rate_hz=sampling_rate_hz,
            compression=compression, block_rows=block_rows, mantissa_bits=mantissa_bits, **attrs,
        )
        return
    sidecar.update(_plain(attrs))
    with _array_file(target) as (handle, done):
        data.tofile(handle)
        done["sidecar"] = sidecar


@contextlib.contextmanager
def _array_file(target: str) -> Iterator[tuple[Any, dict]]:
    """A temporary file next to ``target`` to write an array's bytes into.

    The caller writes the data and puts the sidecar mapping under
    ``"sidecar"`` of the yielded dict; on leaving, the data is synced, the
    sidecar written and the data moved to ``target`` (a reader never sees a
    half-written array); on an error the temporary file is removed.
    """
    with contextlib.suppress(FileNotFoundError):
        os.remove(target)
    data_tmp = _temporary_name(target)
    done: dict[str, Any] = {}
    try:
        with open(data_tmp, "wb") as handle:
            yield handle, done
            handle.flush()
            os.fsync(handle.fileno())
        text = yaml.safe_dump(done["sidecar"], sort_keys=False, default_flow_style=None)
        atomic_write_bytes(sidecar_path(target), text.encode())
        os.replace(data_tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(data_tmp)
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(target)))


def write_array_rows(
    path: PathLike,
    rows: Iterable[np.ndarray],
    *,
    shape: Sequence[int],
    dtype: npt.DTypeLike,
    sampling_rate_hz: float | None = None,
    compression: str | None = None,
    block_rows: int = BLOCK_ROWS,
    mantissa_bits: int | None = None,
    **attrs: Any,
) -> None:
    """Write an array given as consecutive blocks of rows: the file and
    sidecar :func:`write_array` writes for the whole array, atomically.

    Each block is encoded (or written) as it comes, so the caller never holds
    the whole array: a preprocess job turns its filtered chunk into int16 a
    block at a time. With compression, every block but the last must hold a
    whole number of ``block_rows`` rows.

    Parameters
    ----------
    rows : iterable of array_like
        Blocks of ``shape[1:]`` rows, cast to ``dtype``, ``shape[0]`` rows in all.
    shape, dtype
        Of the whole array (at least 1-D).
    sampling_rate_hz, compression, block_rows, **attrs
        As for :func:`write_array`.
    mantissa_bits : int, optional
        The rows were rounded to this many mantissa bits (recorded in the
        sidecar's ``compression``; :func:`write_array` rounds them).

    Raises
    ------
    ValueError
        As :func:`write_array`, and for blocks of the wrong shape, a block
        that is not a whole number of ``block_rows`` before the last, or a
        row count other than ``shape[0]`` (no file is left behind).
    """
    compression = _check_write_args(attrs, sampling_rate_hz, compression, block_rows)
    shape = tuple(int(n) for n in shape)
    dtype = np.dtype(dtype)
    if not shape:
        raise ValueError("shape must have at least one axis (rows), got ()")
    target = os.fspath(path)
    sidecar = {
        "dtype": _dtype_to_yaml(dtype),
        "shape": list(shape),
        "order": "C",
        "sampling_rate_hz": None if sampling_rate_hz is None else float(sampling_rate_hz),
    }
    n_rows, block_rows = shape[0], int(block_rows)
    compressed = compression != "none"
    n_blocks = -(-n_rows // block_rows)
    header_bytes = len(_MAGIC) + 8 + 8 * (n_blocks + 1) + 4 * n_blocks
    with _array_file(target) as (handle, done):
        if compressed:
            codec = _blosc(compression)
            handle.write(bytes(header_bytes))  # the block table, written last
            sizes: list[int] = []
            crcs: list[int] = []
        written = 0
        for block in rows:
            block = np.ascontiguousarray(block, dtype=dtype)
            if block.shape[1:] != shape[1:] or written + len(block) > n_rows:
                raise ValueError(
                    f"{target!r}: a block of shape {block.shape} does not fit rows "
                    f"{written}.. of an array of shape {shape}"
                )
            if compressed:
                if len(block) % block_rows and written + len(block) != n_rows:
                    raise ValueError(
                        f"{target!r}: blocks before the last must hold a multiple of "
                        f"block_rows={block_rows} rows, got {len(block)}"
                    )
                for i in range(0, len(block), block_rows):
                    encoded = codec.encode(block[i : i + block_rows])
                    handle.write(encoded)
                    sizes.append(len(encoded))
                    crcs.append(zlib.crc32(encoded))
            else:
                block.tofile(handle)
            written += len(block)
        if written != n_rows:
            raise ValueError(
                f"{target!r}: the blocks hold {written} rows, expected {n_rows} "
                f"(shape {shape})"
            )
        if compressed:
            offsets = header_bytes + np.concatenate(
                [[0], np.cumsum(sizes, dtype=np.uint64)]
            ).astype("<u8")
            handle.seek(0)
            handle.write(_MAGIC + np.array([n_blocks], dtype="<u8").tobytes()
                         + offsets.tobytes() + np.array(crcs, dtype="<u4").tobytes())
            sidecar["compression"] = {
                "codec": "blosc",
                "cname": compression,
                "clevel": CLEVELS[compression],
                "shuffle": "bitshuffle",
                "block_rows": block_rows,
                "file_bytes": header_bytes + sum(sizes),
            }
            if mantissa_bits is not None:
                sidecar["compression"]["mantissa_bits"] = int(mantissa_bits)
        sidecar.update(_plain(attrs))
        done["sidecar"] = sidecar


def _check_write_args(attrs, sampling_rate_hz, compression, block_rows) -> str:
    """The checks :func:`write_array` and :func:`write_array_rows` share; the
    compression as a name."""
    clash = sorted(RESERVED_KEYS.intersection(attrs))
    if clash:
        raise ValueError(
            f"attrs may not use the reserved sidecar keys {clash}; "
            f"expected names other than {sorted(RESERVED_KEYS)}"
        )
    if sampling_rate_hz is not None and not (
        np.isfinite(sampling_rate_hz) and sampling_rate_hz > 0
    ):
        raise ValueError(
            "sampling_rate_hz must be a finite number > 0 or None, "
            f"got {sampling_rate_hz!r}"
        )
    compression = "none" if compression is None else compression
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"compression must be one of {list(COMPRESSIONS)} or None, got {compression!r}"
        )
    if compression != "none" and not (
        isinstance(block_rows, (int, np.integer)) and block_rows >= 1
    ):
        raise ValueError(f"block_rows must be an integer >= 1, got {block_rows!r}")
    return compression


def round_mantissa(
    array: npt.NDArray[np.float32], *, bits: int, out: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """Round float32 values to ``bits`` mantissa bits (to nearest, ties to even).

    The relative error of each value is at most ``2**-(bits + 1)``; the
    dropped low bits become zeros, which a bit-shuffling codec stores almost
    for free. NaN stays NaN; values within one step of the float32 maximum
    may round to infinity.

    Parameters
    ----------
    array : numpy.ndarray of float32
        Values to round (not modified unless it is ``out``).
    bits : int
        Mantissa bits kept, 1 to 23 (23: unchanged).
    out : numpy.ndarray of float32, optional
        C-contiguous array of the same shape to write into (may be ``array``
        itself: rounding in place); default a new array. Values are rounded in
        blocks, so the temporaries stay small.

    Returns
    -------
    numpy.ndarray of float32
        The rounded values (``out`` when given), same shape.
    """
    if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= 23):
        raise ValueError(f"bits must be an integer in [1, 23], got {bits!r}")
    values = np.ascontiguousarray(array, dtype=np.float32)
    if out is None:
        out = np.empty_like(values)
    elif (out.dtype != np.float32 or out.shape != values.shape
          or not out.flags.c_contiguous):
        raise ValueError(
            f"out must be a C-contiguous float32 array of shape {values.shape}, got "
            f"{out.dtype} {out.shape}"
        )
    drop = 23 - int(bits)
    source, target = values.reshape(-1), out.reshape(-1)
    if drop == 0:
        target[...] = source
        return out
    half = np.uint32((1 << (drop - 1)) - 1)
    mask = np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    for lo in range(0, source.size, _ROUND_BLOCK_VALUES):
        pattern = source[lo : lo + _ROUND_BLOCK_VALUES].view(np.uint32)
        rounded = pattern + half + ((pattern >> np.uint32(drop)) & np.uint32(1))
        rounded &= mask
        nan = np.isnan(pattern.view(np.float32))
        if nan.any():
            rounded[nan] = pattern[nan]
        target[lo : lo + _ROUND_BLOCK_VALUES] = rounded.view(np.float32)
    return out


#: Values rounded at a time by :func:`round_mantissa`.
_ROUND_BLOCK_VALUES = 1 << 20


def read_sidecar(path: PathLike) -> dict[str, Any]:
    """Return the sidecar of the binary array at ``path`` as a dict.

    ``dtype`` is returned as a :class:`numpy.dtype` and ``shape`` as a tuple;
    every other key is returned as written.

    Raises
    ------
    FileNotFoundError
        If the sidecar does not exist.
    ValueError
        If the sidecar lacks ``dtype``/``shape`` or has an order other than C.
    """
    side = sidecar_path(path)
    with open(side, encoding="utf-8") as handle:
        meta = yaml.safe_load(handle)
    if not isinstance(meta, dict) or "dtype" not in meta or "shape" not in meta:
        raise ValueError(f"sidecar {side!r} must be a mapping with 'dtype' and 'shape'")
    if meta.get("order", "C") != "C":
        raise ValueError(f"sidecar {side!r}: order must be 'C', got {meta['order']!r}")
    meta["dtype"] = _dtype_from_yaml(meta["dtype"])
    meta["shape"] = tuple(int(n) for n in meta["shape"])
    return meta


def read_array(path: PathLike, mmap: bool = True) -> np.ndarray:
    """Open a binary array written by :func:`write_array`.

    Parameters
    ----------
    path : str or os.PathLike
        The data file (its sidecar is ``path + ".yaml"``).
    mmap : bool, default True
        Return a read-only ``np.memmap`` (mode ``'r'``) instead of loading
        the data into memory. Empty and compressed arrays are always
        returned in memory (compressed ones decoded).

    Returns
    -------
    numpy.ndarray
        Array with the sidecar's dtype and shape.

    Raises
    ------
    ValueError
        If the file does not match its sidecar (size; for a compressed file
        also its header, block checksums and decoded sizes).
    """
    meta = read_sidecar(path)
    dtype, shape = meta["dtype"], meta["shape"]
    if "compression" in meta:
        return read_rows(path, 0, shape[0], meta=meta) if shape else np.zeros(shape, dtype)
    _check_plain_size(path, meta)
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=dtype)
    if mmap:
        return np.memmap(path, dtype=dtype, mode="r", shape=shape).reshape(shape)
    return np.fromfile(path, dtype=dtype).reshape(shape)


def compression_of(meta: dict[str, Any]) -> str:
    """The ``compression`` value (one of :data:`COMPRESSIONS`) an array was written with.

    ``meta`` is its :func:`read_sidecar` mapping; a writer that stores a new
    array "as the input was stored" passes this to :func:`write_array`.
    """
    info = meta.get("compression")
    return "none" if not info else str(info["cname"])


def _check_plain_size(path: PathLike, meta: dict[str, Any]) -> None:
    dtype, shape = meta["dtype"], meta["shape"]
    expected = math.prod(shape) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        raise ValueError(
            f"{os.fspath(path)!r} holds {actual} bytes but its sidecar describes "
            f"{expected} bytes (dtype {dtype}, shape {shape})"
        )


def _blosc(cname: str):
    """A numcodecs Blosc codec, bit shuffle (imported here: most jobs never need it)."""
    import numcodecs.blosc
    from numcodecs import Blosc

    # One job = one core: Blosc would otherwise start a thread per core.
    numcodecs.blosc.use_threads = False
    return Blosc(cname=cname, clevel=CLEVELS[cname], shuffle=Blosc.BITSHUFFLE)


def read_rows(
    path: PathLike, start: int, stop: int, *, meta: dict[str, Any] | None = None
) -> np.ndarray:
    """Rows ``[start, stop)`` (first axis) of an array written by :func:`write_array`.

    A plain array is sliced from a read-only memmap; a compressed one
    decodes only the blocks that hold those rows.

    Parameters
    ----------
    path : str or os.PathLike
        The data file.
    start, stop : int
        Rows, ``0 <= start <= stop <= shape[0]``.
    meta : dict, optional
        Its :func:`read_sidecar` mapping, when the caller has it already.

    Raises
    ------
    ValueError
        If the rows are out of range or the file does not match its sidecar
        (the message names the file and, for a compressed one, the block).
    """
    meta = read_sidecar(path) if meta is None else meta
    dtype, shape = meta["dtype"], meta["shape"]
    _check_rows(path, start, stop, shape)
    info = meta.get("compression")
    if not info:
        _check_plain_size(path, meta)
        if start == stop or math.prod(shape) == 0:
            return np.zeros((stop - start, *shape[1:]), dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)[start:stop]
    block_rows = int(info["block_rows"])
    first, last = start // block_rows, -(-stop // block_rows)  # blocks [first, last)
    out = np.empty(((last - first) * block_rows, *shape[1:]), dtype=dtype)
    for _ in _compressed_blocks(path, meta, first, last, out=out):
        pass  # each block decoded in place into out
    lo = start - first * block_rows
    return out[lo : lo + stop - start]


#: Rows of a plain (uncompressed) file converted at a time by :func:`read_rows_into`.
_PLAIN_ROWS = 16384


def read_rows_into(
    path: PathLike,
    start: int,
    stop: int,
    out: np.ndarray,
    *,
    columns: np.ndarray | None = None,
    scale: float = 1.0,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write rows ``[start, stop)`` of a 2-D array file, times ``scale``, into ``out``.

    The same values as ``read_rows(path, start, stop)[:, columns] * scale``
    cast to ``out``'s dtype (float32: the same single-precision product), but
    a block at a time: the stored rows are never held whole (a compressed
    file is decoded into one block's buffer, a plain one read through its
    memmap), so a job reading a chunk of int16 rows as float32 holds the
    float32 window only.

    Parameters
    ----------
    out : ndarray, shape (stop - start, n_columns)
        Written in place.
    columns : ndarray of int, optional
        Columns to keep, in that order (default: all).
    """
    meta = read_sidecar(path) if meta is None else meta
    shape = meta["shape"]
    _check_rows(path, start, stop, shape)
    if len(shape) != 2 or out.shape != (stop - start, shape[1] if columns is None
                                        else len(columns)):
        raise ValueError(
            f"out must have shape ({stop - start}, columns) for rows [{start}, "
            f"{stop}) of {os.fspath(path)!r} (shape {shape}), got {out.shape}"
        )
    factor = out.dtype.type(scale) if scale != 1.0 else None

    def put(target: np.ndarray, rows: np.ndarray) -> None:
        if columns is not None:
            rows = rows[:, columns]
        if factor is None:
            target[...] = rows
        else:
            np.multiply(rows, factor, out=target, casting="unsafe")

    if start == stop:
        return
    info = meta.get("compression")
    if not info:
        _check_plain_size(path, meta)
        data = np.memmap(path, dtype=meta["dtype"], mode="r", shape=tuple(shape))
        for lo in range(start, stop, _PLAIN_ROWS):
            hi = min(stop, lo + _PLAIN_ROWS)
            put(out[lo - start : hi - start], data[lo:hi])
        return
    block_rows = int(info["block_rows"])
    first, last = start // block_rows, -(-stop // block_rows)
    buffer = np.empty((block_rows, shape[1]), dtype=meta["dtype"])
    for block, rows in zip(range(first, last),
                           _compressed_blocks(path, meta, first, last, buffer=buffer)):
        lo = max(start, block * block_rows)
        hi = min(stop, block * block_rows + len(rows))
        put(out[lo - start : hi - start], rows[lo - block * block_rows : hi - block * block_rows])


def _check_rows(path: PathLike, start: int, stop: int, shape) -> None:
    if not shape or not 0 <= start <= stop <= shape[0]:
        raise ValueError(
            f"rows [{start}, {stop}) of {os.fspath(path)!r} must lie within [0, "
            f"{shape[0] if shape else 0}] (shape {shape})"
        )


def _compressed_blocks(
    path: PathLike,
    meta: dict[str, Any],
    first: int,
    last: int,
    *,
    out: np.ndarray | None = None,
    buffer: np.ndarray | None = None,
):
    """Decode blocks ``[first, last)`` of a compressed array file, checking each.

    Yields each block's rows: decoded into ``out[k * block_rows:]`` (the k-th
    block yielded) when ``out`` is given, else into ``buffer`` (reused, so a
    yielded block is valid until the next one).
    """
    name = os.fspath(path)
    info = meta["compression"]
    dtype, shape = np.dtype(meta["dtype"]), meta["shape"]
    block_rows = int(info["block_rows"])
    n_rows = shape[0]
    n_blocks = -(-n_rows // block_rows)
    actual = os.path.getsize(path)
    if actual != int(info["file_bytes"]):
        raise ValueError(
            f"{name!r} holds {actual} bytes but its sidecar describes a compressed "
            f"file of {info['file_bytes']} bytes (truncated or rewritten?)"
        )
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    with open(path, "rb") as handle:
        head = handle.read(len(_MAGIC) + 8)
        if head[: len(_MAGIC)] != _MAGIC or len(head) < len(_MAGIC) + 8:
            raise ValueError(
                f"{name!r}: its sidecar says compressed but the file does not start "
                f"with the compressed-array header {_MAGIC!r}"
            )
        stored = int(np.frombuffer(head[len(_MAGIC) :], dtype="<u8")[0])
        if stored != n_blocks:
            raise ValueError(
                f"{name!r}: header holds {stored} blocks but the sidecar's shape "
                f"{shape} in blocks of {block_rows} rows needs {n_blocks}"
            )
        table = handle.read(12 * n_blocks + 8)
        if len(table) != 12 * n_blocks + 8:
            raise ValueError(f"{name!r}: block table truncated")
        offsets = np.frombuffer(table, dtype="<u8", count=n_blocks + 1).astype(np.int64)
        crcs = np.frombuffer(table, dtype="<u4", offset=8 * (n_blocks + 1))
        if offsets[0] != handle.tell() or offsets[-1] != actual or np.any(np.diff(offsets) <= 0):
            raise ValueError(
                f"{name!r}: block offsets disagree with the file (first "
                f"{offsets[0]}, last {offsets[-1]}, file {actual} bytes)"
            )
        if last == first:
            return
        codec = _blosc(str(info["cname"]))
        from numcodecs.blosc import cbuffer_sizes

        handle.seek(int(offsets[first]))
        for k, block in enumerate(range(first, last)):
            size = int(offsets[block + 1] - offsets[block])
            buf = handle.read(size)
            rows = min(block_rows, n_rows - block * block_rows)
            problem = None
            target = None
            if len(buf) != size or zlib.crc32(buf) != int(crcs[block]):
                problem = "its checksum does not match (corrupted)"
            elif cbuffer_sizes(buf)[:2] != (rows * row_bytes, size):
                problem = (f"it decodes to {cbuffer_sizes(buf)[0]} bytes, expected "
                           f"{rows * row_bytes} ({rows} rows of {row_bytes} bytes)")
            if problem is None:
                target = (out[k * block_rows : k * block_rows + rows] if out is not None
                          else buffer[:rows])
                try:
                    codec.decode(buf, out=target)
                except (RuntimeError, ValueError) as error:
                    problem = f"it does not decode ({error})"
            if problem is not None:
                raise ValueError(
                    f"{name!r}: compressed block {block} (rows "
                    f"{block * block_rows}-{block * block_rows + rows}) is invalid: {problem}"
                )
            yield target


class ChunkedRecording:
    """Per-chunk arrays that tile ``[0, n_samples)``, read as one recording.

    Each chunk is a 2-D array ``(n_chunk_samples, n_channels)`` written by
    :func:`write_array` with sidecar attribute ``start_sample`` (absolute
    index of its first sample) and, optionally, ``scale`` (the stored values
    are multiplied by it on reading, e.g. int16 chunks). Chunks are opened
    lazily (one memmap, or for compressed chunks the blocks a window needs,
    per read), so thousands of chunks cost no open files.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Chunk data files, in any order (they are sorted by ``start_sample``).
    n_samples : int, optional
        Length of the whole recording. When given, ``paths`` may be any
        subset of the chunks (a job reads only the chunks around its own, or
        a sample of them); reading samples inside the recording that no given
        chunk holds raises ``ValueError``. When omitted, the chunks must tile
        ``[0, n_samples)`` from sample 0.

    Raises
    ------
    ValueError
        If there are no chunks, a chunk is not 2-D or lacks ``start_sample``,
        chunks disagree on channel count or sampling rate, or the chunks
        leave a gap or overlap (the message names both files).

    Attributes
    ----------
    n_samples, n_channels : int
    sampling_rate_hz : float or None
    paths : tuple of str
        Chunk files sorted by start sample.
    starts, stops : numpy.ndarray of int64
        First and one-past-last sample of each chunk.
    """

    def __init__(self, paths: Sequence[PathLike], *, n_samples: int | None = None) -> None:
        if len(paths) == 0:
            raise ValueError(
                "paths must name at least one chunk file, got an empty list"
            )
        chunks = []
        for path in paths:
            meta = read_sidecar(path)
            if len(meta["shape"]) != 2:
                raise ValueError(
                    f"chunk {os.fspath(path)!r} must be 2-D (samples, channels), "
                    f"got shape {meta['shape']}"
                )
            if "start_sample" not in meta:
                raise ValueError(
                    f"chunk {os.fspath(path)!r} has no 'start_sample' in its sidecar"
                )
            chunks.append((int(meta["start_sample"]), os.fspath(path), meta))
        chunks.sort(key=lambda item: (item[0], item[2]["shape"][0]))  # empty first

        first_path, first = chunks[0][1], chunks[0][2]
        self.n_channels: int = first["shape"][1]
        self.sampling_rate_hz: float | None = first.get("sampling_rate_hz")
        expected_start = 0 if n_samples is None else chunks[0][0]
        previous = "the recording start" if n_samples is None else "the first chunk"
        for start, path, meta in chunks:
            if meta["shape"][1] != self.n_channels:
                raise ValueError(
                    f"chunk {path!r} has {meta['shape'][1]} channels, "
                    f"expected {self.n_channels} as in {first_path!r}"
                )
            if meta.get("sampling_rate_hz") != self.sampling_rate_hz:
                raise ValueError(
                    f"chunk {path!r} has "
                    f"sampling_rate_hz={meta.get('sampling_rate_hz')}, "
                    f"expected {self.sampling_rate_hz} as in {first_path!r}"
                )
            gap_allowed = n_samples is not None and start > expected_start
            if start != expected_start and not gap_allowed:
                kind = "gap" if start > expected_start else "overlap"
                raise ValueError(
                    f"chunks do not tile the recording: {kind} between {previous} "
                    f"(ends at sample {expected_start}) and {path!r} "
                    f"(start_sample={start})"
                )
            expected_start = start + meta["shape"][0]
            previous = repr(path)

        self.paths: tuple[str, ...] = tuple(path for _, path, _ in chunks)
        self._metas = tuple(meta for _, _, meta in chunks)
        self.covered: tuple[int, int] = (chunks[0][0], expected_start)
        if n_samples is None:
            n_samples = expected_start
        elif expected_start > n_samples:
            raise ValueError(
                f"chunks end at sample {expected_start}, beyond n_samples={n_samples}"
            )
        self.n_samples: int = int(n_samples)
        self.starts = np.array([start for start, _, _ in chunks], dtype=np.int64)
        self.stops = self.starts + np.array([m["shape"][0] for _, _, m in chunks])

    @classmethod
    def from_directory(cls, directory: PathLike) -> ChunkedRecording:
        """Open every array in ``directory`` that has a sidecar as one recording.

        Parameters
        ----------
        directory : str or os.PathLike
            Folder holding the chunk files and their ``.yaml`` sidecars (and
            nothing else with a sidecar).
        """
        folder = Path(directory)
        paths = sorted(
            str(side)[: -len(SIDECAR_SUFFIX)]
            for side in folder.glob("*" + SIDECAR_SUFFIX)
            if Path(str(side)[: -len(SIDECAR_SUFFIX)]).is_file()
        )
        if not paths:
            raise ValueError(
                f"directory {os.fspath(directory)!r} holds no array with a sidecar"
            )
        return cls(paths)

    def get_traces(
        self,
        start: int,
        stop: int,
        channels: npt.ArrayLike | None = None,
        pad: str | None = "zero",
    ) -> npt.NDArray[np.float32]:
        """Return samples ``[start, stop)`` as float32 ``(stop - start, n_sel)``.

        Parameters
        ----------
        start, stop : int
            Window in absolute samples, ``start <= stop``. With ``pad='zero'``
            they may reach outside ``[0, n_samples)``; those samples are 0.
        channels : array_like of int, optional
            Channel indices to return, in that order (default: all).
        pad : {'zero', None}, default 'zero'
            ``'zero'`` zero-pads outside the recording; ``None`` raises instead.

        Returns
        -------
        numpy.ndarray of float32
            The window, stored values multiplied by each chunk's ``scale``.
        """
        if pad not in ("zero", None):
            raise ValueError(f"pad must be 'zero' or None, got {pad!r}")
        start, stop = check_window(start, stop)
        if pad is None and (start < 0 or stop > self.n_samples):
            raise ValueError(
                f"window [{start}, {stop}) reaches outside [0, {self.n_samples}); "
                "expected 0 <= start and stop <= n_samples (or pad='zero')"
            )
        selected = check_channels(channels, self.n_channels)
        out = np.zeros(
            (stop - start, self.n_channels if selected is None else len(selected)),
            dtype=np.float32,
        )
        lo, hi = max(start, 0), min(stop, self.n_samples)
        if lo >= hi:
            return out
        overlapping = np.flatnonzero((self.starts < hi) & (self.stops > lo))
        held = sum(
            min(hi, int(self.stops[i])) - max(lo, int(self.starts[i])) for i in overlapping
        )
        if held < hi - lo:
            raise ValueError(
                f"window [{start}, {stop}) needs samples [{lo}, {hi}) but the chunks "
                f"given do not hold them all (they cover {self.covered[0]} to "
                f"{self.covered[1]}, with gaps where chunks were not given)"
            )
        for index in overlapping:
            c0, c1 = int(self.starts[index]), int(self.stops[index])
            a, b = max(lo, c0), min(hi, c1)
            if a >= b:  # an empty chunk
                continue
            meta = self._metas[index]
            read_rows_into(
                self.paths[index], a - c0, b - c0, out[a - start : b - start],
                columns=selected, scale=float(meta.get("scale", 1.0)), meta=meta,
            )
        return out
