"""feature_basis: temporal PCA fitted once on spikes of a deterministic chunk sample."""

import numpy as np

from shardsort.detect import (
    detect_peaks,
    extract_snippets,
    fallback_temporal_basis,
    fit_temporal_pca,
    nearest_neighbours,
    neighbour_mask,
)
from shardsort.io.arrays import ChunkedRecording
from shardsort.jobs import job_logger, read_h5, reuse_freed_memory, write_h5
from shardsort.workflow import ms_to_samples

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
det = snakemake.params.detect
rate = spec["sampling_rate_hz"]
positions = np.asarray(spec["positions_um"], dtype=np.float64)
good = read_h5(snakemake.input.noise)["good_mask"].astype(bool)
pre, post = ms_to_samples(det["ms_before"], rate), ms_to_samples(det["ms_after"], rate)
exclude = ms_to_samples(det["exclude_ms"], rate)
margin = int(snakemake.params.margin_samples)
mask = neighbour_mask(positions, radius_um=det["radius_um"])
neighbours = nearest_neighbours(positions, n_neighbours=min(det["n_neighbours"], len(positions)))

rec = ChunkedRecording(snakemake.input.chunks, n_samples=spec["n_samples"])
waveforms = []
for start, stop in snakemake.params.segments:  # absolute, independent of chunking
    window = rec.get_traces(start - margin, stop + margin, pad="zero")
    peaks = detect_peaks(
        window,
        core_start=margin,
        core_stop=margin + stop - start,
        threshold=det["threshold"],
        neighbour_mask=mask,
        exclude_samples=exclude,
        good_mask=good,
    )
    snippets = extract_snippets(
        window,
        peaks["sample_index"] + margin,
        peaks["channel_index"][:, None],
        pre_samples=pre,
        post_samples=post,
    )
    waveforms.append(snippets[:, :, 0])
waveforms = np.concatenate(waveforms, axis=0) if waveforms else np.zeros((0, pre + post))
n_max = det["pca_max_spikes"]
if len(waveforms) > n_max:
    keep = np.linspace(0, len(waveforms) - 1, n_max).round().astype(int)
    waveforms = waveforms[keep]
fallback = len(waveforms) < det["n_pcs"] + 1
if fallback:
    # A silent (or very short) recording is a result, not an error: a fixed
    # basis lets detection run and the sort end (most likely empty).
    log.warning(
        "only %d spikes crossed detect.threshold=%s in the sampled chunks of recording %r "
        "(at least %d fit the temporal PCA): fixed cosine basis instead",
        len(waveforms), det["threshold"], spec["name"], det["n_pcs"] + 1,
    )
    basis = fallback_temporal_basis(pre + post, n_components=det["n_pcs"])
else:
    log.info("fitting temporal PCA on %d waveforms", len(waveforms))
    basis = fit_temporal_pca(waveforms, n_components=det["n_pcs"], seed=snakemake.params.seed)
write_h5(
    snakemake.output.basis,
    {
        "components": basis.components,
        "mean": basis.mean,
        "neighbours": neighbours.astype(np.int32),
        "neighbour_mask": mask,
    },
    {"pre_samples": pre, "post_samples": post, "exclude_samples": exclude,
     "n_waveforms": len(waveforms), "fallback_basis": fallback},
)
