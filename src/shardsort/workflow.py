"""What the Snakefile needs at DAG-build time: recordings, plans, margins.

Everything here runs before any job: it validates the configuration beyond
what the JSON schema can express, reads the recordings table (metadata only)
and computes one shard plan per recording.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from . import plan as planmod
from .recordings import RecordingSpec, load_recordings_table

#: Where the bundled demo recording is generated (see rules/demo.smk).
DEMO_DIR = "data/demo"
DEMO_PATH = f"{DEMO_DIR}/demo.bin"
DEMO_GEOMETRY = f"{DEMO_DIR}/geometry.npy"
DEMO_GROUND_TRUTH = f"{DEMO_DIR}/ground_truth.npz"


#: Length of each segment sampled for global estimates (noise, whitening, PCA).
SAMPLE_SEGMENT_S = 2.0


class ConfigError(ValueError):
    """A configuration value that the schema accepts but the science does not."""


def ms_to_samples(ms: float, sampling_rate_hz: float) -> int:
    """The one place milliseconds become samples."""
    return int(round(ms * sampling_rate_hz / 1000.0))


def check_compression(compression: str) -> None:
    """``preprocess.compression``: a known codec whose library is installed.

    The chunk writers import numcodecs only when they compress; this fails at
    DAG-build time instead of in the first preprocess job.
    """
    from .io.arrays import COMPRESSIONS

    if compression not in COMPRESSIONS:
        raise ConfigError(
            f"preprocess.compression must be one of {list(COMPRESSIONS)}, got {compression!r}"
        )
    if compression == "none":
        return
    try:
        from numcodecs.blosc import list_compressors
    except ImportError as error:
        raise ConfigError(
            f"preprocess.compression ({compression}) needs the numcodecs package "
            f"({error}); install it or set preprocess.compression: none"
        ) from error
    if compression not in list_compressors():
        raise ConfigError(
            f"preprocess.compression ({compression}): this numcodecs build offers only "
            f"{list_compressors()}"
        )


def check_config(config: dict) -> None:
    """Cross-field checks the JSON schema cannot express."""
    pre = config["preprocess"]
    if pre["freq_min_hz"] >= pre["freq_max_hz"]:
        raise ConfigError(
            f"preprocess.freq_min_hz ({pre['freq_min_hz']}) must be below "
            f"preprocess.freq_max_hz ({pre['freq_max_hz']})"
        )
    if pre["reference_inner_radius_um"] >= pre["reference_radius_um"]:
        raise ConfigError(
            f"preprocess.reference_inner_radius_um ({pre['reference_inner_radius_um']}) "
            f"must be below preprocess.reference_radius_um ({pre['reference_radius_um']})"
        )
    check_compression(pre["compression"])
    dec = config["deconvolve"]
    if dec["amplitude_min"] >= dec["amplitude_max"]:
        raise ConfigError(
            f"deconvolve.amplitude_min ({dec['amplitude_min']}) must be below "
            f"deconvolve.amplitude_max ({dec['amplitude_max']})"
        )
    lags = config["templates"]["merge_refractory_ms"]
    if lags[0] > lags[1]:
        raise ConfigError(
            f"templates.merge_refractory_ms ({lags}) must be [shortest, longest] lag "
            "with shortest <= longest"
        )
    lags = config["merge"]["refractory_ms"]
    if lags[0] > lags[1]:
        raise ConfigError(
            f"merge.refractory_ms ({lags}) must be [shortest, longest] lag "
            "with shortest <= longest"
        )
    if dec["threshold_min"] > dec["threshold"]:
        raise ConfigError(
            f"deconvolve.threshold_min ({dec['threshold_min']}) must not exceed "
            f"deconvolve.threshold ({dec['threshold']})"
        )
    motion = config["motion"]
    if motion["max_displacement_um"] < motion["depth_bin_um"]:
        raise ConfigError(
            f"motion.max_displacement_um ({motion['max_displacement_um']}) must be at "
            f"least motion.depth_bin_um ({motion['depth_bin_um']})"
        )
    if 0 < motion["time_horizon_s"] < motion["time_bin_s"]:
        raise ConfigError(
            f"motion.time_horizon_s ({motion['time_horizon_s']}) must be 0 (all pairs, "
            f"memory growing with the square of the recording's length) or at least "
            f"motion.time_bin_s ({motion['time_bin_s']})"
        )
    nn = config["nn"]
    low, high = nn["amplitude_range"]
    if low > high:
        raise ConfigError(
            f"nn.amplitude_range ({[low, high]}) must be [low, high] with low <= high"
        )
    if config["detect"]["method"] == "nn":
        nn_model_sidecars(config)  # a fixed model must exist and be complete


#: The networks of ``detect.method: nn``, each a folder with its sidecar.
NN_KINDS = ("detector", "triage")


def nn_model_dir(config: dict) -> str | None:
    """Folder holding ``detector/`` and ``triage/`` of a fixed model, or None.

    None for ``detect.nn_model: trained`` (trained per recording from a first
    threshold pass, under ``results/<recording>/nn/``); the shipped models
    for ``default``; otherwise the path given.
    """
    choice = config["detect"]["nn_model"]
    if choice == "trained":
        return None
    if choice == "default":
        from .nn import DEFAULT_MODELS_DIR

        return str(DEFAULT_MODELS_DIR)
    return choice


def nn_model_sidecars(config: dict) -> dict[str, dict] | None:
    """Sidecars of a fixed model's networks by kind, or None for a trained one."""
    from .nn.modelinfo import read_sidecar

    folder = nn_model_dir(config)
    if folder is None:
        return None
    sidecars = {}
    for kind in NN_KINDS:
        try:
            sidecars[kind] = read_sidecar(Path(folder) / kind)
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(
                f"detect.nn_model ({config['detect']['nn_model']!r}) must be "
                "'trained', 'default' or a folder holding detector/ and triage/ "
                f"model folders (model.keras and model.yaml each): {error}"
            ) from None
        if sidecars[kind]["kind"] != kind:
            raise ConfigError(
                f"detect.nn_model: {Path(folder) / kind} holds a "
                f"{sidecars[kind]['kind']!r} model, expected a {kind!r} model"
            )
    return sidecars


def nn_filter_samples(config: dict, sampling_rate_hz: float) -> int:
    """Odd length of the detector's temporal filters (``nn.filter_ms``)."""
    return 2 * (ms_to_samples(config["nn"]["filter_ms"], sampling_rate_hz) // 2) + 1


def nn_geometry(config: dict, sampling_rate_hz: float) -> dict[str, int]:
    """What the networks of ``detect.method: nn`` need of a chunk, in samples.

    ``filter_samples`` (detector receptive field), ``triage_pre_samples`` and
    ``triage_post_samples`` (the triage snippet around the trough), from the
    configuration for trained networks, from the sidecars for a fixed model.
    """
    sidecars = nn_model_sidecars(config)
    if sidecars is None:
        before, after = waveform_samples(config, sampling_rate_hz)
        return {
            "filter_samples": nn_filter_samples(config, sampling_rate_hz),
            "triage_pre_samples": before,
            "triage_post_samples": after,
        }
    detector, triage = sidecars["detector"], sidecars["triage"]
    pre = int(triage["pre_samples"])
    return {
        "filter_samples": int(detector["architecture"]["temporal_samples"]),
        "triage_pre_samples": pre,
        "triage_post_samples": int(triage["architecture"]["snippet_samples"]) - pre,
    }


def check_recording_against_config(spec: RecordingSpec, config: dict) -> None:
    """Checks that need both a recording's metadata and the configuration."""
    nyquist = spec.sampling_rate_hz / 2.0
    fmax = config["preprocess"]["freq_max_hz"]
    if fmax >= nyquist:
        raise ConfigError(
            f"preprocess.freq_max_hz ({fmax}) must be below the Nyquist frequency "
            f"({nyquist} Hz) of recording {spec.name!r} "
            f"(sampling_rate_hz={spec.sampling_rate_hz})"
        )
    minimum = min_recording_samples(config, spec.sampling_rate_hz)
    if spec.n_samples < minimum:
        rate = spec.sampling_rate_hz
        raise ConfigError(
            f"recording {spec.name!r} ({spec.path}) lasts {1e3 * spec.n_samples / rate:g} ms "
            f"({spec.n_samples} samples at {rate:g} Hz); expected at least "
            f"{1e3 * minimum / rate:g} ms ({minimum} samples): one waveform window "
            "(detect.ms_before + detect.ms_after) plus a sample, and more than the band-pass "
            "filter's edge padding"
        )
    motion = config["motion"]
    if motion["enabled"] is True and not probe_allows_motion(spec, config):
        raise ConfigError(
            f"motion.edge_um ({motion['edge_um']}) leaves nothing of the probe of "
            f"recording {spec.name!r}: its channels span {depth_span_um(spec):g} um in "
            f"depth, expected more than 2 x edge_um (or set motion.enabled: auto or false)"
        )
    if config["detect"]["method"] == "nn":
        check_nn_model_fits(spec, config)


def depth_span_um(spec: RecordingSpec) -> float:
    """Depth extent of the probe's channels (µm)."""
    depths = spec.positions_array[:, 1]
    return float(depths.max() - depths.min()) if depths.size else 0.0


def probe_allows_motion(spec: RecordingSpec, config: dict) -> bool:
    """Drift can be estimated: the channels span more than ``2 x motion.edge_um``
    in depth (the histograms leave ``edge_um`` out at each end)."""
    return depth_span_um(spec) > 2.0 * config["motion"]["edge_um"]


def motion_enabled(spec: RecordingSpec, config: dict) -> bool:
    """Whether the sort of ``spec`` estimates and corrects drift.

    ``motion.enabled``: ``auto`` (the default) corrects every recording whose
    probe is long enough (:func:`probe_allows_motion`); ``true`` requires it
    (checked by :func:`check_recording_against_config`); ``false`` never.
    Whether the estimate is then applied is decided per recording from the
    estimate itself (``motion.min_displacement_um``, in the motion job).
    """
    setting = config["motion"]["enabled"]
    if setting == "auto":
        return probe_allows_motion(spec, config)
    return bool(setting)


def phase_shifts(spec: RecordingSpec, config: dict) -> list[float] | None:
    """Per-channel sample shifts the filter jobs correct, or None (no correction).

    ``preprocess.phase_shift``: ``auto`` corrects when the recording's
    metadata gives shifts that are not all zero (Neuropixels via
    probeinterface), ``true`` requires them, ``false`` never corrects.
    """
    setting = config["preprocess"]["phase_shift"]
    shifts = list(spec.sample_shifts)
    known = bool(shifts) and any(s != 0 for s in shifts)
    if setting is True and not known:
        raise ConfigError(
            f"preprocess.phase_shift (true) needs per-channel sample shifts, but "
            f"recording {spec.name!r} (format {spec.format!r}) carries none: only "
            "Neuropixels SpikeGLX / Open Ephys recordings whose probe probeinterface "
            "knows do; use auto or false"
        )
    return shifts if setting is not False and known else None


def check_nn_model_fits(spec: RecordingSpec, config: dict) -> None:
    """A fixed model (``detect.nn_model`` not ``trained``) must fit the recording.

    Sampling rate, neighbourhood geometry (probe pitch) and whitening must
    match what the networks were trained on (:mod:`shardsort.nn.modelinfo`).
    """
    from .nn.modelinfo import (
        SIDECAR_FILE,
        check_model_fits,
        neighbour_offsets_um,
        neighbour_table,
    )

    sidecars = nn_model_sidecars(config)
    if sidecars is None:
        return
    folder = Path(nn_model_dir(config))
    positions = spec.positions_array
    for kind, sidecar in sidecars.items():
        k = int(sidecar["n_neighbours"])
        table = neighbour_table(positions, n_neighbours=k)
        try:
            check_model_fits(
                sidecar,
                source=folder / kind / SIDECAR_FILE,
                sampling_rate_hz=spec.sampling_rate_hz,
                neighbour_offsets_um=neighbour_offsets_um(positions, table),
                whiten=config["preprocess"]["whiten"],
            )
        except ValueError as error:
            raise ConfigError(
                f"detect.nn_model ({config['detect']['nn_model']!r}) does not fit "
                f"recording {spec.name!r}: {error}"
            ) from None


def min_recording_samples(config: dict, sampling_rate_hz: float) -> int:
    """Shortest recording (samples) every stage can work on.

    The band-pass filter needs more samples than its odd-extension padding
    (as ``scipy.signal.sosfiltfilt``); the templates' noise model draws at
    least two distinct waveform windows, and deconvolution matches templates
    of one window. Detection and the temporal PCA need no minimum: a
    recording too short to hold a spike sorts to an empty result. With the
    defaults at 30 kHz: 76 samples (2.5 ms).
    """
    from .preprocess import _scipy_padlen

    sos = configured_bandpass(config, sampling_rate_hz)
    before, after = waveform_samples(config, sampling_rate_hz)
    return max(_scipy_padlen(sos), before + after) + 1


def configured_bandpass(config: dict, sampling_rate_hz: float):
    """The band-pass SOS of ``preprocess`` settings at ``sampling_rate_hz``."""
    from .preprocess import design_bandpass

    pre = config["preprocess"]
    return design_bandpass(
        sampling_rate_hz=sampling_rate_hz,
        freq_min_hz=pre["freq_min_hz"],
        freq_max_hz=pre["freq_max_hz"],
        order=pre["filter_order"],
    )


def waveform_samples(config: dict, sampling_rate_hz: float) -> tuple[int, int]:
    """(pre_samples, post_samples) of the waveform window."""
    det = config["detect"]
    return (
        ms_to_samples(det["ms_before"], sampling_rate_hz),
        ms_to_samples(det["ms_after"], sampling_rate_hz),
    )


def stage_margins(config: dict, sampling_rate_hz: float) -> dict[str, int]:
    """Margin (samples) each per-chunk stage reads on each side of its chunk."""
    from .detect import detect_margin_samples
    from .preprocess import filter_margin_samples

    sos = configured_bandpass(config, sampling_rate_hz)
    before, after = waveform_samples(config, sampling_rate_hz)
    exclude = ms_to_samples(config["detect"]["exclude_ms"], sampling_rate_hz)
    width = before + after
    margins = {
        "filter": int(filter_margin_samples(sos)),
        "detect": int(
            detect_margin_samples(
                exclude_samples=exclude, pre_samples=before, post_samples=after
            )
        ),
        "templates": int(width + 1),
        # A spike in the margin is subtracted so it cannot leave a ghost in the
        # core; spikes overlapping it reach one more template length out.
        "deconvolve": int(3 * width),
    }
    if config["detect"]["method"] == "nn":
        from .nn.modelinfo import detect_nn_margin_samples

        nn = nn_geometry(config, sampling_rate_hz)
        margins["detect_nn"] = int(
            detect_nn_margin_samples(
                filter_samples=nn["filter_samples"],
                exclude_samples=exclude,
                pre_samples=before,
                post_samples=after,
                triage_pre_samples=nn["triage_pre_samples"],
                triage_post_samples=nn["triage_post_samples"],
            )
        )
    return margins


@dataclass
class Context:
    """Recordings (by name) and their shard plans."""

    recordings: dict[str, RecordingSpec]
    plans: dict[str, planmod.ShardPlan]
    # spec_dict's result per recording: every job's params hold it, and
    # converting a 384-channel probe's arrays per job took ~3 s of the DAG
    # build of a 2-h recording (4,439 jobs).
    _spec_dicts: dict = field(default_factory=dict, repr=False, compare=False)

    def segments(self, recording: str, n_segments: int) -> list[tuple[int, int]]:
        """Evenly spread absolute segments (independent of the chunking)."""
        plan = self.plans[recording]
        return planmod.sample_segments(
            plan.n_samples,
            n_segments=n_segments,
            segment_samples=int(round(SAMPLE_SEGMENT_S * plan.sampling_rate_hz)),
        )

    def spec_dict(self, recording: str) -> dict:
        """The recording's metadata as plain types (for rule params; one dict
        per recording, shared by its jobs: not to be modified)."""
        if recording in self._spec_dicts:
            return self._spec_dicts[recording]
        spec = self.recordings[recording]
        out = {}
        for f in dataclasses.fields(spec):
            value = getattr(spec, f.name)
            if hasattr(value, "tolist"):
                value = value.tolist()
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        self._spec_dicts[recording] = out
        return out


def demo_n_samples(config: dict) -> int:
    demo = config["demo"]
    return int(round(demo["duration_s"] * demo["sampling_rate_hz"]))


def _recording_margins(spec: RecordingSpec, config: dict) -> dict[str, int]:
    """Stage margins; the filter's widened by the phase-shift filter when it runs."""
    margins = stage_margins(config, spec.sampling_rate_hz)
    if phase_shifts(spec, config) is not None:
        from .phase import PHASE_HALF_WIDTH

        margins["filter"] += PHASE_HALF_WIDTH
    return margins


def load_context(config: dict) -> Context:
    """Validate the configuration, read the recordings table, plan every recording."""
    check_config(config)
    from .io.geometry import neuropixels_like_geometry

    demo = config["demo"]
    generated = {
        str(Path(DEMO_PATH)): {
            "n_samples": demo_n_samples(config),
            "n_channels": demo["n_channels"],
            "sampling_rate_hz": demo["sampling_rate_hz"],
            "geometry": DEMO_GEOMETRY,
            "positions_um": neuropixels_like_geometry(demo["n_channels"]),
        }
    }
    specs = load_recordings_table(config["recordings"], generated=generated)
    shards = config["shards"]
    recordings: dict[str, RecordingSpec] = {}
    plans: dict[str, planmod.ShardPlan] = {}
    for spec in specs:
        check_recording_against_config(spec, config)
        recordings[spec.name] = spec
        plans[spec.name] = planmod.make_plan(
            n_samples=spec.n_samples,
            n_channels=spec.n_channels,
            sampling_rate_hz=spec.sampling_rate_hz,
            max_memory_mb=shards["max_memory_mb"],
            channels_per_shard=shards["channels_per_shard"],
            channels_per_group=shards["channels_per_group"],
            min_parallel_jobs=shards["min_parallel_jobs"],
            min_job_channel_s=shards["min_job_channel_s"],
            margins=_recording_margins(spec, config),
        )
    return Context(recordings=recordings, plans=plans)


def single_scheduler_timer() -> bool:
    """At most one pending scheduler wake-up in Snakemake's job scheduler.

    Snakemake 9's job rate limiter (``--max-jobs-per-timespan``, default
    100/1s) ends every scheduling round that leaves ready jobs waiting by
    starting a new timer that wakes the scheduler a timespan later, and every
    job that finishes in the meantime wakes it too and so starts one more
    timer: the wake-ups per second grow with the jobs done. On a long
    recording, where dozens of chunks wait for a core, the main process spent
    156 CPU-s on 393 jobs (``job_selector`` ran 40 times a job, each time
    checking every input of every ready job). One pending wake-up is all the
    limiter needs; the timer is a daemon thread, so it does not hold the
    process open at the end. Returns whether the scheduler was patched (not
    when this Snakemake has no such method).
    """
    import threading

    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
    except ImportError:
        return False
    if getattr(JobScheduler, "_shardsort_single_timer", False):
        return True
    if not hasattr(JobScheduler, "_schedule_reevalutation"):
        return False
    lock = threading.Lock()

    def schedule_reevaluation(self, delay) -> None:
        with lock:
            if getattr(self, "_shardsort_wakeup_pending", False):
                return
            self._shardsort_wakeup_pending = True

        def wake() -> None:
            with lock:
                self._shardsort_wakeup_pending = False
            self._open_jobs.release()

        timer = threading.Timer(delay, wake)
        timer.daemon = True
        timer.start()

    JobScheduler._schedule_reevalutation = schedule_reevaluation
    JobScheduler._shardsort_single_timer = True
    return True


#: Seconds between two memory/CPU samples of a running job (``benchmark:``).
BENCHMARK_SAMPLE_S = 1.0


def benchmark_sampling(interval_s: float = BENCHMARK_SAMPLE_S) -> bool:
    """Sample running jobs for their ``benchmark:`` files every ``interval_s``.

    Snakemake 9 samples each job every 0.5 s for its first 30 samples (then
    every 30 s), each sample a new timer thread in the main process that walks
    the job's process tree and parses its ``smaps_rollup``: on a 384-channel
    sort about half of the main process's CPU (py-spy, 259 jobs of 1-9 s). At
    one sample a second the peak memory of jobs longer than a second is still
    seen (jobs shorter than that were never reliably sampled). Returns whether
    the interval was set (not when this Snakemake has no such setting).
    """
    try:
        import snakemake.benchmark as benchmark
    except ImportError:
        return False
    if not hasattr(benchmark, "BENCHMARK_INTERVAL_SHORT"):
        return False
    benchmark.BENCHMARK_INTERVAL_SHORT = float(interval_s)
    return True

