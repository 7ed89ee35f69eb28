"""Peak memory of the global (one-per-recording) jobs against the number of spikes.

The per-chunk jobs are bounded by ``shards.max_memory_mb``; the global jobs
(merge_spikes, merge_clusters, templates, merge_units, metrics, ground_truth,
export_phy, export_nwb, report_overview, report_units) read what every chunk
produced, so their memory can grow with the recording's duration. One
per-chunk job that reads global tables, template_sums, is measured too (one
6-s chunk in the middle of the recording): only its spike-table part may grow. This benchmark builds
synthetic inputs in the real file formats of the upstream jobs (per-chunk
detection, clustering and deconvolution ``.npz`` files, template sums, one
preprocessed chunk, ``spikes.h5``,
``clusters.h5``, ``templates.h5``, ``sorting.h5``, ...) for a 384-channel,
150-unit recording at two or three spike counts (1,500 spikes/s: 150 units at
10 Hz, 6-s chunks), and runs every job's own script on them in a fresh Python
process (a stand-in ``snakemake`` object), recording its peak resident memory
(``VmHWM``, which counts touched pages of memory maps too).

Per job: peak RSS at each spike count, the fitted slope (MB per million
spikes; times 5.4 million spikes per hour at 384 channels), and the
projection at 2 h x 384 channels (10.8 million spikes). With ``--baseline
REV`` the same inputs also go through the scripts and package of git
revision ``REV`` (``git archive``), and each job's outputs are compared with
the current code's (``same_output``: every HDF5 dataset, ``.npy`` array and
text file equal; figures are not compared).

Run alone (``python benchmarks/bench_global_memory.py [--quick] [--baseline REV]``)
or as the ``global_memory`` section of ``run_all.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
from benchlib import REPO, Table, load_config, single_thread_env

N_CHANNELS = 384
N_UNITS = 150
RATE_HZ = 30000.0
SPIKES_PER_S = 1500.0  # 150 units x 10 Hz
CHUNK_S = 6.0
PRE, POST = 30, 45  # detect.ms_before / ms_after at 30 kHz
N_PCS, N_NEIGHBOURS = 3, 10
PROJECT_HOURS = 2.0
SPIKES_PER_HOUR = SPIKES_PER_S * 3600.0
N_GROUPS = 8  # clustering channel groups (contiguous ranges of units)
TRIAGED = 0.02  # fraction of spikes the clustering leaves unassigned
JOBS = (
    "merge_spikes", "merge_clusters", "template_sums", "templates", "merge_units",
    "metrics", "ground_truth", "export_phy", "export_nwb", "report_overview",
    "report_units",
)
SCRIPTS = {job: job for job in JOBS}
SCRIPTS.update(report_overview="report_figures", report_units="report_figures")
NOTE = (
    "Synthetic inputs in the upstream jobs' file formats: 384 channels, 150 units at "
    "10 Hz (1,500 spikes/s, 5.4 M spikes/h), 6-s chunks, 3 PCs x 10 channels of features "
    "per spike; template_sums (a per-chunk job) runs on one 6-s chunk. peak_MB: VmHWM of a fresh process running the job's script; "
    "MB_per_M_spikes: least-squares slope over the spike counts; MB_per_h_384ch: slope x "
    "5.4; projected_2h_384ch_MB: the fit at 10.8 M spikes. same_output: the job's outputs "
    "equal those of the baseline revision (figures not compared)."
)
_RUNNER = """
import pickle, runpy, sys
with open(sys.argv[1], "rb") as fh:
    smk = pickle.load(fh)
runpy.run_path(sys.argv[2], init_globals={"snakemake": smk}, run_name="__main__")
# VmHWM: the high-water mark of this process image (ru_maxrss would also
# carry the parent's, inherited across fork and exec).
with open("/proc/self/status") as fh:
    print("PEAK_KB", [line.split()[1] for line in fh if line.startswith("VmHWM")][0])
"""


# ---------------------------------------------------------------------------
# Synthetic inputs
# ---------------------------------------------------------------------------


def _positions() -> np.ndarray:
    index = np.arange(N_CHANNELS)
    return np.column_stack([16.0 + 32.0 * (index % 2), 20.0 * (index // 2)])


def _templates(positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Localised negative spikes (noise units: noise SD 1), one peak channel each."""
    t = np.arange(PRE + POST, dtype=np.float64)
    shape = -np.exp(-(((t - PRE) / 4.0) ** 2)) + 0.35 * np.exp(-(((t - PRE - 14) / 8.0) ** 2))
    peaks = (np.arange(N_UNITS) * N_CHANNELS) // N_UNITS + rng.integers(0, 2, N_UNITS)
    peaks = np.minimum(peaks, N_CHANNELS - 1)
    out = np.zeros((N_UNITS, PRE + POST, N_CHANNELS), dtype=np.float32)
    for u, c in enumerate(peaks):
        distance = np.linalg.norm(positions - positions[c], axis=1)
        spatial = np.where(distance < 100.0, np.exp(-(distance**2) / (2 * 30.0**2)), 0.0)
        out[u] = (rng.uniform(6.0, 20.0) * shape[:, None] * spatial[None, :]).astype(np.float32)
    return out


def _spec(folder: Path, n_samples: int, positions: np.ndarray) -> dict:
    return {
        "name": "synthetic", "path": str(folder / "raw.bin"), "format": "binary",
        "dtype": "int16", "order": "samples", "n_file_channels": N_CHANNELS,
        "offset_bytes": 0, "gain_to_uv": 0.195, "sampling_rate_hz": RATE_HZ,
        "n_samples": n_samples, "n_channels": N_CHANNELS,
        "positions_um": positions.tolist(),
    }


def _write_npz(path: Path, **arrays) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _write_h5(path: Path, datasets: dict, attrs: dict | None = None) -> None:
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=np.asarray(value))
        for key, value in (attrs or {}).items():
            f.attrs[key] = value


def synthesize(folder: Path, n_spikes: int, seed: int = 0) -> dict:
    """Every input of the global jobs for ``n_spikes`` spikes; returns paths and params."""
    from shardsort.deconvolve import prepare_templates
    from shardsort.io.arrays import write_array
    from shardsort.tables import PEAK_DTYPE, SPIKE_DTYPE
    from shardsort.templates import noise_factors, noise_lag_correlation

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    positions = _positions()
    templates = _templates(positions, rng)
    peak_channels = np.abs(templates).max(axis=1).argmax(axis=1)
    n_samples = int(np.ceil(n_spikes / SPIKES_PER_S * RATE_HZ))
    spec = _spec(folder, n_samples, positions)

    # Spike trains: uniform times per unit, sorted by (sample, unit).
    units = rng.integers(0, N_UNITS, n_spikes).astype(np.int32)
    # Distinct samples: no two spikes are border duplicates of each other.
    times = np.sort(rng.integers(PRE, n_samples - POST - n_spikes, n_spikes))
    times += np.arange(n_spikes)

    chunk_samples = int(CHUNK_S * RATE_HZ)
    bounds = np.arange(0, n_samples + chunk_samples, chunk_samples)
    bounds[-1] = n_samples
    cut = np.searchsorted(times, bounds)
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    neighbours = np.argsort(distance, axis=1, kind="stable")[:, :N_NEIGHBOURS]
    components = np.linalg.qr(rng.standard_normal((PRE + POST, N_PCS)))[0].T
    (folder / "detect").mkdir(exist_ok=True)
    (folder / "deconvolve").mkdir(exist_ok=True)
    (folder / "template_sums").mkdir(exist_ok=True)
    detect_paths, deconv_paths, sums_paths = [], [], []
    cap = load_config()["templates"]["max_spikes_per_unit"]
    template_labels = np.full(n_spikes, -1, dtype=np.int32)
    for unit in range(N_UNITS):
        members = np.flatnonzero(units == unit)
        if len(members) > cap:
            members = members[np.linspace(0, len(members) - 1, cap).round().astype(int)]
        template_labels[members] = unit
    for i in range(len(bounds) - 1):
        lo, hi = cut[i], cut[i + 1]
        n = hi - lo
        peaks = np.zeros(n, dtype=PEAK_DTYPE)
        peaks["sample_index"] = times[lo:hi]
        peaks["channel_index"] = peak_channels[units[lo:hi]]
        peaks["amplitude"] = -rng.uniform(4.0, 20.0, n)
        peaks["x_um"], peaks["y_um"] = positions[peaks["channel_index"]].T
        order = np.lexsort((peaks["channel_index"], peaks["sample_index"]))
        features = rng.standard_normal((n, N_NEIGHBOURS, N_PCS)).astype(np.float32)
        path = folder / "detect" / f"t{i:04d}.npz"
        _write_npz(path, peaks=peaks[order], features=features[order])
        detect_paths.append(str(path))

        spikes = np.zeros(n, dtype=SPIKE_DTYPE)
        spikes["sample_index"] = times[lo:hi]
        spikes["unit_index"] = units[lo:hi]
        spikes["amplitude"] = rng.normal(1.0, 0.1, n)
        pcs = rng.standard_normal((n, N_PCS, N_NEIGHBOURS)).astype(np.float32)
        xy = (positions[peak_channels[units[lo:hi]]] + rng.normal(0, 5, (n, 2))).astype(np.float32)
        path = folder / "deconvolve" / f"t{i:04d}.npz"
        _write_npz(path, spikes=spikes, pc_features=pcs, positions_um=xy)
        deconv_paths.append(str(path))

        labels = template_labels[lo:hi]
        counts = np.bincount(labels[labels >= 0], minlength=N_UNITS).astype(np.int64)
        present = np.flatnonzero(counts)
        sums = templates[present].astype(np.float64) * counts[present, None, None]
        path = folder / "template_sums" / f"t{i:04d}.npz"
        _write_npz(path, sums=sums, present=present, counts=counts)
        sums_paths.append(str(path))

    # Small global inputs.
    _write_h5(folder / "basis.h5", {
        "components": components.astype(np.float32),
        "mean": np.zeros(PRE + POST, np.float32),
        "neighbours": neighbours.astype(np.int64),
    }, {"pre_samples": PRE, "post_samples": POST})
    _write_h5(folder / "clusters.h5", {"labels": units, "template_labels": template_labels},
              {"n_clusters": N_UNITS})
    _write_h5(folder / "noise.h5", {
        "scales_uv": np.full(N_CHANNELS, 10.0, np.float32),
        "channel_labels": np.zeros(N_CHANNELS, np.int8),
    })
    _write_h5(folder / "whitening.h5", {"whitening": np.eye(N_CHANNELS, dtype=np.float32)})
    (folder / "bad_channels.tsv").write_text("channel\tlabel\n")
    windows = rng.standard_normal((300, PRE + POST, N_CHANNELS)).astype(np.float32)
    factors = noise_factors(templates, windows)
    _write_h5(folder / "templates.h5", {
        "templates": templates,
        "peak_channels": peak_channels.astype(np.int32),
        "noise_lag_correlation": noise_lag_correlation(templates, windows),
        "noise_factors": factors,
    }, {"pre_samples": PRE, "post_samples": POST, "n_clusters": N_UNITS})
    basis = prepare_templates(templates, pre_samples=PRE, noise_factors=factors)
    _write_npz(folder / "deconv_basis.npz", **basis.to_arrays())
    _write_npz(folder / "ground_truth.npz", sample_index=times, unit_index=units,
               snr=np.full(N_UNITS, 8.0))
    # Clustering: one label file per channel group (rows of its spikes, local labels).
    (folder / "cluster").mkdir(exist_ok=True)
    label_paths = []
    triaged = rng.random(n_spikes) < TRIAGED
    unit_bounds = np.linspace(0, N_UNITS, N_GROUPS + 1).astype(int)
    for g in range(N_GROUPS):
        rows = np.flatnonzero((units >= unit_bounds[g]) & (units < unit_bounds[g + 1]))
        local = np.where(triaged[rows], -1, units[rows] - unit_bounds[g]).astype(np.int32)
        path = folder / "cluster" / f"g{g:03d}.npz"
        _write_npz(path, rows=rows.astype(np.int64), labels=local)
        label_paths.append(str(path))
    # The preprocessed chunk (with margins) of the template_sums job: the middle one.
    middle = (len(bounds) - 1) // 2
    chunk = {"index": int(middle), "start": int(bounds[middle]), "stop": int(bounds[middle + 1])}
    margin = PRE + POST
    (folder / "preprocessed").mkdir(exist_ok=True)
    chunk_path = folder / "preprocessed" / f"t{middle:04d}.bin"
    values = rng.integers(-800, 800, (chunk["stop"] - chunk["start"] + 2 * margin, N_CHANNELS),
                          dtype=np.int16)
    write_array(chunk_path, values, sampling_rate_hz=RATE_HZ,
                start_sample=chunk["start"] - margin, scale=0.005)
    del values
    # Noise segments: half a second in 4 short preprocessed chunks.
    (folder / "noise_chunks").mkdir(exist_ok=True)
    segments, noise_paths = [], []
    for k, start in enumerate(np.linspace(0, n_samples - 15000, 4).astype(int)):
        path = folder / "noise_chunks" / f"n{k}.bin"
        values = np.clip(rng.normal(0, 200.0, (15000, N_CHANNELS)), -32767, 32767)
        write_array(path, values.astype(np.int16), sampling_rate_hz=RATE_HZ,
                    start_sample=int(start), scale=0.005)
        segments.append([int(start), int(start) + 15000])
        noise_paths.append(str(path))
    return {
        "folder": folder, "spec": spec, "n_spikes": n_spikes, "n_chunks": len(bounds) - 1,
        "detect": detect_paths, "deconvolve": deconv_paths, "sums": sums_paths,
        "noise_chunks": noise_paths, "segments": segments, "labels": label_paths,
        "chunk": chunk, "chunk_margin": margin, "chunk_path": str(chunk_path),
    }


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


def _io(**items) -> SimpleNamespace:
    return SimpleNamespace(**items)


def job_object(job: str, inputs: dict, out: Path) -> SimpleNamespace:
    """A stand-in for the ``snakemake`` object of ``job`` on ``inputs``, writing under ``out``."""
    cfg = load_config()
    f = inputs["folder"]
    spec = inputs["spec"]
    shared = f / "shared"  # outputs of the current code that later jobs read
    detect = {k: cfg["detect"][k] for k in ("ms_before", "ms_after", "n_pcs", "n_neighbours")}
    code = "bench"
    if job == "merge_spikes":
        inp = _io(peaks=inputs["detect"], basis=str(f / "basis.h5"))
        output = _io(spikes=str(out / "spikes.h5"))
        params = _io(recording=spec, code=code)
    elif job == "merge_clusters":
        inp = _io(labels=inputs["labels"], spikes=str(shared / "spikes.h5"))
        output = _io(clusters=str(out / "clusters.h5"))
        params = _io(templates=cfg["templates"], seed=0, code=code)
    elif job == "template_sums":
        inp = _io(chunks=[inputs["chunk_path"]], spikes=str(shared / "spikes.h5"),
                  clusters=str(f / "clusters.h5"))
        output = _io(sums=str(out / "sums.npz"))
        params = _io(recording=spec, chunk=inputs["chunk"],
                     margin_samples=inputs["chunk_margin"], detect=detect, code=code)
    elif job == "templates":
        inp = _io(sums=inputs["sums"], spikes=str(shared / "spikes.h5"),
                  clusters=str(f / "clusters.h5"), noise_chunks=inputs["noise_chunks"])
        output = _io(templates=str(out / "templates.h5"), basis=str(out / "deconv_basis.npz"))
        params = _io(recording=spec, detect=detect, templates=cfg["templates"],
                     segments=inputs["segments"], seed=0, code=code)
    elif job == "merge_units":
        inp = _io(spikes=inputs["deconvolve"], templates=str(f / "templates.h5"),
                  deconv_basis=str(f / "deconv_basis.npz"), noise=str(f / "noise.h5"),
                  whitening=str(f / "whitening.h5"), basis=str(f / "basis.h5"))
        output = _io(sorting=str(out / "sorting.h5"))
        params = _io(recording=spec, plan={}, deconvolve=cfg["deconvolve"], merge=cfg["merge"],
                     max_shift_ms=cfg["templates"]["merge_max_shift_ms"],
                     split_threshold=cfg["cluster"]["split_threshold"], seed=0, code=code)
    elif job == "metrics":
        inp = _io(sorting=str(shared / "sorting.h5"))
        output = _io(metrics=str(out / "metrics.tsv"))
        params = _io(seed=0, code=code)
    elif job == "ground_truth":
        inp = _io(sorting=str(shared / "sorting.h5"), ground_truth=str(f / "ground_truth.npz"))
        output = _io(scores=str(out / "ground_truth.tsv"))
        params = _io(ground_truth=cfg["ground_truth"], code=code)
    elif job == "export_phy":
        inp = _io(sorting=str(shared / "sorting.h5"), metrics=str(shared / "metrics.tsv"))
        output = _io(params=str(out / "phy" / "params.py"))
        params = _io(recording=spec, code=code)
    elif job == "export_nwb":
        inp = _io(sorting=str(shared / "sorting.h5"), metrics=str(shared / "metrics.tsv"))
        output = _io(nwb=str(out / "sorting.nwb"))
        params = _io(recording=spec, code=code)
    elif job == "report_overview":
        inp = _io(sorting=str(shared / "sorting.h5"), metrics=str(shared / "metrics.tsv"),
                  bad_channels=str(f / "bad_channels.tsv"), spikes=str(shared / "spikes.h5"),
                  templates=str(f / "templates.h5"), chunk_sidecars=[])
        output = _io(probe_map=str(out / "report" / "probe_map.png"),
                     drift_raster=str(out / "report" / "drift_raster.png"),
                     metrics=str(out / "report" / "metrics.html"))
        params = _io(code=code)
    elif job == "report_units":
        inp = _io(sorting=str(shared / "sorting.h5"))
        output = _io(**{k: str(out / "report" / k) for k in
                        ("waveforms", "amplitudes", "isi", "autocorrelograms")})
        params = _io(units_per_page=40, isi_threshold_ms=1.5, code=code)
    else:
        raise ValueError(f"job must be one of {JOBS}, got {job!r}")
    return SimpleNamespace(input=inp, output=output, params=params, rule=job,
                           log=[str(out / "logs" / f"{job}.log")], config=cfg,
                           wildcards=_io(recording="synthetic"), threads=1, resources=_io())


def run_job(job: str, inputs: dict, out: Path, code_root: Path) -> dict:
    """Run ``job``'s script from ``code_root`` in a fresh process; peak RSS and wall time."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report").mkdir(exist_ok=True)
    smk = job_object(job, inputs, out)
    pickled = out / f".{job}.pickle"
    with open(pickled, "wb") as fh:
        pickle.dump(smk, fh)
    env = single_thread_env()
    env["PYTHONPATH"] = str(code_root / "src")
    env["MPLBACKEND"] = "Agg"
    script = code_root / "scripts" / f"{SCRIPTS[job]}.py"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(pickled), str(script)],
                          env=env, capture_output=True, text=True, cwd=out)
    wall = time.perf_counter() - start
    pickled.unlink()
    peak = [line for line in proc.stdout.splitlines() if line.startswith("PEAK_KB")]
    if proc.returncode or not peak:
        raise RuntimeError(f"{job} failed ({script}):\n{proc.stderr[-3000:]}")
    return {"peak_MB": int(peak[-1].split()[1]) / 1024.0, "wall_s": wall}


# ---------------------------------------------------------------------------
# Output comparison
# ---------------------------------------------------------------------------

_SKIP_H5 = ("file_create_date", "session_start_time", "timestamps_reference_time")


def _h5_datasets(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not any(s in name for s in _SKIP_H5):
                out[name] = obj[()]
        f.visititems(visit)
        out["<attrs>"] = {k: f.attrs[k] for k in f.attrs if k not in ("object_id",)}
    return out


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    if a.dtype.names:
        return all(_equal(a[n], b[n]) for n in a.dtype.names)
    if a.dtype.kind == "O" and a.size and isinstance(a.flat[0], h5py.Reference):
        return True  # object references (NWB tables): equal only as the same object
    return bool(np.array_equal(a, b))


def same_outputs(a: Path, b: Path) -> bool:
    """Every output file under ``a`` equals its twin under ``b`` (figures skipped)."""
    for path in sorted(a.rglob("*")):
        if path.is_dir() or "logs" in path.parts or path.suffix == ".png":
            continue
        twin = b / path.relative_to(a)
        if not twin.exists():
            return False
        if path.suffix in (".h5", ".nwb"):
            same = _equal(_h5_datasets(path), _h5_datasets(twin))
        elif path.suffix == ".npy":
            same = _equal(np.load(path), np.load(twin))
        elif path.suffix == ".npz":
            with np.load(path) as x, np.load(twin) as y:
                same = _equal(dict(x), dict(y))
        elif path.name == "params.py":
            same = True  # names the stand-in raw file's folder
        else:
            same = path.read_bytes() == twin.read_bytes()
        if not same:
            return False
    return True


# ---------------------------------------------------------------------------
# The section
# ---------------------------------------------------------------------------


def checkout(revision: str, work: Path) -> Path:
    """``scripts/`` and ``src/`` of a git revision, extracted under ``work``."""
    sha = subprocess.run(["git", "rev-parse", "--short", revision], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.strip()
    root = work / f"code_{sha}"
    if not root.exists():
        archive = work / f"code_{sha}.tar"
        subprocess.run(["git", "archive", "-o", str(archive), sha, "scripts", "src"],
                       cwd=REPO, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(root)
        archive.unlink()
    return root


def _fit(counts: list[float], peaks: list[float]) -> tuple[float, float]:
    """Slope (MB per million spikes) and intercept (MB) of a least-squares line."""
    x = np.asarray(counts) / 1e6
    slope, intercept = np.polyfit(x, np.asarray(peaks), 1)
    return float(slope), float(intercept)


def measure(work: Path, sizes: tuple[int, ...], code: dict[str, Path], log=print) -> list[dict]:
    """Peak RSS of every job at every size, for every code version; outputs compared."""
    rows = []
    for n_spikes in sizes:
        folder = work / f"n{n_spikes}"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        inputs = synthesize(folder / "inputs", n_spikes)
        log(f"{n_spikes} spikes: inputs in {time.perf_counter() - t0:.0f} s "
            f"({inputs['n_chunks']} chunks)")
        shared = inputs["folder"] / "shared"
        shared.mkdir()
        for job in JOBS:
            outs = {}
            for label, root in code.items():
                out = folder / label / job
                result = run_job(job, inputs, out, root)
                outs[label] = out
                rows.append({"job": job, "code": label, "n_spikes": n_spikes,
                             "n_chunks": inputs["n_chunks"], **result})
                log(f"  {job} [{label}]: {result['peak_MB']:.0f} MB, {result['wall_s']:.1f} s")
            labels = list(code)
            if len(labels) > 1:
                same = same_outputs(outs[labels[0]], outs[labels[1]])
                for row in rows[-len(labels):]:
                    row["same_output"] = same
            # Later jobs read the current code's outputs.
            for path in outs[labels[0]].iterdir():
                if path.suffix in (".h5", ".tsv"):
                    shutil.copy(path, shared / path.name)
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """One row per job and code version: peaks, slope, projection."""
    out = []
    for job in JOBS:
        for label in dict.fromkeys(r["code"] for r in rows):
            mine = [r for r in rows if r["job"] == job and r["code"] == label]
            if not mine:
                continue
            slope, intercept = _fit([r["n_spikes"] for r in mine], [r["peak_MB"] for r in mine])
            row = {"job": job, "code": label}
            for r in mine:
                row[f"peak_MB_{r['n_spikes'] / 1e6:g}M"] = round(r["peak_MB"], 1)
            n_2h = SPIKES_PER_HOUR * PROJECT_HOURS
            row.update(
                MB_per_M_spikes=round(slope, 1),
                MB_per_h_384ch=round(slope * SPIKES_PER_HOUR / 1e6, 1),
                projected_2h_384ch_MB=round(intercept + slope * n_2h / 1e6),
                wall_s_largest=round(mine[-1]["wall_s"], 1),
            )
            if "same_output" in mine[0]:
                row["same_output"] = all(r["same_output"] for r in mine)
            out.append(row)
    return out


def run(ctx, *, baseline: str | None = None, sizes: tuple[int, ...] | None = None) -> list[Table]:
    """``run_all.py`` section ``global_memory``."""
    work = ctx.work / "global_memory"
    work.mkdir(parents=True, exist_ok=True)
    sizes = sizes or ((100_000, 200_000) if ctx.quick else (150_000, 300_000, 600_000))
    code = {"current": REPO}
    if baseline:
        code[f"baseline {baseline}"] = checkout(baseline, work)
    rows = measure(work, sizes, code, log=ctx.log)
    summary = summarize(rows)
    return [
        Table("global_memory", "Peak memory of the global jobs against spikes (2 h x 384 ch "
              "projection)", summary, NOTE),
        Table("global_memory_runs", "Every run", rows, ""),
    ]


def main(argv: list[str] | None = None) -> int:
    """Standalone: the ``global_memory`` section of ``run_all.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline", default=None,
                        help="also run the scripts of this git revision and compare outputs")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated spike counts (default 150000,300000,600000)")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    args = parser.parse_args(argv)
    ctx = SimpleNamespace(
        quick=args.quick, work=args.work / ("quick" if args.quick else "full"),
        log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True),
    )
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
    start = time.perf_counter()
    tables = run(ctx, baseline=args.baseline, sizes=sizes)
    results = args.results or (Path(__file__).resolve().parent / "results"
                               / ("quick" if args.quick else ""))
    results.mkdir(parents=True, exist_ok=True)
    for table in tables:
        table.write_csv(results / f"{table.key}.csv")
    record = {"elapsed_s": time.perf_counter() - start, "baseline": args.baseline,
              "sizes": sizes, "tables": [{"key": t.key, "title": t.title, "note": t.note,
                                          "rows": t.rows} for t in tables]}
    (results / "global_memory.json").write_text(json.dumps(record, indent=1, default=float))
    (results / "global_memory.md").write_text("\n".join(t.markdown() for t in tables))
    print(tables[0].markdown())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
