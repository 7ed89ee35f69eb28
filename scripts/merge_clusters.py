"""merge_clusters: global cluster ids, and the spikes each template averages."""

import numpy as np

from shardsort.jobs import job_logger, read_h5, read_npz, write_h5

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
cap = snakemake.params.templates["max_spikes_per_unit"]
template_labels = np.full(n_spikes, -1, dtype=np.int32)
for unit in range(offset):
    members = np.flatnonzero(labels == unit)
    if len(members) > cap:
        members = members[np.linspace(0, len(members) - 1, cap).round().astype(int)]
    template_labels[members] = unit
write_h5(
    snakemake.output.clusters,
    {"labels": labels, "template_labels": template_labels},
    {"n_clusters": offset},
)
log.info("%d clusters; %d of %d spikes triaged", offset, int((labels < 0).sum()), n_spikes)
