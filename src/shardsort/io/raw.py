"""Read raw binary recordings by read-only memmap, in microvolts.

A raw recording is a headerless (after ``offset_bytes``) block of samples of
one numeric dtype, stored either

* ``order='samples'``: ``(n_samples, n_file_channels)`` C-order (interleaved,
  as written by SpikeGLX, Open Ephys, Intan, ...), or
* ``order='channels'``: ``(n_file_channels, n_samples)`` C-order (one
  contiguous row per channel).

``n_file_channels`` is the number of channels stored per sample; the first
``n_channels`` of them are the neural channels exposed by :class:`Recording`
(SpikeGLX stores its sync word after the neural channels).

Conversion to microvolts
------------------------
``uv = (stored - mid) * gain_to_uv`` where ``mid`` is 0 for signed integer
and float dtypes and ``2**(bits - 1)`` for unsigned integer dtypes (e.g. 32768
for uint16, the offset-binary convention of Intan and most ADCs). Arithmetic
is done in float32 for dtypes of at most 16 bits (exact) and in float64 for
wider ones, and the result is returned as float32.

The file is only ever opened with ``np.memmap(mode='r')``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .geometry import check_positions, default_geometry, load_geometry

#: Allowed values of ``order``.
ORDERS = ("samples", "channels")


@dataclass(frozen=True)
class FormatFields:
    """What a self-describing format (SpikeGLX, Open Ephys) says about a recording.

    Attributes
    ----------
    data_path : str
        The binary file to memmap.
    metadata_path : str
        The file these fields were read from (``.meta``, ``structure.oebin``).
    sampling_rate_hz : float
    n_channels : int
        Neural channels (the first ``n_channels`` stored per sample).
    n_file_channels : int
        Channels stored per sample (neural plus sync/digital words).
    dtype : str
    order : str
    gain_to_uv : float
    offset_bytes : int
    positions_um : numpy.ndarray or None
        ``(n_channels, 2)`` positions when the format carries them.
    n_samples : int or None
        Samples per channel when the format says so (NWB); None: derived
        from the size of ``data_path``.
    stream : str or None
        Which stream of a multi-stream file (NWB: the ElectricalSeries path).
    shank_ids : numpy.ndarray or None
        ``(n_channels,)`` shank of each channel on a multi-shank probe.
    sample_shifts : numpy.ndarray or None
        ``(n_channels,)`` when each channel was sampled after the sample's
        tick, in sample periods (Neuropixels ADC multiplexing).
    """

    data_path: str
    metadata_path: str
    sampling_rate_hz: float
    n_channels: int
    n_file_channels: int
    dtype: str
    order: str
    gain_to_uv: float
    offset_bytes: int
    positions_um: np.ndarray | None
    n_samples: int | None = None
    stream: str | None = None
    shank_ids: np.ndarray | None = None
    sample_shifts: np.ndarray | None = None


def check_dtype(dtype: npt.DTypeLike) -> np.dtype:
    """Return ``np.dtype(dtype)`` if it is a plain integer or float dtype.

    Raises
    ------
    ValueError
        For unknown names and for bool, complex, structured or object dtypes.
    """
    try:
        result = np.dtype(dtype)
    except TypeError as error:
        raise ValueError(
            f"dtype must be a numpy integer or float dtype name (e.g. 'int16', "
            f"'float32'), got {dtype!r}"
        ) from error
    if result.kind not in "iuf" or result.fields is not None:
        raise ValueError(
            f"dtype must be a numpy integer or float dtype (e.g. 'int16', 'uint16', "
            f"'float32'), got {dtype!r}"
        )
    return result


def unsigned_mid(dtype: np.dtype) -> int:
    """Mid value subtracted from unsigned samples: ``2**(bits-1)``, else 0."""
    return 1 << (8 * dtype.itemsize - 1) if dtype.kind == "u" else 0


def check_window(start: int, stop: int) -> tuple[int, int]:
    """Validate integer sample indices with ``start <= stop``; return them as ints."""
    for name, value in (("start", start), ("stop", stop)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer sample index, got {value!r}")
    if stop < start:
        raise ValueError(f"stop must be >= start, got start={start}, stop={stop}")
    return int(start), int(stop)


def check_channels(
    channels: npt.ArrayLike | None, n_channels: int
) -> np.ndarray | None:
    """Validate channel indices (1-D, in ``[0, n_channels)``); ``None`` means all."""
    if channels is None:
        return None
    selected = np.asarray(channels)
    if selected.ndim != 1 or (selected.size and selected.dtype.kind not in "iu"):
        raise ValueError(
            f"channels must be a 1-D sequence of integer indices, got {channels!r}"
        )
    selected = selected.astype(np.intp)
    if selected.size and (selected.min() < 0 or selected.max() >= n_channels):
        raise ValueError(
            f"channels must lie in [0, {n_channels}), got values from "
            f"{selected.min()} to {selected.max()}"
        )
    return selected


def _channel_index(selected: np.ndarray | None, n_channels: int) -> slice | np.ndarray:
    """A slice when the selection is a contiguous ascending run (cheaper to read)."""
    if selected is None:
        return slice(0, n_channels)
    if selected.size and np.all(np.diff(selected) == 1):
        return slice(int(selected[0]), int(selected[-1]) + 1)
    return selected


class Recording:
    """A raw binary recording opened read-only.

    Parameters
    ----------
    path : str or os.PathLike
        The binary file.
    n_channels : int
        Neural channels exposed (the first ``n_channels`` stored per sample).
    dtype : str or numpy.dtype
        Any numpy integer or float dtype (byte order included, e.g. ``'>i2'``).
    sampling_rate_hz : float
    order : {'samples', 'channels'}, default 'samples'
        Storage layout, see the module docstring.
    gain_to_uv : float, default 1.0
        Microvolts per stored unit (after the unsigned mid shift).
    offset_bytes : int, default 0
        Header bytes before the first sample.
    n_file_channels : int, optional
        Channels stored per sample; defaults to ``n_channels``.
    positions_um : array_like, optional
        ``(n_channels, 2)`` contact positions; defaults to
        :func:`~shardsort.io.geometry.default_geometry`.

    Raises
    ------
    ValueError
        For invalid parameters, or a file whose size after the header is not
        a whole number of samples.
    FileNotFoundError
        If ``path`` does not exist.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_channels: int,
        dtype: npt.DTypeLike,
        sampling_rate_hz: float,
        order: str = "samples",
        gain_to_uv: float = 1.0,
        offset_bytes: int = 0,
        n_file_channels: int | None = None,
        positions_um: npt.ArrayLike | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.dtype = check_dtype(dtype)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if not isinstance(n_channels, (int, np.integer)) or n_channels < 1:
            raise ValueError(f"n_channels must be an integer >= 1, got {n_channels!r}")
        n_file_channels = n_channels if n_file_channels is None else n_file_channels
        if (
            not isinstance(n_file_channels, (int, np.integer))
            or n_file_channels < n_channels
        ):
            raise ValueError(
                f"n_file_channels must be an integer >= n_channels={n_channels}, "
                f"got {n_file_channels!r}"
            )
        if not np.isfinite(sampling_rate_hz) or sampling_rate_hz <= 0:
            raise ValueError(f"sampling_rate_hz must be > 0, got {sampling_rate_hz!r}")
        if not np.isfinite(gain_to_uv) or gain_to_uv <= 0:
            raise ValueError(f"gain_to_uv must be > 0, got {gain_to_uv!r}")
        if not isinstance(offset_bytes, (int, np.integer)) or offset_bytes < 0:
            raise ValueError(
                f"offset_bytes must be an integer >= 0, got {offset_bytes!r}"
            )

        self.n_channels = int(n_channels)
        self.n_file_channels = int(n_file_channels)
        self.sampling_rate_hz = float(sampling_rate_hz)
        self.order = order
        self.gain_to_uv = float(gain_to_uv)
        self.offset_bytes = int(offset_bytes)
        self.positions_um = (
            default_geometry(self.n_channels)
            if positions_um is None
            else check_positions(positions_um, self.n_channels)
        )

        payload = os.path.getsize(self.path) - self.offset_bytes
        frame = self.n_file_channels * self.dtype.itemsize
        if payload < 0 or payload % frame:
            raise ValueError(
                f"{self.path!r}: file size minus offset_bytes is {payload} bytes, "
                f"not a multiple of n_file_channels x itemsize = "
                f"{self.n_file_channels} x {self.dtype.itemsize} = {frame} bytes"
            )
        self.n_samples = payload // frame
        self._memmap: np.memmap | None = None

    def _data(self) -> np.memmap:
        if self._memmap is None:
            shape = (
                (self.n_samples, self.n_file_channels)
                if self.order == "samples"
                else (self.n_file_channels, self.n_samples)
            )
            self._memmap = np.memmap(
                self.path,
                dtype=self.dtype,
                mode="r",
                offset=self.offset_bytes,
                shape=shape,
            )
        return self._memmap

    def get_traces(
        self, start: int, stop: int, channels: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.float32]:
        """Return samples ``[start, stop)`` in microvolts as float32.

        Parameters
        ----------
        start, stop : int
            Window in samples, ``0 <= start <= stop <= n_samples`` (margins
            beyond the recording are the caller's business).
        channels : array_like of int, optional
            Channel indices in ``[0, n_channels)``, returned in that order
            (default: all neural channels).

        Returns
        -------
        numpy.ndarray of float32, C-order, shape (stop - start, n_selected)
        """
        start, stop = check_window(start, stop)
        if start < 0 or stop > self.n_samples:
            raise ValueError(
                f"window [{start}, {stop}) must lie within [0, {self.n_samples}) "
                f"of {self.path!r}"
            )
        selected = check_channels(channels, self.n_channels)
        n_selected = self.n_channels if selected is None else len(selected)
        if start == stop or n_selected == 0:
            return np.zeros((stop - start, n_selected), dtype=np.float32)
        index = _channel_index(selected, self.n_channels)
        if self.order == "samples":
            raw = self._data()[start:stop, index]
        else:
            raw = self._data()[index, start:stop].T
        return self._to_microvolts(raw)

    def _to_microvolts(self, raw: np.ndarray) -> npt.NDArray[np.float32]:
        exact_in_float32 = self.dtype.itemsize <= 2 or self.dtype == np.float32
        work = np.float32 if exact_in_float32 else np.float64
        out = raw.astype(work, order="C")
        mid = unsigned_mid(self.dtype)
        if mid:
            out -= mid
        if self.gain_to_uv != 1.0:
            out *= work(self.gain_to_uv)
        return out.astype(np.float32, copy=False)


def open_recording(spec) -> Recording:
    """Open the recording described by a :class:`~shardsort.recordings.RecordingSpec`.

    NWB recordings (``spec.format == 'nwb'``) are opened as
    :class:`shardsort.io.nwb.NwbRecording` (same interface, read through h5py).

    Parameters
    ----------
    spec : RecordingSpec
        A validated spec (from ``load_recordings_table``). A spec whose
        positions were still pending (geometry file generated by the
        workflow) gets them from ``spec.geometry`` now.

    Returns
    -------
    Recording

    Raises
    ------
    ValueError
        If the file no longer has the number of samples the spec recorded.
    """
    positions = spec.positions_um
    if len(positions) == 0 and spec.geometry is not None:
        # Geometry generated by the workflow after the table was read.
        positions = load_geometry(spec.geometry, n_channels=spec.n_channels)
    if spec.format == "nwb":
        from .nwb import NwbRecording

        recording = NwbRecording(
            spec.path,
            electrical_series=spec.electrical_series,
            positions_um=positions,
        )
    else:
        recording = Recording(
            spec.path,
            n_channels=spec.n_channels,
            dtype=spec.dtype,
            sampling_rate_hz=spec.sampling_rate_hz,
            order=spec.order,
            gain_to_uv=spec.gain_to_uv,
            offset_bytes=spec.offset_bytes,
            n_file_channels=spec.n_file_channels,
            positions_um=positions,
        )
    if recording.n_samples != spec.n_samples:
        raise ValueError(
            f"recording {spec.name!r}: {spec.path!r} now holds {recording.n_samples} "
            f"samples, expected n_samples={spec.n_samples} from the recordings table"
        )
    return recording
