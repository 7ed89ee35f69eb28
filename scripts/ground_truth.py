"""ground_truth: per-unit accuracy of the sort against a ground-truth spike train."""

import h5py
import numpy as np

from shardsort.groundtruth import compact_samples, compare_sorting, summarize
from shardsort.io.arrays import atomic_path
from shardsort.jobs import job_logger

log = job_logger(snakemake)
cfg = snakemake.params.ground_truth
# Only the two columns the comparison uses, samples as int32 where they fit
# (the comparison's own form: no second copy of either train).
with h5py.File(snakemake.input.sorting, "r") as f:
    rate = float(f.attrs["sampling_rate_hz"])
    sorted_samples = compact_samples(f["spikes"].fields("sample_index")[()])
    sorted_units = f["spikes"].fields("unit_index")[()]
with np.load(snakemake.input.ground_truth) as gt:
    gt_samples, gt_units = compact_samples(gt["sample_index"]), gt["unit_index"]
    snr = gt["snr"] if "snr" in gt.files else None
comparison = compare_sorting(
    gt_samples, gt_units, sorted_samples, sorted_units,
    sampling_rate_hz=rate, delta_ms=cfg["delta_ms"],
)
del gt_samples, gt_units, sorted_samples, sorted_units
summary = summarize(comparison, well_detected_accuracy=cfg["well_detected_accuracy"])
rows = comparison["gt"]
with atomic_path(snakemake.output.scores) as tmp, open(tmp, "w") as fh:
    fh.write("gt_unit\tsnr\tmatched_unit\tn_gt\tn_sorted\ttp\tfn\tfp\taccuracy\tprecision\trecall\n")
    for r in rows:
        s = float(snr[int(r["gt_unit"])]) if snr is not None else float("nan")
        fh.write(
            f"{r['gt_unit']}\t{s:.2f}\t{r['matched_unit']}\t{r['n_gt']}\t{r['n_sorted']}\t"
            f"{r['tp']}\t{r['fn']}\t{r['fp']}\t{r['accuracy']:.4f}\t{r['precision']:.4f}\t"
            f"{r['recall']:.4f}\n"
        )
for key, value in summary.items():
    log.info("%s: %s", key, value)
