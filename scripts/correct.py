"""correct[t]: move one preprocessed time chunk back by the estimated drift."""

import os
import shutil

import numpy as np

from shardsort.io.arrays import (
    ChunkedRecording,
    atomic_path,
    compression_of,
    read_sidecar,
    write_array,
)
from shardsort.jobs import core_blocks, job_logger, read_h5, reuse_freed_memory
from shardsort.motion import channel_displacement, correct_motion

log = job_logger(snakemake)
reuse_freed_memory()  # large temporaries reuse freed pages (shardsort.jobs)
spec = snakemake.params.recording
chunk = snakemake.params.chunk
cfg = snakemake.params.motion
positions = np.asarray(spec["positions_um"], dtype=np.float64)
good = read_h5(snakemake.input.noise)["good_mask"].astype(bool)
motion = read_h5(snakemake.input.motion)
# Multi-shank probes: each shank's channels move by their own shank's drift.
shank_ids = np.asarray(spec["shank_ids"], dtype=np.int64)
per_shank = "window_shank" in motion


def correct() -> None:
    rec = ChunkedRecording([snakemake.input.chunk], n_samples=spec["n_samples"])
    displacement = channel_displacement(
        motion["displacement_um"], motion["window_centres_um"], positions[:, 1],
        window_shank=motion["window_shank"] if per_shank else None,
        channel_shank_ids=shank_ids if per_shank else None,
    )
    # Same storage as the preprocessed chunk (float32, or int16 with its scale;
    # compressed or not).
    side = read_sidecar(snakemake.input.chunk)
    attrs = {"start_sample": chunk["start"]}
    as_int16 = np.dtype(side["dtype"]) == np.int16
    if as_int16:
        scale = float(side["scale"])
        attrs["scale"] = scale
    n_channels = len(positions)
    corrected = np.empty((chunk["stop"] - chunk["start"], n_channels),
                         dtype=np.int16 if as_int16 else np.float32)
    # Block by block (shardsort.jobs.core_blocks): an output sample depends only
    # on the same input sample and its index, so the blocks give the whole
    # chunk's values.
    for first, last in core_blocks(len(corrected), n_channels=n_channels, margin_samples=0):
        block = correct_motion(
            rec.get_traces(chunk["start"] + first, chunk["start"] + last, pad=None),
            start_sample=chunk["start"] + first,
            displacement_um=displacement,
            bin_samples=int(motion["attrs"]["bin_samples"]),
            positions_um=positions,
            sigma_um=cfg["interpolation_sigma_um"],
            good_mask=good,
            border=cfg["border"],
            shank_ids=shank_ids if per_shank else None,
        )
        if as_int16:
            block = np.clip(np.rint(block * np.float32(1.0 / scale)), -32767, 32767)
        corrected[first:last] = block
    compression = compression_of(side)
    write_array(
        snakemake.output.data, corrected, sampling_rate_hz=spec["sampling_rate_hz"],
        compression=compression, **attrs,
    )
    log.info("chunk %d [%d, %d) corrected (%s, compression %s)%s", chunk["index"],
             chunk["start"], chunk["stop"], corrected.dtype, compression,
             f", per shank ({len(np.unique(shank_ids))} shanks)" if per_shank else "")


def copy_unchanged() -> None:
    """The motion job found no drift worth correcting: the chunk is used as it is.

    A hard link where the file system allows and the chunks are temporary (no
    second copy on disk, no time spent copying; chunk files are never modified
    in place, only replaced), else a copy. Kept intermediates
    (``keep_intermediates: true``) are copied: Snakemake touches this job's
    output when it is older than the motion estimate, and a hard link shares
    that time with the preprocessed chunk, which then looks updated to every
    later run (motion_peaks and the whole sort after it ran again)."""
    # From the config, not a param: keep_intermediates changes no result, so
    # switching it must not rerun the jobs.
    how = "copy" if snakemake.config.get("keep_intermediates", False) else "hard link"
    for src, dst in ((snakemake.input.chunk, snakemake.output.data),
                     (f"{snakemake.input.chunk}.yaml", snakemake.output.sidecar)):
        with atomic_path(dst) as tmp:
            if how == "hard link":
                try:
                    os.remove(tmp)  # atomic_path made it, empty
                    os.link(src, tmp)
                    continue
                except OSError:  # no hard links here
                    how = "copy"
            shutil.copyfile(src, tmp)
    log.info("chunk %d: %s; chunk handed on unchanged (%s)", chunk["index"],
             motion["attrs"]["decision"], how)


if bool(motion["attrs"].get("apply", True)):
    correct()
else:
    copy_unchanged()
