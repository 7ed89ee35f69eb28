"""noise_stats: bad channels and per-channel noise scale, once per recording."""

import numpy as np

from shardsort.io.arrays import atomic_path
from shardsort.jobs import job_logger, reuse_freed_memory, write_h5
from shardsort.preprocess import (
    BAD_CHANNEL_LABELS,
    common_reference,
    detect_bad_channels,
    robust_noise_scale,
)
from shardsort.sampling import load_noise_sample

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
pre = snakemake.params.preprocess
positions = np.asarray(spec["positions_um"], dtype=np.float64)

sample = load_noise_sample(
    snakemake.input.filtered,
    n_channels=spec["n_channels"],
    n_samples=spec["n_samples"],
    segments=snakemake.params.segments,
)
log.info("noise sample: %d samples x %d channels", *sample.shape)
labels, raw_scales = detect_bad_channels(
    sample,
    positions,
    dead_scale_max=pre["dead_scale_max_uv"],
    noisy_factor=pre["noisy_factor"],
    neighbour_radius_um=pre["bad_channel_radius_um"],
)
good = labels == 0
referenced = common_reference(
    sample,
    mode=pre["reference"],
    positions_um=positions,
    good_mask=good,
    radius_um=pre["reference_radius_um"],
    inner_radius_um=pre["reference_inner_radius_um"],
    groups=spec["shank_ids"] or None,  # one global median per shank
)
scales = robust_noise_scale(referenced)
scales = np.where(good & (scales > 0), scales, 1.0).astype(np.float32)
for ch in np.flatnonzero(~good):
    log.warning(
        "channel %d at (%.1f, %.1f) um is %s (noise %.3g uV): excluded from detection",
        ch, positions[ch, 0], positions[ch, 1], BAD_CHANNEL_LABELS[int(labels[ch])],
        raw_scales[ch],
    )
log.info("%d good channels, %d bad; median noise %.3g uV",
         good.sum(), (~good).sum(), float(np.median(scales[good])) if good.any() else 0.0)
write_h5(
    snakemake.output.noise,
    {
        "channel_labels": labels.astype(np.int8),
        "good_mask": good,
        "scales_uv": scales,
        "raw_scales_uv": raw_scales.astype(np.float32),
    },
    {"n_sample_samples": sample.shape[0]},
)
with atomic_path(snakemake.output.report) as tmp, open(tmp, "w") as fh:
    fh.write("channel\tx_um\ty_um\tlabel\tnoise_uv\n")
    for ch in range(len(labels)):
        fh.write(
            f"{ch}\t{positions[ch, 0]:.1f}\t{positions[ch, 1]:.1f}\t"
            f"{BAD_CHANNEL_LABELS[int(labels[ch])]}\t{raw_scales[ch]:.4g}\n"
        )
