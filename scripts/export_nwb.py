"""export_nwb: an NWB file with the units table (spike times, waveforms, metrics)."""

import datetime

import numpy as np


from shardsort.export.nwb import unwhiten_templates, write_nwb
from shardsort.jobs import job_logger
from shardsort.sortingfile import load_metrics, load_sorting

log = job_logger(snakemake)
spec = snakemake.params.recording
# Not the per-spike features: the NWB file holds spike times and templates.
s = load_sorting(
    snakemake.input.sorting,
    keys=["spikes", "templates", "whitening", "scales_uv", "channel_positions_um"],
)
metrics = load_metrics(snakemake.input.metrics)
metrics = {
    k: v for k, v in metrics.items() if k not in ("unit_index", "peak_channel", "x_um", "y_um")
}
# Templates live in whitened, noise-normalised units: undo the whitening and
# the per-channel scaling to get mean waveforms in microvolts.
templates_uv = unwhiten_templates(s["templates"], s["whitening"], s["scales_uv"])
n_channels = templates_uv.shape[2]
write_nwb(
    snakemake.output.nwb,
    spikes=s["spikes"],
    sampling_rate_hz=float(s["attrs"]["sampling_rate_hz"]),
    templates_uv=templates_uv.astype(np.float32),
    channel_positions_um=s["channel_positions_um"],
    unit_metrics=metrics,
    session_description=f"shardsort sort of recording {spec['name']}",
    identifier=f"shardsort-{spec['name']}",
    # A fixed start time keeps the file reproducible; the raw file's own
    # metadata, not the sort, knows when the session began.
    session_start_time=datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc),
    recording_name=spec["name"],
    pre_samples=int(s["attrs"]["pre_samples"]),
    # Large probes keep each unit's 32 best channels (NWB rows stay small).
    n_best_channels=None if n_channels <= 128 else 32,
)
log.info("NWB file with %d units", len(s["templates"]))
