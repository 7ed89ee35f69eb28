"""Run the benchmarks (`make bench`): speed, memory and accuracy of shardsort.

Sections (run in this order; ``--only`` picks some):

``preprocess``  preprocessing throughput versus SpikeInterface and scipy
``sort``        sort accuracy and wall time of the demo and a larger recording
                (``--quick``: a 64-channel 30 s recording only)
``detection``   threshold-detection recall on the demo's ground truth (detections
                of this run's demo sort, else of ``results/demo``)
``scale``       384- and 1,024-channel sorts: time versus duration, memory, overhead
``plan``        dry-run planning time and job counts up to a 1-hour 384-channel
                recording (sparse files), fixed start-up cost of one job
``nn``          network detection (detect.method: nn) against threshold
                detection: detection precision/recall and sort accuracy on the
                demo and a noisier variant (``--quick``: 32 channels, 20 s)
``phase_shift`` Neuropixels inter-sample shift: common-mode noise left after the
                median reference with and without the correction (~20 s)
``kernels``     filter and deconvolution kernels before/after the compiled
                versions (issue 16), per-job cost with numba cold/warm (~1.5 min)
``disk``        peak and final disk use of a sort as a multiple of the raw file
                (demo with float32/int16 chunks, a 64-channel 3-min drifting
                recording; ~15 min)
``profile``     per-stage time against each stage's physical floor, job start-up,
                --cores 1 vs 2 and a projection for 16 and 64 cores from the job
                graph (384 channels x 1 min; issue 16; ~8 min)
``motion_scaling`` memory and time of the motion job (drift estimate) at 10 min to
                4 h of a 384-channel probe, dense all-pairs version against
                the banded one (issue 17; ~10 min)
``global_memory`` peak RSS of every global job (merge_spikes ... report) against the
                number of spikes, on synthetic 384-channel inputs; MB per
                million spikes and the 2 h x 384 ch projection (issue 17; ~5 min)
``long``        long drifting recordings (384 ch x 2/5/15 min, 64 ch x 10/60 min by
                default; ``--long PROBE:MINUTES``): wall and CPU per second of
                recording, Snakemake's share, every rule's peak RSS, peak disk,
                DAG time, projection to 2 h (issue 17; hours, ~45 GB of disk;
                run only when named: ``--only long``)

Each section writes ``<section>.json`` and one CSV per table into the results
folder (``benchmarks/results``, or ``benchmarks/results/quick`` with
``--quick``); ``summary.md`` is rebuilt from every section found there, so a
partial run updates its sections only. Scratch data and workflow runs go to
``benchmarks/work`` (git-ignored).

Examples::

    python benchmarks/run_all.py                       # everything (~75 min, 2 cores)
    python benchmarks/run_all.py --quick               # small sizes (a few minutes)
    python benchmarks/run_all.py --only preprocess --only detection
    python benchmarks/run_all.py --only scale --scale-minutes 2,5,10 --wide-minutes 1
    python benchmarks/run_all.py --only long --long 384:2,5,15 --long 64:10,60
"""

from __future__ import annotations

import os

# One thread per process (2 shared cores): set before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import bench_detection  # noqa: E402
import bench_disk  # noqa: E402
import bench_global_memory  # noqa: E402
import bench_kernels  # noqa: E402
import bench_long  # noqa: E402
import bench_motion  # noqa: E402
import bench_nn  # noqa: E402
import bench_phase_shift  # noqa: E402
import bench_plan  # noqa: E402
import bench_profile  # noqa: E402
import bench_preprocess  # noqa: E402
import bench_scale  # noqa: E402
import bench_sort  # noqa: E402
from benchlib import Context, Table, load_config  # noqa: E402

HERE = Path(__file__).resolve().parent
SECTIONS = (
    "preprocess", "sort", "detection", "scale", "plan", "nn", "phase_shift", "kernels",
    "disk", "profile", "motion_scaling", "global_memory", "long",
)
#: Sections run only when named with --only (hours of machine time).
OPT_IN = ("long",)
TITLES = {
    "preprocess": "1. Preprocessing throughput (issue 3)",
    "detection": "2. Detection against ground truth (issue 4)",
    "sort": "3. Sort accuracy and wall time (issue 5)",
    "scale": "4. Scale (issue 7)",
    "plan": "4b. Planning large recordings (issue 7)",
    "nn": "5. Network detection versus threshold (issue 8)",
    "phase_shift": "6. Neuropixels inter-sample shift (issue 18)",
    "kernels": "7. Kernel speed before/after (issue 16)",
    "disk": "8. Disk footprint (issue 17)",
    "profile": "9. Profile per stage and parallel efficiency (issue 16)",
    "motion_scaling": "10. Motion job versus recording length (issue 17)",
    "global_memory": "11. Global jobs' peak memory versus spikes (issue 17)",
    "long": "12. Long recordings (issue 17)",
}
SUMMARY_ORDER = (
    "preprocess", "detection", "sort", "scale", "plan", "nn", "phase_shift", "kernels",
    "disk", "profile", "motion_scaling", "global_memory", "long",
)
PACKAGES = ("shardsort", "numpy", "scipy", "spikeinterface", "snakemake")


def _minutes(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive minutes such as 2,5; got {text!r}"
        )
    return values


def _long_plan(text: str) -> tuple[int, tuple[float, ...]]:
    probe, _, minutes = text.partition(":")
    if not probe.strip().isdigit() or int(probe) < 1:
        raise argparse.ArgumentTypeError(
            f"expected PROBE_CHANNELS:MINUTES such as 384:2,5,15; got {text!r}"
        )
    return int(probe), _minutes(minutes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: checks that everything runs (minutes)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="repetitions of each preprocessing timing (default 2, 1 with --quick)",
    )
    parser.add_argument(
        "--scale-minutes",
        type=_minutes,
        default=None,
        help="durations of the 384-channel scale sorts "
        "(default 2,5,10; 0.1,0.2 with --quick)",
    )
    parser.add_argument(
        "--wide-minutes",
        type=float,
        default=None,
        help="duration of the 1,024-channel sort, 0 to skip "
        "(default 1; 0 with --quick)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the measurements and sorts a previous (interrupted) run left "
        "in the work folder instead of redoing them",
    )
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the large generated recordings in benchmarks/work",
    )
    parser.add_argument(
        "--long",
        type=_long_plan,
        action="append",
        help="section long: a probe and its durations, PROBE:MINUTES (repeatable; "
        "default 384:2,5,15 and 64:10,60; 64:0.5,1 with --quick)",
    )
    parser.add_argument(
        "--long-chunk-check",
        action="store_true",
        help="section long: sort the shortest recording of each probe again with "
        "half the chunk budget and compare the spike trains",
    )
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    if args.wide_minutes is not None and args.wide_minutes < 0:
        parser.error(f"--wide-minutes must be >= 0, got {args.wide_minutes}")
    return args


def make_context(args: argparse.Namespace) -> Context:
    quick = args.quick
    results = args.results or (HERE / "results" / ("quick" if quick else ""))
    return Context(
        quick=quick,
        work=args.work.resolve() / ("quick" if quick else "full"),
        results=results.resolve(),
        config=load_config(),
        reps=args.reps or (1 if quick else 2),
        keep_data=args.keep_data,
        reuse=args.reuse,
        scale_minutes=args.scale_minutes or ((0.1, 0.2) if quick else (2.0, 5.0, 10.0)),
        wide_minutes=args.wide_minutes
        if args.wide_minutes is not None
        else (0.0 if quick else 1.0),
    )


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        **versions,
    }


def save_section(ctx: Context, name: str, tables: list[Table], record: dict) -> None:
    ctx.results.mkdir(parents=True, exist_ok=True)
    for table in tables:
        table.write_csv(ctx.results / f"{table.key}.csv")
    record["tables"] = [
        {"key": t.key, "title": t.title, "note": t.note, "rows": t.rows} for t in tables
    ]
    with open(ctx.results / f"{name}.json", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, default=float)


def write_summary(ctx: Context) -> Path:
    lines = ["# shardsort benchmarks", ""]
    lines += [
        "Generated by `benchmarks/run_all.py`"
        + (" --quick" if ctx.quick else "")
        + ". Timings are ratios within one run or carry the CPU time and the load "
        "average of the same run: the machine (2 cores) may be shared.",
        "",
    ]
    for name in SUMMARY_ORDER:
        path = ctx.results / f"{name}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        env = record.get("environment")  # absent from sections run by their own script
        lines += [f"## {TITLES[name]}", ""]
        if env:
            lines += [
                f"Run {env['date']} in {record['elapsed_s']:.0f} s on {env['cpus']} CPUs "
                f"(shardsort {env['shardsort']}, SpikeInterface {env['spikeinterface']}, "
                f"Snakemake {env['snakemake']}).",
                "",
            ]
        else:
            lines += [f"Run by its own script in {record.get('elapsed_s', 0):.0f} s.", ""]
        if record.get("error"):
            lines += ["**Failed:**", "", "```", record["error"].strip(), "```", ""]
        for t in record["tables"]:
            lines.append(Table(t["key"], t["title"], t["rows"], t["note"]).markdown())
    summary = ctx.results / "summary.md"
    summary.write_text("\n".join(lines))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = make_context(args)
    ctx.work.mkdir(parents=True, exist_ok=True)
    chosen = [
        s for s in SECTIONS if (s in args.only if args.only else s not in OPT_IN)
    ]
    failed = []
    demo_results = ctx.work / "sort" / "demo" / "results" / "demo"
    for name in chosen:
        ctx.log(f"=== {name} ===")
        start = time.perf_counter()
        record = {"environment": environment(), "quick": ctx.quick}
        tables: list[Table] = []
        try:
            if name == "preprocess":
                tables = bench_preprocess.run(ctx)
            elif name == "sort":
                tables, extra = bench_sort.run(ctx)
                if extra["demo_results"]:
                    demo_results = Path(extra["demo_results"])
            elif name == "detection":
                tables = bench_detection.run(ctx, demo_results / "spikes.h5")
            elif name == "scale":
                tables = bench_scale.run(ctx)
            elif name == "plan":
                tables = bench_plan.run(ctx)
            elif name == "nn":
                tables = bench_nn.run(ctx)
            elif name == "phase_shift":
                tables = bench_phase_shift.run(ctx)
            elif name == "kernels":
                tables = bench_kernels.run(ctx)
            elif name == "disk":
                tables = bench_disk.run(ctx)
            elif name == "profile":
                tables = bench_profile.run(ctx)
            elif name == "motion_scaling":
                tables = bench_motion.run(ctx)
            elif name == "global_memory":
                tables = bench_global_memory.run(ctx)
            elif name == "long":
                tables = bench_long.run(
                    ctx,
                    tuple(args.long) if args.long else None,
                    chunk_check=0.0 if args.long_chunk_check else None,
                    record=record,
                )
        except Exception:
            record["error"] = traceback.format_exc()
            failed.append(name)
            print(record["error"], file=sys.stderr)
        record["elapsed_s"] = time.perf_counter() - start
        save_section(ctx, name, tables, record)
        for table in tables:
            print(table.markdown())
        ctx.log(f"{name} took {record['elapsed_s']:.0f} s")
    ctx.log(f"summary: {write_summary(ctx)}")
    failed += ctx.errors
    if failed:
        ctx.log(f"FAILED: {'; '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
