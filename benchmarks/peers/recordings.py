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


def _drift_kwargs(duration_s: float) -> dict:
    """Zigzag motion starting at 10 % of the recording, two periods in all."""
    t_start_s = 0.1 * duration_s
    return dict(
        displacement_sampling_frequency=5.0,
        drift_start_um=[0.0, DRIFT_UM],
        drift_stop_um=[0.0, -DRIFT_UM],
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


def generate_pair(
    spec: RecordingSpec, folder: Path, *, n_jobs: int = 2
) -> dict[str, RecordingFiles]:
    """Generate and write the ``static`` and ``drifting`` recordings of ``spec``.

    Returns the files of each, keyed by name. Recordings already generated from
    the same spec are kept as they are. ``n_jobs`` processes write the traces.
    """
    from spikeinterface.core import get_noise_levels
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
    spikes = sorting.to_spike_vector()
    noise_uv = get_noise_levels(
        static,
        return_in_uV=False,
        method="mad",
        random_slices_kwargs=dict(seed=spec.seed),
        progress_bar=False,
    )
    templates_uv = extra["templates"].templates_array
    ground_truth = dict(
        sample_index=spikes["sample_index"].astype(np.int64),
        unit_index=spikes["unit_index"].astype(np.int32),
        snr=unit_snr(templates_uv, np.asarray(noise_uv, dtype=np.float64)),
        peak_channel=np.abs(templates_uv).max(axis=1).argmax(axis=1).astype(np.int32),
        unit_locations_um=np.asarray(extra["unit_locations"], dtype=np.float64),
        positions_um=positions_um,
        sampling_rate_hz=np.float64(spec.sampling_rate_hz),
        gain_to_uv=np.float64(GAIN_TO_UV),
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
