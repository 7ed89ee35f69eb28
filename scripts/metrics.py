"""metrics: quality metrics of every unit (Allen ecephys definitions)."""

import h5py
import numpy as np

from shardsort.io.arrays import atomic_path
from shardsort.jobs import job_logger, read_h5, reuse_freed_memory
from shardsort.metrics import compute_quality_metrics

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
# The per-spike features stay on disk: the PC metrics read the rows of their
# subsample block by block.
s = read_h5(snakemake.input.sorting, keys=["spikes", "templates", "pc_feature_ind", "units"])
attrs = s["attrs"]
with h5py.File(snakemake.input.sorting, "r") as f:
    depths_um = f["spike_positions_um"][:, 1]
    metrics = compute_quality_metrics(
        s["spikes"],
        n_samples=int(attrs["n_samples"]),
        sampling_rate_hz=float(attrs["sampling_rate_hz"]),
        templates=s["templates"],
        pc_features=f["pc_features"],
        pc_feature_ind=s["pc_feature_ind"],
        spike_depths_um=depths_um,
        seed=snakemake.params.seed,
    )
names = list(metrics)
units = s["units"]
with atomic_path(snakemake.output.metrics) as tmp, open(tmp, "w") as fh:
    fh.write("\t".join(["unit_index", "n_spikes", "peak_channel", "x_um", "y_um"] + names) + "\n")
    for i in range(len(units)):
        cells = [str(int(units["unit_index"][i])), str(int(units["n_spikes"][i])),
                 str(int(units["peak_channel"][i])), f"{units['x_um'][i]:.1f}",
                 f"{units['y_um'][i]:.1f}"]
        cells += [f"{float(metrics[n][i]):.6g}" for n in names]
        fh.write("\t".join(cells) + "\n")
log.info("%d units, %d metrics", len(units), len(names))
if len(units):
    log.info("median firing rate %.2f Hz", float(np.nanmedian(metrics["firing_rate"])))
