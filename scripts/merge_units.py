"""merge_units: the final spike train, templates and provenance in sorting.h5.

Only the spike tables (16 bytes a spike) and row indices are held whole: the
per-spike features stay in the chunk files, are copied unit by unit into a
scratch file for the split, and chunk by chunk into sorting.h5.
"""

import json
import os
from importlib import metadata

import h5py
import numpy as np
import yaml

from shardsort.curation import expected_noise_matches, select_units
from shardsort.deconvolve import DeconvBasis, unit_thresholds
from shardsort.io.arrays import atomic_path
from shardsort.jobs import job_logger, read_h5, read_npz, reuse_freed_memory
from shardsort.tables import NpzParts, gather_rows, merge_event_tables
from shardsort.workflow import ms_to_samples
from shardsort.templates import template_peak_channels, template_positions
from shardsort.unitmerge import merge_units
from shardsort.unitsplit import split_units

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
positions = np.asarray(spec["positions_um"], dtype=np.float64)
tpl = read_h5(snakemake.input.templates)
noise = read_h5(snakemake.input.noise)
whitening = read_h5(snakemake.input.whitening)["whitening"]
b = read_h5(snakemake.input.basis)

paths = list(snakemake.input.spikes)


parts = NpzParts(paths)
load = parts.load
tables = parts.tables("spikes")
sizes = parts.sizes
with np.load(paths[0], allow_pickle=False) as first:
    feature_shape, feature_dtype = first["pc_features"].shape[1:], first["pc_features"].dtype
    position_shape, position_dtype = first["positions_um"].shape[1:], first["positions_um"].dtype
# source: the row of every spike in the concatenated chunk files (its features).
spikes, source = merge_event_tables(tables, keys=("sample_index", "unit_index"))
del tables
if len(source) < np.iinfo(np.int32).max:  # 4 bytes a spike instead of 8
    source = source.astype(np.int32)

# Pieces of one neuron (cut by drift or amplitude in clustering) are joined
# on their spike trains before the curation judges each unit.
templates = tpl["templates"]
dec = snakemake.params.deconvolve
unit_mapping = np.arange(len(templates))
rate_hz = float(spec["sampling_rate_hz"])
merge_cfg = snakemake.params.merge
def join_pieces(spikes, source, templates, when):
    """Merge the units that are pieces of one neuron; returns the spikes (unit
    indices mapped, times shifted, re-sorted), their sources, the templates and
    the mapping from the units given to the merged ones."""
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
            "unit %d merged into unit %d %s (%s): cosine %.3f, lag %d, overlap %.2f x chance "
            "(z %.1f), refractory violations %d (expected %.1f)",
            d.absorbed, d.kept, when, d.reason, d.cosine, d.lag_samples, d.overlap_ratio,
            d.complementarity_z, d.observed, d.expected,
        )
    spikes["sample_index"] = np.clip(
        spikes["sample_index"] + merged.shifts[spikes["unit_index"]], 0, int(spec["n_samples"]) - 1
    )
    spikes["unit_index"] = merged.mapping[spikes["unit_index"]]
    order = np.lexsort((spikes["unit_index"], spikes["sample_index"]))
    spikes = spikes[order]
    source = source[order]
    del order
    log.info("%d merges %s: %d units -> %d", len(merged.decisions), when, len(templates),
             len(merged.templates))
    return spikes, source, merged.templates, merged.mapping


if merge_cfg["enabled"] and len(templates) > 1:
    spikes, source, templates, unit_mapping = join_pieces(spikes, source, templates,
                                                         "before the cuts")

# Units holding two neurons' spikes (neighbours of similar shape joined by the
# template merge) are cut in two on their spikes' features; units just made of
# pieces of one neuron are not.
parent = np.arange(len(templates))
cuts = ()
if merge_cfg["split"] and len(templates):
    absorbed_any = np.bincount(unit_mapping, minlength=len(templates)) > 1
    eligible = ~absorbed_any[spikes["unit_index"]]
    # The eligible spikes' features, grouped by unit (in spike order within a
    # unit) in a scratch file: the split reads one unit at a time.
    eligible_units = spikes["unit_index"][eligible]
    unit_start = np.concatenate(
        [[0], np.cumsum(np.bincount(eligible_units, minlength=len(templates)))]
    ).astype(np.int64)
    row_bytes = int(np.prod(feature_shape)) * feature_dtype.itemsize
    scratch = snakemake.output.sorting + ".features.tmp"
    fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.unlink(scratch)  # freed when closed, even if the job dies
    # row in the scratch file (int32 while the rows fit)
    rank = np.empty(len(eligible_units), dtype=source.dtype)
    by_unit = np.argsort(eligible_units, kind="stable")
    rank[by_unit] = np.arange(len(by_unit), dtype=rank.dtype)
    del by_unit
    for lo, values in gather_rows(lambda i: load(i, "pc_features"), sizes, source[eligible]):
        block_units = eligible_units[lo : lo + len(values)]
        block_rank = rank[lo : lo + len(values)]
        grouped = np.argsort(block_units, kind="stable")
        edges = np.flatnonzero(np.diff(block_units[grouped])) + 1
        for run in np.split(grouped, edges):
            if len(run):
                data = np.ascontiguousarray(values[run]).tobytes()
                os.pwrite(fd, data, int(block_rank[run[0]]) * row_bytes)
    del rank, eligible_units

    def unit_features(unit):
        n = int(unit_start[unit + 1] - unit_start[unit])
        data = os.pread(fd, n * row_bytes, int(unit_start[unit]) * row_bytes)
        return np.frombuffer(data, dtype=feature_dtype).reshape((n,) + feature_shape)

    labels, parent, cuts = split_units(
        spikes["sample_index"][eligible],
        spikes["unit_index"][eligible],
        unit_features,
        amplitudes=spikes["amplitude"][eligible] if merge_cfg["split_amplitude"] else None,
        amplitude_bounds=(float(dec["amplitude_min"]), float(dec["amplitude_max"])),
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
    root_of_row = spikes["unit_index"][eligible]  # the unit each eligible spike was cut from
    spikes["unit_index"][eligible] = labels
    if cuts:
        # A new unit's template: its spikes' mean waveform on the channels its
        # features were computed on (its parent's), from the temporal basis.
        channels = b["neighbours"][tpl["peak_channels"][np.arange(len(tpl["templates"]))]]
        new_templates = np.zeros((len(cuts),) + templates.shape[1:], dtype=np.float32)
        for i, cut in enumerate(cuts):
            root = parent[cut.new]
            mine = labels[root_of_row == root] == cut.new  # of the root's spikes, in order
            mean_scores = unit_features(root)[mine].mean(axis=0)  # (n_pcs, n_neighbours)
            origin = np.flatnonzero(unit_mapping == parent[cut.new])[0]
            new_templates[i][:, channels[origin]] = (
                b["components"].T @ mean_scores + b["mean"][:, None]
            )
            log.info("unit %d cut from unit %d on its %s: %d and %d spikes, bimodality %.1f, "
                     "overlap in time %.2f x chance (z %.1f)", cut.new, cut.unit, cut.on, cut.n_new,
                     cut.n_kept, cut.score, cut.overlap_ratio, cut.complementarity_z)
        n_before = len(templates)
        templates = np.concatenate([templates, new_templates])
        # A cut on amplitude leaves both parts' amplitudes scaled against the
        # parent's template (the weaker neuron's at ~0.8, the stronger's at
        # ~1.2). Each part's amplitudes are rescaled to their median, and the
        # part that kept the parent's template takes it at that scale (a new
        # part's template is its spikes' mean already), so that the
        # noise-template test (median amplitude) judges each part against its
        # own template, not its parent's.
        for unit in sorted({u for c in cuts if c.on == "amplitude" for u in (c.unit, c.new)}):
            mine = spikes["unit_index"] == unit
            if not mine.any():
                continue
            scale = float(np.median(spikes["amplitude"][mine]))
            if not dec["amplitude_min"] * 1.001 < scale < dec["amplitude_max"] * 0.999:
                continue  # a pile of fits censored at a bound: no neuron of its own
            spikes["amplitude"][mine] /= scale
            if unit < n_before:
                templates[unit] *= scale
            log.info("unit %d: amplitudes rescaled by 1/%.2f after the cut on amplitude", unit, scale)
    os.close(fd)
    del labels, root_of_row, eligible
    # Time order again (new unit indices), one array at a time.
    order = np.lexsort((spikes["unit_index"], spikes["sample_index"]))
    spikes = spikes[order]
    source = source[order]
    del order
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
# A unit that held two neurons' spikes could not be joined to another piece
# of one of them (the other neuron's spikes broke the refractory test); cut,
# its parts are tried again.
if merge_cfg["enabled"] and merge_cfg["split"] and cuts and len(templates) > 1:
    spikes, source, templates, after_cuts = join_pieces(spikes, source, templates,
                                                        "after the cuts")
    noise_matches = np.bincount(after_cuts, weights=noise_matches, minlength=len(templates))
    unit_counts = np.bincount(spikes["unit_index"], minlength=len(templates))
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
    # Residuals ride on the unit with the larger template (not the one with
    # more spikes: a unit of residues collects many).
    unit_size=[float(np.linalg.norm(t)) for t in templates],
    shared_min_z=dec["shared_min_z"],
)
alive = selection.alive
for unit in np.flatnonzero(~alive):
    log.info("unit %d removed: %s", unit, selection.reasons[unit])
dropped = np.bincount(spikes["unit_index"][~selection.keep_spike], minlength=n_units_in)
for unit in np.flatnonzero(alive & (dropped > 0)):
    log.info("unit %d keeps %d spikes; %d on larger units' spikes (residuals) removed",
             unit, selection.n_spikes[unit], dropped[unit])
renumber = np.full(n_units_in, -1, dtype=np.int32)
renumber[alive] = np.arange(int(alive.sum()), dtype=np.int32)
# Spikes of removed units, and residuals of a larger unit's spikes, go.
keep_spike = selection.keep_spike
spikes = spikes[keep_spike]
spikes["unit_index"] = renumber[spikes["unit_index"]]
source = source[keep_spike]
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
datasets = {
    "spikes": spikes,
    "spike_positions_um": ("positions_um", position_shape, position_dtype),
    "pc_features": ("pc_features", feature_shape, feature_dtype),
    "pc_feature_ind": pc_feature_ind.astype(np.int32),
    "templates": templates.astype(np.float32),
    "units": units,
    "channel_positions_um": positions.astype(np.float32),
    "whitening": whitening.astype(np.float32),
    "scales_uv": noise["scales_uv"].astype(np.float32),
    "channel_labels": noise["channel_labels"],
}
attrs = {
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
}
with atomic_path(snakemake.output.sorting) as tmp, h5py.File(tmp, "w") as f:
    for name, value in datasets.items():
        if not isinstance(value, tuple):
            f.create_dataset(name, data=np.asarray(value))
            continue
        key, shape, dtype = value  # per-spike rows, copied from the chunk files
        dataset = f.create_dataset(name, shape=(len(spikes),) + shape, dtype=dtype)
        for lo, values in gather_rows(lambda i, key=key: load(i, key), sizes, source):
            dataset[lo : lo + len(values)] = values
    for name, value in attrs.items():
        f.attrs[name] = value
log.info("%d units (%d removed), %d spikes", len(templates), int((~alive).sum()), len(spikes))
