"""template_sums[t]: per-cluster waveform sums over one time chunk.

Reads only its chunk's rows of the spike table and of the cluster labels:
the peaks table is in time order (merge_spikes), so the rows are found by a
binary search on the sample column, and the job's memory does not grow with
the recording.
"""

import h5py
import numpy as np

from shardsort.io.arrays import ChunkedRecording
from shardsort.jobs import chunk_windows, job_logger, pack_array, reuse_freed_memory, write_npz
from shardsort.templates import accumulate_templates
from shardsort.workflow import waveform_samples

#: Rows below which the binary search reads the rest of the range at once.
SEARCH_BLOCK_ROWS = 4096
#: Clusters' sums packed together (the templates job's unit of reading).
SUM_ROWS_PER_BLOCK = 16

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
chunk = snakemake.params.chunk
margin = int(snakemake.params.margin_samples)
pre, post = waveform_samples({"detect": snakemake.params.detect}, spec["sampling_rate_hz"])


def first_row_at_or_after(samples, n_rows: int, value: int) -> int:
    """First row of the ascending column ``samples`` (an HDF5 view) with sample >= ``value``."""
    lo, hi = 0, n_rows
    while hi - lo > SEARCH_BLOCK_ROWS:
        mid = (lo + hi) // 2
        if samples[mid : mid + 1][0] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo + int(np.searchsorted(samples[lo:hi], value, side="left"))


with h5py.File(snakemake.input.spikes, "r") as f:
    samples = f["peaks"].fields("sample_index")
    n_rows = len(f["peaks"])
    lo = first_row_at_or_after(samples, n_rows, chunk["start"])
    hi = first_row_at_or_after(samples, n_rows, chunk["stop"])
    t = samples[lo:hi]
    before = samples[lo - 1 : lo] if lo > 0 else t[:0]
    after = samples[hi : hi + 1]
if (np.any(t[1:] < t[:-1]) or np.any(before >= chunk["start"])
        or np.any(after < chunk["stop"]) or np.any(t < chunk["start"])
        or np.any(t >= chunk["stop"])):
    raise ValueError(
        f"peaks in {snakemake.input.spikes!r} must be in ascending sample order "
        f"(merge_spikes writes them so); rows {lo}..{hi} of chunk {chunk['index']} are not"
    )
with h5py.File(snakemake.input.clusters, "r") as f:
    n_units = int(f.attrs["n_clusters"])
    if len(f["template_labels"]) != n_rows:
        raise ValueError(
            f"template_labels in {snakemake.input.clusters!r} has "
            f"{len(f['template_labels'])} rows, the peaks table {n_rows}"
        )
    labels = f["template_labels"][lo:hi]

sel = labels >= 0
t, labels = t[sel] - chunk["start"], labels[sel]
rec = ChunkedRecording(snakemake.input.chunks, n_samples=spec["n_samples"])
# Block by block (shardsort.jobs.core_blocks): the sums of int16 chunks are
# exact in float64 (multiples of the int16 step), so they do not depend on
# the blocks.
sums = counts = None
for first, last, window in chunk_windows(rec, chunk, margin):
    inside = (t >= first) & (t < last)
    sums, counts = accumulate_templates(
        window,
        t[inside] - first + margin,
        labels[inside],
        n_units=n_units,
        pre_samples=pre,
        post_samples=post,
        out=None if sums is None else (sums, counts),
    )
# Only the clusters with spikes in this chunk are stored (most clusters have
# none in any one chunk: their spikes are capped per unit over the recording).
present = np.flatnonzero(counts)
# Packed losslessly (the sums of int16 chunks are exact multiples of the
# int16 step: ~0.2 of their float64 size): the sums of every chunk are on disk
# together until the templates job. Packed in blocks of rows: the templates
# job reduces the clusters a block at a time and decodes only their rows.
write_npz(snakemake.output.sums,
          **pack_array("sums", sums[present], rows_per_block=SUM_ROWS_PER_BLOCK),
          present=present, counts=counts)
log.info("chunk %d: %d spikes into %d templates", chunk["index"], len(t), n_units)
