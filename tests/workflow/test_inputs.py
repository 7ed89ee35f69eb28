"""Bad input fails before any job runs; awkward but valid input works."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest

from .conftest import run_snakemake, write_small_recording

pytestmark = pytest.mark.workflow

HEADER = ("name\tpath\tformat\tsampling_rate_hz\tn_channels\tdtype\torder\tgain_to_uv\t"
          "offset_bytes\tgeometry\n")


def _table(tmp_path, row: str):
    path = tmp_path / "recs.tsv"
    path.write_text(HEADER + row + "\n")
    return path


@pytest.mark.parametrize(
    "make_row, message",
    [
        (lambda d: f"r1\t{d}/missing.bin\tbinary\t30000\t4\tint16\tsamples\t1\t0\t",
         "missing.bin"),
        (lambda d: f"r1\t{d}/odd.bin\tbinary\t30000\t4\tint16\tsamples\t1\t0\t",
         "is a multiple of n_channels x itemsize"),
        (lambda d: f"r1\t{d}/ok.bin\tbinary\t-5\t4\tint16\tsamples\t1\t0\t",
         "sampling_rate_hz"),
        (lambda d: f"r1\t{d}/ok.bin\tbinary\t30000\t4\tint12\tsamples\t1\t0\t",
         "int12"),
    ],
)
def test_bad_table_fails_at_dag_build_and_writes_nothing(tmp_path, make_row, message):
    (tmp_path / "odd.bin").write_bytes(b"\0" * 7)
    (tmp_path / "ok.bin").write_bytes(b"\0" * 2 * 4 * 100)
    table = _table(tmp_path, make_row(tmp_path))
    proc = run_snakemake(tmp_path, "--cores", "1", config={"recordings": table}, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert str(table) in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_channel_major_float32_recording_with_a_dead_channel(tmp_path):
    """channels order, float32 samples, a dead channel, a path with spaces."""
    folder = tmp_path / "odd layout"
    table = write_small_recording(folder, name="odd", n_channels=32, duration_s=8.0,
                                  n_units=6, seed=3)
    row = next(csv.DictReader(open(table), delimiter="\t"))
    raw = np.fromfile(row["path"], dtype=np.int16).reshape(-1, 32)
    volts = raw.astype(np.float32) * float(row["gain_to_uv"])
    volts[:, 5] = 0.0  # a dead channel
    path = folder / "odd channels.f32"
    np.ascontiguousarray(volts.T).tofile(path)
    before = path.read_bytes()
    row.update(path=str(path), dtype="float32", order="channels", gain_to_uv="1.0")
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row), delimiter="\t")
        writer.writeheader()
        writer.writerow(row)
    run_snakemake(tmp_path, "--cores", "2", "--until", "merge_spikes",
                  config={"recordings": table})
    base = tmp_path / "results" / "odd"
    labels = {int(r["channel"]): r["label"]
              for r in csv.DictReader(open(base / "bad_channels.tsv"), delimiter="\t")}
    assert labels[5] == "dead"
    assert sum(v != "good" for v in labels.values()) == 1
    with h5py.File(base / "spikes.h5", "r") as f:
        peaks = f["peaks"][()]
    assert len(peaks) > 100
    assert not np.any(peaks["channel_index"] == 5)
    assert path.read_bytes() == before  # the input is never written to


def test_filtering_in_preprocess_equals_filter_jobs_per_channel_shard(tmp_path):
    # One channel shard (the default): the preprocess job filters its chunk
    # itself; 3 shards: filter jobs write shard files the preprocess job joins.
    # The preprocessed chunks must be identical bytes (compressed or not).
    table = write_small_recording(tmp_path / "data", name="rec", n_channels=40,
                                  duration_s=12.0, n_units=6, seed=3)
    chunks = {}
    for shards in ("auto", 16):
        for compression in ("lz4", "none"):
            work = tmp_path / f"w_{shards}_{compression}"
            work.mkdir()
            proc = run_snakemake(
                work, "--cores", "2", "results/rec/preprocess/chunks/t00000.bin",
                overrides={"recordings": str(table), "keep_intermediates": True,
                           "shards": {"channels_per_shard": shards},
                           "preprocess": {"compression": compression}},
            )
            assert ("rule filter:" in proc.stdout + proc.stderr) == (shards != "auto")
            chunks[shards, compression] = (
                work / "results/rec/preprocess/chunks/t00000.bin").read_bytes()
    for compression in ("lz4", "none"):
        assert chunks["auto", compression] == chunks[16, compression], compression
