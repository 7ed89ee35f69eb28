"""Memory and time of the global motion job versus recording length (section ``motion_scaling``).

:func:`shardsort.motion.estimate_motion` on synthetic depth histograms of a
384-channel Neuropixels probe (3,840 µm, 5-µm depth bins, 766 bins) in 2-s
time bins: 10 min, 1 h, 2 h and 4 h (300 to 7,200 bins), rigid and non-rigid
(``window_step_um: 100``, 38 windows), with the defaults of
``config/config.yaml``. The histograms: 120 Gaussian units (sd 8 µm) at
random depths, Poisson counts, moving by a slow ramp (30 µm over the
recording) plus a 10-µm zigzag of period 10 min; non-rigid, the drift grows
from 0.7x at the bottom to 1.3x at the top.

``before``
    The module at :data:`BASELINE` (every pair of time bins, dense
    ``n x n`` lag / correlation / weight / residual arrays and a dense
    ``np.linalg.solve``), read from git, with ``time_horizon_bins: 0`` (its
    default, all pairs). Measured where it fits (10 min; 1 h rigid); longer
    ones are modelled (``modelled: True``): memory as the measured bytes per
    ``n**2`` of the 1-h run times ``n**2``, CPU time as the 1-h run's times
    ``(n / 1800)**2`` (the pairs; the ``n**3`` solve makes it a lower bound),
    non-rigid as the rigid figure times the ratio measured at 10 min.
``after``
    This tree: pairs banded within ``motion.time_horizon_s`` (default 600 s:
    300 bins), banded Cholesky solve. Non-rigid, 38 windows cost about 38
    rigid estimates: 2 h and 4 h are modelled as the rigid row times the
    measured 1-h non-rigid/rigid CPU ratio (memory: the rigid row's, the
    windows run one after the other).

Every case runs in a fresh process (single-threaded BLAS): ``cpu_s`` is its
CPU time in ``estimate_motion``, ``peak_MB`` the largest memory that
``tracemalloc`` saw allocated during the call (numpy reports its arrays to
it), ``max_rss_MB`` the process's peak resident set (Python, numpy and the
input histograms included). ``rms_error_um``: against the planted drift
(rigid: the mean of the units' drift; non-rigid: each window's drift at its
centre), both mean zero; ``max_diff_to_before_um``: largest difference to the
measured ``before`` estimate of the same case.

Run alone: ``python benchmarks/bench_motion.py`` (about 6 minutes on a
quiet core; ``--quick``: 10 min and 1 h rigid only), or ``run_all.py --only
motion_scaling``. Writes ``benchmarks/results/motion_scaling.csv`` and ``.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: Last commit with the dense (all pairs, n x n) registration.
BASELINE = "c476a46ed546ba27c38f77e83cb03e6a69b580a2"
N_CHANNELS = 384
BIN_S = 2.0
MINUTES = (10.0, 60.0, 120.0, 240.0)
QUICK_MINUTES = (10.0, 60.0)
#: Cases of the dense version that are measured (others are modelled).
BEFORE_MEASURED = {(10.0, True), (10.0, False), (60.0, True)}
#: Non-rigid cases of the banded version that are measured: 38 windows cost 38
#: rigid estimates (about 4 CPU min at 1 h); longer ones are modelled.
AFTER_NONRIGID_MEASURED = {10.0, 60.0}
N_UNITS = 120


def module(version: str) -> ModuleType:
    """``shardsort.motion`` of this tree (``after``) or of :data:`BASELINE`."""
    if version == "after":
        import shardsort.motion

        return shardsort.motion
    source = subprocess.run(
        ["git", "show", f"{BASELINE}:src/shardsort/motion.py"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="shardsort_baseline_")) / "motion.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("shardsort._baseline_motion", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def settings(config: dict, rigid: bool, version: str) -> dict:
    """estimate_motion's arguments as scripts/motion.py makes them from the config."""
    cfg = config["motion"]
    horizon = cfg["time_horizon_s"] if version == "after" else 0.0
    return dict(
        bin_um=cfg["depth_bin_um"],
        max_displacement_um=cfg["max_displacement_um"],
        rigid=rigid,
        window_step_um=cfg["window_step_um"],
        window_sigma_um=cfg["window_sigma_um"],
        min_correlation=cfg["min_correlation"],
        time_horizon_bins=int(np.ceil(horizon / BIN_S - 1e-9)) if horizon > 0 else 0,
        robust_iterations=cfg["robust_iterations"],
        smoothing_bins=cfg["smoothing_s"] / BIN_S,
        edge_um=cfg["edge_um"],
    )


def synthetic(minutes: float, rigid: bool, bin_um: float, seed: int = 0):
    """Histograms (n_time, n_depth), depth centres, channel depths, drift function."""
    from shardsort.motion import depth_bin_edges
    from shardsort.synth import neuropixels_like_geometry

    positions = neuropixels_like_geometry(N_CHANNELS)
    edges = depth_bin_edges(positions, bin_um=bin_um)
    depth = 0.5 * (edges[1:] + edges[:-1])
    n_time = int(round(60.0 * minutes / BIN_S))
    t = (np.arange(n_time) + 0.5) * BIN_S
    top = positions[:, 1].max()

    def drift(time_s, depth_um):
        base = 30.0 * time_s / (60.0 * minutes) + 10.0 * np.abs((time_s / 300.0) % 2.0 - 1.0)
        return base if rigid else base * (0.7 + 0.6 * np.clip(depth_um / top, 0.0, 1.0))

    rng = np.random.default_rng(seed)
    hist = rng.poisson(0.3, (n_time, len(depth))).astype(np.float64)
    span = int(np.ceil(40.0 / bin_um))
    for centre, rate in zip(rng.uniform(0.0, top, N_UNITS), rng.uniform(3.0, 15.0, N_UNITS)):
        position = centre + drift(t, centre)
        near = int(np.searchsorted(depth, centre))
        cols = np.arange(max(near - span - 30, 0), min(near + span + 30, len(depth)))
        shape = np.exp(-0.5 * ((depth[cols][None, :] - position[:, None]) / 8.0) ** 2)
        hist[:, cols] += rng.poisson(rate * shape)
    return hist * 3.0, depth, positions[:, 1], drift, t


def run_case(version: str, minutes: float, rigid: bool, out: str) -> dict:
    """One measurement (in its own process): CPU, memory and error of one estimate."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    kwargs = settings(config, rigid, version)
    hist, depth, channels, drift, t = synthetic(minutes, rigid, kwargs["bin_um"])
    motion = module(version)
    tracemalloc.start()
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    displacement, centres = motion.estimate_motion(
        hist, depth_um=depth, channel_depths_um=channels, **kwargs
    )
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    truth = np.stack([drift(t, c) for c in centres], axis=1)
    error = (displacement - displacement.mean(0)) - (truth - truth.mean(0))
    np.save(out, displacement)
    return {
        "n_time_bins": len(hist),
        "n_depth_bins": hist.shape[1],
        "n_windows": len(centres),
        "horizon_bins": kwargs["time_horizon_bins"],
        "cpu_s": cpu,
        "wall_s": wall,
        "peak_MB": peak / 1e6,
        "max_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        "rms_error_um": float(np.sqrt(np.mean(error**2))),
    }


def measure(version: str, minutes: float, rigid: bool, folder: Path) -> dict:
    out = folder / f"{version}_{minutes:g}_{'rigid' if rigid else 'nonrigid'}.npy"
    proc = subprocess.run(
        [sys.executable, __file__, "--case", version, str(minutes), str(int(rigid)), str(out)],
        capture_output=True, text=True, cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"motion {version} {minutes} min failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rows_for(minutes_list, log=print) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_motion_") as tmp:
        folder = Path(tmp)
        for rigid in (True, False):
            for minutes in minutes_list:
                case = {"duration_min": minutes, "rigid": rigid}
                for version in ("before", "after"):
                    if version == "before" and (minutes, rigid) not in BEFORE_MEASURED:
                        continue
                    if version == "after" and not rigid and minutes not in AFTER_NONRIGID_MEASURED:
                        continue
                    log(f"motion: {version} {minutes:g} min {'rigid' if rigid else 'non-rigid'}")
                    result = measure(version, minutes, rigid, folder)
                    rows.append({**case, "version": version, "modelled": False, **result})
                tag = f"{minutes:g}_{'rigid' if rigid else 'nonrigid'}.npy"
                before, after = folder / f"before_{tag}", folder / f"after_{tag}"
                if before.exists() and after.exists():
                    diff = float(np.abs(np.load(before) - np.load(after)).max())
                    rows[-1]["max_diff_to_before_um"] = diff
    return model_before(model_after(rows, minutes_list), minutes_list)


def model_after(rows: list[dict], minutes_list) -> list[dict]:
    """Non-rigid banded rows not measured: the rigid row times the 1-h non-rigid/rigid ratio.

    Memory is the rigid row's: the windows are registered one after the other.
    """
    after = {(r["duration_min"], r["rigid"]): r for r in rows if r["version"] == "after"}
    longest = max(m for m in AFTER_NONRIGID_MEASURED if (m, False) in after)
    ratio = after[(longest, False)]["cpu_s"] / after[(longest, True)]["cpu_s"]
    extra = []
    for minutes in minutes_list:
        if (minutes, False) in after or (minutes, True) not in after:
            continue
        rigid = after[(minutes, True)]
        extra.append({
            "duration_min": minutes, "rigid": False, "version": "after", "modelled": True,
            "n_time_bins": rigid["n_time_bins"], "n_depth_bins": rigid["n_depth_bins"],
            "n_windows": after[(longest, False)]["n_windows"],
            "horizon_bins": rigid["horizon_bins"], "cpu_s": rigid["cpu_s"] * ratio,
            "peak_MB": rigid["peak_MB"],
        })
    return rows + extra


def model_before(rows: list[dict], minutes_list) -> list[dict]:
    """Rows of the dense version where it was not measured (see the module docstring)."""
    measured = {(r["duration_min"], r["rigid"]): r for r in rows if r["version"] == "before"}
    reference = max((r for r in measured.values() if r["rigid"]),
                    key=lambda r: r["n_time_bins"])
    n_ref = reference["n_time_bins"]
    small = (measured.get((10.0, True)), measured.get((10.0, False)))
    windows = small[1]["cpu_s"] / small[0]["cpu_s"] if all(small) else np.nan
    modelled = []
    for rigid in (True, False):
        for minutes in minutes_list:
            if (minutes, rigid) in measured:
                continue
            after = next(r for r in rows if r["version"] == "after"
                         and r["duration_min"] == minutes and r["rigid"] == rigid)
            # (modelled after rows included: the shapes are the same)
            n = after["n_time_bins"]
            growth = (n / n_ref) ** 2
            modelled.append({
                "duration_min": minutes, "rigid": rigid, "version": "before",
                "modelled": True, "n_time_bins": n, "n_depth_bins": after["n_depth_bins"],
                "n_windows": after["n_windows"], "horizon_bins": 0,
                "cpu_s": reference["cpu_s"] * growth * (1.0 if rigid else windows),
                "peak_MB": reference["peak_MB"] * growth,
            })
    order = {(m, r): k for k, (r, m) in enumerate(
        (r, m) for r in (True, False) for m in minutes_list)}
    return sorted(rows + modelled, key=lambda r: (order[(r["duration_min"], r["rigid"])],
                                                  r["version"] != "before"))


NOTE = (
    "estimate_motion on synthetic 384-channel histograms (766 depth bins of 5 um, "
    "2-s time bins, 120 moving units), config defaults; before: the dense "
    f"all-pairs version of commit {BASELINE[:8]}, after: pairs within "
    "time_horizon_s (600 s = 300 bins), banded solve. One fresh process per case, "
    "one core; peak_MB: tracemalloc peak during the call; modelled rows: the "
    "dense version extrapolated from its measured 1-h rigid run (n**2 memory, "
    "n**2 time as a lower bound: its solve is n**3), non-rigid by the 10-min "
    "non-rigid/rigid ratio; the banded non-rigid 2-h and 4-h rows are modelled "
    "as the rigid row times the measured 1-h non-rigid/rigid CPU ratio (38 windows "
    "are 38 rigid registrations: about 4 CPU min at 1 h, too slow to run each "
    "time). max_diff_to_before_um: 10 min keeps all pairs (same "
    "result); at 1 h the horizon drops pairs over 10 min apart."
)


def run(ctx=None) -> list:
    """Section ``motion_scaling`` of ``run_all.py``: one table, ``motion_scaling.csv``."""
    from benchlib import Table

    quick = bool(ctx and ctx.quick)
    log = ctx.log if ctx else print
    rows = rows_for(QUICK_MINUTES if quick else MINUTES, log)
    if quick:
        rows = [r for r in rows if r["rigid"]]
    return [Table("motion_scaling", "Motion job memory and time versus recording length "
                  "(issue 17)", rows, NOTE)]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        version, minutes, rigid, out = sys.argv[2:6]
        print(json.dumps(run_case(version, float(minutes), rigid == "1", out)))
        return 0
    sys.path.insert(0, str(HERE))
    from run_all import environment

    quick = "--quick" in sys.argv
    start = time.perf_counter()

    class _Ctx:
        pass

    ctx = _Ctx()
    ctx.quick = quick
    ctx.log = lambda message: print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
    tables = run(ctx)
    results = HERE / "results" / ("quick" if quick else "")
    results.mkdir(parents=True, exist_ok=True)
    elapsed = time.perf_counter() - start
    for table in tables:
        table.write_csv(results / f"{table.key}.csv")
        print(table.markdown())
    record = {
        "environment": environment(),
        "quick": quick,
        "elapsed_s": elapsed,
        "tables": [{"key": t.key, "title": t.title, "note": t.note, "rows": t.rows}
                   for t in tables],
    }
    (results / "motion_scaling.json").write_text(json.dumps(record, indent=1, default=float))
    print(f"took {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
