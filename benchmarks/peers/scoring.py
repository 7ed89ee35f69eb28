"""Score sortings against ground truth; write the table (CSV, Markdown) and plot.

Scores come from SpikeInterface's ``compare_sorter_to_ground_truth`` (spikes
matched within ``delta_ms``; a ground-truth unit is matched to at most one
sorted unit by the Hungarian method). Per ground-truth unit: accuracy
``tp / (tp + fn + fp)``, precision, recall. Per sorting: well-detected units
(accuracy >= ``well_detected_accuracy``), false-positive units (sorted units
matching no ground-truth unit), redundant units (extra matches of an already
matched ground-truth unit) and over-merged units (matching several).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: Agreement above which a sorted unit counts as a (redundant / over-merged) match.
MATCH_SCORE = 0.2


@dataclass(frozen=True)
class Score:
    """Accuracy summary of one sorting."""

    n_gt_units: int
    n_sorted_units: int
    well_detected: int
    mean_accuracy: float
    mean_precision: float
    mean_recall: float
    false_positive_units: int
    redundant_units: int
    overmerged_units: int


@dataclass(frozen=True)
class Row:
    """One line of the result table: a sorter on a recording."""

    recording: str
    sorter: str
    version: str
    status: str  # ok | failed | timeout | not installed | not run
    note: str = ""
    wall_s: float = math.nan
    cpu_s: float = math.nan
    peak_rss_mb: float = math.nan
    max_process_rss_mb: float = math.nan
    n_gt_units: int | None = None
    n_sorted_units: int | None = None
    well_detected: int | None = None
    mean_accuracy: float = math.nan
    mean_precision: float = math.nan
    mean_recall: float = math.nan
    false_positive_units: int | None = None
    redundant_units: int | None = None
    overmerged_units: int | None = None


def score_sorting(
    gt_sorting, sorting, *, delta_ms: float = 0.4, well_detected_accuracy: float = 0.8
) -> tuple[Score, npt.NDArray[np.float64]]:
    """Compare ``sorting`` with ``gt_sorting`` (SpikeInterface sortings).

    Returns
    -------
    score : Score
        Summary counts and means (means over all ground-truth units; a missed
        unit counts as 0).
    per_unit : (n_gt_units, 3) array
        Accuracy, precision, recall of each ground-truth unit, in the order of
        ``gt_sorting.unit_ids``.
    """
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    if delta_ms <= 0:
        raise ValueError(f"delta_ms must be > 0, got {delta_ms}")
    if not 0 < well_detected_accuracy <= 1:
        raise ValueError(
            f"well_detected_accuracy must be in (0, 1], got {well_detected_accuracy}"
        )
    comparison = compare_sorter_to_ground_truth(
        gt_sorting, sorting, delta_time=delta_ms, exhaustive_gt=True
    )
    performance = comparison.get_performance(method="by_unit", output="pandas")
    per_unit = (
        performance.loc[list(gt_sorting.unit_ids), ["accuracy", "precision", "recall"]]
        .astype(np.float64)
        .fillna(0.0)
        .to_numpy()
    )
    n_gt = len(gt_sorting.unit_ids)
    means = per_unit.mean(axis=0) if n_gt else np.full(3, math.nan)
    score = Score(
        n_gt_units=n_gt,
        n_sorted_units=len(sorting.unit_ids),
        well_detected=int(comparison.count_well_detected_units(well_detected_accuracy)),
        mean_accuracy=float(means[0]),
        mean_precision=float(means[1]),
        mean_recall=float(means[2]),
        false_positive_units=int(comparison.count_false_positive_units(MATCH_SCORE)),
        redundant_units=int(comparison.count_redundant_units(MATCH_SCORE)),
        overmerged_units=int(comparison.count_overmerged_units(MATCH_SCORE)),
    )
    return score, per_unit


def row_from(
    recording: str,
    sorter: str,
    version: str,
    status: str,
    *,
    note: str = "",
    measurement=None,
    score: Score | None = None,
) -> Row:
    """Assemble a table row from whatever is known about a run."""
    values = {}
    if measurement is not None:
        values.update(
            wall_s=measurement.wall_s,
            cpu_s=measurement.cpu_s,
            peak_rss_mb=measurement.peak_rss_mb,
            max_process_rss_mb=measurement.max_process_rss_mb,
        )
    if score is not None:
        values.update(asdict(score))
    return Row(
        recording=recording,
        sorter=sorter,
        version=version,
        status=status,
        note=note,
        **values,
    )


def write_csv(rows: list[Row], path: Path) -> None:
    """All fields of every row, one line each."""
    names = [f.name for f in fields(Row)]
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(names)
        for row in rows:
            writer.writerow(
                ["" if _missing(getattr(row, n)) else getattr(row, n) for n in names]
            )


def write_units_csv(per_unit: list[dict], path: Path) -> None:
    """Per ground-truth unit scores: one line per (recording, sorter, unit)."""
    names = ["recording", "sorter", "gt_unit", "snr", "accuracy", "precision", "recall"]
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=names)
        writer.writeheader()
        writer.writerows(per_unit)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value, spec: str) -> str:
    return "–" if _missing(value) else format(value, spec)


def markdown_table(rows: list[Row]) -> str:
    """The headline table in Markdown."""
    header = (
        "| recording | sorter | status | wall time (min) | CPU time (min) | peak memory (GB) | "
        "units found | well detected (acc ≥ 0.8) | mean accuracy | mean precision | "
        "mean recall | false-positive units | redundant units | over-merged units |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        well = "–" if r.well_detected is None else f"{r.well_detected} / {r.n_gt_units}"
        lines.append(
            f"| {r.recording} | {r.sorter} {r.version} | {r.status} | "
            f"{_fmt(r.wall_s / 60.0, '.1f')} | {_fmt(r.cpu_s / 60.0, '.1f')} | "
            f"{_fmt(r.peak_rss_mb / 1024.0, '.2f')} | "
            f"{_fmt(r.n_sorted_units, 'd')} | {well} | {_fmt(r.mean_accuracy, '.3f')} | "
            f"{_fmt(r.mean_precision, '.3f')} | {_fmt(r.mean_recall, '.3f')} | "
            f"{_fmt(r.false_positive_units, 'd')} | {_fmt(r.redundant_units, 'd')} | "
            f"{_fmt(r.overmerged_units, 'd')} |"
        )
    notes = [
        f"- {r.sorter} on {r.recording}: {r.status}: {r.note}" for r in rows if r.note
    ]
    table = header + "\n".join(lines) + "\n"
    return table + ("\n" + "\n".join(notes) + "\n" if notes else "")


def plot(rows: list[Row], per_unit: list[dict], path: Path) -> None:
    """Accuracy vs SNR per recording and sorter; wall time and memory bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recordings = list(dict.fromkeys(r.recording for r in rows))
    sorters = list(dict.fromkeys(r.sorter for r in rows))
    colours = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(sorters)}
    n_cols = max(len(recordings), 3)
    fig, axes = plt.subplots(2, n_cols, figsize=(5.5 * n_cols, 9.0), squeeze=False)

    for ax, recording in zip(axes[0], recordings, strict=False):
        for sorter in sorters:
            units = [
                u
                for u in per_unit
                if u["recording"] == recording and u["sorter"] == sorter
            ]
            if units:
                ax.scatter(
                    [u["snr"] for u in units],
                    [u["accuracy"] for u in units],
                    s=14,
                    alpha=0.7,
                    color=colours[sorter],
                    label=sorter,
                )
        ax.axhline(0.8, color="grey", lw=0.8, ls="--")
        ax.set(
            title=f"{recording}: accuracy per ground-truth unit",
            xlabel="SNR",
            ylabel="accuracy",
            ylim=(-0.03, 1.03),
            xscale="log",
        )
        ax.legend(fontsize=8, loc="lower right")
    for ax in axes[0][len(recordings) :]:
        ax.set_visible(False)

    width = 0.8 / max(len(sorters), 1)
    x = np.arange(len(recordings))
    metrics = (
        ("wall_s", 1 / 60.0, "wall time (min)"),
        ("cpu_s", 1 / 60.0, "CPU time (min)"),
        ("peak_rss_mb", 1 / 1024.0, "peak memory (GB)"),
    )
    for ax, (attr, scale, label) in zip(axes[1], metrics, strict=False):
        for i, sorter in enumerate(sorters):
            values = []
            for recording in recordings:
                row = next(
                    (
                        r
                        for r in rows
                        if r.recording == recording and r.sorter == sorter
                    ),
                    None,
                )
                ok = row is not None and row.status == "ok"
                values.append(getattr(row, attr) * scale if ok else 0.0)
            ax.bar(
                x + (i - (len(sorters) - 1) / 2) * width,
                values,
                width,
                color=colours[sorter],
                label=sorter,
            )
        ax.set_xticks(x, recordings)
        ax.set(ylabel=label, title=f"{label} (2 cores; failed runs shown as 0)")
        ax.legend(fontsize=8)
    for ax in axes[1][len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
