"""filter[c,t]: zero-phase band-pass of one channel shard x one time chunk,
then (Neuropixels, preprocess.phase_shift) each channel resampled at the
sample's tick (shardsort.phase). Used when a chunk's channels are cut into
several shards (shards.channels_per_shard); with one shard (the default) the
preprocess job filters its chunk itself (the same shardsort.phase.filter_channels)."""

import numpy as np

from shardsort.io.arrays import write_array
from shardsort.jobs import job_logger, reuse_freed_memory
from shardsort.phase import FILTERED_MANTISSA_BITS, filter_channels
from shardsort.recordings import open_spec

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
rec = open_spec(snakemake.params.recording)
compression = snakemake.params.compression
chunk, shard = snakemake.params.chunk, snakemake.params.shard
margin = int(snakemake.params.margin_samples)
# Per-channel sample shifts, or None: no phase-shift correction (the margin
# then holds no room for it; rules/common.smk: get_sample_shifts).
shifts = snakemake.params.sample_shifts
filtered, nonfinite = filter_channels(
    rec,
    start=chunk["start"],
    stop=chunk["stop"],
    channel_start=shard["channel_start"],
    channel_stop=shard["channel_stop"],
    margin_samples=margin,
    # Designed at DAG-build time from the `band` param (rules/common.smk: get_sos).
    sos=snakemake.params.sos,
    sample_shifts=shifts,
)
write_array(
    snakemake.output.data,
    filtered,
    sampling_rate_hz=rec.sampling_rate_hz,
    compression=compression,
    mantissa_bits=None if compression == "none" else FILTERED_MANTISSA_BITS,
    start_sample=chunk["start"],
    channel_start=shard["channel_start"],
    channel_stop=shard["channel_stop"],
    **({"nonfinite": nonfinite} if nonfinite else {}),
)
for channel, (count, at) in nonfinite.items():
    log.warning("channel %d: %d NaN/inf raw samples replaced by 0 before filtering, the first at "
                "sample %d", channel, count, at)
log.info(
    "chunk %d [%d, %d) channels [%d, %d): margin %d, phase shift %s, stored %s",
    chunk["index"], chunk["start"], chunk["stop"],
    shard["channel_start"], shard["channel_stop"], margin,
    "off" if shifts is None else f"on ({len(np.unique(shifts))} ADC slots)",
    "float32" if compression == "none" else f"{compression}, {FILTERED_MANTISSA_BITS} mantissa bits",
)
