"""Drift benchmark matrix: shardsort (defaults) vs SpykingCircus2 and Tridesclous2
on drifting ground-truth recordings of several drift shapes (issue 14, item 4).

    python benchmarks/peers/drift_matrix.py                 # the 64-channel matrix
    python benchmarks/peers/drift_matrix.py --wide          # + the 384-channel recording
    python benchmarks/peers/drift_matrix.py --score-only    # tables from finished runs

1. Generates one drifting recording per matrix entry with SpikeInterface's
   ``generate_drifting_recording`` (Neuropixels 1.0 geometry); the planted
   displacement is kept in its ground truth (``recordings.generate_drifting``).
2. Sorts each with shardsort (``config/config.yaml`` as it is: drift correction
   ``auto``), then SpykingCircus2 and Tridesclous2 (their defaults), one after
   another with ``--n-jobs`` cores. Peer results are cached per recording spec
   and peer version (never rerun while their spikes exist); shardsort's per
   git commit + configuration (``--rerun-shardsort``
   forces a new sort). shardsort runs from a ``git archive`` of the commit
   (HEAD when the matrix starts), not the working tree.
3. Scores: drift-estimate error of shardsort (µm RMS against the planted
   displacement), well-detected / redundant / false-positive units, mean
   accuracy; writes ``benchmarks/results/drift.{csv,md,json}`` and
   ``drift_units.csv`` after every finished run.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from measure import Measurement
from recordings import (
    DriftSpec,
    RecordingFiles,
    RecordingSpec,
    generate_drifting,
    load_ground_truth,
)
from run_peers import (
    LOG_FILE,
    MEASUREMENT_FILE,
    failure_reason,
    not_installed_reason,
    run_one,
    run_status,
    score_run,
)
from sorters import INFO_FILE, SORTERS, SPIKES_FILE, package_version

REPO = Path(__file__).resolve().parents[2]
PEERS = ("spykingcircus2", "tridesclous2")
#: shardsort with one setting changed from the defaults, for choosing a default
#: by measurement (``--sorters shardsort_nonrigid``): key -> (label, overlay).
VARIANTS = {
    "shardsort_nonrigid": ("shardsort, non-rigid", {"motion": {"rigid": False}}),
}
CACHE_KEY_FILE = "cache_key.json"


@dataclass(frozen=True)
class Entry:
    """One recording of the matrix."""

    name: str
    recording: RecordingSpec
    drift: DriftSpec
    held_out: bool = False
    wide: bool = False

    def describe(self) -> str:
        d = self.drift
        shape = {
            "zigzag": "zigzag",
            "linear": "slow linear",
            "bump": "sudden steps",
            "random_walk": "random walk",
        }[d.mode]
        text = f"{shape} {d.peak_to_peak_um:g} µm p-p"
        if d.non_rigid_gradient is not None:
            text += f", depth-varying (gradient {d.non_rigid_gradient:g})"
        return (
            f"{text}; {self.recording.n_channels} ch, {self.recording.duration_s:g} s, "
            f"{self.recording.n_units} units, seed {self.recording.seed}"
        )


def _np64(seed: int, duration_s: float = 180.0, n_units: int = 30, n_channels: int = 64):
    return RecordingSpec(
        n_channels=n_channels, duration_s=duration_s, n_units=n_units, seed=seed
    )


def _zigzag(ptp: float, duration_s: float, **kw) -> DriftSpec:
    """Two periods, starting at 10 % of the recording (as the peer benchmark)."""
    start = 0.1 * duration_s
    return DriftSpec("zigzag", ptp, period_s=(duration_s - start) / 2.0, t_start_s=start, **kw)


MATRIX = (
    # tuning seeds
    Entry("zigzag25_s201", _np64(201), _zigzag(25.0, 180.0)),
    Entry("linear30_s202", _np64(202), DriftSpec("linear", 30.0)),
    Entry("steps20_s203", _np64(203), DriftSpec("bump", 20.0, bump_interval_s=(20.0, 50.0))),
    Entry("depthzigzag30_s204", _np64(204), _zigzag(30.0, 180.0, non_rigid_gradient=0.5)),
    # held-out seeds: not used for tuning, reported separately
    Entry("zigzag40_s301", _np64(301), _zigzag(40.0, 180.0), held_out=True),
    Entry(
        "steps30_s302",
        _np64(302),
        DriftSpec("bump", 30.0, bump_interval_s=(20.0, 50.0)),
        held_out=True,
    ),
    # long probes: rigid and depth-varying drift
    Entry(
        "np384_zigzag25_s401",
        _np64(401, duration_s=120.0, n_units=100, n_channels=384),
        _zigzag(25.0, 120.0),
        wide=True,
    ),
    Entry(
        "np384_depthzigzag30_s402",
        _np64(402, duration_s=120.0, n_units=100, n_channels=384),
        _zigzag(30.0, 120.0, non_rigid_gradient=0.5),
        wide=True,
    ),
)


# --------------------------------------------------------------------------- keys


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def recording_key(entry: Entry) -> str:
    return _digest(dict(recording=asdict(entry.recording), drift=asdict(entry.drift)))


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


# ------------------------------------------------------------------ drift estimate


def bin_planted(
    planted: np.ndarray, rate_hz: float, bin_s: float, n_bins: int
) -> np.ndarray:
    """Mean of the planted displacement samples (time ``k / rate_hz``) falling in
    each time bin ``[b, b + 1) * bin_s``; rows are bins (NaN for an empty bin)."""
    times = np.arange(len(planted)) / rate_hz
    index = np.floor(times / bin_s).astype(np.int64)
    keep = index < n_bins
    out = np.full((n_bins,) + planted.shape[1:], np.nan)
    sums = np.zeros((n_bins,) + planted.shape[1:])
    np.add.at(sums, index[keep], planted[keep])
    counts = np.bincount(index[keep], minlength=n_bins)
    filled = counts > 0
    out[filled] = sums[filled] / counts[filled].reshape((-1,) + (1,) * (planted.ndim - 1))
    return out


def drift_error(motion_h5: Path, gt_npz: Path) -> dict:
    """shardsort's displacement estimate against the planted one.

    The planted displacement (the generator's ``unit_displacements``, axial) is
    averaged into shardsort's time bins; both have their mean over time
    removed. ``sign`` is the sign of their correlation (the convention found:
    see ``drift.md``). ``rms_um``: against the depth-averaged planted
    displacement (mean over units); ``rms_units_um``: against each unit's own
    displacement, the estimate taken at the unit's depth (interpolated between
    depth windows when non-rigid; the single column when rigid), RMS over
    units and bins.
    """
    import h5py

    with h5py.File(motion_h5, "r") as h5:
        est = np.asarray(h5["displacement_um"][...], dtype=np.float64)
        centres = np.asarray(h5["window_centres_um"][...], dtype=np.float64)
        bin_samples = int(h5.attrs["bin_samples"])
        rate = float(h5.attrs["sampling_rate_hz"])
        applied = bool(h5.attrs.get("apply", True))
        decision = str(h5.attrs.get("decision", ""))
    with np.load(gt_npz) as gt:
        unit_disp = np.asarray(gt["unit_displacements"][:, :, 1], dtype=np.float64)
        disp_rate = float(gt["displacement_sampling_frequency"])
        unit_y = np.asarray(gt["unit_locations_um"][:, 1], dtype=np.float64)
    if est.ndim == 1:
        est = est[:, None]
    n_bins = len(est)
    planted = bin_planted(unit_disp, disp_rate, bin_samples / rate, n_bins)
    ok = np.all(np.isfinite(planted), axis=1)
    planted, est = planted[ok], est[ok]
    mean_planted = planted.mean(axis=1)
    mean_est = est.mean(axis=1)
    a = mean_est - mean_est.mean()
    b = mean_planted - mean_planted.mean()
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan
    sign = -1.0 if corr < 0 else 1.0
    rms = float(np.sqrt(np.mean((a - sign * b) ** 2)))
    # at each unit's depth
    if est.shape[1] == 1:
        at_units = np.repeat(est, len(unit_y), axis=1)
    else:
        at_units = np.stack([np.interp(unit_y, centres, row) for row in est])
    at_units = at_units - at_units.mean(axis=0)
    per_unit = planted - planted.mean(axis=0)
    rms_units = float(np.sqrt(np.mean((at_units - sign * per_unit) ** 2)))
    return dict(
        est_rms_um=rms,
        est_rms_units_um=rms_units,
        est_corr=corr,
        est_sign=int(sign),
        est_ptp_um=float(np.ptp(mean_est)),
        planted_ptp_um=float(np.ptp(mean_planted)),
        est_windows=int(est.shape[1]),
        est_bin_s=bin_samples / rate,
        motion_applied=applied,
        motion_decision=decision,
    )


# --------------------------------------------------------------------- running


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


def _cached_measurement(output: Path) -> Measurement | None:
    if (output / MEASUREMENT_FILE).exists():
        return Measurement(**json.loads((output / MEASUREMENT_FILE).read_text()))
    return None


def run_sorter(
    key: str, entry: Entry, files: RecordingFiles, work: Path, args, snapshot: tuple[Path, str]
) -> dict:
    """Run (or reuse) one sort and score it; a result dict (one CSV row)."""
    variant = VARIANTS.get(key)
    sorter = SORTERS["shardsort" if variant else key]
    rkey = recording_key(entry)
    version = package_version(sorter.package)
    if sorter.is_peer:
        output = work / "runs" / f"{entry.name}-{rkey}" / f"{key}-si{version}"
    else:
        output = work / "runs" / f"{entry.name}-{rkey}" / key
    row = dict(
        recording=entry.name,
        held_out=entry.held_out,
        drift=entry.describe(),
        sorter=variant[0] if variant else sorter.label,
        version=version,
        status="",
        note="",
        cached=False,
    )
    missing = not_installed_reason(sorter)
    if missing:
        row.update(status="not installed", note=missing)
        return row
    timeout_s = args.timeout_min * 60.0
    measurement = _cached_measurement(output)
    code_key = shardsort_code_key(*snapshot, overlay=variant[1] if variant else None)
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
        return row
    if reuse:
        row["cached"] = True
        print(f"{row['sorter']} on {entry.name}: cached ({output})", flush=True)
    else:
        print(f"{row['sorter']} on {entry.name} ...", flush=True)
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
                overlay=variant[1] if variant else None,
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
    if not sorter.is_peer:
        motion = output / "results" / files.name / "motion" / "motion.h5"
        if motion.exists():
            row.update(drift_error(motion, files.ground_truth))
        else:
            row["motion_decision"] = "no motion.h5 (drift not estimated)"
    mark = (
        f"{row.get('well_detected')}/{row.get('n_gt_units')} well, "
        f"{row.get('redundant_units')} redundant, {row.get('false_positive_units')} FP"
        if status == "ok"
        else note
    )
    est = (
        f"; estimate {row['est_rms_um']:.2f} µm RMS" if "est_rms_um" in row else ""
    )
    print(f"  {status} in {measurement.wall_s / 60:.1f} min: {mark}{est}", flush=True)
    return row


# --------------------------------------------------------------------- tables

CSV_FIELDS = (
    "recording", "held_out", "drift", "sorter", "version", "code", "status", "note",
    "cached", "wall_s", "cpu_s", "peak_rss_mb", "n_gt_units", "n_sorted_units",
    "well_detected", "mean_accuracy", "mean_precision", "mean_recall",
    "false_positive_units", "redundant_units", "overmerged_units",
    "est_rms_um", "est_rms_units_um", "est_corr", "est_sign", "est_ptp_um",
    "planted_ptp_um", "est_windows", "est_bin_s", "motion_applied",
    "motion_decision", "check",
)


def check(rows: list[dict], recording: str) -> str:
    """'yes' when shardsort's well-detected ≥ SC2's and redundant ≤ SC2's + 1."""
    by = {r["sorter"]: r for r in rows if r["recording"] == recording}
    ss, sc2 = by.get("shardsort"), by.get("SpykingCircus2")
    if not ss or ss.get("status") != "ok":
        return "no (shardsort did not finish)" if ss else "–"
    if not sc2 or sc2.get("status") != "ok":
        return "– (no SC2 result)"
    ok = ss["well_detected"] >= sc2["well_detected"] and ss["redundant_units"] <= sc2["redundant_units"] + 1
    return "yes" if ok else "no"


def _f(v, spec: str) -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def _label(key: str) -> str:
    return VARIANTS[key][0] if key in VARIANTS else SORTERS[key].label


def _cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    if r.get("status") != "ok":
        return r.get("status", "–")
    return (
        f"{r['well_detected']}/{r['n_gt_units']} · {r['redundant_units']} · "
        f"{r['false_positive_units']} · {r['mean_accuracy']:.3f} · {r['n_sorted_units']}"
    )


def markdown(rows: list[dict], entries: list[Entry], pending: list[str], note: str = "") -> str:
    def table(subset: list[Entry]) -> str:
        head = (
            "| recording | drift | estimate error (µm RMS: depth-avg / per unit) | "
            "shardsort | SpykingCircus2 | Tridesclous2 | shardsort well ≥ SC2 and redundant ≤ SC2 + 1 |\n"
            "|---|---|---:|---|---|---|---|\n"
        )
        lines = []
        for e in subset:
            by = {r["sorter"]: r for r in rows if r["recording"] == e.name}
            if not by:
                continue
            ss = by.get("shardsort", {})
            est = (
                f"{_f(ss.get('est_rms_um'), '.2f')} / {_f(ss.get('est_rms_units_um'), '.2f')}"
                if "est_rms_um" in ss
                else (ss.get("motion_decision") or "–")
            )
            if "est_rms_um" in ss and not ss.get("motion_applied", True):
                est += " (not applied)"
            lines.append(
                f"| {e.name} | {e.describe()} | {est} | {_cell(by.get('shardsort'))} | "
                f"{_cell(by.get('SpykingCircus2'))} | {_cell(by.get('Tridesclous2'))} | "
                f"{check(rows, e.name)} |"
            )
        return head + "\n".join(lines) + "\n" if lines else "(no results yet)\n"

    def variants_table() -> str:
        labels = [label for label, _ in VARIANTS.values()
                  if any(r["sorter"] == label for r in rows)]
        if not labels:
            return ""
        out = ["\n## Variants of shardsort (one setting changed, for choosing the default)\n"]
        for key, (label, overlay) in VARIANTS.items():
            if label not in labels:
                continue
            out.append(
                f"`{label}`: `{json.dumps(overlay)}` merged over the defaults.\n\n"
                "| recording | estimate error, defaults (µm RMS: depth-avg / per unit) | "
                f"estimate error, {label} | shardsort (defaults) | {label} | SpykingCircus2 |\n"
                "|---|---:|---:|---|---|---|"
            )
            for e in entries:
                by = {r["sorter"]: r for r in rows if r["recording"] == e.name}
                if label not in by:
                    continue
                ests = [
                    f"{_f(by.get(k, {}).get('est_rms_um'), '.2f')} / "
                    f"{_f(by.get(k, {}).get('est_rms_units_um'), '.2f')}"
                    for k in ("shardsort", label)
                ]
                out.append(
                    f"| {e.name} | {ests[0]} | {ests[1]} | {_cell(by.get('shardsort'))} | "
                    f"{_cell(by.get(label))} | {_cell(by.get('SpykingCircus2'))} |"
                )
        return "\n".join(out) + "\n"

    tuning = [e for e in entries if not e.held_out]
    held = [e for e in entries if e.held_out]
    notes = [
        f"- {r['sorter']} on {r['recording']}: {r['status']}: {r['note']}"
        for r in rows
        if r.get("note")
    ]
    times = [
        f"{r['recording']} {r['sorter']} {r['wall_s'] / 60:.1f} min"
        for r in rows
        if isinstance(r.get("wall_s"), float)
    ]
    signs = sorted({r["est_sign"] for r in rows if "est_sign" in r})
    versions = ", ".join(
        f"{p} {package_version(p)}" for p in ("shardsort", "spikeinterface", "torch", "numba")
    )
    ss_codes = sorted({r["code"] for r in rows if r.get("code")})
    text = (
        "# Drift benchmark matrix (`make bench-drift`)\n\n"
        f"Generated {datetime.datetime.now().isoformat(timespec='minutes')} by "
        "`benchmarks/peers/drift_matrix.py`"
        + (" — **partial: " + ", ".join(pending) + " still to run**" if pending else "")
        + ".\n\n"
        "- Recordings: SpikeInterface `generate_drifting_recording`, Neuropixels 1.0 geometry, "
        "30 kHz, generator's default templates, firing rates and noise, int16 binary. The planted "
        "displacement is in each `*_gt.npz` (`unit_displacements`, `displacement_vectors`, "
        "`displacement_sampling_frequency`). Zigzag: two periods starting at 10 % of the "
        "recording; slow linear: one ramp over the whole recording; sudden steps: SpikeInterface's "
        "`bump` mode (jumps between the two extremes every 20-50 s); depth-varying: "
        "`non_rigid_gradient` 0.5 (the unit farthest from the tip moves half as far as the one nearest the tip, linear in between).\n"
        f"- Sorters, one at a time, {{n_jobs}} cores each: shardsort with `config/config.yaml` as "
        "committed (drift correction `motion.enabled: auto`, post-deconvolution merge on; code "
        f"{', '.join(ss_codes) or '–'}); SpykingCircus2 and Tridesclous2 with their defaults "
        "through `run_sorter` (peer results cached per recording and SpikeInterface version).\n"
        "- Cells: well detected (accuracy ≥ 0.8) / GT units · redundant units · false-positive "
        "units · mean accuracy · units found (`compare_sorter_to_ground_truth`, delta 0.4 ms, "
        "agreement 0.2 for redundant / false-positive).\n"
        "- Estimate error: shardsort's `motion/motion.h5` `displacement_um` (time bins of "
        "`bin_samples`) against the planted axial displacement averaged into the same bins, each "
        "with its mean over time removed. Depth-avg: against the mean over units of the planted "
        "displacement; per unit: against each unit's own displacement, the estimate taken at the "
        "unit's depth (the single column for a rigid estimate), RMS over units and bins. Sign "
        "convention: shardsort's `displacement_um` correlates "
        + (
            "positively with the generator's `unit_displacements`"
            if signs == [1]
            else "negatively with the generator's `unit_displacements` (the estimate is the "
            "probe's motion, opposite to the units')"
            if signs == [-1]
            else f"with sign {signs} (per recording; see `est_sign`, `est_corr` in the CSV)"
        )
        + ".\n"
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs, shared (load average "
        f"{os.getloadavg()[0]:.1f} when written). Versions: {versions}.\n"
        + (f"- {note}\n" if note else "")
        + "\n"
        "## Tuning seeds\n\n"
        + table(tuning)
        + "\n## Held-out seeds (not used for tuning)\n\n"
        + table(held)
        + variants_table()
        + ("\n## Notes\n\n" + "\n".join(notes) + "\n" if notes else "")
        + ("\nWall times: " + "; ".join(times) + ".\n" if times else "")
    )
    return text


def write_results(
    rows: list[dict], entries: list[Entry], pending: list[str], results: Path, n_jobs: int,
    note: str = "",
) -> None:
    import csv

    results.mkdir(parents=True, exist_ok=True)
    for r in rows:
        if r["sorter"] == "shardsort":
            r["check"] = check(rows, r["recording"])
    with open(results / "drift.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k, "")) for k in CSV_FIELDS})
    with open(results / "drift_units.csv", "w", newline="") as fh:
        names = ["recording", "sorter", "gt_unit", "snr", "accuracy", "precision", "recall"]
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for r in rows:
            for u in r.get("_units", []):
                writer.writerow(dict(recording=r["recording"], sorter=r["sorter"], **u))
    (results / "drift.md").write_text(
        markdown(rows, entries, pending, note).replace("{n_jobs}", str(n_jobs))
    )
    payload = dict(
        generated=datetime.datetime.now().isoformat(timespec="seconds"),
        pending=pending,
        matrix=[
            dict(
                name=e.name,
                held_out=e.held_out,
                recording=asdict(e.recording),
                drift=asdict(e.drift),
            )
            for e in entries
        ],
        rows=[{k: v for k, v in r.items() if k != "_units"} for r in rows],
    )
    (results / "drift.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wide", action="store_true", help="also the 384-channel recordings")
    p.add_argument("--only", default="", help="comma-separated recording names")
    p.add_argument("--sorters", default="shardsort," + ",".join(PEERS))
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--timeout-min", type=float, default=30.0)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "drift")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--rerun-shardsort", action="store_true",
                   help="sort with shardsort even when a run of the same code exists")
    p.add_argument("--score-only", action="store_true",
                   help="only rebuild the tables from finished runs")
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--note", default="", help="a line added to drift.md's header")
    p.add_argument("--commit", default=None,
                   help="commit whose code shardsort runs (default: HEAD when the matrix starts)")
    args = p.parse_args(argv)
    args.sorters = [s for s in args.sorters.split(",") if s]
    bad = sorted(set(args.sorters) - {"shardsort", *VARIANTS, *PEERS})
    if bad:
        p.error(f"--sorters: unknown {bad}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    entries = [e for e in MATRIX if args.wide or not e.wide]
    if args.only:
        names = set(args.only.split(","))
        entries = [e for e in MATRIX if e.name in names]
    data = args.work / "data"
    snapshot = code_snapshot(args.work, args.commit)
    print(f"shardsort runs from {snapshot[0]} (commit {snapshot[1][:8]})", flush=True)

    # Order: shardsort on every recording first (tuning seeds, then held out,
    # then the wide one), then the peers; tables rewritten after each run.
    plan = [(k, e) for e in entries for k in ("shardsort", *VARIANTS) if k in args.sorters]
    for e in entries:
        plan += [(k, e) for k in PEERS if k in args.sorters]
    plan.sort(key=lambda ke: (ke[1].wide, ke[0] in PEERS, ke[1].held_out))
    rows: dict[tuple[str, str], dict] = {}
    files_of: dict[str, RecordingFiles] = {}
    started = time.perf_counter()
    for i, (key, entry) in enumerate(plan):
        if entry.name not in files_of:
            if args.score_only:
                f = RecordingFiles(entry.name, data)
                if not f.ground_truth.exists():
                    continue
                files_of[entry.name] = f
            else:
                t0 = time.perf_counter()
                print(f"generating {entry.name} ({entry.describe()}) ...", flush=True)
                files_of[entry.name] = generate_drifting(
                    entry.recording, entry.drift, data, entry.name, n_jobs=args.n_jobs
                )
                print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
        if args.generate_only:
            continue
        try:
            row = run_sorter(key, entry, files_of[entry.name], args.work, args, snapshot)
        except Exception as error:  # keep the matrix going; record why
            row = dict(
                recording=entry.name, held_out=entry.held_out, drift=entry.describe(),
                sorter=_label(key), version=package_version(SORTERS.get(key, SORTERS["shardsort"]).package),
                status="error", note=f"{type(error).__name__}: {error}"[:200],
            )
            print(f"  error: {row['note']}", flush=True)
        rows[(entry.name, key)] = row
        ordered = [rows[(e.name, k)] for k, e in plan if (e.name, k) in rows]
        pending = [f"{_label(k)} on {e.name}" for k, e in plan[i + 1 :]] + [
            f"{r['sorter']} on {r['recording']}" for r in ordered if r["status"] == "not run"
        ]
        write_results(ordered, entries, pending, args.results, args.n_jobs, args.note)
    print(f"matrix done in {(time.perf_counter() - started) / 60:.1f} min; "
          f"written {args.results}/drift.{{csv,md,json}}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
