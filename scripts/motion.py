"""motion: displacement per time bin (and depth window) from all chunks' histograms.

Multi-shank probes: one estimate per shank from its own histogram; the
windows of all shanks side by side in ``displacement_um`` (shank after shank),
``window_shank`` naming each window's shank.
"""

import numpy as np

from shardsort import report
from shardsort.io.arrays import atomic_path
from shardsort.jobs import job_logger, read_npz, write_h5
from shardsort.motion import WEIGHT_SCALE, estimate_motion, estimate_motion_per_shank

log = job_logger(snakemake)
spec = snakemake.params.recording
cfg = snakemake.params.motion
rate = spec["sampling_rate_hz"]
positions = np.asarray(spec["positions_um"], dtype=np.float64)
shank_ids = np.asarray(spec["shank_ids"], dtype=np.int64)
shanks = np.unique(shank_ids)
per_shank = len(shanks) > 1

parts = [read_npz(p) for p in snakemake.input.histograms]
edges = parts[0]["depth_edges_um"]
bin_samples = int(parts[0]["bin_samples"])
for part, path in zip(parts, snakemake.input.histograms):
    same_edges = np.array_equal(part["depth_edges_um"], edges)
    if int(part["bin_samples"]) != bin_samples or not same_edges:
        raise ValueError(
            f"{path}: time or depth bins differ from {snakemake.input.histograms[0]}"
        )
    if per_shank and not np.array_equal(part.get("shanks", ()), shanks):
        raise ValueError(f"{path}: not one histogram per shank {shanks.tolist()}")
n_bins = -(-spec["n_samples"] // bin_samples)
counts = np.zeros(((len(shanks),) if per_shank else ()) + (n_bins, len(edges) - 1),
                  dtype=np.int64)
for part in parts:
    first = int(part["first_bin"])
    n = part["histogram"].shape[-2]
    counts[..., first : first + n, :] += part["histogram"]
histograms = counts / WEIGHT_SCALE
n_peaks = int(sum(int(p["n_peaks"]) for p in parts))
bin_s = bin_samples / rate
horizon = cfg["time_horizon_s"]
settings = dict(
    depth_um=0.5 * (edges[1:] + edges[:-1]),
    bin_um=cfg["depth_bin_um"],
    max_displacement_um=cfg["max_displacement_um"],
    rigid=cfg["rigid"],
    window_step_um=cfg["window_step_um"],
    window_sigma_um=cfg["window_sigma_um"],
    min_correlation=cfg["min_correlation"],
    time_horizon_bins=int(np.ceil(horizon / bin_s - 1e-9)) if horizon > 0 else 0,
    robust_iterations=cfg["robust_iterations"],
    smoothing_bins=cfg["smoothing_s"] / bin_s,
    edge_um=cfg["edge_um"],
)
if per_shank:
    displacement, centres, window_shank = estimate_motion_per_shank(
        histograms, shanks=shanks, channel_shank_ids=shank_ids,
        channel_depths_um=positions[:, 1], **settings,
    )
    histogram = histograms.sum(axis=0)
else:
    displacement, centres = estimate_motion(
        histograms, channel_depths_um=positions[:, 1], **settings
    )
    histogram = histograms
# A recording that does not drift is left as it is: resampling would only
# smooth it. The decision is the motion job's, written into motion.h5 for the
# correct jobs, the log and the report (multi-shank: the largest range of any
# shank decides for the probe).
span = np.ptp(displacement, axis=0) if n_bins else np.zeros(len(centres))
largest = float(span.max()) if span.size else 0.0
apply = largest >= cfg["min_displacement_um"]
decision = (
    f"drift correction {'applied' if apply else 'skipped'}: estimated displacement range "
    f"{largest:.1f} um {'>=' if apply else '<'} motion.min_displacement_um "
    f"({cfg['min_displacement_um']:g} um)"
)
time_s = (np.arange(n_bins) * bin_samples + 0.5 * (bin_samples - 1)) / rate
datasets = {
    "displacement_um": displacement,
    "window_centres_um": centres,
    "time_s": time_s,
    "histogram": histogram,
    "depth_edges_um": edges,
}
attrs = {"bin_samples": bin_samples, "sampling_rate_hz": rate, "rigid": bool(cfg["rigid"]),
         "n_peaks": n_peaks, "apply": bool(apply), "decision": decision}
if per_shank:
    datasets["window_shank"] = window_shank
    datasets["shank_histograms"] = histograms
    datasets["shanks"] = shanks
    attrs["n_shanks"] = len(shanks)
write_h5(snakemake.output.motion, datasets, attrs)
if per_shank:
    names = [f"displacement_um_shank{s}_at_{c:.1f}um" for s, c in zip(window_shank, centres)]
    labels = [f"shank {s}" + ("" if cfg["rigid"] else f" at {c:.0f} µm")
              for s, c in zip(window_shank, centres)]
else:
    names = [f"displacement_um_at_{c:.1f}um" for c in centres]
    labels = None
with atomic_path(snakemake.output.table) as tmp, open(tmp, "w") as fh:
    fh.write("\t".join(["time_s"] + names) + "\n")
    for t, row in zip(time_s, displacement):
        fh.write("\t".join([f"{t:.4f}"] + [f"{v:.3f}" for v in row]) + "\n")
figure = report.motion_figure(histogram, edges, time_s, displacement, centres, bin_s=bin_s,
                              labels=labels)
with atomic_path(snakemake.output.figure) as tmp:
    report.save_figure(figure, tmp)
pairs = settings["time_horizon_bins"]
log.info("%d peaks in %d time bins of %.3f s; pairs of time bins %s; %d depth window(s); "
         "displacement range %s um", n_peaks, n_bins, bin_s,
         f"at most {pairs} bins apart" if 0 < pairs < n_bins - 1 else "all",
         len(centres), np.round(span, 1).tolist())
if per_shank:
    for s in shanks:
        mine = window_shank == s
        log.info("shank %d: %d window(s), displacement range %s um, final %s um", s,
                 int(mine.sum()), np.round(span[mine], 1).tolist(),
                 np.round(displacement[-1, mine], 1).tolist() if n_bins else [])
log.info(decision)
