"""report_*: the figures and tables that `snakemake --report` embeds.

One script serves the four report rules (overview, units, ground_truth,
runtime); each reads its inputs, calls the pure functions of
``shardsort.report`` and writes its outputs atomically.
"""

import csv
import os
from pathlib import Path

import h5py
import numpy as np

from shardsort import report
from shardsort.io.arrays import atomic_path
from shardsort.io.arrays import read_sidecar
from shardsort.jobs import job_logger, read_h5
from shardsort.sortingfile import load_metrics

log = job_logger(snakemake)


def read_tsv(path):
    """Columns of a TSV file as lists of strings (the header's columns when it has no row)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        rows = list(reader)
    return {name: [row[name] for row in rows] for name in (reader.fieldnames or [])}


def as_float(values):
    """Floats, NaN where a cell is not a number (Snakemake writes "-" or "NA")."""
    out = []
    for value in values:
        try:
            out.append(float(value))
        except ValueError:
            out.append(float("nan"))
    return np.array(out, dtype=np.float64)


def save(fig, path):
    with atomic_path(path) as tmp:
        report.save_figure(fig, tmp)


def write_text(text, path):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def load_units(*keys):
    """The units table and ``keys`` of sorting.h5 (not the large per-spike features)."""
    s = read_h5(snakemake.input.sorting, keys=["units", *keys])
    units = s["units"]
    if not np.array_equal(units["unit_index"], np.arange(len(units))):
        raise ValueError(f"{snakemake.input.sorting}: units must be numbered 0..n-1 in order")
    return s, units


def overview():
    s, units = load_units("spikes", "spike_positions_um", "channel_positions_um")
    rate = float(s["attrs"]["sampling_rate_hz"])
    bad = read_tsv(snakemake.input.bad_channels)
    labels = np.full(len(s["channel_positions_um"]), "good", dtype=object)
    labels[np.array(bad["channel"], dtype=np.int64)] = bad["label"]
    unit_positions_um = np.column_stack([units["x_um"], units["y_um"]])
    why = no_units_reason(len(units))
    if why:
        log.warning("%s", why)
    save(report.probe_map_figure(
        s["channel_positions_um"], labels.astype(str), unit_positions_um,
        unit_index=units["unit_index"], unit_amplitude=units["peak_to_peak"],
        no_units_note=why,
    ), snakemake.output.probe_map)
    save(report.drift_raster_figure(
        s["spikes"], s["spike_positions_um"], sampling_rate_hz=rate,
    ), snakemake.output.drift_raster)
    metrics = load_metrics(snakemake.input.metrics)
    for name in ("n_spikes", "peak_channel", "isi_violations_count"):
        if name in metrics:
            metrics[name] = metrics[name].astype(np.int64)
    duration_s = float(s["attrs"]["n_samples"]) / rate
    note = (f"{len(units)} units, {len(s['spikes'])} spikes in {duration_s:.1f} s "
            f"(definitions: Allen Institute ecephys quality metrics)")
    nonfinite = report.nonfinite_note(raw_nonfinite())
    if nonfinite:
        log.warning("%s", nonfinite)
    note = " ".join(filter(None, [note, why, nonfinite]))
    write_text(report.html_table(metrics, title="Quality metrics per unit", note=note),
               snakemake.output.metrics)
    log.info("overview of %d units, %d spikes", len(units), len(s["spikes"]))


def no_units_reason(n_units):
    """Why the sort has no unit ("" if it has): counts of spikes.h5 and templates.h5."""
    if n_units:
        return ""
    with h5py.File(snakemake.input.spikes, "r") as f:
        n_detected = len(f["peaks"])
    t = read_h5(snakemake.input.templates, keys=["templates", "cluster_dropped"])
    dropped = t["cluster_dropped"]
    return report.no_units_reason(
        n_detected=n_detected, n_clusters=len(dropped),
        cluster_dropped={name: dropped[name] for name in dropped.dtype.names},
        n_templates=len(t["templates"]), n_units=n_units,
    )


def raw_nonfinite():
    """{channel: [count, first sample]} of the NaN/inf raw samples zeroed, over all chunks."""
    total = {}
    for side in snakemake.input.chunk_sidecars:
        path = side.removesuffix(".yaml")  # the chunk itself may be deleted (temp)
        for channel, (count, first) in (read_sidecar(path).get("nonfinite") or {}).items():
            n, at = total.get(int(channel), (0, first))
            total[int(channel)] = [n + int(count), min(int(at), int(first))]
    return total


def units_pages():
    s, units = load_units("spikes", "templates", "channel_positions_um")
    rate = float(s["attrs"]["sampling_rate_hz"])
    duration_s = float(s["attrs"]["n_samples"]) / rate
    spikes, n_units = s["spikes"], len(units)
    refractory_ms = float(snakemake.params.isi_threshold_ms)
    isi, isi_edges = report.isi_histograms(spikes, n_units=n_units, sampling_rate_hz=rate)
    acg, acg_edges = report.autocorrelograms(spikes, n_units=n_units, sampling_rate_hz=rate)
    out = snakemake.output
    for folder in (out.waveforms, out.amplitudes, out.isi, out.autocorrelograms):
        os.makedirs(folder, exist_ok=True)
    width = max(3, len(str(max(n_units - 1, 0))))
    pages = report.page_slices(n_units, units_per_page=snakemake.params.units_per_page)
    for page in pages:
        name = f"units_{page.start:0{width}d}-{max(page.stop - 1, page.start):0{width}d}.png"
        index = units["unit_index"][page]
        save(report.waveforms_figure(s["templates"][page], s["channel_positions_um"],
                                     unit_index=index), Path(out.waveforms, name))
        save(report.amplitudes_figure(spikes, units["peak_to_peak"], unit_index=index,
                                      sampling_rate_hz=rate, duration_s=duration_s),
             Path(out.amplitudes, name))
        save(report.histogram_grid_figure(isi[page], isi_edges, unit_index=index,
                                          title="Inter-spike intervals",
                                          refractory_ms=refractory_ms), Path(out.isi, name))
        save(report.histogram_grid_figure(acg[page], acg_edges, unit_index=index,
                                          title="Autocorrelograms",
                                          refractory_ms=refractory_ms),
             Path(out.autocorrelograms, name))
    log.info("%d units on %d page(s)", n_units, len(pages))


def ground_truth():
    scores = read_tsv(snakemake.input.scores)
    columns = {name: as_float(values) for name, values in scores.items()}
    for name in ("gt_unit", "matched_unit", "n_gt", "n_sorted", "tp", "fn", "fp"):
        if name in columns:
            columns[name] = columns[name].astype(np.int64)
    threshold = float(snakemake.params.well_detected_accuracy)
    accuracy = columns.get("accuracy", np.zeros(0))
    n_well = int(np.count_nonzero(accuracy >= threshold))
    save(report.accuracy_vs_snr_figure(
        columns.get("snr", np.zeros(0)), accuracy, columns.get("precision", np.zeros(0)),
        columns.get("recall", np.zeros(0)), well_detected_accuracy=threshold,
    ), snakemake.output.accuracy)
    note = (f"{n_well} of {len(accuracy)} ground-truth units well detected "
            f"(accuracy ≥ {threshold:g}); matched_unit -1: no sorted unit matched")
    write_text(report.html_table(columns, title="Accuracy against ground truth", note=note),
               snakemake.output.table)
    log.info("%s", note)


def runtime():
    folder = Path(snakemake.params.benchmarks)
    rules, seconds, rss = [], [], []
    for path in sorted(folder.rglob("*.tsv")):
        rule = path.relative_to(folder).parts[0].removesuffix(".tsv")
        if rule == snakemake.rule:
            continue  # this job's own record is written only after it ends
        table = read_tsv(path)
        if not table.get("s"):
            continue
        rules.append(rule)
        seconds.append(float(np.mean(as_float(table["s"]))))
        rss.append(float(np.max(as_float(table["max_rss"]))))
    totals = report.rule_totals(rules, np.array(seconds), np.array(rss))
    save(report.runtime_figure(totals), snakemake.output.runtime)
    log.info("%d benchmark records of %d rules", len(rules), len(totals["rule"]))


{
    "report_overview": overview,
    "report_units": units_pages,
    "report_ground_truth": ground_truth,
    "report_runtime": runtime,
}[snakemake.rule]()
