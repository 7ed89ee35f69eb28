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
write_h5(
    snakemake.output.spikes,
    {"peaks": peaks, "features": features, "neighbours": basis["neighbours"]},
    {"n_spikes": len(peaks)},
)
log.info("%d spikes from %d chunks (%d border duplicates removed)",
         len(peaks), len(parts), sum(len(p["peaks"]) for p in parts) - len(peaks))
