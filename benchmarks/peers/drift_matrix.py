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
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matrixlib import (
    add_matrix_arguments,
    code_snapshot,
    digest,
    error_row,
    score_mark,
    shardsort_code_key,
    sort_and_score,
    write_rows_csv,
    write_units_rows,
)
from matrixlib import fmt as _f
from recordings import (
    DriftSpec,
    RecordingFiles,
    RecordingSpec,
    generate_drifting,
)
from sorters import SORTERS, package_version

REPO = Path(__file__).resolve().parents[2]
PEERS = ("spykingcircus2", "tridesclous2")
#: shardsort with one setting changed from the defaults, for choosing a default
#: by measurement (``--sorters shardsort_nonrigid``): key -> (label, overlay).
VARIANTS = {
    "shardsort_nonrigid": ("shardsort, non-rigid", {"motion": {"rigid": False}}),
}


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


def recording_key(entry: Entry) -> str:
    return digest(dict(recording=asdict(entry.recording), drift=asdict(entry.drift)))


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
    code_key = shardsort_code_key(*snapshot, overlay=variant[1] if variant else None)
    measurement = sort_and_score(
        sorter, files, output, row, args, snapshot, code_key,
        overlay=variant[1] if variant else None,
    )
    if measurement is None:
        return row
    if not sorter.is_peer:
        motion = output / "results" / files.name / "motion" / "motion.h5"
        if motion.exists():
            row.update(drift_error(motion, files.ground_truth))
        else:
            row["motion_decision"] = "no motion.h5 (drift not estimated)"
    est = (
        f"; estimate {row['est_rms_um']:.2f} µm RMS" if "est_rms_um" in row else ""
    )
    print(f"  {row['status']} in {measurement.wall_s / 60:.1f} min: {score_mark(row)}{est}",
          flush=True)
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
    results.mkdir(parents=True, exist_ok=True)
    for r in rows:
        if r["sorter"] == "shardsort":
            r["check"] = check(rows, r["recording"])
    write_rows_csv(results / "drift.csv", rows, CSV_FIELDS)
    write_units_rows(results / "drift_units.csv", rows)
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
    add_matrix_arguments(
        p, sorters="shardsort," + ",".join(PEERS), work=REPO / "benchmarks" / "work" / "drift",
        results=REPO / "benchmarks" / "results", name="drift.md",
    )
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
            row = error_row(dict(
                recording=entry.name, held_out=entry.held_out, drift=entry.describe(),
                sorter=_label(key), version=package_version(SORTERS.get(key, SORTERS["shardsort"]).package),
            ), error)
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
