"""Write a sort as an NWB file (pynwb).

The file holds one ``Device`` and one ``ElectrodeGroup`` for the probe, an
electrodes table whose ``rel_x`` / ``rel_y`` columns are the channel
positions on the probe in µm, and a units table with, per unit, the spike
times in seconds, the mean waveform in volts on the unit's electrodes, the
``electrodes`` it was recorded on (same order as the waveform columns), the
``peak_channel`` (index of the electrode with the largest peak-to-peak)
and one column per quality metric.

This module does file I/O by design: it is the export end of the workflow.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from hdmf.common import DynamicTable, DynamicTableRegion, VectorData, VectorIndex
from pynwb import NWBHDF5IO, NWBFile
from pynwb.device import Device
from pynwb.ecephys import ElectrodeGroup, ElectrodesTable
from pynwb.misc import Units

#: Units-table column names that quality metrics may not take.
RESERVED_COLUMNS = frozenset(
    {
        "id",
        "spike_times",
        "obs_intervals",
        "electrodes",
        "electrode_group",
        "waveform_mean",
        "waveform_sd",
        "waveforms",
        "peak_channel",
    }
)

#: Descriptions of the units-table columns of known quality metrics.
METRIC_DESCRIPTIONS = {
    "firing_rate": "mean firing rate over the recording (Hz)",
    "presence_ratio": "fraction of 100 equal time bins with at least one spike",
    "isi_violations_ratio": "refractory violation rate over that of a random "
    "train (Hill et al. 2011, 1.5 ms threshold)",
    "isi_violations_count": "number of inter-spike intervals below 1.5 ms",
    "amplitude_cutoff": "estimated fraction of spikes missed below threshold",
    "snr": "template peak-to-peak on the best channel over the noise SD",
    "isolation_distance": "Mahalanobis isolation distance in PC space",
    "l_ratio": "L-ratio in PC space (Schmitzer-Torbert et al. 2005)",
    "d_prime": "linear discriminant separation from neighbouring units",
    "nn_hit_rate": "fraction of nearest neighbours in PC space from the unit",
    "nn_miss_rate": "fraction of neighbours' nearest neighbours from the unit",
    "silhouette_score": "mean silhouette in PC space against neighbouring units",
    "max_drift": "range of the median spike depth over 51 s intervals (um)",
    "cumulative_drift": "summed change of the median spike depth (um)",
}


def unwhiten_templates(
    templates: npt.ArrayLike, whitening: npt.ArrayLike, scales_uv: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """Bring whitened, noise-normalised templates back to µV.

    The workflow whitens with ``preprocessed = (x_uv / scales_uv) @ W.T``,
    so ``x_uv = (preprocessed @ pinv(W).T) * scales_uv``.

    Parameters
    ----------
    templates : array_like, shape (n_units, n_times, n_channels)
        Whitened templates.
    whitening : array_like, shape (n_channels, n_channels)
        ``W``.
    scales_uv : array_like, shape (n_channels,)
        Per-channel noise scale in µV.

    Returns
    -------
    ndarray of float32, shape (n_units, n_times, n_channels)
        Templates in µV.
    """
    templates = np.asarray(templates, dtype=np.float64)
    whitening = np.asarray(whitening, dtype=np.float64)
    scales = np.asarray(scales_uv, dtype=np.float64)
    if templates.ndim != 3:
        raise ValueError(
            "templates must have shape (n_units, n_times, n_channels), got "
            f"{templates.shape}"
        )
    n_channels = templates.shape[2]
    if whitening.shape != (n_channels, n_channels):
        raise ValueError(
            f"whitening must have shape ({n_channels}, {n_channels}), got "
            f"{whitening.shape}"
        )
    if scales.shape != (n_channels,):
        raise ValueError(
            f"scales_uv must have shape ({n_channels},), got {scales.shape}"
        )
    return ((templates @ np.linalg.pinv(whitening).T) * scales).astype(np.float32)


def _metric_values(
    unit_metrics: Mapping[str, npt.ArrayLike], n_units: int
) -> dict[str, np.ndarray]:
    values = {}
    for name, column in unit_metrics.items():
        if name in RESERVED_COLUMNS:
            raise ValueError(
                f"unit_metrics may not use the reserved column name {name!r}"
            )
        values[name] = np.asarray(column)
        if values[name].shape != (n_units,):
            raise ValueError(
                f"unit_metrics[{name!r}] must have shape ({n_units},), got "
                f"{values[name].shape}"
            )
    return values


def _electrodes_table(
    positions_um: npt.NDArray[np.float64], group: ElectrodeGroup
) -> ElectrodesTable:
    """Build the electrodes table from whole columns (see :func:`_units_table`)."""
    n_channels = positions_um.shape[0]
    columns = [
        VectorData(
            name="location",
            description="location of the electrode in the brain",
            data=["unknown"] * n_channels,
        ),
        VectorData(
            name="group", description="electrode group", data=[group] * n_channels
        ),
        VectorData(
            name="group_name",
            description="name of the electrode group",
            data=[group.name] * n_channels,
        ),
        VectorData(
            name="rel_x",
            description="x position on the probe (um)",
            data=positions_um[:, 0],
        ),
        VectorData(
            name="rel_y",
            description="y position on the probe (um)",
            data=positions_um[:, 1],
        ),
    ]
    return ElectrodesTable(id=np.arange(n_channels), columns=columns)


def _units_table(
    *,
    times_s: npt.NDArray[np.float64],
    bounds: npt.NDArray[np.int64],
    best_channels: npt.NDArray[np.int64],
    waveforms_v: npt.NDArray[np.float64],
    peak_channel: npt.NDArray[np.int64],
    metrics: Mapping[str, np.ndarray],
    electrodes: DynamicTable,
    description: str,
    sampling_rate_hz: float,
    pre_samples: int | None,
) -> Units:
    """Build the units table from whole columns.

    Columns are handed over as arrays: rows added one by one end up as
    Python lists that hdmf converts element by element (minutes for
    millions of spikes).
    """
    n_units, n_keep = best_channels.shape
    spike_times = VectorData(
        name="spike_times",
        description="the spike times for each unit in seconds",
        data=times_s,
    )
    unit_electrodes = DynamicTableRegion(
        name="electrodes",
        description="the electrodes of each unit, in waveform_mean column order",
        data=best_channels.ravel(),
        table=electrodes,
    )
    columns = [
        spike_times,
        VectorIndex(name="spike_times_index", target=spike_times, data=bounds[1:]),
        unit_electrodes,
        VectorIndex(
            name="electrodes_index",
            target=unit_electrodes,
            data=n_keep * np.arange(1, n_units + 1),
        ),
        VectorData(
            name="waveform_mean",
            description="mean waveform (template) of each unit, in volts",
            data=waveforms_v,
        ),
        VectorData(
            name="peak_channel",
            description="index of the electrode with the largest template peak-to-peak",
            data=peak_channel,
        ),
    ]
    columns += [
        VectorData(
            name=name,
            description=METRIC_DESCRIPTIONS.get(name, f"quality metric {name}"),
            data=values,
        )
        for name, values in metrics.items()
    ]
    return Units(
        name="units",
        description=description,
        id=np.arange(n_units),
        columns=columns,
        waveform_rate=float(sampling_rate_hz),
        waveform_unit="volts",
        waveform_time_before_peak_in_ms=(
            None if pre_samples is None else 1e3 * pre_samples / sampling_rate_hz
        ),
    )


def write_nwb(
    path: str | os.PathLike,
    *,
    spikes: np.ndarray,
    sampling_rate_hz: float,
    templates_uv: npt.ArrayLike,
    channel_positions_um: npt.ArrayLike,
    unit_metrics: Mapping[str, npt.ArrayLike],
    session_description: str,
    identifier: str,
    session_start_time: datetime.datetime,
    recording_name: str,
    pre_samples: int | None = None,
    n_best_channels: int | None = None,
) -> Path:
    """Write the sort as an NWB file, atomically.

    Parameters
    ----------
    path : path
        ``.nwb`` file to write (replaced if present); written to a hidden
        sibling first, then renamed.
    spikes : ndarray of SPIKE_DTYPE, shape (n_spikes,)
        Sorted spikes.
    sampling_rate_hz : float
        Sampling rate; spike times are ``sample_index / sampling_rate_hz``.
    templates_uv : array_like, shape (n_units, n_times, n_channels)
        Templates in µV (see :func:`unwhiten_templates`); stored in volts.
    channel_positions_um : array_like, shape (n_channels, 2)
        Channel (x, y) on the probe, stored as ``rel_x`` / ``rel_y`` in µm.
    unit_metrics : mapping of str to array_like
        Per-unit values, shape (n_units,), one units-table column each.
    session_description, identifier : str
        NWB session description and unique identifier.
    session_start_time : datetime.datetime
        Timezone-aware start of the recording.
    recording_name : str
        Stored as the session id.
    pre_samples : int, optional
        Index of the template trough, stored as the units table's
        ``waveform_time_before_peak_in_ms``.
    n_best_channels : int, optional
        Keep each unit's waveform only on its ``n_best_channels`` largest
        peak-to-peak channels (in ascending channel order, matching its
        ``electrodes``); default all channels.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    templates = np.asarray(templates_uv, dtype=np.float32)
    if templates.ndim != 3 or 0 in templates.shape[1:]:
        raise ValueError(
            "templates_uv must have shape (n_units, n_times >= 1, n_channels >= 1), "
            f"got {templates.shape}"
        )
    n_units, _, n_channels = templates.shape
    positions = np.asarray(channel_positions_um, dtype=np.float64)
    if positions.shape != (n_channels, 2):
        raise ValueError(
            f"channel_positions_um must have shape ({n_channels}, 2), got "
            f"{positions.shape}"
        )
    if not np.isfinite(sampling_rate_hz) or sampling_rate_hz <= 0:
        raise ValueError(
            f"sampling_rate_hz must be a finite number > 0, got {sampling_rate_hz!r}"
        )
    if session_start_time.tzinfo is None:
        raise ValueError(
            f"session_start_time must be timezone-aware, got {session_start_time!r}"
        )
    units = spikes["unit_index"].astype(np.int64)
    if units.size and (units.min() < 0 or units.max() >= n_units):
        raise ValueError(
            f"spikes['unit_index'] must lie in [0, {n_units}), got values in "
            f"[{units.min()}, {units.max()}]"
        )
    n_keep = n_channels if n_best_channels is None else int(n_best_channels)
    if not 1 <= n_keep <= n_channels:
        raise ValueError(
            f"n_best_channels must be in [1, {n_channels}], got {n_best_channels!r}"
        )
    metrics = _metric_values(unit_metrics, n_units)

    ptp = np.ptp(templates, axis=1)
    peak_channel = ptp.argmax(axis=1)
    best = np.sort(np.argsort(-ptp, axis=1, kind="stable")[:, :n_keep], axis=1)
    waveforms_v = (
        np.take_along_axis(templates, best[:, None, :], axis=2).astype(np.float64)
        * 1e-6
    )

    order = np.lexsort((spikes["sample_index"], units))
    times_s = spikes["sample_index"][order] / sampling_rate_hz
    bounds = np.concatenate([[0], np.cumsum(np.bincount(units, minlength=n_units))])

    device = Device(name="probe", description="recording probe")
    group = ElectrodeGroup(
        name="probe",
        description=f"all channels of {recording_name}",
        location="unknown",
        device=device,
    )
    nwbfile = NWBFile(
        session_description=session_description,
        identifier=identifier,
        session_start_time=session_start_time,
        session_id=recording_name,
        devices=[device],
        electrode_groups=[group],
        electrodes=_electrodes_table(positions, group),
    )
    nwbfile.units = _units_table(
        times_s=times_s,
        bounds=bounds,
        best_channels=best,
        waveforms_v=waveforms_v,
        peak_channel=peak_channel,
        metrics=metrics,
        electrodes=nwbfile.electrodes,
        description=f"units sorted by shardsort from {recording_name}",
        sampling_rate_hz=sampling_rate_hz,
        pre_samples=pre_samples,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.nwb")
    try:
        with NWBHDF5IO(staging, "w") as io:
            io.write(nwbfile)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path
