"""Small helpers shared by the thin scripts under ``scripts/``.

Scripts read ``snakemake.input``/``params``, call kernels and write
``snakemake.output``; these helpers give each job one log file, atomic HDF5 and
NPZ writes and a stitched view of the preprocessed chunks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .io.arrays import atomic_path

# One job = one core unless the rule asks for more: keep BLAS from
# oversubscribing the cores Snakemake hands out.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def job_logger(snakemake, name: str | None = None) -> logging.Logger:
    """Logger writing to the job's ``log:`` file (and stderr)."""
    rule = name or getattr(snakemake, "rule", "job")
    logger = logging.getLogger(f"shardsort.{rule}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(snakemake.log) > 0:
        Path(snakemake.log[0]).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(snakemake.log[0], mode="w")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    logger.addHandler(sh)
    logger.propagate = False
    return logger


@contextmanager
def timed(logger: logging.Logger, what: str):
    """Log how long a block took."""
    t0 = time.perf_counter()
    yield
    logger.info("%s took %.2f s", what, time.perf_counter() - t0)


def write_h5(
    path: str | os.PathLike,
    datasets: Mapping[str, np.ndarray],
    attrs: Mapping[str, object] | None = None,
) -> None:
    """Write arrays (keys may contain '/') and root attributes atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in datasets.items():
                f.create_dataset(key, data=np.asarray(value))
            for key, value in (attrs or {}).items():
                f.attrs[key] = value


def read_h5(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict:
    """Read datasets (all, or the given keys) and root attributes of an HDF5 file."""
    out: dict = {}
    with h5py.File(path, "r") as f:
        names: list[str] = []
        if keys is None:
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        else:
            names = list(keys)
        for name in names:
            out[name] = f[name][()]
        out["attrs"] = {k: f.attrs[k] for k in f.attrs}
    return out


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` with an atomic rename (no compression: speed first)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
