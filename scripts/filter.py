"""filter[c,t]: zero-phase band-pass of one channel shard x one time chunk."""

import numpy as np

from shardsort.io.arrays import write_array
from shardsort.jobs import job_logger
from shardsort.preprocess import bandpass_filter, design_bandpass
from shardsort.recordings import open_spec

log = job_logger(snakemake)
rec = open_spec(snakemake.params.recording)
chunk, shard = snakemake.params.chunk, snakemake.params.shard
margin = int(snakemake.params.margin_samples)
pre = snakemake.params.band

lo = max(0, chunk["start"] - margin)
hi = min(rec.n_samples, chunk["stop"] + margin)
channels = np.arange(shard["channel_start"], shard["channel_stop"])
window = rec.get_traces(lo, hi, channels=channels)
sos = design_bandpass(
    sampling_rate_hz=rec.sampling_rate_hz,
    freq_min_hz=pre["freq_min_hz"],
    freq_max_hz=pre["freq_max_hz"],
    order=pre["filter_order"],
)
filtered = bandpass_filter(
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
