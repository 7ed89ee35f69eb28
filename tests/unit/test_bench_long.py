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
