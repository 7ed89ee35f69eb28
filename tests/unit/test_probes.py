"""Neuropixels probes from real-looking SpikeGLX metas and Open Ephys folders.

The metas carry the key sets SpikeGLX writes for each probe (imDatPrb_*,
~imroTbl in the probe's own format, ~snsChanMap, ~snsShankMap or
~snsGeomMap, imAiRangeMax, imMaxInt, ...). Expected positions, shanks and
sample shifts are written from the probes' datasheets here, not taken from
probeinterface: NP 1.0 multiplexes channel pairs (2k, 2k+1) of each block of
24 channels in ADC slot k of 13; NP 2.0 channel pairs of each block of 32 in
slot k of 16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shardsort.io.openephys import openephys_fields
from shardsort.io.spikeglx import spikeglx_fields

N = 384


def np1_expected_shifts(channels):
    channels = np.asarray(channels)
    return ((channels % 24) // 2) / 13.0


def np2_expected_shifts(channels):
    channels = np.asarray(channels)
    return ((channels % 32) // 2) / 16.0


def chan_map(n_ap: int, n_lf: int) -> str:
    entries = [f"(AP{c};{c}:{c})" for c in range(n_ap)]
    entries += [f"(LF{c};{n_ap + c}:{n_ap + c})" for c in range(n_lf)]
    sync = n_ap + n_lf
    return f"({n_ap},{n_lf},1)" + "".join(entries) + f"(SY0;{sync}:{sync})"


def common_keys(n_saved: int, n_samples: int, rate: str = "30000") -> dict[str, str]:
    return {
        "acqApLfSy": "384,384,1",
        "appVersion": "20201103",
        "fileCreateTime": "2021-03-02T10:11:12",
        "fileName": "D:/run_g0/run_g0_imec0/run_g0_t0.imec0.ap.bin",
        "fileSHA1": "0" * 40,
        "fileTimeSecs": str(n_samples / float(rate)),
        "firstSample": "61",
        "gateMode": "Immediate",
        "imCalibrated": "true",
        "imDatApi": "3.31",
        "imDatBs_fw": "2.0.137",
        "imDatBsc_fw": "3.2.176",
        "imDatBsc_hw": "2.1",
        "imDatBsc_pn": "NP2_QBSC_00",
        "imDatBsc_sn": "421",
        "imDatFx_hw": "1.0",
        "imDatFx_pn": "NP2_FLEX_0",
        "imDatHs_fw": "1.2",
        "imDatHs_pn": "NP2_HS_30",
        "imDatHs_sn": "1234",
        "imDatPrb_port": "1",
        "imDatPrb_slot": "2",
        "imDatPrb_sn": "19011116284",
        "imLEDEnable": "false",
        "imRoFile": "",
        "imSampRate": rate,
        "imTrgRising": "true",
        "imTrgSource": "0",
        "nDataDirs": "1",
        "nSavedChans": str(n_saved),
        "snsSaveChanSubset": "all",
        "syncImInputSlot": "2",
        "syncSourceIdx": "0",
        "syncSourcePeriod": "1",
        "trigMode": "Immediate",
        "typeImEnabled": "1",
        "typeNiEnabled": "0",
        "typeObEnabled": "0",
        "typeThis": "imec",
        "userNotes": "",
    }


def np1_meta(n_samples: int, *, part_number: str | None = "PRB_1_4_0480_1"):
    """NP 1.0 AP stream, bank 0, gain 500/250, old-style ~snsShankMap."""
    meta = common_keys(N + 1, n_samples)
    meta.update(
        {
            "imAiRangeMax": "0.6",
            "imAiRangeMin": "-0.6",
            "imMaxInt": "512",
            "imDatPrb_type": "0",
            "snsApLfSy": "384,0,1",
            "snsSaveChanSubset": "0:383,768",
            "~imroTbl": "(0,384)" + "".join(f"({c} 0 0 500 250 1)" for c in range(N)),
            "~snsChanMap": chan_map(N, 0),
            "~snsShankMap": "(1,2,480)"
            + "".join(f"(0:{c % 2}:{c // 2}:1)" for c in range(N)),
        }
    )
    if part_number is not None:
        meta["imDatPrb_pn"] = part_number
    return meta


def np2_meta(n_samples: int):
    """NP 2.0 single shank (NP2000, imro type 21), electrodes 0-383, ~snsGeomMap."""
    meta = common_keys(N + 1, n_samples)
    meta.update(
        {
            "acqApLfSy": "384,0,1",
            "appVersion": "20230815",
            "imAiRangeMax": "0.5",
            "imAiRangeMin": "-0.5",
            "imMaxInt": "8192",
            "imChan0apGain": "80",
            "imDatPrb_dock": "1",
            "imDatPrb_pn": "NP2000",
            "imDatPrb_type": "21",
            "snsApLfSy": "384,0,1",
            "snsSaveChanSubset": "0:384",
            "~imroTbl": "(21,384)" + "".join(f"({c} 1 0 {c})" for c in range(N)),
            "~snsChanMap": chan_map(N, 0),
            "~snsGeomMap": "(NP2000,1,0,70)"
            + "".join(f"(0:{27 + 32 * (c % 2)}:{15 * (c // 2)}:1)" for c in range(N)),
        }
    )
    return meta


def np2_four_shank_layout():
    """Blocks of 24 channels cycle through the shanks: 96 electrodes per shank."""
    channels = np.arange(N)
    block = channels // 24
    shank = block % 4
    electrode = (block // 4) * 24 + channels % 24
    return shank, electrode


def np2_four_shank_meta(n_samples: int):
    """NP 2.0 four-shank (NP2014, imro type 2013), ~snsGeomMap."""
    shank, electrode = np2_four_shank_layout()
    meta = np2_meta(n_samples)
    meta.update(
        {
            "imDatPrb_pn": "NP2014",
            "imDatPrb_type": "2013",
            "imChan0apGain": "100",
            "imAiRangeMax": "0.62",
            "imAiRangeMin": "-0.62",
            "imMaxInt": "2048",
            "~imroTbl": "(2013,384)"
            + "".join(
                f"({c} {s} 0 0 {e})" for c, (s, e) in enumerate(zip(shank, electrode))
            ),
            "~snsGeomMap": "(NP2014,4,250,70)"
            + "".join(
                f"({s}:{27 + 32 * (e % 2)}:{15 * (e // 2)}:1)"
                for s, e in zip(shank, electrode)
            ),
        }
    )
    return meta


def write_pair(folder: Path, meta: dict[str, str], n_samples: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n_saved = int(meta["nSavedChans"])
    bin_path = folder / "run_g0_t0.imec0.ap.bin"
    bin_path.write_bytes(np.zeros((n_samples, n_saved), np.int16).tobytes())
    meta = {**meta, "fileSizeBytes": str(bin_path.stat().st_size)}
    # SpikeGLX writes plain keys first, then the ~tables.
    keys = sorted(meta, key=lambda k: (k.startswith("~"), k))
    bin_path.with_suffix(".meta").write_text(
        "".join(f"{k}={meta[k]}\n" for k in keys)
    )
    return bin_path


@pytest.mark.parametrize("part_number", ["PRB_1_4_0480_1", "NP1000", None])
def test_np1_positions_gain_and_sample_shifts(tmp_path, part_number):
    fields = spikeglx_fields(write_pair(tmp_path, np1_meta(10, part_number=part_number), 10))
    channels = np.arange(N)
    assert (fields.n_channels, fields.n_file_channels) == (N, N + 1)
    assert fields.gain_to_uv == pytest.approx(0.6 / 512 / 500 * 1e6)
    rows = channels // 2
    np.testing.assert_array_equal(fields.positions_um[:, 1], 20.0 * rows)
    # Staggered: even rows 16 um right of odd rows, columns 32 um apart.
    x = fields.positions_um[:, 0]
    np.testing.assert_array_equal(x - x.min(), 32.0 * (channels % 2) + 16.0 * (rows % 2 == 0))
    assert fields.shank_ids is None
    np.testing.assert_allclose(fields.sample_shifts, np1_expected_shifts(channels))
    assert len(np.unique(fields.sample_shifts)) == 12  # 12 of the 13 slots hold AP


def test_np1_saved_subset_keeps_each_channels_shift(tmp_path):
    meta = np1_meta(10)
    saved = list(range(100, 150)) + list(range(300, 320))
    meta.update(
        {
            "nSavedChans": str(len(saved) + 1),
            "snsApLfSy": f"{len(saved)},0,1",
            "snsSaveChanSubset": "100:149,300:319,768",
        }
    )
    fields = spikeglx_fields(write_pair(tmp_path, meta, 10))
    assert fields.n_channels == len(saved)
    np.testing.assert_allclose(fields.sample_shifts, np1_expected_shifts(saved))
    np.testing.assert_array_equal(fields.positions_um[:, 1], 20.0 * (np.array(saved) // 2))


def test_np2_single_shank(tmp_path):
    fields = spikeglx_fields(write_pair(tmp_path, np2_meta(10), 10))
    channels = np.arange(N)
    assert fields.gain_to_uv == pytest.approx(0.5 / 8192 / 80 * 1e6)
    x = fields.positions_um[:, 0]
    np.testing.assert_array_equal(x - x.min(), 32.0 * (channels % 2))
    np.testing.assert_array_equal(fields.positions_um[:, 1], 15.0 * (channels // 2))
    assert fields.shank_ids is None
    np.testing.assert_allclose(fields.sample_shifts, np2_expected_shifts(channels))
    assert len(np.unique(fields.sample_shifts)) == 16


def test_np2_four_shank(tmp_path):
    fields = spikeglx_fields(write_pair(tmp_path, np2_four_shank_meta(10), 10))
    shank, electrode = np2_four_shank_layout()
    assert fields.gain_to_uv == pytest.approx(0.62 / 2048 / 100 * 1e6)
    np.testing.assert_array_equal(fields.shank_ids, shank)
    x = fields.positions_um[:, 0]
    np.testing.assert_array_equal(x - x.min(), 250.0 * shank + 32.0 * (electrode % 2))
    np.testing.assert_array_equal(fields.positions_um[:, 1], 15.0 * (electrode // 2))
    np.testing.assert_allclose(fields.sample_shifts, np2_expected_shifts(np.arange(N)))


def test_unknown_part_number_falls_back_to_the_geom_map_without_shifts(tmp_path):
    meta = np2_four_shank_meta(10)
    meta["imDatPrb_pn"] = "NP9999"
    fields = spikeglx_fields(write_pair(tmp_path / "a", meta, 10))
    shank, electrode = np2_four_shank_layout()
    np.testing.assert_array_equal(fields.shank_ids, shank)
    np.testing.assert_array_equal(
        fields.positions_um[:, 0], 250.0 * shank + 27 + 32.0 * (electrode % 2)
    )
    assert fields.sample_shifts is None

    meta.pop("~snsGeomMap")
    with pytest.raises(
        ValueError,
        match=r"probeinterface cannot describe probe imDatPrb_pn='NP9999'.*"
        r"no ~snsGeomMap.*geometry column",
    ):
        spikeglx_fields(write_pair(tmp_path / "b", meta, 10))
    # A geometry file in the table replaces the probe's: no error then.
    assert spikeglx_fields(tmp_path / "b" / "run_g0_t0.imec0.ap.bin", with_geometry=False).positions_um is None


# ----------------------------------------------------------------------- Open Ephys


def settings_xml(part_number: str, electrodes, shanks=None) -> str:
    """Open Ephys 0.6 settings: Neuropix-PXI plugin 0.4 (NP_PROBE in EDITOR)."""
    channels = " ".join(
        f'CH{c}="0"' if shanks is None else f'CH{c}="0:{shanks[c]}"'
        for c in range(len(electrodes))
    )
    pitch = 250.0 if shanks is not None else 0.0
    xs, ys = [], []
    for c, e in enumerate(electrodes):
        shank = 0 if shanks is None else shanks[c]
        if part_number.startswith("NP1") or part_number.startswith("PRB_1"):
            row = e // 2
            x = 11 + 32 * (e % 2) + (16 if row % 2 == 0 else 0)
            y = 20 * row
        else:
            x = 27 + 32 * (e % 2) + pitch * shank
            y = 15 * (e // 2)
        xs.append(f'CH{c}="{x:g}"')
        ys.append(f'CH{c}="{y:g}"')
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<SETTINGS>
  <INFO>
    <VERSION>0.6.4</VERSION>
    <PLUGIN_API_VERSION>8</PLUGIN_API_VERSION>
    <DATE>2 Mar 2023 10:11:12</DATE>
    <OS>Windows 10</OS>
    <MACHINE name="RIG">RIG</MACHINE>
  </INFO>
  <SIGNALCHAIN>
    <PROCESSOR name="Sources/Neuropix-PXI" insertionPoint="1" pluginName="Neuropix-PXI"
               type="2" index="0" libraryName="Neuropix-PXI" libraryVersion="0.4.0"
               processorType="2" nodeId="100">
      <GLOBAL_PARAMETERS/>
      <STREAM name="ProbeA-AP" description="Neuropixels AP band data stream"
              sample_rate="30000.0" channel_count="384"/>
      <STREAM name="ProbeA-LFP" description="Neuropixels LFP band data stream"
              sample_rate="2500.0" channel_count="384"/>
      <EDITOR isCollapsed="0" displayName="Neuropix-PXI" activeStream="0">
        <NP_PROBE slot="2" port="1" dock="0" probe_serial_number="19011116284"
                  probe_part_number="{part_number}" probe_name="Neuropixels"
                  ZoomHeight="50" ZoomOffset="0" isEnabled="1"
                  apGainValue="500x" lfpGainValue="250x" referenceChannel="Ext"
                  filterCut="ON">
          <CHANNELS {channels}/>
          <ELECTRODE_XPOS {" ".join(xs)}/>
          <ELECTRODE_YPOS {" ".join(ys)}/>
        </NP_PROBE>
      </EDITOR>
    </PROCESSOR>
    <PROCESSOR name="Filters/Record Node" insertionPoint="1" pluginName="Record Node"
               type="0" index="3" libraryName="" libraryVersion="" processorType="8"
               nodeId="101">
      <GLOBAL_PARAMETERS/>
      <STREAM name="ProbeA-AP" sample_rate="30000.0" channel_count="384"/>
      <EDITOR isCollapsed="0" displayName="Record Node"/>
    </PROCESSOR>
  </SIGNALCHAIN>
</SETTINGS>
"""


def write_openephys_session(root: Path, settings: str, n_samples: int = 10) -> Path:
    node = root / "Record Node 101"
    recording = node / "experiment1" / "recording1"
    folder = "Neuropix-PXI-100.ProbeA-AP"
    (recording / "continuous" / folder).mkdir(parents=True)
    (recording / "continuous" / folder / "continuous.dat").write_bytes(
        np.zeros((n_samples, N), np.int16).tobytes()
    )
    channels = [
        {"channel_name": f"CH{c + 1}", "bit_volts": 0.195, "units": "uV"}
        for c in range(N)
    ]
    oebin = {
        "GUI version": "0.6.4",
        "continuous": [
            {
                "folder_name": folder + "/",
                "sample_rate": 30000.0,
                "source_processor_name": "Neuropix-PXI",
                "source_processor_id": 100,
                "stream_name": "ProbeA-AP",
                "recorded_processor": "Record Node",
                "recorded_processor_id": 101,
                "num_channels": N,
                "channels": channels,
            }
        ],
        "events": [],
        "spikes": [],
    }
    (recording / "structure.oebin").write_text(json.dumps(oebin, indent=2))
    (node / "settings.xml").write_text(settings)
    return recording


def test_openephys_np1_probe_from_settings(tmp_path):
    recording = write_openephys_session(tmp_path, settings_xml("NP1000", list(range(N))))
    fields = openephys_fields(recording)
    channels = np.arange(N)
    assert (fields.n_channels, fields.gain_to_uv) == (N, 0.195)
    np.testing.assert_array_equal(fields.positions_um[:, 1], 20.0 * (channels // 2))
    assert fields.shank_ids is None
    np.testing.assert_allclose(fields.sample_shifts, np1_expected_shifts(channels))


def test_openephys_np2_four_shank_probe_from_settings(tmp_path):
    shank, electrode = np2_four_shank_layout()
    recording = write_openephys_session(
        tmp_path, settings_xml("NP2014", electrode.tolist(), shank.tolist())
    )
    fields = openephys_fields(recording / "structure.oebin")
    np.testing.assert_array_equal(fields.shank_ids, shank)
    x = fields.positions_um[:, 0]
    np.testing.assert_array_equal(x - x.min(), 250.0 * shank + 32.0 * (electrode % 2))
    np.testing.assert_allclose(fields.sample_shifts, np2_expected_shifts(np.arange(N)))


def test_openephys_without_settings_has_no_probe(tmp_path):
    recording = write_openephys_session(tmp_path, settings_xml("NP1000", list(range(N))))
    (recording.parent.parent / "settings.xml").unlink()
    fields = openephys_fields(recording)
    assert (fields.positions_um, fields.shank_ids, fields.sample_shifts) == (None,) * 3


# ------------------------------------------------------------- recordings table


def test_four_shank_spec_separates_shanks_and_carries_shifts(tmp_path, monkeypatch):
    from shardsort.io.geometry import SHANK_SEPARATION_UM
    from shardsort.recordings import COLUMNS, load_recordings_table, spec_from_dict
    from shardsort.workflow import Context

    monkeypatch.chdir(tmp_path)
    write_pair(Path("np2"), np2_four_shank_meta(10), 10)
    write_pair(Path("np1"), np1_meta(10), 10)
    rows = [
        ["np2", "np2/run_g0_t0.imec0.ap.bin", "spikeglx"],
        ["np1", "np1/run_g0_t0.imec0.ap.meta", "spikeglx"],
    ]
    Path("t.tsv").write_text(
        "\t".join(COLUMNS)
        + "\n"
        + "".join("\t".join(r + [""] * (len(COLUMNS) - 3)) + "\n" for r in rows)
    )
    np2, np1 = load_recordings_table("t.tsv")
    shank, electrode = np2_four_shank_layout()
    assert np2.shank_ids == tuple(shank.tolist())
    positions = np2.positions_array
    # Shanks 250 um apart on the probe, SHANK_SEPARATION_UM more in the sort.
    np.testing.assert_array_equal(
        positions[:, 0] - positions[:, 0].min(),
        (250.0 + SHANK_SEPARATION_UM) * shank + 32.0 * (electrode % 2),
    )
    between = np.abs(positions[:, None, 0] - positions[None, :, 0])
    assert between[shank[:, None] != shank[None, :]].min() > SHANK_SEPARATION_UM
    np.testing.assert_allclose(np2.sample_shifts, np2_expected_shifts(np.arange(N)))
    assert np1.shank_ids == () and len(np1.sample_shifts) == N

    # Rule params (plain types) rebuild the same spec.
    context = Context(recordings={"np2": np2}, plans={})
    assert spec_from_dict(context.spec_dict("np2")) == np2


# ------------------------------------------------------ preprocess.phase_shift


def test_phase_shift_setting_decides_shifts_and_filter_margin(tmp_path, monkeypatch):
    import yaml

    from shardsort.phase import PHASE_HALF_WIDTH
    from shardsort.recordings import COLUMNS
    from shardsort.workflow import ConfigError, load_context, phase_shifts

    monkeypatch.chdir(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    assert config["preprocess"]["phase_shift"] == "auto"
    write_pair(Path("np1"), np1_meta(30000), 30000)
    Path("plain.bin").write_bytes(np.zeros((30000, 4), np.int16).tobytes())
    rows = [
        ["np1", "np1/run_g0_t0.imec0.ap.bin", "spikeglx"] + [""] * 7,
        ["plain", "plain.bin", "binary", "30000", "4", "int16"] + [""] * 4,
    ]
    Path("t.tsv").write_text(
        "\t".join(COLUMNS) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    )
    config["recordings"] = "t.tsv"
    context = load_context(config)
    np1, plain = context.recordings["np1"], context.recordings["plain"]
    assert phase_shifts(np1, config) == list(np1_expected_shifts(np.arange(N)))
    assert phase_shifts(plain, config) is None
    base = context.plans["plain"].margins["filter"]
    assert context.plans["np1"].margins["filter"] == base + PHASE_HALF_WIDTH

    config["preprocess"]["phase_shift"] = False
    assert phase_shifts(np1, config) is None
    assert load_context(config).plans["np1"].margins["filter"] == base

    config["preprocess"]["phase_shift"] = True
    assert phase_shifts(np1, config) is not None
    with pytest.raises(
        ConfigError, match=r"phase_shift \(true\).*recording 'plain' \(format 'binary'\)"
    ):
        load_context(config)
