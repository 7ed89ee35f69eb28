"""What a saved network needs of a recording, checked without TensorFlow.

A saved model is a folder holding ``model.keras`` and the YAML sidecar
``model.yaml`` (:func:`shardsort.nn.training.save_model`). The sidecar says
what the model was trained on: sampling rate, neighbourhood (size K and the
neighbours' offsets from the centre channel), the preprocessing of its input
and, for triage, the snippet's trough index. This module reads sidecars and
checks them against a recording with numpy and YAML only, so the workflow can
reject an unfit model while it builds the DAG, before any job (and before
TensorFlow is imported).

Neighbour tables are (n_channels, K) integer arrays: row c lists the K
channels nearest to c in distance order, c first, ``-1`` marking a missing
neighbour (read as a silent channel).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from ..checks import check_int as _check_int
from ..detect import nearest_neighbours

#: File names inside a model folder.
MODEL_FILE = "model.keras"
SIDECAR_FILE = "model.yaml"

#: Relative sampling-rate difference a model accepts.
SAMPLING_RATE_RTOL = 0.01

#: A detected spike is reported at the trough of its channel's trace within
#: this many samples of the detector's logit peak.
REFINE_SAMPLES = 2

#: Relative difference of each neighbour's distance from the centre channel
#: that a model accepts (a probe of another pitch does not fit).
NEIGHBOURHOOD_RTOL = 0.25


def neighbour_table(
    positions_um: npt.NDArray[np.floating], *, n_neighbours: int
) -> npt.NDArray[np.int64]:
    """The K nearest channels of every channel, padded for small probes.

    Parameters
    ----------
    positions_um : ndarray, shape (n_channels, 2)
        Channel (x, y) positions in micrometres.
    n_neighbours : int
        K (>= 1); may exceed ``n_channels``.

    Returns
    -------
    ndarray of int64, shape (n_channels, n_neighbours)
        Row c lists the channels nearest to c in distance order, c first
        (:func:`shardsort.detect.nearest_neighbours`), then ``-1`` (a silent
        channel) where the probe has fewer than K channels.
    """
    n_neighbours = _check_int("n_neighbours", n_neighbours, 1)
    n_channels = np.shape(positions_um)[0]
    table = np.full((n_channels, n_neighbours), -1, dtype=np.int64)
    if n_channels:
        found = min(n_neighbours, n_channels)
        table[:, :found] = nearest_neighbours(positions_um, n_neighbours=found)
    return table


def drop_bad_channels(
    neighbours: npt.NDArray[np.integer], good_mask: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    """A neighbour table with bad channels (``good_mask`` False) as ``-1``.

    The networks read ``-1`` as a silent channel, as preprocessing leaves
    bad channels (zero).
    """
    table = np.asarray(neighbours, dtype=np.int64)
    good = np.asarray(good_mask, dtype=bool)
    if good.ndim != 1 or (table.size and table.max() >= good.size):
        raise ValueError(
            f"good_mask must be a 1-D bool array covering the table's channels, "
            f"got shape {good.shape} for channels up to {table.max(initial=-1)}"
        )
    return np.where((table >= 0) & good[np.maximum(table, 0)], table, -1)


def check_neighbour_table(
    neighbours: npt.ArrayLike, n_channels: int, n_neighbours: int
) -> npt.NDArray[np.int64]:
    """``neighbours`` as int64, or ValueError unless a valid (n_channels, K) table."""
    table = np.asarray(neighbours)
    if table.shape != (n_channels, n_neighbours) or not np.issubdtype(
        table.dtype, np.integer
    ):
        raise ValueError(
            f"neighbours must be an integer array of shape ({n_channels}, "
            f"{n_neighbours}) (channels, the model's K), got {table.dtype} "
            f"{table.shape}"
        )
    if table.size and (table.min() < -1 or table.max() >= n_channels):
        raise ValueError(
            f"neighbours must lie in [-1, {n_channels - 1}] (-1: no channel), "
            f"got range [{table.min()}, {table.max()}]"
        )
    return table.astype(np.int64)


def neighbour_offsets_um(
    positions_um: npt.NDArray[np.floating], neighbours: npt.NDArray[np.integer]
) -> npt.NDArray[np.float64]:
    """Neighbourhood geometry: neighbour positions relative to the centre.

    Parameters
    ----------
    positions_um : ndarray, shape (n_channels >= 1, 2)
        Channel (x, y) positions in micrometres.
    neighbours : ndarray of int, shape (n_channels, K)
        Neighbour table (``-1``: no channel).

    Returns
    -------
    ndarray of float64, shape (K, 2)
        ``positions[neighbours[c]] - positions[c]`` for the channel c closest
        to the probe's median position (the lowest such index), away from the
        probe's edges; NaN rows for missing neighbours. Recorded in a model's
        sidecar to describe the geometry it was trained on.
    """
    positions = np.asarray(positions_um, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2 or positions.shape[0] == 0:
        raise ValueError(
            f"positions_um must have shape (n_channels >= 1, 2), got {positions.shape}"
        )
    table = check_neighbour_table(
        neighbours, positions.shape[0], np.shape(neighbours)[1]
    )
    centre = np.argmin(np.hypot(*(positions - np.median(positions, axis=0)).T))
    row = table[centre]
    offsets = positions[np.maximum(row, 0)] - positions[centre]
    offsets[row < 0] = np.nan
    return offsets


def detector_margin_samples(*, filter_samples: int, exclude_samples: int) -> int:
    """Margin the detector network needs on each side of a chunk's core.

    Parameters
    ----------
    filter_samples : int
        Length of the detector's temporal filters (its receptive field), >= 1.
    exclude_samples : int
        Temporal exclusion half-width of the peak test, >= 0.

    Returns
    -------
    int
        ``filter_samples // 2 + exclude_samples + REFINE_SAMPLES``: the
        receptive field of the logit at samples up to ``exclude_samples +
        REFINE_SAMPLES`` beyond the core, whose peaks may refine into it.
        With that margin (or the recording edge, zero-padded) detection does
        not depend on how the recording is chunked.
    """
    filter_samples = _check_int("filter_samples", filter_samples, 1)
    exclude_samples = _check_int("exclude_samples", exclude_samples, 0)
    return filter_samples // 2 + exclude_samples + REFINE_SAMPLES


def detect_nn_margin_samples(
    *,
    filter_samples: int,
    exclude_samples: int,
    pre_samples: int,
    post_samples: int,
    triage_pre_samples: int,
    triage_post_samples: int,
) -> int:
    """Margin of a network detection job: detector, features and triage.

    The largest of :func:`detector_margin_samples` and the snippet extents
    around a trough in the core: ``pre_samples`` / ``post_samples`` of the
    features and ``triage_pre_samples`` / ``triage_post_samples`` of the
    triage network's snippets (all >= 0).
    """
    extents = {
        "pre_samples": pre_samples,
        "post_samples": post_samples,
        "triage_pre_samples": triage_pre_samples,
        "triage_post_samples": triage_post_samples,
    }
    return max(
        detector_margin_samples(
            filter_samples=filter_samples, exclude_samples=exclude_samples
        ),
        *(_check_int(name, value, 0) for name, value in extents.items()),
    )


def read_sidecar(path_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed sidecar of a model folder.

    Raises
    ------
    FileNotFoundError
        If the folder has no sidecar, or the sidecar names a missing model file.
    ValueError
        If the sidecar lacks ``kind``, ``sampling_rate_hz`` or ``n_neighbours``.
    """
    folder = Path(path_dir)
    sidecar_path = folder / SIDECAR_FILE
    if not sidecar_path.is_file():
        raise FileNotFoundError(f"model sidecar not found: {sidecar_path}")
    sidecar = yaml.safe_load(sidecar_path.read_text())
    if not isinstance(sidecar, dict):
        raise ValueError(  # noqa: TRY004 (a file's content, not an argument's type)
            f"{sidecar_path}: expected a mapping, got {type(sidecar).__name__}"
        )
    missing = [k for k in ("kind", "sampling_rate_hz", "n_neighbours") if k not in sidecar]
    if missing:
        raise ValueError(f"{sidecar_path}: missing entries {missing}")
    model_path = folder / sidecar.get("keras_file", MODEL_FILE)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    return sidecar


def _distances(offsets: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
    return np.hypot(array[:, 0], array[:, 1])


def check_model_fits(
    sidecar: dict[str, Any],
    *,
    source: str | os.PathLike,
    kind: str | None = None,
    sampling_rate_hz: float | None = None,
    n_neighbours: int | None = None,
    neighbour_offsets_um: npt.ArrayLike | None = None,
    whiten: bool | None = None,
) -> None:
    """Raise ValueError unless a model's sidecar fits a recording.

    Every check is skipped when its argument is None, and the geometry and
    preprocessing checks when the sidecar does not record them.

    Parameters
    ----------
    sidecar : dict
        From :func:`read_sidecar`.
    source : str or PathLike
        Named at the start of each message (the sidecar's path).
    kind : {'detector', 'triage'}, optional
        The model's kind.
    sampling_rate_hz : float, optional
        The recording's rate; must agree within :data:`SAMPLING_RATE_RTOL`.
    n_neighbours : int, optional
        K of the recording's neighbour table; must equal the model's.
    neighbour_offsets_um : array_like, shape (K', 2), optional
        The recording's neighbourhood (:func:`neighbour_offsets_um`, with
        the model's K): each neighbour's distance from the centre must agree
        with the model's within :data:`NEIGHBOURHOOD_RTOL` (relative), and
        the recording must have every neighbour the model has.
    whiten : bool, optional
        Whether the recording's preprocessing whitens; must equal the
        sidecar's ``preprocessing: whiten``.
    """
    if kind is not None and sidecar.get("kind") != kind:
        raise ValueError(
            f"{source}: kind of the model is {sidecar.get('kind')!r}, expected {kind!r}"
        )
    model_rate = float(sidecar["sampling_rate_hz"])
    if sampling_rate_hz is not None and not np.isclose(
        sampling_rate_hz, model_rate, rtol=SAMPLING_RATE_RTOL, atol=0
    ):
        raise ValueError(
            f"{source}: sampling_rate_hz of the model is {model_rate:g} Hz "
            f"but the recording's is {sampling_rate_hz:g} Hz (they must "
            f"agree within {SAMPLING_RATE_RTOL:.0%}); train a model at the "
            "recording's rate (detect.nn_model: trained)"
        )
    model_k = int(sidecar["n_neighbours"])
    if n_neighbours is not None and n_neighbours != model_k:
        raise ValueError(
            f"{source}: n_neighbours of the model is {model_k} but the "
            f"recording's neighbour table has {n_neighbours}; build the "
            f"table with n_neighbours={model_k} or train a model for it"
        )
    preprocessing = sidecar.get("preprocessing") or {}
    trained_whitened = preprocessing.get("whiten")
    if None not in (whiten, trained_whitened) and bool(trained_whitened) != bool(whiten):
        raise ValueError(
            f"{source}: the model was trained on "
            f"{'whitened' if trained_whitened else 'unwhitened'} traces "
            f"(preprocessing: whiten: {str(bool(trained_whitened)).lower()}) but "
            f"preprocess.whiten is {str(bool(whiten)).lower()}; set "
            f"preprocess.whiten: {str(bool(trained_whitened)).lower()} or train a "
            "model on the recording (detect.nn_model: trained)"
        )
    model_offsets = sidecar.get("neighbour_offsets_um")
    if neighbour_offsets_um is not None and model_offsets is not None:
        ours = _distances(neighbour_offsets_um)
        theirs = _distances(model_offsets)
        for k, (d_ours, d_theirs) in enumerate(zip(ours, theirs)):
            if np.isnan(d_theirs):
                continue
            if np.isnan(d_ours):
                raise ValueError(
                    f"{source}: the model uses {int(np.sum(~np.isnan(theirs)))} "
                    f"channels per neighbourhood but the recording's probe has "
                    f"only {int(np.sum(~np.isnan(ours)))}; train a model on the "
                    "recording (detect.nn_model: trained)"
                )
            if abs(d_ours - d_theirs) > NEIGHBOURHOOD_RTOL * max(d_theirs, 1.0):
                raise ValueError(
                    f"{source}: the recording's neighbourhood does not fit the "
                    f"model's: neighbour {k} of a central channel is "
                    f"{d_ours:.1f} um away, the model's {d_theirs:.1f} um (they "
                    f"must agree within {NEIGHBOURHOOD_RTOL:.0%}); train a model "
                    "on the recording (detect.nn_model: trained)"
                )
