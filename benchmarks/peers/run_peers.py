"""shardsort against SpykingCircus2, Tridesclous2 and MountainSort5, side by side.

    python benchmarks/peers/run_peers.py            # 64 ch x 5 min, static + drifting
    python benchmarks/peers/run_peers.py --quick    # 64 ch x 2 min

1. Generates a static and a drifting ground-truth recording (SpikeInterface
   generators, Neuropixels 1.0 geometry) as int16 binaries in the work folder.
2. Sorts each with every sorter, one after another, each in its own process
   with ``--n-jobs`` cores, measuring wall time, CPU time and peak memory.
3. Scores every sorting against ground truth and writes
   ``benchmarks/results/peers{,_quick}.{md,csv,png}`` and ``..._units.csv``.

A sorter that is not installed, fails or runs out of time gets a row saying so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from measure import Measurement, run_measured
from recordings import (
    DRIFT_UM,
    RecordingFiles,
    RecordingSpec,
    generate_pair,
    load_ground_truth,
    sorting_from_arrays,
)
from scoring import (
    Row,
    Score,
    markdown_table,
    plot,
    row_from,
    score_sorting,
    write_csv,
    write_units_csv,
)
from sorters import (
    INFO_FILE,
    SORTERS,
    SPIKES_FILE,
    Sorter,
    collect_shardsort,
    package_version,
    sorter_command,
)

REPO = Path(__file__).resolve().parents[2]
FULL = RecordingSpec(n_channels=64, duration_s=300.0, n_units=50)
QUICK = RecordingSpec(n_channels=64, duration_s=120.0, n_units=50)
#: Neuropixels scale, for the speed comparison of issue 16 (``--wide``).
WIDE = RecordingSpec(n_channels=384, duration_s=120.0, n_units=150, seed=501)
MEASUREMENT_FILE = "measurement.json"
LOG_FILE = "log.txt"
#: A Python exception with its message ("ValueError: ..."), as tracebacks end.
_EXCEPTION_LINE = re.compile(r"^([\w.]*(Error|Exception)): \S")
_ERROR_LINE = re.compile(r"\b\w*(Error|Exception|error in rule)\b.*", re.IGNORECASE)


def failure_reason(log_path: Path, *, max_chars: int = 160) -> str:
    """Why a run failed, from its log, shortened.

    The last exception with a message, else the last line that mentions an
    error, else the last line.
    """
    lines = [
        ln.strip()
        for ln in log_path.read_text(errors="replace").splitlines()
        if ln.strip()
    ]
    for pattern in (_EXCEPTION_LINE, _ERROR_LINE):
        matches = [ln for ln in lines if pattern.search(ln)]
        if matches:
            lines = matches
            break
    reason = (lines or ["no output"])[-1]
    return reason if len(reason) <= max_chars else reason[: max_chars - 1] + "…"


def sorter_env(n_jobs: int) -> dict[str, str]:
    """Environment of every sorter: ``n_jobs`` threads at most per process pool."""
    threads = str(n_jobs)
    return dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        OMP_NUM_THREADS=threads,
        OPENBLAS_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        NUMBA_NUM_THREADS=threads,
        TF_CPP_MIN_LOG_LEVEL="2",
    )


def not_installed_reason(sorter: Sorter) -> str:
    """Why ``sorter`` cannot run here, or "" when it can."""
    if not sorter.is_peer:
        return ""
    try:
        from spikeinterface.sorters import sorter_dict
    except ImportError as error:
        return f"spikeinterface: {error}"
    if not sorter_dict[sorter.key].is_installed():
        return sorter_dict[sorter.key].installation_mesg.strip().replace("\n", " ")
    return ""


def run_one(
    sorter: Sorter,
    files: RecordingFiles,
    output: Path,
    *,
    n_jobs: int,
    timeout_s: float,
    keep_outputs: bool,
    shardsort_configfile: Path | list[Path] | None,
) -> Measurement:
    """Sort ``files`` with ``sorter`` in a fresh ``output``; save the measurement."""
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    measurement = run_measured(
        sorter_command(
            sorter,
            files,
            output,
            n_jobs=n_jobs,
            shardsort_configfile=shardsort_configfile,
        ),
        log_path=output / LOG_FILE,
        env=sorter_env(n_jobs),
        cwd=output,
        timeout_s=timeout_s,
    )
    if measurement.returncode == 0 and not sorter.is_peer:
        collect_shardsort(files, output, configfile=shardsort_configfile)
        if not keep_outputs:  # the preprocessed chunks: as large as the recording
            shutil.rmtree(
                output / "results" / files.name / "preprocess", ignore_errors=True
            )
    (output / MEASUREMENT_FILE).write_text(
        json.dumps(asdict(measurement), indent=2) + "\n"
    )
    return measurement


def run_status(
    measurement: Measurement, output: Path, *, timeout_s: float
) -> tuple[str, str]:
    """(status, note) of a finished run."""
    if measurement.timed_out:
        return "timeout", f"killed after {timeout_s / 60:.0f} min"
    if measurement.returncode != 0 or not (output / SPIKES_FILE).exists():
        return (
            "failed",
            f"exit {measurement.returncode}: {failure_reason(output / LOG_FILE)}",
        )
    return "ok", ""


def score_run(output: Path, gt_sorting, snr: np.ndarray) -> tuple[Score, list[dict]]:
    """Score a finished run: its summary and one dict per ground-truth unit."""
    with np.load(output / SPIKES_FILE) as spikes:
        sorting = sorting_from_arrays(
            spikes["sample_index"],
            spikes["unit_index"],
            sampling_rate_hz=gt_sorting.sampling_frequency,
        )
    score, per_unit = score_sorting(
        gt_sorting, sorting, delta_ms=0.4, well_detected_accuracy=0.8
    )
    units = [
        dict(
            gt_unit=i,
            snr=round(float(snr[i]), 3),
            accuracy=round(acc, 4),
            precision=round(prec, 4),
            recall=round(rec, 4),
        )
        for i, (acc, prec, rec) in enumerate(per_unit.tolist())
    ]
    return score, units


def shardsort_configs(args: argparse.Namespace, recording: str) -> list[Path]:
    """Config files merged over config/config.yaml for shardsort on ``recording``:
    drift correction on the drifting recording (as a user who knows their
    recording drifts would switch it on), then ``--shardsort-configfile``."""
    files = []
    if recording == "drifting" and args.drift_configfile is not None:
        files.append(args.drift_configfile)
    if args.shardsort_configfile is not None:
        files.append(args.shardsort_configfile)
    return files


def benchmark_one(
    sorter: Sorter,
    files: RecordingFiles,
    output: Path,
    gt_sorting,
    snr: np.ndarray,
    args: argparse.Namespace,
) -> tuple[Row, list[dict]]:
    """Run (or with ``--reuse`` reload) one sort and score it: its table row and
    its per-unit scores."""
    version = package_version(sorter.package)
    missing = not_installed_reason(sorter)
    if missing:
        print(f"{sorter.label} on {files.name}: not installed ({missing})", flush=True)
        return row_from(
            files.name, sorter.label, version, "not installed", note=missing
        ), []
    timeout_s = args.timeout_min * 60.0
    if args.score_only and not (output / MEASUREMENT_FILE).exists():
        note = f"no finished run in {output}"
        print(f"{sorter.label} on {files.name}: not run", flush=True)
        return row_from(files.name, sorter.label, version, "not run", note=note), []
    if (args.reuse or args.score_only) and (output / MEASUREMENT_FILE).exists():
        measurement = Measurement(**json.loads((output / MEASUREMENT_FILE).read_text()))
    else:
        print(f"{sorter.label} on {files.name} ...", flush=True)
        measurement = run_one(
            sorter,
            files,
            output,
            n_jobs=args.n_jobs,
            timeout_s=timeout_s,
            keep_outputs=args.keep_outputs,
            shardsort_configfile=shardsort_configs(args, files.name),
        )
    status, note = run_status(measurement, output, timeout_s=timeout_s)
    if (output / INFO_FILE).exists():
        version = str(json.loads((output / INFO_FILE).read_text())["version"])
    score, unit_rows = None, []
    if status == "ok":
        score, unit_rows = score_run(output, gt_sorting, snr)
    outcome = (
        f"{score.well_detected}/{score.n_gt_units} well detected, "
        f"mean accuracy {score.mean_accuracy:.3f}"
        if score
        else note
    )
    print(
        f"  {status} in {measurement.wall_s / 60:.1f} min "
        f"({measurement.cpu_s / 60:.1f} min CPU), "
        f"peak {measurement.peak_rss_mb / 1024:.2f} GB: {outcome}",
        flush=True,
    )
    row = row_from(
        files.name,
        sorter.label,
        version,
        status,
        note=note,
        measurement=measurement,
        score=score,
    )
    return row, unit_rows


def header(
    spec: RecordingSpec, *, n_jobs: int, run_note: str, note: str, drift: Path | None
) -> str:
    """Markdown preamble: what was run, where and when."""
    versions = ", ".join(
        f"{p} {package_version(p)}"
        for p in (
            "shardsort",
            "spikeinterface",
            "mountainsort5",
            "hdbscan",
            "numba",
            "torch",
        )
    )
    return (
        "# shardsort vs peer sorters (`make bench-peers`)\n\n"
        f"Generated {datetime.datetime.now().isoformat(timespec='minutes')} by "
        "`benchmarks/peers/run_peers.py`.\n\n"
        f"- Recordings: SpikeInterface `generate_drifting_recording` (seed {spec.seed}), "
        f"Neuropixels 1.0 geometry, {spec.n_channels} channels, {spec.duration_s / 60:g} min at "
        f"{spec.sampling_rate_hz / 1000:g} kHz, {spec.n_units} units, int16 binary. "
        f"`static`: no motion; `drifting`: same units and spikes, zigzag motion of "
        f"±{DRIFT_UM:g} µm along the probe.\n"
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs. "
        f"{run_note}\n"
        f"- Every sorter ran alone with {n_jobs} jobs/cores and its default parameters "
        "(shardsort: `config/config.yaml`"
        + (
            f", on `drifting` with `{drift.relative_to(REPO) if drift.is_relative_to(REPO) else drift}` "
            "merged over it (drift correction on)"
            if drift
            else ""
        )
        + "; MountainSort5: `snippet_mask_radius` 100 µm, "
        "see `benchmarks/peers/README.md`). CPU time: user + system time of all its "
        "processes, which unlike wall time hardly depends on the machine's load. "
        "Peak memory: the largest sum of resident memory "
        "over the sorter's process tree (`max_process_rss_mb` in the CSV: largest single "
        "process).\n"
        "- Scores: `compare_sorter_to_ground_truth` (delta_time = 0.4 ms); means are over all "
        "ground-truth units (a missed unit counts 0); well detected = accuracy ≥ 0.8; "
        "false-positive / redundant / over-merged units at agreement 0.2.\n"
        f"- Versions: {versions}, Python {platform.python_version()}.\n"
        + (f"- {note}\n" if note else "")
        + "\n"
    )


def run_note(
    *, reused: bool, load_before: tuple, generate_s: float, total_s: float
) -> str:
    """How long the benchmark took and how busy the machine was."""
    if reused:  # --reuse or --score-only
        return (
            "Table rebuilt from runs finished earlier (`--reuse`); the machine's load "
            "during those runs is not recorded, compare CPU times."
        )
    return (
        f"Load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (a "
        "shared machine makes wall times pessimistic when the load exceeds the core "
        f"count). Generation took {generate_s / 60:.1f} min, the whole benchmark "
        f"{total_s / 60:.1f} min."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.n_channels} ch x {QUICK.duration_s / 60:g} min instead of "
        f"{FULL.n_channels} ch x {FULL.duration_s / 60:g} min",
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help=f"{WIDE.n_channels} ch x {WIDE.duration_s / 60:g} min, {WIDE.n_units} units "
        "(results peers_wide.*)",
    )
    parser.add_argument(
        "--sorters",
        default=",".join(SORTERS),
        help="comma-separated subset of: " + ", ".join(SORTERS),
    )
    parser.add_argument(
        "--recordings",
        default="static,drifting",
        help="comma-separated subset of: static, drifting",
    )
    parser.add_argument(
        "--n-jobs", type=int, default=2, help="cores given to every sorter"
    )
    parser.add_argument(
        "--timeout-min",
        type=float,
        default=30.0,
        help="a sorter still running after this long is killed",
    )
    parser.add_argument(
        "--work", type=Path, default=REPO / "benchmarks" / "work" / "peers"
    )
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep finished runs found in the work folder (rescore only)",
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="like --reuse, but list missing runs as 'not run' instead of running them",
    )
    parser.add_argument(
        "--shardsort-configfile",
        type=Path,
        help="a YAML file merged over config/config.yaml for shardsort",
    )
    parser.add_argument(
        "--drift-configfile",
        type=Path,
        default=REPO / "benchmarks" / "peers" / "motion.yaml",
        help="a YAML file merged over config/config.yaml for shardsort on the "
        "drifting recording only (default: drift correction on)",
    )
    parser.add_argument("--note", default="", help="a line added to the table's header")
    parser.add_argument(
        "--keep-outputs",
        action="store_true",
        help="keep shardsort's preprocessed chunks",
    )
    args = parser.parse_args(argv)
    for option, allowed in (
        ("sorters", SORTERS),
        ("recordings", ("static", "drifting")),
    ):
        values = [v for v in getattr(args, option).split(",") if v]
        unknown = sorted(set(values) - set(allowed))
        if unknown or not values:
            parser.error(
                f"--{option} must be a subset of {', '.join(allowed)}, got {unknown or values}"
            )
        setattr(args, option, values)
    if args.shardsort_configfile is not None:
        if not args.shardsort_configfile.is_file():
            parser.error(
                f"--shardsort-configfile {args.shardsort_configfile} is not a file"
            )
        args.shardsort_configfile = args.shardsort_configfile.resolve()
    if args.drift_configfile is not None:
        if not args.drift_configfile.is_file():
            parser.error(f"--drift-configfile {args.drift_configfile} is not a file")
        args.drift_configfile = args.drift_configfile.resolve()
    if args.n_jobs < 1:
        parser.error(f"--n-jobs must be >= 1, got {args.n_jobs}")
    if args.timeout_min <= 0:
        parser.error(f"--timeout-min must be > 0, got {args.timeout_min}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    size = "wide" if args.wide else "quick" if args.quick else "full"
    spec = {"wide": WIDE, "quick": QUICK, "full": FULL}[size]
    prefix = {"wide": "peers_wide", "quick": "peers_quick", "full": "peers"}[size]
    work = args.work / size
    load_before = os.getloadavg()
    started = time.perf_counter()

    print(f"generating recordings in {work / 'data'} ...", flush=True)
    pair = generate_pair(spec, work / "data", n_jobs=args.n_jobs)
    generate_s = time.perf_counter() - started
    print(f"  done in {generate_s:.0f} s", flush=True)

    rows, units = [], []
    for name in args.recordings:
        files = pair[name]
        gt_sorting = load_ground_truth(files)
        with np.load(files.ground_truth) as gt:
            snr = gt["snr"]
        for key in args.sorters:
            row, unit_rows = benchmark_one(
                SORTERS[key], files, work / "runs" / name / key, gt_sorting, snr, args
            )
            rows.append(row)
            units += [dict(recording=name, sorter=row.sorter, **u) for u in unit_rows]

    args.results.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    text = header(
        spec,
        n_jobs=args.n_jobs,
        note=args.note,
        drift=args.drift_configfile if "drifting" in args.recordings else None,
        run_note=run_note(
            reused=args.reuse or args.score_only,
            load_before=load_before,
            generate_s=generate_s,
            total_s=time.perf_counter() - started,
        ),
    )
    (args.results / f"{prefix}.md").write_text(
        text + table + f"\n![accuracy, time and memory]({prefix}.png)\n"
    )
    write_csv(rows, args.results / f"{prefix}.csv")
    write_units_csv(units, args.results / f"{prefix}_units.csv")
    plot(rows, units, args.results / f"{prefix}.png")
    print("\n" + table, flush=True)
    print(
        f"written: {args.results / prefix}.{{md,csv,png}}, {prefix}_units.csv",
        flush=True,
    )


if __name__ == "__main__":
    main()
