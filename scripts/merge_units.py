"""merge_units: the final spike train, templates and provenance in sorting.h5."""

import json
from importlib import metadata

import numpy as np
import yaml

from shardsort.curation import expected_noise_matches, select_units
from shardsort.deconvolve import DeconvBasis, unit_thresholds
from shardsort.jobs import job_logger, read_h5, read_npz, write_h5
from shardsort.tables import merge_event_tables
from shardsort.workflow import ms_to_samples
from shardsort.templates import template_peak_channels, template_positions
from shardsort.unitmerge import merge_units
from shardsort.unitsplit import split_units

log = job_logger(snakemake)
spec = snakemake.params.recording
positions = np.asarray(spec["positions_um"], dtype=np.float64)
tpl = read_h5(snakemake.input.templates)
noise = read_h5(snakemake.input.noise)
whitening = read_h5(snakemake.input.whitening)["whitening"]
b = read_h5(snakemake.input.basis)

parts = [read_npz(p) for p in snakemake.input.spikes]
spikes, kept = merge_event_tables([p["spikes"] for p in parts], keys=("sample_index", "unit_index"))
pc_features = np.concatenate([p["pc_features"] for p in parts], axis=0)[kept]
spike_positions = np.concatenate([p["positions_um"] for p in parts], axis=0)[kept]

# Pieces of one neuron (cut by drift or amplitude in clustering) are joined
# on their spike trains before the curation judges each unit.
templates = tpl["templates"]
dec = snakemake.params.deconvolve
unit_mapping = np.arange(len(templates))
rate_hz = float(spec["sampling_rate_hz"])
merge_cfg = snakemake.params.merge
if merge_cfg["enabled"] and len(templates) > 1:
    merged = merge_units(
        spikes["sample_index"],
        spikes["unit_index"],
        templates,
        positions,
        n_samples=int(spec["n_samples"]),
        bin_samples=max(1, ms_to_samples(1000.0 * merge_cfg["bin_s"], rate_hz)),
        max_shift_samples=ms_to_samples(snakemake.params.max_shift_ms, rate_hz),
        radius_um=merge_cfg["radius_um"],
        min_cosine=merge_cfg["min_cosine"],
        max_amplitude_ratio=merge_cfg["max_amplitude_ratio"],
        min_lag_samples=ms_to_samples(merge_cfg["refractory_ms"][0], rate_hz),
        max_lag_samples=ms_to_samples(merge_cfg["refractory_ms"][1], rate_hz),
        max_overlap_ratio=merge_cfg["max_overlap_ratio"],
        max_complementarity_z=merge_cfg["max_complementarity_z"],
        min_expected=merge_cfg["min_expected"],
        max_violation_fraction=merge_cfg["max_violation_fraction"],
        distinct_min_violations=merge_cfg["distinct_min_violations"],
        distinct_violation_fraction=merge_cfg["distinct_violation_fraction"],
    )
    for d in merged.decisions:
        log.info(
            "unit %d merged into unit %d (%s): cosine %.3f, lag %d, overlap %.2f x chance "
            "(z %.1f), refractory violations %d (expected %.1f)",
            d.absorbed, d.kept, d.reason, d.cosine, d.lag_samples, d.overlap_ratio,
            d.complementarity_z, d.observed, d.expected,
        )
    spikes["sample_index"] = np.clip(
        spikes["sample_index"] + merged.shifts[spikes["unit_index"]], 0, int(spec["n_samples"]) - 1
    )
    spikes["unit_index"] = merged.mapping[spikes["unit_index"]]
    order = np.lexsort((spikes["unit_index"], spikes["sample_index"]))
    spikes, pc_features, spike_positions = spikes[order], pc_features[order], spike_positions[order]
    templates = merged.templates
    unit_mapping = merged.mapping
    log.info("%d merges: %d units -> %d", len(merged.decisions), len(tpl["templates"]), len(templates))

# Units holding two neurons' spikes (neighbours of similar shape joined by the
# template merge) are cut in two on their spikes' features; units just made of
# pieces of one neuron are not.
parent = np.arange(len(templates))
if merge_cfg["split"] and len(templates):
    absorbed_any = np.bincount(unit_mapping, minlength=len(templates)) > 1
    candidates = np.where(absorbed_any[spikes["unit_index"]], -1, spikes["unit_index"])
    eligible = candidates >= 0
    labels, parent, cuts = split_units(
        spikes["sample_index"][eligible],
        spikes["unit_index"][eligible],
        pc_features[eligible],
        n_units=len(templates),
        n_samples=int(spec["n_samples"]),
        bin_samples=max(1, ms_to_samples(1000.0 * merge_cfg["bin_s"], rate_hz)),
        min_part=merge_cfg["split_min_spikes"],
        min_fraction=merge_cfg["split_min_fraction"],
        split_threshold=snakemake.params.split_threshold,
        max_overlap_ratio=merge_cfg["max_overlap_ratio"],
        max_complementarity_z=merge_cfg["max_complementarity_z"],
        seed=int(snakemake.params.seed),
    )
    spikes["unit_index"][eligible] = labels
    order = np.lexsort((spikes["unit_index"], spikes["sample_index"]))
    spikes, pc_features, spike_positions = spikes[order], pc_features[order], spike_positions[order]
    if cuts:
        # A new unit's template: its spikes' mean waveform on the channels its
        # features were computed on (its parent's), from the temporal basis.
        channels = b["neighbours"][tpl["peak_channels"][np.arange(len(tpl["templates"]))]]
        new_templates = np.zeros((len(cuts),) + templates.shape[1:], dtype=np.float32)
        for i, cut in enumerate(cuts):
            mine = spikes["unit_index"] == cut.new
            mean_scores = pc_features[mine].mean(axis=0)  # (n_pcs, n_neighbours)
            source = np.flatnonzero(unit_mapping == parent[cut.new])[0]
            new_templates[i][:, channels[source]] = (
                b["components"].T @ mean_scores + b["mean"][:, None]
            )
            log.info("unit %d cut from unit %d: %d and %d spikes, bimodality %.1f, "
                     "overlap in time %.2f x chance (z %.1f)", cut.new, cut.unit, cut.n_new,
                     cut.n_kept, cut.score, cut.overlap_ratio, cut.complementarity_z)
        templates = np.concatenate([templates, new_templates])
    log.info("%d cuts: %d units", len(cuts), len(templates))

# Matches pure noise gives each unit at its threshold (a merged unit: the sum
# over its pieces; a cut unit shares its parent's in proportion to its spikes).
basis = DeconvBasis.from_arrays(read_npz(snakemake.input.deconv_basis))
thresholds = unit_thresholds(
    basis, highest=dec["threshold"], lowest=dec["threshold_min"], recall_margin=dec["recall_margin"]
)
noise_matches = expected_noise_matches(
    thresholds, tpl["noise_lag_correlation"], n_samples=int(spec["n_samples"])
)
noise_matches = np.bincount(unit_mapping, weights=noise_matches, minlength=len(parent))
unit_counts = np.bincount(spikes["unit_index"], minlength=len(templates))
family = np.bincount(parent, weights=unit_counts, minlength=len(parent))
noise_matches = noise_matches[parent] * unit_counts / np.maximum(family[parent], 1)
for unit in range(len(templates)):
    log.info("unit %d: %d spikes, %.1f expected from noise alone at its threshold",
             unit, unit_counts[unit], noise_matches[unit])

# Units with too few spikes, too low a rate or a median amplitude far below 1
# (noise templates) are removed; the survivors are renumbered 0..K-1 in the
# order of their templates.
n_units_in = len(templates)
selection = select_units(
    spikes["unit_index"],
    spikes["amplitude"],
    n_units=n_units_in,
    duration_s=int(spec["n_samples"]) / float(spec["sampling_rate_hz"]),
    min_spikes=dec["min_spikes"],
    min_rate_hz=dec["min_rate_hz"],
    min_median_amplitude=dec["min_median_amplitude"],
    sample_index=spikes["sample_index"],
    shared_window_samples=ms_to_samples(dec["shared_window_ms"], float(spec["sampling_rate_hz"])),
    max_shared_fraction=dec["max_shared_fraction"],
    expected_noise=noise_matches,
    max_noise_fraction=dec["max_noise_fraction"],
)
alive = selection.alive
for unit in np.flatnonzero(~alive):
    log.info("unit %d removed: %s", unit, selection.reasons[unit])
renumber = np.full(n_units_in, -1, dtype=np.int32)
renumber[alive] = np.arange(int(alive.sum()), dtype=np.int32)
# Spikes of removed units, and residuals of a larger unit's spikes, go.
keep_spike = selection.keep_spike
spikes = spikes[keep_spike]
spikes["unit_index"] = renumber[spikes["unit_index"]]
pc_features, spike_positions = pc_features[keep_spike], spike_positions[keep_spike]
templates = templates[alive]
peak_channels = template_peak_channels(templates)
pc_feature_ind = b["neighbours"][peak_channels] if len(templates) else (
    np.zeros((0, b["neighbours"].shape[1]), dtype=np.int32)
)
unit_xy = template_positions(templates, positions)
ptp = templates.max(axis=1) - templates.min(axis=1) if len(templates) else np.zeros((0, len(positions)))
units = np.zeros(
    len(templates),
    dtype=[("unit_index", "<i4"), ("peak_channel", "<i4"), ("x_um", "<f4"), ("y_um", "<f4"),
           ("n_spikes", "<i8"), ("peak_to_peak", "<f4")],
)
units["unit_index"] = np.arange(len(templates))
units["peak_channel"] = peak_channels
if len(templates):
    units["x_um"], units["y_um"] = unit_xy[:, 0], unit_xy[:, 1]
    units["peak_to_peak"] = ptp[np.arange(len(templates)), peak_channels]
units["n_spikes"] = np.bincount(spikes["unit_index"], minlength=len(templates))

versions = {}
for pkg in ("shardsort", "numpy", "scipy", "scikit-learn", "h5py", "snakemake"):
    try:
        versions[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
        versions[pkg] = "unknown"
write_h5(
    snakemake.output.sorting,
    {
        "spikes": spikes,
        "spike_positions_um": spike_positions,
        "pc_features": pc_features,
        "pc_feature_ind": pc_feature_ind.astype(np.int32),
        "templates": templates.astype(np.float32),
        "units": units,
        "channel_positions_um": positions.astype(np.float32),
        "whitening": whitening.astype(np.float32),
        "scales_uv": noise["scales_uv"].astype(np.float32),
        "channel_labels": noise["channel_labels"],
    },
    {
        "recording": yaml.safe_dump(spec),
        "sampling_rate_hz": float(spec["sampling_rate_hz"]),
        "n_samples": int(spec["n_samples"]),
        "pre_samples": int(tpl["attrs"]["pre_samples"]),
        "post_samples": int(tpl["attrs"]["post_samples"]),
        # Provenance only: read from the run's config, not a rule param, so
        # that unrelated config changes do not rerun the sort.
        "config": yaml.safe_dump(dict(snakemake.config)),
        "versions": yaml.safe_dump(versions),
        "plan": json.dumps(snakemake.params.plan),
    },
)
log.info("%d units (%d removed), %d spikes", len(templates), int((~alive).sum()), len(spikes))
