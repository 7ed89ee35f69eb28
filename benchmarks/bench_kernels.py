"""Kernel speed before and after issue 16's speed-ups (section ``kernels``).

The "before" kernels are the modules as they were at :data:`BASELINE`, read
from git and imported next to the current ones, so that both run in the same
process, on the same data, alternately (best of :data:`REPS`): the ratios hold
on a busy machine even where the absolute times do not. Rows:

``filter``
    :func:`shardsort.preprocess.bandpass_filter` on a 384-channel window of
    6.6 s plus the filter margins (µV float32 from int16, as the filter job
    reads it), in 32-channel blocks (the filter job's) and whole. MB/s is
    int16 input per CPU second (one core); ``max_rel_error`` is the largest
    difference to ``scipy.signal.sosfiltfilt`` relative to its maximum (32
    channels, whole window).
``deconvolve``
    :func:`shardsort.deconvolve.deconvolve_chunk` on 2 s of 384 channels,
    150 synthetic units (:mod:`shardsort.synth`) with sparse templates as the
    workflow makes them (averaged noise, then ``sparsify_templates``), each
    version with the basis of its own ``prepare_templates``; ``identical``:
    the same spikes (sample and unit) before and after.
``prepare_templates``
    The basis of those 150 templates (the ``templates`` job's last step).
``accumulate_templates``
    The template-sum kernel on the same traces (random spikes, 150 units);
    ``identical``: bit-identical sums.
``job``
    Per-job cost in a fresh process (every Snakemake job is one): imports,
    numba's first call, and the work of one filter job (192 or 384 channels x
    6.6 s, read by memmap in 32-channel blocks as ``scripts/filter.py`` does) or of
    a tiny deconvolution (fixed cost only). ``cold``: numba compiles (empty
    cache), ``warm``: it loads its cache. The first call of any numba
    function costs about 0.4 s (numba imports, among others, scipy.linalg),
    which a job pays once.

Run alone: ``python benchmarks/bench_kernels.py`` (about a minute; writes
``benchmarks/results/kernels.csv``), or ``run_all.py --only kernels``.
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
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: Last commit before the compiled kernels (filter, deconvolution).
BASELINE = "b7b25482575bc1675506e5ca4935912c319079e4"
REPS = 3
RATE_HZ = 30_000.0
BAND = {"freq_min_hz": 300.0, "freq_max_hz": 6000.0, "order": 3}
MATCH = {
    "amplitude_min": 0.6,
    "amplitude_max": 1.6,
    "refractory_samples": 30,
}


def baseline_module(name: str) -> ModuleType:
    """``shardsort.<name>`` as it was at :data:`BASELINE`, imported from git."""
    key = f"shardsort._baseline_{name}"
    if key in sys.modules:
        return sys.modules[key]
    source = subprocess.run(
        ["git", "show", f"{BASELINE}:src/shardsort/{name}.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="shardsort_baseline_"))
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def current_module(name: str) -> ModuleType:
    return importlib.import_module(f"shardsort.{name}")


def versions(name: str) -> dict[str, ModuleType]:
    return {"before": baseline_module(name), "after": current_module(name)}


def cpu_best(calls: dict[str, callable], reps: int = REPS) -> dict[str, float]:
    """Best CPU seconds of each call, the calls alternating (first call: warm-up)."""
    for call in calls.values():
        call()
    best = {name: np.inf for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            start = time.process_time()
            call()
            best[name] = min(best[name], time.process_time() - start)
    return best


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def raw_int16(n_samples: int, n_channels: int, seed: int = 0) -> np.ndarray:
    """int16 'raw' traces: DC offsets, a slow LFP swing, noise, sparse spikes."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / RATE_HZ
    x = rng.normal(0.0, 30.0, (n_samples, n_channels)).astype(np.float32)
    x += rng.integers(-2000, 2000, n_channels).astype(np.float32)
    x += (400.0 * np.sin(2 * np.pi * 4.0 * t))[:, None].astype(np.float32)
    spikes = rng.integers(0, n_samples - 30, n_samples // 100)
    channels = rng.integers(0, n_channels, spikes.size)
    for offset, value in enumerate(-200.0 * np.hanning(30)):
        x[spikes + offset, channels] += value
    return np.round(x).astype(np.int16)


def synthetic_chunk(n_channels: int, duration_s: float, n_units: int, seed: int):
    """Whitened-like traces with planted spikes and sparse noisy templates."""
    from shardsort.synth import SynthParams, ground_truth_arrays
    from shardsort.templates import sparsify_templates

    params = SynthParams(
        n_channels=n_channels, duration_s=duration_s, n_units=n_units, seed=seed
    )
    truth = ground_truth_arrays(params)
    clean = (truth["templates_uv"] / truth["noise_uv"]).astype(np.float32)
    trough = int(truth["trough_index"])
    n_times = clean.shape[1]
    rng = np.random.default_rng(seed)
    n_samples = int(truth["n_samples"])
    traces = rng.standard_normal((n_samples + n_times, n_channels), dtype=np.float32)
    for sample, unit in zip(
        truth["spike_sample_index"], truth["spike_unit_index"], strict=True
    ):
        start = sample - trough + n_times // 2
        if 0 <= start:
            traces[start : start + n_times] += clean[unit]
    # Mean templates of 200 snippets keep averaged noise, which sparsify removes.
    counts = np.full(n_units, 200)
    noisy = clean + rng.normal(0, 1 / np.sqrt(200), clean.shape).astype(np.float32)
    return traces, sparsify_templates(noisy, counts), trough


# ---------------------------------------------------------------------------
# in-process kernels
# ---------------------------------------------------------------------------


def filter_rows(reps: int) -> list[dict]:
    from scipy import signal

    modules = versions("preprocess")
    sos = modules["after"].design_bandpass(sampling_rate_hz=RATE_HZ, **BAND)
    margin = modules["after"].filter_margin_samples(sos)
    core = 198_000  # one chunk of the workflow's plan at 384 channels, 2 GB
    raw = raw_int16(core + 2 * margin, 384)
    window = raw.astype(np.float32) * np.float32(0.195)
    # Accuracy on the first 32 channels (the float64 reference of all 384
    # channels would take 0.6 GB).
    reference = signal.sosfiltfilt(sos, window[:, :32].astype(np.float64), axis=0)
    rows = []
    for block in (32, 384):
        blocks = [window[:, i : i + block].copy() for i in range(0, 384, block)]

        def run(module, blocks=blocks):
            kwargs = {
                "sos": sos,
                "core_start": margin,
                "core_stop": margin + core,
                "at_recording_start": False,
                "at_recording_end": False,
            }
            for b in blocks:
                module.bandpass_filter(b, **kwargs)

        calls = {name: (lambda m=m: run(m)) for name, m in modules.items()}
        best = cpu_best(calls, reps)
        case = f"384 ch x {core / RATE_HZ:.1f} s, {block}-channel blocks"
        row = {"kernel": "filter", "case": case}
        for name, module in modules.items():
            whole = module.bandpass_filter(
                window[:, :32],
                sos=sos,
                core_start=0,
                core_stop=window.shape[0],
                at_recording_start=True,
                at_recording_end=True,
            )
            error = np.abs(whole - reference).max()
            row[f"{name}_cpu_s"] = best[name]
            row[f"{name}_MB/s"] = window.size * 2 / best[name] / 1e6
            row[f"{name}_max_rel_error"] = error / np.abs(reference).max()
        row["speedup"] = best["before"] / best["after"]
        rows.append(row)
    return rows


def block_write_rows(reps: int) -> list[dict]:
    """The filter job's write of one 32-channel block into its 192-channel output."""
    out = np.zeros((198_000, 192), np.float32)
    block = np.ones((198_000, 32), np.float32)
    columns = np.arange(32, 64)

    def by_index() -> None:
        out[:, columns] = block

    def by_slice() -> None:
        out[:, 32:64] = block

    best = cpu_best({"before": by_index, "after": by_slice}, reps)
    return [
        {
            "kernel": "filter job block write",
            "case": "198000 x 32 into 198000 x 192: index array -> slice",
            "before_cpu_s": best["before"],
            "after_cpu_s": best["after"],
            "speedup": best["before"] / best["after"],
        }
    ]


def template_sums_rows(reps: int, data: dict) -> list[dict]:
    """:func:`shardsort.templates.accumulate_templates` on the deconvolution data."""
    modules = versions("templates")
    traces, templates, trough = data["traces"], data["templates"], data["trough"]
    rng = np.random.default_rng(4)
    n_spikes = traces.shape[0] // 30  # ~1,000 spikes per second of 384 channels
    samples = rng.integers(trough, traces.shape[0] - templates.shape[1], n_spikes)
    labels = rng.integers(0, templates.shape[0], n_spikes)
    sums = {}

    def run(name: str) -> None:
        sums[name] = modules[name].accumulate_templates(
            traces,
            samples,
            labels,
            n_units=templates.shape[0],
            pre_samples=trough,
            post_samples=templates.shape[1] - trough,
        )

    best = cpu_best({name: (lambda n=name: run(n)) for name in modules}, reps)
    identical = all(
        np.array_equal(a, b) for a, b in zip(sums["before"], sums["after"], strict=True)
    )
    seconds = traces.shape[0] / RATE_HZ
    return [
        {
            "kernel": "accumulate_templates",
            "case": f"384 ch x {seconds:.1f} s, {n_spikes} spikes",
            "before_cpu_s": best["before"],
            "after_cpu_s": best["after"],
            "speedup": best["before"] / best["after"],
            "identical": identical,
        }
    ]


def deconvolve_rows(reps: int, data: dict) -> list[dict]:
    modules = versions("deconvolve")
    traces, templates, trough = data["traces"], data["templates"], data["trough"]
    bases = {
        name: module.prepare_templates(templates, pre_samples=trough)
        for name, module in modules.items()
    }
    thresholds = modules["after"].unit_thresholds(
        bases["after"], highest=25.0, lowest=16.0, recall_margin=2.0
    )
    margin = bases["after"].margin_samples
    found = {}

    def run(name: str) -> None:
        found[name] = modules[name].deconvolve_chunk(
            traces,
            bases[name],
            core_start=margin,
            core_stop=traces.shape[0] - margin,
            threshold=thresholds,
            **MATCH,
        )

    best = cpu_best({name: (lambda n=name: run(n)) for name in modules}, reps)
    keys = ["sample_index", "unit_index"]
    before, after = found["before"], found["after"]
    identical = before.size == after.size and bool(
        np.array_equal(before[keys], after[keys])
    )
    prepare = cpu_best(
        {
            name: (
                lambda m=module: m.prepare_templates(templates, pre_samples=trough)
            )
            for name, module in modules.items()
        },
        1,
    )
    seconds = traces.shape[0] / RATE_HZ
    return [
        {
            "kernel": "deconvolve",
            "case": f"384 ch x {seconds:.1f} s, {templates.shape[0]} units",
            "before_cpu_s": best["before"],
            "after_cpu_s": best["after"],
            "speedup": best["before"] / best["after"],
            "spikes": int(after.size),
            "identical": identical,
        },
        {
            "kernel": "prepare_templates",
            "case": f"{templates.shape[0]} units x 384 ch",
            "before_cpu_s": prepare["before"],
            "after_cpu_s": prepare["after"],
            "speedup": prepare["before"] / prepare["after"],
        },
    ]


# ---------------------------------------------------------------------------
# per-job cost (fresh processes)
# ---------------------------------------------------------------------------


def job_worker(kind: str, version: str, folder: Path) -> dict:
    """One job's work in this (fresh) process; returns its own timings."""
    start = time.perf_counter()
    module = (baseline_module if version == "before" else current_module)(
        "preprocess" if kind.startswith("filter") else "deconvolve"
    )
    if kind.startswith("filter"):
        from shardsort.io.raw import Recording

        meta = json.loads((folder / "filter.json").read_text())
        recording = Recording(
            folder / "raw.bin",
            n_channels=meta["n_channels"],
            dtype="int16",
            sampling_rate_hz=RATE_HZ,
            gain_to_uv=0.195,
        )
        sos, margin = np.asarray(meta["sos"]), meta["margin"]
        n, lo, hi = recording.n_samples, 0, int(kind.split(":")[1])
        out = np.empty((n - 2 * margin, hi - lo), np.float32)
        for first in range(lo, hi, 32):
            channels = np.arange(first, min(first + 32, hi))
            out[:, first - lo : first - lo + channels.size] = module.bandpass_filter(
                recording.get_traces(0, n, channels=channels),
                sos=sos,
                core_start=margin,
                core_stop=n - margin,
                at_recording_start=False,
                at_recording_end=False,
            )
    else:
        arrays = dict(np.load(folder / f"basis_{version}.npz"))
        basis = module.DeconvBasis.from_arrays(arrays)
        traces = np.load(folder / "traces.npy")
        module.deconvolve_chunk(
            traces,
            basis,
            core_start=0,
            core_stop=traces.shape[0],
            threshold=25.0,
            **MATCH,
        )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "work_wall_s": time.perf_counter() - start,
        "process_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def run_job(kind: str, version: str, folder: Path, cache: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--job", kind, version, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {version} job failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"process_wall_s": wall, **result}


def job_rows(data: dict) -> list[dict]:
    after = current_module("preprocess")
    sos = after.design_bandpass(sampling_rate_hz=RATE_HZ, **BAND)
    margin = after.filter_margin_samples(sos)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_kernels_") as tmp:
        folder = Path(tmp)
        core = 198_000  # one 384-channel x 2-min chunk of the workflow's plan
        raw_int16(core + 2 * margin, 384, seed=1).tofile(folder / "raw.bin")
        (folder / "filter.json").write_text(
            json.dumps({"n_channels": 384, "sos": sos.tolist(), "margin": margin})
        )
        np.save(folder / "traces.npy", data["traces"][:3000])
        for version, module in versions("deconvolve").items():
            basis = module.prepare_templates(
                data["templates"], pre_samples=data["trough"]
            )
            np.savez(folder / f"basis_{version}.npz", **basis.to_arrays())
        cases = {
            "filter:192": "filter job: 192 ch x 6.6 s",
            "filter:384": "filter job: 384 ch x 6.6 s",
            "deconvolve": "deconvolve fixed cost: 0.1 s",
        }
        for kind, case in cases.items():
            cache = folder / f"numba_{kind.replace(':', '_')}"
            runs = {"after cold": run_job(kind, "after", folder, cache)}
            timings = {"before": [], "after warm": []}
            for _ in range(2):
                timings["before"].append(run_job(kind, "before", folder, cache))
                timings["after warm"].append(run_job(kind, "after", folder, cache))
            for name, results in timings.items():
                runs[name] = min(results, key=lambda r: r["process_cpu_s"])
            for name in ("before", "after cold", "after warm"):
                row = {"kernel": "job", "case": case, "version": name}
                rows.append({**row, **runs[name]})
    return rows


def run(ctx=None) -> list:
    """Section ``kernels`` of ``run_all.py``: one table, also ``kernels.csv``."""
    from benchlib import Table

    quick = bool(ctx and ctx.quick)
    reps = 1 if quick else REPS
    traces, templates, trough = synthetic_chunk(384, 2.0, 150, seed=3)
    data = {"traces": traces, "templates": templates, "trough": trough}
    rows = filter_rows(reps) + block_write_rows(reps)
    rows += deconvolve_rows(reps, data) + template_sums_rows(reps, data)
    rows += job_rows(data)
    note = (
        f"Before: the kernels at commit {BASELINE[:8]}; after: this tree. Same "
        "process, same data, alternating, best CPU time; MB/s of int16 input per "
        "core. Job rows: one fresh process each (imports + numba + work)."
    )
    return [Table("kernels", "Kernel speed before/after (issue 16)", rows, note)]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--job":
        kind, version, folder = sys.argv[2], sys.argv[3], Path(sys.argv[4])
        print(json.dumps(job_worker(kind, version, folder)))
        return 0
    sys.path.insert(0, str(HERE))
    start = time.perf_counter()
    tables = run()
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    for table in tables:
        table.write_csv(results / f"{table.key}.csv")
        print(table.markdown())
    print(f"took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
