"""Write a sort as a phy (Kilosort-style) folder.

The folder holds everything phy's template GUI and phylib's
``load_model`` read, and what SpikeInterface's ``read_phy`` /
``read_kilosort`` read:

==============================  ============================================
file                            content
==============================  ============================================
``params.py``                   dat_path, n_channels_dat, dtype, offset,
                                sample_rate, hp_filtered
``spike_times.npy``             uint64 sample of every spike (ascending)
``spike_templates.npy``         int32 template of every spike
``spike_clusters.npy``          int32 cluster of every spike (= template)
``amplitudes.npy``              float64 template scaling of every spike
``templates.npy``               float32 whitened templates (n_units, T, n)
``template_ind.npy``            int32 channels of sparse templates (only
                                when the probe has more than
                                :data:`DENSE_MAX_CHANNELS` channels)
``channel_map.npy``             int32 dat column of every template channel
``channel_positions.npy``       float64 (x, y) of every channel, µm
``whitening_mat.npy``           float64 ``M`` with whitened = dat @ ``M``
``whitening_mat_inv.npy``       float64 pseudo-inverse of ``M``
``pc_features.npy``             float32 (n_spikes, n_pcs, n_pc_channels)
``pc_feature_ind.npy``          uint32 (n_units, n_pc_channels)
``similar_templates.npy``       float32 (n_units, n_units) similarity
``cluster_group.tsv``           good / mua / noise per cluster
``cluster_<metric>.tsv``        one quality metric per cluster
==============================  ============================================

Sparse templates are named ``template_ind.npy``, the name phylib reads for
sparse templates (Kilosort's ``templates_ind.npy`` is ignored by phylib,
which would then misread sparse templates as dense ones).

This module does file I/O by design: it is the export end of the workflow.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import sparse

#: Probes with at most this many channels get dense templates.
DENSE_MAX_CHANNELS = 128

#: Channels kept per template (largest peak-to-peak first) when sparse.
SPARSE_TEMPLATE_CHANNELS = 32

#: Rows copied per step when streaming large arrays to ``.npy`` files.
_COPY_ROWS = 65_536

_METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------


def template_similarity(
    templates: npt.ArrayLike, channel_ind: npt.ArrayLike | None = None
) -> npt.NDArray[np.float32]:
    """Cosine similarity of every pair of templates, at zero lag.

    Parameters
    ----------
    templates : array_like, shape (n_units, n_times, n_local)
        Templates; dense (``n_local`` = all channels) or sparse.
    channel_ind : array_like of int, shape (n_units, n_local), optional
        Channel of each local column for sparse templates; products are then
        taken only where two templates share a channel.

    Returns
    -------
    ndarray of float32, shape (n_units, n_units)
        Similarity in [-1, 1]; 1 on the diagonal; 0 for all-zero templates.
    """
    templates = np.asarray(templates, dtype=np.float32)
    if templates.ndim != 3:
        raise ValueError(
            "templates must have shape (n_units, n_times, n_channels), got "
            f"{templates.shape}"
        )
    n_units, n_times, n_local = templates.shape
    if channel_ind is None:
        flat = templates.reshape(n_units, n_times * n_local)  # -1 fails for 0 units
        gram = flat @ flat.T
    else:
        channels = np.asarray(channel_ind, dtype=np.int64)
        if channels.shape != (n_units, n_local):
            raise ValueError(
                f"channel_ind must have shape ({n_units}, {n_local}), got "
                f"{channels.shape}"
            )
        # Column of (time, channel) in a flat dense layout.
        columns = np.arange(n_times)[None, :, None] * (channels.max(initial=0) + 1)
        columns = columns + channels[:, None, :]
        flat = sparse.csr_matrix(
            (
                templates.ravel(),
                (np.repeat(np.arange(n_units), n_times * n_local), columns.ravel()),
            ),
            shape=(n_units, n_times * (channels.max(initial=0) + 1)),
        )
        gram = (flat @ flat.T).toarray()
    norms = np.sqrt(np.diag(gram))
    scale = np.outer(norms, norms)
    return np.divide(gram, scale, out=np.zeros_like(gram), where=scale > 0).astype(
        np.float32
    )


def cluster_groups(
    spike_counts: npt.ArrayLike,
    metrics: Mapping[str, npt.ArrayLike] | None,
    *,
    min_snr: float = 2.0,
    max_isi_violations_ratio: float = 0.5,
    max_amplitude_cutoff: float = 0.1,
    min_presence_ratio: float = 0.9,
) -> npt.NDArray[np.str_]:
    """Label every cluster 'good', 'mua' or 'noise' from its quality metrics.

    The rule (thresholds are the Allen Institute's recommended defaults):

    - ``noise``: no spikes, or ``snr < min_snr`` (a template hardly above
      the noise cannot come from threshold crossings of a real unit);
    - ``good``: ``isi_violations_ratio < max_isi_violations_ratio`` and
      ``amplitude_cutoff < max_amplitude_cutoff`` and
      ``presence_ratio > min_presence_ratio`` (a NaN metric fails the test);
    - ``mua``: every other cluster.

    Without metrics every cluster is 'unsorted'.

    Parameters
    ----------
    spike_counts : array_like of int, shape (n_units,)
        Spikes per cluster.
    metrics : mapping of str to array_like, optional
        Must hold ``snr``, ``isi_violations_ratio``, ``amplitude_cutoff``
        and ``presence_ratio``, each of shape (n_units,).
    min_snr, max_isi_violations_ratio, max_amplitude_cutoff, min_presence_ratio
        Thresholds of the rule.

    Returns
    -------
    ndarray of str, shape (n_units,)
    """
    counts = np.asarray(spike_counts).ravel()
    if metrics is None:
        return np.full(counts.size, "unsorted")
    needed = ("snr", "isi_violations_ratio", "amplitude_cutoff", "presence_ratio")
    values = {}
    for name in needed:
        if name not in metrics:
            raise ValueError(
                f"metrics must contain {name!r} to label clusters, got keys "
                f"{sorted(metrics)}"
            )
        values[name] = np.asarray(metrics[name], dtype=np.float64)
        if values[name].shape != counts.shape:
            raise ValueError(
                f"metrics[{name!r}] must have shape {counts.shape}, got "
                f"{values[name].shape}"
            )
    with np.errstate(invalid="ignore"):
        noise = (counts == 0) | (values["snr"] < min_snr)
        good = (
            (values["isi_violations_ratio"] < max_isi_violations_ratio)
            & (values["amplitude_cutoff"] < max_amplitude_cutoff)
            & (values["presence_ratio"] > min_presence_ratio)
        )
    return np.where(noise, "noise", np.where(good, "good", "mua"))


def phy_whitening_matrix(
    whitening: npt.ArrayLike, scales_uv: npt.ArrayLike, *, dat_gain_uv: float
) -> npt.NDArray[np.float64]:
    """Whitening matrix in phy's convention, from dat units.

    The workflow whitens with ``preprocessed = (x_uv / scales_uv) @ W.T``;
    with ``x_uv = dat * dat_gain_uv`` this is ``preprocessed = dat @ M``,
    ``M = diag(dat_gain_uv / scales_uv) @ W.T``, which is what phy's
    ``whitening_mat.npy`` holds (phy unwhitens with ``pinv(M)``).

    Parameters
    ----------
    whitening : array_like, shape (n_channels, n_channels)
        ``W`` of the workflow.
    scales_uv : array_like, shape (n_channels,)
        Per-channel noise scale in µV.
    dat_gain_uv : float
        µV per unit of the dat file.

    Returns
    -------
    ndarray of float64, shape (n_channels, n_channels)
    """
    whitening = np.asarray(whitening, dtype=np.float64)
    scales = np.asarray(scales_uv, dtype=np.float64)
    n_channels = scales.size
    if whitening.shape != (n_channels, n_channels):
        raise ValueError(
            f"whitening must have shape ({n_channels}, {n_channels}), got "
            f"{whitening.shape}"
        )
    if scales.ndim != 1 or not np.all(scales > 0):
        raise ValueError("scales_uv must be a 1-D array of values > 0")
    if not np.isfinite(dat_gain_uv) or dat_gain_uv <= 0:
        raise ValueError(
            f"dat_gain_uv must be a finite number > 0, got {dat_gain_uv!r}"
        )
    return (dat_gain_uv / scales)[:, None] * whitening.T


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _format_value(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else repr(float(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def _write_cluster_tsv(path: Path, name: str, values: np.ndarray) -> None:
    lines = [f"cluster_id\t{name}"]
    lines += [f"{i}\t{_format_value(v)}" for i, v in enumerate(values.tolist())]
    path.write_text("\n".join(lines) + "\n")


def _save_rows(path: Path, array: npt.ArrayLike, dtype: npt.DTypeLike) -> None:
    """``np.save(path, np.asarray(array, dtype))``, converted and written block by block.

    ``array`` may be a memory map, an HDF5 dataset or a column of a table:
    only ``_COPY_ROWS`` rows are held (converted) at a time, and the file is
    written through a plain file handle (a writable memory map would keep
    every written page resident until the job ends).
    """
    shape = tuple(array.shape)
    dtype = np.dtype(dtype)
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": shape,
    }
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for lo in range(0, shape[0] if shape else 0, _COPY_ROWS):
            block = np.ascontiguousarray(array[lo : lo + _COPY_ROWS], dtype=dtype)
            handle.write(block.tobytes())


def _ascending(values: np.ndarray) -> bool:
    """Whether ``values`` never decrease (checked block by block)."""
    for lo in range(0, values.size, _COPY_ROWS):
        if np.any(np.diff(values[lo : lo + _COPY_ROWS + 1]) < 0):
            return False
    return True


def _params_text(
    *,
    dat_path: str | os.PathLike,
    n_channels_dat: int,
    dtype: npt.DTypeLike,
    offset: int,
    sampling_rate_hz: float,
    hp_filtered: bool,
) -> str:
    return (
        f"dat_path = {str(dat_path)!r}\n"
        f"n_channels_dat = {int(n_channels_dat)}\n"
        f"dtype = {np.dtype(dtype).name!r}\n"
        f"offset = {int(offset)}\n"
        f"sample_rate = {float(sampling_rate_hz)!r}\n"
        f"hp_filtered = {bool(hp_filtered)}\n"
    )


def _replace_folder(staging: Path, folder: Path) -> None:
    """Move ``staging`` to ``folder``, replacing any previous folder."""
    if not folder.exists():
        staging.rename(folder)
        return
    retired = staging.with_name(staging.name + ".old")
    folder.rename(retired)
    staging.rename(folder)
    shutil.rmtree(retired)


def write_phy_folder(
    folder: str | os.PathLike,
    *,
    spikes: np.ndarray,
    templates: npt.ArrayLike,
    whitening: npt.ArrayLike,
    scales_uv: npt.ArrayLike,
    channel_positions_um: npt.ArrayLike,
    sampling_rate_hz: float,
    pc_features: npt.ArrayLike,
    pc_feature_ind: npt.ArrayLike,
    dat_path: str | os.PathLike,
    dtype: npt.DTypeLike,
    n_channels_dat: int,
    offset: int,
    dat_gain_uv: float,
    hp_filtered: bool,
    metrics: Mapping[str, npt.ArrayLike] | None,
    channel_map: npt.ArrayLike | None = None,
    similar_templates: npt.ArrayLike | None = None,
) -> Path:
    """Write a complete phy folder, atomically.

    Everything is written into a hidden sibling folder that is then renamed
    to ``folder`` (an existing ``folder`` is replaced), so a killed job never
    leaves a folder that looks complete.

    Parameters
    ----------
    folder : path
        Folder to create.
    spikes : ndarray of SPIKE_DTYPE, shape (n_spikes,)
        Sorted spikes, ``sample_index`` ascending.
    templates : array_like, shape (n_units, n_times, n_channels)
        Whitened templates; dense when ``n_channels <= DENSE_MAX_CHANNELS``,
        else reduced to each unit's ``SPARSE_TEMPLATE_CHANNELS`` largest
        channels with ``template_ind.npy``.
    whitening : array_like, shape (n_channels, n_channels)
        ``W`` with ``preprocessed = (x_uv / scales_uv) @ W.T``.
    scales_uv : array_like, shape (n_channels,)
        Per-channel noise scale in µV.
    channel_positions_um : array_like, shape (n_channels, 2)
        Channel positions (x, y).
    sampling_rate_hz : float
        Sampling rate.
    pc_features : array_like, shape (n_spikes, n_pcs, n_pc_channels)
        Per-spike PC features (a memory map or HDF5 dataset is streamed).
    pc_feature_ind : array_like of int, shape (n_units, n_pc_channels)
        Channels of each unit's features.
    dat_path : path
        Raw binary recording, written as given (phy resolves a relative
        path against ``folder``).
    dtype : dtype
        Sample type of the dat file.
    n_channels_dat : int
        Columns of the dat file.
    offset : int
        Header bytes of the dat file.
    dat_gain_uv : float
        µV per unit of the dat file (so that phy's unwhitened templates are
        in dat units, like the raw waveforms it shows).
    hp_filtered : bool
        Whether the dat file is already high-pass filtered.
    metrics : mapping of str to array_like, optional
        Per-unit quality metrics, one ``cluster_<name>.tsv`` each (NaN is
        written as an empty cell); also labels ``cluster_group.tsv`` with
        :func:`cluster_groups`.
    channel_map : array_like of int, shape (n_channels,), optional
        Dat column of each template channel; default ``arange(n_channels)``.
    similar_templates : array_like, shape (n_units, n_units), optional
        Template similarity; default :func:`template_similarity`.

    Returns
    -------
    Path
        ``folder``.
    """
    folder = Path(folder)
    templates = np.asarray(templates, dtype=np.float32)
    if templates.ndim != 3:
        raise ValueError(
            "templates must have shape (n_units, n_times, n_channels), got "
            f"{templates.shape}"
        )
    n_units, _, n_channels = templates.shape
    names = getattr(getattr(spikes, "dtype", None), "names", None) or ()
    if not {"sample_index", "unit_index", "amplitude"} <= set(names):
        raise ValueError(
            "spikes must be a SPIKE_DTYPE table with fields sample_index, "
            f"unit_index and amplitude, got fields {names}"
        )
    samples = spikes["sample_index"]
    units = spikes["unit_index"]
    if samples.size and (samples.min() < 0 or not _ascending(samples)):
        raise ValueError("spikes['sample_index'] must be >= 0 and ascending")
    if units.size and (units.min() < 0 or units.max() >= n_units):
        raise ValueError(
            f"spikes['unit_index'] must lie in [0, {n_units}), got values in "
            f"[{units.min()}, {units.max()}]"
        )
    if not np.isfinite(sampling_rate_hz) or sampling_rate_hz <= 0:
        raise ValueError(
            f"sampling_rate_hz must be a finite number > 0, got {sampling_rate_hz!r}"
        )
    positions = np.asarray(channel_positions_um, dtype=np.float64)
    if positions.shape != (n_channels, 2):
        raise ValueError(
            f"channel_positions_um must have shape ({n_channels}, 2), got "
            f"{positions.shape}"
        )
    if isinstance(n_channels_dat, bool) or int(n_channels_dat) < 1:
        raise ValueError(
            f"n_channels_dat must be an integer >= 1, got {n_channels_dat!r}"
        )
    channel_map = (
        np.arange(n_channels, dtype=np.int32)
        if channel_map is None
        else np.asarray(channel_map).astype(np.int32)
    )
    if channel_map.shape != (n_channels,) or (
        n_channels and (channel_map.min() < 0 or channel_map.max() >= n_channels_dat)
    ):
        raise ValueError(
            f"channel_map must be {n_channels} dat columns in [0, {n_channels_dat}), "
            f"got shape {channel_map.shape}"
        )
    if not hasattr(pc_features, "shape"):
        pc_features = np.asarray(pc_features, dtype=np.float32)
    if len(pc_features.shape) != 3 or pc_features.shape[0] != samples.size:
        raise ValueError(
            f"pc_features must have shape ({samples.size}, n_pcs, n_pc_channels), "
            f"got {tuple(pc_features.shape)}"
        )
    pc_feature_ind = np.asarray(pc_feature_ind)
    if pc_feature_ind.shape != (n_units, pc_features.shape[2]) or (
        pc_feature_ind.size
        and (pc_feature_ind.min() < 0 or pc_feature_ind.max() >= n_channels)
    ):
        raise ValueError(
            f"pc_feature_ind must have shape ({n_units}, {pc_features.shape[2]}) "
            f"with channels in [0, {n_channels}), got shape {pc_feature_ind.shape}"
        )
    metric_arrays = {}
    for name, values in (metrics or {}).items():
        if not _METRIC_NAME.match(name) or name == "group":
            raise ValueError(
                f"metric names must be identifiers other than 'group', got {name!r}"
            )
        metric_arrays[name] = np.asarray(values)
        if metric_arrays[name].shape != (n_units,):
            raise ValueError(
                f"metrics[{name!r}] must have shape ({n_units},), got "
                f"{metric_arrays[name].shape}"
            )
    wm = phy_whitening_matrix(whitening, scales_uv, dat_gain_uv=dat_gain_uv)

    if n_channels <= DENSE_MAX_CHANNELS:
        written_templates, template_ind = templates, None
    else:
        order = np.argsort(-np.ptp(templates, axis=1), axis=1, kind="stable")
        template_ind = order[:, :SPARSE_TEMPLATE_CHANNELS].astype(np.int32)
        written_templates = np.take_along_axis(templates, template_ind[:, None, :], 2)
    if similar_templates is None:
        similar_templates = template_similarity(written_templates, template_ind)
    similar_templates = np.asarray(similar_templates, dtype=np.float32)
    if similar_templates.shape != (n_units, n_units):
        raise ValueError(
            f"similar_templates must have shape ({n_units}, {n_units}), got "
            f"{similar_templates.shape}"
        )
    groups = cluster_groups(
        np.bincount(units, minlength=n_units), metrics if metrics else None
    )

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir()
    try:
        (staging / "params.py").write_text(
            _params_text(
                dat_path=dat_path,
                n_channels_dat=n_channels_dat,
                dtype=dtype,
                offset=offset,
                sampling_rate_hz=sampling_rate_hz,
                hp_filtered=hp_filtered,
            )
        )
        _save_rows(staging / "spike_times.npy", samples, np.uint64)
        _save_rows(staging / "spike_templates.npy", units, np.int32)
        _save_rows(staging / "spike_clusters.npy", units, np.int32)
        _save_rows(staging / "amplitudes.npy", spikes["amplitude"], np.float64)
        np.save(staging / "templates.npy", written_templates)
        if template_ind is not None:
            np.save(staging / "template_ind.npy", template_ind)
        np.save(staging / "channel_map.npy", channel_map)
        np.save(staging / "channel_positions.npy", positions)
        np.save(staging / "whitening_mat.npy", wm)
        np.save(staging / "whitening_mat_inv.npy", np.linalg.pinv(wm))
        _save_rows(staging / "pc_features.npy", pc_features, np.float32)
        np.save(staging / "pc_feature_ind.npy", pc_feature_ind.astype(np.uint32))
        np.save(staging / "similar_templates.npy", similar_templates)
        _write_cluster_tsv(staging / "cluster_group.tsv", "group", groups)
        for name, values in metric_arrays.items():
            _write_cluster_tsv(staging / f"cluster_{name}.tsv", name, values)
        _replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
