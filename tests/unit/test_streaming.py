"""Streamed readers and writers of the global jobs equal their whole-array versions."""

from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from shardsort.export import phy
from shardsort.tables import take_rows
from shardsort.tables import gather_rows, merge_event_tables
from shardsort.unitsplit import split_units

from test_unitsplit import SETTINGS, _features, _times


@pytest.mark.parametrize("block_rows", [1, 7, 1000])
@pytest.mark.parametrize("shuffle", [False, True])
def test_gather_rows_equals_indexing_the_concatenation(block_rows, shuffle):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 3, 2)).astype(np.float32) for n in (5, 0, 17, 9)]
    rows = np.arange(31)
    if shuffle:
        rows = rng.permutation(rows)[:20]
    loaded = []

    def load(i):
        loaded.append(i)
        return parts[i]

    out = np.empty((len(rows), 3, 2), np.float32)
    for lo, values in gather_rows(load, [len(p) for p in parts], rows, block_rows=block_rows,
                                  cached_parts=2):
        out[lo : lo + len(values)] = values
    np.testing.assert_array_equal(out, np.concatenate(parts)[rows])
    if not shuffle and block_rows == 1000:
        assert loaded == [0, 2, 3]  # in-order rows: every part read once


def test_merge_event_tables_drops_border_duplicates_first_wins():
    dtype = [("sample_index", "<i8"), ("unit_index", "<i4")]
    a = np.array([(5, 1), (9, 0)], dtype=dtype)
    b = np.array([(9, 0), (2, 3)], dtype=dtype)
    merged, kept = merge_event_tables([a, b], keys=("sample_index", "unit_index"))
    assert merged["sample_index"].tolist() == [2, 5, 9]
    assert kept.tolist() == [3, 0, 1] and kept.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint64, np.int32])
@pytest.mark.parametrize("n", [0, 3, 70_000])
def test_save_rows_writes_the_bytes_of_np_save(tmp_path, monkeypatch, dtype, n):
    monkeypatch.setattr(phy, "_COPY_ROWS", 1000)
    values = np.random.default_rng(1).standard_normal((n, 3, 4)) * 100
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=values)
        phy._save_rows(tmp_path / "streamed.npy", f["x"], dtype)
    np.save(tmp_path / "whole.npy", values.astype(dtype))
    assert (tmp_path / "streamed.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_ascending_is_checked_across_blocks(monkeypatch):
    monkeypatch.setattr(phy, "_COPY_ROWS", 4)
    assert phy._ascending(np.arange(10))
    values = np.arange(10)
    values[4] = 2  # a drop exactly at a block border
    assert not phy._ascending(values)


def test_take_rows_from_a_dataset_equals_fancy_indexing(tmp_path):
    rng = np.random.default_rng(4)
    values = rng.standard_normal((5_000, 4, 3)).astype(np.float32)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=values, chunks=(256, 4, 3))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        ds = f["x"]
        for rows in (np.sort(rng.choice(5_000, 700, replace=False)), np.arange(5_000),
                     np.array([99, 3, 15, 16, 40, 0, 64]), np.array([4_999]),
                     np.array([3, 3, 900, 2])):
            for block in (1, 7, 16, 1_000, 65_536):
                taken = take_rows(ds, rows, block_rows=block)
                assert taken.dtype == values.dtype
                np.testing.assert_array_equal(taken, values[rows])
        assert take_rows(ds, np.zeros(0, dtype=int)).shape == (0, 4, 3)
        with pytest.raises(ValueError, match=r"indices in \[0, 5000\)"):
            take_rows(ds, np.array([5_000]))
        with pytest.raises(ValueError, match=r"indices in \[0, 5000\)"):
            take_rows(ds, np.array([-1, 2]))


def test_split_units_reading_one_unit_at_a_time_gives_the_same_cuts():
    rng = np.random.default_rng(0)
    centre = rng.standard_normal((3, 10)) * 3
    a = _features(rng, 400, centre)
    b = _features(rng, 300, centre + 2.5 * rng.standard_normal((3, 10)) / np.sqrt(3))
    times = np.concatenate([_times(rng, 400), _times(rng, 300)])
    other = _features(rng, 500, -centre)
    times = np.concatenate([times, _times(rng, 500)])
    features = np.concatenate([a, b, other])
    units = np.r_[np.zeros(700, int), np.ones(500, int)]
    whole = split_units(times, units, features, n_units=2, **SETTINGS)
    read = []

    def unit_features(unit):
        read.append(unit)
        return features[units == unit]

    streamed = split_units(times, units, unit_features, n_units=2, **SETTINGS)
    assert len(whole[2]) == 1 and whole[2] == streamed[2]
    np.testing.assert_array_equal(whole[0], streamed[0])
    np.testing.assert_array_equal(whole[1], streamed[1])
    assert set(read) == {0, 1}


# ---------------------------------------------------------------------------
# Job scripts that read only part of the global tables
# ---------------------------------------------------------------------------

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _run_script(name: str, smk, replace: tuple[str, str]) -> None:
    """Run ``scripts/<name>.py`` on a stand-in ``snakemake``, with one constant replaced."""
    source = (SCRIPTS / f"{name}.py").read_text()
    assert source.count(replace[0]) == 1
    code = compile(source.replace(*replace), str(SCRIPTS / f"{name}.py"), "exec")
    exec(code, {"snakemake": smk, "__name__": "__main__"})


def _smk(tmp_path, **sections):
    return SimpleNamespace(log=[str(tmp_path / "job.log")], rule="job", **{
        key: SimpleNamespace(**value) for key, value in sections.items()})


@pytest.mark.parametrize("block_rows", [7, 1000, 1 << 16])
def test_merge_clusters_picks_the_spikes_of_the_per_cluster_reference(tmp_path, block_rows):
    rng = np.random.default_rng(3)
    n_spikes, cap = 5000, 40
    with h5py.File(tmp_path / "spikes.h5", "w") as f:
        f.attrs["n_spikes"] = n_spikes
    paths = []
    for group, n_clusters in enumerate((6, 0, 1, 30)):  # an empty group, a single cluster
        rows = np.sort(rng.choice(n_spikes, 1200, replace=False))
        labels = rng.integers(-1, n_clusters, len(rows)) if n_clusters else np.full(len(rows), -1)
        if n_clusters > 1:
            labels[rng.random(len(rows)) < 0.5] = 0  # one cluster well above the cap
        paths.append(str(tmp_path / f"g{group}.npz"))
        np.savez(paths[-1], rows=rows.astype(np.int64), labels=labels.astype(np.int32))
    smk = _smk(tmp_path, input={"labels": paths, "spikes": str(tmp_path / "spikes.h5")},
               output={"clusters": str(tmp_path / "clusters.h5")},
               params={"templates": {"max_spikes_per_unit": cap}})
    _run_script("merge_clusters", smk, ("BLOCK_ROWS = 1 << 16", f"BLOCK_ROWS = {block_rows}"))
    with h5py.File(tmp_path / "clusters.h5") as f:
        labels, template_labels = f["labels"][()], f["template_labels"][()]
        n_clusters = int(f.attrs["n_clusters"])
    assert n_clusters == 6 + 1 + 30
    expected = np.full(n_spikes, -1, dtype=np.int32)
    for unit in range(n_clusters):
        members = np.flatnonzero(labels == unit)
        if len(members) > cap:
            members = members[np.linspace(0, len(members) - 1, cap).round().astype(int)]
        expected[members] = unit
    assert template_labels.dtype == np.int32
    np.testing.assert_array_equal(template_labels, expected)
    assert np.bincount(template_labels[template_labels >= 0]).max() == cap


@pytest.mark.parametrize("search_rows", [1, 5, 4096])
@pytest.mark.parametrize(("start", "stop"), [(3000, 6000), (0, 2000), (9000, 10000), (4000, 4001)])
def test_template_sums_reads_its_chunk_rows_like_the_whole_table(tmp_path, search_rows, start,
                                                                  stop):
    from shardsort.io.arrays import ChunkedRecording, write_array
    from shardsort.tables import PEAK_DTYPE
    from shardsort.templates import accumulate_templates
    from shardsort.workflow import waveform_samples

    rng = np.random.default_rng(4)
    n_samples, n_channels, n_units, margin = 10_000, 4, 5, 80
    detect = {"ms_before": 1.0, "ms_after": 1.5}
    rate = 30000.0
    peaks = np.zeros(900, dtype=PEAK_DTYPE)
    times = np.sort(rng.integers(0, n_samples, len(peaks)))
    times[10:14] = times[10]  # coincident spikes
    times[-3:] = stop  # spikes exactly at the chunk border
    peaks["sample_index"] = np.sort(times)
    template_labels = rng.integers(-1, n_units, len(peaks)).astype(np.int32)
    with h5py.File(tmp_path / "spikes.h5", "w") as f:
        f.create_dataset("peaks", data=peaks)
    with h5py.File(tmp_path / "clusters.h5", "w") as f:
        f.create_dataset("template_labels", data=template_labels)
        f.attrs["n_clusters"] = n_units
    write_array(tmp_path / "pre.bin", rng.standard_normal((n_samples, n_channels)).astype(
        np.float32), sampling_rate_hz=rate, start_sample=0)
    chunk = {"index": 1, "start": start, "stop": stop}
    smk = _smk(tmp_path, input={"chunks": [str(tmp_path / "pre.bin")],
                                "spikes": str(tmp_path / "spikes.h5"),
                                "clusters": str(tmp_path / "clusters.h5")},
               output={"sums": str(tmp_path / "sums.npz")},
               params={"recording": {"sampling_rate_hz": rate, "n_samples": n_samples},
                       "chunk": chunk, "margin_samples": margin, "detect": detect})
    _run_script("template_sums", smk,
                ("SEARCH_BLOCK_ROWS = 4096", f"SEARCH_BLOCK_ROWS = {search_rows}"))
    # The whole-table reference (the job before it read only its rows).
    t = peaks["sample_index"]
    sel = (t >= start) & (t < stop) & (template_labels >= 0)
    pre, post = waveform_samples({"detect": detect}, rate)
    window = ChunkedRecording([tmp_path / "pre.bin"], n_samples=n_samples).get_traces(
        start - margin, stop + margin, pad="zero")
    sums, counts = accumulate_templates(window, t[sel] - start + margin, template_labels[sel],
                                        n_units=n_units, pre_samples=pre, post_samples=post)
    present = np.flatnonzero(counts)
    from shardsort.jobs import read_npz

    out = read_npz(tmp_path / "sums.npz")  # the sums are stored packed
    np.testing.assert_array_equal(out["counts"], counts)
    np.testing.assert_array_equal(out["present"], present)
    np.testing.assert_array_equal(out["sums"], sums[present])
    assert out["sums"].dtype == sums.dtype


def test_template_sums_rejects_a_table_out_of_time_order(tmp_path):
    from shardsort.io.arrays import write_array
    from shardsort.tables import PEAK_DTYPE

    peaks = np.zeros(50, dtype=PEAK_DTYPE)
    peaks["sample_index"] = np.arange(50)[::-1] * 100
    with h5py.File(tmp_path / "spikes.h5", "w") as f:
        f.create_dataset("peaks", data=peaks)
    with h5py.File(tmp_path / "clusters.h5", "w") as f:
        f.create_dataset("template_labels", data=np.zeros(50, np.int32))
        f.attrs["n_clusters"] = 1
    write_array(tmp_path / "pre.bin", np.zeros((5000, 2), np.float32), sampling_rate_hz=30000.0,
                start_sample=0)
    smk = _smk(tmp_path, input={"chunks": [str(tmp_path / "pre.bin")],
                                "spikes": str(tmp_path / "spikes.h5"),
                                "clusters": str(tmp_path / "clusters.h5")},
               output={"sums": str(tmp_path / "sums.npz")},
               params={"recording": {"sampling_rate_hz": 30000.0, "n_samples": 5000},
                       "chunk": {"index": 0, "start": 1000, "stop": 3000},
                       "margin_samples": 10, "detect": {"ms_before": 1.0, "ms_after": 1.5}})
    with pytest.raises(ValueError, match="must be in ascending sample order"):
        _run_script("template_sums", smk, ("SEARCH_BLOCK_ROWS = 4096", "SEARCH_BLOCK_ROWS = 4"))


def test_packed_arrays_round_trip_through_npz(tmp_path):
    from shardsort.jobs import pack_array, read_npz, write_npz

    rng = np.random.default_rng(4)
    # Template sums of int16 chunks: multiples of 1/32 held in float64.
    sums = rng.integers(-3000, 3000, size=(7, 61, 40)).astype(np.float64) / 32
    packed = pack_array("sums", sums)
    assert "sums" not in packed and packed["sums__packed"].nbytes < 0.5 * sums.nbytes
    write_npz(tmp_path / "s.npz", **packed, counts=np.arange(3))
    back = read_npz(tmp_path / "s.npz")
    assert set(back) == {"sums", "counts"}
    np.testing.assert_array_equal(back["sums"], sums)
    assert back["sums"].dtype == np.float64
    empty = pack_array("sums", np.zeros((0, 61, 40)))
    write_npz(tmp_path / "e.npz", **empty)
    assert read_npz(tmp_path / "e.npz")["sums"].shape == (0, 61, 40)


@pytest.mark.parametrize("rows_per_block", [1, 3, 7, 50])
def test_arrays_packed_by_row_blocks_read_whole_or_by_rows(tmp_path, rows_per_block):
    from shardsort.jobs import pack_array, read_npz, read_packed_rows, write_npz

    rng = np.random.default_rng(5)
    sums = rng.integers(-3000, 3000, size=(7, 61, 40)).astype(np.float64) / 32
    packed = pack_array("sums", sums, rows_per_block=rows_per_block)
    write_npz(tmp_path / "s.npz", **packed, counts=np.arange(3))
    back = read_npz(tmp_path / "s.npz")
    assert set(back) == {"sums", "counts"}
    np.testing.assert_array_equal(back["sums"], sums)
    with np.load(tmp_path / "s.npz") as data:
        for start, stop in [(0, 7), (2, 5), (3, 3), (6, 7), (0, 1)]:
            np.testing.assert_array_equal(read_packed_rows(data, "sums", start, stop), sums[start:stop])
        with pytest.raises(ValueError, match="rows 5:9"):
            read_packed_rows(data, "sums", 5, 9)
    # Arrays stored whole (packed or not) read by rows too.
    write_npz(tmp_path / "w.npz", **pack_array("sums", sums), plain=sums)
    with np.load(tmp_path / "w.npz") as data:
        np.testing.assert_array_equal(read_packed_rows(data, "sums", 2, 6), sums[2:6])
        np.testing.assert_array_equal(read_packed_rows(data, "plain", 1, 4), sums[1:4])
    empty = pack_array("sums", np.zeros((0, 61, 40)), rows_per_block=rows_per_block)
    write_npz(tmp_path / "e.npz", **empty)
    assert read_npz(tmp_path / "e.npz")["sums"].shape == (0, 61, 40)
