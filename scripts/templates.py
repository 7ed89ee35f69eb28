"""templates: reduce the per-chunk sums, align, clean and merge templates once."""

import numpy as np

from shardsort.jobs import job_logger, read_npz, write_h5
from shardsort.templates import (
    clean_templates,
    merge_similar_templates,
    reduce_templates,
    template_peak_channels,
    template_positions,
)
from shardsort.workflow import ms_to_samples, waveform_samples

log = job_logger(snakemake)
spec = snakemake.params.recording
cfg = snakemake.params.templates
rate = spec["sampling_rate_hz"]
positions = np.asarray(spec["positions_um"], dtype=np.float64)
pre, post = waveform_samples({"detect": snakemake.params.detect}, rate)

parts = [read_npz(p) for p in snakemake.input.sums]
templates, counts = reduce_templates([p["sums"] for p in parts], [p["counts"] for p in parts])
n_clusters = len(counts)
keep, reasons = clean_templates(
    templates,
    counts,
    positions,
    min_amplitude=cfg["min_amplitude"],
    min_count=cfg["min_count"],
    max_spread_um=cfg["max_spread_um"],
    peak_window_samples=ms_to_samples(cfg["peak_window_ms"], rate),
    pre_samples=pre,
)
for cid in np.flatnonzero(~keep):
    log.info("cluster %d dropped: %s (%d spikes)", cid, reasons[cid], counts[cid])
kept = np.flatnonzero(keep)
merged, merged_counts, mapping, groups, _ = merge_similar_templates(
    templates[kept],
    counts[kept],
    max_shift_samples=ms_to_samples(cfg["merge_max_shift_ms"], rate),
    min_cosine=cfg["merge_min_cosine"],
    max_amplitude_ratio=cfg["merge_max_amplitude_ratio"],
)
cluster_to_unit = np.full(n_clusters, -1, dtype=np.int32)
cluster_to_unit[kept] = mapping
for group in groups:
    if len(group) > 1:
        log.info("merged clusters %s", [int(kept[g]) for g in group])
peak_channels = template_peak_channels(merged)
unit_positions = template_positions(merged, positions)
write_h5(
    snakemake.output.templates,
    {
        "templates": merged.astype(np.float32),
        "counts": np.asarray(merged_counts, dtype=np.int64),
        "cluster_to_unit": cluster_to_unit,
        "peak_channels": peak_channels.astype(np.int32),
        "positions_um": unit_positions.astype(np.float32),
    },
    {"pre_samples": pre, "post_samples": post, "n_clusters": n_clusters},
)
log.info("%d clusters -> %d kept -> %d units after merging", n_clusters, len(kept), len(merged))
