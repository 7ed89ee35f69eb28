"""deconvolve[t]: template matching on one time chunk, plus per-spike features."""

import numpy as np

from shardsort.deconvolve import DeconvBasis, deconvolve_chunk, unit_thresholds
from shardsort.detect import TemporalBasis, extract_snippets, localize_spikes, project_temporal
from shardsort.io.arrays import ChunkedRecording
from shardsort.jobs import (
    chunk_windows,
    job_logger,
    read_h5,
    read_npz,
    reuse_freed_memory,
    write_npz,
)
from shardsort.workflow import ms_to_samples

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
chunk = snakemake.params.chunk
cfg = snakemake.params.deconvolve
margin = int(snakemake.params.margin_samples)
rate = spec["sampling_rate_hz"]
positions = np.asarray(spec["positions_um"], dtype=np.float64)
tpl = read_h5(snakemake.input.templates)
b = read_h5(snakemake.input.basis)
pre, post = int(tpl["attrs"]["pre_samples"]), int(tpl["attrs"]["post_samples"])

rec = ChunkedRecording(snakemake.input.chunks, n_samples=spec["n_samples"])
basis = DeconvBasis.from_arrays(read_npz(snakemake.input.deconv_basis))
thresholds = unit_thresholds(
    basis,
    highest=cfg["threshold"],
    lowest=cfg["threshold_min"],
    recall_margin=cfg["recall_margin"],
)
# Per-spike PC features on each unit's channels (phy's pc_features) and position.
pc_channels = b["neighbours"][tpl["peak_channels"]] if len(tpl["peak_channels"]) else (
    np.zeros((0, b["neighbours"].shape[1]), dtype=np.int32)
)
temporal = TemporalBasis(components=b["components"], mean=b["mean"])
# The chunk is matched block by block (shardsort.jobs.core_blocks), each block
# with the full margin on both sides, so the result equals matching the whole
# chunk at once; the matching objective holds one value per sample and unit,
# so with many units the blocks are shorter still (a share of the budget).
budget_bytes = 0.4 * snakemake.params.max_memory_mb * 2**20
sub = max(4 * basis.n_samples, int(budget_bytes // (16 * max(basis.n_units, 1))))
parts, features, places = [], [], []
for first, last, window in chunk_windows(rec, chunk, margin, max_samples=sub):
    part = deconvolve_chunk(
        window,
        basis,
        core_start=margin,
        core_stop=margin + last - first,
        threshold=thresholds,
        amplitude_min=cfg["amplitude_min"],
        amplitude_max=cfg["amplitude_max"],
        refractory_samples=ms_to_samples(cfg["refractory_ms"], rate),
    )
    channels = pc_channels[part["unit_index"]]
    snippets = extract_snippets(
        window, part["sample_index"] + margin, channels, pre_samples=pre, post_samples=post
    )
    features.append(project_temporal(snippets, temporal))
    places.append(np.stack(localize_spikes(snippets, channels, positions), axis=1))
    part["sample_index"] += first
    parts.append(part)
spikes = np.concatenate(parts)
pcs = np.concatenate(features)
spikes["sample_index"] += chunk["start"]
write_npz(
    snakemake.output.spikes,
    spikes=spikes,
    pc_features=np.ascontiguousarray(pcs.transpose(0, 2, 1), dtype=np.float32),
    positions_um=np.concatenate(places).astype(np.float32),
)
log.info("chunk %d [%d, %d): %d spikes", chunk["index"], chunk["start"], chunk["stop"], len(spikes))
