"""Profile per stage and parallel efficiency (issue 16, items 1 and 4).

One generated Neuropixels-like recording (384 channels x 1 min; ``--quick``:
64 channels x 20 s) is sorted with the defaults at ``--cores 2`` and then
``--cores 1`` (fresh runs, one after the other; the load average of each is
reported). From the rules' ``benchmark:`` files of the ``--cores 2`` run:

* **per stage** (rule): jobs, job seconds and CPU seconds, per second of
  recording, CPU / wall of its jobs (below 1: waiting for I/O or for a core on
  a loaded machine), the Python start-up its jobs pay (jobs x the measured
  start-up of one job), and the stage's **physical floor**: bytes it must read
  and write and floating-point operations it must do, each turned into seconds
  with rates measured on this machine in the same run (memory copy bandwidth,
  single-core float32 matrix product). How each floor is estimated is in
  :func:`stage_floors`.
* **parallel efficiency**: wall of ``--cores 1`` / wall of ``--cores 2``, and a
  projection for 1, 2, 16 and 64 cores: the job graph (``snakemake
  --detailed-summary`` of the finished run: each job's rule, outputs and
  inputs) with each job's measured duration, the critical path through the
  serial global jobs, and a list-scheduling simulation (a ready job with the
  longest path to the end first) plus the measured planning time (dry run).
"""

from __future__ import annotations

import csv
import heapq
import io
import math
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench_plan import FILTER_JOB_IMPORTS
from benchlib import (
    REPO,
    Context,
    JobStats,
    Table,
    generate_recording,
    load_average,
    plan_for,
    run_snakemake,
    single_thread_env,
    snakemake_cmd,
    timed_run,
    write_table,
)

#: Cores of the projection.
PROJECTED_CORES = (1, 2, 16, 64)
#: Global (one job per recording) rules on the sort's path: the serial part.
GLOBAL_RULES = (
    "noise_stats", "whitening", "feature_basis", "merge_spikes", "merge_clusters",
    "templates", "motion", "merge_units", "metrics", "export_phy", "export_nwb",
    "ground_truth",
)
#: Floating-point operations per sample and channel of the kernels with a
#: simple count (see stage_floors).
FILTER_FLOPS_PER_VALUE = 60
PREPROCESS_FLOPS_PER_VALUE = 8
DETECT_FLOPS_PER_VALUE = 4
CORRECT_FLOPS_PER_VALUE = 6
#: Import sets of a no-op job, timed in fresh interpreters (CPU and wall).
STARTUP_COMMANDS = {
    "python -c pass": "pass",
    "filter job imports": FILTER_JOB_IMPORTS,
    "deconvolve job imports (numba)": FILTER_JOB_IMPORTS
    + "; import shardsort.deconvolve, shardsort.detect, h5py",
}


# ---------------------------------------------------------------------------
# Rates of this machine
# ---------------------------------------------------------------------------


def machine_rates() -> dict:
    """Memory copy bandwidth (bytes/s) and single-core float32 GFLOP/s (best of 3)."""
    a = np.ones(2**26, np.float32)  # 256 MB
    b = np.empty_like(a)
    copy = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(b, a)
        copy.append(time.perf_counter() - t0)
    m = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    mm = []
    for _ in range(3):
        t0 = time.perf_counter()
        m @ m
        mm.append(time.perf_counter() - t0)
    return {
        # a copy reads and writes every byte
        "memory_bytes_per_s": 2 * a.nbytes / min(copy),
        "flops_per_s": 2 * 1024**3 / min(mm),
    }


def startup_rows(repeats: int = 3) -> list[dict]:
    """CPU and wall seconds of fresh interpreters doing only the imports (best of ``repeats``)."""
    rows = []
    for name, code in STARTUP_COMMANDS.items():
        runs = [timed_run([sys.executable, "-c", code], cwd=REPO) for _ in range(repeats)]
        best = min(runs, key=lambda r: r.cpu_s)
        rows.append(
            {
                "what": name,
                "cpu_s": best.cpu_s,
                "wall_s": min(r.wall_s for r in runs),
                "load_avg": best.load_before,
            }
        )
    return rows


# ---------------------------------------------------------------------------
# Floors
# ---------------------------------------------------------------------------


def stage_floors(plan, config: dict, n_units: int, n_spikes: int, segments_samples: int,
                 rates: dict) -> dict[str, dict]:
    """Bytes and FLOPs each per-chunk stage cannot avoid, and the seconds they take.

    Values ``V = n_samples x n_channels``; ``b`` bytes per preprocessed value
    (``preprocess.output_dtype``). Bytes count each array once (margins and the
    neighbouring chunks read for them not counted; small outputs such as
    detections not counted): a lower bound.

    * filter: reads ``2 V`` (int16 raw), writes ``4 V`` (float32); 60 FLOPs per
      value (3rd-order Butterworth band-pass = 3 biquads of 9 FLOPs, forward
      and backward: 54, rounded);
    * filter_noise_sample: the same on the noise segments;
    * preprocess: reads ``4 V``, writes ``b V``; ~8 FLOPs per value (median
      across channels by selection ~3 comparisons, subtract, scale, round);
    * motion_peaks: reads ``b V``; ~4 FLOPs per value (threshold, local max);
    * correct: reads and writes ``b V``; ~6 FLOPs per value (interpolation from
      two neighbouring channels);
    * detect: reads ``b V``; ~4 FLOPs per value;
    * template_sums: reads ``b V``; adds ``min(spikes, 1000 per unit) x T x
      n_channels`` values (``T`` template samples);
    * deconvolve: reads ``b V``; the initial objective of every unit's rank-R
      template on every sample, ``V/n_channels x n_units x R x (2 x 8 + 2 x T)``
      FLOPs (spatial projection on ~8 channels of a sparse template and a
      temporal correlation of T taps, multiply-add);
    * global jobs (one per recording): small files; their floor is 0.

    Seconds = bytes / memory copy bandwidth + FLOPs / single-core float32
    matrix-product rate (both measured here): a floor the data already in
    the page cache and perfectly vectorised code would approach.
    """
    v = plan.n_samples * plan.n_channels
    b = 2 if config["preprocess"]["output_dtype"] == "int16" else 4
    rate = plan.sampling_rate_hz
    t = int(round((config["detect"]["ms_before"] + config["detect"]["ms_after"]) * rate / 1e3))
    rank = 5
    seg = segments_samples * plan.n_channels
    floors = {
        "filter": (6 * v, FILTER_FLOPS_PER_VALUE * v),
        "filter_noise_sample": (6 * seg, FILTER_FLOPS_PER_VALUE * seg),
        "preprocess": ((4 + b) * v, PREPROCESS_FLOPS_PER_VALUE * v),
        "motion_peaks": (b * v, DETECT_FLOPS_PER_VALUE * v),
        "correct": (2 * b * v, CORRECT_FLOPS_PER_VALUE * v),
        "detect": (b * v, DETECT_FLOPS_PER_VALUE * v),
        "template_sums": (
            b * v,
            min(n_spikes, 1000 * max(n_units, 1)) * t * plan.n_channels,
        ),
        "deconvolve": (b * v, plan.n_samples * n_units * rank * (2 * 8 + 2 * t)),
    }
    out = {}
    for rule, (nbytes, flops) in floors.items():
        out[rule] = {
            "floor_MB": nbytes / 1e6,
            "floor_GFLOP": flops / 1e9,
            "floor_s": nbytes / rates["memory_bytes_per_s"] + flops / rates["flops_per_s"],
        }
    return out


# ---------------------------------------------------------------------------
# Job graph and schedule
# ---------------------------------------------------------------------------


def job_graph(workdir: Path, table: Path) -> tuple[dict, dict]:
    """Jobs of a finished run from ``--detailed-summary``: ``{job: (rule, log)}``
    and ``{job: set of jobs it waits for}``; a job is named by its first output."""
    cmd = snakemake_cmd(workdir, table, "--detailed-summary", "--quiet", "all")
    proc = subprocess.run(
        cmd, cwd=workdir, env=single_thread_env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake --detailed-summary failed: {proc.stderr[-2000:]}")
    rows = list(csv.DictReader(io.StringIO(proc.stdout), delimiter="\t"))
    producer: dict[str, str] = {}
    jobs: dict[str, tuple[str, str]] = {}
    inputs: dict[str, list[str]] = {}
    for row in rows:
        rule, log = row.get("rule", "-"), row.get("log-file(s)", "-")
        if rule in ("-", "", None):
            continue
        key = f"{rule}:{log}" if log not in ("-", "") else f"{rule}:{row['output_file']}"
        producer[row["output_file"]] = key
        jobs.setdefault(key, (rule, log))
        inputs.setdefault(key, (row.get("input-file(s)") or "").split(","))
    deps = {
        key: {producer[i] for i in files if i in producer and producer[i] != key}
        for key, files in inputs.items()
    }
    return jobs, deps


def job_seconds(workdir: Path, jobs: dict, column: str) -> dict[str, float]:
    """Each job's ``column`` (``s`` or ``cpu_time``) from its benchmark file."""
    out = {}
    for key, (_rule, log) in jobs.items():
        value = 0.0
        if log not in ("-", ""):
            bench = workdir / log.replace("/logs/", "/benchmarks/").removesuffix(".log")
            path = Path(f"{bench}.tsv")
            if path.exists():
                with open(path, encoding="utf-8") as handle:
                    rows = list(csv.DictReader(handle, delimiter="\t"))
                if rows:
                    try:
                        value = float(rows[-1][column])
                    except (TypeError, ValueError):
                        value = 0.0
        out[key] = value
    return out


def critical_path(deps: dict, seconds: dict) -> tuple[float, list[str]]:
    """Longest path (sum of job seconds) through the graph and its jobs."""
    order = _topological(deps)
    best: dict[str, tuple[float, str | None]] = {}
    for job in order:
        before = max(((best[d][0], d) for d in deps[job]), default=(0.0, None))
        best[job] = (before[0] + seconds[job], before[1])
    end = max(best, key=lambda j: best[j][0])
    path, job = [], end
    while job is not None:
        path.append(job)
        job = best[job][1]
    return best[end][0], path[::-1]


def _topological(deps: dict) -> list[str]:
    indegree = {j: len(d) for j, d in deps.items()}
    users = defaultdict(list)
    for job, before in deps.items():
        for d in before:
            users[d].append(job)
    ready = sorted(j for j, n in indegree.items() if n == 0)
    order = []
    while ready:
        job = ready.pop()
        order.append(job)
        for u in users[job]:
            indegree[u] -= 1
            if indegree[u] == 0:
                ready.append(u)
    return order


def simulate(deps: dict, seconds: dict, cores: int) -> float:
    """Makespan of list scheduling on ``cores`` (longest remaining path first)."""
    users = defaultdict(list)
    for job, before in deps.items():
        for d in before:
            users[d].append(job)
    # remaining path length from each job to the end
    tail: dict[str, float] = {}
    for job in reversed(_topological(deps)):
        tail[job] = seconds[job] + max((tail[u] for u in users[job]), default=0.0)
    waiting = {j: len(d) for j, d in deps.items()}
    ready = [(-tail[j], j) for j, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now, free = 0.0, cores
    while ready or running:
        while ready and free:
            _, job = heapq.heappop(ready)
            heapq.heappush(running, (now + seconds[job], job))
            free -= 1
        now, job = heapq.heappop(running)
        free += 1
        for u in users[job]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (-tail[u], u))
    return now


# ---------------------------------------------------------------------------
# The section
# ---------------------------------------------------------------------------


def _sort(ctx: Context, recording, table: Path, cores: int) -> tuple[Path, object]:
    workdir = ctx.work / "profile" / f"{recording.name}_cores{cores}"
    shutil.rmtree(workdir, ignore_errors=True)
    ctx.log(f"profile: sorting {recording.name} with --cores {cores}")
    run = run_snakemake(workdir, table, cores=cores, log_name=f"cores{cores}")
    return workdir, run


def _n_units_spikes(results: Path) -> tuple[int, int]:
    import h5py

    with h5py.File(results / "sorting.h5", "r") as f:
        n_spikes = len(f["spikes"])
        n_units = int(f["templates"].shape[0]) if "templates" in f else 0
    return n_units, n_spikes


def _stage_rows(ctx: Context, recording, work: Path, plan, rates: dict,
                script_startup: float) -> tuple[list[dict], int]:
    """Per-stage rows (and the sort's unit count) from a sort's benchmark files."""
    results = work / "results" / recording.name
    stats = JobStats.read(results / "benchmarks")
    n_units, n_spikes = _n_units_spikes(results)

    segments = ctx.config["preprocess"]["noise_sample_chunks"] * 2.0 * plan.sampling_rate_hz
    floors = stage_floors(plan, ctx.config, n_units, n_spikes, int(segments), rates)
    duration = recording.duration_s

    stage_rows = []
    for entry in stats.by_rule():
        rule = entry["rule"]
        floor = floors.get(rule, {"floor_MB": 0.0, "floor_GFLOP": 0.0, "floor_s": 0.0})
        startup_s = entry["n_jobs"] * script_startup
        stage_rows.append(
            {
                "stage": rule,
                "n_jobs": entry["n_jobs"],
                "job_s": entry["sum_s"],
                "cpu_s": entry["sum_cpu_s"],
                "job_s_per_rec_s": entry["sum_s"] / duration,
                "cpu_s_per_rec_s": entry["sum_cpu_s"] / duration,
                "cpu/wall": entry["sum_cpu_s"] / entry["sum_s"] if entry["sum_s"] else math.nan,
                "startup_cpu_s": startup_s,
                "startup_share": startup_s / entry["sum_cpu_s"] if entry["sum_cpu_s"] else math.nan,
                "floor_MB": floor["floor_MB"],
                "floor_GFLOP": floor["floor_GFLOP"],
                "floor_s": floor["floor_s"],
                "cpu/floor": entry["sum_cpu_s"] / floor["floor_s"] if floor["floor_s"] else math.nan,
                "max_rss_MB": entry["max_rss_mb"],
            }
        )
    total_cpu = stats.total_cpu_s
    stage_rows.append(
        {
            "stage": "all jobs",
            "n_jobs": len(stats.jobs),
            "job_s": stats.total_s,
            "cpu_s": total_cpu,
            "job_s_per_rec_s": stats.total_s / duration,
            "cpu_s_per_rec_s": total_cpu / duration,
            "cpu/wall": total_cpu / stats.total_s,
            "startup_cpu_s": len(stats.jobs) * script_startup,
            "startup_share": len(stats.jobs) * script_startup / total_cpu,
            "floor_MB": sum(f["floor_MB"] for f in floors.values()),
            "floor_GFLOP": sum(f["floor_GFLOP"] for f in floors.values()),
            "floor_s": sum(f["floor_s"] for f in floors.values()),
            "cpu/floor": total_cpu / sum(f["floor_s"] for f in floors.values()),
            "max_rss_MB": stats.max_rss(),
        }
    )

    return stage_rows, n_units


def run(ctx: Context) -> list[Table]:
    n_channels, seconds = (64, 20.0) if ctx.quick else (384, 60.0)
    rates = machine_rates()
    startup = startup_rows()
    script_startup = next(r for r in startup if r["what"] == "filter job imports")["cpu_s"]
    ctx.log(f"profile: rates {rates}, start-up {startup}")
    recording = generate_recording(
        ctx.data, f"np_{n_channels}ch_{seconds:g}s", n_channels=n_channels,
        duration_s=seconds, n_units=n_channels // 4, seed=3,
    )
    folder = ctx.work / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    table = write_table(folder / f"{recording.name}.tsv", [recording])
    plan = plan_for(recording, ctx.config)
    try:
        work2, run2 = _sort(ctx, recording, table, 2)
        dry = run_snakemake(work2, table, "-n", "--forceall", "--quiet", "rules",
                            log_name="dryrun")
        work1, run1 = _sort(ctx, recording, table, 1)
        # the recordings table must still point to the raw file
        jobs, deps = job_graph(work2, table)
    finally:
        if not ctx.keep_data:
            shutil.rmtree(ctx.data / recording.name, ignore_errors=True)
    stage_rows, n_units = _stage_rows(ctx, recording, work2, plan, rates, script_startup)
    duration = recording.duration_s
    wide_rows, wide_title = [], ""
    if not ctx.quick:  # the same table at 1,024 channels (--cores 2 only)
        wide = generate_recording(
            ctx.data, "np_1024ch_30s", n_channels=1024, duration_s=30.0, n_units=256, seed=3,
        )
        wide_table = write_table(folder / f"{wide.name}.tsv", [wide])
        wide_plan = plan_for(wide, ctx.config)
        try:
            wide_work, wide_run = _sort(ctx, wide, wide_table, 2)
        finally:
            if not ctx.keep_data:
                shutil.rmtree(ctx.data / wide.name, ignore_errors=True)
        wide_rows, wide_units = _stage_rows(ctx, wide, wide_work, wide_plan, rates,
                                            script_startup)
        wide_title = (
            f"{wide.name} ({wide_plan.n_chunks} chunks of "
            f"{wide_plan.chunk_samples / wide_plan.sampling_rate_hz:g} s, {wide_units} units, "
            f"`--cores 2`): wall {wide_run.wall_s:.1f} s = "
            f"{wide_run.wall_s / wide.duration_s:.2f} x real time, "
            f"{wide_run.cpu_s:.0f} CPU-s"
        )

    projections = []
    for column in ("cpu_time", "s"):
        secs = job_seconds(work2, jobs, column)
        path_s, path = critical_path(deps, secs)
        serial = sum(v for k, v in secs.items() if jobs[k][0] in GLOBAL_RULES)
        total = sum(secs.values())
        row = {
            "job_duration": column,
            "n_jobs": len(jobs),
            "sum_job_s": total,
            "global_jobs_s": serial,
            "critical_path_s": path_s,
            "critical_path_jobs": len(path),
            "planning_s": dry.wall_s,
        }
        for cores in PROJECTED_CORES:
            makespan = simulate(deps, secs, cores)
            row[f"wall_{cores}c_s"] = dry.wall_s + makespan
            row[f"speedup_{cores}c"] = (dry.wall_s + simulate(deps, secs, 1)) / (
                dry.wall_s + makespan
            )
        row["max_speedup"] = (dry.wall_s + total) / (dry.wall_s + path_s)
        projections.append(row)
        ctx.log(f"profile: critical path ({column}) " + " -> ".join(
            sorted({jobs[j][0] for j in path}, key=lambda r: path.index(
                next(j for j in path if jobs[j][0] == r)))))

    measured = [
        {
            "cores": cores,
            "wall_s": r.wall_s,
            "cpu_s": r.cpu_s,
            "wall/rec_s": r.wall_s / duration,
            "load_avg": (r.load_before + r.load_after) / 2,
        }
        for cores, r in ((1, run1), (2, run2))
    ]
    measured.append(
        {
            "cores": "1/2 ratio",
            "wall_s": run1.wall_s / run2.wall_s,
            "cpu_s": run1.cpu_s / run2.cpu_s,
            "wall/rec_s": math.nan,
            "load_avg": math.nan,
        }
    )
    note_load = f"load average {load_average():.1f} at the end on {os.cpu_count()} CPUs"
    tables = [
        Table(
            "profile",
            f"Where the time goes per stage: {recording.name} "
            f"({plan.n_chunks} chunks of {plan.chunk_samples / plan.sampling_rate_hz:g} s, "
            f"{n_units} units, `--cores 2`)",
            stage_rows,
            note="job_s: sum of the jobs' wall seconds (benchmark files), cpu_s their CPU; "
            "per_rec_s: per second of recording; cpu/wall below 1: the jobs waited (I/O, "
            "or a core on a loaded machine); startup_cpu_s = n_jobs x "
            f"{script_startup:.2f} s (CPU of a fresh interpreter importing what a filter job "
            "imports, measured here); floor_s = floor_MB / memory copy bandwidth "
            f"({rates['memory_bytes_per_s'] / 1e9:.1f} GB/s) + floor_GFLOP / single-core "
            f"float32 matmul ({rates['flops_per_s'] / 1e9:.1f} GFLOP/s), see "
            f"bench_profile.stage_floors; cpu/floor: how far each stage is from it. "
            f"{note_load}.",
        ),
        *([Table(
            "profile_1024",
            f"Where the time goes per stage: {wide_title}",
            wide_rows,
            note="columns as above; floors from the same machine rates.",
        )] if wide_rows else []),
        Table(
            "profile_startup",
            "Fixed cost of a job: fresh interpreters doing only the imports",
            startup,
            note="best of 3; a `script:` job adds Snakemake's preamble "
            "(in 'filter job imports') and the numba compile-cache load on first call.",
        ),
        Table(
            "profile_cores",
            "The same sort at --cores 1 and --cores 2 (measured, one after the other)",
            measured,
            note="wall and CPU of the whole snakemake process tree; on a shared machine "
            "the ratio is bounded by the free cores (see load_avg).",
        ),
        Table(
            "profile_projection",
            "Projected wall time on N cores from the job graph",
            projections,
            note="Job graph from `snakemake --detailed-summary` of the --cores 2 run; each "
            "job's duration is its benchmark file's cpu_time (CPU-bound estimate, not "
            "stretched by other users) or s (wall, as measured under this load); list "
            "scheduling with the longest remaining path first; wall = planning (dry run) "
            "+ makespan, Snakemake's per-job dispatch not included. global_jobs_s: the "
            f"one-per-recording jobs ({', '.join(GLOBAL_RULES)}); max_speedup: "
            "(planning + all jobs) / (planning + critical path).",
        ),
    ]
    ctx.results.mkdir(parents=True, exist_ok=True)
    (ctx.results / "profile.md").write_text(
        "# Profile per stage and parallel efficiency\n\n"
        + "\n".join(t.markdown() for t in tables)
    )
    return tables
