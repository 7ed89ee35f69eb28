"""Network detection (``detect.method: nn``) against threshold detection (issue 8).

Each recording is sorted twice in one working folder with ``snakemake --cores
2``: first with the default ``detect.method: threshold``, then with
``detect.method: nn`` (detector and triage networks trained on the recording,
``detect.nn_model: trained``, default ``nn`` settings), which reuses the first
run's preprocessing and feature basis. Reported:

* detection against ground truth: the threshold run's ``spikes.h5`` against
  the nn run's ``spikes.h5`` (network detections). A detection is true when
  it matches a GT spike one-to-one within ``ground_truth.delta_ms``
  (:func:`shardsort.groundtruth.detection_scores`); precision = true /
  detections (a spike detected twice, e.g. on two distant channels, counts
  once as true); recall over all GT spikes, over weak units (SNR 2.5-5,
  where the network should earn its place) and over units of SNR >= 5;
  ``extra_near_gt``: detections within the match window of a GT spike
  beyond one per spike (duplicates, or collisions counted once);
* sort accuracy of both sortings (:func:`bench_sort.score_sorting`), also
  over the weak units;
* what the networks cost: job time of the first pass, the training and the
  network detection, and the training metrics from the model sidecars.

Recordings: the demo (64 channels, 90 s, 30 units, noise 10 uV; the
``make demo`` file when present, else the same generated here) and a noisier
variant: the same units (same seed, same templates in uV) under 1.5 x the
noise, so every unit's SNR is divided by 1.5. ``--quick``: a 32-channel 20 s
recording of 10 units and its noisier variant.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import yaml
from bench_sort import SNR_SORTABLE, score_sorting
from benchlib import (
    REPO,
    Context,
    JobStats,
    Recording,
    SnakemakeError,
    Table,
    demo_recording,
    generate_recording,
    remove_bulk,
    run_snakemake,
    write_table,
)

CORES = 2
#: Noise of the noisier variant, relative to the original recording.
NOISE_FACTOR = 1.5
#: SNR band of the weak units (generator definition), [low, high).
WEAK_SNR = (2.5, 5.0)
#: Rules of the network workflow that the threshold workflow does not run.
NN_RULES = (
    "detect_pass1",
    "merge_spikes_pass1",
    "cluster_pass1",
    "merge_clusters_pass1",
    "template_sums_pass1",
    "templates_pass1",
    "train_detector",
    "train_triage",
    "detect_nn",
)


def _recordings(ctx: Context) -> list[Recording]:
    """The base recording and its noisier variant (same units, more noise)."""
    if ctx.quick:
        base = {"n_channels": 32, "duration_s": 20.0, "n_units": 10, "seed": 7}
        name = "gt_32ch_20s"
        noise_uv = 10.0
    else:
        demo = ctx.config["demo"]
        base = {
            "n_channels": demo["n_channels"],
            "duration_s": demo["duration_s"],
            "n_units": demo["n_units"],
            "seed": demo["seed"],
        }
        name = "demo"
        noise_uv = demo["noise_uv"]
    if name == "demo" and (REPO / "data" / "demo" / "demo.bin").exists():
        made = demo_recording()
    else:
        made = generate_recording(ctx.data, name, **base, synth={"noise_uv": noise_uv})
    # Same seed and the SNR range divided by the factor: the same amplitudes
    # in uV, the noise NOISE_FACTOR times larger.
    noisy = generate_recording(
        ctx.data,
        f"{name}_noisy",
        **base,
        synth={
            "noise_uv": noise_uv * NOISE_FACTOR,
            "snr_min": 3.0 / NOISE_FACTOR,
            "snr_max": 25.0 / NOISE_FACTOR,
        },
    )
    return [made, noisy]


def _detection_row(
    ctx: Context, recording: Recording, detector: str, spikes_path: Path
) -> dict:
    from shardsort.groundtruth import detection_scores

    with h5py.File(spikes_path, "r") as f:
        detected = f["peaks"]["sample_index"]
        collided = f["collided"][()] if "collided" in f else None
    with np.load(recording.ground_truth) as gt:
        gt_samples, gt_units, snr = gt["sample_index"], gt["unit_index"], gt["snr"]
    delta = round(
        ctx.config["ground_truth"]["delta_ms"] * recording.sampling_rate_hz / 1000
    )
    scores = detection_scores(gt_samples, gt_units, detected, delta_samples=delta)
    unit_snr = snr[scores["gt_unit_ids"]]
    strong = unit_snr >= SNR_SORTABLE
    weak = (unit_snr >= WEAK_SNR[0]) & (unit_snr < WEAK_SNR[1])
    n_true = scores["n_detections"] - scores["n_unmatched_detections"]
    recall = scores["recall"][strong]
    # Detections within the match window of some GT spike, beyond the true ones.
    gt_sorted = np.sort(gt_samples)
    found = np.sort(np.asarray(detected, np.int64))
    near = np.searchsorted(gt_sorted, found + delta, side="right") > np.searchsorted(
        gt_sorted, found - delta, side="left"
    )
    return {
        "recording": recording.name,
        "detector": detector,
        "detections": scores["n_detections"],
        "true": n_true,
        "precision": n_true / max(1, scores["n_detections"]),
        "recall_all": float(scores["gt_matched"].mean()),
        "recall_weak": float(
            scores["n_detected"][weak].sum() / max(1, scores["n_gt"][weak].sum())
        ),
        "units_weak": int(weak.sum()),
        "recall_snr5": float(
            scores["n_detected"][strong].sum() / max(1, scores["n_gt"][strong].sum())
        ),
        "units_snr5": int(strong.sum()),
        "units_recall>=0.9_snr5": int((recall >= 0.9).sum()),
        "extra_near_gt": int(near.sum()) - n_true,
        "collided": "" if collided is None else int(collided.sum()),
    }


def _sort_row(
    ctx: Context, recording: Recording, detector: str, sorting: Path
) -> dict:
    from shardsort.groundtruth import compare_sorting

    acc = score_sorting(recording, sorting, ctx.config)
    scoring = ctx.config["ground_truth"]
    with h5py.File(sorting, "r") as f:
        spikes = f["spikes"][()]
    with np.load(recording.ground_truth) as gt:
        table = compare_sorting(
            gt["sample_index"],
            gt["unit_index"],
            spikes["sample_index"],
            spikes["unit_index"],
            sampling_rate_hz=recording.sampling_rate_hz,
            delta_ms=scoring["delta_ms"],
        )["gt"]
        snr = gt["snr"][table["gt_unit"]]
    weak = (snr >= WEAK_SNR[0]) & (snr < WEAK_SNR[1])
    well = table["accuracy"] >= scoring["well_detected_accuracy"]
    return {
        "recording": recording.name,
        "detector": detector,
        "gt_units": acc["n_gt_units"],
        "sorted_units": acc["n_sorted_units"],
        "well_detected": acc["n_well_detected"],
        "mean_accuracy": acc["mean_accuracy"],
        "well_of_snr5": f"{acc['n_well_detected_snr5']}/{acc['n_gt_snr5']}",
        "mean_accuracy_snr5": acc["mean_accuracy_snr5"],
        "well_of_weak": f"{int((well & weak).sum())}/{int(weak.sum())}",
        "mean_accuracy_weak": float(table["accuracy"][weak].mean())
        if weak.any()
        else np.nan,
        "false_positive_units": acc["n_false_positive_units"],
    }


def compare(ctx: Context, recording: Recording) -> dict:
    """Sort ``recording`` with both detectors; detection, sort and cost rows."""
    workdir = ctx.work / "nn" / recording.name
    previous = workdir / "run.json"
    if ctx.reuse and previous.exists():
        ctx.log(f"nn {recording.name}: reusing {previous}")
        return json.loads(previous.read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    table = write_table(workdir / "recordings.tsv", [recording])
    results = workdir / "results" / recording.name
    kept = workdir / "threshold"

    ctx.log(f"nn {recording.name}: threshold sort")
    threshold_run = run_snakemake(workdir, table, cores=CORES, log_name="threshold")
    kept.mkdir()
    for name in ("spikes.h5", "sorting.h5"):
        shutil.copy2(results / name, kept / name)
    threshold_rules = {r["rule"]: r for r in JobStats.read(results / "benchmarks").by_rule()}

    ctx.log(f"nn {recording.name}: network sort (first pass, training, detection)")
    nn_config = workdir / "nn.yaml"
    nn_config.write_text(yaml.safe_dump({"detect": {"method": "nn"}}))
    nn_run = run_snakemake(
        workdir, table, cores=CORES, configfiles=(nn_config,), log_name="nn"
    )
    nn_rules = {r["rule"]: r for r in JobStats.read(results / "benchmarks").by_rule()}

    out = {
        "detection": [
            _detection_row(ctx, recording, "threshold", kept / "spikes.h5"),
            _detection_row(ctx, recording, "nn", results / "spikes.h5"),
        ],
        "sort": [
            _sort_row(ctx, recording, "threshold", kept / "sorting.h5"),
            _sort_row(ctx, recording, "nn", results / "sorting.h5"),
        ],
        "cost": [
            {
                "recording": recording.name,
                "threshold_wall_s": threshold_run.wall_s,
                "nn_wall_s": nn_run.wall_s,
                "detect_s": threshold_rules.get("detect", {}).get("sum_s", np.nan),
                **{
                    f"{rule}_s": nn_rules.get(rule, {}).get("sum_s", np.nan)
                    for rule in NN_RULES
                },
                "load_avg": (nn_run.load_before + nn_run.load_after) / 2,
            }
        ],
        "training": [],
    }
    for kind in ("detector", "triage"):
        sidecar = yaml.safe_load((results / "nn" / kind / "model.yaml").read_text())
        metrics = sidecar["metrics"]
        out["training"].append(
            {
                "recording": recording.name,
                "network": kind,
                "n_train": metrics["n_train"],
                "n_validation": metrics["n_validation"],
                "validation_precision": metrics.get("validation_precision", np.nan),
                "validation_recall": metrics.get("validation_recall", np.nan),
                "validation_accuracy": metrics.get("validation_accuracy", np.nan),
                "train_s": nn_rules.get(f"train_{kind}", {}).get("sum_s", np.nan),
            }
        )
    remove_bulk(results)
    previous.write_text(json.dumps(out, indent=1, default=float))
    return out


def run(ctx: Context) -> list[Table]:
    runs = []
    recordings = _recordings(ctx)
    for recording in recordings:
        try:
            runs.append(compare(ctx, recording))
        except SnakemakeError as error:
            ctx.errors.append(f"nn/{recording.name}: {error}")
            ctx.log(f"FAILED {recording.name}: {error}")
    if not ctx.keep_data:
        for recording in recordings[1:]:
            shutil.rmtree(ctx.data / recording.name, ignore_errors=True)
    tables = [
        Table(
            "nn_detection",
            "Detection against ground truth: threshold versus network",
            [row for r in runs for row in r["detection"]],
            note="Threshold: `spikes.h5` of the threshold sort. nn: `spikes.h5` of "
            "the nn sort (networks trained on the recording from a first threshold "
            "pass). precision = detections matching a GT spike one-to-one within "
            f"{ctx.config['ground_truth']['delta_ms']} ms / detections; recall_weak "
            f"over the spikes of GT units of SNR {WEAK_SNR[0]:g}-{WEAK_SNR[1]:g}, "
            f"recall_snr5 over those of SNR >= {SNR_SORTABLE:g} (generator "
            "definition: raw trough / band noise); extra_near_gt: detections "
            "within the match window of a GT spike beyond one per spike "
            "(duplicates). collided: spikes the triage "
            f"network left out of clustering. Noisy variants: the same units under "
            f"{NOISE_FACTOR:g} x the noise.",
        ),
        Table(
            "nn_sort",
            "Sort accuracy with each detector",
            [row for r in runs for row in r["sort"]],
            note="Well detected: accuracy >= "
            f"{ctx.config['ground_truth']['well_detected_accuracy']} against ground "
            f"truth; weak: GT units of SNR {WEAK_SNR[0]:g}-{WEAK_SNR[1]:g}.",
        ),
        Table(
            "nn_cost",
            f"Time of the network stages (job seconds, `--cores {CORES}`)",
            [row for r in runs for row in r["cost"]],
            note="nn_wall_s: the nn sort after the threshold sort (preprocessing "
            "and feature basis reused). detect_s: threshold detection jobs of the "
            "threshold sort; *_pass1_s: the first pass of the nn sort.",
        ),
        Table(
            "nn_training",
            "Training metrics (held-out examples, from the model sidecars)",
            [row for r in runs for row in r["training"]],
            note="Detector: per sample (spike = trough +-1 sample on the spike's "
            "main channel); triage: per snippet, 'clean' as the positive class.",
        ),
    ]
    errors = [{"failure": e} for e in ctx.errors if e.startswith("nn/")]
    if errors:
        tables.append(Table("nn_errors", "Failed sorts", errors))
    return tables
