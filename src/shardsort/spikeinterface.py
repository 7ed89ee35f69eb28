"""Sort any SpikeInterface recording with shardsort; a SpikeInterface sorter.

::

    from shardsort.spikeinterface import run_shardsort
    sorting = run_shardsort(recording, "sorted", n_jobs=8, detect={"threshold": 4.5})

    import shardsort.spikeinterface, spikeinterface.sorters as ss
    shardsort.spikeinterface.register()
    sorting = ss.run_sorter("shardsort", recording, folder="sorted")

The recording is written to ``<folder>/recording.bin`` (its own int16 samples
when it is int16 with one gain for all channels, else float32 microvolts),
with ``geometry.npy`` from its probe; the sort is the ``shardsort sort``
command's (:func:`shardsort.cli.run_sort`), results in
``<folder>/results/recording/``. Parameters are sections of
``config/config.yaml`` (``detect={"threshold": 4.5}``; a section given in
part keeps its other defaults), written to ``<folder>/params.yaml`` and
layered over the defaults.

SpikeInterface is optional: it is imported inside the functions that need it
(``pip install shardsort[spikeinterface]``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

#: Name of the written recording (and of its results folder).
RECORDING_NAME = "recording"
#: Config sections that are not sort parameters.
NOT_PARAMETERS = ("recordings", "demo")
#: Recording samples written per step when converting to microvolts.
WRITE_BLOCK_S = 1.0


def default_params() -> dict[str, Any]:
    """The sort parameters and their defaults: sections of ``config.yaml``."""
    from .cli import workflow_root

    with open(workflow_root() / "config" / "config.yaml", encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    return {k: v for k, v in config.items() if k not in NOT_PARAMETERS}


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as a config layer; unknown sections are a ``ValueError``."""
    allowed = default_params()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"shardsort parameters {unknown}: expected sections of config.yaml, "
            f"one of {sorted(allowed)} (e.g. detect={{'threshold': 4.5}})"
        )
    return {k: _plain(v) for k, v in params.items()}


def _plain(value: Any) -> Any:
    """YAML-safe copy (numpy scalars and tuples as plain Python values)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_inputs(recording, folder: str | os.PathLike) -> dict[str, Any]:
    """Write a SpikeInterface recording as shardsort's input; return its metadata.

    Parameters
    ----------
    recording : spikeinterface.core.BaseRecording
        One segment, with a probe (channel locations).
    folder : str or os.PathLike
        Created if needed; receives ``recording.bin`` and ``geometry.npy``.

    Returns
    -------
    dict
        ``path``, ``geometry``, ``sampling_rate_hz``, ``n_channels``,
        ``dtype``, ``gain_to_uv`` of the written file.

    Raises
    ------
    ValueError
        For several segments or a recording without channel locations.
    """
    from spikeinterface.core import write_binary_recording

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_segments = recording.get_num_segments()
    if n_segments != 1:
        raise ValueError(
            f"recording has {n_segments} segments: expected 1 "
            "(spikeinterface.concatenate_recordings joins them)"
        )
    try:
        locations = np.asarray(recording.get_channel_locations(), np.float64)
    except ValueError as error:
        raise ValueError(
            f"recording has no channel locations ({error}): attach its probe "
            "with recording.set_probe(...)"
        ) from None
    geometry = folder / "geometry.npy"
    np.save(geometry, locations[:, :2])

    path = folder / f"{RECORDING_NAME}.bin"
    gains = recording.get_channel_gains() if recording.has_scaleable_traces() else None
    dtype = np.dtype(recording.get_dtype())
    uniform = gains is None or np.allclose(gains, gains[0], rtol=1e-9)
    if uniform and dtype in (np.dtype(np.int16), np.dtype(np.float32)):
        # Its own samples: int16 (or float32) with one gain.
        write_binary_recording(
            recording, file_paths=[path], dtype=dtype, progress_bar=False
        )
        gain = 1.0 if gains is None else float(gains[0])
    else:
        _write_microvolts(recording, path, scaled=gains is not None)
        dtype, gain = np.dtype(np.float32), 1.0
    return {
        "path": str(path),
        "geometry": str(geometry),
        "sampling_rate_hz": float(recording.get_sampling_frequency()),
        "n_channels": int(recording.get_num_channels()),
        "dtype": dtype.name,
        "gain_to_uv": gain,
    }


def _write_microvolts(recording, path: Path, *, scaled: bool) -> None:
    """float32 microvolts (or the stored values, without gains), block by block."""
    n_samples = recording.get_num_samples(segment_index=0)
    block = max(1, int(WRITE_BLOCK_S * recording.get_sampling_frequency()))
    partial = Path(f"{path}.part")
    with open(partial, "wb") as stream:
        for start in range(0, n_samples, block):
            traces = recording.get_traces(
                segment_index=0,
                start_frame=start,
                end_frame=min(start + block, n_samples),
                return_in_uV=scaled,
            )
            np.ascontiguousarray(traces, dtype="<f4").tofile(stream)
    os.replace(partial, path)


def sort_folder(
    folder: str | os.PathLike,
    inputs: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    n_jobs: int | str = 1,
) -> Path:
    """Sort the recording :func:`write_inputs` wrote; return its results folder.

    Raises
    ------
    RuntimeError
        When the workflow fails, with the end of its log
        (``<folder>/shardsort.log``).
    """
    from .cli import CliError, Metadata, run_sort

    folder = Path(folder)
    layer = folder / "params.yaml"
    layer.write_text(yaml.safe_dump(check_params(params), sort_keys=False))
    log = folder / "shardsort.log"
    meta = Metadata(
        sampling_rate_hz=inputs["sampling_rate_hz"],
        n_channels=inputs["n_channels"],
        dtype=inputs["dtype"],
        gain_to_uv=inputs["gain_to_uv"],
        geometry=inputs["geometry"],
    )
    try:
        status, results = run_sort(
            [inputs["path"]],
            folder,
            meta=meta,
            name=RECORDING_NAME,
            cores=n_jobs,
            configfiles=[str(layer)],
            log=log,
        )
    except CliError as error:
        raise ValueError(str(error)) from None
    if status != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"shardsort failed (exit status {status}), see {log}:\n{tail}")
    return results / RECORDING_NAME


def read_sorting(results: str | os.PathLike):
    """The sort in ``results/`` (``sorting.h5``) as a SpikeInterface ``NumpySorting``.

    Unit ids are shardsort's unit indices, as in the phy folder's
    ``spike_clusters.npy``.
    """
    from spikeinterface.core import NumpySorting

    from .sortingfile import load_sorting

    sorting = load_sorting(Path(results) / "sorting.h5")
    spikes = sorting["spikes"]
    units = np.unique(spikes["unit_index"])
    return NumpySorting.from_samples_and_labels(
        [np.asarray(spikes["sample_index"], np.int64)],
        [np.asarray(spikes["unit_index"], np.int64)],
        float(sorting["attrs"]["sampling_rate_hz"]),
        unit_ids=units,
    )


def run_shardsort(
    recording, folder: str | os.PathLike, *, n_jobs: int | str = 1, **params: Any
):
    """Sort a SpikeInterface recording with shardsort.

    Parameters
    ----------
    recording : spikeinterface.core.BaseRecording
        One segment, with a probe.
    folder : str or os.PathLike
        Working and output folder (results in ``folder/results/recording/``:
        ``sorting.h5``, ``phy/``, ``sorting.nwb``, ``metrics.tsv`` ...).
    n_jobs : int or 'all', default 1
        Cores Snakemake may use.
    **params
        Sections of ``config/config.yaml`` to change, e.g.
        ``detect={"threshold": 4.5}``, ``motion={"enabled": True}``.

    Returns
    -------
    spikeinterface.core.NumpySorting
        The spike trains of ``sorting.h5`` (equal to the phy folder's).
    """
    inputs = write_inputs(recording, folder)
    results = sort_folder(folder, inputs, params, n_jobs=n_jobs)
    return read_sorting(results)


@functools.lru_cache(maxsize=1)
def sorter_class():
    """``ShardsortSorter``: shardsort as a SpikeInterface ``BaseSorter``."""
    from spikeinterface.sorters.basesorter import BaseSorter

    from . import __version__

    defaults = default_params()

    class ShardsortSorter(BaseSorter):
        """shardsort: the YASS pipeline cut into Snakemake jobs."""

        sorter_name = "shardsort"
        requires_locations = True
        gpu_capability = "not-supported"
        requires_binary_data = False
        handle_multi_segment = False
        _default_params = {**defaults, "n_jobs": 1}
        _params_description = {
            **{k: f"config.yaml section {k!r} (give only the keys to change)"
               for k in defaults},
            "n_jobs": "cores Snakemake may use (an integer or 'all')",
        }
        sorter_description = (
            "shardsort: preprocess, detect, cluster, templates and deconvolution "
            "as many small Snakemake jobs over channel shards and time chunks"
        )
        installation_mesg = "pip install shardsort[spikeinterface]"

        @classmethod
        def is_installed(cls):
            return True

        @classmethod
        def get_sorter_version(cls):
            return __version__

        @classmethod
        def _check_params(cls, recording, output_folder, params):
            check_params({k: v for k, v in params.items() if k != "n_jobs"})
            return params

        @classmethod
        def _setup_recording(cls, recording, sorter_output_folder, params, verbose):
            inputs = write_inputs(recording, sorter_output_folder)
            (Path(sorter_output_folder) / "inputs.yaml").write_text(yaml.safe_dump(inputs))

        @classmethod
        def _run_from_folder(cls, sorter_output_folder, params, verbose):
            folder = Path(sorter_output_folder)
            inputs = yaml.safe_load((folder / "inputs.yaml").read_text())
            sections = {k: v for k, v in params.items() if k != "n_jobs"}
            sort_folder(folder, inputs, sections, n_jobs=params.get("n_jobs", 1))

        @classmethod
        def _get_result_from_folder(cls, sorter_output_folder):
            return read_sorting(Path(sorter_output_folder) / "results" / RECORDING_NAME)

    return ShardsortSorter


def register():
    """Make ``spikeinterface.sorters.run_sorter("shardsort", ...)`` work.

    Adds the sorter class to SpikeInterface's registry
    (``spikeinterface.sorters.sorterlist.sorter_dict`` and
    ``sorter_full_list``), which ``run_sorter``, ``get_default_sorter_params``
    and ``installed_sorters`` read. Runs in this process only (not in
    SpikeInterface's docker/singularity containers). Returns the class.
    """
    from spikeinterface.sorters import sorterlist

    cls = sorter_class()
    sorterlist.sorter_dict[cls.sorter_name] = cls
    if cls not in sorterlist.sorter_full_list:
        sorterlist.sorter_full_list.append(cls)
    return cls
