"""SpikeGLX recordings: a ``.bin`` of interleaved int16 samples plus a ``.meta``.

The ``.meta`` file is ``key=value`` lines (table keys start with ``~``, which
:func:`read_meta` drops). :func:`spikeglx_fields` turns it into the fields of a
:class:`~shardsort.recordings.RecordingSpec` for the paired ``.bin``.

Channels
--------
Every sample stores ``nSavedChans`` int16 words in the order given by the
stream's count tag, which lists the channel types in storage order:

* imec (``snsApLfSy=AP,LF,SY``): neural channels are the AP and LF channels;
  the SY (sync) word is stored last and is excluded.
* nidq (``snsMnMaXaDw=MN,MA,XA,DW``): neural channels are the analog MN, MA
  and XA channels; the digital words are stored last and are excluded.
* obx (``snsXaDwSy=XA,DW,SY``): neural channels are the XA channels.

So the neural channels are always the first ``n_channels`` words of each
sample, and ``n_file_channels = nSavedChans`` is the stride of the file.

Gain
----
``gain_to_uv = AiRangeMax / MaxInt / gain * 1e6`` (SpikeGLX metadata guide).
For imec streams ``imAiRangeMax`` (default 0.6 V) and ``imMaxInt`` (default
512, the NP 1.0 / 3A value when the key is absent) are used, and the amplifier
gain is, per saved channel, the AP or LF gain column of ``~imroTbl`` for probes
with selectable gain (NP 1.0 family: six values per entry; 3A: three-value
header), else ``imChan0apGain`` / ``imChan0lfGain`` when present, else 80 (the
fixed gain of NP 2.0 probes, whose entries have four or five values). nidq
uses ``niAiRangeMax``/``niMaxInt`` (default 32768) with ``niMNGain``,
``niMAGain`` and 1 for XA; obx uses ``obAiRangeMax``/``obMaxInt`` and gain 1.
A recording has one gain: channels with different gains raise ``ValueError``.

Geometry
--------
``~snsGeomMap`` (SpikeGLX >= 2023): header ``(part, n_shanks, shank_sep_um,
shank_width_um)`` then one ``(shank:x_um:z_um:used)`` entry per saved neural
channel; position = ``(shank * shank_sep_um + x_um, z_um)``.
``~snsShankMap`` (older files): header ``(n_shanks, n_cols, n_rows)`` then
``(shank:col:row:used)`` entries. Grid indices become micrometres with the
electrode pitch of the probe family: NP 2.0 (``imDatPrb_type`` 21, 24 or
2000-2999) 32 um between columns, 15 um between rows, 250 um between shanks,
columns at x = 27 + 32 * col; everything else (NP 1.0, 3A, nidq) 32 um between
columns and 20 um between rows with the NP 1.0 stagger (x = 27 + 32 * col on
even rows, 11 + 32 * col on odd rows). These tables are approximations for
files that predate ``~snsGeomMap``; relative distances are what matters to
the sorter.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .raw import FormatFields

#: Count tag and number of leading (neural) types, per stream type.
_COUNT_TAGS = {
    "imec": ("snsApLfSy", 2),
    "nidq": ("snsMnMaXaDw", 3),
    "obx": ("snsXaDwSy", 1),
}
_RATE_TAGS = {"imec": "imSampRate", "nidq": "niSampRate", "obx": "obSampRate"}
#: Fixed amplifier gain of NP 2.0 probes.
NP2_GAIN = 80.0


def read_meta(path: str | os.PathLike) -> dict[str, str]:
    """Parse a SpikeGLX ``.meta`` file into a dict of strings (``~`` dropped).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a non-empty line has no ``=``.
    """
    meta = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            if "=" not in text:
                raise ValueError(
                    f"SpikeGLX meta {os.fspath(path)!r} line {number}: expected "
                    f"'key=value', got {text!r}"
                )
            key, value = text.split("=", 1)
            meta[key.strip().lstrip("~")] = value.strip()
    return meta


def _paths(path: str | os.PathLike) -> tuple[str, str]:
    """(meta, bin) paths from either of the pair."""
    path = Path(path)
    if path.suffix not in (".bin", ".meta"):
        raise ValueError(
            f"SpikeGLX path {str(path)!r} must end in '.bin' or '.meta', "
            f"got {path.suffix!r}"
        )
    return str(path.with_suffix(".meta")), str(path.with_suffix(".bin"))


def _require(meta: dict[str, str], key: str, meta_path: str) -> str:
    if key not in meta or meta[key] == "":
        raise ValueError(f"SpikeGLX meta {meta_path!r} lacks the required key {key!r}")
    return meta[key]


def _number(
    meta: dict[str, str], key: str, meta_path: str, default: float | None = None
) -> float:
    if default is not None and meta.get(key, "") == "":
        return default
    text = _require(meta, key, meta_path)
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: {key} must be a number, got {text!r}"
        ) from None


def _groups(value: str) -> list[str]:
    """Contents of the ``(...)`` groups of a table value."""
    return re.findall(r"\(([^)]*)\)", value)


def _stream_type(meta: dict[str, str], meta_path: str) -> str:
    stream = meta.get("typeThis")
    if stream is None:
        stream = next((s for s, tag in _RATE_TAGS.items() if tag in meta), None)
    if stream not in _RATE_TAGS:
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: stream type must be one of "
            f"{sorted(_RATE_TAGS)} (typeThis, or imSampRate/niSampRate/obSampRate), "
            f"got {stream!r}"
        )
    return stream


def _parse_channel_list(text: str) -> list[int]:
    """Expand a printer-like list such as ``0:3,7`` into ``[0, 1, 2, 3, 7]``."""
    channels: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition(":")
        channels.extend(range(int(lo), int(hi or lo) + 1))
    return channels


def _imec_gains(meta: dict[str, str], counts: list[int], meta_path: str) -> np.ndarray:
    """Amplifier gain of each saved neural channel of an imec stream."""
    n_ap, n_lf = counts[0], counts[1]
    bands = ["ap"] * n_ap + ["lf"] * n_lf
    groups = _groups(meta.get("imroTbl", ""))
    header = groups[0].split(",") if groups else []
    entries = [g.split() for g in groups[1:]]
    selectable = entries and (len(header) == 3 or len(entries[0]) == 6)
    if not selectable:
        fixed = []
        for band in bands:
            key = f"imChan0{band}Gain"
            if key in meta:
                fixed.append(_number(meta, key, meta_path))
            elif entries and len(entries[0]) in (4, 5):
                fixed.append(NP2_GAIN)
            else:
                raise ValueError(
                    f"SpikeGLX meta {meta_path!r}: cannot determine the amplifier gain "
                    f"(no selectable-gain ~imroTbl, no {key!r})"
                )
        return np.array(fixed, dtype=np.float64)

    subset = meta.get("snsSaveChanSubset", "all")
    saved = (
        list(range(n_ap + n_lf))
        if subset in ("all", "")
        else _parse_channel_list(subset)
    )
    gains = []
    for channel, band in zip(saved, bands, strict=False):  # SY ids follow
        entry = entries[channel % len(entries)]
        gains.append(float(entry[3] if band == "ap" else entry[4]))
    return np.array(gains, dtype=np.float64)


def _gain_to_uv(
    meta: dict[str, str], stream: str, counts: list[int], meta_path: str
) -> float:
    if stream == "imec":
        vmax = _number(meta, "imAiRangeMax", meta_path, default=0.6)
        imax = _number(meta, "imMaxInt", meta_path, default=512.0)
        gains = _imec_gains(meta, counts, meta_path)
    elif stream == "nidq":
        vmax = _number(meta, "niAiRangeMax", meta_path)
        imax = _number(meta, "niMaxInt", meta_path, default=32768.0)
        mn, ma, xa = counts[:3]
        gains = np.concatenate(
            [
                np.full(mn, _number(meta, "niMNGain", meta_path, default=1.0)),
                np.full(ma, _number(meta, "niMAGain", meta_path, default=1.0)),
                np.ones(xa),
            ]
        )
    else:
        vmax = _number(meta, "obAiRangeMax", meta_path)
        imax = _number(meta, "obMaxInt", meta_path, default=32768.0)
        gains = np.ones(counts[0])
    distinct = np.unique(gains)
    if distinct.size != 1:
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: neural channels have different amplifier "
            f"gains {distinct.tolist()}; expected one gain per recording"
        )
    if distinct[0] <= 0:
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: amplifier gain must be > 0, "
            f"got {distinct[0]}"
        )
    return vmax / imax / float(distinct[0]) * 1e6


def _entries(
    groups: list[str], meta_path: str, tag: str, n_channels: int
) -> np.ndarray:
    entries = np.array(
        [[float(v) for v in g.split(":")] for g in groups], dtype=np.float64
    )
    if entries.shape != (n_channels, 4):
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: ~{tag} has {len(groups)} channel entries, "
            f"expected one (a:b:c:d) entry per neural channel, n_channels={n_channels}"
        )
    return entries


def _positions(
    meta: dict[str, str], n_channels: int, meta_path: str
) -> np.ndarray | None:
    if "snsGeomMap" in meta:
        groups = _groups(meta["snsGeomMap"])
        header = groups[0].split(",")
        shank_sep = float(header[2]) if len(header) > 2 else 0.0
        entries = _entries(groups[1:], meta_path, "snsGeomMap", n_channels)
        return np.column_stack(
            [entries[:, 0] * shank_sep + entries[:, 1], entries[:, 2]]
        )
    if "snsShankMap" in meta:
        groups = _groups(meta["snsShankMap"])
        entries = _entries(groups[1:], meta_path, "snsShankMap", n_channels)
        probe_type = int(float(meta.get("imDatPrb_type", "0") or 0))
        if probe_type in (21, 24) or 2000 <= probe_type < 3000:
            offsets, x_pitch, y_pitch = (27.0, 27.0), 32.0, 15.0
        else:
            offsets, x_pitch, y_pitch = (27.0, 11.0), 32.0, 20.0
        shank, col, row = entries[:, 0], entries[:, 1], entries[:, 2]
        x = (
            250.0 * shank
            + np.where(row % 2 == 0, offsets[0], offsets[1])
            + x_pitch * col
        )
        return np.column_stack([x, y_pitch * row])
    return None


def spikeglx_fields(
    path: str | os.PathLike, *, with_geometry: bool = True
) -> FormatFields:
    """Read a SpikeGLX ``.meta`` and describe its ``.bin`` (int16, samples order).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.bin`` or the ``.meta`` of the pair (the other is found by
        swapping the suffix).
    with_geometry : bool, default True
        Parse the channel positions (skip when a geometry file overrides them).

    Returns
    -------
    FormatFields
        ``positions_um`` is None when the meta has neither ``~snsGeomMap``
        nor ``~snsShankMap`` (or ``with_geometry`` is False).

    Raises
    ------
    FileNotFoundError
        If the ``.meta`` or the ``.bin`` is missing.
    ValueError
        For missing or inconsistent tags, a ``.bin`` whose size differs from
        ``fileSizeBytes``, or channels with different gains.
    """
    meta_path, bin_path = _paths(path)
    meta = read_meta(meta_path)
    stream = _stream_type(meta, meta_path)
    rate = _number(meta, _RATE_TAGS[stream], meta_path)
    n_saved = int(_number(meta, "nSavedChans", meta_path))
    count_tag, n_neural_types = _COUNT_TAGS[stream]
    try:
        counts = [int(v) for v in _require(meta, count_tag, meta_path).split(",")]
    except ValueError:
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: {count_tag} must be comma-separated "
            f"integers, got {meta[count_tag]!r}"
        ) from None
    if sum(counts) != n_saved:
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: {count_tag}={meta[count_tag]} sums to "
            f"{sum(counts)}, expected nSavedChans={n_saved}"
        )
    n_channels = sum(counts[:n_neural_types])
    if n_channels < 1:
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: {count_tag}={meta[count_tag]} leaves no "
            "neural channel; expected at least one"
        )

    if not os.path.isfile(bin_path):
        raise FileNotFoundError(
            f"SpikeGLX binary {bin_path!r} (paired with {meta_path!r}) does not exist"
        )
    size = os.path.getsize(bin_path)
    if meta.get("fileSizeBytes", "") != "" and int(meta["fileSizeBytes"]) != size:
        raise ValueError(
            f"SpikeGLX binary {bin_path!r} holds {size} bytes but its meta says "
            f"fileSizeBytes={meta['fileSizeBytes']} (truncated or modified file?)"
        )
    return FormatFields(
        data_path=bin_path,
        metadata_path=meta_path,
        sampling_rate_hz=rate,
        n_channels=n_channels,
        n_file_channels=n_saved,
        dtype="int16",
        order="samples",
        gain_to_uv=_gain_to_uv(meta, stream, counts, meta_path),
        offset_bytes=0,
        positions_um=_positions(meta, n_channels, meta_path) if with_geometry else None,
    )
