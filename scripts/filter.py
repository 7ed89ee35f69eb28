"""filter[c,t]: zero-phase band-pass of one channel shard x one time chunk."""

import numpy as np

from shardsort.io.arrays import write_array
from shardsort.jobs import job_logger
from shardsort.preprocess import bandpass_filter
from shardsort.recordings import open_spec

log = job_logger(snakemake)
rec = open_spec(snakemake.params.recording)
chunk, shard = snakemake.params.chunk, snakemake.params.shard
margin = int(snakemake.params.margin_samples)

lo = max(0, chunk["start"] - margin)
hi = min(rec.n_samples, chunk["stop"] + margin)
# Designed at DAG-build time from the `band` param (rules/common.smk: get_sos).
sos = np.asarray(snakemake.params.sos, dtype=np.float64)
# Channel blocks keep the peak at the output plus a few copies of one block
# (the filter's temporaries are ~4 float32 copies of its input).
block_channels = 16
n_shard = shard["channel_stop"] - shard["channel_start"]
filtered = np.empty((chunk["stop"] - chunk["start"], n_shard), np.float32)
for first in range(shard["channel_start"], shard["channel_stop"], block_channels):
    channels = np.arange(first, min(first + block_channels, shard["channel_stop"]))
    window = rec.get_traces(lo, hi, channels=channels)
    filtered[:, channels - shard["channel_start"]] = bandpass_filter(
        window,
        sos=sos,
        core_start=chunk["start"] - lo,
        core_stop=chunk["stop"] - lo,
        at_recording_start=lo == 0,
        at_recording_end=hi == rec.n_samples,
    )
write_array(
    snakemake.output.data,
    filtered,
    sampling_rate_hz=rec.sampling_rate_hz,
    start_sample=chunk["start"],
    channel_start=shard["channel_start"],
    channel_stop=shard["channel_stop"],
)
log.info(
    "chunk %d [%d, %d) channels [%d, %d): read [%d, %d), margin %d",
    chunk["index"], chunk["start"], chunk["stop"],
    shard["channel_start"], shard["channel_stop"], lo, hi, margin,
)
