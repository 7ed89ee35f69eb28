"""whitening: local ZCA whitening from a noise-only covariance, once per recording."""

import numpy as np

from shardsort.jobs import job_logger, read_h5, reuse_freed_memory, write_h5
from shardsort.preprocess import (
    common_reference,
    local_whitening_matrix,
    noise_covariance,
)
from shardsort.sampling import load_noise_sample
from shardsort.workflow import ms_to_samples

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
pre = snakemake.params.preprocess
positions = np.asarray(spec["positions_um"], dtype=np.float64)
noise = read_h5(snakemake.input.noise)
good = noise["good_mask"].astype(bool)
n_channels = spec["n_channels"]

if pre["whiten"]:
    sample = load_noise_sample(
        snakemake.input.filtered,
        n_channels=n_channels,
        n_samples=spec["n_samples"],
        segments=snakemake.params.segments,
    )
    referenced = common_reference(
        sample,
        mode=pre["reference"],
        positions_um=positions,
        good_mask=good,
        radius_um=pre["reference_radius_um"],
        inner_radius_um=pre["reference_inner_radius_um"],
        groups=spec["shank_ids"] or None,  # one global median per shank
    )
    scaled = referenced / noise["scales_uv"][None, :]
    scaled[:, ~good] = 0.0
    cov, n_used = noise_covariance(
        scaled,
        threshold=float(pre["noise_mask_threshold"]),
        exclusion_samples=ms_to_samples(pre["noise_mask_ms"], spec["sampling_rate_hz"]),
    )
    log.info("noise covariance from %d of %d samples", n_used, scaled.shape[0])
    whitening = local_whitening_matrix(
        cov, positions, radius_um=pre["whitening_radius_um"], good_mask=good
    )
else:
    whitening = np.eye(n_channels, dtype=np.float32)
    log.info("whitening disabled: identity")
write_h5(snakemake.output.whitening, {"whitening": whitening.astype(np.float32)})
