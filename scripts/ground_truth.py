"""ground_truth: per-unit accuracy of the sort against a ground-truth spike train."""

import numpy as np

from shardsort.groundtruth import compare_sorting, summarize
from shardsort.io.arrays import atomic_path
from shardsort.jobs import job_logger, read_h5

log = job_logger(snakemake)
cfg = snakemake.params.ground_truth
sorting = read_h5(snakemake.input.sorting, keys=["spikes"])
spikes = sorting["spikes"]
rate = float(sorting["attrs"]["sampling_rate_hz"])
with np.load(snakemake.input.ground_truth) as gt:
    gt_samples, gt_units = gt["sample_index"], gt["unit_index"]
    snr = gt["snr"] if "snr" in gt.files else None
comparison = compare_sorting(
    gt_samples, gt_units, spikes["sample_index"], spikes["unit_index"],
    sampling_rate_hz=rate, delta_ms=cfg["delta_ms"],
)
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
