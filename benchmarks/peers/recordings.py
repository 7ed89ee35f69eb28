"""Ground-truth recordings for the peer benchmark, made with SpikeInterface.

One call to ``spikeinterface.generation.generate_drifting_recording`` gives two
recordings that share units, spike trains and noise: a static one and one
whose units move along the probe (a zigzag). Each is written as an int16
binary file (n_samples, n_channels) with its geometry (``.npy``) and ground
truth (``.npz``: ``sample_index``, ``unit_index`` and per-unit facts), which
is what a shardsort recordings table points at; the peer sorters read the
very same files through ``spikeinterface.core.read_binary``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: Neuropixels 1.0 part number whose first contacts make the probe.
PROBE_PART_NUMBER = "NP1000"
#: Stored value to microvolts: fine enough that quantisation adds < 1 % noise.
GAIN_TO_UV = 0.5
#: Seconds of traces generated and written at a time (per process).
WRITE_CHUNK_S = 5.0
#: Peak-to-peak axial motion of the drifting recording (µm): SpikeInterface's
#: default zigzag, +20 µm to -20 µm.
DRIFT_UM = 20.0

TABLE_COLUMNS = (
    "name",
    "path",
    "format",
    "sampling_rate_hz",
    "n_channels",
    "dtype",
    "order",
    "gain_to_uv",
    "offset_bytes",
    "geometry",
    "ground_truth",
)


@dataclass(frozen=True)
class RecordingSpec:
    """What to generate: the static and drifting pair share all of it."""

    n_channels: int
    duration_s: float
    n_units: int
    sampling_rate_hz: float = 30000.0
    seed: int = 2024

    def __post_init__(self) -> None:
        if not 8 <= self.n_channels <= 384:
            raise ValueError(f"n_channels must be in [8, 384], got {self.n_channels}")
        if self.duration_s < 20.0:
            raise ValueError(f"duration_s must be >= 20, got {self.duration_s}")
        if self.n_units < 1:
            raise ValueError(f"n_units must be >= 1, got {self.n_units}")


@dataclass(frozen=True)
class RecordingFiles:
    """The files of one generated recording."""

    name: str
    folder: Path

    @property
    def binary(self) -> Path:
        return self.folder / f"{self.name}.bin"

    @property
    def geometry(self) -> Path:
        return self.folder / f"{self.name}_geometry.npy"

    @property
    def ground_truth(self) -> Path:
        return self.folder / f"{self.name}_gt.npz"

    @property
    def table(self) -> Path:
        return self.folder / f"{self.name}.tsv"

    @property
    def spec_file(self) -> Path:
        return self.folder / f"{self.name}.spec.json"


def neuropixels_positions(n_channels: int) -> npt.NDArray[np.float64]:
    """Contact positions (x, y) in µm of the first ``n_channels`` NP1.0 sites."""
    from probeinterface.neuropixels_tools import build_neuropixels_probe

    probe = build_neuropixels_probe(PROBE_PART_NUMBER)
    return np.asarray(probe.contact_positions[:n_channels, :2], dtype=np.float64)


def make_probe(positions_um: npt.NDArray[np.floating]):
    """A probeinterface ``Probe`` with 12 µm square contacts at ``positions_um``."""
    from probeinterface import Probe

    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(
        positions=positions_um, shapes="square", shape_params={"width": 12.0}
    )
    probe.create_auto_shape(probe_type="tip")
    probe.set_device_channel_indices(np.arange(len(positions_um)))
    return probe


def _drift_kwargs(duration_s: float, half_range_um: float = DRIFT_UM) -> dict:
    """Zigzag motion starting at 10 % of the recording, two periods in all,
    between +``half_range_um`` and -``half_range_um``."""
    t_start_s = 0.1 * duration_s
    return dict(
        displacement_sampling_frequency=5.0,
        drift_start_um=[0.0, half_range_um],
        drift_stop_um=[0.0, -half_range_um],
        drift_step_um=1,
        motion_list=[
            dict(
                drift_mode="zigzag",
                non_rigid_gradient=None,
                t_start_drift=t_start_s,
                t_end_drift=None,
                period_s=(duration_s - t_start_s) / 2.0,
            )
        ],
    )


def unit_snr(
    templates_uv: npt.NDArray[np.floating], noise_uv: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Peak |template| over noise on each unit's best channel.

    Parameters
    ----------
    templates_uv : (n_units, n_samples, n_channels) array
        Mean waveforms in µV.
    noise_uv : (n_channels,) array
        Noise standard deviation per channel in µV.

    Returns
    -------
    (n_units,) array
        Signal-to-noise ratio of every unit.
    """
    peak = np.abs(templates_uv).max(axis=1)
    best = peak.argmax(axis=1)
    units = np.arange(len(best))
    return peak[units, best] / np.maximum(noise_uv[best], np.finfo(np.float64).tiny)


def _write_int16(recording, path: Path, *, n_jobs: int) -> None:
    """Write a float µV recording as int16 counts of ``GAIN_TO_UV`` (rounded)."""
    from spikeinterface.core import write_binary_recording
    from spikeinterface.preprocessing import astype, scale

    counts = astype(
        scale(recording, gain=1.0 / GAIN_TO_UV, dtype="float32"), "int16", round=True
    )
    tmp = path.with_name(path.name + ".part")
    write_binary_recording(
        counts,
        file_paths=[tmp],
        dtype="int16",
        add_file_extension=False,
        n_jobs=n_jobs,
        chunk_duration=f"{WRITE_CHUNK_S}s",
        progress_bar=False,
    )
    tmp.replace(path)


def _write_table(files: RecordingFiles, spec: RecordingSpec) -> None:
    row = (
        files.name,
        str(files.binary),
        "binary",
        repr(spec.sampling_rate_hz),
        str(spec.n_channels),
        "int16",
        "samples",
        repr(GAIN_TO_UV),
        "0",
        str(files.geometry),
        str(files.ground_truth),
    )
    files.table.write_text("\t".join(TABLE_COLUMNS) + "\n" + "\t".join(row) + "\n")


def is_current(files: RecordingFiles, spec: RecordingSpec) -> bool:
    """True when ``files`` exist and were made from ``spec``."""
    if not all(
        p.exists()
        for p in (
            files.binary,
            files.geometry,
            files.ground_truth,
            files.table,
            files.spec_file,
        )
    ):
        return False
    return json.loads(files.spec_file.read_text()) == asdict(spec)


def _ground_truth(static, sorting, extra, positions_um, spec) -> dict:
    """Spike train, SNR, peak channel and locations of the generated units."""
    from spikeinterface.core import get_noise_levels

    spikes = sorting.to_spike_vector()
    noise_uv = get_noise_levels(
        static,
        return_in_uV=False,
        method="mad",
        random_slices_kwargs=dict(seed=spec.seed),
        progress_bar=False,
    )
    templates_uv = extra["templates"].templates_array
    return dict(
        sample_index=spikes["sample_index"].astype(np.int64),
        unit_index=spikes["unit_index"].astype(np.int32),
        snr=unit_snr(templates_uv, np.asarray(noise_uv, dtype=np.float64)),
        peak_channel=np.abs(templates_uv).max(axis=1).argmax(axis=1).astype(np.int32),
        unit_locations_um=np.asarray(extra["unit_locations"], dtype=np.float64),
        positions_um=positions_um,
        sampling_rate_hz=np.float64(spec.sampling_rate_hz),
        gain_to_uv=np.float64(GAIN_TO_UV),
    )


def generate_pair(
    spec: RecordingSpec, folder: Path, *, n_jobs: int = 2
) -> dict[str, RecordingFiles]:
    """Generate and write the ``static`` and ``drifting`` recordings of ``spec``.

    Returns the files of each, keyed by name. Recordings already generated from
    the same spec are kept as they are. ``n_jobs`` processes write the traces.
    """
    from spikeinterface.generation import generate_drifting_recording

    folder.mkdir(parents=True, exist_ok=True)
    pair = {name: RecordingFiles(name, folder) for name in ("static", "drifting")}
    if all(is_current(files, spec) for files in pair.values()):
        return pair

    positions_um = neuropixels_positions(spec.n_channels)
    static, drifting, sorting, extra = generate_drifting_recording(
        num_units=spec.n_units,
        duration=spec.duration_s,
        sampling_frequency=spec.sampling_rate_hz,
        probe=make_probe(positions_um),
        generate_displacement_vector_kwargs=_drift_kwargs(spec.duration_s),
        extra_outputs=True,
        seed=spec.seed,
    )
    ground_truth = dict(
        **_ground_truth(static, sorting, extra, positions_um, spec),
    )
    for recording, files in ((static, pair["static"]), (drifting, pair["drifting"])):
        _write_int16(recording, files.binary, n_jobs=n_jobs)
        np.save(files.geometry, positions_um)
        np.savez(files.ground_truth, **ground_truth)
        _write_table(files, spec)
        files.spec_file.write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return pair


def load_recording(files: RecordingFiles):
    """The recording as a SpikeInterface object (µV gains, probe attached)."""
    from spikeinterface.core import read_binary

    spec = json.loads(files.spec_file.read_text())
    spec = spec.get("recording", spec)  # drift-matrix recordings nest their spec
    recording = read_binary(
        files.binary,
        sampling_frequency=spec["sampling_rate_hz"],
        dtype="int16",
        num_channels=spec["n_channels"],
        gain_to_uV=GAIN_TO_UV,
        offset_to_uV=0.0,
        time_axis=0,
    )
    recording.set_probe(make_probe(np.load(files.geometry)), in_place=True)
    return recording


def load_ground_truth(files: RecordingFiles):
    """The ground-truth spike train as a SpikeInterface ``NumpySorting``."""
    with np.load(files.ground_truth) as gt:
        return sorting_from_arrays(
            gt["sample_index"],
            gt["unit_index"],
            sampling_rate_hz=float(gt["sampling_rate_hz"]),
            n_units=len(gt["snr"]),
        )


def sorting_from_arrays(
    sample_index: npt.NDArray[np.integer],
    unit_index: npt.NDArray[np.integer],
    *,
    sampling_rate_hz: float,
    n_units: int | None = None,
):
    """A ``NumpySorting`` whose unit ids are the integer unit indices.

    ``n_units`` keeps units without spikes (ids ``0 .. n_units-1``); by default
    the ids are those that occur.
    """
    from spikeinterface.core import NumpySorting

    unit_index = np.asarray(unit_index, dtype=np.int64)
    unit_ids = np.arange(n_units) if n_units is not None else np.unique(unit_index)
    order = np.argsort(sample_index, kind="stable")
    return NumpySorting.from_samples_and_labels(
        [np.asarray(sample_index, dtype=np.int64)[order]],
        [unit_index[order]],
        sampling_frequency=sampling_rate_hz,
        unit_ids=unit_ids,
    )


# --------------------------------------------------------------------------
# Drift matrix: one drifting recording per drift shape (benchmarks/peers/drift_matrix.py)

#: Drift shapes of ``DriftSpec.mode``.
DRIFT_MODES = ("zigzag", "linear", "bump", "random_walk")
#: Samples per second of the planted displacement.
DISPLACEMENT_RATE_HZ = 5.0


@dataclass(frozen=True)
class DriftSpec:
    """The motion planted into one drifting recording.

    ``mode``: ``zigzag`` (triangle wave of period ``period_s``, from
    ``t_start_s``), ``linear`` (one slow ramp over the whole recording),
    ``bump`` (sudden steps between the two extremes at random intervals of
    ``bump_interval_s``), ``random_walk``. ``peak_to_peak_um``: the range of
    the planted displacement (axial). ``non_rigid_gradient``: ``None`` for
    rigid motion, else SpikeInterface's gradient (the unit farthest from the
    tip, largest y, moves by this fraction of the displacement of the unit
    nearest the tip, linear in y between).
    """

    mode: str
    peak_to_peak_um: float
    period_s: float | None = None
    t_start_s: float = 0.0
    non_rigid_gradient: float | None = None
    bump_interval_s: tuple[float, float] = (30.0, 90.0)

    def __post_init__(self) -> None:
        if self.mode not in DRIFT_MODES:
            raise ValueError(f"mode must be one of {DRIFT_MODES}, got {self.mode!r}")
        if not self.peak_to_peak_um > 0:
            raise ValueError(f"peak_to_peak_um must be > 0, got {self.peak_to_peak_um}")
        if self.non_rigid_gradient is not None and not 0 <= abs(self.non_rigid_gradient) <= 1:
            raise ValueError(
                f"non_rigid_gradient must be in [-1, 1], got {self.non_rigid_gradient}"
            )


def drift_displacement_data(
    drift: DriftSpec, duration_s: float, unit_locations_um: npt.NDArray[np.floating], *, seed: int
):
    """SpikeInterface's ``displacement_data`` tuple for ``drift``.

    zigzag / bump / random_walk come from SpikeInterface's
    ``generate_displacement_vector``; ``linear`` is built here (a zigzag
    cannot start at one extreme: its phase starts half-way down a slope), as
    the same tuple: a straight ramp from +range/2 to -range/2.
    """
    from spikeinterface.generation.drifting_generator import (
        generate_displacement_vector,
        make_linear_displacement,
    )

    half = 0.5 * drift.peak_to_peak_um
    start, stop = np.array([0.0, half]), np.array([0.0, -half])
    if drift.mode == "linear":
        n_times = int(np.ceil(DISPLACEMENT_RATE_HZ * duration_s))
        shape = np.linspace(-0.5, 0.5, n_times)  # generator's shape range
        vectors = (shape[:, None] * (stop - start) + 0.5 * (start + stop))[:, :, None]
        factor = _unit_factor(drift, unit_locations_um, start, stop)
        unit_disp = vectors[:, None, :, 0] * factor[None, :, None]
        n_steps = int(np.linalg.norm(stop - start) // 2 * 2 + 1)
        steps = make_linear_displacement(start, stop, num_step=n_steps)
        return unit_disp, vectors, factor[:, None], DISPLACEMENT_RATE_HZ, steps
    motion = dict(
        drift_mode=drift.mode,
        non_rigid_gradient=drift.non_rigid_gradient,
        t_start_drift=drift.t_start_s,
        t_end_drift=None,
        period_s=drift.period_s if drift.period_s is not None else duration_s / 2.0,
    )
    if drift.mode == "bump":
        motion["bump_interval_s"] = tuple(drift.bump_interval_s)
    return generate_displacement_vector(
        duration_s,
        np.asarray(unit_locations_um)[:, :2],
        displacement_sampling_frequency=DISPLACEMENT_RATE_HZ,
        drift_start_um=start.tolist(),
        drift_stop_um=stop.tolist(),
        drift_step_um=1,
        motion_list=[motion],
        seed=seed,
    )


def _unit_factor(drift: DriftSpec, unit_locations_um, start, stop) -> npt.NDArray[np.float64]:
    """Per-unit displacement factor, as SpikeInterface's non-rigid gradient."""
    n_units = len(unit_locations_um)
    if drift.non_rigid_gradient is None:
        return np.ones(n_units)
    direction = (stop - start) / np.linalg.norm(stop - start)
    proj = np.asarray(unit_locations_um)[:, :2] @ direction
    factors = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-12)
    if drift.non_rigid_gradient < 0:
        factors = 1 - factors
    f = abs(drift.non_rigid_gradient)
    return factors * (1 - f) + f


def generate_drifting(
    spec: RecordingSpec, drift: DriftSpec, folder: Path, name: str, *, n_jobs: int = 2
) -> RecordingFiles:
    """Generate and write one drifting recording ``name`` (``spec``'s units,
    spikes and noise, ``drift``'s motion). Its ground truth also holds the
    planted motion: ``displacement_vectors`` (n_times, 2, n_motions),
    ``displacement_sampling_frequency``, ``unit_displacements`` (n_times,
    n_units, 2) and ``displacement_unit_factor``. Kept when already made from
    the same specs."""
    from spikeinterface.core.generate import generate_unit_locations
    from spikeinterface.generation import generate_drifting_recording

    folder.mkdir(parents=True, exist_ok=True)
    files = RecordingFiles(name, folder)
    full_spec = dict(recording=asdict(spec), drift=asdict(drift))
    if _is_current_drift(files, full_spec):
        return files

    positions_um = neuropixels_positions(spec.n_channels)
    # The generator's own unit locations for this seed (same defaults), so that
    # a non-rigid gradient can be computed before the call.
    unit_locations = generate_unit_locations(
        spec.n_units,
        positions_um,
        seed=spec.seed,
        margin_um=20.0,
        minimum_z=5.0,
        maximum_z=45.0,
        minimum_distance=18.0,
        max_iteration=100,
        distance_strict=False,
        distribution="uniform",
    )
    displacement = drift_displacement_data(
        drift, spec.duration_s, unit_locations, seed=spec.seed
    )
    static, drifting, sorting, extra = generate_drifting_recording(
        num_units=spec.n_units,
        duration=spec.duration_s,
        sampling_frequency=spec.sampling_rate_hz,
        probe=make_probe(positions_um),
        unit_locations=unit_locations,
        displacement_data=displacement,
        extra_outputs=True,
        seed=spec.seed,
    )
    ground_truth = dict(
        **_ground_truth(static, sorting, extra, positions_um, spec),
        displacement_vectors=np.asarray(extra["displacement_vectors"], dtype=np.float64),
        displacement_sampling_frequency=np.float64(
            extra["displacement_sampling_frequency"]
        ),
        unit_displacements=np.asarray(extra["unit_displacements"], dtype=np.float64),
        displacement_unit_factor=np.asarray(
            extra["displacement_unit_factor"], dtype=np.float64
        ),
    )
    _write_int16(drifting, files.binary, n_jobs=n_jobs)
    np.save(files.geometry, positions_um)
    np.savez(files.ground_truth, **ground_truth)
    _write_table(files, spec)
    files.spec_file.write_text(json.dumps(full_spec, indent=2) + "\n")
    return files


def _is_current_drift(files: RecordingFiles, full_spec: dict) -> bool:
    paths = (files.binary, files.geometry, files.ground_truth, files.table, files.spec_file)
    if not all(p.exists() for p in paths):
        return False
    return json.loads(files.spec_file.read_text()) == json.loads(json.dumps(full_spec))
