"""Planning cost: dry runs of large recordings and the fixed cost of one job.

A dry run (``snakemake -n``) reads no data, so each recording is a sparse file
of the right size. For every size: the number of jobs the shard plan makes,
the planning time, and the CPU time the jobs would spend just starting Python
and importing their modules (``n_jobs`` times the measured start-up cost of
one job), which does not depend on how much data a job processes.
"""

from __future__ import annotations

import shutil
import sys

from benchlib import (
    REPO,
    Context,
    Table,
    dry_run_jobs,
    modelled_peak,
    plan_for,
    run_snakemake,
    sparse_recording,
    timed_run,
    write_table,
)

#: (channels, minutes) planned by the full and the quick run.
FULL_SIZES = ((384, 2.0), (384, 5.0), (384, 10.0), (1024, 1.0), (384, 60.0))
QUICK_SIZES = ((384, 1.0), (1024, 0.25))
#: What a `filter` job imports before it does any work: Snakemake's script
#: preamble and the modules of scripts/filter.py.
FILTER_JOB_IMPORTS = (
    "import pickle; from snakemake.logging import logger; "
    "from snakemake.iocontainers import Snakemake; import shardsort.preprocess, "
    "shardsort.io.arrays, shardsort.jobs, shardsort.recordings"
)


def job_startup_cpu_s(repeats: int = 3) -> float:
    """CPU seconds a job spends starting Python and importing (best of ``repeats``)."""
    cmd = [sys.executable, "-c", FILTER_JOB_IMPORTS]
    return min(timed_run(cmd, cwd=REPO).cpu_s for _ in range(repeats))


def dry_run(ctx: Context, n_channels: int, minutes: float, startup_s: float) -> dict:
    """Plan (dry run) a recording of ``minutes`` stored as a sparse file."""
    folder = ctx.work / "sparse"
    recording = sparse_recording(
        folder,
        f"np_{n_channels}ch_{minutes:g}min",
        n_channels=n_channels,
        duration_s=60.0 * minutes,
    )
    workdir = folder / recording.name
    try:
        shutil.rmtree(workdir, ignore_errors=True)
        table = write_table(workdir / "recordings.tsv", [recording])
        ctx.log(f"plan: dry run of {recording.name} ({recording.raw_mb / 1e3:.1f} GB)")
        dry = run_snakemake(workdir, table, "-n", "--quiet", "rules", log_name="dryrun")
    finally:
        recording.path.unlink(missing_ok=True)
    plan = plan_for(recording, ctx.config)
    n_jobs = dry_run_jobs(dry)
    return {
        "recording": recording.name,
        "n_channels": n_channels,
        "duration_s": recording.duration_s,
        "raw_GB": recording.raw_mb / 1e3,
        "chunk_s": plan.chunk_samples / recording.sampling_rate_hz,
        "n_chunks": plan.n_chunks,
        "n_jobs": n_jobs,
        "dry_run_s": dry.wall_s,
        "dry_run_cpu_s": dry.cpu_s,
        "ms_per_job_cpu": 1e3 * dry.cpu_s / max(1, n_jobs),
        "startup_cpu_s": n_jobs * startup_s,
        "startup_cpu/duration": n_jobs * startup_s / recording.duration_s,
        "modelled_peak_MB": modelled_peak(plan),
        "load_avg": (dry.load_before + dry.load_after) / 2,
    }


def run(ctx: Context) -> list[Table]:
    startup = job_startup_cpu_s()
    ctx.log(f"plan: a job's start-up (Python + imports) costs {startup:.2f} CPU s")
    sizes = QUICK_SIZES if ctx.quick else FULL_SIZES
    rows = [dry_run(ctx, n, minutes, startup) for n, minutes in sizes]
    return [
        Table(
            "plan_dry_runs",
            "DAG planning (dry run) and fixed job cost of large recordings",
            rows,
            note="`snakemake -n --quiet rules --cores 2` on sparse int16 files; "
            "dry_run_s includes Snakemake start-up, config validation, shard "
            f"plan and DAG. startup_cpu_s = n_jobs x {startup:.2f} s (CPU time "
            "of starting Python and importing what a `filter` job imports, "
            "measured here); startup_cpu/duration > 2 means 2 cores cannot "
            "keep up with real time on start-up alone.",
        )
    ]
