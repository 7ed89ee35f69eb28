"""export_phy: a phy / Kilosort-format folder from sorting.h5 and metrics.tsv."""

import os

import h5py

from shardsort.export.phy import write_phy_folder
from shardsort.jobs import job_logger
from shardsort.sortingfile import SMALL_KEYS, load_metrics, load_sorting

log = job_logger(snakemake)
spec = snakemake.params.recording
s = load_sorting(snakemake.input.sorting, keys=SMALL_KEYS)
metrics = load_metrics(snakemake.input.metrics)
metrics = {k: v for k, v in metrics.items() if k not in ("unit_index", "peak_channel", "x_um", "y_um")}
if spec["order"] != "samples":
    log.warning(
        "recording %s is stored channel-major; phy reads sample-major files only, "
        "so phy will show no raw waveforms", spec["name"],
    )
if len(s["spikes"]) == 0:
    log.warning(
        "recording %s has no spikes: the phy folder is empty (SpikeInterface's read_phy and "
        "read_kilosort open it with zero units; phy/phylib cannot open a folder without spikes)",
        spec["name"],
    )
folder = os.path.dirname(snakemake.output.params)
# The per-spike features are copied to pc_features.npy block by block.
with h5py.File(snakemake.input.sorting, "r") as f:
    write_phy_folder(
        folder,
        spikes=s["spikes"],
        templates=s["templates"],
        whitening=s["whitening"],
        scales_uv=s["scales_uv"],
        channel_positions_um=s["channel_positions_um"],
        sampling_rate_hz=float(s["attrs"]["sampling_rate_hz"]),
        pc_features=f["pc_features"],
        pc_feature_ind=s["pc_feature_ind"],
        dat_path=os.path.abspath(spec["path"]),
        dtype=spec["dtype"],
        n_channels_dat=int(spec["n_file_channels"]),
        offset=int(spec["offset_bytes"]),
        dat_gain_uv=float(spec["gain_to_uv"]),
        hp_filtered=False,
        metrics=metrics,
    )
log.info("phy folder %s: %d units, %d spikes", folder, len(s["templates"]), len(s["spikes"]))
