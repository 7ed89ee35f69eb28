"""demo_recording: the bundled synthetic ground-truth recording."""

import numpy as np

from shardsort.io.arrays import atomic_path
from shardsort.jobs import job_logger, timed
from shardsort.synth import SynthParams, ground_truth_arrays, write_recording

log = job_logger(snakemake)
demo = snakemake.params.demo
params = SynthParams(
    n_channels=demo["n_channels"],
    duration_s=demo["duration_s"],
    n_units=demo["n_units"],
    sampling_rate_hz=demo["sampling_rate_hz"],
    noise_uv=demo["noise_uv"],
    seed=demo["seed"],
)
with timed(log, "generating the recording"):
    write_recording(snakemake.output.recording, params)
gt = ground_truth_arrays(params)
# The ground-truth file format the workflow reads (see README).
gt["sample_index"] = gt.pop("spike_sample_index")
gt["unit_index"] = gt.pop("spike_unit_index")
with atomic_path(snakemake.output.geometry) as tmp, open(tmp, "wb") as fh:
    np.save(fh, gt["positions_um"])
with atomic_path(snakemake.output.ground_truth) as tmp, open(tmp, "wb") as fh:
    np.savez(fh, **gt)
log.info(
    "%d channels, %.1f s, %d units (SNR %.1f-%.1f), %d spikes",
    params.n_channels, params.duration_s, params.n_units,
    float(gt["snr"].min()), float(gt["snr"].max()), len(gt["sample_index"]),
)
