"""detect[t]: threshold detection and features on one time chunk."""

import numpy as np

from shardsort.detect import TemporalBasis, detect_chunk
from shardsort.io.arrays import ChunkedRecording
from shardsort.jobs import chunk_windows, job_logger, read_h5, reuse_freed_memory, write_npz

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
chunk = snakemake.params.chunk
det = snakemake.params.detect
margin = int(snakemake.params.margin_samples)
good = read_h5(snakemake.input.noise)["good_mask"].astype(bool)
b = read_h5(snakemake.input.basis)

rec = ChunkedRecording(snakemake.input.chunks, n_samples=spec["n_samples"])
# Block by block (shardsort.jobs.core_blocks): the same peaks as the whole chunk.
found = []
for first, last, window in chunk_windows(rec, chunk, margin):
    block_peaks, block_features = detect_chunk(
        window,
        core_start=margin,
        core_stop=margin + last - first,
        threshold=det["threshold"],
        neighbour_mask=b["neighbour_mask"],
        exclude_samples=int(b["attrs"]["exclude_samples"]),
        good_mask=good,
        neighbours=b["neighbours"],
        positions_um=np.asarray(spec["positions_um"], dtype=np.float64),
        pre_samples=int(b["attrs"]["pre_samples"]),
        post_samples=int(b["attrs"]["post_samples"]),
        pca_basis=TemporalBasis(components=b["components"], mean=b["mean"]),
    )
    block_peaks["sample_index"] += first
    found.append((block_peaks, block_features))
peaks = np.concatenate([p for p, _ in found])
features = np.concatenate([f for _, f in found])
peaks["sample_index"] += chunk["start"]
write_npz(snakemake.output.peaks, peaks=peaks, features=features)
log.info("chunk %d [%d, %d): %d spikes", chunk["index"], chunk["start"], chunk["stop"], len(peaks))
