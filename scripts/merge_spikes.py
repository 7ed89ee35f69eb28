"""merge_spikes: one spike table per recording from the per-chunk tables.

Only the peak tables (24 bytes a spike) are held whole; the per-spike
features are copied chunk by chunk into the output, in the merged order.
"""

import h5py
import numpy as np

from shardsort.io.arrays import atomic_path
from shardsort.jobs import job_logger, read_h5, reuse_freed_memory
from shardsort.tables import NpzParts, gather_rows, merge_event_tables

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
paths = list(snakemake.input.peaks)


parts = NpzParts(paths)
load = parts.load
tables = parts.tables("peaks")
sizes = parts.sizes
with np.load(paths[0], allow_pickle=False) as first:
    # Network detection adds the collision triage: collided spikes skip clustering.
    aligned = ["features"] + [k for k in ("clean_probability", "collided") if k in first.files]
    shapes = {k: (first[k].shape[1:], first[k].dtype) for k in aligned}
peaks, order = merge_event_tables(tables, keys=("sample_index", "channel_index"))
del tables
basis = read_h5(snakemake.input.basis, keys=["neighbours"])
attrs = {"n_spikes": len(peaks)}
with atomic_path(snakemake.output.spikes) as tmp, h5py.File(tmp, "w") as f:
    f.create_dataset("peaks", data=peaks)
    for key in aligned[:1] + ["neighbours"] + aligned[1:]:
        if key == "neighbours":
            f.create_dataset(key, data=np.asarray(basis["neighbours"]))
            continue
        shape, dtype = shapes[key]
        dataset = f.create_dataset(key, shape=(len(peaks),) + shape, dtype=dtype)
        for lo, values in gather_rows(lambda i, key=key: load(i, key), sizes, order):
            dataset[lo : lo + len(values)] = values
    if "collided" in aligned:
        attrs["n_collided"] = int(
            sum(int(np.count_nonzero(f["collided"][lo : lo + 1_000_000]))
                for lo in range(0, len(peaks), 1_000_000))
        )
        log.info("%d of %d spikes collided", attrs["n_collided"], len(peaks))
    for key, value in attrs.items():
        f.attrs[key] = value
log.info("%d spikes from %d chunks (%d border duplicates removed)",
         len(peaks), len(paths), sum(sizes) - len(peaks))
