"""The recordings table: which recordings to sort, validated before any job runs.

The table is a tab-separated file with one header row and one row per
recording. Required columns (any order)::

    name  path  format  sampling_rate_hz  n_channels  dtype  order  gain_to_uv
    offset_bytes  geometry

and the optional columns ``ground_truth`` (path of a ground-truth file) and
``electrical_series`` (which ElectricalSeries of an NWB file). Blank
lines and lines starting with ``#`` are ignored. Relative paths are relative
to the current working directory (the workflow root).

Cells may be empty where a value has a default or the format carries it:

* ``binary``: ``sampling_rate_hz``, ``n_channels`` and ``dtype`` are
  required; ``order`` defaults to ``samples``, ``gain_to_uv`` to 1.0,
  ``offset_bytes`` to 0.
* ``spikeglx``: ``path`` is the ``.bin`` or ``.meta``; the meta gives rate,
  channel count, gain and geometry (see :mod:`shardsort.io.spikeglx`).
* ``openephys``: ``path`` is ``structure.oebin``, its folder, or a stream's
  ``continuous.dat``; the oebin gives rate, channel count and gain.
* ``nwb``: ``path`` is the ``.nwb`` file; its ElectricalSeries in
  ``/acquisition`` (the one named in ``electrical_series`` when there are
  several) gives rate, channel count, samples, gain and positions (see
  :mod:`shardsort.io.nwb`).

A value given for a self-describing format must agree with what the format
says, except ``geometry``, which overrides the format's geometry. When no
geometry is known the default two-column layout of
:func:`shardsort.io.geometry.default_geometry` is used and
``geometry_source`` says ``'default'``.

Input files are only stat-ed and read, never opened for writing.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .io.geometry import (
    check_positions,
    default_geometry,
    load_geometry,
    separate_shanks,
)
from .io.nwb import nwb_fields
from .io.openephys import openephys_fields
from .io.raw import ORDERS, FormatFields, check_dtype, open_recording
from .io.spikeglx import spikeglx_fields

#: Required columns of the recordings table.
COLUMNS = (
    "name",
    "path",
    "format",
    "sampling_rate_hz",
    "n_channels",
    "dtype",
    "order",
    "gain_to_uv",
    "offset_bytes",
    "geometry",
)
#: Columns that may be present.
OPTIONAL_COLUMNS = ("ground_truth", "electrical_series")
#: Recording formats.
FORMATS = ("binary", "spikeglx", "openephys", "nwb")
#: Recording names must be safe as a path component.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
#: Keys accepted in the ``generated`` mapping of :func:`load_recordings_table`.
GENERATED_KEYS = frozenset(
    {"n_samples", "n_channels", "sampling_rate_hz", "geometry", "positions_um"}
)


class RecordingError(ValueError):
    """An invalid recordings table or recording."""


class RecordingFileNotFoundError(RecordingError, FileNotFoundError):
    """A file named by the recordings table does not exist."""


@dataclass(frozen=True)
class RecordingSpec:
    """One validated recording.

    Attributes
    ----------
    name : str
        Unique, path-safe name (letters, digits, ``_ - .``).
    path : str
        The binary data file to memmap (for SpikeGLX the ``.bin``, for Open
        Ephys the stream's ``continuous.dat``).
    format : {'binary', 'spikeglx', 'openephys'}
    sampling_rate_hz : float
    n_channels : int
        Neural channels: the first ``n_channels`` stored per sample.
    dtype : str
        Numpy dtype name of the stored samples.
    order : {'samples', 'channels'}
        ``(n_samples, n_file_channels)`` or ``(n_file_channels, n_samples)``.
    gain_to_uv : float
        Microvolts per stored unit (unsigned dtypes are centred first).
    offset_bytes : int
        Header bytes before the first sample.
    geometry : str or None
        Geometry file, when one was given.
    n_samples : int
        Samples per channel, derived from the file size.
    positions_um : tuple of (x, y) tuples
        Channel positions in micrometres; empty while ``geometry_source`` is
        ``'pending'``.
    geometry_source : {'file', 'spikeglx', 'default', 'pending'}
        Where ``positions_um`` came from: the geometry file, the SpikeGLX
        meta, the default layout, or not yet known (a geometry file the
        workflow generates; :func:`shardsort.io.raw.open_recording` loads it).
    n_file_channels : int
        Channels stored per sample (>= ``n_channels``; SpikeGLX adds its sync
        word).
    ground_truth : str or None
        Ground-truth file from the optional ``ground_truth`` column.
    metadata_path : str or None
        The ``.meta`` / ``structure.oebin`` the fields were read from.
    electrical_series : str or None
        NWB: the series read (``acquisition/<name>``).
    shank_ids : tuple of int
        Shank of each channel of a multi-shank probe whose geometry came from
        the format (empty otherwise). ``positions_um`` then put the shanks
        :data:`shardsort.io.geometry.SHANK_SEPARATION_UM` further apart than
        on the probe, so that no neighbourhood (detection, features,
        reference, whitening, clustering) spans two shanks.
    sample_shifts : tuple of float
        When each channel was sampled after the sample's tick, in sample
        periods (Neuropixels ADC multiplexing, :mod:`shardsort.phase`);
        empty when the format does not say.
    """

    name: str
    path: str
    format: str
    sampling_rate_hz: float
    n_channels: int
    dtype: str
    order: str
    gain_to_uv: float
    offset_bytes: int
    geometry: str | None
    n_samples: int
    positions_um: tuple[tuple[float, float], ...]
    geometry_source: str
    n_file_channels: int
    ground_truth: str | None = None
    metadata_path: str | None = None
    electrical_series: str | None = None
    shank_ids: tuple[int, ...] = ()
    sample_shifts: tuple[float, ...] = ()

    @property
    def positions_array(self) -> npt.NDArray[np.float64]:
        """``positions_um`` as a float64 ``(n_channels, 2)`` array."""
        return np.array(self.positions_um, dtype=np.float64).reshape(-1, 2)

    @property
    def duration_s(self) -> float:
        """Length of the recording in seconds."""
        return self.n_samples / self.sampling_rate_hz


class _Row:
    """Error context of one table row: table file, line and recording name."""

    def __init__(self, table: str, line: int, name: str) -> None:
        self.where = f"recordings table {table!r} line {line} (recording {name!r})"

    def error(
        self, parameter: str, value: Any, expected: str, *, missing_file: bool = False
    ) -> RecordingError:
        kind = RecordingFileNotFoundError if missing_file else RecordingError
        return kind(f"{self.where}: {parameter}={value!r}: expected {expected}")

    def number(self, cells: Mapping[str, str], parameter: str) -> float | None:
        text = cells[parameter]
        if text == "":
            return None
        try:
            value = float(text)
        except ValueError:
            raise self.error(parameter, text, "a number") from None
        if not math.isfinite(value):
            raise self.error(parameter, text, "a finite number")
        return value

    def integer(self, cells: Mapping[str, str], parameter: str) -> int | None:
        value = self.number(cells, parameter)
        if value is None:
            return None
        if not value.is_integer():
            raise self.error(parameter, cells[parameter], "an integer")
        return int(value)


def _dtype_name(dtype: str) -> str:
    """Canonical dtype name: ``'int16'``, or ``'>i2'`` when not native byte order."""
    result = np.dtype(dtype)
    return result.name if result.isnative else result.str


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _merge_format(
    row: _Row, given: dict[str, Any], fields: FormatFields, fmt: str
) -> dict[str, Any]:
    """Values from a self-describing format; given cells must agree with them."""
    from_format = {
        "sampling_rate_hz": fields.sampling_rate_hz,
        "n_channels": fields.n_channels,
        "dtype": fields.dtype,
        "order": fields.order,
        "gain_to_uv": fields.gain_to_uv,
        "offset_bytes": fields.offset_bytes,
    }
    for parameter, value in from_format.items():
        cell = given[parameter]
        same = cell is None or (
            np.dtype(cell) == np.dtype(value)
            if parameter == "dtype"
            else _same(cell, value)
        )
        if not same:
            raise row.error(
                parameter,
                cell,
                f"{value!r} as in the {fmt} metadata {fields.metadata_path!r} "
                "(or leave the cell empty)",
            )
    return from_format


def _parse_cells(row: _Row, cells: Mapping[str, str]) -> dict[str, Any]:
    """Typed values of a row's cells (None where empty)."""
    given: dict[str, Any] = {
        "sampling_rate_hz": row.number(cells, "sampling_rate_hz"),
        "n_channels": row.integer(cells, "n_channels"),
        "gain_to_uv": row.number(cells, "gain_to_uv"),
        "offset_bytes": row.integer(cells, "offset_bytes"),
        "order": cells["order"] or None,
        "dtype": cells["dtype"] or None,
    }
    if given["dtype"] is not None:
        try:
            check_dtype(given["dtype"])
        except ValueError:
            raise row.error(
                "dtype",
                given["dtype"],
                "a numpy integer or float dtype name such as 'int16'",
            ) from None
    if given["order"] is not None and given["order"] not in ORDERS:
        raise row.error(
            "order", given["order"], f"one of {ORDERS} (or empty for 'samples')"
        )
    return given


def _check_values(row: _Row, values: dict[str, Any]) -> None:
    rate = values["sampling_rate_hz"]
    if rate is None or rate <= 0:
        raise row.error("sampling_rate_hz", rate, "a number > 0")
    if values["n_channels"] is None or values["n_channels"] < 1:
        raise row.error("n_channels", values["n_channels"], "an integer >= 1")
    if values["dtype"] is None:
        raise row.error(
            "dtype", None, "a numpy integer or float dtype name such as 'int16'"
        )
    if values["gain_to_uv"] <= 0:
        raise row.error("gain_to_uv", values["gain_to_uv"], "a number > 0")
    if values["offset_bytes"] < 0:
        raise row.error("offset_bytes", values["offset_bytes"], "an integer >= 0")


def _count_samples(
    row: _Row, path: str, values: dict[str, Any], n_file_channels: int
) -> int:
    """Samples per channel from the file size; checks whole samples and non-empty."""
    size = os.path.getsize(path)
    payload = size - values["offset_bytes"]
    itemsize = np.dtype(values["dtype"]).itemsize
    frame = n_file_channels * itemsize
    if payload < 0:
        raise row.error(
            "offset_bytes",
            values["offset_bytes"],
            f"at most the file size, {size} bytes",
        )
    if payload % frame:
        raise row.error(
            "path",
            path,
            f"a file whose size minus offset_bytes ({payload} bytes) is a multiple of "
            f"n_channels x itemsize = {n_file_channels} x {itemsize} = {frame} bytes "
            f"(check n_channels, dtype and offset_bytes)",
        )
    if payload == 0:
        raise row.error("path", path, "a non-empty recording, got 0 samples")
    return payload // frame


def _binary_source(
    row: _Row, given: dict[str, Any], path: str, *, must_exist: bool
) -> tuple[dict[str, Any], str, int, None, None]:
    """Values of a plain binary row: the table's cells with their defaults."""
    values = dict(given)
    values["order"] = values["order"] or "samples"
    if values["gain_to_uv"] is None:
        values["gain_to_uv"] = 1.0
    values["offset_bytes"] = values["offset_bytes"] or 0
    if must_exist and not os.path.isfile(path):
        raise row.error("path", path, "an existing recording file", missing_file=True)
    return values, path, values["n_channels"], None, None


def _format_source(
    row: _Row,
    given: dict[str, Any],
    path: str,
    fmt: str,
    *,
    with_geometry: bool,
    stream: str | None = None,
) -> tuple[dict[str, Any], str, int, str, np.ndarray | None, FormatFields]:
    """Values of a SpikeGLX / Open Ephys / NWB row, read from the format's metadata."""
    try:
        if fmt == "spikeglx":
            fields = spikeglx_fields(path, with_geometry=with_geometry)
        elif fmt == "nwb":
            fields = nwb_fields(
                path, electrical_series=stream, with_geometry=with_geometry
            )
        else:
            fields = openephys_fields(path)
    except FileNotFoundError as error:
        raise row.error(
            "path", path, f"an existing {fmt} recording ({error})", missing_file=True
        ) from None
    except ValueError as error:
        raise row.error("path", path, f"a valid {fmt} recording ({error})") from None
    values = _merge_format(row, given, fields, fmt)
    return (
        values,
        fields.data_path,
        fields.n_file_channels,
        fields.metadata_path,
        fields.positions_um,
        fields,
    )


def _resolve_row(
    row: _Row, cells: Mapping[str, str], generated: Mapping[str, Mapping[str, Any]]
) -> RecordingSpec:
    name, path, fmt = cells["name"], cells["path"], cells["format"]
    if not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise row.error(
            "name",
            name,
            "a non-empty name of letters, digits, '_', '-' and '.' "
            "(safe as a path component)",
        )
    if fmt not in FORMATS:
        raise row.error("format", fmt, f"one of {FORMATS}")
    if path == "":
        raise row.error("path", path, "the path of the recording")
    given = _parse_cells(row, cells)
    geometry = cells["geometry"] or None
    ground_truth = cells.get("ground_truth") or None
    stream = cells.get("electrical_series") or None
    if stream is not None and fmt != "nwb":
        raise row.error(
            "electrical_series", stream, "an empty cell for a recording not in NWB"
        )
    plan = generated.get(os.path.normpath(path))

    fields = None
    if fmt == "binary":
        source = _binary_source(row, given, path, must_exist=plan is None)
    elif plan is not None:
        raise row.error(
            "format", fmt, "'binary' for a recording the workflow generates"
        )
    else:
        *source, fields = _format_source(
            row, given, path, fmt, with_geometry=geometry is None, stream=stream
        )
    values, data_path, n_file_channels, metadata_path, positions = source
    geometry_source = "default" if positions is None else fmt
    _check_values(row, values)
    n_channels = values["n_channels"]

    if plan is not None:
        n_samples, geometry, positions, geometry_source = _generated(
            row, plan, values, geometry
        )
    else:
        if fields is not None and fields.n_samples is not None:
            n_samples = fields.n_samples
        else:
            n_samples = _count_samples(row, data_path, values, n_file_channels)
        if geometry is not None:
            positions, geometry_source = (
                _load_geometry(row, geometry, n_channels),
                "file",
            )
        if ground_truth is not None and not os.path.exists(ground_truth):
            raise row.error(
                "ground_truth", ground_truth, "an existing file", missing_file=True
            )
    if positions is None:
        positions = default_geometry(n_channels)
    shank_ids = () if fields is None or fields.shank_ids is None else fields.shank_ids
    if geometry_source == fmt and len(shank_ids):
        positions = separate_shanks(positions, shank_ids)
    else:
        shank_ids = ()
    shifts = () if fields is None or fields.sample_shifts is None else fields.sample_shifts

    return RecordingSpec(
        name=name,
        path=data_path,
        format=fmt,
        sampling_rate_hz=float(values["sampling_rate_hz"]),
        n_channels=int(n_channels),
        dtype=_dtype_name(values["dtype"]),
        order=values["order"],
        gain_to_uv=float(values["gain_to_uv"]),
        offset_bytes=int(values["offset_bytes"]),
        geometry=geometry,
        n_samples=int(n_samples),
        positions_um=tuple((float(x), float(y)) for x, y in positions),
        geometry_source=geometry_source,
        n_file_channels=int(n_file_channels),
        ground_truth=ground_truth,
        metadata_path=metadata_path,
        electrical_series=fields.stream if fields is not None and fmt == "nwb" else None,
        shank_ids=tuple(int(i) for i in shank_ids),
        sample_shifts=tuple(float(d) for d in shifts),
    )


def _load_geometry(row: _Row, geometry: str, n_channels: int) -> np.ndarray:
    if not os.path.isfile(geometry):
        raise row.error(
            "geometry", geometry, "an existing geometry file", missing_file=True
        )
    try:
        return load_geometry(geometry, n_channels=n_channels)
    except ValueError as error:
        raise row.error(
            "geometry", geometry, f"a geometry file for {n_channels} channels ({error})"
        ) from None


def _generated(
    row: _Row, plan: Mapping[str, Any], values: dict[str, Any], geometry: str | None
) -> tuple[int, str | None, np.ndarray | None, str]:
    """(n_samples, geometry, positions, source) of a recording the workflow makes."""
    unknown = set(plan) - GENERATED_KEYS
    if unknown or "n_samples" not in plan:
        raise ValueError(
            "generated entries need 'n_samples' and only keys "
            f"{sorted(GENERATED_KEYS)}, got {sorted(plan)}"
        )
    for parameter in ("n_channels", "sampling_rate_hz"):
        if parameter in plan and not _same(values[parameter], plan[parameter]):
            raise row.error(
                parameter,
                values[parameter],
                f"{plan[parameter]!r} as the workflow generates it",
            )
    if "geometry" in plan:
        if geometry is not None and os.path.normpath(geometry) != os.path.normpath(
            plan["geometry"]
        ):
            raise row.error(
                "geometry",
                geometry,
                f"{plan['geometry']!r} as the workflow generates it",
            )
        geometry = plan["geometry"]
    n_samples = int(plan["n_samples"])
    if n_samples < 1:
        raise row.error(
            "n_samples", n_samples, "a generated recording of at least 1 sample"
        )
    if "positions_um" in plan:
        positions = check_positions(plan["positions_um"], values["n_channels"])
        return n_samples, geometry, positions, "file" if geometry else "default"
    if geometry is not None:
        return n_samples, geometry, np.zeros((0, 2)), "pending"
    return n_samples, geometry, None, "default"


def _read_table(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line, cells), ...]) of a TSV, skipping blank and ``#`` lines."""
    if not os.path.isfile(path):
        raise RecordingFileNotFoundError(
            f"recordings table {path!r}: path={path!r}: expected an existing TSV file"
        )
    header: list[str] | None = None
    rows = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for cells in reader:
            cells = [c.strip() for c in cells]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if header is None:
                header = cells
            else:
                rows.append((reader.line_num, cells))
    if header is None:
        raise RecordingError(
            f"recordings table {path!r} is empty: expected a header row {COLUMNS}"
        )
    return header, rows


def load_recordings_table(
    path: str | os.PathLike,
    *,
    generated: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[RecordingSpec]:
    """Read and fully validate the recordings table.

    Parameters
    ----------
    path : str or os.PathLike
        The TSV table (see the module docstring for its columns).
    generated : mapping, optional
        Recordings the workflow itself generates, keyed by their data path
        as written in the table (compared after ``os.path.normpath``). Each
        value maps ``n_samples`` (required) and optionally ``n_channels`` and
        ``sampling_rate_hz`` (must agree with the table), ``geometry`` (the
        geometry file the workflow writes) and ``positions_um``. None of a
        generated recording's files is opened here (they may not exist yet or
        be stale): ``n_samples`` comes from this mapping, and positions from
        ``positions_um``, else they are ``'pending'`` when a geometry file is
        named, else the default layout.

    Returns
    -------
    list of RecordingSpec
        In table order.

    Raises
    ------
    RecordingError
        A ``ValueError`` naming the table, the line and recording, the
        parameter, the value and what was expected, for: missing or unknown
        columns, unsafe or duplicate names, unknown format/dtype/order,
        non-numeric or non-positive rate, n_channels < 1, file sizes that are
        not whole samples, empty recordings, geometry files whose rows differ
        from n_channels, and invalid SpikeGLX/Open Ephys metadata. All rows
        are checked; every problem found is reported in one message.
    RecordingFileNotFoundError
        (also a ``FileNotFoundError``) when the only problems are missing
        files: the table, a recording, a geometry or a ground-truth file.
    """
    table = os.fspath(path)
    plans = {os.path.normpath(k): v for k, v in (generated or {}).items()}
    header, rows = _read_table(table)

    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS + OPTIONAL_COLUMNS]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or duplicated:
        raise RecordingError(
            f"recordings table {table!r}: columns={header}: "
            f"expected each of {list(COLUMNS)} once, "
            f"optionally {list(OPTIONAL_COLUMNS)} "
            f"(missing {missing}, unknown {unknown}, duplicated {duplicated})"
        )
    if not rows:
        raise RecordingError(
            f"recordings table {table!r} lists no recording: expected at least one row"
        )

    specs: list[RecordingSpec] = []
    errors: list[RecordingError] = []
    first_line: dict[str, int] = {}
    for line, cells in rows:
        name_column = header.index("name")
        name = cells[name_column] if name_column < len(cells) else ""
        row = _Row(table, line, name)
        if len(cells) != len(header):
            errors.append(
                row.error(
                    "cells",
                    len(cells),
                    f"{len(header)} tab-separated cells as in the header",
                )
            )
            continue
        record = dict(zip(header, cells, strict=True))
        if record["name"] in first_line:
            errors.append(
                row.error(
                    "name",
                    record["name"],
                    "a unique name "
                    f"(already used on line {first_line[record['name']]})",
                )
            )
            continue
        first_line[record["name"]] = line
        try:
            specs.append(_resolve_row(row, record, plans))
        except RecordingError as error:
            errors.append(error)

    if len(errors) == 1:
        raise errors[0]
    if errors:
        kind = (
            RecordingFileNotFoundError
            if all(isinstance(e, FileNotFoundError) for e in errors)
            else RecordingError
        )
        raise kind(
            f"{len(errors)} problems in the recordings table:\n"
            + "\n".join(map(str, errors))
        )
    return specs


def spec_from_dict(values: Mapping[str, Any]) -> RecordingSpec:
    """Rebuild a :class:`RecordingSpec` from its plain-type form (rule params)."""
    fields = {f.name for f in dataclasses.fields(RecordingSpec)}
    kwargs = {k: v for k, v in values.items() if k in fields}
    kwargs["positions_um"] = tuple(tuple(float(c) for c in p) for p in kwargs["positions_um"])
    kwargs["shank_ids"] = tuple(int(i) for i in kwargs.get("shank_ids", ()))
    kwargs["sample_shifts"] = tuple(float(d) for d in kwargs.get("sample_shifts", ()))
    return RecordingSpec(**kwargs)


def open_spec(values: Mapping[str, Any]):
    """Open the recording a rule's ``recording`` param describes."""
    return open_recording(spec_from_dict(values))
