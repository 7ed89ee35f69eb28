"""Sort accuracy and wall time of the whole workflow (`snakemake --cores 2`).

Sorts the demo (64 channels, 90 s) and a larger generated recording in fresh
working directories, then scores the sorting against ground truth with
:mod:`shardsort.groundtruth` and reads every job's `benchmark:` file.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np

from benchlib import (
    CHUNK_RULES,
    Context,
    JobStats,
    Recording,
    Table,
    demo_recording,
    dry_run_jobs,
    generate_recording,
    modelled_peak,
    plan_for,
    remove_bulk,
    SnakemakeError,
    run_snakemake,
    write_table,
)

CORES = 2
#: SNR (generator definition) above which a GT unit counts as sortable.
SNR_SORTABLE = 5.0


def score_sorting(recording: Recording, sorting_path, config: dict) -> dict:
    """Ground-truth summary of a sorting (:func:`shardsort.groundtruth.summarize`)."""
    from shardsort.groundtruth import compare_sorting, summarize

    with h5py.File(sorting_path, "r") as f:
        spikes = f["spikes"][()]
        rate = float(f.attrs["sampling_rate_hz"])
    with np.load(recording.ground_truth) as gt:
        gt_samples, gt_units, snr = gt["sample_index"], gt["unit_index"], gt["snr"]
    scoring = config["ground_truth"]
    comparison = compare_sorting(
        gt_samples,
        gt_units,
        spikes["sample_index"],
        spikes["unit_index"],
        sampling_rate_hz=rate,
        delta_ms=scoring["delta_ms"],
    )
    summary = summarize(
        comparison, well_detected_accuracy=scoring["well_detected_accuracy"]
    )
    table = comparison["gt"]
    sortable = snr[table["gt_unit"]] >= SNR_SORTABLE
    well = table["accuracy"] >= scoring["well_detected_accuracy"]
    summary["n_gt_snr5"] = int(sortable.sum())
    summary["n_well_detected_snr5"] = int((well & sortable).sum())
    summary["mean_accuracy_snr5"] = (
        float(table["accuracy"][sortable].mean()) if sortable.any() else math.nan
    )
    return summary


def sort_recording(
    ctx: Context,
    recording: Recording,
    *,
    folder: str,
    score: bool = True,
    configfiles: tuple[Path, ...] = (),
) -> dict:
    """Dry-run then sort ``recording`` from scratch; timings, job stats, accuracy.

    ``configfiles`` are applied on top of config/config.yaml (default none).
    The result is also written to ``run.json`` in the run's folder.
    """
    workdir = ctx.work / folder / recording.name
    previous = workdir / "run.json"
    if ctx.reuse and previous.exists():
        ctx.log(f"sort {recording.name}: reusing {previous}")
        return json.loads(previous.read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    table = write_table(workdir / "recordings.tsv", [recording])
    ctx.log(f"sort {recording.name}: dry run")
    dry = run_snakemake(
        workdir,
        table,
        "-n",
        "--quiet",
        "rules",
        cores=CORES,
        configfiles=configfiles,
        log_name="dryrun",
    )
    ctx.log(
        f"sort {recording.name}: {dry_run_jobs(dry)} jobs planned in "
        f"{dry.wall_s:.1f} s; sorting with --cores {CORES}"
    )
    run = run_snakemake(workdir, table, cores=CORES, configfiles=configfiles)
    results = workdir / "results" / recording.name
    stats = JobStats.read(results / "benchmarks")
    job_s = stats.total_s
    plan = plan_for(recording, ctx.config)
    out = {
        "recording": recording.name,
        "n_channels": recording.n_channels,
        "duration_s": recording.duration_s,
        "raw_MB": recording.raw_mb,
        "n_chunks": plan.n_chunks,
        "chunk_s": plan.chunk_samples / recording.sampling_rate_hz,
        "n_jobs": len(stats.jobs),
        "dry_run_s": dry.wall_s,
        "wall_s": run.wall_s,
        "wall/duration": run.wall_s / recording.duration_s,
        "cpu_s": run.cpu_s,
        "cpu/duration": run.cpu_s / recording.duration_s,
        "sum_job_s": job_s,
        "sum_job_cpu_s": stats.total_cpu_s,
        "outside_jobs_share": max(0.0, run.wall_s - job_s / CORES) / run.wall_s,
        "load_avg": (run.load_before + run.load_after) / 2,
        "modelled_peak_MB": modelled_peak(plan),
        "budget_MB": ctx.config["shards"]["max_memory_mb"],
        "max_rss_chunk_jobs_MB": stats.max_rss(CHUNK_RULES),
        "max_rss_any_job_MB": stats.max_rss(),
    }
    if score and recording.ground_truth is not None:
        out["accuracy"] = score_sorting(recording, results / "sorting.h5", ctx.config)
    out["rules"] = stats.by_rule()
    out["results_dir"] = str(results)
    out["configfiles"] = [str(p) for p in configfiles]
    remove_bulk(results)
    (workdir / "run.json").write_text(json.dumps(out, indent=1, default=float))
    ctx.log(f"sort {recording.name}: wall {run.wall_s:.0f} s, cpu {run.cpu_s:.0f} s")
    return out


def sort_all(ctx: Context, recordings: list[Recording], *, folder: str) -> list[dict]:
    """Sort each recording; a failed sort is logged in ``ctx.errors`` and skipped."""
    runs = []
    for recording in recordings:
        try:
            runs.append(sort_recording(ctx, recording, folder=folder))
        except SnakemakeError as error:
            ctx.errors.append(f"{folder}/{recording.name}: {error}")
            ctx.log(f"FAILED {recording.name}: {error}")
    return runs


def error_table(ctx: Context, key: str) -> list[Table]:
    """A table of this section's failed sorts, if any."""
    rows = [{"failure": e} for e in ctx.errors if e.startswith(key)]
    return [Table(f"{key}_errors", "Failed sorts", rows)] if rows else []


def accuracy_row(run: dict) -> dict:
    acc = run["accuracy"]
    return {
        "recording": run["recording"],
        "channels": run["n_channels"],
        "duration_s": run["duration_s"],
        "gt_units": acc["n_gt_units"],
        "sorted_units": acc["n_sorted_units"],
        "well_detected": acc["n_well_detected"],
        "fraction_well": acc["fraction_well_detected"],
        "mean_accuracy": acc["mean_accuracy"],
        "well_of_snr5": f"{acc['n_well_detected_snr5']}/{acc['n_gt_snr5']}",
        "mean_accuracy_snr5": acc["mean_accuracy_snr5"],
        "false_positive_units": acc["n_false_positive_units"],
        "redundant_units": acc["n_redundant_units"],
        "overmerged_units": acc["n_overmerged_units"],
    }


def timing_row(run: dict) -> dict:
    keys = (
        "recording",
        "n_channels",
        "duration_s",
        "raw_MB",
        "n_chunks",
        "n_jobs",
        "dry_run_s",
        "wall_s",
        "wall/duration",
        "cpu_s",
        "cpu/duration",
        "sum_job_s",
        "sum_job_cpu_s",
        "outside_jobs_share",
        "load_avg",
    )
    return {k: run[k] for k in keys}


def memory_rows(run: dict) -> list[dict]:
    rows = []
    for rule in run["rules"]:
        if rule["rule"] in CHUNK_RULES:
            rows.append(
                {
                    "recording": run["recording"],
                    "rule": rule["rule"],
                    "n_jobs": rule["n_jobs"],
                    "max_rss_MB": rule["max_rss_mb"],
                    "modelled_peak_MB": run["modelled_peak_MB"],
                    "budget_MB": run["budget_MB"],
                    "rss/modelled": rule["max_rss_mb"] / run["modelled_peak_MB"],
                }
            )
    return rows


def rule_rows(run: dict) -> list[dict]:
    return [
        {
            "recording": run["recording"],
            "rule": r["rule"],
            "n_jobs": r["n_jobs"],
            "sum_s": r["sum_s"],
            "share": r["share_of_job_time"],
            "sum_cpu_s": r["sum_cpu_s"],
            "cpu_share": r["share_of_job_cpu"],
            "max_job_s": r["max_s"],
            "max_rss_MB": r["max_rss_mb"],
        }
        for r in run["rules"]
    ]


def run(ctx: Context) -> tuple[list[Table], dict]:
    if ctx.quick:
        recordings = [
            generate_recording(
                ctx.data,
                "gt_64ch_30s",
                n_channels=64,
                duration_s=30.0,
                n_units=20,
                seed=5,
            )
        ]
    else:
        demo = demo_recording()
        if not demo.path.exists():
            raise FileNotFoundError(f"{demo.path} is missing: run `make demo` first")
        recordings = [
            demo,
            generate_recording(
                ctx.data,
                "gt_96ch_300s",
                n_channels=96,
                duration_s=300.0,
                n_units=40,
                seed=5,
            ),
        ]
    runs = sort_all(ctx, recordings, folder="sort")
    tables = [
        Table(
            "sort_accuracy",
            "Sort accuracy against ground truth",
            [accuracy_row(r) for r in runs],
            note="Well detected: accuracy >= 0.8 (delta 0.4 ms). snr5: GT units "
            "whose generator SNR (raw trough / band noise) is >= 5. "
            "False-positive units: sorted units matching no GT unit "
            "(best agreement < 0.2).",
        ),
        Table(
            "sort_time",
            f"Wall time of `snakemake --cores {CORES}` (fresh run)",
            [timing_row(r) for r in runs],
            note="cpu_s: user+system CPU of snakemake and all its jobs "
            "(getrusage); sum_job_cpu_s: the jobs' own cpu_time from their "
            "benchmark files (sampled by Snakemake, a lower bound). "
            "outside_jobs_share = (wall - sum_job_s / cores) / wall. "
            "load_avg: 1-min load average of the machine around the run "
            "(2 cores; > 2 means other work shared them).",
        ),
        Table(
            "sort_rules",
            "Where the time goes (per rule, from benchmark files)",
            [row for r in runs for row in rule_rows(r)],
        ),
        Table(
            "sort_memory",
            "Peak memory of per-chunk jobs versus the plan",
            [row for r in runs for row in memory_rows(r)],
            note="max_rss from the jobs' benchmark files; modelled_peak: "
            "shardsort.plan.modelled_peak_mb for the plan's chunk; budget: "
            "shards.max_memory_mb.",
        ),
    ]
    if not ctx.keep_data:
        for recording in recordings[1:]:
            shutil.rmtree(ctx.data / recording.name, ignore_errors=True)
    demo_runs = [r["results_dir"] for r in runs if r["recording"] == "demo"]
    tables += error_table(ctx, "sort")
    return tables, {"demo_results": demo_runs[0] if demo_runs else None}
