"""One preprocessing implementation on one raw int16 recording, in its own process.

Run by ``bench_preprocess.py`` (one process per measurement, so that each gets
a clean peak-memory figure and no implementation warms another's caches):

    python preprocess_worker.py IMPL RAW N_CHANNELS RATE_HZ GEOMETRY OUT CHUNK_S

IMPL is

``ours``
    shardsort's chain as the workflow runs it, chunk by chunk:
    ``bandpass_filter`` (chunk read with the filter margin), then
    ``apply_preprocessing`` (global median reference, unit-noise scaling,
    local whitening), float32 written to one binary file. The setup (noise
    scales and whitening matrix from 20 windows of 10,000 samples, as
    SpikeInterface's ``whiten`` samples by default) is timed separately.
``si``
    SpikeInterface: ``bandpass_filter`` -> ``common_reference`` (global
    median) -> ``whiten`` (local, same radius), saved to binary with
    ``n_jobs=1`` and the same chunk duration; setup = building the chain
    (``whiten`` estimates its matrix there).
``filter``
    Filter kernels only, in memory: scipy ``sosfiltfilt`` on the whole
    recording versus ``bandpass_filter`` on the whole recording, in blocks
    of at most 64 channels (bounded memory; the cost is per channel), the
    two alternated block by block; also their largest difference.

Prints one JSON object. BLAS/OpenMP threads are set to 1 by the caller.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchlib import load_config

#: Band, order, whitening radius and noise-covariance settings: the workflow's.
CONFIG = load_config()
PRE = CONFIG["preprocess"]
NOISE_WINDOWS, NOISE_WINDOW_SAMPLES = 20, 10_000
FILTER_BLOCK_CHANNELS = 64


class Clock:
    """Accumulated wall and CPU seconds of named phases."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        for key, elapsed in (
            (f"{name}_wall_s", time.perf_counter() - wall),
            (f"{name}_cpu_s", time.process_time() - cpu),
        ):
            self.times[key] = self.times.get(key, 0.0) + elapsed


def sos_filter(rate_hz: float):
    from shardsort.preprocess import design_bandpass

    return design_bandpass(
        sampling_rate_hz=rate_hz,
        freq_min_hz=PRE["freq_min_hz"],
        freq_max_hz=PRE["freq_max_hz"],
        order=PRE["filter_order"],
    )


class RawFile:
    """A raw int16 (samples, channels) file read window by window.

    Windows are read into memory (not memory-mapped), so that the process's
    peak resident memory counts the working set only, not the page cache of
    every part of the file it has touched.
    """

    def __init__(self, path: Path, n_channels: int) -> None:
        self.path, self.n_channels = path, n_channels
        self.n_samples = path.stat().st_size // (2 * n_channels)

    def read(self, start: int, stop: int) -> np.ndarray:
        count = (stop - start) * self.n_channels
        offset = start * self.n_channels * 2
        data = np.fromfile(self.path, dtype="<i2", count=count, offset=offset)
        return data.reshape(-1, self.n_channels)


def filtered_window(raw: RawFile, start: int, stop: int, sos, margin: int):
    """Filtered samples [start, stop) of the raw recording."""
    from shardsort.preprocess import bandpass_filter

    lo, hi = max(0, start - margin), min(raw.n_samples, stop + margin)
    return bandpass_filter(
        raw.read(lo, hi),
        sos=sos,
        core_start=start - lo,
        core_stop=stop - lo,
        at_recording_start=lo == 0,
        at_recording_end=hi == raw.n_samples,
    )


def run_ours(
    raw: RawFile,
    positions: np.ndarray,
    out: Path,
    *,
    rate_hz: float,
    chunk_s: float,
    clock: Clock,
) -> None:
    from shardsort.preprocess import (
        apply_preprocessing,
        common_reference,
        filter_margin_samples,
        local_whitening_matrix,
        noise_covariance,
        robust_noise_scale,
    )

    n_samples = raw.n_samples
    with clock.phase("setup"):
        sos = sos_filter(rate_hz)
        margin = filter_margin_samples(sos)
        starts = np.linspace(0, n_samples - NOISE_WINDOW_SAMPLES, NOISE_WINDOWS)
        sample = np.concatenate(
            [
                filtered_window(raw, int(s), int(s) + NOISE_WINDOW_SAMPLES, sos, margin)
                for s in starts.astype(np.int64)
            ]
        )
        referenced = common_reference(sample, mode="global")
        scales = robust_noise_scale(referenced)
        scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
        covariance, _ = noise_covariance(
            referenced / scales,
            threshold=CONFIG["detect"]["threshold"],
            exclusion_samples=round(CONFIG["detect"]["ms_after"] * rate_hz / 1000),
        )
        whitening = local_whitening_matrix(
            covariance, positions, radius_um=PRE["whitening_radius_um"]
        )
    chunk = max(1, round(chunk_s * rate_hz))
    with clock.phase("apply"), open(out, "wb") as handle:
        for start in range(0, n_samples, chunk):
            stop = min(start + chunk, n_samples)
            traces = filtered_window(raw, start, stop, sos, margin)
            apply_preprocessing(
                traces, scales=scales, reference_mode="global", whitening=whitening
            ).tofile(handle)


def run_si(
    raw_path: Path,
    n_channels: int,
    positions: np.ndarray,
    out: Path,
    *,
    rate_hz: float,
    chunk_s: float,
    clock: Clock,
) -> None:
    import shutil

    import spikeinterface.core as si
    import spikeinterface.preprocessing as spre

    with clock.phase("setup"):
        rec = si.read_binary(
            raw_path, sampling_frequency=rate_hz, dtype="int16", num_channels=n_channels
        )
        rec.set_dummy_probe_from_locations(positions)
        rec = spre.bandpass_filter(
            rec,
            freq_min=PRE["freq_min_hz"],
            freq_max=PRE["freq_max_hz"],
            filter_order=PRE["filter_order"],
            dtype="float32",
        )
        rec = spre.common_reference(rec, reference="global", operator="median")
        rec = spre.whiten(
            rec, mode="local", radius_um=PRE["whitening_radius_um"], dtype="float32"
        )
    shutil.rmtree(out, ignore_errors=True)
    with clock.phase("apply"):
        rec.save(
            folder=out,
            format="binary",
            n_jobs=1,
            chunk_duration=f"{chunk_s}s",
            progress_bar=False,
        )


def run_filter(raw: np.ndarray, *, rate_hz: float, clock: Clock) -> dict:
    from scipy.signal import sosfiltfilt

    from shardsort.preprocess import bandpass_filter

    sos = sos_filter(rate_hz)
    n_samples, n_channels = raw.shape
    worst = 0.0
    for index, lo in enumerate(range(0, n_channels, FILTER_BLOCK_CHANNELS)):
        block = np.array(raw[:, lo : lo + FILTER_BLOCK_CHANNELS])
        order = ("scipy", "ours") if index % 2 == 0 else ("ours", "scipy")
        results = {}
        for name in order:
            with clock.phase(name):
                if name == "scipy":
                    results[name] = sosfiltfilt(sos, block, axis=0)
                else:
                    results[name] = bandpass_filter(
                        block,
                        sos=sos,
                        core_start=0,
                        core_stop=n_samples,
                        at_recording_start=True,
                        at_recording_end=True,
                    )
        reference = results["scipy"]
        error = np.max(np.abs(results["ours"] - reference)) / np.max(np.abs(reference))
        worst = max(worst, float(error))
        del results, reference, block
    return {"max_relative_difference": worst}


def main() -> None:
    impl, raw_path, n_channels, rate, geometry, out, chunk_s = sys.argv[1:8]
    n_channels, rate_hz, chunk_s = int(n_channels), float(rate), float(chunk_s)
    raw_path, out = Path(raw_path), Path(out)
    positions = np.load(geometry)
    clock = Clock()
    extra = {}
    if impl == "ours":
        run_ours(
            RawFile(raw_path, n_channels),
            positions,
            out,
            rate_hz=rate_hz,
            chunk_s=chunk_s,
            clock=clock,
        )
    elif impl == "si":
        run_si(
            raw_path,
            n_channels,
            positions,
            out,
            rate_hz=rate_hz,
            chunk_s=chunk_s,
            clock=clock,
        )
    elif impl == "filter":
        raw = np.memmap(raw_path, dtype="<i2", mode="r").reshape(-1, n_channels)
        extra = run_filter(raw, rate_hz=rate_hz, clock=clock)
    else:
        raise ValueError(f"IMPL must be one of ours, si, filter; got {impl!r}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": impl, **clock.times, **extra, "max_rss_mb": peak_mb}))


if __name__ == "__main__":
    main()
