"""Long recordings (issue 17): time, memory, disk and Snakemake overhead versus duration.

For one probe (``--probe 384``: Neuropixels-like 384 channels, 150 units;
``--probe 64``: 64 channels, 40 units) and a list of durations
(``--minutes 2,5,15``), each recording is generated with a slow linear drift
(``drift_um`` 20 um over the whole recording, so drift correction runs; the
generator renders it to disk in pieces, never the whole array in memory) and
sorted with the defaults (``snakemake --cores 2``, fresh folder), one after
the other. Before generating, the free disk must hold the raw file plus
``--disk-factor`` (1.0) x raw for the sort plus a margin (2 GB + 5 % of raw);
otherwise the longest duration that fits is used and the table says so.

During each sort a thread samples every second the apparent size of
``results/<recording>`` (hard-linked files counted once) and the CPU time and
RSS of the snakemake main process alone (psutil); the output of Snakemake is
time-stamped line by line. Measured per run:

* ``wall/duration``, ``cpu/duration`` (CPU of the whole process tree,
  getrusage) and the load average;
* DAG build time: the wall time of a dry run (``snakemake -n``) of the same
  target, and in the real run the time from "Building DAG of jobs..." to the
  printed job table (``dag_s``) and from the start to the first job
  (``first_job_s``);
* Snakemake's share of the wall time, two ways: ``smk_cpu_share`` = CPU time of
  the main process / wall (its own work: DAG, scheduling, the benchmark
  threads polling the jobs, bookkeeping), and ``no_job_share`` = the fraction
  of the wall time during which no job was running (job intervals from the
  ``benchmark:`` files: end = file modification time, start = end - s), which
  counts start-up, DAG building and every gap between jobs;
  ``one_job_share`` is the fraction with exactly one job (one core idle);
* peak RSS of every rule (max over its jobs, ``max_rss`` of the benchmark
  files) against ``shards.max_memory_mb``; Snakemake samples a job's memory
  about once a second, so ``rss_reliable`` is false for rules whose longest job
  took under 1 s (their RSS is measured properly by the ``global_memory``
  section);
* peak disk as a multiple of the raw file, and the final size;
* accuracy against ground truth (``bench_sort.score_sorting``) and the drift
  range the workflow estimated.

Ratios are against the shortest run of the same probe. A projection to 2 h
fits each quantity linearly against duration (least squares over the runs of
the probe): peak RSS of every non-per-chunk rule (jobs that see the whole
recording; MB per minute and per million sorted spikes), wall/duration,
cpu/duration, peak disk x raw, dry-run time. ``--chunk-check`` sorts the
shortest recording (or ``--chunk-check-minutes``) again with a smaller
``shards.max_memory_mb`` (shorter chunks) and compares the spike trains.

Results (``long.csv``, ``long_rules.csv``, ``long_projection.csv``,
``long_checks.csv``, ``long_chunks.csv``, ``long.json``, ``long.md``) keep the
rows of other probes from earlier invocations, so ``--probe 384`` and
``--probe 64`` can be run one after the other. Run alone
(``python benchmarks/bench_long.py --probe 384 --minutes 2,5,15``) or as the
``long`` section of ``run_all.py`` (only with ``--only long``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np

from bench_sort import score_sorting
from benchlib import (
    CHUNK_RULES,
    Context,
    JobStats,
    Recording,
    Table,
    children_cpu_s,
    dry_run_jobs,
    generate_recording,
    load_average,
    plan_for,
    single_thread_env,
    snakemake_cmd,
    timed_run,
    write_table,
)

SAMPLE_S = 1.0
CORES = 2
SEED = 17
DRIFT_UM = 20.0
#: Ground-truth units per probe (others: a third of the channels).
UNITS = {384: 150, 64: 40}
PROJECTION_S = 7200.0
GLOBAL_LIMIT_MB = 1000.0
#: Done-when thresholds of issue 17.
WALL_TOLERANCE = 0.15
DISK_LIMIT_X_RAW = 1.0
DAG_LIMIT_S = 10.0
SMK_SHARE_LIMIT = 0.05
#: Rules whose longest job is shorter have unreliable max_rss (sampled ~1/s).
RSS_RELIABLE_S = 1.0
#: Disk margin on top of raw x (1 + factor).
MARGIN_BYTES = 2e9
MARGIN_FRACTION = 0.05
#: Default probes and durations of the section (run_all.py --only long).
DEFAULT_PLAN = ((384, (2.0, 5.0, 15.0)), (64, (10.0, 60.0)))
QUICK_PLAN = ((64, (0.5, 1.0)),)


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------


def concurrency_shares(
    intervals: list[tuple[float, float]], start: float, stop: float
) -> dict[str, float]:
    """Fractions of ``[start, stop]`` with no job and with exactly one job running.

    ``intervals`` are (start, end) times of jobs (same clock); parts outside
    the window are ignored.
    """
    if not stop > start:
        raise ValueError(f"stop must be > start, got start={start!r}, stop={stop!r}")
    events = []
    for lo, hi in intervals:
        lo, hi = max(lo, start), min(hi, stop)
        if hi > lo:
            events += [(lo, 1), (hi, -1)]
    events.sort()
    idle = one = 0.0
    running, last = 0, start
    for when, step in events:
        if running == 0:
            idle += when - last
        elif running == 1:
            one += when - last
        running, last = running + step, when
    idle += stop - last  # nothing runs after the last end
    total = stop - start
    return {"no_job_share": idle / total, "one_job_share": one / total}


def fitting_minutes(
    minutes: float,
    *,
    bytes_per_minute: float,
    free_bytes: float,
    factor: float = 1.0,
    margin_bytes: float = MARGIN_BYTES,
    margin_fraction: float = MARGIN_FRACTION,
) -> float:
    """The longest duration <= ``minutes`` whose raw file and sort fit in ``free_bytes``.

    Needed: raw x (1 + factor + margin_fraction) + margin_bytes. Shortened
    durations are rounded down to whole minutes (to 0.1 min under 1 min);
    0 when not even that fits.
    """
    per_minute = bytes_per_minute * (1.0 + factor + margin_fraction)
    if minutes * per_minute + margin_bytes <= free_bytes:
        return minutes
    longest = max(0.0, (free_bytes - margin_bytes) / per_minute)
    return math.floor(longest) if longest >= 1 else math.floor(longest * 10) / 10


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of ``y`` against ``x``; None if < 2 distinct x."""
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len({a for a, _ in pairs}) < 2:
        return None
    slope, intercept = np.polyfit([a for a, _ in pairs], [b for _, b in pairs], 1)
    return float(intercept), float(slope)


_CLUSTERS_LINE = re.compile(r"(\d+) clusters -> (\d+) kept -> (\d+) units after merging")


def templates_clusters(log_text: str) -> int | None:
    """Clusters the templates job received (its log's last summary line), or None."""
    found = _CLUSTERS_LINE.findall(log_text)
    return int(found[-1][0]) if found else None


def power_fit(x: list[float], y: list[float]) -> tuple[float, float] | None:
    """Least-squares ``y = a x**p`` on log-log axes: ``(a, p)``; None if < 2 distinct x."""
    pairs = [(a, b) for a, b in zip(x, y) if a > 0 and b > 0]
    fit = linear_fit([math.log(a) for a, _ in pairs], [math.log(b) for _, b in pairs])
    return None if fit is None else (math.exp(fit[0]), fit[1])


def compare_trains(a: np.ndarray, b: np.ndarray) -> dict:
    """Spike trains of two sortings (``sample_index``, ``unit_index``) compared."""
    same = len(a) == len(b) and all(
        np.array_equal(a[k], b[k]) for k in ("sample_index", "unit_index")
    )

    def keys(s: np.ndarray) -> np.ndarray:
        return s["sample_index"].astype(np.int64) * 100_000 + s["unit_index"]

    ka, kb = keys(a), keys(b)
    out = {
        "n_spikes_a": len(a),
        "n_spikes_b": len(b),
        "identical_trains": bool(same),
        "identical_bytes": a.dtype == b.dtype and a.tobytes() == b.tobytes(),
        "only_in_a": int(np.isin(ka, kb, invert=True).sum()),
        "only_in_b": int(np.isin(kb, ka, invert=True).sum()),
    }
    if same and "amplitude" in (a.dtype.names or ()):
        den = np.maximum(np.abs(a["amplitude"]), 1e-12)
        out["max_amplitude_rel_diff"] = float(
            np.max(np.abs(a["amplitude"] - b["amplitude"]) / den, initial=0.0)
        )
    return out


# ---------------------------------------------------------------------------
# One measured sort
# ---------------------------------------------------------------------------


def tree_bytes(folder: Path) -> tuple[int, dict[str, int]]:
    """Apparent size of the files under ``folder`` (hard links once), per top entry."""
    total, parts, seen = 0, {}, set()
    for root, _dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        top = rel.split(os.sep)[0] if rel != "." else None
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # a temp() file deleted while walking
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
            key = top or name
            parts[key] = parts.get(key, 0) + st.st_size
    return total, parts


def job_kind(job: str) -> str:
    """Kind of a job from its benchmark path below benchmarks/ (without .tsv).

    ``<rule>``: one job per recording ("global"); ``<rule>/g<n>``: one per
    channel group over the whole recording ("per-group"); anything else
    (``<rule>/t<n>`` chunks, ``filter_noise_sample/c<n>_s<n>`` samples):
    bounded by the chunk length ("per-chunk").
    """
    parts = job.split("/")
    if len(parts) == 1:
        return "global"
    return "per-group" if parts[-1][:1] == "g" and parts[-1][1:].isdigit() else "per-chunk"


def job_intervals(folder: Path) -> list[tuple[float, float]]:
    """(start, end) wall-clock times of the jobs from their ``benchmark:`` files."""
    intervals = []
    for path in folder.rglob("*.tsv"):
        lines = path.read_text().splitlines()
        if len(lines) < 2:
            continue
        try:
            seconds = float(lines[-1].split("\t")[0])
        except ValueError:
            continue
        end = path.stat().st_mtime
        intervals.append((end - seconds, end))
    return intervals


def traced_sort(workdir: Path, table: Path, name: str, configfiles=()) -> dict:
    """Run the sort, sampling disk and the main process; see the module docstring."""
    import psutil

    results = workdir / "results" / name
    cmd = snakemake_cmd(workdir, table, cores=CORES, configfiles=configfiles)
    env = single_thread_env()
    env["PYTHONUNBUFFERED"] = "1"
    peak = {"bytes": 0, "parts": {}, "at_s": 0.0, "main_cpu_s": 0.0, "main_rss_mb": 0.0}
    done = threading.Event()
    load_before, cpu0 = load_average(), children_cpu_s()
    t0_clock, t0 = time.time(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    main = psutil.Process(proc.pid)

    def sample() -> None:
        while not done.is_set():
            size, parts = tree_bytes(results) if results.is_dir() else (0, {})
            if size > peak["bytes"]:
                peak.update(bytes=size, parts=parts, at_s=time.perf_counter() - t0)
            try:
                cpu = main.cpu_times()
                peak["main_cpu_s"] = cpu.user + cpu.system
                peak["main_rss_mb"] = max(peak["main_rss_mb"], main.memory_info().rss / 2**20)
            except psutil.Error:  # exited (or a zombie on some systems)
                pass
            done.wait(SAMPLE_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    marks: dict[str, float] = {}
    with open(workdir / "snakemake.log", "w", encoding="utf-8") as log:
        for line in proc.stdout:
            now = time.perf_counter() - t0
            log.write(f"{now:9.2f} {line}")
            if "Building DAG of jobs" in line:
                marks.setdefault("dag_start_s", now)
            elif line.startswith("Job stats:"):
                marks.setdefault("dag_end_s", now)
    returncode = proc.wait()
    wall = time.perf_counter() - t0
    done.set()
    thread.join()
    if returncode != 0:
        raise RuntimeError(f"sort of {name} in {workdir} failed (see snakemake.log)")
    intervals = job_intervals(results / "benchmarks")
    shares = concurrency_shares(intervals, t0_clock, t0_clock + wall)
    final, final_parts = tree_bytes(results)
    return {
        "wall_s": wall,
        "cpu_s": children_cpu_s() - cpu0,
        "load_avg": (load_before + load_average()) / 2,
        "smk_main_cpu_s": peak["main_cpu_s"],
        "smk_main_peak_rss_MB": peak["main_rss_mb"],
        "startup_s": marks.get("dag_start_s", math.nan),
        "dag_s": marks.get("dag_end_s", math.nan) - marks.get("dag_start_s", math.nan),
        "first_job_s": min((lo for lo, _ in intervals), default=math.nan) - t0_clock,
        **shares,
        "peak_bytes": peak["bytes"],
        "peak_at_s": peak["at_s"],
        "peak_parts": dict(sorted(peak["parts"].items(), key=lambda kv: -kv[1])),
        "final_bytes": final,
        "final_parts": dict(sorted(final_parts.items(), key=lambda kv: -kv[1])),
    }


def _top(parts: dict, raw: float, n: int = 3) -> str:
    return ", ".join(f"{k} {v / raw:.2f}" for k, v in list(parts.items())[:n])


def _drift_range_um(results: Path) -> float:
    """Range of the displacement the workflow estimated (nan if not found)."""
    import csv

    path = results / "motion" / "displacement.tsv"
    if not path.exists():
        return math.nan
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    columns = [c for c in (rows[0] if rows else {}) if "displacement" in c]
    values = [float(r[c]) for r in rows for c in columns if r[c] not in ("", "nan")]
    return max(values) - min(values) if values else math.nan


def measure(ctx: Context, recording: Recording, workdir: Path, *,
            layer: dict | None = None, reuse: bool | None = None) -> dict:
    """Dry run, then the traced sort of ``recording`` in a fresh ``workdir``.

    With ``reuse`` (default ``ctx.reuse``) a measurement saved there is returned.
    """
    import yaml

    saved = workdir / "run.json"
    if (ctx.reuse if reuse is None else reuse) and saved.exists():
        ctx.log(f"long: reusing {saved}")
        return json.loads(saved.read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    table = write_table(workdir / "recordings.tsv", [recording])
    configfiles, config = (), ctx.config
    if layer:
        (workdir / "layer.yaml").write_text(yaml.safe_dump(layer))
        configfiles = (workdir / "layer.yaml",)
        config = {**ctx.config, "shards": {**ctx.config["shards"], **layer["shards"]}}
    dry = timed_run(snakemake_cmd(workdir, table, "-n", "--quiet", "rules", cores=CORES,
                                  configfiles=configfiles),
                    cwd=workdir, log=workdir / "dryrun.log")
    if dry.returncode != 0:
        raise RuntimeError(f"dry run of {recording.name} failed (see {workdir}/dryrun.log)")
    ctx.log(f"long: {recording.name}: {dry_run_jobs(dry)} jobs planned in {dry.wall_s:.1f} s"
            f"; sorting with --cores {CORES}")
    m = traced_sort(workdir, table, recording.name, configfiles)
    results = workdir / "results" / recording.name
    stats = JobStats.read(results / "benchmarks")
    plan = plan_for(recording, config)
    raw = recording.path.stat().st_size
    with h5py.File(results / "sorting.h5", "r") as f:
        n_spikes = len(f["spikes"])
    accuracy = score_sorting(recording, results / "sorting.h5", config)
    duration = recording.duration_s
    kinds = {j["rule"]: job_kind(j["job"]) for j in stats.jobs}
    out = {
        "probe": recording.n_channels,
        "recording": recording.name,
        "minutes": duration / 60,
        "raw_GB": raw / 1e9,
        "n_chunks": plan.n_chunks,
        "chunk_s": plan.chunk_samples / recording.sampling_rate_hz,
        "n_jobs": len(stats.jobs),
        "n_spikes": n_spikes,
        "wall_s": m["wall_s"],
        "wall/duration": m["wall_s"] / duration,
        "cpu/duration": m["cpu_s"] / duration,
        "load_avg": m["load_avg"],
        "dry_run_s": dry.wall_s,
        "startup_s": m["startup_s"],
        "dag_s": m["dag_s"],
        "first_job_s": m["first_job_s"],
        "smk_main_cpu_s": m["smk_main_cpu_s"],
        "smk_cpu_share": m["smk_main_cpu_s"] / m["wall_s"],
        "no_job_share": m["no_job_share"],
        "one_job_share": m["one_job_share"],
        "smk_main_peak_rss_MB": m["smk_main_peak_rss_MB"],
        "max_rss_job_MB": stats.max_rss(),
        "max_rss_chunk_job_MB": stats.max_rss(CHUNK_RULES),
        "budget_MB": config["shards"]["max_memory_mb"],
        "peak_disk_GB": m["peak_bytes"] / 1e9,
        "peak_disk_x_raw": m["peak_bytes"] / raw,
        "peak_at_s": m["peak_at_s"],
        "at_peak_x_raw": _top(m["peak_parts"], raw),
        "final_x_raw": m["final_bytes"] / raw,
        "n_clusters": _clusters(results),
        "drift_true_um": DRIFT_UM,
        "drift_estimated_um": _drift_range_um(results),
        "gt_units": accuracy["n_gt_units"],
        "well_detected": accuracy["n_well_detected"],
        "mean_accuracy": accuracy["mean_accuracy"],
        "rules": [
            {
                "rule": r["rule"],
                "n_jobs": r["n_jobs"],
                "max_job_s": r["max_s"],
                "sum_s": r["sum_s"],
                "max_rss_MB": r["max_rss_mb"],
                "rss_reliable": r["max_s"] >= RSS_RELIABLE_S,
                "kind": kinds[r["rule"]],
                "global": kinds[r["rule"]] != "per-chunk",
            }
            for r in stats.by_rule()
        ],
    }
    saved.write_text(json.dumps(out, indent=1, default=float))
    ctx.log(f"long: {recording.name}: wall {m['wall_s']:.0f} s "
            f"({out['wall/duration']:.2f} x duration), peak disk "
            f"{out['peak_disk_x_raw']:.2f} x raw, max job RSS {out['max_rss_job_MB']:.0f} MB")
    return out


def _clusters(results: Path) -> int | None:
    log = results / "logs" / "templates.log"
    return templates_clusters(log.read_text()) if log.exists() else None


def _spikes(workdir: Path, name: str) -> np.ndarray:
    with h5py.File(workdir / "results" / name / "sorting.h5", "r") as f:
        return f["spikes"][()]


def _tidy(workdir: Path, name: str) -> None:
    """Delete a measured sort's outputs; keep run.json, logs and benchmark files."""
    results = workdir / "results" / name
    keep = {"benchmarks", "logs", "ground_truth.tsv"}
    for entry in results.iterdir() if results.is_dir() else ():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.rmtree(workdir / ".snakemake", ignore_errors=True)


# ---------------------------------------------------------------------------
# One probe: generate, sort, measure
# ---------------------------------------------------------------------------


def measure_probe(ctx: Context, n_channels: int, minutes: tuple[float, ...], *,
                  disk_factor: float = 1.0, chunk_check: float | None = None,
                  chunk_mb: float | None = None) -> tuple[list[dict], list[dict]]:
    """Sort the probe at each duration; ``(runs, chunk_checks)``."""
    work = ctx.work / "long"
    work.mkdir(parents=True, exist_ok=True)
    ctx.data.mkdir(parents=True, exist_ok=True)
    bytes_per_minute = n_channels * 30000.0 * 60 * 2
    runs, checks, done = [], [], set()
    check_at = None if chunk_check is None else (chunk_check or min(minutes))
    for requested in sorted(minutes):
        name = f"long{n_channels}_{requested:g}min"
        existing = ctx.data / name / f"{name}.bin"
        free = shutil.disk_usage(ctx.work).free
        free += existing.stat().st_size if existing.exists() else 0
        used = fitting_minutes(requested, bytes_per_minute=bytes_per_minute,
                               free_bytes=free, factor=disk_factor)
        note = "" if used == requested else (
            f"requested {requested:g} min; {free / 1e9:.0f} GB free fits {used:g} min")
        if used <= 0 or used in done:
            ctx.log(f"long: {n_channels} ch {requested:g} min skipped ({note})")
            ctx.errors.append(f"long/{name}: skipped, {note}")
            continue
        done.add(used)
        name = f"long{n_channels}_{used:g}min"
        workdir = work / name
        check = requested == check_at
        saved = workdir / "run.json"
        if ctx.reuse and saved.exists() and not check:  # no recording needed
            ctx.log(f"long: reusing {saved}")
            run = json.loads(saved.read_text())
            if run.get("n_clusters") is None:  # saved before the count was recorded
                run["n_clusters"] = _clusters(workdir / "results" / name)
            runs.append(run)
            continue
        ctx.log(f"long: generating {name}" + (f" ({note})" if note else ""))
        t0 = time.perf_counter()
        recording = generate_recording(
            ctx.data, name, n_channels=n_channels, duration_s=60.0 * used,
            n_units=UNITS.get(n_channels, max(1, n_channels // 3)), seed=SEED,
            synth={"drift_um": DRIFT_UM},
        )
        generation_s = time.perf_counter() - t0
        # A reused sort's spike trains are gone: the check needs a fresh one.
        fresh = check and not _chunk_check_saved(workdir, chunk_mb, ctx)
        try:
            run = measure(ctx, recording, workdir, reuse=ctx.reuse and not fresh)
            run.update(requested_minutes=requested, disk_note=note,
                       generation_s=generation_s)
            saved.write_text(json.dumps(run, indent=1, default=float))
            runs.append(run)
            if check:
                checks.append(_chunk_check(ctx, recording, workdir, run, chunk_mb))
        except Exception as error:  # noqa: BLE001 - one failed size must not stop the rest
            ctx.errors.append(f"long/{name}: {error}")
            ctx.log(f"long: FAILED {name}: {error}")
        finally:
            if not ctx.keep_data:
                _tidy(workdir, name)
                shutil.rmtree(ctx.data / name, ignore_errors=True)
    return runs, checks


def _chunk_check_path(workdir: Path, chunk_mb: float | None, ctx: Context) -> Path:
    chunk_mb = chunk_mb or ctx.config["shards"]["max_memory_mb"] / 2
    return workdir.parent / f"{workdir.name}_mem{chunk_mb:g}" / "chunk_check.json"


def _chunk_check_saved(workdir: Path, chunk_mb: float | None, ctx: Context) -> bool:
    return ctx.reuse and _chunk_check_path(workdir, chunk_mb, ctx).exists()


def _chunk_check(ctx: Context, recording: Recording, workdir: Path, run: dict,
                 chunk_mb: float | None) -> dict:
    """Sort again with ``chunk_mb`` (default half the budget); compare spike trains."""
    saved = _chunk_check_path(workdir, chunk_mb, ctx)
    if _chunk_check_saved(workdir, chunk_mb, ctx):
        return json.loads(saved.read_text())
    budget = ctx.config["shards"]["max_memory_mb"]
    chunk_mb = chunk_mb or budget / 2
    other = saved.parent
    ctx.log(f"long: chunk check, {recording.name} with shards.max_memory_mb {chunk_mb:g}")
    try:
        second = measure(ctx, recording, other, layer={"shards": {"max_memory_mb": chunk_mb}},
                         reuse=False)
        comparison = compare_trains(_spikes(workdir, recording.name),
                                    _spikes(other, recording.name))
    finally:
        if not ctx.keep_data:
            _tidy(other, recording.name)
    out = {
        "probe": recording.n_channels,
        "recording": recording.name,
        "chunks": f"{run['n_chunks']} x {run['chunk_s']:.2f} s vs "
                  f"{second['n_chunks']} x {second['chunk_s']:.2f} s",
        "max_memory_mb": f"{budget:g} vs {chunk_mb:g}",
        **comparison,
        "accuracy": f"{run['mean_accuracy']:.3f} vs {second['mean_accuracy']:.3f}",
        "wall_s": f"{run['wall_s']:.0f} vs {second['wall_s']:.0f}",
    }
    saved.write_text(json.dumps(out, indent=1))
    return out


# ---------------------------------------------------------------------------
# Tables: runs, rules, projection, checks
# ---------------------------------------------------------------------------

RUN_COLUMNS = (
    "probe", "recording", "requested_minutes", "minutes", "disk_note", "raw_GB",
    "generation_s", "n_chunks", "chunk_s", "n_jobs", "n_spikes", "wall_s",
    "wall/duration", "cpu/duration", "load_avg", "dry_run_s", "startup_s", "dag_s", "first_job_s",
    "smk_main_cpu_s", "smk_cpu_share", "no_job_share", "one_job_share",
    "smk_main_peak_rss_MB", "max_rss_job_MB", "max_rss_chunk_job_MB", "budget_MB",
    "peak_disk_GB", "peak_disk_x_raw", "peak_at_s", "at_peak_x_raw", "final_x_raw",
    "drift_true_um", "drift_estimated_um", "gt_units", "well_detected", "mean_accuracy",
)
RATIO_KEYS = ("wall/duration", "cpu/duration", "peak_disk_x_raw", "max_rss_job_MB",
              "dry_run_s")


def run_rows(runs: list[dict]) -> list[dict]:
    """One row per run, with ratios against the shortest run of the same probe."""
    rows = []
    for run in sorted(runs, key=lambda r: (-r["probe"], r["minutes"])):
        base = min((r for r in runs if r["probe"] == run["probe"]), key=lambda r: r["minutes"])
        row = {k: run.get(k, "") for k in RUN_COLUMNS}
        for key in RATIO_KEYS:
            row[f"{key}_x"] = run[key] / base[key] if base[key] else math.nan
        rows.append(row)
    return rows


def rule_rows(runs: list[dict]) -> list[dict]:
    """Peak RSS of every rule of every run, against the budget and the shortest run."""
    rows = []
    for run in sorted(runs, key=lambda r: (-r["probe"], r["minutes"])):
        base = min((r for r in runs if r["probe"] == run["probe"]), key=lambda r: r["minutes"])
        base_rss = {r["rule"]: r["max_rss_MB"] for r in base["rules"]}
        for rule in sorted(run["rules"], key=lambda r: -r["max_rss_MB"]):
            rows.append({
                "probe": run["probe"],
                "recording": run["recording"],
                "minutes": run["minutes"],
                "rule": rule["rule"],
                "kind": rule["kind"],
                "n_jobs": rule["n_jobs"],
                "max_job_s": rule["max_job_s"],
                "sum_s": rule["sum_s"],
                "max_rss_MB": rule["max_rss_MB"],
                "rss_reliable": rule["rss_reliable"],
                "rss_x": rule["max_rss_MB"] / base_rss[rule["rule"]]
                if base_rss.get(rule["rule"]) else math.nan,
                "within_budget": rule["max_rss_MB"] <= run["budget_MB"],
            })
    return rows


def projection_rows(runs: list[dict], target_s: float = PROJECTION_S) -> list[dict]:
    """Linear fits against duration, evaluated at ``target_s``, per probe.

    Totals are fitted (wall and CPU seconds, peak disk bytes, dry-run seconds,
    jobs, peak RSS: ``a + b x minutes``) and the ratios derived from the
    projected totals (wall/duration at 2 h = projected wall / 7200 s). A
    projected peak RSS is never below the largest measured one (a fitted
    decrease is noise: no job needs less memory for more data).
    """
    rows = []
    target_min = target_s / 60
    for probe in sorted({r["probe"] for r in runs}, reverse=True):
        mine = sorted((r for r in runs if r["probe"] == probe), key=lambda r: r["minutes"])
        minutes = [r["minutes"] for r in mine]
        spikes_m = [r["n_spikes"] / 1e6 for r in mine]
        projected_spikes_m = float(np.mean([s / m for s, m in zip(spikes_m, minutes)])) * target_min
        target = f"{target_s / 3600:g} h x {probe} ch"
        raw_gb = probe * 30000.0 * target_s * 2 / 1e9

        def add(what, shown, totals, unit, kind, *, scale=1.0, floor=False, **extra):
            fit = linear_fit(minutes, totals)
            total = fit[0] + fit[1] * target_min if fit else math.nan
            if floor and fit:
                total = max(total, max(totals))
            rows.append({
                "probe": probe, "target": target, "what": what, "kind": kind,
                "measured": ", ".join(f"{m:g} min: {v:.3g}" for m, v in zip(minutes, shown)),
                "projected": total * scale, "unit": unit,
                "projected_spikes_M": projected_spikes_m, **extra,
            })
            return total * scale

        add("wall/duration", [r["wall/duration"] for r in mine],
            [r["wall/duration"] * r["minutes"] * 60 for r in mine], "x", "run",
            scale=1 / target_s)
        add("cpu/duration", [r["cpu/duration"] for r in mine],
            [r["cpu/duration"] * r["minutes"] * 60 for r in mine], "x", "run",
            scale=1 / target_s)
        x_raw = add("peak_disk_x_raw", [r["peak_disk_x_raw"] for r in mine],
                    [r["peak_disk_GB"] for r in mine], "x raw", "run", scale=1 / raw_gb)
        rows[-1]["note"] = f"{x_raw * raw_gb:.0f} GB of a {raw_gb:.0f} GB raw file"
        add("dry_run_s", [r["dry_run_s"] for r in mine], [r["dry_run_s"] for r in mine],
            "s", "run")
        add("n_jobs", [r["n_jobs"] for r in mine], [r["n_jobs"] for r in mine], "jobs", "run")
        add("smk_main_peak_rss_MB", [r["smk_main_peak_rss_MB"] for r in mine],
            [r["smk_main_peak_rss_MB"] for r in mine], "MB", "run", floor=True)
        rules = sorted({x["rule"] for r in mine for x in r["rules"] if x["global"]})
        for rule in rules:
            entries = [next((x for x in r["rules"] if x["rule"] == rule), None) for r in mine]
            values = [e["max_rss_MB"] if e else math.nan for e in entries]
            reliable = all(e is not None and e["rss_reliable"] for e in entries)
            per_spikes = linear_fit(spikes_m, values)
            kind = next(x["kind"] for r in mine for x in r["rules"] if x["rule"] == rule)
            projected = add(f"rule {rule}", values, values, "MB", f"{kind} rule RSS",
                            floor=True, rss_reliable=reliable, checked=reliable,
                            mb_per_million_spikes=per_spikes[1] if per_spikes else math.nan)
            rows[-1]["over_1GB"] = bool(projected > GLOBAL_LIMIT_MB)
            clusters = [r.get("n_clusters") for r in mine]
            if rule == "templates" and reliable and all(clusters):
                by_clusters = _templates_by_clusters(minutes, clusters, values, target_min)
                if by_clusters:
                    rows[-1]["checked"] = False
                    rows[-1]["note"] = "superseded by the cluster fit (next row)"
                    rows.append({
                        "probe": probe, "target": target, "what": "rule templates (clusters)",
                        "kind": f"{kind} rule RSS", "projected_spikes_M": projected_spikes_m,
                        "unit": "MB", "rss_reliable": True, "checked": True, **by_clusters,
                    })
                    rows[-1]["over_1GB"] = bool(rows[-1]["projected"] > GLOBAL_LIMIT_MB)
    return rows


def _templates_by_clusters(minutes: list[float], clusters: list[int], rss_mb: list[float],
                           target_min: float) -> dict | None:
    """The templates job's peak RSS projected through its cluster count.

    The job holds per-cluster templates and reads the spike table a block at
    a time, so its memory follows the clusters it receives, which grow slower
    than the recording: clusters are fitted as a power of the duration
    (log-log least squares), the RSS as a line in clusters.
    """
    growth = power_fit(minutes, [float(c) for c in clusters])
    per_cluster = linear_fit([float(c) for c in clusters], rss_mb)
    if growth is None or per_cluster is None:
        return None
    at_target = growth[0] * target_min ** growth[1]
    projected = max(per_cluster[0] + per_cluster[1] * at_target, max(rss_mb))
    return {
        "measured": ", ".join(f"{m:g} min: {v:.3g} MB at {c} clusters"
                              for m, c, v in zip(minutes, clusters, rss_mb)),
        "projected": projected,
        "projected_clusters": round(at_target),
        "cluster_growth_exponent": round(growth[1], 3),
        "mb_per_100_clusters": round(100 * per_cluster[1], 1),
        "note": f"clusters ~ duration^{growth[1]:.2f}: {at_target:.0f} at the target",
    }


def check_rows(runs: list[dict], rules: list[dict], projection: list[dict],
               chunks: list[dict]) -> list[dict]:
    """The done-when checks of issue 17, per probe."""
    rows = []

    def add(probe, check, value, passed, detail=""):
        rows.append({"probe": probe, "check": check, "value": value,
                     "pass": passed if isinstance(passed, str) else bool(passed),
                     "detail": detail})

    for probe in sorted({r["probe"] for r in runs}, reverse=True):
        mine = sorted((r for r in runs if r["probe"] == probe), key=lambda r: r["minutes"])
        longest = mine[-1]
        others = mine[:-1] or mine
        # The 5-min run, else the shortest one of at least 5 min, else the longest other.
        at_least_5 = [r for r in others if r["minutes"] >= 5.0]
        ref = min(at_least_5, key=lambda r: r["minutes"]) if at_least_5 else others[-1]
        drift = longest["wall/duration"] / ref["wall/duration"] - 1
        add(probe, f"wall/duration at {longest['minutes']:g} min within 15 % of "
            f"{ref['minutes']:g} min", drift, abs(drift) <= WALL_TOLERANCE,
            f"{longest['wall/duration']:.3f} vs {ref['wall/duration']:.3f} (load "
            f"{longest['load_avg']:.1f} vs {ref['load_avg']:.1f}); cpu/duration "
            f"{longest['cpu/duration']:.3f} vs {ref['cpu/duration']:.3f}")
        mine_rules = [r for r in rules if r["probe"] == probe]
        worst = max(mine_rules, key=lambda r: r["max_rss_MB"], default=None)
        if worst:
            budget = longest["budget_MB"]
            add(probe, f"every job's peak RSS <= shards.max_memory_mb ({budget:g} MB)",
                worst["max_rss_MB"], worst["max_rss_MB"] <= budget,
                f"largest: {worst['rule']} at {worst['minutes']:g} min")
        every = [p for p in projection
                 if p["probe"] == probe and p["kind"].endswith("rule RSS")]
        glob = [p for p in every if p.get("checked", p["rss_reliable"])]
        if glob:
            top = max(glob, key=lambda p: p["projected"] if math.isfinite(p["projected"]) else -1)
            unreliable = [p["what"].removeprefix("rule ") for p in every if not p["rss_reliable"]]
            add(probe, f"no global job above 1 GB at {top['target']}", top["projected"],
                "n/a (one duration)" if not math.isfinite(top["projected"])
                else top["projected"] <= GLOBAL_LIMIT_MB,
                f"largest: {top['what']}"
                + (f"; not judged here, jobs < 1 s (RSS sampled ~1/s; see the global_memory "
                   f"benchmark): {', '.join(unreliable)}" if unreliable else ""))
        disk = max(mine, key=lambda r: r["peak_disk_x_raw"])
        add(probe, "peak disk <= 1.0 x raw (defaults)", disk["peak_disk_x_raw"],
            disk["peak_disk_x_raw"] <= DISK_LIMIT_X_RAW, f"at {disk['minutes']:g} min")
        dag = max(mine, key=lambda r: r["dry_run_s"])
        in_run = max(r["dag_s"] for r in mine)
        add(probe, "DAG built in < 10 s (dry run; in-run DAG phase)", dag["dry_run_s"],
            dag["dry_run_s"] < DAG_LIMIT_S and in_run < DAG_LIMIT_S,
            f"dry run at {dag['minutes']:g} min; in-run 'Building DAG' to job table "
            f"max {in_run:.2f} s")
        for key, label in (("smk_cpu_share", "Snakemake main-process CPU / wall < 5 %"),
                           ("no_job_share", "wall time with no job running < 5 %")):
            # Judged on the long recording; shorter runs carry the fixed start-up
            # (Python, the Snakefile, the DAG: 2-3 s) over a short sort.
            add(probe, f"{label} (at {longest['minutes']:g} min)", longest[key],
                longest[key] < SMK_SHARE_LIMIT,
                "; ".join(f"{r['minutes']:g} min: {r[key]:.3f}" for r in mine))
    for c in chunks:
        add(c["probe"], f"identical spike trains for two chunk sizes ({c['recording']})",
            c["only_in_a"] + c["only_in_b"], c["identical_trains"],
            f"{c['chunks']}; spikes {c['n_spikes_a']} vs {c['n_spikes_b']}")
    return rows


NOTES = {
    "long": (
        f"`snakemake --cores {CORES}` with the defaults, fresh folder; drifting recordings "
        f"(linear {DRIFT_UM:g} um over the recording, seed {SEED}). wall/duration and "
        "cpu/duration (whole process tree, getrusage); load_avg: 1-min load around the run "
        "(2 cores: above 2 other work shared them). dry_run_s: `snakemake -n` of the same "
        "target; startup_s: start to 'Building DAG of jobs' (Python, imports, parsing the "
        "Snakefile); dag_s: from there to the printed job table (the DAG) in the real run; "
        "first_job_s: start to the first job's start. smk_cpu_share: CPU of the snakemake "
        "main process alone (psutil, sampled every 1 s) / wall; no_job_share / "
        "one_job_share: fraction of the wall time with no job / exactly one job running "
        "(job intervals from the benchmark files). peak_disk: apparent size of "
        "results/<recording> sampled every 1 s (raw file not counted, hard links once). "
        "*_x: ratio to the shortest run of the same probe. disk_note: a duration shortened "
        "to fit the free disk (raw + 1.0 x raw + 2 GB + 5 %)."
    ),
    "long_rules": (
        "max over the rule's jobs of max_rss (benchmark files, MB) against "
        "shards.max_memory_mb; rss_reliable false: the rule's longest job took < 1 s, "
        "which Snakemake's ~1 s memory sampling may miss entirely. rss_x: ratio to the "
        "shortest run of the probe. kind (from the benchmark file name): global (one job "
        "per recording), per-group (one per channel group, over the whole recording), "
        "per-chunk (bounded by the chunk length, which the budget sets)."
    ),
    "long_projection": (
        "Least-squares line of each total against duration over the probe's runs "
        "(wall s, CPU s, peak disk GB, dry-run s, jobs, peak RSS), evaluated at the target; "
        "ratios from the projected totals (wall/duration = projected wall / target "
        "duration). Peak RSS of global and per-group rules only (per-chunk jobs do not "
        "grow with the duration: see rss_x in long_rules), never projected below the "
        "largest measured; mb_per_million_spikes: its slope against sorted spikes; "
        "projected_spikes_M: sorted spikes per minute (mean) x target. A rule projected "
        "above 1 GB (1000 MB) fails the global-memory check; with rss_reliable false its "
        "numbers are noise and it is not judged (checked false; the global_memory section "
        "measures those jobs). The templates job's memory follows the clusters it receives "
        "(it reads the spike table a block at a time): 'rule templates (clusters)' fits the "
        "cluster count as a power of the duration and the RSS as a line in clusters, and is "
        "the row judged."
    ),
    "long_checks": "Done-when checks of issue 17 (per probe measured).",
    "long_chunks": (
        "The recording sorted again with a smaller shards.max_memory_mb (shorter chunks); "
        "identical_trains: same sample_index and unit_index for every spike; only_in_a/b: "
        "(sample, unit) pairs found by one sort only."
    ),
}


def _previous_rows(ctx: Context, probes: set[int]) -> dict[str, list[dict]]:
    """Rows of other probes from an earlier long.json (runs and chunk checks)."""
    path = ctx.results / "long.json"
    if not path.exists():
        return {}
    record = json.loads(path.read_text())
    return {key: [r for r in record.get(key, []) if r["probe"] not in probes]
            for key in ("runs", "chunk_checks")}


def run(ctx: Context, plan: tuple[tuple[int, tuple[float, ...]], ...] | None = None, *,
        disk_factor: float = 1.0, chunk_check: float | None = None,
        chunk_mb: float | None = None, record: dict | None = None) -> list[Table]:
    """``run_all.py`` section ``long``: measure each (probe, durations) of ``plan``.

    ``chunk_check``: the duration (min) sorted a second time with ``chunk_mb``
    (default half the budget); 0: the shortest; None: no check. ``record``
    receives the raw runs (saved in long.json).
    """
    plan = plan or (QUICK_PLAN if ctx.quick else DEFAULT_PLAN)
    previous = _previous_rows(ctx, {p for p, _ in plan})
    runs, chunks = list(previous.get("runs", [])), list(previous.get("chunk_checks", []))
    for probe, minutes in plan:
        new_runs, new_checks = measure_probe(ctx, probe, minutes, disk_factor=disk_factor,
                                             chunk_check=chunk_check, chunk_mb=chunk_mb)
        runs += new_runs
        chunks += new_checks
    if record is not None:
        record["runs"], record["chunk_checks"] = runs, chunks
    return tables_from(ctx, runs, chunks)


def tables_from(ctx: Context, runs: list[dict], chunks: list[dict]) -> list[Table]:
    """The section's tables (and long.md) from measured runs and chunk checks."""
    rules = rule_rows(runs)
    projection = projection_rows(runs)
    tables = [
        Table("long", "Long recordings: time, Snakemake overhead, memory, disk, accuracy",
              run_rows(runs), NOTES["long"]),
        Table("long_checks", "Done-when checks (issue 17)",
              check_rows(runs, rules, projection, chunks), NOTES["long_checks"]),
        Table("long_projection", f"Projection to {PROJECTION_S / 3600:g} h",
              projection, NOTES["long_projection"]),
        Table("long_rules", "Peak RSS of every rule", rules, NOTES["long_rules"]),
    ]
    if chunks:
        tables.append(Table("long_chunks", "Spike trains for two chunk sizes", chunks,
                            NOTES["long_chunks"]))
    failures = [{"failure": e} for e in ctx.errors if e.startswith("long/")]
    if failures:
        tables.append(Table("long_errors", "Skipped or failed sorts", failures))
    ctx.results.mkdir(parents=True, exist_ok=True)
    (ctx.results / "long.md").write_text(
        "# Long recordings (issue 17)\n\n" + "\n".join(t.markdown() for t in tables))
    return tables


def parse_plan(probe: int, minutes: str) -> tuple[tuple[int, tuple[float, ...]], ...]:
    import run_all

    if probe < 1:
        raise argparse.ArgumentTypeError(f"--probe must be >= 1 channel, got {probe}")
    return ((probe, tuple(sorted(run_all._minutes(minutes)))),)


def main(argv: list[str] | None = None) -> int:
    """Standalone: the ``long`` section of ``run_all.py`` for one probe."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", type=int, default=384, help="channels (384 or 64)")
    parser.add_argument("--minutes", default="2,5,15",
                        help="comma-separated durations in minutes (default 2,5,15)")
    parser.add_argument("--disk-factor", type=float, default=1.0,
                        help="disk the sort may take, x raw, when checking free space")
    parser.add_argument("--chunk-check", action="store_true",
                        help="sort one recording again with a smaller chunk budget and "
                        "compare the spike trains")
    parser.add_argument("--chunk-check-minutes", type=float, default=0.0,
                        help="the duration to check (default: the shortest)")
    parser.add_argument("--chunk-mb", type=float, default=None,
                        help="the second budget (default half of shards.max_memory_mb)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--keep-data", action="store_true")
    parser.add_argument("--tables-only", action="store_true",
                        help="rebuild the tables from long.json (no sorting)")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    import run_all

    ctx = run_all.make_context(run_all.parse_args(
        (["--quick"] if args.quick else [])
        + (["--results", str(args.results)] if args.results else [])
        + (["--reuse"] if args.reuse else [])
        + (["--keep-data"] if args.keep_data else [])
    ))
    ctx.work.mkdir(parents=True, exist_ok=True)
    if args.tables_only:
        record = json.loads((ctx.results / "long.json").read_text())
        for r in record["runs"]:  # runs saved before the cluster count was recorded
            if r.get("n_clusters") is None:
                r["n_clusters"] = _clusters(ctx.work / "long" / r["recording"] / "results"
                                            / r["recording"])
        tables = tables_from(ctx, record["runs"], record["chunk_checks"])
        run_all.save_section(ctx, "long", tables, record)
        print(f"written: {ctx.results / 'long.md'}")
        return 0
    start = time.perf_counter()
    record = {"environment": run_all.environment(), "quick": ctx.quick,
              "argv": sys.argv[1:] if argv is None else argv}
    tables = run(ctx, parse_plan(args.probe, args.minutes), disk_factor=args.disk_factor,
                 chunk_check=args.chunk_check_minutes if args.chunk_check else None,
                 chunk_mb=args.chunk_mb, record=record)
    record["elapsed_s"] = time.perf_counter() - start
    run_all.save_section(ctx, "long", tables, record)
    for t in tables[:2]:
        print(t.markdown())
    print(f"written: {ctx.results / 'long.md'}")
    return 1 if ctx.errors else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
