"""Threshold detection against the demo's ground truth.

Recall per GT unit of the workflow's threshold detections (``spikes.h5``,
dataset ``peaks``) with :func:`shardsort.groundtruth.detection_scores`, and
the detections that match no GT spike. Units are selected by two SNR
definitions:

* the generator's ``snr``: raw template trough over the band noise
  ``noise_uv``;
* the SNR after the workflow's band-pass filter: the trough of the filtered
  template (zero-phase, config band and order) over the filtered noise level,
  measured as the robust (MAD) standard deviation of 10 s of the filtered
  recording on the unit's peak channel.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from scipy.signal import sosfiltfilt

from benchlib import REPO, Context, Table, demo_recording

SNR_MIN = 5.0
#: Unmatched detections this close to a GT spike are counted as "near" (a
#: duplicate or misaligned detection), farther ones as "far" (noise).
NEAR_MS = 1.5
NOISE_SAMPLE_S = 10.0
MAD_TO_SIGMA = 0.6744897501960817


def filtered_snr(
    templates_uv: np.ndarray, noise_uv: np.ndarray, sos: np.ndarray, pad: int
) -> tuple[np.ndarray, np.ndarray]:
    """Trough of each band-passed template over the noise on its peak channel.

    Returns the SNR and the filtered trough (µV) per unit.
    """
    padded = np.pad(templates_uv.astype(np.float64), ((0, 0), (pad, pad), (0, 0)))
    filtered = sosfiltfilt(sos, padded, axis=1)
    n_units = len(templates_uv)
    flat = filtered.reshape(n_units, -1)
    channel = np.argmin(flat, axis=1) % templates_uv.shape[2]
    trough = -flat.min(axis=1)
    return trough / noise_uv[channel], trough


def _distance_to_nearest(
    sorted_reference: np.ndarray, samples: np.ndarray
) -> np.ndarray:
    """Distance (samples) from each sample to the nearest reference sample."""
    if sorted_reference.size == 0:
        return np.full(samples.shape, np.iinfo(np.int64).max)
    right = np.searchsorted(sorted_reference, samples).clip(
        max=sorted_reference.size - 1
    )
    left = (right - 1).clip(min=0)
    return np.minimum(
        np.abs(samples - sorted_reference[left]),
        np.abs(samples - sorted_reference[right]),
    )


def filtered_noise_uv(recording, sos: np.ndarray) -> np.ndarray:
    """Robust noise level (µV) per channel of 10 s of the band-passed recording."""
    raw = np.memmap(recording.path, dtype="<i2", mode="r").reshape(
        -1, recording.n_channels
    )
    n = min(raw.shape[0], round(NOISE_SAMPLE_S * recording.sampling_rate_hz))
    start = (raw.shape[0] - n) // 2
    window = sosfiltfilt(sos, raw[start : start + n].astype(np.float64), axis=0)
    window -= np.median(window, axis=0)
    return np.median(np.abs(window), axis=0) / MAD_TO_SIGMA * recording.gain_to_uv


def run(ctx: Context, spikes_path: Path | None = None) -> list[Table]:
    from shardsort.groundtruth import detection_scores
    from shardsort.preprocess import design_bandpass, filter_margin_samples

    recording = demo_recording()
    if spikes_path is None or not spikes_path.exists():
        spikes_path = REPO / "results" / "demo" / "spikes.h5"
    ctx.log(f"detection: scoring {spikes_path}")
    with h5py.File(spikes_path, "r") as f:
        detected = f["peaks"]["sample_index"]
    with np.load(recording.ground_truth) as gt:
        gt_samples, gt_units = gt["sample_index"], gt["unit_index"]
        snr, templates = gt["snr"], gt["templates_uv"]
        noise_uv = float(gt["noise_uv"])
    rate = recording.sampling_rate_hz
    delta = round(ctx.config["ground_truth"]["delta_ms"] * rate / 1000)
    scores = detection_scores(gt_samples, gt_units, detected, delta_samples=delta)

    pre = ctx.config["preprocess"]
    sos = design_bandpass(
        sampling_rate_hz=rate,
        freq_min_hz=pre["freq_min_hz"],
        freq_max_hz=pre["freq_max_hz"],
        order=pre["filter_order"],
    )
    noise = filtered_noise_uv(recording, sos)
    snr_filtered, trough = filtered_snr(
        templates, noise, sos, filter_margin_samples(sos)
    )

    units = scores["gt_unit_ids"]
    recall = scores["recall"]
    per_unit = [
        {
            "gt_unit": int(u),
            "snr_generator": float(snr[u]),
            "snr_filtered": float(snr_filtered[u]),
            "filtered_trough_uv": float(trough[u]),
            "n_gt": int(n),
            "recall": float(r),
        }
        for u, n, r in zip(units, scores["n_gt"], recall, strict=True)
    ]
    summary = []
    for name, values in (
        ("generator snr", snr[units]),
        ("filtered snr", snr_filtered[units]),
    ):
        chosen = values >= SNR_MIN
        r = recall[chosen]
        summary.append(
            {
                "definition": name,
                "units_snr>=5": int(chosen.sum()),
                "mean_recall": float(r.mean()) if r.size else float("nan"),
                "min_recall": float(r.min()) if r.size else float("nan"),
                "units_recall>=0.9": int((r >= 0.9).sum()),
                "spikes_recall": float(
                    scores["n_detected"][chosen].sum()
                    / max(1, scores["n_gt"][chosen].sum())
                ),
            }
        )
    nearest = _distance_to_nearest(np.sort(gt_samples), np.asarray(detected))
    near = round(NEAR_MS * rate / 1000)
    n_matched = scores["n_detections"] - scores["n_unmatched_detections"]
    counts = [
        {
            "detections": scores["n_detections"],
            "unmatched_detections": scores["n_unmatched_detections"],
            "unmatched_fraction": scores["n_unmatched_detections"]
            / max(1, scores["n_detections"]),
            "unmatched_within_delta": int((nearest <= delta).sum()) - n_matched,
            f"unmatched_within_{NEAR_MS:g}ms": int(
                ((nearest > delta) & (nearest <= near)).sum()
            ),
            f"unmatched_beyond_{NEAR_MS:g}ms": int((nearest > near).sum()),
            "gt_spikes": len(gt_samples),
            "all_units_spike_recall": float(scores["gt_matched"].mean()),
            "noise_uv_generator": noise_uv,
            "noise_uv_filtered_median": float(np.median(noise)),
            "delta_samples": delta,
        }
    ]
    source = (
        spikes_path.relative_to(REPO)
        if spikes_path.is_relative_to(REPO)
        else spikes_path
    )
    return [
        Table(
            "detection_recall",
            f"Threshold detection recall, units with SNR >= {SNR_MIN:g}",
            summary,
            note=f"Detections: `{source}` (threshold "
            f"{ctx.config['detect']['threshold']} x noise); match window "
            f"{ctx.config['ground_truth']['delta_ms']} ms.",
        ),
        Table(
            "detection_counts",
            "Detections matching no GT spike",
            counts,
            note="Unmatched detections split by the distance to the nearest GT "
            "spike of any unit: within the match window (a second detection "
            f"of an already matched spike), within {NEAR_MS:g} ms (duplicate "
            "or misaligned), beyond (noise).",
        ),
        Table("detection_units", "Recall per GT unit", per_unit),
    ]
