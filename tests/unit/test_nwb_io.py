"""NWB input: the ElectricalSeries of a file written with pynwb, read lazily."""

from __future__ import annotations

import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from shardsort.io.nwb import NwbError, NwbRecording, nwb_fields
from shardsort.io.raw import open_recording
from shardsort.recordings import RecordingError, load_recordings_table


def write_nwb(
    path: Path,
    data: np.ndarray,
    *,
    rate_hz: float | None = 30000.0,
    timestamps: np.ndarray | None = None,
    conversion: float = 1.0,
    offset: float = 0.0,
    positions_um: np.ndarray | None = None,
    position_columns: tuple[str, str] = ("rel_x", "rel_y"),
    channel_conversion: np.ndarray | None = None,
    series_names: tuple[str, ...] = ("ElectricalSeries",),
) -> Path:
    """An NWB file whose acquisition holds ``data`` as each named ElectricalSeries."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    nwb = NWBFile(
        session_description="shardsort test",
        identifier=path.stem,
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    )
    device = nwb.create_device("probe")
    group = nwb.create_electrode_group(
        "shank0", description="test shank", location="cortex", device=device
    )
    n_channels = data.shape[1]
    columns = {}
    if positions_um is not None:
        for name in position_columns:
            if name not in ("x", "y"):
                nwb.add_electrode_column(name, f"{name} position (um)")
        columns = {
            position_columns[0]: positions_um[:, 0],
            position_columns[1]: positions_um[:, 1],
        }
    for i in range(n_channels):
        nwb.add_electrode(
            group=group,
            location="cortex",
            **{k: float(v[i]) for k, v in columns.items()},
        )
    region = nwb.create_electrode_table_region(list(range(n_channels)), "all")
    timing = {"rate": rate_hz} if timestamps is None else {"timestamps": timestamps}
    for name in series_names:
        nwb.add_acquisition(
            ElectricalSeries(
                name=name,
                data=data,
                electrodes=region,
                conversion=conversion,
                offset=offset,
                channel_conversion=channel_conversion,
                **timing,
            )
        )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def make_data(dtype: str, n_samples: int = 300, n_channels: int = 7) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(-2000, 2000, size=(n_samples, n_channels)).astype(dtype)


POSITIONS = np.column_stack([np.arange(7) % 2 * 32.0, np.arange(7) // 2 * 20.0])


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_windows_and_channel_subsets_equal_the_written_data_in_microvolts(tmp_path, dtype):
    data = make_data(dtype)
    path = write_nwb(
        tmp_path / "rec.nwb", data, conversion=2.5e-6, offset=1e-4, positions_um=POSITIONS
    )
    rec = NwbRecording(path)
    assert (rec.n_samples, rec.n_channels, rec.sampling_rate_hz) == (300, 7, 30000.0)
    assert rec.gain_to_uv == pytest.approx(2.5) and rec.offset_uv == pytest.approx(100.0)
    expected = data.astype(np.float64) * 2.5 + 100.0
    for start, stop in [(0, 300), (17, 18), (100, 257), (299, 300), (5, 5)]:
        for channels in [None, [2, 3, 4], [6, 0, 3], [1, 5], [4, 4, 0], []]:
            traces = rec.get_traces(start, stop, channels=channels)
            selected = slice(None) if channels is None else channels
            assert traces.dtype == np.float32 and traces.flags.c_contiguous
            np.testing.assert_allclose(
                traces, expected[start:stop][:, selected], rtol=1e-6, atol=1e-3
            )
    with pytest.raises(ValueError, match=r"window \[250, 301\) must lie within"):
        rec.get_traces(250, 301)
    with pytest.raises(ValueError, match=r"channels must lie in \[0, 7\)"):
        rec.get_traces(0, 10, channels=[7])


def test_rate_positions_and_fields_come_from_the_file(tmp_path):
    data = make_data("int16", n_channels=7)
    fields = nwb_fields(
        write_nwb(tmp_path / "a.nwb", data, conversion=0.195e-6, positions_um=POSITIONS)
    )
    assert (fields.n_samples, fields.n_channels, fields.dtype, fields.order) == (
        300,
        7,
        "int16",
        "samples",
    )
    assert fields.gain_to_uv == pytest.approx(0.195)
    assert fields.stream == "acquisition/ElectricalSeries"
    np.testing.assert_array_equal(fields.positions_um, POSITIONS)

    # x/y columns when there are no rel_x/rel_y; rate from timestamps.
    stamps = 10.0 + np.arange(300) / 20000.0
    fields = nwb_fields(
        write_nwb(
            tmp_path / "b.nwb",
            data,
            rate_hz=None,
            timestamps=stamps,
            positions_um=POSITIONS + 5,
            position_columns=("x", "y"),
        )
    )
    assert fields.sampling_rate_hz == pytest.approx(20000.0)
    np.testing.assert_array_equal(fields.positions_um, POSITIONS + 5)

    # No positions: the default layout, and uniform channel_conversion folds
    # into the gain.
    path = write_nwb(
        tmp_path / "c.nwb", data, conversion=1e-6, channel_conversion=np.full(7, 0.5)
    )
    assert nwb_fields(path).positions_um is None
    rec = NwbRecording(path)
    assert rec.gain_to_uv == pytest.approx(0.5)
    np.testing.assert_array_equal(rec.positions_um[:2], [[0.0, 0.0], [32.0, 0.0]])


def test_choosing_one_of_several_series(tmp_path):
    data = make_data("int16", n_channels=7)
    path = write_nwb(
        tmp_path / "two.nwb", data, positions_um=POSITIONS, series_names=("raw", "copy")
    )
    with pytest.raises(
        NwbError, match=r"two\.nwb' holds 2 ElectricalSeries .*--electrical-series NAME"
    ):
        nwb_fields(path)
    assert nwb_fields(path, electrical_series="copy").stream == "acquisition/copy"
    assert nwb_fields(path, electrical_series="acquisition/raw").stream == (
        "acquisition/raw"
    )
    with pytest.raises(
        NwbError, match=r"electrical_series='lfp': expected one of \['copy', 'raw'\]"
    ):
        nwb_fields(path, electrical_series="lfp")


def test_errors_name_the_file_and_what_is_missing(tmp_path):
    data = make_data("int16", n_channels=7)
    with pytest.raises(FileNotFoundError, match=r"NWB file '.*none\.nwb' does not exist"):
        nwb_fields(tmp_path / "none.nwb")
    (tmp_path / "text.nwb").write_text("not hdf5")
    with pytest.raises(NwbError, match=r"text\.nwb' is not a readable NWB"):
        nwb_fields(tmp_path / "text.nwb")
    path = write_nwb(
        tmp_path / "gains.nwb", data, channel_conversion=np.linspace(1, 2, 7)
    )
    with pytest.raises(
        NwbError,
        match=r"gains\.nwb': acquisition/ElectricalSeries/channel_conversion has "
        r"values from 1 to 2: expected one value for all 7 channels",
    ):
        nwb_fields(path)
    # No ElectricalSeries in /acquisition.
    empty = tmp_path / "empty.nwb"
    with h5py.File(empty, "w") as handle:
        handle.create_group("acquisition")
    with pytest.raises(NwbError, match=r"empty\.nwb': no ElectricalSeries in /acquisition"):
        nwb_fields(empty)
    # A series without rate or timestamps.
    path = write_nwb(tmp_path / "norate.nwb", data)
    with h5py.File(path, "r+") as handle:
        del handle["acquisition/ElectricalSeries/starting_time"]
    with pytest.raises(
        NwbError,
        match=r"norate\.nwb': acquisition/ElectricalSeries has neither starting_time "
        r"\(with rate\) nor timestamps",
    ):
        nwb_fields(path)


def write_row(folder: Path, **cells) -> Path:
    columns = (
        "name path format sampling_rate_hz n_channels dtype order gain_to_uv "
        "offset_bytes geometry electrical_series"
    ).split()
    table = folder / "table.tsv"
    table.write_text(
        "\t".join(columns) + "\n" + "\t".join(cells.get(c, "") for c in columns) + "\n"
    )
    return table


def test_recordings_table_row_in_nwb(tmp_path):
    data = make_data("int16", n_channels=7)
    path = write_nwb(
        tmp_path / "rec.nwb",
        data,
        conversion=0.195e-6,
        positions_um=POSITIONS,
        series_names=("raw", "other"),
    )
    table = write_row(tmp_path, name="n", path=str(path), format="nwb",
                      electrical_series="raw")
    (spec,) = load_recordings_table(table)
    assert (spec.format, spec.n_samples, spec.n_channels, spec.electrical_series) == (
        "nwb",
        300,
        7,
        "acquisition/raw",
    )
    assert spec.geometry_source == "nwb" and spec.positions_um[1] == (32.0, 0.0)
    traces = open_recording(spec).get_traces(10, 20, channels=[3, 4])
    np.testing.assert_allclose(traces, data[10:20, 3:5] * 0.195, rtol=1e-6)

    bad = write_row(tmp_path, name="n", path=str(path), format="nwb")
    with pytest.raises(RecordingError, match=r"expected a valid nwb recording .*2 ElectricalSeries"):
        load_recordings_table(bad)
    bad = write_row(tmp_path, name="n", path=str(path), format="nwb",
                    electrical_series="raw", n_channels="8")
    with pytest.raises(RecordingError, match=r"n_channels=8: expected 7 as in the nwb"):
        load_recordings_table(bad)
    bad = write_row(tmp_path, name="n", path=str(path), format="binary",
                    electrical_series="raw", n_channels="7", dtype="int16",
                    sampling_rate_hz="30000")
    with pytest.raises(RecordingError, match=r"electrical_series='raw': expected an empty"):
        load_recordings_table(bad)
