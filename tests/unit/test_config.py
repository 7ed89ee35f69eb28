"""Configuration validation: the schema and the cross-field checks."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from shardsort.workflow import ConfigError, check_config, load_context, stage_margins

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
        ("templates", "merge_min_cosine", 1.5),
        ("motion", "border", "wrap"),
        ("motion", "time_bin_s", 0.0),
        ("motion", "enabled", "yes"),
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
    bad["motion"]["max_displacement_um"] = 2.0
    with pytest.raises(ConfigError, match=r"max_displacement_um \(2.0\) must be at least"):
        check_config(bad)
    bad = copy.deepcopy(config)
    bad["motion"]["time_horizon_s"] = 1.0
    with pytest.raises(ConfigError, match=r"time_horizon_s \(1.0\) must be 0"):
        check_config(bad)


def test_motion_is_off_by_default_and_its_keys_are_validated(config):
    assert config["motion"]["enabled"] is False
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
    load_context(config)  # motion off: any probe
    config["motion"]["enabled"] = True
    with pytest.raises(ConfigError, match=r"motion.edge_um \(30.0\) leaves nothing of the probe"):
        load_context(config)
    config["motion"]["edge_um"] = 20.0
    load_context(config)


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
