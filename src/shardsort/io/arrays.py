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
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from .raw import check_channels, check_window

#: Suffix of the sidecar written next to every binary array.
SIDECAR_SUFFIX = ".yaml"
#: Sidecar keys owned by :func:`write_array`; extra attributes may not use them.
RESERVED_KEYS = frozenset({"dtype", "shape", "order", "sampling_rate_hz"})

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
    **attrs
        Extra sidecar attributes (numbers, strings, lists, dicts, numpy
        scalars or small arrays). ``start_sample`` and ``scale`` are read by
        :class:`ChunkedRecording`.

    Raises
    ------
    ValueError
        If an attribute name is one of ``dtype``, ``shape``, ``order``,
        ``sampling_rate_hz``, or ``sampling_rate_hz`` is not a positive number.
    """
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
    data = np.asarray(array, order="C")
    target = os.fspath(path)
    sidecar = {
        "dtype": _dtype_to_yaml(data.dtype),
        "shape": list(data.shape),
        "order": "C",
        "sampling_rate_hz": None
        if sampling_rate_hz is None
        else float(sampling_rate_hz),
        **_plain(attrs),
    }
    text = yaml.safe_dump(sidecar, sort_keys=False, default_flow_style=None).encode()

    with contextlib.suppress(FileNotFoundError):
        os.remove(target)
    data_tmp = _temporary_name(target)
    try:
        with open(data_tmp, "wb") as handle:
            data.tofile(handle)
            handle.flush()
            os.fsync(handle.fileno())
        atomic_write_bytes(sidecar_path(target), text)
        os.replace(data_tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(data_tmp)
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(target)))


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
        the data into memory. Empty arrays are always returned in memory.

    Returns
    -------
    numpy.ndarray
        Array with the sidecar's dtype and shape.

    Raises
    ------
    ValueError
        If the file size does not match the sidecar's dtype and shape.
    """
    meta = read_sidecar(path)
    dtype, shape = meta["dtype"], meta["shape"]
    expected = math.prod(shape) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        raise ValueError(
            f"{os.fspath(path)!r} holds {actual} bytes but its sidecar describes "
            f"{expected} bytes (dtype {dtype}, shape {shape})"
        )
    if expected == 0:
        return np.zeros(shape, dtype=dtype)
    if mmap:
        return np.memmap(path, dtype=dtype, mode="r", shape=shape).reshape(shape)
    return np.fromfile(path, dtype=dtype).reshape(shape)


class ChunkedRecording:
    """Per-chunk arrays that tile ``[0, n_samples)``, read as one recording.

    Each chunk is a 2-D array ``(n_chunk_samples, n_channels)`` written by
    :func:`write_array` with sidecar attribute ``start_sample`` (absolute
    index of its first sample) and, optionally, ``scale`` (the stored values
    are multiplied by it on reading, e.g. int16 chunks). Chunks are opened
    lazily (one memmap per read), so thousands of chunks cost no open files.

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
            chunk = np.memmap(
                self.paths[index], dtype=meta["dtype"], mode="r", shape=meta["shape"]
            )
            block = (
                chunk[a - c0 : b - c0]
                if selected is None
                else chunk[a - c0 : b - c0, selected]
            )
            target = out[a - start : b - start]
            target[...] = block
            scale = meta.get("scale", 1.0)
            if scale != 1.0:
                target *= np.float32(scale)
        return out
