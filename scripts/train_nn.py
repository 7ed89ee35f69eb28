"""train_detector / train_triage: a network trained on the recording itself.

Training examples are the first (threshold) pass's templates, scaled, shifted,
misaligned and collided, added to noise drawn with the recording's own spatial
and temporal covariance (measured on spike-free windows of the noise segments).
"""

from shardsort.nn import JOB_THREADS, configure_job

configure_job()

import os

import numpy as np

from shardsort.io.arrays import ChunkedRecording
from shardsort.jobs import job_logger, read_h5, timed
from shardsort.nn import augment, training
from shardsort.nn.modelinfo import (
    drop_bad_channels,
    neighbour_offsets_um,
    neighbour_table,
)
from shardsort.templates import sample_noise_windows
from shardsort.workflow import ms_to_samples, nn_filter_samples

log = job_logger(snakemake)
kind = snakemake.params.kind
spec = snakemake.params.recording
cfg = snakemake.params.nn
seed = snakemake.params.seed
rate = spec["sampling_rate_hz"]
positions = np.asarray(spec["positions_um"], dtype=np.float64)
good = read_h5(snakemake.input.noise)["good_mask"].astype(bool)
tpl = read_h5(snakemake.input.templates)
templates, pre = tpl["templates"], int(tpl["attrs"]["pre_samples"])
# Only clear units: a weak first-pass template may be a cluster of noise
# crossings, and a network trained to find it fires on noise.
clear = tpl["matched_snr"] >= cfg["template_min_snr"]
log.info(
    "%d of %d first-pass templates have matched SNR >= %g: trained on those",
    int(clear.sum()), len(templates), cfg["template_min_snr"],
)
templates = templates[clear]
if len(templates) == 0:
    raise ValueError(
        f"the first (threshold) pass found no units with matched SNR >= "
        f"nn.template_min_snr ({cfg['template_min_snr']}) in recording {spec['name']!r}, so "
        f"there is nothing to train the {kind} network on; use detect.nn_model: "
        "default (or a model folder) or detect.method: threshold"
    )

# Noise model: spatial covariance and temporal autocorrelation of windows in
# which no channel crosses the detection threshold.
rec = ChunkedRecording(snakemake.input.noise_chunks, n_samples=spec["n_samples"])
window_samples = max(templates.shape[1], 4 * (cfg["noise_lags"] + 1))
windows = np.concatenate(
    [
        sample_noise_windows(
            rec.get_traces(start, stop),
            n_windows=cfg["noise_windows"],
            window_samples=window_samples,
            threshold=snakemake.params.threshold,
            seed=seed + i,
        )
        for i, (start, stop) in enumerate(snakemake.params.segments)
    ]
)
if len(windows) == 0:
    raise ValueError(
        f"no spike-free noise window of {window_samples} samples in the noise segments "
        f"of recording {spec['name']!r} (detect.threshold={snakemake.params.threshold})"
    )
noise_model = augment.estimate_noise_model(windows, n_lags=cfg["noise_lags"])
log.info("noise model from %d windows of %d samples", len(windows), window_samples)

table = neighbour_table(positions, n_neighbours=cfg["n_neighbours"])
usable = drop_bad_channels(table, good)
amplitude_range = tuple(cfg["amplitude_range"])
training_args = {
    "seed": seed,
    "epochs": cfg["epochs"],
    "batch_size": cfg["batch_size"],
    "validation_fraction": cfg["validation_fraction"],
    "n_threads": JOB_THREADS,
}
if kind == "detector":
    example_samples = ms_to_samples(cfg["detector_window_ms"], rate)
    examples, targets = augment.make_detector_training_set(
        templates,
        noise_model,
        usable,
        pre_samples=pre,
        n_windows=cfg["detector_windows"],
        window_samples=example_samples,
        seed=seed + 1,
        amplitude_range=amplitude_range,
    )
    with timed(log, f"training the detector on {len(examples)} windows"):
        model, metrics = training.train_detector(
            examples,
            targets,
            temporal_samples=nn_filter_samples({"nn": cfg}, rate),
            positive_weight=cfg["positive_weight"],
            **training_args,
        )
    extra = {"window_samples": example_samples}
else:
    examples, targets = augment.make_triage_training_set(
        templates,
        noise_model,
        usable,
        pre_samples=pre,
        n_snippets=cfg["triage_snippets"],
        seed=seed + 2,
        amplitude_range=amplitude_range,
    )
    with timed(log, f"training the triage network on {len(examples)} snippets"):
        model, metrics = training.train_triage(examples, targets, **training_args)
    extra = {"pre_samples": pre}
log.info("%s metrics: %s", kind, metrics)
training.save_model(
    os.path.dirname(snakemake.output.model),
    model,
    {
        "sampling_rate_hz": rate,
        "neighbour_offsets_um": neighbour_offsets_um(positions, table),
        "seed": seed,
        "preprocessing": {
            "whiten": bool(snakemake.params.preprocess["whiten"]),
            "reference": snakemake.params.preprocess["reference"],
        },
        "training_data": (
            f"recording {spec['name']!r}: {len(templates)} first-pass templates, "
            f"amplitudes x{amplitude_range[0]:g}-{amplitude_range[1]:g}, noise model "
            f"(AR order {cfg['noise_lags']}) from {len(windows)} spike-free windows"
        ),
        "metrics": metrics,
        **extra,
    },
)
