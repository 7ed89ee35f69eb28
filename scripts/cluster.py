"""cluster[g]: cluster the spikes whose main channel lies in channel group g."""

import h5py
import numpy as np

from shardsort.cluster import cluster_spikes
from shardsort.jobs import job_logger, reuse_freed_memory, write_npz
from shardsort.tables import take_rows

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
group = snakemake.params.group
cfg = snakemake.params.cluster
with h5py.File(snakemake.input.spikes, "r") as f:
    channels = f["peaks"]["channel_index"]
    wanted = (channels >= group["channel_start"]) & (channels < group["channel_stop"])
    # Network detection: collided spikes are left to deconvolution.
    if "collided" in f:
        wanted &= ~f["collided"][()].astype(bool)
    rows = np.flatnonzero(wanted)
    # Block reads: h5py's point selection is quadratic in the rows (a minute for 38,000).
    features = take_rows(f["features"], rows)
labels = cluster_spikes(
    features,
    main_channels=channels[rows],
    seed=snakemake.params.seed,
    min_cluster_size=cfg["min_cluster_size"],
    max_fit_spikes=cfg["max_spikes_per_channel"],
    split_threshold=cfg["split_threshold"],
    triage_quantile=cfg["triage_quantile"],
)
write_npz(snakemake.output.labels, rows=rows.astype(np.int64), labels=labels.astype(np.int32))
n_clusters = int(labels.max()) + 1 if len(labels) else 0
log.info(
    "group %d channels [%d, %d): %d spikes -> %d clusters, %d triaged",
    group["index"], group["channel_start"], group["channel_stop"],
    len(rows), n_clusters, int((labels < 0).sum()),
)
