"""Reading ``sorting.h5`` and ``metrics.tsv`` back for the exporters and the report."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable

import numpy as np

from .jobs import read_h5


#: The per-unit and per-channel datasets of ``sorting.h5`` (small whatever the
#: recording's duration), and the spike table (16 bytes per spike).
SMALL_KEYS = (
    "spikes",
    "templates",
    "units",
    "pc_feature_ind",
    "channel_positions_um",
    "whitening",
    "scales_uv",
    "channel_labels",
)


def load_sorting(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict:
    """Datasets (all, or ``keys``) and attributes of a ``sorting.h5``.

    The per-spike features (``pc_features``: 120 bytes a spike with the
    default 3 PCs x 10 channels) are best left on disk: open the file with
    ``h5py`` and pass the dataset to a reader that takes rows in blocks.
    """
    return read_h5(path, keys=keys)


def load_metrics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``metrics.tsv`` as columns (float arrays; ``unit_index`` as int)."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        with open(path) as fh:
            header = fh.readline().rstrip("\n").split("\t")
        return {name: np.zeros(0) for name in header}
    out = {name: np.array([float(r[name]) for r in rows]) for name in rows[0]}
    out["unit_index"] = out["unit_index"].astype(np.int64)
    return out
