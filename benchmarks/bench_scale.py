"""Scale: wall time and memory versus duration and channel count, Snakemake overhead.

Sorts generated 384-channel recordings of several durations and one
1,024-channel recording with ``snakemake --cores 2`` (fresh runs). Planning
larger recordings without sorting them is the ``plan`` section
(``bench_plan.py``).
"""

from __future__ import annotations

import shutil

from bench_sort import (
    accuracy_row,
    error_table,
    memory_rows,
    rule_rows,
    sort_all,
    timing_row,
)
from bench_plan import job_startup_cpu_s
from benchlib import Context, Table, generate_recording


def _sorted(ctx: Context, n_channels: int, minutes: float) -> list[dict]:
    """Generate and sort one recording: ``[result]``, or ``[]`` if the sort failed."""
    recording = generate_recording(
        ctx.data,
        f"np_{n_channels}ch_{minutes:g}min",
        n_channels=n_channels,
        duration_s=60.0 * minutes,
        n_units=n_channels // 4,
        seed=3,
    )
    try:
        return sort_all(ctx, [recording], folder="scale")
    finally:
        if not ctx.keep_data:
            shutil.rmtree(ctx.data / recording.name, ignore_errors=True)


def run(ctx: Context) -> list[Table]:
    startup = job_startup_cpu_s()
    ctx.log(f"scale: a job's start-up (Python + imports) costs {startup:.2f} CPU s")
    runs = [r for minutes in ctx.scale_minutes for r in _sorted(ctx, 384, minutes)]
    if ctx.wide_minutes > 0:
        runs += _sorted(ctx, 1024, ctx.wide_minutes)
    overhead = [
        {
            "recording": r["recording"],
            "n_jobs": r["n_jobs"],
            "cpu_s": r["cpu_s"],
            "startup_cpu_s": r["n_jobs"] * startup,
            "startup_share_of_cpu": r["n_jobs"] * startup / r["cpu_s"],
            "dry_run_s": r["dry_run_s"],
            "outside_jobs_share": r["outside_jobs_share"],
        }
        for r in runs
    ]
    growth = []
    base = next((r for r in runs if r["n_channels"] == 384), None)
    for r in runs:
        if base is None or r["n_channels"] != base["n_channels"]:
            continue
        scale = r["duration_s"] / base["duration_s"]
        growth.append(
            {
                "recording": r["recording"],
                "duration_x": scale,
                "wall_x": r["wall_s"] / base["wall_s"],
                "cpu_x": r["cpu_s"] / base["cpu_s"],
                "jobs_x": r["n_jobs"] / base["n_jobs"],
                "max_rss_chunk_jobs_MB": r["max_rss_chunk_jobs_MB"],
                "max_rss_any_job_MB": r["max_rss_any_job_MB"],
                "modelled_peak_MB": r["modelled_peak_MB"],
            }
        )
    tables = [
        Table(
            "scale_time",
            "Sort wall time versus size (`snakemake --cores 2`)",
            [timing_row(r) for r in runs],
            note="Linear in duration means wall/duration and cpu/duration stay "
            "constant. See the sort section for the column definitions.",
        ),
        Table(
            "scale_growth",
            "Growth with duration (384 channels, relative to the shortest run)",
            growth,
            note="Memory should stay flat: the chunk length comes from the memory "
            "budget, not the duration.",
        ),
        Table(
            "scale_overhead",
            "Fixed per-job cost and Snakemake overhead",
            overhead,
            note=f"startup_cpu_s = n_jobs x {startup:.2f} s, the CPU time of "
            "starting Python and importing what a `filter` job imports "
            "(measured here); dry_run_s: `snakemake -n` planning time; "
            "outside_jobs_share: wall time not explained by the jobs.",
        ),
        Table(
            "scale_memory",
            "Peak memory of per-chunk jobs versus the plan",
            [row for r in runs for row in memory_rows(r)],
        ),
        Table(
            "scale_rules",
            "Where the time goes (per rule)",
            [row for r in runs for row in rule_rows(r)],
        ),
        Table(
            "scale_accuracy",
            "Sort accuracy of the scale recordings",
            [accuracy_row(r) for r in runs if "accuracy" in r],
        ),
    ]
    return tables + error_table(ctx, "scale")
