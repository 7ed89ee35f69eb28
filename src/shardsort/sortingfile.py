"""Reading ``sorting.h5`` and ``metrics.tsv`` back for the exporters and the report."""

from __future__ import annotations

import csv
import os

import numpy as np

from .jobs import read_h5


def load_sorting(path: str | os.PathLike) -> dict:
    """All datasets and attributes of a ``sorting.h5``."""
    return read_h5(path)


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
