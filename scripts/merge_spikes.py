"""merge_spikes: one spike table per recording from the per-chunk tables."""

import numpy as np

from shardsort.jobs import job_logger, read_h5, read_npz, write_h5
from shardsort.tables import merge_event_tables

log = job_logger(snakemake)
parts = [read_npz(p) for p in snakemake.input.peaks]
peaks, order = merge_event_tables(
    [p["peaks"] for p in parts], keys=("sample_index", "channel_index")
)
features = np.concatenate([p["features"] for p in parts], axis=0)[order]
basis = read_h5(snakemake.input.basis, keys=["neighbours"])
datasets = {"peaks": peaks, "features": features, "neighbours": basis["neighbours"]}
attrs = {"n_spikes": len(peaks)}
# Network detection adds the collision triage: collided spikes skip clustering.
for key in ("clean_probability", "collided"):
    if parts and key in parts[0]:
        datasets[key] = np.concatenate([p[key] for p in parts], axis=0)[order]
if "collided" in datasets:
    attrs["n_collided"] = int(datasets["collided"].sum())
    log.info("%d of %d spikes collided", attrs["n_collided"], len(peaks))
write_h5(snakemake.output.spikes, datasets, attrs)
log.info("%d spikes from %d chunks (%d border duplicates removed)",
         len(peaks), len(parts), sum(len(p["peaks"]) for p in parts) - len(peaks))
