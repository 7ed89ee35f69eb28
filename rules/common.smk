# Workflow Python: recordings, shard plans and input functions. Rules stay declarative.
import functools

import shardsort
from shardsort.nn import TENSORFLOW_JOB_MB
from shardsort.workflow import (
    DEMO_DIR,
    DEMO_GEOMETRY,
    DEMO_GROUND_TRUTH,
    DEMO_PATH,
    benchmark_sampling,
    load_context,
    nn_model_dir,
    motion_enabled,
    phase_shifts,
    single_scheduler_timer,
)
from shardsort.preprocess import design_bandpass

# One pending scheduler wake-up at a time (Snakemake 9 starts one more per
# scheduling round while jobs wait: see single_scheduler_timer).
single_scheduler_timer()
# Running jobs sampled once a second for their benchmark files, not twice.
benchmark_sampling()

CTX = load_context(config)
RECORDINGS = CTX.recordings
PLANS = CTX.plans
RESULTS = "results"
LOGS = "results/{recording}/logs"
BENCH = "results/{recording}/benchmarks"
# Rerun a stage when the package's version (and so its kernels) changes.
CODE_VERSION = shardsort.__version__
# detect.method: nn runs a first threshold pass (results/<recording>/pass1/),
# trains the networks on it (unless a fixed model is given) and detects again.
NN = config["detect"]["method"] == "nn"
# Folder of a fixed model (detector/ and triage/), or None: trained per recording.
NN_MODEL_DIR = nn_model_dir(config) if NN else None


#: keep_intermediates: false deletes each bulk intermediate once its consumers are done.
KEEP_INTERMEDIATES = config["keep_intermediates"]


def bulk(path):
    """A bulk intermediate (per-chunk or per-group file no user opens): temp()
    unless keep_intermediates. The YAML sidecars of the preprocessed and
    corrected chunks are not: the jobs read them next to the chunk without
    declaring them (a temp() file without consumers goes at once), and the
    report reads them."""
    return path if KEEP_INTERMEDIATES else temp(path)


@functools.cache
def motion_on(recording):
    """Drift correction for this recording: the sort reads motion-corrected chunks
    (asked once per recording: thousands of jobs ask it)."""
    return motion_enabled(RECORDINGS[recording], config)



wildcard_constraints:
    recording="[A-Za-z0-9_.-]+",
    chunk=r"\d{5}",
    shard=r"\d{3}",
    group=r"\d{4}",
    segment=r"\d{3}",


def chunk_ids(recording):
    return [f"{c.index:05d}" for c in PLANS[recording].chunks]


def shard_ids(recording):
    return [f"{i:03d}" for i in range(len(PLANS[recording].channel_shards))]


def group_ids(recording):
    return [f"{i:04d}" for i in range(len(PLANS[recording].channel_groups))]


def get_final_outputs():
    outputs = []
    for name, spec in RECORDINGS.items():
        base = f"{RESULTS}/{name}"
        outputs += [
            f"{base}/sorting.h5",
            f"{base}/phy/params.py",
            f"{base}/metrics.tsv",
            f"{base}/sorting.nwb",
            f"{base}/report/probe_map.png",
            f"{base}/report/waveforms",
            f"{base}/report/runtime.png",
        ]
        if spec.ground_truth:
            outputs += [f"{base}/ground_truth.tsv", f"{base}/report/accuracy_vs_snr.png"]
        if motion_on(name):
            outputs += [f"{base}/motion/displacement.tsv", f"{base}/report/motion.png"]
    return outputs


def get_raw(wildcards):
    return RECORDINGS[wildcards.recording].path


def get_recording(wildcards):
    return CTX.spec_dict(wildcards.recording)


def get_sample_shifts(wildcards):
    """Per-channel sample shifts the filter corrects, or None (preprocess.phase_shift)."""
    return phase_shifts(RECORDINGS[wildcards.recording], config)


def get_plan(wildcards):
    return PLANS[wildcards.recording].to_dict()


def get_chunk(wildcards):
    plan = PLANS[wildcards.recording]
    chunk = plan.chunks[int(wildcards.chunk)]
    return {"index": chunk.index, "start": chunk.start, "stop": chunk.stop}


def get_shard(wildcards):
    lo, hi = PLANS[wildcards.recording].channel_shards[int(wildcards.shard)]
    return {"index": int(wildcards.shard), "channel_start": lo, "channel_stop": hi}


def get_group(wildcards):
    lo, hi = PLANS[wildcards.recording].channel_groups[int(wildcards.group)]
    return {"index": int(wildcards.group), "channel_start": lo, "channel_stop": hi}


def get_band(wildcards):
    """Only the band-pass settings: other preprocessing keys do not refilter."""
    pre = config["preprocess"]
    return {k: pre[k] for k in ("freq_min_hz", "freq_max_hz", "filter_order")}


def get_detect_settings(wildcards):
    """Threshold detection and waveform settings: the choice of detector and
    model (detect.method, detect.nn_model) does not rerun the threshold stages."""
    return {
        k: v
        for k, v in config["detect"].items()
        if k not in ("method", "nn_model")
    }
def get_sos(wildcards):
    """Second-order sections of the band-pass, designed once here so that the
    per-chunk filter jobs need not import scipy.signal (about 1 s each)."""
    rate = PLANS[wildcards.recording].sampling_rate_hz
    if rate not in _SOS:
        sos = design_bandpass(
            sampling_rate_hz=rate,
            freq_min_hz=config["preprocess"]["freq_min_hz"],
            freq_max_hz=config["preprocess"]["freq_max_hz"],
            order=config["preprocess"]["filter_order"],
        )
        _SOS[rate] = [[float(v) for v in row] for row in sos]
    return _SOS[rate]


_SOS = {}


def get_margin(stage):
    def margin(wildcards):
        return PLANS[wildcards.recording].margins[stage]

    return margin


def filter_in_preprocess(recording):
    """One channel shard (shards.channels_per_shard: auto): the preprocess job
    filters its chunk itself, no filter job and no filtered file."""
    return len(PLANS[recording].channel_shards) == 1


def get_filtered_chunk(wildcards):
    if filter_in_preprocess(wildcards.recording):
        return []
    return expand(
        "results/{recording}/preprocess/filtered/c{shard}_t{chunk}.f32",
        recording=wildcards.recording,
        shard=shard_ids(wildcards.recording),
        chunk=wildcards.chunk,
    )


def get_preprocess_raw(wildcards):
    return [get_raw(wildcards)] if filter_in_preprocess(wildcards.recording) else []


def get_preprocess_filter(wildcards):
    """The filter settings of a preprocess job that filters (else None); the
    band is part of them so that a band change reruns the job."""
    if not filter_in_preprocess(wildcards.recording):
        return None
    return {
        "band": get_band(wildcards),
        "sos": get_sos(wildcards),
        "margin_samples": get_margin("filter")(wildcards),
        "sample_shifts": get_sample_shifts(wildcards),
    }


def get_filtered_chunk_sidecars(wildcards):
    return [f"{p}.yaml" for p in get_filtered_chunk(wildcards)]


def noise_segments(recording):
    """Absolute segments sampled for noise statistics, whitening and templates."""
    return CTX.segments(recording, config["preprocess"]["noise_sample_chunks"])


def pca_segments(recording):
    """Absolute segments whose spikes fit the temporal PCA."""
    return CTX.segments(recording, config["detect"]["pca_sample_chunks"])


def chunks_for_segments(recording, segments, margin=0):
    """Chunks holding the segments, widened by ``margin`` samples."""
    plan = PLANS[recording]
    needed = set()
    for lo, hi in segments:
        lo, hi = max(0, lo - margin), min(plan.n_samples, hi + margin)
        needed.update(plan.chunks_overlapping(lo, hi))
    return sorted(needed)


def get_noise_segments(wildcards):
    return [list(s) for s in noise_segments(wildcards.recording)]


def get_pca_segments(wildcards):
    return [list(s) for s in pca_segments(wildcards.recording)]


def segment_ids(recording):
    return [f"{i:03d}" for i in range(len(noise_segments(recording)))]


def get_noise_sample(wildcards):
    """The noise segments filtered on their own (rule filter_noise_sample), not
    the chunks holding them: the chunks are filtered only after whitening."""
    return expand(
        "results/{recording}/preprocess/noise_sample/c{shard}_s{segment}.f32",
        recording=wildcards.recording,
        shard=shard_ids(wildcards.recording),
        segment=segment_ids(wildcards.recording),
    )


def get_noise_sample_sidecars(wildcards):
    return [f"{p}.yaml" for p in get_noise_sample(wildcards)]


def get_segment(wildcards):
    """A noise segment, in the form of a chunk for the filter script."""
    start, stop = noise_segments(wildcards.recording)[int(wildcards.segment)]
    return {"index": int(wildcards.segment), "start": int(start), "stop": int(stop)}


def get_filter_gate(wildcards):
    """Filter jobs start once the whitening job is done (it and noise_stats read
    the noise segments, filtered by their own jobs), so that each chunk's
    filtered shards (float32, temp) are consumed by its preprocess job soon
    after they are written instead of the whole recording being filtered first
    (2x the raw file on disk). The gate only orders the jobs: ancient() keeps a
    newer whitening.h5 from rerunning the filter, which does not read it."""
    return ancient(f"{RESULTS}/{wildcards.recording}/preprocess/whitening.h5")


def uncorrected_paths(recording, indices):
    return [f"{RESULTS}/{recording}/preprocess/chunks/t{i:05d}.bin" for i in indices]


def preprocessed_paths(recording, indices):
    """Chunks the sort reads: motion-corrected ones when motion.enabled."""
    if motion_on(recording):
        return [f"{RESULTS}/{recording}/motion/chunks/t{i:05d}.bin" for i in indices]
    return uncorrected_paths(recording, indices)


def get_preprocessed_window(stage):
    """Preprocessed chunk files a job on one chunk reads, margin included."""

    def paths(wildcards):
        plan = PLANS[wildcards.recording]
        needed = plan.neighbour_chunks(int(wildcards.chunk), plan.margins[stage])
        return preprocessed_paths(wildcards.recording, needed)

    return paths


def get_uncorrected_window(stage):
    """Preprocessed chunks before drift correction around one chunk, margin included."""

    def paths(wildcards):
        plan = PLANS[wildcards.recording]
        needed = plan.neighbour_chunks(int(wildcards.chunk), plan.margins[stage])
        return uncorrected_paths(wildcards.recording, needed)

    return paths


def get_motion_histograms(wildcards):
    return expand(
        "results/{recording}/motion/peaks/t{chunk}.npz",
        recording=wildcards.recording,
        chunk=chunk_ids(wildcards.recording),
    )


def get_settings(section, keys):
    """Only ``keys`` of a config section: other keys do not rerun the rule."""
    return {k: config[section][k] for k in keys}


#: The motion settings each motion stage depends on.
MOTION_PEAK_KEYS = ("peak_threshold", "time_bin_s", "depth_bin_um")
MOTION_PEAK_DETECT_KEYS = ("exclude_ms", "radius_um", "n_neighbours", "ms_before", "ms_after")
MOTION_ESTIMATE_KEYS = (
    "rigid",
    "time_bin_s",
    "depth_bin_um",
    "max_displacement_um",
    "edge_um",
    "window_step_um",
    "window_sigma_um",
    "min_correlation",
    "time_horizon_s",
    "robust_iterations",
    "smoothing_s",
    "min_displacement_um",
)
MOTION_CORRECT_KEYS = ("interpolation_sigma_um", "border")


def get_pca_sample(wildcards):
    recording = wildcards.recording
    margin = PLANS[recording].margins["detect"]
    chunks = chunks_for_segments(recording, pca_segments(recording), margin)
    return preprocessed_paths(recording, chunks)


def get_uncorrected_sidecars(wildcards):
    """Sidecars of every preprocessed chunk (the report: they count the NaN/inf
    raw samples zeroed). Sidecars only: the chunks themselves are temporary."""
    recording = wildcards.recording
    paths = uncorrected_paths(recording, range(len(PLANS[recording].chunks)))
    return [f"{p}.yaml" for p in paths]


def get_noise_chunks(wildcards):
    """Preprocessed chunks holding the noise segments (template noise model)."""
    recording = wildcards.recording
    chunks = chunks_for_segments(recording, noise_segments(recording))
    return preprocessed_paths(recording, chunks)


def get_detected(wildcards):
    """Per-chunk detections of the final pass: threshold, or network (detect.method)."""
    if NN:
        pattern = "results/{recording}/detect_nn/t{chunk}.npz"
    else:
        pattern = "results/{recording}/detect/t{chunk}.npz"
    return expand(
        pattern, recording=wildcards.recording, chunk=chunk_ids(wildcards.recording)
    )


def get_detected_pass1(wildcards):
    return expand(
        "results/{recording}/pass1/detect/t{chunk}.npz",
        recording=wildcards.recording,
        chunk=chunk_ids(wildcards.recording),
    )


def get_clustered_pass1(wildcards):
    return expand(
        "results/{recording}/pass1/cluster/g{group}.npz",
        recording=wildcards.recording,
        group=group_ids(wildcards.recording),
    )


def get_template_parts_pass1(wildcards):
    return expand(
        "results/{recording}/pass1/templates/t{chunk}.npz",
        recording=wildcards.recording,
        chunk=chunk_ids(wildcards.recording),
    )


def get_nn_models(wildcards):
    """Model files of the networks: trained on the recording, or a fixed model."""
    if NN_MODEL_DIR is None:
        base = f"{RESULTS}/{wildcards.recording}/nn"
    else:
        base = NN_MODEL_DIR
    return {
        "detector": f"{base}/detector/model.keras",
        "detector_sidecar": f"{base}/detector/model.yaml",
        "triage": f"{base}/triage/model.keras",
        "triage_sidecar": f"{base}/triage/model.yaml",
    }


def get_nn_detection(wildcards):
    """Only the settings that change network detection (not its training)."""
    nn = config["nn"]
    return {k: nn[k] for k in ("probability_threshold", "triage_threshold")}


def get_nn_training(wildcards):
    """Only the settings that change the networks' training."""
    nn = config["nn"]
    return {
        k: v
        for k, v in nn.items()
        if k not in ("probability_threshold", "triage_threshold")
    }


def get_clustered(wildcards):
    return expand(
        "results/{recording}/cluster/g{group}.npz",
        recording=wildcards.recording,
        group=group_ids(wildcards.recording),
    )


def get_template_parts(wildcards):
    return expand(
        "results/{recording}/templates/t{chunk}.npz",
        recording=wildcards.recording,
        chunk=chunk_ids(wildcards.recording),
    )


def get_deconvolved(wildcards):
    return expand(
        "results/{recording}/deconvolve/t{chunk}.npz",
        recording=wildcards.recording,
        chunk=chunk_ids(wildcards.recording),
    )


def get_ground_truth(wildcards):
    return RECORDINGS[wildcards.recording].ground_truth


def get_job_mem_mb(wildcards):
    """Memory request of a per-chunk job, from the shard plan's memory model."""
    from shardsort.plan import modelled_peak_mb

    plan = PLANS[wildcards.recording]
    return int(
        modelled_peak_mb(
            chunk_samples=plan.chunk_samples,
            margin_samples=max(plan.margins.values()),
            n_channels=plan.n_channels,
        )
    )


def get_nn_job_mem_mb(wildcards):
    """Memory request of a per-chunk job that runs the networks."""
    return get_job_mem_mb(wildcards) + TENSORFLOW_JOB_MB
