"""filter[c,t]: zero-phase band-pass of one channel shard x one time chunk,
then (Neuropixels, preprocess.phase_shift) each channel resampled at the
sample's tick (shardsort.phase)."""

import numpy as np

from shardsort.io.arrays import write_array
from shardsort.jobs import job_logger
from shardsort.phase import bandpass_and_align
from shardsort.preprocess import zero_nonfinite
from shardsort.recordings import open_spec

#: Mantissa bits the filtered float32 keeps when stored compressed: relative
#: error <= 2**-8, i.e. 5e-6 of the noise variance on band-passed noise (the
#: int16 preprocessed chunks add 8e-5); the file shrinks to ~0.42 of float32
#: (0.85x the raw int16 chunk instead of 2x), a temporary that counts at the
#: peak disk use of a sort.
MANTISSA_BITS = 7

log = job_logger(snakemake)
rec = open_spec(snakemake.params.recording)
compression = snakemake.params.compression
chunk, shard = snakemake.params.chunk, snakemake.params.shard
margin = int(snakemake.params.margin_samples)

lo = max(0, chunk["start"] - margin)
hi = min(rec.n_samples, chunk["stop"] + margin)
# Designed at DAG-build time from the `band` param (rules/common.smk: get_sos).
sos = np.asarray(snakemake.params.sos, dtype=np.float64)
# Per-channel sample shifts, or None: no phase-shift correction (the margin
# then holds no room for it; rules/common.smk: get_sample_shifts).
shifts = snakemake.params.sample_shifts
shifts = None if shifts is None else np.asarray(shifts, dtype=np.float64)
# Channel blocks keep the peak at the output plus a few copies of one block
# (the filter's temporaries are ~4 float32 copies of its input).
block_channels = 32
n_shard = shard["channel_stop"] - shard["channel_start"]
filtered = np.empty((chunk["stop"] - chunk["start"], n_shard), np.float32)
nonfinite = {}  # channel: [count, first sample] of NaN/inf raw samples in the core, zeroed
for first in range(shard["channel_start"], shard["channel_stop"], block_channels):
    channels = np.arange(first, min(first + block_channels, shard["channel_stop"]))
    window = rec.get_traces(lo, hi, channels=channels)
    window, found = zero_nonfinite(
        window, core_start=chunk["start"] - lo, core_stop=chunk["stop"] - lo
    )
    for i in np.flatnonzero(found.counts):
        nonfinite[int(channels[i])] = [int(found.counts[i]), chunk["start"] + int(found.first[i])]
    # A slice, not the index array: fancy column assignment costs ~10x more.
    column = first - shard["channel_start"]
    filtered[:, column : column + channels.size] = bandpass_and_align(
        window,
        sos=sos,
        sample_shifts=None if shifts is None else shifts[channels],
        core_start=chunk["start"] - lo,
        core_stop=chunk["stop"] - lo,
        at_recording_start=lo == 0,
        at_recording_end=hi == rec.n_samples,
    )
write_array(
    snakemake.output.data,
    filtered,
    sampling_rate_hz=rec.sampling_rate_hz,
    compression=compression,
    mantissa_bits=None if compression == "none" else MANTISSA_BITS,
    start_sample=chunk["start"],
    channel_start=shard["channel_start"],
    channel_stop=shard["channel_stop"],
    **({"nonfinite": nonfinite} if nonfinite else {}),
)
for channel, (count, at) in nonfinite.items():
    log.warning("channel %d: %d NaN/inf raw samples replaced by 0 before filtering, the first at "
                "sample %d", channel, count, at)
log.info(
    "chunk %d [%d, %d) channels [%d, %d): read [%d, %d), margin %d, phase shift %s, "
    "stored %s",
    chunk["index"], chunk["start"], chunk["stop"],
    shard["channel_start"], shard["channel_stop"], lo, hi, margin,
    "off" if shifts is None else f"on ({len(np.unique(shifts))} ADC slots)",
    "float32" if compression == "none" else f"{compression}, {MANTISSA_BITS} mantissa bits",
)
