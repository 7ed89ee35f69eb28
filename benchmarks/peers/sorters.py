"""The sorters compared, how each is started, and where its spikes end up.

Every sorter runs in its own process (so that its time and memory can be
measured) and leaves ``spikes.npz`` (``sample_index``, ``unit_index``) and
``info.json`` (version, parameters) in its output folder:

- shardsort: ``snakemake --cores N`` on the recording's table, then its
  ``results/<name>/sorting.h5`` is read;
- peers: ``python sorters.py PEER ...`` (this file) runs
  ``spikeinterface.sorters.run_sorter`` with the sorter's default parameters,
  ``N`` jobs, on the same int16 file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from recordings import RecordingFiles, load_recording

REPO = Path(__file__).resolve().parents[2]
SPIKES_FILE = "spikes.npz"
INFO_FILE = "info.json"


@dataclass(frozen=True)
class Sorter:
    """One sorter of the comparison."""

    key: str
    label: str
    package: str  # distribution whose version is reported

    @property
    def is_peer(self) -> bool:
        return self.key != "shardsort"


SORTERS = {
    s.key: s
    for s in (
        Sorter("shardsort", "shardsort", "shardsort"),
        Sorter("spykingcircus2", "SpykingCircus2", "spikeinterface"),
        Sorter("tridesclous2", "Tridesclous2", "spikeinterface"),
        Sorter("mountainsort5", "MountainSort5", "mountainsort5"),
    )
}


#: MountainSort5's one non-default parameter. Its default 250 µm snippet mask
#: covers ~50 Neuropixels channels, so each of the per-channel classifiers of
#: scheme 2 diagonalises a ~2000 x 2000 covariance: over 15 minutes on 2 cores
#: for 64 channels. 100 µm (~20 channels) still holds a Neuropixels unit's
#: footprint (shardsort's own feature radius is 60 µm).
MOUNTAINSORT5_MASK_RADIUS_UM = 100


def peer_params(key: str, *, n_jobs: int) -> dict:
    """Parameters handed to ``run_sorter``: defaults but for the job count (and
    MountainSort5's snippet mask, see ``MOUNTAINSORT5_MASK_RADIUS_UM``)."""
    if key in ("spykingcircus2", "tridesclous2"):
        return {"job_kwargs": {"n_jobs": n_jobs, "progress_bar": False}}
    if key == "mountainsort5":
        return {"n_jobs": n_jobs, "snippet_mask_radius": MOUNTAINSORT5_MASK_RADIUS_UM}
    raise ValueError(
        f"key must be one of spykingcircus2, tridesclous2, mountainsort5, got {key!r}"
    )


def shardsort_configfiles(extra: Path | Sequence[Path] | None = None) -> list[str]:
    """shardsort's config files: the repository's, then ``extra`` (one file or
    several, in order) merged over it."""
    if extra is None:
        extra = []
    elif isinstance(extra, (str, Path)):
        extra = [extra]
    return [str(REPO / "config" / "config.yaml")] + [str(path) for path in extra]


def sorter_command(
    sorter: Sorter,
    files: RecordingFiles,
    output: Path,
    *,
    n_jobs: int,
    shardsort_configfile: Path | Sequence[Path] | None = None,
) -> list[str]:
    """The command line that sorts ``files`` into ``output``."""
    if sorter.is_peer:
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            sorter.key,
            "--folder",
            str(files.folder),
            "--name",
            files.name,
            "--output",
            str(output),
            "--n-jobs",
            str(n_jobs),
        ]
    return [
        str(Path(sys.executable).parent / "snakemake"),
        "--cores",
        str(n_jobs),
        "--directory",
        str(output),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        *shardsort_configfiles(shardsort_configfile),
        "--config",
        f"recordings={files.table}",
    ]


def package_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def collect_shardsort(
    files: RecordingFiles,
    output: Path,
    *,
    configfile: Path | Sequence[Path] | None = None,
    configfiles_used: Sequence[str] | None = None,
) -> None:
    """Copy shardsort's spike train from ``sorting.h5`` into ``spikes.npz``.

    ``info.json`` records the config files of the run: ``configfiles_used``
    when given (a sort from another checkout), else the repository's config
    with ``configfile`` over it.
    """
    import h5py

    with h5py.File(output / "results" / files.name / "sorting.h5", "r") as h5:
        spikes = h5["spikes"][...]
    _save(
        output,
        spikes["sample_index"],
        spikes["unit_index"],
        {
            "sorter": "shardsort",
            "version": package_version("shardsort"),
            "params": (
                list(configfiles_used)
                if configfiles_used is not None
                else shardsort_configfiles(configfile)
            ),
        },
    )


def _save(output: Path, sample_index, unit_index, info: dict) -> None:
    np.savez(
        output / SPIKES_FILE,
        sample_index=np.asarray(sample_index, dtype=np.int64),
        unit_index=np.asarray(unit_index, dtype=np.int64),
    )
    (output / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")


def run_peer(key: str, files: RecordingFiles, output: Path, *, n_jobs: int) -> None:
    """Sort ``files`` with peer ``key`` through SpikeInterface; write the spikes."""
    from spikeinterface.core import set_global_job_kwargs
    from spikeinterface.sorters import run_sorter, sorter_dict

    set_global_job_kwargs(n_jobs=n_jobs, progress_bar=False)
    params = peer_params(key, n_jobs=n_jobs)
    sorting = run_sorter(
        key,
        load_recording(files),
        folder=output / "sorter",
        remove_existing_folder=True,
        verbose=True,
        **params,
    )
    spikes = sorting.to_spike_vector()
    unit_ids = np.asarray(sorting.unit_ids)
    _save(
        output,
        spikes["sample_index"],
        spikes["unit_index"],
        {
            "sorter": key,
            "version": sorter_dict[key].get_sorter_version(),
            "spikeinterface": package_version("spikeinterface"),
            "params": params,
            "unit_ids": unit_ids.tolist(),
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Run one peer sorter on a benchmark recording."
    )
    parser.add_argument("sorter", choices=[k for k, s in SORTERS.items() if s.is_peer])
    parser.add_argument(
        "--folder", type=Path, required=True, help="folder of the recording"
    )
    parser.add_argument(
        "--name", required=True, help="recording name (static, drifting)"
    )
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    run_peer(
        args.sorter,
        RecordingFiles(args.name, args.folder),
        args.output,
        n_jobs=args.n_jobs,
    )


if __name__ == "__main__":
    main()
