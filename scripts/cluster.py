"""cluster[g]: cluster the spikes whose main channel lies in channel group g."""

import numpy as np

from shardsort.cluster import cluster_spikes
from shardsort.jobs import job_logger, read_h5, write_npz

log = job_logger(snakemake)
group = snakemake.params.group
cfg = snakemake.params.cluster
spikes = read_h5(snakemake.input.spikes, keys=["peaks"])["peaks"]
channels = spikes["channel_index"]
rows = np.flatnonzero(
    (channels >= group["channel_start"]) & (channels < group["channel_stop"])
)
with __import__("h5py").File(snakemake.input.spikes, "r") as f:
    features = f["features"][rows] if len(rows) else np.zeros((0,) + f["features"].shape[1:], np.float32)
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
