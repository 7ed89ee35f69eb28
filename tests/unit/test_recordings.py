"""The recordings table: parsing, format metadata, and every validation error."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from shardsort.io.geometry import default_geometry
from shardsort.io.raw import open_recording
from shardsort.recordings import (
    COLUMNS,
    RecordingError,
    RecordingFileNotFoundError,
    load_recordings_table,
)

N_SAMPLES, N_CHANNELS = 100, 4


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Relative paths in tables are relative to the working directory."""
    monkeypatch.chdir(tmp_path)


def write_table(
    rows: list[dict[str, str]], columns=COLUMNS, path="recordings.tsv"
) -> str:
    lines = ["\t".join(columns)]
    lines += ["\t".join(row.get(c, "") for c in columns) for row in rows]
    Path(path).write_text("\n".join(lines) + "\n")
    return path


def binary_row(name="rec", path="rec.bin", **cells) -> dict[str, str]:
    row = {
        "name": name,
        "path": path,
        "format": "binary",
        "sampling_rate_hz": "30000",
        "n_channels": str(N_CHANNELS),
        "dtype": "int16",
    }
    row.update(cells)
    return row


def write_binary(
    path="rec.bin", n_samples=N_SAMPLES, n_channels=N_CHANNELS, dtype="int16", header=0
):
    data = np.arange(n_samples * n_channels, dtype=dtype).reshape(n_samples, n_channels)
    Path(path).write_bytes(b"\0" * header + data.tobytes())
    return data


def load_one(**cells):
    return load_recordings_table(write_table([binary_row(**cells)]))


def test_binary_row_with_defaults():
    data = write_binary()
    (spec,) = load_one()
    assert (spec.name, spec.path, spec.format, spec.dtype, spec.order) == (
        "rec",
        "rec.bin",
        "binary",
        "int16",
        "samples",
    )
    assert (spec.sampling_rate_hz, spec.n_channels, spec.n_samples) == (30000.0, 4, 100)
    assert (spec.gain_to_uv, spec.offset_bytes, spec.n_file_channels) == (1.0, 0, 4)
    assert spec.geometry is None and spec.geometry_source == "default"
    np.testing.assert_array_equal(spec.positions_array, default_geometry(4))
    np.testing.assert_array_equal(open_recording(spec).get_traces(10, 12), data[10:12])


def test_binary_row_with_every_cell(tmp_path):
    data = write_binary("my data.dat", n_samples=50, dtype="uint16", header=16)
    rec_T = np.ascontiguousarray(data.T)
    Path("by channel.dat").write_bytes(rec_T.tobytes())
    np.save("geom.npy", np.arange(8.0).reshape(4, 2))
    Path("gt.npz").write_bytes(b"x")
    rows = [
        binary_row(
            "a",
            "my data.dat",
            dtype="uint16",
            gain_to_uv="0.5",
            offset_bytes="16",
            geometry="geom.npy",
            ground_truth="gt.npz",
        ),
        binary_row(
            "b.2", "by channel.dat", dtype="uint16", order="channels", n_channels="4.0"
        ),
    ]
    a, b = load_recordings_table(write_table(rows, COLUMNS + ("ground_truth",)))
    assert (a.n_samples, a.gain_to_uv, a.offset_bytes, a.ground_truth) == (
        50,
        0.5,
        16,
        "gt.npz",
    )
    assert a.geometry_source == "file" and a.positions_um[3] == (6.0, 7.0)
    assert (b.order, b.n_samples, b.ground_truth) == ("channels", 50, None)
    expected = (data[5:9].astype(np.float64) - 32768).astype(np.float32)
    np.testing.assert_array_equal(open_recording(b).get_traces(5, 9), expected)
    np.testing.assert_array_equal(open_recording(a).get_traces(5, 9), expected * 0.5)


def test_spikeglx_and_openephys_rows_fill_empty_cells():
    Path("sglx").mkdir()
    Path("sglx/r.imec0.ap.bin").write_bytes(np.zeros((10, 3), np.int16).tobytes())
    Path("sglx/r.imec0.ap.meta").write_text(
        "imSampRate=30000\nnSavedChans=3\nsnsApLfSy=2,0,1\nimAiRangeMax=0.6\nimMaxInt=512\n"
        "~imroTbl=(0,2)(0 0 0 500 250 1)(1 0 0 500 250 1)\n"
        "~snsGeomMap=(NP1000,1,0,70)(0:11:0:1)(0:43:0:1)\n"
    )
    Path("oe/continuous/S-1").mkdir(parents=True)
    Path("oe/continuous/S-1/continuous.dat").write_bytes(
        np.zeros((7, 2), np.int16).tobytes()
    )
    channels = [{"bit_volts": 0.195, "units": "uV"}] * 2
    Path("oe/structure.oebin").write_text(
        json.dumps(
            {
                "continuous": [
                    {
                        "folder_name": "S-1/",
                        "sample_rate": 20000.0,
                        "num_channels": 2,
                        "channels": channels,
                    }
                ]
            }
        )
    )
    np.save("two.npy", np.array([[0.0, 0.0], [0.0, 50.0]]))
    rows = [
        {"name": "np1", "path": "sglx/r.imec0.ap.bin", "format": "spikeglx"},
        {
            "name": "np1_geom",
            "path": "sglx/r.imec0.ap.meta",
            "format": "spikeglx",
            "sampling_rate_hz": "30000",
            "n_channels": "2",
            "geometry": "two.npy",
        },
        {"name": "oe", "path": "oe", "format": "openephys"},
    ]
    sglx, sglx_geom, oe = load_recordings_table(write_table(rows))
    assert (sglx.path, sglx.n_channels, sglx.n_file_channels, sglx.n_samples) == (
        "sglx/r.imec0.ap.bin",
        2,
        3,
        10,
    )
    assert (
        sglx.gain_to_uv == pytest.approx(2.34375)
        and sglx.metadata_path == "sglx/r.imec0.ap.meta"
    )
    # probeinterface's NP 1.0 geometry (electrodes 0 and 1, first row) and
    # ADC slot 0 for both channels.
    assert sglx.geometry_source == "spikeglx" and sglx.positions_um == (
        (16.0, 0.0),
        (48.0, 0.0),
    )
    assert (sglx.sample_shifts, sglx.shank_ids) == ((0.0, 0.0), ())
    assert sglx_geom.sample_shifts == (0.0, 0.0)  # a geometry file keeps the shifts
    assert sglx_geom.geometry_source == "file" and sglx_geom.positions_um[1] == (
        0.0,
        50.0,
    )
    assert (oe.path, oe.sampling_rate_hz, oe.n_samples, oe.gain_to_uv) == (
        os.path.join("oe", "continuous", "S-1", "continuous.dat"),
        20000.0,
        7,
        0.195,
    )
    assert oe.geometry_source == "default"
    assert open_recording(sglx).get_traces(0, 10).shape == (10, 2)


def test_loading_and_reading_leave_inputs_unchanged():
    write_binary()
    before = (Path("rec.bin").read_bytes(), os.stat("rec.bin").st_mtime_ns)
    (spec,) = load_one()
    open_recording(spec).get_traces(0, N_SAMPLES)
    assert (Path("rec.bin").read_bytes(), os.stat("rec.bin").st_mtime_ns) == before


# --------------------------------------------------------------------------- errors


def where(name: str = "rec", line: int = 2) -> str:
    """Regex of the context every row error starts with."""
    name_re = re.escape(repr(name))
    return rf"recordings table 'recordings\.tsv' line {line} \(recording {name_re}\)"


TABLE = where()


@pytest.mark.parametrize(
    ("cells", "pattern"),
    [
        (
            {"format": "mda"},
            r"format='mda': expected one of \('binary', 'spikeglx', 'openephys', 'nwb'\)",
        ),
        (
            {"dtype": "int12"},
            r"dtype='int12': expected a numpy integer or float dtype name",
        ),
        (
            {"dtype": "complex64"},
            r"dtype='complex64': expected a numpy integer or float",
        ),
        ({"dtype": ""}, r"dtype=None: expected a numpy integer or float dtype name"),
        ({"order": "F"}, r"order='F': expected one of \('samples', 'channels'\)"),
        ({"sampling_rate_hz": "fast"}, r"sampling_rate_hz='fast': expected a number"),
        (
            {"sampling_rate_hz": "-30000"},
            r"sampling_rate_hz=-30000.0: expected a number > 0",
        ),
        ({"sampling_rate_hz": "0"}, r"sampling_rate_hz=0.0: expected a number > 0"),
        (
            {"sampling_rate_hz": "nan"},
            r"sampling_rate_hz='nan': expected a finite number",
        ),
        ({"n_channels": "0"}, r"n_channels=0: expected an integer >= 1"),
        ({"n_channels": "2.5"}, r"n_channels='2.5': expected an integer"),
        ({"gain_to_uv": "-1"}, r"gain_to_uv=-1.0: expected a number > 0"),
        ({"offset_bytes": "-4"}, r"offset_bytes=-4: expected an integer >= 0"),
        (
            {"offset_bytes": "1000"},
            r"offset_bytes=1000: expected at most the file size, 800 bytes",
        ),
        ({"name": "a/b"}, r"name='a/b': expected a non-empty name of letters, digits"),
        ({"name": ".."}, r"name='\.\.': expected a non-empty name"),
    ],
)
def test_invalid_cells_name_table_row_parameter_and_value(cells, pattern):
    write_binary()
    with pytest.raises(
        RecordingError, match=where(cells.get("name", "rec")) + ": " + pattern
    ):
        load_one(**cells)


def test_size_not_a_whole_number_of_samples_names_both_numbers():
    Path("rec.bin").write_bytes(b"\0" * 802)
    with pytest.raises(
        RecordingError,
        match=TABLE + r": path='rec\.bin': expected a file whose size "
        r"minus offset_bytes \(802 bytes\) is a multiple of n_channels x itemsize = "
        r"4 x 2 = 8 bytes",
    ):
        load_one()


def test_empty_recording():
    Path("rec.bin").write_bytes(b"\0" * 16)
    with pytest.raises(
        RecordingError,
        match=TABLE
        + r": path='rec\.bin': expected a non-empty recording, got 0 samples",
    ):
        load_one(offset_bytes="16")


def test_missing_recording_file_is_a_file_not_found_error():
    with pytest.raises(
        RecordingFileNotFoundError,
        match=TABLE + r": path='rec\.bin': expected an existing recording file",
    ) as info:
        load_one()
    assert isinstance(info.value, FileNotFoundError) and isinstance(
        info.value, ValueError
    )
    with pytest.raises(FileNotFoundError, match=r"recordings table 'nope\.tsv'"):
        load_recordings_table("nope.tsv")


def test_geometry_errors():
    write_binary()
    with pytest.raises(
        RecordingFileNotFoundError,
        match=TABLE + r": geometry='g\.npy': expected an existing geometry file",
    ):
        load_one(geometry="g.npy")
    np.save("g.npy", np.zeros((3, 2)))
    with pytest.raises(
        RecordingError,
        match=TABLE
        + r": geometry='g\.npy': expected a geometry file for 4 channels .*has 3 rows",
    ):
        load_one(geometry="g.npy")


def test_missing_ground_truth_file():
    write_binary()
    table = write_table(
        [binary_row(ground_truth="gt.npz")], COLUMNS + ("ground_truth",)
    )
    with pytest.raises(
        RecordingFileNotFoundError, match=TABLE + r": ground_truth='gt\.npz'"
    ):
        load_recordings_table(table)


def test_duplicate_names():
    write_binary()
    table = write_table([binary_row(), binary_row()])
    with pytest.raises(
        RecordingError,
        match=r"line 3 \(recording 'rec'\): name='rec': "
        r"expected a unique name \(already used on line 2\)",
    ):
        load_recordings_table(table)


def test_unknown_missing_and_duplicated_columns():
    write_binary()
    columns = tuple(c for c in COLUMNS if c != "dtype") + ("channels",)
    with pytest.raises(
        RecordingError, match=r"missing \['dtype'\], unknown \['channels'\]"
    ):
        load_recordings_table(write_table([binary_row()], columns))
    with pytest.raises(RecordingError, match=r"duplicated \['order'\]"):
        load_recordings_table(write_table([binary_row()], COLUMNS + ("order",)))


def test_wrong_cell_count_and_empty_table():
    write_binary()
    Path("t.tsv").write_text("\t".join(COLUMNS) + "\nrec\trec.bin\tbinary\n")
    with pytest.raises(
        RecordingError, match=r"line 2 .*cells=3: expected 10 tab-separated cells"
    ):
        load_recordings_table("t.tsv")
    Path("t.tsv").write_text("# only a comment\n\n" + "\t".join(COLUMNS) + "\n")
    with pytest.raises(RecordingError, match=r"'t\.tsv' lists no recording"):
        load_recordings_table("t.tsv")


def test_format_metadata_conflicts_with_the_table():
    Path("r.ap.bin").write_bytes(np.zeros((10, 3), np.int16).tobytes())
    Path("r.ap.meta").write_text(
        "imSampRate=30000\nnSavedChans=3\nsnsApLfSy=2,0,1\nimChan0apGain=500\n"
    )
    table = write_table(
        [{"name": "rec", "path": "r.ap.bin", "format": "spikeglx", "n_channels": "3"}]
    )
    with pytest.raises(
        RecordingError,
        match=TABLE
        + r": n_channels=3: expected 2 as in the spikeglx metadata 'r\.ap\.meta'",
    ):
        load_recordings_table(table)
    table = write_table([{"name": "rec", "path": "r.ap.meta", "format": "openephys"}])
    with pytest.raises(
        RecordingFileNotFoundError,
        match=TABLE + r": path='r\.ap\.meta': expected an existing openephys recording",
    ):
        load_recordings_table(table)


def test_every_bad_row_is_reported_at_once():
    write_binary()
    table = write_table(
        [
            binary_row("ok"),
            binary_row("x", dtype="int12"),
            binary_row("y", path="gone.bin"),
        ]
    )
    with pytest.raises(RecordingError, match=r"2 problems") as info:
        load_recordings_table(table)
    message = str(info.value)
    assert "line 3 (recording 'x'): dtype='int12'" in message
    assert "line 4 (recording 'y'): path='gone.bin'" in message


# ------------------------------------------------------------- generated recordings


def test_generated_recording_needs_no_file_until_it_is_read():
    generated = {
        "./data/demo.bin": {
            "n_samples": 60,
            "n_channels": 4,
            "sampling_rate_hz": 30000.0,
            "geometry": "data/geom.npy",
        }
    }
    table = write_table([binary_row("demo", "data/demo.bin", geometry="data/geom.npy")])
    (spec,) = load_recordings_table(table, generated=generated)
    assert (spec.n_samples, spec.geometry, spec.geometry_source, spec.positions_um) == (
        60,
        "data/geom.npy",
        "pending",
        (),
    )

    Path("data").mkdir()
    data = write_binary("data/demo.bin", n_samples=60)
    positions = np.arange(8.0).reshape(4, 2)
    np.save("data/geom.npy", positions)
    rec = open_recording(spec)
    np.testing.assert_array_equal(rec.positions_um, positions)
    np.testing.assert_array_equal(rec.get_traces(0, 60), data)

    with pytest.raises(
        RecordingError,
        match=where("demo")
        + r": n_channels=4: expected 8 as the workflow generates it",
    ):
        load_recordings_table(
            table, generated={"data/demo.bin": {"n_samples": 60, "n_channels": 8}}
        )
    (spec,) = load_recordings_table(
        table, generated={"data/demo.bin": {"n_samples": 60, "positions_um": positions}}
    )
    assert spec.geometry_source == "file" and spec.positions_um[1] == (2.0, 3.0)


def test_open_recording_detects_a_changed_file():
    write_binary()
    (spec,) = load_one()
    write_binary(n_samples=N_SAMPLES + 1)
    with pytest.raises(
        ValueError, match="now holds 101 samples, expected n_samples=100"
    ):
        open_recording(spec)
