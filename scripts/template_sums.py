"""template_sums[t]: per-cluster waveform sums over one time chunk."""

import numpy as np

from shardsort.io.arrays import ChunkedRecording
from shardsort.jobs import job_logger, read_h5, write_npz
from shardsort.templates import accumulate_templates
from shardsort.workflow import waveform_samples

log = job_logger(snakemake)
spec = snakemake.params.recording
chunk = snakemake.params.chunk
margin = int(snakemake.params.margin_samples)
pre, post = waveform_samples({"detect": snakemake.params.detect}, spec["sampling_rate_hz"])
peaks = read_h5(snakemake.input.spikes, keys=["peaks"])["peaks"]
clusters = read_h5(snakemake.input.clusters)
n_units = int(clusters["attrs"]["n_clusters"])

t = peaks["sample_index"]
sel = (t >= chunk["start"]) & (t < chunk["stop"]) & (clusters["template_labels"] >= 0)
rec = ChunkedRecording(snakemake.input.chunks, n_samples=spec["n_samples"])
window = rec.get_traces(chunk["start"] - margin, chunk["stop"] + margin, pad="zero")
sums, counts = accumulate_templates(
    window,
    t[sel] - chunk["start"] + margin,
    clusters["template_labels"][sel],
    n_units=n_units,
    pre_samples=pre,
    post_samples=post,
)
# Only the clusters with spikes in this chunk are stored (most clusters have
# none in any one chunk: their spikes are capped per unit over the recording).
present = np.flatnonzero(counts)
write_npz(snakemake.output.sums, sums=sums[present], present=present, counts=counts)
log.info("chunk %d: %d spikes into %d templates", chunk["index"], int(sel.sum()), n_units)
