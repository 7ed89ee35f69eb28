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

Geometry, shanks and sample shifts
----------------------------------
From probeinterface (:func:`probe_info`): ``read_spikeglx`` builds the probe
from its part number (``imDatPrb_pn``) and ``~imroTbl`` (which electrodes,
which shank), sliced to the saved channels; metas older than the part number
(SpikeGLX before 2019) are read from ``~imroTbl`` alone (``read_imro``, its
header gives the probe type). Positions are probeinterface's (x offset by
the shank pitch on multi-shank probes), shank ids per channel, and the ADC
sampling order gives each channel's sample shift (:mod:`shardsort.phase`).
When probeinterface does not know the probe, ``~snsGeomMap`` (SpikeGLX >=
2023: ``(shank:x_um:z_um:used)`` per channel) gives positions and shanks,
without sample shifts; without it, the error asks for a geometry file.
nidq and obx streams carry no geometry.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

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


class ProbeInfo(NamedTuple):
    """What the probe tells about the neural channels of a stream."""

    positions_um: np.ndarray  # (n_channels, 2), x offset by shank pitch
    shank_ids: np.ndarray | None  # (n_channels,) int, None for one shank
    sample_shifts: np.ndarray | None  # (n_channels,) sample periods, or None
    source: str  # 'probeinterface' or 'snsGeomMap'


def sample_shifts_from_probe(
    probe, *, lf_stream: bool = False
) -> npt.NDArray[np.float64] | None:
    """Per-contact sample shifts of a probeinterface Neuropixels probe.

    ``adc_sample_order / n_cycles`` sample periods, ``n_cycles`` being the
    conversion slots of one ADC per AP sample: ``num_channels_per_adc * (1
    + lf_rate / ap_rate)`` (13 for NP 1.0, whose ADCs spend one slot on the
    LFP band; 16 for NP 2.0), the definition of SpikeInterface's
    ``inter_sample_shift``. For an LF stream the shifts are in LF sample
    periods (``lf_rate / ap_rate`` times smaller). None when the probe does
    not carry its ADC sampling order.
    """
    order = probe.contact_annotations.get("adc_sample_order")
    per_adc = probe.annotations.get("num_channels_per_adc")
    ap_rate = probe.annotations.get("ap_sample_frequency_hz")
    lf_rate = probe.annotations.get("lf_sample_frequency_hz")
    if order is None or per_adc is None or not ap_rate or lf_rate is None:
        return None
    n_cycles = int(per_adc * (1 + lf_rate / ap_rate))
    shifts = np.asarray(order, dtype=np.float64) / n_cycles
    if lf_stream:
        shifts *= lf_rate / ap_rate
    return shifts


def shank_ids_from_probe(probe) -> npt.NDArray[np.int64] | None:
    """Integer shank id per contact, or None for a single-shank probe."""
    if probe.shank_ids is None:
        return None
    ids = np.asarray(probe.shank_ids)
    if ids.size == 0 or np.any((ids == "") | (ids == None)):  # noqa: E711
        return None
    ids = ids.astype(np.int64)
    return ids if np.unique(ids).size > 1 else None


def _read_probe(meta: dict[str, str], meta_path: str):
    """probeinterface's probe for the stream (``read_spikeglx``).

    Metas without ``imDatPrb_pn`` (SpikeGLX before 2019) are read through
    ``read_imro`` from their ``~imroTbl`` (its header names the probe type),
    keeping the saved channels (``snsSaveChanSubset``).
    """
    import probeinterface

    if meta.get("imDatPrb_pn") or meta.get("imProbeOpt") is not None:
        return probeinterface.read_spikeglx(meta_path)
    with tempfile.TemporaryDirectory() as folder:
        imro = Path(folder) / "probe.imro"
        imro.write_text(meta["imroTbl"], encoding="utf-8")
        probe = probeinterface.read_imro(imro)
    subset = meta.get("snsSaveChanSubset", "all")
    if subset not in ("all", ""):
        saved = np.array(_parse_channel_list(subset))
        saved = saved[saved < probe.get_contact_count()]
        if saved.size != probe.get_contact_count():
            probe = probe.get_slice(saved)
    return probe


def _geom_map(meta: dict[str, str], n_channels: int, meta_path: str) -> ProbeInfo:
    """Positions and shanks from ``~snsGeomMap`` (``parse_spikeglx_snsGeomMap``)."""
    import probeinterface

    try:
        _, _, pitch, shanks, x, y, _ = probeinterface.parse_spikeglx_snsGeomMap(meta)
    except (ValueError, IndexError) as error:
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: ~snsGeomMap must be a header "
            f"(part,n_shanks,shank_sep_um,shank_width_um) then one "
            f"(shank:x_um:z_um:used) entry per channel: {error}"
        ) from None
    if x.size != n_channels:
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: ~snsGeomMap has {x.size} channel entries, "
            f"expected one (shank:x:z:used) entry per neural channel, "
            f"n_channels={n_channels}"
        )
    ids = shanks if np.unique(shanks).size > 1 else None
    return ProbeInfo(np.column_stack([shanks * pitch + x, y]), ids, None, "snsGeomMap")


def probe_info(
    meta: dict[str, str], meta_path: str, counts: list[int]
) -> ProbeInfo | None:
    """Geometry, shanks and sample shifts of an imec stream's neural channels.

    From probeinterface (every Neuropixels part number it knows, from
    ``~imroTbl`` and ``imDatPrb_pn``); when probeinterface cannot describe
    the probe, from ``~snsGeomMap`` (no sample shifts then). None for nidq /
    obx streams and imec metas with neither ``~imroTbl`` nor ``~snsGeomMap``.

    Raises
    ------
    ValueError
        When probeinterface fails and the meta has no ``~snsGeomMap``, or the
        probe's channels do not match the stream's neural channels.
    """
    n_channels = sum(counts[:2])
    if "imroTbl" not in meta:
        return _geom_map(meta, n_channels, meta_path) if "snsGeomMap" in meta else None
    try:
        probe = _read_probe(meta, meta_path)
        problem = None
    except (KeyError, ValueError, AssertionError, IndexError) as error:
        probe, problem = None, f"{type(error).__name__}: {error}"
    if probe is not None and probe.get_contact_count() != max(counts[0], counts[1]):
        probe, problem = None, (
            f"the probe has {probe.get_contact_count()} saved channels, the stream "
            f"snsApLfSy={counts[0]},{counts[1]} neural channels"
        )
    if probe is None or 0 not in counts[:2]:
        if "snsGeomMap" in meta:
            return _geom_map(meta, n_channels, meta_path)
        raise ValueError(
            f"SpikeGLX meta {meta_path!r}: probeinterface cannot describe probe "
            f"imDatPrb_pn={meta.get('imDatPrb_pn')!r} "
            f"imDatPrb_type={meta.get('imDatPrb_type')!r} "
            f"({problem or 'AP and LF channels in one stream'}) and the meta has no "
            "~snsGeomMap; expected a Neuropixels probe probeinterface knows, or give "
            "the channel positions in the recordings table's geometry column"
        )
    return ProbeInfo(
        np.asarray(probe.contact_positions, dtype=np.float64)[:, :2],
        shank_ids_from_probe(probe),
        sample_shifts_from_probe(probe, lf_stream=counts[0] == 0),
        "probeinterface",
    )


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
        ``positions_um`` and ``shank_ids`` (None for a single shank) as
        :func:`probe_info` gives them, None for nidq / obx streams or when
        ``with_geometry`` is False; ``sample_shifts`` (sample periods per
        channel) when probeinterface knows the probe's ADC sampling order.

    Raises
    ------
    FileNotFoundError
        If the ``.meta`` or the ``.bin`` is missing.
    ValueError
        For missing or inconsistent tags, a ``.bin`` whose size differs from
        ``fileSizeBytes``, channels with different gains, or (with
        ``with_geometry``) a probe neither probeinterface nor ``~snsGeomMap``
        describes.
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
    info = None
    if stream == "imec":
        try:
            info = probe_info(meta, meta_path, counts)
        except ValueError:
            if with_geometry:
                raise
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
        positions_um=info.positions_um if info and with_geometry else None,
        shank_ids=info.shank_ids if info and with_geometry else None,
        sample_shifts=info.sample_shifts if info else None,
    )
