"""templates: reduce the per-chunk sums, clean, merge and align templates once."""

import h5py
import numpy as np

from shardsort.deconvolve import prepare_templates
from shardsort.io.arrays import ChunkedRecording
from shardsort.jobs import job_logger, read_packed_rows, reuse_freed_memory, write_h5, write_npz
from shardsort.templates import (
    align_templates,
    clean_templates,
    matched_snr,
    merge_similar_templates,
    noise_factors,
    noise_lag_correlation,
    reduce_templates,
    refractory_conflicts_in_blocks,
    sample_noise_windows,
    sparsify_templates,
    template_peak_channels,
    template_positions,
)
from shardsort.workflow import ms_to_samples, waveform_samples

#: Float64 sums held at a time while reducing the chunks' template sums.
REDUCE_BLOCK_BYTES = 64e6
#: Spikes read at a time for the refractory test (the table is never held whole).
SPIKE_BLOCK = 1_000_000
#: Background-noise windows drawn per noise segment.
NOISE_WINDOWS = 250

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
cfg = snakemake.params.templates
rate = spec["sampling_rate_hz"]
positions = np.asarray(spec["positions_um"], dtype=np.float64)
pre, post = waveform_samples({"detect": snakemake.params.detect}, rate)

with np.load(snakemake.input.sums[0], allow_pickle=False) as first:
    n_clusters = int(first["counts"].size)
width, n_channels = pre + post, len(positions)
# Clusters reduced a block at a time (float64 sums of at most ~64 MB), each
# block reading only its rows of every chunk's sums: memory grows with the
# number of clusters by their float32 templates only.
block = max(1, int(REDUCE_BLOCK_BYTES // (width * n_channels * 8)))
templates = np.zeros((n_clusters, width, n_channels), dtype=np.float32)
counts = np.zeros(n_clusters, dtype=np.int64)


def chunk_sums(lo, hi):
    """(sums, counts, rows) of clusters lo:hi, one chunk at a time."""
    for path in snakemake.input.sums:
        with np.load(path, allow_pickle=False) as data:
            present = data["present"]
            first_row, last_row = np.searchsorted(present, [lo, hi])
            rows = read_packed_rows(data, "sums", int(first_row), int(last_row), path=path)
            yield rows, data["counts"][lo:hi], present[first_row:last_row] - lo


for lo in range(0, n_clusters, block):
    hi = min(lo + block, n_clusters)
    part, counts[lo:hi] = reduce_templates(chunk_sums(lo, hi))
    # Channels holding only averaged noise are zeroed (see sparsify_templates).
    templates[lo:hi] = sparsify_templates(
        part, counts[lo:hi], min_fraction=cfg["sparsity_fraction"],
        noise_ptp=cfg["sparsity_noise_ptp"], positions_um=positions,
        radius_um=cfg["sparsity_radius_um"],
    )
    del part

# Background-noise windows: how each template's matching score varies on
# noise alone (the noise is band-limited and spatially correlated). Random
# windows, spikes included: noise_factors takes a robust spread.
noise_rec = ChunkedRecording(snakemake.input.noise_chunks, n_samples=spec["n_samples"])
segments = snakemake.params.segments
windows = np.empty((NOISE_WINDOWS * len(segments), width, n_channels), dtype=np.float32)
n_windows = 0  # filled in place: no second copy of all windows
for i, (start, stop) in enumerate(segments):
    traces = noise_rec.get_traces(start, stop)
    found = sample_noise_windows(
        traces, n_windows=NOISE_WINDOWS, window_samples=width,
        threshold=None, seed=snakemake.params.seed + i,
    )
    windows[n_windows : n_windows + len(found)] = found
    n_windows += len(found)
    del traces, found
windows = windows[:n_windows]
log.info("%d background-noise windows", len(windows))


def significance(t):
    """(noise factors, matched-filter SNR) of templates ``t``."""
    if len(t) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    f = noise_factors(t, windows)
    return f, matched_snr(t, f)


# 1. Clean: too small, too few spikes, too spread, off-centre, or not standing
#    out of the noise (clusters of noise crossings).
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
factors, snr = significance(templates)
weak = snr < cfg["min_snr"]
for cid in np.flatnonzero(~keep | weak):
    why = [name for name, mask in reasons.items() if mask[cid]]
    if weak[cid]:
        why.append(f"matched SNR {snr[cid]:.1f} < {cfg['min_snr']}")
    log.info("cluster %d dropped: %s (%d spikes)", cid, ", ".join(why), counts[cid])
kept = np.flatnonzero(keep & ~weak)
# Why each cluster was dropped (all False: kept); the report says it when no
# unit is left.
dropped = np.zeros(n_clusters, dtype=[(name, "?") for name in (*reasons, "min_snr")])
for name, mask in reasons.items():
    dropped[name] = mask
dropped["min_snr"] = weak

# 2. Merge units found twice (neighbouring channels/groups, or split clusters),
#    but never two clusters whose spike trains show they are two neurons.
kept_index = np.full(n_clusters + 1, -1, dtype=np.int64)  # last entry: label -1
kept_index[kept] = np.arange(len(kept))
min_lag_ms, max_lag_ms = cfg["merge_refractory_ms"]
with h5py.File(snakemake.input.spikes, "r") as fs, h5py.File(snakemake.input.clusters, "r") as fc:
    peaks, labels = fs["peaks"], fc["labels"]
    if len(peaks) != len(labels):
        raise ValueError(f"{snakemake.input.clusters}: {len(labels)} labels for "
                         f"{len(peaks)} spikes in {snakemake.input.spikes}")

    def spike_blocks():
        """(sample_index, kept cluster) of the time-ordered spikes, a block at a time."""
        for lo in range(0, len(peaks), SPIKE_BLOCK):
            hi = min(lo + SPIKE_BLOCK, len(peaks))
            yield peaks.fields("sample_index")[lo:hi], kept_index[labels[lo:hi]]

    observed, expected = refractory_conflicts_in_blocks(
        spike_blocks(),
        len(kept),
        duration_samples=int(spec["n_samples"]),
        min_lag_samples=ms_to_samples(min_lag_ms, rate),
        max_lag_samples=ms_to_samples(max_lag_ms, rate),
    )
distinct = (
    (expected >= cfg["merge_min_expected"])
    & (observed >= cfg["merge_min_violations"])
    & (observed > cfg["merge_max_violation_fraction"] * expected)
)
merged, merged_counts, mapping, groups, _ = merge_similar_templates(
    templates[kept],
    counts[kept],
    max_shift_samples=ms_to_samples(cfg["merge_max_shift_ms"], rate),
    min_cosine=cfg["merge_min_cosine"],
    max_amplitude_ratio=cfg["merge_max_amplitude_ratio"],
    noise_factors=factors[kept],
    max_difference=cfg["merge_max_difference"],
    distinct=distinct,
)
cluster_to_unit = np.full(n_clusters, -1, dtype=np.int32)
cluster_to_unit[kept] = mapping
merge_group = np.full(n_clusters, -1, dtype=np.int32)
for g, group in enumerate(groups):
    merge_group[kept[group]] = g
    if len(group) > 1:
        log.info("merged clusters %s", [int(kept[i]) for i in group])
log.info(
    "%d cluster pairs are two neurons by their refractory violations (never merged)",
    int((np.triu(distinct, 1)).sum()),
)

# 3. Align every template's trough on pre_samples; the matching basis is
#    computed once here.
merged, _ = align_templates(merged, pre_samples=pre)
factors, snr = significance(merged)
peak_channels = template_peak_channels(merged)
unit_positions = template_positions(merged, positions)
write_h5(
    snakemake.output.templates,
    {
        "templates": merged.astype(np.float32),
        "counts": np.asarray(merged_counts, dtype=np.int64),
        "cluster_to_unit": cluster_to_unit,
        "cluster_merge_group": merge_group,
        "peak_channels": peak_channels.astype(np.int32),
        "positions_um": unit_positions.astype(np.float32),
        "noise_factors": factors,
        "matched_snr": snr,
        # How often noise alone crosses each template's matching threshold.
        "noise_lag_correlation": noise_lag_correlation(merged, windows),
        "cluster_dropped": dropped,
    },
    {"pre_samples": pre, "post_samples": post, "n_clusters": n_clusters},
)
basis = prepare_templates(merged, pre_samples=pre, noise_factors=factors)
write_npz(snakemake.output.basis, **basis.to_arrays())
log.info("%d clusters -> %d kept -> %d units after merging", n_clusters, len(kept), len(merged))
