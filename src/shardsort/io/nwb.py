"""Read the ElectricalSeries of an NWB file lazily, through h5py.

An NWB file (HDF5) holds its raw voltage traces as an ``ElectricalSeries``
group, usually under ``/acquisition``: a ``data`` dataset of shape
``(n_samples, n_channels)``, the sampling rate (``starting_time`` with a
``rate`` attribute, or a ``timestamps`` dataset), and an ``electrodes``
region that points at rows of the electrodes table
(``/general/extracellular_ephys/electrodes``), whose ``rel_x``/``rel_y`` (or
``x``/``y``) columns give the contact positions.

Conversion to microvolts follows the NWB definition
``volts = data * channel_conversion * conversion + offset``::

    uv = data * gain_to_uv + offset_uv,   gain_to_uv = conversion * channel_conversion * 1e6

(``channel_conversion``, when present, must be the same for every channel.)

Only metadata is read when the file is described; :class:`NwbRecording`
reads one window of samples × channels per call, never the whole series.
The file is only ever opened read-only.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from .geometry import check_positions, default_geometry
from .raw import FormatFields, check_channels, check_dtype, check_window

#: Where NWB keeps the electrodes table.
ELECTRODES_TABLE = "general/extracellular_ephys/electrodes"
#: Position columns of the electrodes table, in order of preference.
POSITION_COLUMNS = (("rel_x", "rel_y"), ("x", "y"))
#: Timestamps read to estimate the rate when the series has no ``rate``.
RATE_TIMESTAMPS = 100_000


class NwbError(ValueError):
    """An NWB file that does not describe a recording shardsort can read."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _open(path: str):
    import h5py

    if not os.path.isfile(path):
        raise FileNotFoundError(f"NWB file {path!r} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise NwbError(f"{path!r} is not a readable NWB (HDF5) file: {error}") from None


def electrical_series_names(handle) -> list[str]:
    """Paths (``acquisition/<name>``) of the ElectricalSeries in ``/acquisition``."""
    import h5py

    acquisition = handle.get("acquisition")
    if acquisition is None:
        return []
    return [
        f"acquisition/{name}"
        for name, item in acquisition.items()
        if isinstance(item, h5py.Group)
        and _text(item.attrs.get("neurodata_type", "")) == "ElectricalSeries"
    ]


def _select_series(handle, path: str, electrical_series: str | None) -> str:
    names = electrical_series_names(handle)
    if electrical_series is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise NwbError(
                f"{path!r}: no ElectricalSeries in /acquisition "
                "(expected the raw recording there)"
            )
        raise NwbError(
            f"{path!r} holds {len(names)} ElectricalSeries "
            f"{[n.split('/', 1)[1] for n in names]}: "
            "choose one with --electrical-series NAME"
        )
    wanted = electrical_series.strip("/")
    for name in names:
        if wanted in (name, name.split("/", 1)[1]):
            return name
    raise NwbError(
        f"{path!r}: electrical_series={electrical_series!r}: expected one of "
        f"{[n.split('/', 1)[1] for n in names]}"
    )


def _sampling_rate(path: str, series, name: str) -> float:
    if "starting_time" in series:
        rate = series["starting_time"].attrs.get("rate")
        if rate is not None and np.isfinite(rate) and rate > 0:
            return float(rate)
        raise NwbError(
            f"{path!r}: {name}/starting_time has rate={rate!r}: expected a number > 0"
        )
    if "timestamps" in series:
        stamps = series["timestamps"]
        head = np.asarray(stamps[: min(len(stamps), RATE_TIMESTAMPS)], np.float64)
        steps = np.diff(head)
        if len(steps) == 0 or not np.median(steps) > 0:
            raise NwbError(
                f"{path!r}: {name}/timestamps: expected at least two increasing "
                "timestamps to derive the sampling rate"
            )
        return float(1.0 / np.median(steps))
    raise NwbError(
        f"{path!r}: {name} has neither starting_time (with rate) nor timestamps: "
        "the sampling rate is missing"
    )


def _gain(path: str, series, name: str, n_channels: int) -> tuple[float, float]:
    """(gain_to_uv, offset_uv) of the series."""
    data = series["data"]
    conversion = float(data.attrs.get("conversion", 1.0))
    offset = float(data.attrs.get("offset", 0.0))
    unit = _text(data.attrs.get("unit", "volts"))
    if unit.lower() not in ("volts", "v", "volt"):
        raise NwbError(
            f"{path!r}: {name}/data unit={unit!r}: expected 'volts' "
            "(as the ElectricalSeries definition requires)"
        )
    scale = 1.0
    if "channel_conversion" in series:
        factors = np.asarray(series["channel_conversion"][:], np.float64)
        if factors.shape != (n_channels,) or not np.allclose(
            factors, factors[0], rtol=1e-9
        ):
            raise NwbError(
                f"{path!r}: {name}/channel_conversion has values from "
                f"{factors.min():g} to {factors.max():g}: expected one value for "
                f"all {n_channels} channels"
            )
        scale = float(factors[0])
    gain = conversion * scale * 1e6
    if not np.isfinite(gain) or gain <= 0:
        raise NwbError(
            f"{path!r}: {name}/data conversion={conversion!r}: expected a number > 0"
        )
    return gain, offset * 1e6


def _positions(handle, path: str, series, name: str, n_channels: int):
    """Contact positions from the electrodes table, or None when it has none."""
    if "electrodes" not in series:
        return None
    region = series["electrodes"]
    table_ref = region.attrs.get("table")
    table = handle[table_ref] if table_ref is not None else handle.get(ELECTRODES_TABLE)
    if table is None:
        return None
    rows = np.asarray(region[:], dtype=np.int64)
    if rows.shape != (n_channels,):
        raise NwbError(
            f"{path!r}: {name}/electrodes references {rows.size} electrodes: "
            f"expected one per channel of data ({n_channels})"
        )
    for x_name, y_name in POSITION_COLUMNS:
        if x_name in table and y_name in table:
            x = np.asarray(table[x_name][:], np.float64)
            y = np.asarray(table[y_name][:], np.float64)
            if rows.size and (rows.min() < 0 or rows.max() >= len(x)):
                raise NwbError(
                    f"{path!r}: {name}/electrodes references rows up to "
                    f"{rows.max()}: expected rows of the {len(x)}-row electrodes table"
                )
            positions = np.column_stack([x[rows], y[rows]])
            if np.all(np.isfinite(positions)):
                return positions
    return None


def nwb_fields(
    path: str | os.PathLike,
    *,
    electrical_series: str | None = None,
    with_geometry: bool = True,
) -> FormatFields:
    """Describe the ElectricalSeries of an NWB file (metadata only).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.nwb`` file.
    electrical_series : str, optional
        Name (or ``acquisition/<name>`` path) of the series; required when
        ``/acquisition`` holds more than one ElectricalSeries.
    with_geometry : bool, default True
        Read the contact positions from the electrodes table.

    Returns
    -------
    FormatFields
        ``order='samples'``, ``offset_bytes=0``, ``n_samples`` set,
        ``stream`` the series' path in the file (``acquisition/<name>``);
        ``positions_um`` None when the electrodes table has no finite
        ``rel_x``/``rel_y`` or ``x``/``y`` columns.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    NwbError
        (a ``ValueError``) naming the file and what is missing: no or several
        ElectricalSeries, no rate, data that is not 2-D, per-channel
        conversions that differ, electrodes that do not match the channels.
    """
    path = os.fspath(path)
    with _open(path) as handle:
        name = _select_series(handle, path, electrical_series)
        series = handle[name]
        if "data" not in series:
            raise NwbError(f"{path!r}: {name} has no data dataset")
        data = series["data"]
        if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] < 1:
            raise NwbError(
                f"{path!r}: {name}/data has shape {data.shape}: expected "
                "(n_samples, n_channels) with both >= 1"
            )
        try:
            dtype = check_dtype(data.dtype)
        except ValueError as error:
            raise NwbError(f"{path!r}: {name}/data: {error}") from None
        n_samples, n_channels = (int(n) for n in data.shape)
        rate = _sampling_rate(path, series, name)
        gain, _ = _gain(path, series, name, n_channels)
        positions = (
            _positions(handle, path, series, name, n_channels) if with_geometry else None
        )
    return FormatFields(
        data_path=path,
        metadata_path=path,
        sampling_rate_hz=rate,
        n_channels=n_channels,
        n_file_channels=n_channels,
        dtype=dtype.name if dtype.isnative else dtype.str,
        order="samples",
        gain_to_uv=gain,
        offset_bytes=0,
        positions_um=positions,
        n_samples=n_samples,
        stream=name,
    )


class NwbRecording:
    """The ElectricalSeries of an NWB file, read window by window in microvolts.

    Offers what :class:`shardsort.io.raw.Recording` offers (``n_samples``,
    ``n_channels``, ``sampling_rate_hz``, ``positions_um``, ``gain_to_uv``,
    ``get_traces``); the HDF5 dataset is opened on first use and only the
    requested window is read.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.nwb`` file.
    electrical_series : str, optional
        As for :func:`nwb_fields`.
    positions_um : array_like, optional
        ``(n_channels, 2)`` positions overriding the electrodes table (the
        default layout is used when neither exists).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        electrical_series: str | None = None,
        positions_um: npt.ArrayLike | None = None,
    ) -> None:
        fields = nwb_fields(
            path, electrical_series=electrical_series, with_geometry=positions_um is None
        )
        self.path = fields.data_path
        self.electrical_series = fields.stream
        self.n_samples = int(fields.n_samples)
        self.n_channels = fields.n_channels
        self.sampling_rate_hz = fields.sampling_rate_hz
        self.dtype = np.dtype(fields.dtype)
        self.gain_to_uv = fields.gain_to_uv
        with _open(self.path) as handle:
            series = handle[self.electrical_series]
            _, self.offset_uv = _gain(
                self.path, series, self.electrical_series, self.n_channels
            )
        if positions_um is not None:
            self.positions_um = check_positions(positions_um, self.n_channels)
        elif fields.positions_um is not None:
            self.positions_um = check_positions(fields.positions_um, self.n_channels)
        else:
            self.positions_um = default_geometry(self.n_channels)
        self._handle = None
        self._data = None

    def _dataset(self):
        if self._data is None:
            self._handle = _open(self.path)
            self._data = self._handle[self.electrical_series]["data"]
        return self._data

    def close(self) -> None:
        """Close the HDF5 file (it is reopened by the next read)."""
        if self._handle is not None:
            self._handle.close()
        self._handle = self._data = None

    def get_traces(
        self, start: int, stop: int, channels: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.float32]:
        """Return samples ``[start, stop)`` in microvolts as float32.

        Same contract as :meth:`shardsort.io.raw.Recording.get_traces`:
        ``(stop - start, n_selected)`` C-order, channels in the order given.
        """
        start, stop = check_window(start, stop)
        if start < 0 or stop > self.n_samples:
            raise ValueError(
                f"window [{start}, {stop}) must lie within [0, {self.n_samples}) "
                f"of {self.path!r} ({self.electrical_series})"
            )
        selected = check_channels(channels, self.n_channels)
        n_selected = self.n_channels if selected is None else len(selected)
        if start == stop or n_selected == 0:
            return np.zeros((stop - start, n_selected), dtype=np.float32)
        data = self._dataset()
        if selected is None:
            raw = data[start:stop, :]
        else:
            lo, hi = int(selected.min()), int(selected.max()) + 1
            if np.array_equal(selected, np.arange(lo, hi)):
                raw = data[start:stop, lo:hi]
            elif hi - lo <= 4 * len(selected):
                raw = data[start:stop, lo:hi][:, selected - lo]
            else:
                # h5py lists must be increasing and unique.
                unique, inverse = np.unique(selected, return_inverse=True)
                raw = data[start:stop, unique.tolist()][:, inverse]
        exact_in_float32 = self.dtype.itemsize <= 2 or self.dtype == np.float32
        work = np.float32 if exact_in_float32 else np.float64
        out = np.asarray(raw).astype(work, order="C")
        if self.gain_to_uv != 1.0:
            out *= work(self.gain_to_uv)
        if self.offset_uv != 0.0:
            out += work(self.offset_uv)
        return out.astype(np.float32, copy=False)
