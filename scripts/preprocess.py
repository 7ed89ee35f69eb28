"""preprocess[t]: reference, scale and whiten one time chunk (all channels).

With one channel shard (shards.channels_per_shard: auto) the job filters the
raw chunk itself; with several, it reads the filter jobs' shards. Both routes
give identical chunks (the same filter, the same rounding of the filtered
values when they would be stored compressed)."""

import numpy as np

from shardsort.io.arrays import (
    BLOCK_ROWS,
    read_array,
    read_sidecar,
    round_mantissa,
    write_array_rows,
)
from shardsort.jobs import job_logger, read_h5, reuse_freed_memory
from shardsort.phase import FILTERED_MANTISSA_BITS, filter_channels
from shardsort.preprocess import apply_preprocessing
from shardsort.recordings import open_spec

#: Rows preprocessed and written at a time (a whole number of compressed blocks).
ROW_BLOCK = 8 * BLOCK_ROWS

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
chunk = snakemake.params.chunk
pre = snakemake.params.preprocess
noise = read_h5(snakemake.input.noise)
whitening = read_h5(snakemake.input.whitening)["whitening"]
good = noise["good_mask"].astype(bool)

parts = sorted(
    snakemake.input.filtered, key=lambda p: read_sidecar(p)["channel_start"]
)
# NaN/inf raw samples replaced by 0 before filtering, {channel: [count, first
# sample]} (shards hold disjoint channels); read by the report.
nonfinite = {}
# A preprocess job that filters rounds the filtered values as a filter job
# stores them (when compressed), so both routes give the same chunk.
round_filtered = not parts and pre["compression"] != "none"
if parts:
    filtered = np.concatenate([np.asarray(read_array(p)) for p in parts], axis=1)
    for p in parts:
        nonfinite.update(
            {int(c): v for c, v in read_sidecar(p).get("nonfinite", {}).items()}
        )
else:
    fused = snakemake.params.filter
    filtered, nonfinite = filter_channels(
        open_spec(spec),
        start=chunk["start"],
        stop=chunk["stop"],
        channel_start=0,
        channel_stop=int(spec["n_channels"]),
        margin_samples=int(fused["margin_samples"]),
        sos=fused["sos"],
        sample_shifts=fused["sample_shifts"],
    )
    for channel, (count, at) in nonfinite.items():
        log.warning("channel %d: %d NaN/inf raw samples replaced by 0 before filtering, "
                    "the first at sample %d", channel, count, at)
# int16 chunks store noise units in steps of 1/int16_scale (32: range +-1024
# noise units, quantisation noise 0.009 noise SD).
int16_scale = float(pre["int16_scale"]) if pre["output_dtype"] == "int16" else None


def preprocessed_rows():
    """The chunk preprocessed a block of rows at a time (every step works per
    sample: the same values as the whole chunk at once), each block written as
    it comes: no second copy of the chunk."""
    for lo in range(0, len(filtered), ROW_BLOCK):
        block = filtered[lo : lo + ROW_BLOCK]
        if round_filtered:
            round_mantissa(block, bits=FILTERED_MANTISSA_BITS, out=block)
        yield apply_preprocessing(
            block,
            scales=noise["scales_uv"],
            whitening=whitening if pre["whiten"] else None,
            reference_mode=pre["reference"],
            positions_um=np.asarray(spec["positions_um"], dtype=np.float64),
            good_mask=good,
            radius_um=pre["reference_radius_um"],
            inner_radius_um=pre["reference_inner_radius_um"],
            groups=spec["shank_ids"] or None,  # one global median per shank
            output_dtype=pre["output_dtype"],
            int16_scale=int16_scale,
            overwrite=True,  # `filtered` is this job's own array
        )


attrs = {"start_sample": chunk["start"]}
if nonfinite:
    attrs["nonfinite"] = dict(sorted(nonfinite.items()))
if int16_scale is not None:
    attrs["scale"] = 1.0 / int16_scale
write_array_rows(
    snakemake.output.data, preprocessed_rows(), shape=filtered.shape,
    dtype=np.int16 if int16_scale is not None else np.float32,
    sampling_rate_hz=spec["sampling_rate_hz"], compression=pre["compression"], **attrs,
)
n_shanks = len(set(spec["shank_ids"]))
log.info("chunk %d [%d, %d): %s, compression %s, reference %s%s", chunk["index"],
         chunk["start"], chunk["stop"], "int16" if int16_scale is not None else "float32",
         pre["compression"], pre["reference"],
         f" per shank ({n_shanks} shanks)" if n_shanks > 1 and pre["reference"] == "global"
         else "")
