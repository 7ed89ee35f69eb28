"""The shardsort command: help, input errors, recordings tables it builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_io import make_data, neural, np1_meta, write_openephys, write_spikeglx
from test_nwb_io import POSITIONS, write_nwb

from shardsort import cli
from shardsort.recordings import COLUMNS, load_recordings_table

RAW_OPTIONS = [
    "--sampling-rate-hz", "30000", "--n-channels", "4", "--dtype", "int16",
    "--gain-to-uv", "0.195",
]


def run_main(argv, capsys) -> tuple[int, str, str]:
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("argv", [[], ["sort"], ["check"], ["report"]])
def test_help_of_the_command_and_every_subcommand(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: shardsort")
    for word in {(): ["sort", "check", "report"], ("sort",): ["--out", "--cores",
                 "--profile", "--configfile", "--electrical-series"],
                 ("check",): ["--out", "--configfile"], ("report",): ["--out"]}[tuple(argv)]:
        assert word in out


def test_installed_command_runs():
    script = Path(sys.executable).parent / "shardsort"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: shardsort" in result.stdout


def test_a_bad_path_is_one_line_and_exit_status_2(tmp_path, capsys):
    status, out, err = run_main(["sort", str(tmp_path / "nowhere.ap.bin")], capsys)
    assert status == 2 and out == ""
    assert err == f"shardsort: error: {tmp_path / 'nowhere.ap.bin'}: no such file or folder\n"


def test_a_raw_binary_without_metadata_names_the_options(tmp_path, capsys):
    (tmp_path / "rec.dat").write_bytes(np.zeros((10, 4), np.int16).tobytes())
    status, _, err = run_main(["sort", str(tmp_path / "rec.dat")], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "rec.dat: a raw binary carries no metadata: pass --sampling-rate-hz " \
        "--n-channels --dtype --gain-to-uv --geometry" in err
    status, _, err = run_main(
        ["check", str(tmp_path / "rec.dat"), "--sampling-rate-hz", "30000"], capsys
    )
    assert status == 2 and "pass --n-channels --dtype --gain-to-uv --geometry (" in err


def test_unknown_extension_and_empty_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    status, _, err = run_main(["sort", str(tmp_path / "notes.txt")], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "notes.txt: unknown kind of input (suffix '.txt'): expected a SpikeGLX" in err
    (tmp_path / "empty").mkdir()
    status, _, err = run_main(["check", str(tmp_path / "empty")], capsys)
    assert status == 2
    assert "empty: no SpikeGLX .ap.bin, Open Ephys structure.oebin or NWB file" in err


def test_unreadable_metadata_is_one_line_naming_the_file(tmp_path, capsys):
    meta = np1_meta(4)
    meta["nSavedChans"] = "7"  # disagrees with snsApLfSy
    bin_path = write_spikeglx(tmp_path, make_data("int16", 10, 5), meta)
    status, _, err = run_main(["sort", str(bin_path)], capsys)
    assert status == 2 and err.count("\n") == 1
    assert f"{bin_path}: not a readable spikeglx recording:" in err


def test_table_from_a_spikeglx_file_and_run_folder(tmp_path):
    data = make_data("int16", n_samples=40, n_channels=5)
    run = tmp_path / "run_g0"
    bin_path = write_spikeglx(run / "run_g0_imec0", data, np1_meta(4))
    for given in (bin_path, bin_path.with_suffix(".meta"), run):
        rows = cli.describe_inputs([str(given)], cli.Metadata())
        assert [(r["name"], r["format"], r["path"]) for r in rows] == [
            ("run_g0_t0.imec0", "spikeglx", str(bin_path))
        ]
    table = cli.write_table(rows, tmp_path / "out")
    assert table == tmp_path / "out" / "recordings.tsv"
    (spec,) = load_recordings_table(table)
    assert (spec.format, spec.n_channels, spec.n_samples) == ("spikeglx", 4, 40)
    assert spec.sampling_rate_hz == 30000.5
    assert spec.gain_to_uv == pytest.approx(0.6 / 512 / 500 * 1e6)
    assert spec.geometry_source != "default"


def test_table_from_an_open_ephys_folder_and_an_nwb_file(tmp_path):
    record = tmp_path / "session" / "Record Node 101" / "experiment1" / "recording1"
    write_openephys(record, [("Probe-A-100.0", make_data("int16", 30, 3), neural(3))])
    nwb = write_nwb(
        tmp_path / "sub-01.nwb", make_data("int16", 50, 7), conversion=1e-6,
        positions_um=POSITIONS,
    )
    rows = cli.describe_inputs(
        [str(tmp_path / "session"), str(record), str(nwb)], cli.Metadata()
    )
    assert [(r["name"], r["format"]) for r in rows] == [
        ("recording1", "openephys"),
        ("recording1-2", "openephys"),
        ("sub-01", "nwb"),
    ]
    oe, oe2, spec = load_recordings_table(cli.write_table(rows, tmp_path / "out"))
    assert (oe.n_channels, oe.n_samples, oe.gain_to_uv, oe.path) == (
        3, 30, 0.195, str(record / "continuous" / "Probe-A-100.0" / "continuous.dat")
    )
    assert oe2.path == oe.path
    assert (spec.n_channels, spec.n_samples, spec.gain_to_uv) == (7, 50, 1.0)
    np.testing.assert_array_equal(spec.positions_array, POSITIONS)
    with pytest.raises(cli.CliError, match="--electrical-series applies to NWB files only"):
        cli.describe_inputs([str(record)], cli.Metadata(electrical_series="raw"))
    with pytest.raises(cli.CliError, match="--name 'x' needs exactly one recording, got 3"):
        cli.describe_inputs([str(record), str(record), str(nwb)], cli.Metadata(), name="x")


def test_raw_binary_and_table_inputs_get_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rec.bin").write_bytes(make_data("int16", 20, 4).tobytes())
    np.save(tmp_path / "geom.npy", POSITIONS[:4])
    meta = cli.Metadata(sampling_rate_hz=30000.0, n_channels=4, dtype="int16",
                        gain_to_uv=0.195, geometry="geom.npy")
    (row,) = cli.describe_inputs(["rec.bin"], meta, name="mine")
    assert (row["name"], row["format"], row["path"], row["geometry"]) == (
        "mine", "binary", str(tmp_path / "rec.bin"), str(tmp_path / "geom.npy")
    )
    # A user's table, relative paths: rewritten absolute (the workflow runs in --out).
    columns = list(COLUMNS)
    (tmp_path / "mine.tsv").write_text(
        "\t".join(columns) + "\n"
        + "\t".join({"name": "a", "path": "rec.bin", "format": "binary",
                     "sampling_rate_hz": "30000", "n_channels": "4", "dtype": "int16",
                     "geometry": "geom.npy"}.get(c, "") for c in columns) + "\n"
    )
    (row,) = cli.describe_inputs(["mine.tsv"], cli.Metadata())
    assert (row["path"], row["geometry"]) == (
        str(tmp_path / "rec.bin"), str(tmp_path / "geom.npy")
    )
    (spec,) = load_recordings_table(cli.write_table([row], tmp_path / "elsewhere"))
    assert spec.n_samples == 20 and spec.geometry_source == "file"


def test_snakemake_command_uses_the_packaged_workflow_and_config(tmp_path):
    root = cli.workflow_root()
    assert (root / "Snakefile").is_file() and (root / "rules" / "common.smk").is_file()
    layer = tmp_path / "mine.yaml"
    layer.write_text("seed: 1\n")
    command = cli.snakemake_command(
        tmp_path, tmp_path / "recordings.tsv", cores=2, profile="local",
        configfiles=[str(layer)], extra=["--until", "merge_spikes"],
    )
    assert command[:3] == [sys.executable, "-m", "snakemake"]
    assert command[command.index("--snakefile") + 1] == str(root / "Snakefile")
    assert command[command.index("--directory") + 1] == str(tmp_path)
    at = command.index("--configfile")
    assert command[at + 1 : at + 3] == [str(root / "config" / "config.yaml"), str(layer)]
    assert command[command.index("--profile") + 1] == str(root / "profiles" / "local")
    assert command[-2:] == ["--config", f"recordings={tmp_path / 'recordings.tsv'}"]
    with pytest.raises(cli.CliError, match=r"--profile 'nope': expected a profile folder"):
        cli.snakemake_command(tmp_path, tmp_path / "t.tsv", profile="nope")
    with pytest.raises(cli.CliError, match=r"--configfile '.*missing.yaml': no such file"):
        cli.snakemake_command(tmp_path, tmp_path / "t.tsv",
                              configfiles=[str(tmp_path / "missing.yaml")])


def test_report_needs_an_earlier_sort(tmp_path, capsys):
    status, _, err = run_main(["report", "--out", str(tmp_path)], capsys)
    assert status == 2 and "no shardsort run here (expected shardsort-run.yaml" in err


def test_job_counts_from_a_dry_run():
    output = (
        "Building DAG of jobs...\nJob stats:\njob            count\n"
        "-----------  -------\nfilter               4\ncluster              2\n"
        "total                6\n\n"
    )
    assert cli.job_counts(output) == {"filter": 4, "cluster": 2}
    assert cli.job_counts("Nothing to be done.") == {}
