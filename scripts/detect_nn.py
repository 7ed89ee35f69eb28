"""detect_nn[t]: network detection, features and collision triage on one time chunk."""

from shardsort.nn import configure_job

configure_job()

import os

import numpy as np

from shardsort.detect import TemporalBasis, featurize_peaks
from shardsort.io.arrays import ChunkedRecording
from shardsort.jobs import job_logger, read_h5, write_npz
from shardsort.nn.detector import detect_nn
from shardsort.nn.modelinfo import (
    SIDECAR_FILE,
    check_model_fits,
    drop_bad_channels,
    neighbour_table,
)
from shardsort.nn.training import load_model
from shardsort.nn.triage import cut_triage_snippets, triage_spikes

log = job_logger(snakemake)
spec = snakemake.params.recording
chunk = snakemake.params.chunk
cfg = snakemake.params.nn
margin = int(snakemake.params.margin_samples)
rate = spec["sampling_rate_hz"]
positions = np.asarray(spec["positions_um"], dtype=np.float64)
good = read_h5(snakemake.input.noise)["good_mask"].astype(bool)
b = read_h5(snakemake.input.basis)

models = {}
for kind in ("detector", "triage"):
    folder = os.path.dirname(getattr(snakemake.input, kind))
    model, sidecar = load_model(folder, expected_sampling_rate_hz=rate)
    check_model_fits(
        sidecar,
        source=os.path.join(folder, SIDECAR_FILE),
        kind=kind,
        whiten=snakemake.params.whiten,
    )
    models[kind] = (model, sidecar)
detector, detector_sidecar = models["detector"]
triage, triage_sidecar = models["triage"]

rec = ChunkedRecording(snakemake.input.chunks, n_samples=spec["n_samples"])
window = rec.get_traces(chunk["start"] - margin, chunk["stop"] + margin, pad="zero")
peaks = detect_nn(
    window,
    detector,
    core_start=margin,
    core_stop=margin + chunk["stop"] - chunk["start"],
    neighbours=neighbour_table(positions, n_neighbours=detector_sidecar["n_neighbours"]),
    neighbour_mask=b["neighbour_mask"],
    exclude_samples=int(b["attrs"]["exclude_samples"]),
    probability_threshold=cfg["probability_threshold"],
    good_mask=good,
)
peaks, features = featurize_peaks(
    window,
    peaks,
    core_start=margin,
    neighbours=b["neighbours"],
    positions_um=positions,
    pre_samples=int(b["attrs"]["pre_samples"]),
    post_samples=int(b["attrs"]["post_samples"]),
    pca_basis=TemporalBasis(components=b["components"], mean=b["mean"]),
)

# Collision triage: the probability that each spike is alone in its window.
triage_pre = int(triage_sidecar["pre_samples"])
triage_table = drop_bad_channels(
    neighbour_table(positions, n_neighbours=triage_sidecar["n_neighbours"]), good
)
snippets = cut_triage_snippets(
    window,
    peaks["sample_index"] + margin,
    triage_table[peaks["channel_index"]],
    pre_samples=triage_pre,
    post_samples=int(triage_sidecar["architecture"]["snippet_samples"]) - triage_pre,
)
clean_probability = triage_spikes(snippets, triage)
collided = clean_probability < cfg["triage_threshold"]

peaks["sample_index"] += chunk["start"]
write_npz(
    snakemake.output.peaks,
    peaks=peaks,
    features=features,
    clean_probability=clean_probability,
    collided=collided,
)
log.info(
    "chunk %d [%d, %d): %d spikes, %d collided",
    chunk["index"], chunk["start"], chunk["stop"], len(peaks), int(collided.sum()),
)
