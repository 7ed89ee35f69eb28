"""Pure helpers of benchmarks/bench_long.py (the long-recording benchmark)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_long  # noqa: E402


def test_concurrency_shares_counts_idle_and_single_job_time():
    # 0-1 idle, 1-2 one, 2-3 two, 3-5 one, 5-7 idle, 7-8 one, 8-10 idle.
    shares = bench_long.concurrency_shares([(1, 3), (2, 5), (7, 8)], 0, 10)
    assert shares == pytest.approx({"no_job_share": 0.5, "one_job_share": 0.4})


def test_concurrency_shares_clips_to_the_window_and_handles_no_jobs():
    assert bench_long.concurrency_shares([], 0, 4)["no_job_share"] == 1.0
    shares = bench_long.concurrency_shares([(-5, 1), (3, 9), (3, 9)], 0, 4)
    assert shares == pytest.approx({"no_job_share": 0.5, "one_job_share": 0.25})
    with pytest.raises(ValueError, match="stop must be > start"):
        bench_long.concurrency_shares([], 2, 2)


def test_fitting_minutes_keeps_what_fits_and_shortens_the_rest():
    gb = 1e9
    # 1 GB per minute, factor 1: 2.05 GB per minute + 2 GB margin.
    assert bench_long.fitting_minutes(10, bytes_per_minute=gb, free_bytes=30 * gb) == 10
    assert bench_long.fitting_minutes(30, bytes_per_minute=gb, free_bytes=30 * gb) == 13
    assert bench_long.fitting_minutes(30, bytes_per_minute=gb, free_bytes=3 * gb) == 0.4
    assert bench_long.fitting_minutes(30, bytes_per_minute=gb, free_bytes=gb) == 0


def test_linear_fit_and_compare_trains():
    assert bench_long.linear_fit([2, 5, 15], [3, 6, 16]) == pytest.approx((1.0, 1.0))
    assert bench_long.linear_fit([2, 2], [1, 3]) is None
    dtype = [("sample_index", "i8"), ("unit_index", "i4"), ("amplitude", "f4")]
    a = np.array([(10, 1, 1.0), (20, 2, 1.0), (30, 1, 1.0)], dtype=dtype)
    b = a.copy()
    b["amplitude"][1] = 1.00001
    same = bench_long.compare_trains(a, b)
    assert same["identical_trains"] and not same["identical_bytes"]
    assert same["only_in_a"] == same["only_in_b"] == 0
    c = np.array([(10, 1, 1.0), (21, 2, 1.0)], dtype=dtype)
    differ = bench_long.compare_trains(a, c)
    assert not differ["identical_trains"]
    assert (differ["only_in_a"], differ["only_in_b"]) == (2, 1)


def test_cluster_count_is_read_from_the_templates_log():
    log = ("INFO cluster 3 dropped: too_small (12 spikes)\n"
           "INFO 812 clusters -> 640 kept -> 171 units after merging\n")
    assert bench_long.templates_clusters(log) == 812
    assert bench_long.templates_clusters("no summary yet") is None


def test_templates_memory_is_projected_through_its_clusters():
    # clusters = 500 x minutes^0.2 exactly; RSS = 300 MB + 0.4 MB per cluster
    minutes = [2.0, 5.0, 15.0]
    clusters = [round(500 * m**0.2) for m in minutes]
    rss = [300 + 0.4 * c for c in clusters]
    a, p = bench_long.power_fit(minutes, clusters)
    assert p == pytest.approx(0.2, abs=2e-3) and a == pytest.approx(500, rel=1e-2)
    row = bench_long._templates_by_clusters(minutes, clusters, rss, 120.0)
    assert row["projected_clusters"] == pytest.approx(500 * 120**0.2, rel=1e-2)
    assert row["projected"] == pytest.approx(300 + 0.4 * 500 * 120**0.2, rel=1e-2)
    assert row["mb_per_100_clusters"] == pytest.approx(40, rel=1e-2)
    # never below the largest measured; one duration: no fit
    flat = bench_long._templates_by_clusters(minutes, clusters, [900, 500, 400], 120.0)
    assert flat["projected"] >= 900
    assert bench_long._templates_by_clusters([5.0], [700], [600], 120.0) is None


def test_the_global_memory_check_judges_the_cluster_fit_and_reliable_rules_only():
    rule = {"kind": "global", "global": True, "n_jobs": 1, "sum_s": 1.0}

    def run(minutes, clusters, templates_mb, short_mb):
        return {"probe": 384, "recording": f"r{minutes}", "minutes": minutes,
                "n_spikes": 1e5 * minutes,
                "n_clusters": clusters, "wall/duration": 1.0, "cpu/duration": 1.5,
                "peak_disk_GB": minutes, "peak_disk_x_raw": 0.7, "dry_run_s": 2.0,
                "n_jobs": 10 * minutes, "smk_main_peak_rss_MB": 200.0, "load_avg": 1.0,
                "budget_MB": 2000, "dag_s": 0.5, "smk_cpu_share": 0.01, "no_job_share": 0.01,
                "rules": [{**rule, "rule": "templates", "max_rss_MB": templates_mb,
                           "max_job_s": 10.0, "rss_reliable": True},
                          {**rule, "rule": "whitening", "max_rss_MB": short_mb,
                           "max_job_s": 0.2, "rss_reliable": False}]}

    # templates grows fast in duration between 2 and 5 min (clusters jump), then
    # flattens: linear in duration it passes 1 GB, through the clusters it does not.
    runs = [run(2, 670, 600, 3), run(5, 790, 650, 3), run(15, 900, 690, 120)]
    projection = bench_long.projection_rows(runs)
    by_what = {p["what"]: p for p in projection}
    assert by_what["rule templates"]["projected"] > 1000
    assert not by_what["rule templates"]["checked"]
    assert by_what["rule templates (clusters)"]["projected"] < 1000
    assert by_what["rule whitening"]["projected"] > 1000  # a 0.2-s job's RSS: noise
    checks = bench_long.check_rows(runs, bench_long.rule_rows(runs), projection, [])
    memory = next(c for c in checks if c["check"].startswith("no global job above 1 GB"))
    assert memory["pass"] is True and "templates (clusters)" in memory["detail"]
    assert "whitening" in memory["detail"]


def test_the_long_run_is_compared_with_the_run_of_at_least_5_minutes():
    def run(minutes, wall, share):
        return {"probe": 64, "recording": f"r{minutes}", "minutes": minutes, "n_spikes": 1e4,
                "wall/duration": wall, "cpu/duration": wall, "load_avg": 1.0,
                "peak_disk_x_raw": 0.6, "dry_run_s": 2.0, "dag_s": 0.5, "budget_MB": 2000,
                "smk_cpu_share": share, "no_job_share": share, "rules": []}

    runs = [run(2, 0.32, 0.07), run(10, 0.143, 0.042), run(120, 0.132, 0.026)]
    checks = {c["check"]: c for c in bench_long.check_rows(runs, [], [], [])}
    wall = checks["wall/duration at 120 min within 15 % of 10 min"]
    assert wall["pass"] and wall["value"] == pytest.approx(0.132 / 0.143 - 1)
    share = checks["Snakemake main-process CPU / wall < 5 % (at 120 min)"]
    assert share["pass"] and "2 min: 0.070" in share["detail"]
    runs = [run(2, 1.06, 0.05), run(5, 0.88, 0.04), run(15, 1.2, 0.06)]
    checks = {c["check"]: c for c in bench_long.check_rows(runs, [], [], [])}
    assert not checks["wall/duration at 15 min within 15 % of 5 min"]["pass"]
    assert not checks["Snakemake main-process CPU / wall < 5 % (at 15 min)"]["pass"]
