"""Open Ephys binary format: ``structure.oebin`` plus ``continuous.dat`` files.

Layout of one recording folder::

    structure.oebin                      JSON description
    continuous/<folder_name>/continuous.dat   int16, (n_samples, num_channels)

``structure.oebin`` lists the continuous streams under ``"continuous"``, each
with ``folder_name``, ``sample_rate``, ``num_channels`` and ``channels`` (each
with ``bit_volts``, the microvolts per bit for neural channels, and optionally
``units`` and ``channel_name``).

Neural channels are those whose ``units`` is ``uV`` (all channels when no
channel states its units); they must come first in the stream (auxiliary and
ADC channels, stored after them, are skipped as trailing words of each
sample) and share one ``bit_volts``, which becomes ``gain_to_uv``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from .raw import FormatFields

OEBIN_NAME = "structure.oebin"
DATA_NAME = "continuous.dat"


def _locate(path: Path) -> tuple[Path, str | None]:
    """(structure.oebin, folder name of the stream implied by the path, or None)."""
    if path.suffix == ".oebin":
        return path, None
    stream_dir = path.parent if path.name == DATA_NAME else path
    if stream_dir.parent.name == "continuous":
        return stream_dir.parent.parent / OEBIN_NAME, stream_dir.name
    return path / OEBIN_NAME, None


def settings_path(oebin_path: Path) -> Path | None:
    """The Record Node's settings file of the experiment holding ``oebin_path``.

    None when ``oebin_path`` is not in an ``experiment<n>/recording<m>/``
    folder of a Record Node.
    """
    experiment = oebin_path.resolve().parent.parent
    number = experiment.name.removeprefix("experiment")
    if not number.isdigit():
        return None
    name = "settings.xml" if number == "1" else f"settings_{number}.xml"
    return experiment.parent / name


def _probe_fields(oebin_path: Path, folder: str, n_channels: int) -> dict:
    """positions_um, shank_ids and sample_shifts from the Record Node's settings."""
    from .spikeglx import sample_shifts_from_probe, shank_ids_from_probe

    none = {"positions_um": None, "shank_ids": None, "sample_shifts": None}
    settings = settings_path(oebin_path)
    if settings is None or not settings.is_file():
        return none
    import probeinterface

    if not probeinterface.has_neuropixels_probes(settings, stream_name=folder):
        return none
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = probeinterface.read_openephys_neuropixels(
                settings, stream_name=folder
            )
    except Exception as error:  # probeinterface raises bare Exception
        raise ValueError(
            f"Open Ephys settings {str(settings)!r}: probeinterface cannot read the "
            f"probe of stream {folder!r}: {error}"
        ) from None
    if probe is None or probe.get_contact_count() != n_channels:
        return none
    return {
        "positions_um": np.asarray(probe.contact_positions, dtype=np.float64)[:, :2],
        "shank_ids": shank_ids_from_probe(probe),
        "sample_shifts": sample_shifts_from_probe(probe, lf_stream="LFP" in folder),
    }


def _select_stream(streams: list[dict], stream: str | None, oebin: str) -> dict:
    if not streams:
        raise ValueError(f"Open Ephys {oebin!r} lists no continuous stream")
    if stream is None:
        return streams[0]
    for candidate in streams:
        names = {
            candidate.get("folder_name", "").strip("/"),
            candidate.get("stream_name"),
        }
        if stream in names:
            return candidate
    available = [s.get("folder_name", "").strip("/") for s in streams]
    raise ValueError(
        f"Open Ephys {oebin!r}: stream must be one of {available} "
        f"(folder_name or stream_name), got {stream!r}"
    )


def openephys_fields(
    path: str | os.PathLike, *, stream: str | None = None
) -> FormatFields:
    """Describe one continuous stream of an Open Ephys binary recording.

    Parameters
    ----------
    path : str or os.PathLike
        ``structure.oebin``, the folder holding it, or a stream's
        ``continuous/<folder_name>/`` folder or ``continuous.dat`` (which
        selects that stream).
    stream : str, optional
        Stream to use, by ``folder_name`` (trailing ``/`` ignored) or
        ``stream_name``; default: the stream implied by ``path``, else the
        first one.

    Returns
    -------
    FormatFields
        int16, samples order; positions, shank ids and sample shifts of a
        Neuropixels probe described in the Record Node's ``settings.xml``
        (see the module docstring), else None.

    Raises
    ------
    FileNotFoundError
        If ``structure.oebin`` or the stream's ``continuous.dat`` is missing.
    ValueError
        For a malformed ``structure.oebin``, an unknown stream, neural
        channels that are not leading or do not share one ``bit_volts``, or
        a ``settings.xml`` describing a Neuropixels probe probeinterface
        cannot read.
    """
    oebin_path, implied = _locate(Path(path))
    oebin = str(oebin_path)
    if not oebin_path.is_file():
        raise FileNotFoundError(f"Open Ephys description {oebin!r} does not exist")
    try:
        with open(oebin_path, encoding="utf-8") as handle:
            description = json.load(handle)
        streams = description["continuous"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"Open Ephys {oebin!r} must be JSON with a 'continuous' list: {error}"
        ) from None
    chosen = _select_stream(streams, stream if stream is not None else implied, oebin)

    try:
        folder = chosen["folder_name"].strip("/")
        rate = float(chosen["sample_rate"])
        n_file_channels = int(chosen["num_channels"])
        channels = chosen.get("channels", [])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"Open Ephys {oebin!r}: stream needs folder_name, sample_rate and "
            f"num_channels: {error}"
        ) from None
    if len(channels) != n_file_channels:
        raise ValueError(
            f"Open Ephys {oebin!r} stream {folder!r}: lists {len(channels)} channels, "
            f"expected num_channels={n_file_channels}"
        )
    if any("units" in c for c in channels):
        neural = [str(c.get("units", "")).lower() == "uv" for c in channels]
    else:
        neural = [True] * n_file_channels
    n_channels = sum(neural)
    if n_channels == 0 or not all(neural[:n_channels]):
        raise ValueError(
            f"Open Ephys {oebin!r} stream {folder!r}: neural channels (units 'uV') "
            "must be the leading channels, "
            f"got units {[c.get('units') for c in channels]}"
        )
    try:
        gains = {float(c["bit_volts"]) for c in channels[:n_channels]}
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"Open Ephys {oebin!r} stream {folder!r}: every neural channel needs a "
            "numeric bit_volts (microvolts per bit)"
        ) from None
    if len(gains) != 1:
        raise ValueError(
            f"Open Ephys {oebin!r} stream {folder!r}: neural channels have different "
            f"bit_volts {sorted(gains)}; expected one gain per recording"
        )

    data_path = oebin_path.parent / "continuous" / folder / DATA_NAME
    if not data_path.is_file():
        raise FileNotFoundError(
            f"Open Ephys data {str(data_path)!r} (stream {folder!r} of {oebin!r}) "
            "does not exist"
        )
    return FormatFields(
        data_path=str(data_path),
        metadata_path=oebin,
        sampling_rate_hz=rate,
        n_channels=n_channels,
        n_file_channels=n_file_channels,
        dtype="int16",
        order="samples",
        gain_to_uv=gains.pop(),
        offset_bytes=0,
        **_probe_fields(oebin_path, folder, n_channels),
    )
