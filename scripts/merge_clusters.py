"""merge_clusters: global cluster ids, and the spikes each template averages."""

import numpy as np

from shardsort.jobs import job_logger, read_h5, read_npz, write_h5

#: Rows of the label array handled at once when picking template spikes.
BLOCK_ROWS = 1 << 16

log = job_logger(snakemake)
n_spikes = int(read_h5(snakemake.input.spikes, keys=[])["attrs"]["n_spikes"])
labels = np.full(n_spikes, -1, dtype=np.int32)
offset = 0
for path in snakemake.input.labels:  # ordered by group index
    part = read_npz(path)
    local = part["labels"]
    assigned = local >= 0
    labels[part["rows"][assigned]] = local[assigned] + offset
    offset += int(local.max()) + 1 if assigned.any() else 0

# Each template averages at most max_spikes_per_unit spikes, spread evenly over
# the recording (spike rows are in time order), independent of chunking.
# A spike's rank among its cluster's spikes decides whether it is picked; the
# ranks are counted block by block of rows (O(spikes log block) time, memory
# per block), giving the rows the per-cluster selection picks.
cap = snakemake.params.templates["max_spikes_per_unit"]
template_labels = np.full(n_spikes, -1, dtype=np.int32)
counts = np.zeros(offset, dtype=np.int64)
for lo in range(0, n_spikes, BLOCK_ROWS):
    block = labels[lo : lo + BLOCK_ROWS]
    counts += np.bincount(block[block >= 0], minlength=offset)
capped = np.flatnonzero(counts > cap)
stride = int(counts.max()) + 1 if offset else 1
# Picked (cluster, rank) keys of the capped clusters, ascending.
picked_keys = np.concatenate(
    [np.zeros(0, np.int64)]
    + [unit * stride + np.linspace(0, counts[unit] - 1, cap).round().astype(np.int64)
       for unit in capped.tolist()]
)
seen = np.zeros(offset, dtype=np.int64)
for lo in range(0, n_spikes, BLOCK_ROWS):
    block = labels[lo : lo + BLOCK_ROWS]
    rows = np.flatnonzero(block >= 0)
    units = block[rows]
    order = np.argsort(units, kind="stable")
    grouped = units[order]
    rank = np.empty(len(units), dtype=np.int64)
    rank[order] = np.arange(len(units)) - np.searchsorted(grouped, grouped, side="left")
    rank += seen[units]
    seen += np.bincount(units, minlength=offset)
    keys = units * np.int64(stride) + rank
    at = np.minimum(np.searchsorted(picked_keys, keys), max(len(picked_keys) - 1, 0))
    picked = counts[units] <= cap
    if len(picked_keys):
        picked |= picked_keys[at] == keys
    template_labels[lo + rows[picked]] = units[picked]
write_h5(
    snakemake.output.clusters,
    {"labels": labels, "template_labels": template_labels},
    {"n_clusters": offset},
)
log.info("%d clusters; %d of %d spikes triaged", offset, int((labels < 0).sum()), n_spikes)
