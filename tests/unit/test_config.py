"""Configuration validation: the schema and the cross-field checks."""

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from shardsort.workflow import ConfigError, check_config, load_context, motion_enabled, stage_margins

REPO = Path(__file__).resolve().parents[2]
SCHEMA = str(REPO / "config" / "schema.yaml")


@pytest.fixture()
def config():
    with open(REPO / "config" / "config.yaml") as fh:
        return yaml.safe_load(fh)


def test_default_config_is_valid(config):
    validate(copy.deepcopy(config), SCHEMA)
    check_config(config)


def test_unknown_key_is_an_error(config):
    config["detect"]["thresold"] = 5.0
    with pytest.raises(WorkflowError, match="thresold"):
        validate(config, SCHEMA)


def test_unknown_top_level_key_is_an_error(config):
    config["detekt"] = {}
    with pytest.raises(WorkflowError, match="detekt"):
        validate(config, SCHEMA)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("detect", "threshold", -1.0),
        ("detect", "method", "wavelet"),
        ("preprocess", "reference", "median"),
        ("preprocess", "filter_order", 0),
        ("shards", "max_memory_mb", 10),
        ("shards", "channels_per_shard", "all"),
        ("shards", "channels_per_group", 0),
        ("shards", "min_parallel_jobs", 0),
        ("shards", "min_job_channel_s", -1),
        ("templates", "merge_min_cosine", 1.5),
        ("motion", "border", "wrap"),
        ("motion", "time_bin_s", 0.0),
        ("motion", "enabled", "yes"),
        ("preprocess", "phase_shift", "yes"),
    ],
)
def test_out_of_range_values_are_errors(config, section, key, value):
    config[section][key] = value
    with pytest.raises(WorkflowError, match=key):
        validate(config, SCHEMA)


def test_cross_field_checks(config):
    bad = copy.deepcopy(config)
    bad["preprocess"]["freq_min_hz"] = 7000.0
    with pytest.raises(ConfigError, match=r"freq_min_hz \(7000.0\) must be below"):
        check_config(bad)
    bad = copy.deepcopy(config)
    bad["deconvolve"]["amplitude_min"] = 2.0
    with pytest.raises(ConfigError, match="amplitude_min"):
        check_config(bad)
    bad = copy.deepcopy(config)
    bad["deconvolve"]["threshold_min"] = 30.0
    with pytest.raises(ConfigError, match=r"threshold_min \(30.0\) must not exceed"):
        check_config(bad)
    bad = copy.deepcopy(config)
    bad["templates"]["merge_refractory_ms"] = [1.5, 0.5]
    with pytest.raises(ConfigError, match=r"merge_refractory_ms \(\[1.5, 0.5\]\)"):
        check_config(bad)
    bad = copy.deepcopy(config)
    bad["motion"]["max_displacement_um"] = 2.0
    with pytest.raises(ConfigError, match=r"max_displacement_um \(2.0\) must be at least"):
        check_config(bad)
    bad = copy.deepcopy(config)
    bad["motion"]["time_horizon_s"] = 1.0
    with pytest.raises(ConfigError, match=r"time_horizon_s \(1.0\) must be 0"):
        check_config(bad)


def test_motion_is_automatic_by_default_and_its_keys_are_validated(config):
    assert config["motion"]["enabled"] == "auto"
    config["motion"]["windw_step_um"] = 50.0
    with pytest.raises(WorkflowError, match="windw_step_um"):
        validate(config, SCHEMA)


def test_motion_edge_must_leave_part_of_the_probe(config, tmp_path):
    data = tmp_path / "rec.bin"
    data.write_bytes(b"\0" * 2 * 4 * 1000)
    geometry = tmp_path / "geometry.txt"
    geometry.write_text("0 0\n0 20\n0 40\n0 60\n")
    table = tmp_path / "recs.tsv"
    table.write_text(
        "name\tpath\tformat\tsampling_rate_hz\tn_channels\tdtype\torder\tgain_to_uv\t"
        f"offset_bytes\tgeometry\nshort\t{data}\tbinary\t30000\t4\tint16\tsamples\t1\t0\t"
        f"{geometry}\n"
    )
    config["recordings"] = str(table)
    config["motion"]["enabled"] = False
    load_context(config)  # motion off: any probe
    config["motion"]["enabled"] = "auto"
    spec = next(iter(load_context(config).recordings.values()))
    assert not motion_enabled(spec, config)  # auto: too short a probe sorts without
    config["motion"]["enabled"] = True
    with pytest.raises(ConfigError, match=r"motion.edge_um \(30.0\) leaves nothing of the probe"):
        load_context(config)
    config["motion"]["edge_um"] = 20.0
    load_context(config)
    assert motion_enabled(spec, config)
    config["motion"]["enabled"] = "auto"
    assert motion_enabled(spec, config)  # 60 um > 2 x 20 um


def test_band_above_nyquist_is_rejected_before_any_job(config, tmp_path):
    data = tmp_path / "rec.bin"
    data.write_bytes(b"\0" * 2 * 4 * 1000)
    table = tmp_path / "recs.tsv"
    table.write_text(
        "name\tpath\tformat\tsampling_rate_hz\tn_channels\tdtype\torder\tgain_to_uv\t"
        f"offset_bytes\tgeometry\nslow\t{data}\tbinary\t10000\t4\tint16\tsamples\t1\t0\t\n"
    )
    config["recordings"] = str(table)
    with pytest.raises(ConfigError, match=r"freq_max_hz \(6000.0\) must be below the Nyquist"):
        load_context(config)


def test_margins_cover_every_stage(config):
    margins = stage_margins(config, 30000.0)
    assert set(margins) == {"filter", "detect", "templates", "deconvolve"}
    assert all(m > 0 for m in margins.values())


# ---------------------------------------------------------------------------
# detect.method: nn
# ---------------------------------------------------------------------------


def _table(tmp_path, *, rate=30000.0, n_channels=32, geometry=None):
    """A recordings table of one silent int16 recording (1000 samples)."""
    from shardsort.synth import neuropixels_like_geometry

    data = tmp_path / "rec.bin"
    data.write_bytes(b"\0" * 2 * n_channels * 1000)
    positions = neuropixels_like_geometry(n_channels) if geometry is None else geometry
    np.save(tmp_path / "geometry.npy", positions)
    table = tmp_path / "recs.tsv"
    table.write_text(
        "name\tpath\tformat\tsampling_rate_hz\tn_channels\tdtype\torder\tgain_to_uv\t"
        f"offset_bytes\tgeometry\nrec\t{data}\tbinary\t{rate}\t{n_channels}\tint16\t"
        f"samples\t1\t0\t{tmp_path / 'geometry.npy'}\n"
    )
    return str(table)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("nn", "probability_threshold", 1.0),
        ("nn", "epochs", 0),
        ("nn", "amplitude_range", [0.5]),
        ("nn", "noise_lags", -1),
        ("detect", "nn_model", ""),
    ],
)
def test_nn_settings_out_of_range_are_errors(config, section, key, value):
    config[section][key] = value
    with pytest.raises(WorkflowError, match=key):
        validate(config, SCHEMA)


def test_nn_cross_field_checks(config, tmp_path):
    bad = copy.deepcopy(config)
    bad["nn"]["amplitude_range"] = [1.5, 0.5]
    with pytest.raises(ConfigError, match=r"nn.amplitude_range \(\[1.5, 0.5\]\)"):
        check_config(bad)
    bad = copy.deepcopy(config)
    bad["detect"].update(method="nn", nn_model=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"detect.nn_model \('.*nowhere'\) must be"):
        check_config(bad)
    # The model folder is only read with method nn.
    bad["detect"]["method"] = "threshold"
    check_config(bad)


def test_default_model_fits_a_30khz_neuropixels_like_probe(config, tmp_path):
    config["detect"].update(method="nn", nn_model="default")
    config["recordings"] = _table(tmp_path)
    ctx = load_context(config)
    margins = ctx.plans["rec"].margins
    # The default triage network reads 90-sample snippets, 60 after the trough.
    assert margins["detect_nn"] == 60 > margins["detect"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rate": 20000.0}, "sampling_rate_hz of the model is 30000 Hz but the recording's is 20000 Hz"),
        ({"pitch": 2.0}, "the recording's neighbourhood does not fit the model's: neighbour 1"),
        ({"whiten": True}, r"the model was trained on unwhitened traces .* preprocess\.whiten is true"),
    ],
)
def test_default_model_is_rejected_before_any_job_when_it_does_not_fit(
    config, tmp_path, change, message
):
    from shardsort.synth import neuropixels_like_geometry

    config["detect"].update(method="nn", nn_model="default")
    config["preprocess"]["whiten"] = change.get("whiten", False)
    config["recordings"] = _table(
        tmp_path,
        rate=change.get("rate", 30000.0),
        geometry=neuropixels_like_geometry(32) * change.get("pitch", 1.0),
    )
    with pytest.raises(ConfigError, match=r"detect.nn_model \('default'\) does not fit "
                       r"recording 'rec': .*model.yaml: " + message):
        load_context(config)


def test_trained_networks_set_the_detection_margin(config):
    config["detect"]["method"] = "nn"
    margins = stage_margins(config, 30000.0)
    # 15-sample filters (0.5 ms) + 9-sample exclusion + 2 refine samples, and
    # the 45 samples after the trough of the features and triage snippets.
    assert margins["detect_nn"] == max(7 + 9 + 2, 30, 45) == margins["detect"]
    config["nn"]["filter_ms"] = 3.0
    assert stage_margins(config, 30000.0)["detect_nn"] == 45 + 9 + 2
    config["detect"]["method"] = "threshold"
    assert "detect_nn" not in stage_margins(config, 30000.0)


@pytest.mark.parametrize("n_samples, refused", [(75, True), (76, False)])
def test_recording_shorter_than_a_waveform_window_is_refused(config, tmp_path, n_samples,
                                                             refused):
    data = tmp_path / "tiny.bin"
    data.write_bytes(b"\0" * 2 * 4 * n_samples)
    table = tmp_path / "recs.tsv"
    table.write_text(
        "name\tpath\tformat\tsampling_rate_hz\tn_channels\tdtype\torder\tgain_to_uv\t"
        f"offset_bytes\tgeometry\ntiny\t{data}\tbinary\t30000\t4\tint16\tsamples\t1\t0\t\n"
    )
    config["recordings"] = str(table)
    if not refused:
        load_context(config)
        return
    message = (rf"recording 'tiny' \({data}\) lasts 2\.5 ms \(75 samples at 30000 Hz\); "
               r"expected at least 2\.53333 ms \(76 samples\)")
    with pytest.raises(ConfigError, match=message):
        load_context(config)


def test_running_jobs_are_sampled_once_a_second():
    import snakemake.benchmark as benchmark

    from shardsort.workflow import BENCHMARK_SAMPLE_S, benchmark_sampling

    assert benchmark_sampling()
    assert benchmark.BENCHMARK_INTERVAL_SHORT == BENCHMARK_SAMPLE_S == 1.0
    # the timer reads the module's setting when it arms its next tick
    timer = benchmark.ScheduledPeriodicTimer(30)
    timer.work = lambda: None
    timer.start()
    try:
        assert timer._timer.interval == 1.0
    finally:
        timer.cancel()


def test_the_scheduler_keeps_one_pending_wakeup():
    """Repeated re-evaluation requests start one (daemon) timer, not one each."""
    import threading
    import time

    from shardsort.workflow import single_scheduler_timer

    assert single_scheduler_timer()
    from snakemake.scheduling.job_scheduler import JobScheduler

    class Scheduler:
        _schedule_reevalutation = JobScheduler._schedule_reevalutation

        def __init__(self):
            self._open_jobs = threading.Semaphore(0)

    scheduler = Scheduler()
    before = threading.active_count()
    for _ in range(50):
        scheduler._schedule_reevalutation(0.2)
    assert threading.active_count() - before <= 1
    assert scheduler._open_jobs.acquire(timeout=5)
    assert not scheduler._open_jobs.acquire(timeout=0.5)  # one wake-up, not 50
    scheduler._schedule_reevalutation(0.05)  # a new one may be scheduled once it fired
    assert scheduler._open_jobs.acquire(timeout=5)
    time.sleep(0.01)
