"""The workflow end to end on a small generated recording.

These tests run real `snakemake` processes; they are the slowest in the suite.
"""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest

from .conftest import run_snakemake

pytestmark = pytest.mark.workflow


def _read_tsv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _spikes(workdir, name="small"):
    with h5py.File(workdir / "results" / name / "sorting.h5", "r") as f:
        return f["spikes"][()], f["templates"][()]


def test_dry_run_lists_every_stage(tmp_path, small_recording):
    proc = run_snakemake(tmp_path, "-n", "--cores", "2", config={"recordings": small_recording})
    for rule in ("filter", "noise_stats", "whitening", "preprocess", "feature_basis",
                 "detect", "merge_spikes", "cluster", "merge_clusters", "template_sums",
                 "templates", "deconvolve", "merge_units", "metrics", "export_phy",
                 "export_nwb", "ground_truth"):
        assert rule in proc.stdout, rule


def test_sort_is_accurate_on_ground_truth(sorted_small):
    rows = _read_tsv(sorted_small / "results" / "small" / "ground_truth.tsv")
    assert len(rows) == 10
    acc = np.array([float(r["accuracy"]) for r in rows])
    snr = np.array([float(r["snr"]) for r in rows])
    # Units clearly above the noise must be found; the floor leaves room for the
    # faintest units the generator plants near the detection threshold.
    strong = snr >= 5
    assert strong.sum() >= 5
    assert np.mean(acc[strong] >= 0.8) >= 0.75, list(zip(snr.round(1), acc.round(2)))


def test_outputs_exist_and_agree(sorted_small):
    base = sorted_small / "results" / "small"
    spikes, templates = _spikes(sorted_small)
    assert len(spikes) > 0 and templates.ndim == 3
    assert np.all(np.diff(spikes["sample_index"]) >= 0)
    phy_times = np.load(base / "phy" / "spike_times.npy")
    phy_clusters = np.load(base / "phy" / "spike_clusters.npy")
    assert np.array_equal(phy_times.astype(np.int64), spikes["sample_index"])
    assert np.array_equal(
        np.bincount(phy_clusters, minlength=len(templates)),
        np.bincount(spikes["unit_index"], minlength=len(templates)),
    )
    metrics = _read_tsv(base / "metrics.tsv")
    assert len(metrics) == len(templates)
    assert (base / "sorting.nwb").stat().st_size > 0
    for stage in ("preprocess", "detect", "deconvolve"):
        assert any((base / "benchmarks" / stage).iterdir())
        assert any((base / "logs" / stage).iterdir())


@pytest.fixture(scope="module")
def chunked_sorts(tmp_path_factory, small_recording):
    """The small recording sorted with two other chunk layouts (several chunks:
    a smaller memory budget, more parallel jobs), one with --cores 1 and 2."""
    works = {}
    # 400 MB: two chunks of 10 s; three parallel jobs asked for: three of 6.7 s.
    layouts = {400: {"max_memory_mb": 400},
               3: {"min_parallel_jobs": 3, "min_job_channel_s": 100}}
    for layout, cores in ((400, "1"), (400, "2"), (3, "2")):
        work = tmp_path_factory.mktemp(f"layout{layout}_cores{cores}")
        run_snakemake(
            work, "--cores", cores,
            config={"recordings": small_recording},
            overrides={"shards": layouts[layout]},
        )
        works[layout, cores] = work
    return works


#: What a default sort keeps (besides logs/ and benchmarks/).
USER_OUTPUTS = (
    "sorting.h5", "phy/params.py", "phy/spike_times.npy", "sorting.nwb", "metrics.tsv",
    "ground_truth.tsv", "bad_channels.tsv", "spikes.h5", "report/probe_map.png",
    "report/runtime.png",
)
#: Bulk intermediates a default sort deletes once their consumers are done.
BULK = (
    "preprocess/filtered", "preprocess/chunks/*.bin", "motion/chunks/*.bin", "motion/peaks",
    "detect/t*.npz", "cluster", "templates", "deconvolve",
)


def test_default_sort_keeps_only_what_users_open(chunked_sorts, sorted_small, small_recording):
    """keep_intermediates: false (default) deletes the bulk intermediates; the
    user outputs stay; true (sorted_small) keeps them."""
    for work in chunked_sorts.values():
        base = work / "results" / "small"
        for name in USER_OUTPUTS:
            assert (base / name).exists(), name
        for pattern in BULK:
            left = [p for p in base.glob(pattern) if p.is_file() or any(p.iterdir())]
            assert not left, left
        # The report's input: the chunk sidecars stay (a few hundred bytes each).
        assert list((base / "preprocess" / "chunks").glob("t*.bin.yaml"))
        total = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
        raw = (small_recording.parent / "small.bin").stat().st_size
        assert total < 0.5 * raw, (total, raw)
    kept = sorted_small / "results" / "small"
    assert list((kept / "preprocess" / "chunks").glob("t*.bin"))
    assert list((kept / "deconvolve").glob("t*.npz"))


def test_same_result_for_cores_and_chunk_sizes(chunked_sorts, sorted_small):
    """Cores never change the result; chunk lengths change amplitudes by float rounding only.

    The reference sort (``--cores 2``, default budget) holds the 20 s recording
    in one chunk. Two other budgets cut it into several chunks; one of them is
    run with ``--cores 1`` and ``--cores 2``.
    """
    reference, _ = _spikes(sorted_small)
    runs = {}
    for key, work in chunked_sorts.items():
        with h5py.File(work / "results" / "small" / "sorting.h5", "r") as f:
            assert '"n_chunks": 1,' not in f.attrs["plan"]
            runs[key] = f["spikes"][()]
    # Same chunking, different cores: byte-identical.
    assert runs[400, "1"].tobytes() == runs[400, "2"].tobytes()
    # Different chunking: identical spike times and units; the fitted
    # amplitudes differ only by float32 rounding of the per-chunk FFTs.
    for spikes in (runs[400, "1"], runs[3, "2"]):
        assert np.array_equal(spikes["sample_index"], reference["sample_index"])
        assert np.array_equal(spikes["unit_index"], reference["unit_index"])
        np.testing.assert_allclose(spikes["amplitude"], reference["amplitude"], rtol=1e-5)
