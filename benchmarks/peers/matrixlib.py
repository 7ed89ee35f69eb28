"""What the benchmark matrices share (``drift_matrix.py``, ``accuracy_matrix.py``):
run-or-reuse one sort with its cache rules, score it into a result row, the
common command-line options, and the CSV writers.

Cache rules: a peer's result is reused while its spikes exist (it is kept per
recording spec and peer version by the caller's output folder); shardsort's
only when the stored ``cache_key.json`` (commit + configuration) matches, unless
``--rerun-shardsort``. ``--score-only`` reuses whatever finished and reports
the rest as "not run".
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from measure import Measurement
from recordings import RecordingFiles, load_ground_truth
from run_peers import (
    LOG_FILE,
    MEASUREMENT_FILE,
    failure_reason,
    not_installed_reason,
    run_one,
    run_status,
    score_run,
)
from sorters import INFO_FILE, SPIKES_FILE, Sorter

REPO = Path(__file__).resolve().parents[2]
CACHE_KEY_FILE = "cache_key.json"
UNIT_FIELDS = ("recording", "sorter", "gt_unit", "snr", "accuracy", "precision", "recall")


def digest(obj) -> str:
    """A short stable hash of a JSON-able object (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout


def code_snapshot(work: Path, commit: str | None = None) -> tuple[Path, str]:
    """A clean copy of the committed code (``git archive``) in ``work/code/``.

    shardsort runs from it, not from the working tree, which other developers
    may be editing while the matrix runs: a sort then reads one committed
    state of rules, scripts, sources and ``config/config.yaml``.
    """
    commit = _git("rev-parse", commit or "HEAD").strip()
    folder = work / "code" / commit[:12]
    if not (folder / "Snakefile").exists():
        tmp = folder.with_name(folder.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit], cwd=REPO, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    return folder, commit


def shardsort_code_key(snapshot: Path, commit: str, overlay: dict | None = None) -> dict:
    """What a shardsort result depends on: the commit and its configuration."""
    key = dict(
        commit=commit,
        config=hashlib.sha256((snapshot / "config" / "config.yaml").read_bytes()).hexdigest()[:12],
        dirty=False,
    )
    if overlay:
        key["overlay"] = overlay
    return key


def run_shardsort(
    files: RecordingFiles, output: Path, snapshot: Path, *, n_jobs: int, timeout_s: float,
    overlay: dict | None = None,
) -> Measurement:
    """``snakemake --cores n_jobs`` of the snapshot's workflow with its
    ``config/config.yaml`` (the defaults; ``overlay`` merged over it for a
    variant), its own sources first on the path."""
    from run_peers import sorter_env

    from measure import run_measured
    from sorters import collect_shardsort

    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    configfiles = [str(snapshot / "config" / "config.yaml")]
    if overlay:
        (output / "overlay.yaml").write_text(json.dumps(overlay) + "\n")  # JSON is YAML
        configfiles.append(str(output / "overlay.yaml"))
    env = sorter_env(n_jobs)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(snapshot / "src")] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    command = [
        str(Path(sys.executable).parent / "snakemake"),
        "--cores", str(n_jobs),
        "--directory", str(output),
        "--snakefile", str(snapshot / "Snakefile"),
        "--configfile", *configfiles,
        "--config", f"recordings={files.table}",
    ]
    measurement = run_measured(
        command, log_path=output / LOG_FILE, env=env, cwd=output, timeout_s=timeout_s
    )
    if measurement.returncode == 0:
        collect_shardsort(files, output, configfiles_used=configfiles)
    # preprocessed and corrected chunks: each as large as the recording
    for sub in ("preprocess", "motion/chunks"):
        shutil.rmtree(output / "results" / files.name / sub, ignore_errors=True)
    (output / MEASUREMENT_FILE).write_text(json.dumps(asdict(measurement), indent=2) + "\n")
    return measurement


def shardsort_failure(output: Path, name: str) -> str:
    """'rule X: <error line>' from the Snakemake log and that rule's log."""
    log = output / LOG_FILE
    if not log.exists():
        return "no log"
    text = log.read_text(errors="replace")
    rules = re.findall(r"Error in rule (\w+):", text)
    if not rules:
        return failure_reason(log)
    rule = rules[0]
    rule_logs = re.findall(r"log: (\S+)", text[text.find(f"Error in rule {rule}:") :])
    detail = ""
    for rel in rule_logs[:1]:
        path = output / rel
        if path.exists():
            detail = failure_reason(path)
    return f"rule {rule}: {detail or failure_reason(log)}"


def cached_measurement(output: Path) -> Measurement | None:
    if (output / MEASUREMENT_FILE).exists():
        return Measurement(**json.loads((output / MEASUREMENT_FILE).read_text()))
    return None


def sort_and_score(
    sorter: Sorter,
    files: RecordingFiles,
    output: Path,
    row: dict,
    args,
    snapshot: tuple[Path, str],
    code_key: dict,
    overlay: dict | None = None,
) -> Measurement | None:
    """Run (or reuse) ``sorter`` on ``files`` into ``output`` and fill ``row``:
    status, note, version, code, time, memory and, when it finished, its score
    (``row["_units"]``: one dict per ground-truth unit). Returns the
    measurement, or None when no run is to be had (not installed, or
    ``--score-only`` without a finished run: ``row`` says which)."""
    missing = not_installed_reason(sorter)
    if missing:
        row.update(status="not installed", note=missing)
        return None
    timeout_s = args.timeout_min * 60.0
    measurement = cached_measurement(output)
    if sorter.is_peer:
        reuse = measurement is not None and (
            (output / SPIKES_FILE).exists() or args.score_only
        )
    else:
        stored = output / CACHE_KEY_FILE
        same_code = stored.exists() and json.loads(stored.read_text()) == code_key
        reuse = measurement is not None and (
            args.score_only
            or (same_code and not args.rerun_shardsort and not code_key["dirty"])
        )
    if measurement is None and args.score_only:
        row.update(status="not run", note=f"no finished run in {output}")
        return None
    if reuse:
        row["cached"] = True
        print(f"{row['sorter']} on {row['recording']}: cached ({output})", flush=True)
    else:
        print(f"{row['sorter']} on {row['recording']} ...", flush=True)
        for attempt in range(1 if sorter.is_peer else 2):
            if sorter.is_peer:
                measurement = run_one(
                    sorter,
                    files,
                    output,
                    n_jobs=args.n_jobs,
                    timeout_s=timeout_s,
                    keep_outputs=False,
                    shardsort_configfile=None,
                )
                break
            measurement = run_shardsort(
                files, output, snapshot[0], n_jobs=args.n_jobs, timeout_s=timeout_s,
                overlay=overlay,
            )
            (output / CACHE_KEY_FILE).write_text(json.dumps(code_key, indent=2) + "\n")
            # A failure within the first two minutes may be the machine's (a
            # job killed under load): try once more.
            if measurement.returncode == 0 or measurement.wall_s >= 120.0 or attempt:
                break
            print(f"  failed after {measurement.wall_s:.0f} s "
                  f"({shardsort_failure(output, files.name)}); retrying in 30 s", flush=True)
            row["note"] = "retried once after an immediate failure"
            time.sleep(30)
    status, note = run_status(measurement, output, timeout_s=timeout_s)
    if status == "failed" and not sorter.is_peer:
        note = f"exit {measurement.returncode}: {shardsort_failure(output, files.name)}"
    if (output / INFO_FILE).exists():
        row["version"] = str(json.loads((output / INFO_FILE).read_text())["version"])
    if not sorter.is_peer and (output / CACHE_KEY_FILE).exists():
        ck = json.loads((output / CACHE_KEY_FILE).read_text())
        row["code"] = ck["commit"][:8] + ("+dirty" if ck["dirty"] else "")
    row.update(
        status=status,
        note="; ".join(n for n in (row["note"], note) if n),
        wall_s=measurement.wall_s,
        cpu_s=measurement.cpu_s,
        peak_rss_mb=measurement.peak_rss_mb,
    )
    if status == "ok":
        with np.load(files.ground_truth) as gt:
            snr = gt["snr"]
        score, units = score_run(output, load_ground_truth(files), snr)
        row.update(asdict(score))
        row["_units"] = units
    return measurement


def score_mark(row: dict) -> str:
    """'27/30 well, 1 redundant, 0 FP' of a finished row, else its note."""
    if row.get("status") != "ok":
        return row.get("note", "")
    return (
        f"{row.get('well_detected')}/{row.get('n_gt_units')} well, "
        f"{row.get('redundant_units')} redundant, {row.get('false_positive_units')} FP"
    )


def error_row(row: dict, error: Exception) -> dict:
    """``row`` of a sort that raised: status "error", the exception as its note."""
    row.update(status="error", note=f"{type(error).__name__}: {error}"[:200])
    print(f"  error: {row['note']}", flush=True)
    return row


def fmt(v, spec: str) -> str:
    """``v`` formatted, or "–" when missing."""
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def add_matrix_arguments(
    p: argparse.ArgumentParser, *, sorters: str, work: Path, results: Path, name: str
) -> None:
    """The options both matrices take (``name``: their Markdown file)."""
    p.add_argument("--wide", action="store_true", help="also the 384-channel recordings")
    p.add_argument("--only", default="", help="comma-separated recording names")
    p.add_argument("--sorters", default=sorters)
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--timeout-min", type=float, default=30.0)
    p.add_argument("--work", type=Path, default=work)
    p.add_argument("--results", type=Path, default=results)
    p.add_argument("--rerun-shardsort", action="store_true",
                   help="sort with shardsort even when a run of the same code exists")
    p.add_argument("--score-only", action="store_true",
                   help="only rebuild the tables from finished runs")
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--note", default="", help=f"a line added to {name}'s header")
    p.add_argument("--commit", default=None,
                   help="commit whose code shardsort runs (default: HEAD when the matrix starts)")


def write_rows_csv(path: Path, rows: list[dict], fields) -> None:
    """One line per row, ``fields`` in order ("" for missing values)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k, "")) for k in fields})


def write_units_rows(path: Path, rows: list[dict]) -> None:
    """Every row's per-ground-truth-unit scores (``row["_units"]``)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(UNIT_FIELDS))
        writer.writeheader()
        for r in rows:
            for u in r.get("_units", []):
                writer.writerow(dict(recording=r["recording"], sorter=r["sorter"], **u))
