"""Biophysical ground truth for the accuracy matrix: MEArec recordings.

MEArec (``pip install -e ".[mearec]"``: MEArec, NEURON, LFPy) simulates the 13
Blue Brain layer-5 cell models shipped inside its wheel with NEURON, computes
their extracellular action potentials on a probe with LFPy (templates), then
convolves templates with Poisson spike trains and adds noise (recordings).

1. ``template_library``: templates of every cell model on the first 64 sites
   of a Neuropixels 1.0 probe (the same positions as the other generators'),
   ``n_per_model`` random positions and rotations per model. Slow (NEURON);
   cached in ``benchmarks/work/mearec/`` with the time it took.
2. ``generate_mearec``: one recording from the library (``MearecSpec``),
   written in the layout of ``recordings.RecordingFiles`` (int16 binary,
   geometry, ground truth with per-unit SNR computed as for the other
   generators: ``recordings.unit_snr`` of the recording's templates, means of
   its spikes as the recording holds them (band-passed by MEArec), over the
   MAD noise of ``get_noise_levels``), so that shardsort and the peers read
   it like any other recording of the benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from recordings import (
    RecordingFiles,
    RecordingSpec,
    _ground_truth,
    _write_int16,
    _write_table,
    make_probe,
    neuropixels_positions,
)

#: Name under which the probe is registered with MEAutility.
PROBE_NAME = "shardsort-NP1-{n}"
LIBRARY_INFO = "library.json"


@dataclass(frozen=True)
class LibrarySpec:
    """What a template library is made of."""

    n_channels: int = 64
    n_per_model: int = 4
    seed: int = 7
    min_amp_uv: float = 30.0


@dataclass(frozen=True)
class MearecSpec:
    """One MEArec recording: its size and seeds, and MEArec's defaults otherwise
    (Poisson trains, excitatory 5 ± 1 Hz, inhibitory 15 ± 3 Hz, amplitudes
    up to 300 µV, units >= 25 µm apart, uncorrelated noise of ``noise_uv``,
    300-6000 Hz band-pass) but the smallest amplitude, ``min_amp_uv`` (MEArec:
    50 µV), down to the library's 30 µV so that SNR 3-5 units are drawn too.
    A third of the units excitatory (4 of the 13 cell models are)."""

    n_channels: int
    duration_s: float
    n_units: int
    seed: int
    n_excitatory: int = 8
    min_amp_uv: float = 30.0
    noise_uv: float = 10.0
    sampling_rate_hz: float = 30000.0


def unavailable_reason() -> str:
    """Why MEArec recordings cannot be made here, or "" when they can."""
    for module in ("MEArec", "MEAutility", "neuron", "LFPy"):
        try:
            __import__(module)
        except Exception as error:  # ImportError, or NEURON failing to load
            return f"{module} not importable ({type(error).__name__}: {error}); install the mearec extra"
    if shutil.which("nrnivmodl", path=str(Path(sys.executable).parent)) is None:
        return "nrnivmodl (NEURON's compiler of cell mechanisms) not found"
    return ""


@contextmanager
def _cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def register_probe(n_channels: int, folder: Path) -> str:
    """Register the first ``n_channels`` Neuropixels 1.0 sites with MEAutility
    (12 µm square contacts, plane yz: MEArec's y, z are the probe's x, y)."""
    import MEAutility as mu
    import yaml

    name = PROBE_NAME.format(n=n_channels)
    if name in mu.return_mea_list():
        return name
    info = dict(
        electrode_name=name,
        description=f"first {n_channels} sites of a Neuropixels 1.0 probe (shardsort benchmark)",
        sortlist=None,
        pos=neuropixels_positions(n_channels).tolist(),
        size=6.0,
        plane="yz",
        shape="square",
        type="mea",
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(info))
    mu.add_mea(str(path))
    return name


def template_library(work: Path, spec: LibrarySpec, *, n_jobs: int = 1) -> Path:
    """The templates file of ``spec`` (generated once; ``library.json`` next to
    it says how long it took)."""
    import MEArec as mr

    folder = work / f"templates_{spec.n_channels}ch_n{spec.n_per_model}_s{spec.seed}"
    path = folder / "templates.h5"
    info = folder / LIBRARY_INFO
    if path.exists() and info.exists() and json.loads(info.read_text())["spec"] == asdict(spec):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    cells = work / "cell_models"
    compiled = list((cells / "mods").glob("*/libnrnmech*")) + list(
        (cells / "mods").glob("*/.libs/libnrnmech*")
    )
    if not compiled:  # a private copy: MEArec compiles the mechanisms inside it
        shutil.rmtree(cells, ignore_errors=True)
        shutil.copytree(Path(mr.__file__).parent / "cell_models" / "bbp", cells)
    # MEArec calls nrnivmodl through the shell: the venv's bin first on PATH
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    probe = register_probe(spec.n_channels, work)
    params = dict(mr.get_default_templates_params())
    params.update(
        probe=probe, n=spec.n_per_model, seed=spec.seed, min_amp=spec.min_amp_uv,
    )
    started = time.perf_counter()
    with _cwd(folder):
        tempgen = mr.gen_templates(
            cells, params=params, templates_tmp_folder=folder / "tmp",
            parallel=n_jobs > 1, n_jobs=n_jobs, verbose=False,
        )
    mr.save_template_generator(tempgen, path, verbose=False)
    elapsed = time.perf_counter() - started
    shutil.rmtree(folder / "tmp", ignore_errors=True)
    info.write_text(json.dumps(dict(
        spec=asdict(spec),
        seconds=round(elapsed, 1),
        n_templates=int(len(tempgen.templates)),
        cell_models=sorted({str(c) for c in tempgen.celltypes}),
        mearec=mr.__version__,
    ), indent=2) + "\n")
    return path


def recording_params(spec: MearecSpec) -> dict:
    """MEArec's default recording parameters with ``spec``'s size and seeds."""
    import MEArec as mr

    params = mr.get_default_recordings_params()
    params["spiketrains"].update(
        n_exc=spec.n_excitatory, n_inh=spec.n_units - spec.n_excitatory,
        duration=spec.duration_s,
    )
    params["seeds"].update(
        spiketrains=spec.seed, templates=spec.seed + 1, convolution=spec.seed + 2,
        noise=spec.seed + 3,
    )
    params["templates"].update(min_amp=spec.min_amp_uv)
    params["recordings"].update(
        fs=spec.sampling_rate_hz, noise_level=spec.noise_uv, chunk_duration=10.0,
    )
    return params


def mearec_positions_offset(mea_positions: np.ndarray, positions_um: np.ndarray) -> np.ndarray:
    """The (x, y) shift from MEArec's centred probe coordinates (its y, z) to
    ``positions_um``; raises when the channel order differs."""
    shift = positions_um.mean(axis=0) - mea_positions[:, 1:3].mean(axis=0)
    if not np.allclose(mea_positions[:, 1:3] + shift, positions_um, atol=1e-3):
        raise ValueError("MEArec's probe sites differ from the Neuropixels positions")
    return shift


def mean_waveforms(
    traces: np.ndarray, times: list[np.ndarray], *, half_width: int, max_spikes: int = 500
) -> np.ndarray:
    """(n_units, 2 * half_width + 1, n_channels) mean of ``traces`` around up
    to ``max_spikes`` evenly spread spikes of each unit (``times``: samples)."""
    n = len(traces)
    out = np.zeros((len(times), 2 * half_width + 1, traces.shape[1]))
    for unit, t in enumerate(times):
        t = t[(t >= half_width) & (t < n - half_width)]
        if len(t) > max_spikes:
            t = t[np.linspace(0, len(t) - 1, max_spikes).astype(np.int64)]
        for x in t:
            out[unit] += traces[x - half_width : x + half_width + 1]
        out[unit] /= max(len(t), 1)
    return out


def generate_mearec(
    spec: MearecSpec, templates: Path, folder: Path, name: str, *, n_jobs: int = 1
) -> RecordingFiles:
    """Generate and write one MEArec recording ``name`` (kept when already made
    from the same spec and library)."""
    import MEArec as mr
    from spikeinterface.core import NumpyRecording, NumpySorting

    folder.mkdir(parents=True, exist_ok=True)
    files = RecordingFiles(name, folder)
    full_spec = dict(mearec=asdict(spec), templates=str(templates))
    paths = (files.binary, files.geometry, files.ground_truth, files.table, files.spec_file)
    if all(p.exists() for p in paths):
        stored = json.loads(files.spec_file.read_text())
        stored.pop("recording", None)  # written for load_recording
        if stored == full_spec:
            return files
    tmp = folder / f"{name}.mearec-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    recgen = mr.gen_recordings(
        params=recording_params(spec), templates=str(templates), verbose=False,
        tmp_mode="memmap", tmp_folder=str(tmp), n_jobs=n_jobs,
    )
    fs = float(recgen.info["recordings"]["fs"])
    traces = np.asarray(recgen.recordings)
    if traces.shape[0] != int(round(spec.duration_s * fs)):  # older MEArec: channels first
        traces = traces.T
    positions_um = neuropixels_positions(spec.n_channels)
    shift = mearec_positions_offset(np.asarray(recgen.channel_positions), positions_um)
    recording = NumpyRecording([traces], sampling_frequency=fs)
    recording.set_probe(make_probe(positions_um))
    times = [np.round(np.asarray(st.times.rescale("s").magnitude) * fs).astype(np.int64)
             for st in recgen.spiketrains]
    labels = [np.full(len(t), i, dtype=np.int64) for i, t in enumerate(times)]
    sample_index = np.concatenate(times)
    unit_index = np.concatenate(labels)
    order = np.argsort(sample_index, kind="stable")
    sorting = NumpySorting.from_samples_and_labels(
        [sample_index[order]], [unit_index[order]], sampling_frequency=fs,
        unit_ids=np.arange(len(times)),
    )
    # MEArec band-passes spikes and noise together: the templates the sorters
    # see are those of the recording, not MEArec's (unfiltered) ones.
    templates_uv = mean_waveforms(traces, times, half_width=int(round(2e-3 * fs)))
    loc = np.asarray(recgen.template_locations, dtype=np.float64)
    if loc.ndim == 3:  # drifting templates: first position
        loc = loc[:, 0]
    unit_locations = np.stack([loc[:, 1] + shift[0], loc[:, 2] + shift[1], loc[:, 0]], axis=1)
    rspec = RecordingSpec(
        n_channels=spec.n_channels, duration_s=spec.duration_s, n_units=spec.n_units,
        sampling_rate_hz=fs, seed=spec.seed,
    )
    extra = dict(templates=SimpleNamespace(templates_array=templates_uv),
                 unit_locations=unit_locations)
    ground_truth = _ground_truth(recording, sorting, extra, positions_um, rspec)
    ground_truth["cell_types"] = np.asarray(
        [str(c) for c in np.atleast_1d(recgen.template_celltypes)], dtype="U64"
    )
    _write_int16(recording, files.binary, n_jobs=1)
    np.save(files.geometry, positions_um)
    np.savez(files.ground_truth, **ground_truth)
    _write_table(files, rspec)
    files.spec_file.write_text(json.dumps(dict(full_spec, recording=asdict(rspec)), indent=2) + "\n")
    del recgen, traces, recording
    shutil.rmtree(tmp, ignore_errors=True)
    return files


def main(argv=None) -> None:
    """``python mearec_recordings.py templates``: build (or time) the library."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("what", choices=["templates"])
    p.add_argument("--work", type=Path,
                   default=Path(__file__).resolve().parents[1] / "work" / "mearec")
    p.add_argument("--n-per-model", type=int, default=LibrarySpec.n_per_model)
    p.add_argument("--n-jobs", type=int, default=1)
    args = p.parse_args(argv)
    started = time.perf_counter()
    path = template_library(args.work, LibrarySpec(n_per_model=args.n_per_model),
                            n_jobs=args.n_jobs)
    print(f"{path} in {time.perf_counter() - started:.0f} s:",
          (path.parent / LIBRARY_INFO).read_text())


if __name__ == "__main__":
    main()
