"""motion_peaks[t]: depth histogram per time bin of the peaks of one time chunk."""

import numpy as np

from shardsort.detect import nearest_neighbours, neighbour_mask
from shardsort.io.arrays import ChunkedRecording
from shardsort.jobs import chunk_windows, job_logger, read_h5, reuse_freed_memory, write_npz
from shardsort.motion import (
    depth_bin_edges,
    localized_peaks,
    peak_histogram,
    time_bins_of_chunk,
)
from shardsort.workflow import ms_to_samples

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
chunk = snakemake.params.chunk
det = snakemake.params.detect
cfg = snakemake.params.motion
margin = int(snakemake.params.margin_samples)
rate = spec["sampling_rate_hz"]
positions = np.asarray(spec["positions_um"], dtype=np.float64)
good = read_h5(snakemake.input.noise)["good_mask"].astype(bool)
bin_samples = ms_to_samples(1000.0 * cfg["time_bin_s"], rate)

rec = ChunkedRecording(snakemake.input.chunks, n_samples=spec["n_samples"])
# Block by block (shardsort.jobs.core_blocks): the same peaks as the whole chunk.
mask = neighbour_mask(positions, radius_um=det["radius_um"])
neighbours = nearest_neighbours(positions, n_neighbours=min(det["n_neighbours"], len(positions)))
found = []
for first, last, window in chunk_windows(rec, chunk, margin):
    block = localized_peaks(
        window,
        core_start=margin,
        core_stop=margin + last - first,
        threshold=cfg["peak_threshold"],
        neighbour_mask=mask,
        exclude_samples=ms_to_samples(det["exclude_ms"], rate),
        good_mask=good,
        neighbours=neighbours,
        positions_um=positions,
        pre_samples=ms_to_samples(det["ms_before"], rate),
        post_samples=ms_to_samples(det["ms_after"], rate),
    )
    block["sample_index"] += first
    found.append(block)
peaks = np.concatenate(found)
first_bin, n_bins = time_bins_of_chunk(chunk["start"], chunk["stop"], bin_samples=bin_samples)
edges = depth_bin_edges(positions, bin_um=cfg["depth_bin_um"])


def histogram_of(keep):
    return peak_histogram(
        peaks["sample_index"][keep] + chunk["start"],
        peaks["y_um"][keep],
        peaks["amplitude"][keep],
        bin_samples=bin_samples,
        first_bin=first_bin,
        n_bins=n_bins,
        depth_edges_um=edges,
    )


# Multi-shank probes: one histogram per shank (of the peaks whose main channel
# is on it), shape (n_shanks, n_bins, n_depth_bins), for one drift per shank.
shank_ids = np.asarray(spec["shank_ids"], dtype=np.int64)
shanks = np.unique(shank_ids)
extra = {}
if len(shanks) > 1:
    peak_shank = shank_ids[peaks["channel_index"]]
    histogram = np.stack([histogram_of(peak_shank == s) for s in shanks])
    extra["shanks"] = shanks
    log.info("peaks per shank %s: %s", shanks.tolist(),
             [int(np.sum(peak_shank == s)) for s in shanks])
else:
    histogram = histogram_of(slice(None))
write_npz(
    snakemake.output.histogram,
    histogram=histogram,
    **extra,
    first_bin=np.int64(first_bin),
    bin_samples=np.int64(bin_samples),
    depth_edges_um=edges,
    n_peaks=np.int64(len(peaks)),
)
log.info("chunk %d [%d, %d): %d peaks in time bins %d-%d",
         chunk["index"], chunk["start"], chunk["stop"], len(peaks), first_bin,
         first_bin + n_bins - 1)
