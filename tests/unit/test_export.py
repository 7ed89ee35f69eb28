"""Tests for shardsort.export: phy folders and NWB files read back by their tools."""

from __future__ import annotations

import datetime
import logging
import runpy

import numpy as np
import pytest

from shardsort.export import nwb, phy
from shardsort.tables import SPIKE_DTYPE

FS = 30_000.0
N_TIMES, PRE = 30, 10


def make_sort(n_channels: int, seed: int = 0) -> dict:
    """Four units (unit 3 has no spikes) on a linear probe."""
    rng = np.random.default_rng(seed)
    n_units, n_pcs, n_pc_channels = 4, 3, 4
    counts = [50, 30, 20, 0]
    units = np.repeat(np.arange(n_units), counts)
    samples = rng.choice(np.arange(100, 9_900), size=units.size, replace=False)
    order = np.argsort(samples)
    spikes = np.zeros(units.size, dtype=SPIKE_DTYPE)
    spikes["sample_index"] = samples[order]
    spikes["unit_index"] = units[order]
    spikes["amplitude"] = rng.uniform(0.8, 1.2, units.size)
    peaks = np.array([1, n_channels // 2, n_channels - 2, 0])
    templates = np.zeros((n_units, N_TIMES, n_channels), np.float32)
    for unit, peak in enumerate(peaks):
        for offset, gain in ((-1, 0.5), (0, 1.0), (1, 0.4)):
            channel = peak + offset
            if 0 <= channel < n_channels:
                templates[unit, PRE, channel] = -(6.0 + 2 * unit) * gain
                templates[unit, PRE + 5, channel] = (2.0 + unit) * gain
    whitening = np.eye(n_channels) + 0.05 * rng.normal(size=(n_channels, n_channels))
    pc_feature_ind = (peaks[:, None] + np.arange(n_pc_channels)) % n_channels
    return {
        "spikes": spikes,
        "templates": templates,
        "whitening": whitening.astype(np.float32),
        "scales_uv": rng.uniform(5.0, 10.0, n_channels).astype(np.float32),
        "channel_positions_um": np.c_[
            np.zeros(n_channels), 20.0 * np.arange(n_channels)
        ],
        "pc_features": rng.normal(size=(units.size, n_pcs, n_pc_channels)).astype(
            np.float32
        ),
        "pc_feature_ind": pc_feature_ind,
    }


def metrics_for(n_units: int = 4) -> dict:
    return {
        "snr": np.array([8.0, 7.0, 1.0, 6.0]),
        "isi_violations_ratio": np.array([0.1, 0.9, 0.0, np.nan]),
        "amplitude_cutoff": np.array([0.01, 0.01, 0.0, np.nan]),
        "presence_ratio": np.array([0.95, 1.0, 1.0, 0.0]),
        "isi_violations_count": np.array([1, 9, 0, 0], dtype=np.int64),
    }


def write_folder(tmp_path, sort, n_channels_dat, **overrides):
    dat = tmp_path / "raw.dat"
    np.zeros((10_000, n_channels_dat), np.int16).tofile(dat)
    kwargs = dict(
        sort,
        sampling_rate_hz=FS,
        dat_path=dat,
        dtype=np.int16,
        n_channels_dat=n_channels_dat,
        offset=0,
        dat_gain_uv=0.5,
        hp_filtered=False,
        metrics=metrics_for(),
    )
    kwargs.update(overrides)
    return phy.write_phy_folder(tmp_path / "phy", **kwargs)


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------


def test_cluster_groups_rule():
    groups = phy.cluster_groups(np.array([5, 5, 5, 0]), metrics_for())
    np.testing.assert_array_equal(groups, ["good", "mua", "noise", "noise"])
    np.testing.assert_array_equal(phy.cluster_groups([1, 2], None), ["unsorted"] * 2)
    with pytest.raises(ValueError, match="metrics must contain 'snr'"):
        phy.cluster_groups([1], {"presence_ratio": np.ones(1)})


def test_template_similarity_dense_and_sparse_agree():
    templates = np.zeros((3, 4, 5), np.float32)
    templates[0, 1, 2] = 1.0
    templates[1, 1, 2] = 3.0  # same shape as unit 0, larger
    templates[2, 2, 4] = 1.0  # disjoint
    dense = phy.template_similarity(templates)
    np.testing.assert_allclose(dense, [[1, 1, 0], [1, 1, 0], [0, 0, 1]], atol=1e-6)
    channel_ind = np.array([[2, 4], [2, 0], [4, 1]])
    local = np.take_along_axis(templates, channel_ind[:, None, :], 2)
    np.testing.assert_allclose(phy.template_similarity(local, channel_ind), dense)
    assert np.all(phy.template_similarity(np.zeros((2, 4, 3))) == 0)
    assert phy.template_similarity(np.zeros((0, 4, 3))).shape == (0, 0)
    assert phy.template_similarity(np.zeros((0, 4, 2)), np.zeros((0, 2), int)).shape == (0, 0)


def test_phy_whitening_matrix_maps_dat_units_to_preprocessed():
    rng = np.random.default_rng(1)
    whitening = rng.normal(size=(4, 4))
    scales = np.array([2.0, 4.0, 5.0, 8.0])
    dat = rng.integers(-100, 100, size=(7, 4)).astype(np.float64)
    preprocessed = (dat * 0.25 / scales) @ whitening.T
    matrix = phy.phy_whitening_matrix(whitening, scales, dat_gain_uv=0.25)
    np.testing.assert_allclose(dat @ matrix, preprocessed)
    with pytest.raises(ValueError, match="dat_gain_uv must be a finite number > 0"):
        phy.phy_whitening_matrix(whitening, scales, dat_gain_uv=0.0)


# ---------------------------------------------------------------------------
# phy folder
# ---------------------------------------------------------------------------


def test_phy_folder_loads_in_phylib_dense(tmp_path):
    from phylib.io.model import load_model

    sort = make_sort(n_channels=6)
    channel_map = np.array([0, 1, 2, 4, 5, 7])
    folder = write_folder(tmp_path, sort, n_channels_dat=8, channel_map=channel_map)
    model = load_model(folder / "params.py")
    try:
        np.testing.assert_array_equal(
            np.bincount(model.spike_clusters, minlength=4), [50, 30, 20, 0]
        )
        np.testing.assert_array_equal(
            model.spike_samples, sort["spikes"]["sample_index"]
        )
        np.testing.assert_allclose(model.amplitudes, sort["spikes"]["amplitude"])
        assert model.sparse_templates.data.shape == (4, N_TIMES, 6)
        assert model.sparse_templates.cols is None
        np.testing.assert_array_equal(model.channel_mapping, channel_map)
        np.testing.assert_allclose(
            model.channel_positions, sort["channel_positions_um"]
        )
        assert model.n_channels_dat == 8 and model.sample_rate == FS
        assert model.features.shape == sort["pc_features"].shape[:1] + (4, 3)
        assert model.metadata["group"] == {0: "good", 1: "mua", 2: "noise", 3: "noise"}
        assert model.metadata["isi_violations_count"] == {0: 1, 1: 9, 2: 0, 3: 0}
        assert 3 not in model.metadata["amplitude_cutoff"]  # NaN -> empty cell
        # phylib's unwhitened templates are in dat units.
        expected = (
            nwb.unwhiten_templates(
                sort["templates"], sort["whitening"], sort["scales_uv"]
            )
            / 0.5
        )
        template = model.get_template(1)
        assert template.best_channel == 3
        np.testing.assert_allclose(
            template.template,
            expected[1][:, template.channel_ids],
            rtol=1e-4,
            atol=1e-4,
        )
    finally:
        model.close()


def test_phy_folder_sparse_templates_for_large_probes(tmp_path):
    from phylib.io.model import load_model

    n_channels = phy.DENSE_MAX_CHANNELS + 2
    sort = make_sort(n_channels=n_channels)
    folder = write_folder(tmp_path, sort, n_channels_dat=n_channels)
    assert not (folder / "templates_ind.npy").exists()
    model = load_model(folder / "params.py")
    try:
        n_local = phy.SPARSE_TEMPLATE_CHANNELS
        assert model.sparse_templates.data.shape == (4, N_TIMES, n_local)
        assert model.sparse_templates.cols.shape == (4, n_local)
        peaks = [1, n_channels // 2, n_channels - 2]
        for unit, peak in enumerate(peaks):
            assert model.get_template(unit).best_channel == peak
        assert model.similar_templates.shape == (4, 4)
    finally:
        model.close()


def test_phy_folder_reads_in_spikeinterface(tmp_path):
    from spikeinterface.extractors import read_kilosort, read_phy

    logging.getLogger("spikeinterface").setLevel(logging.ERROR)
    sort = make_sort(n_channels=6)
    folder = write_folder(tmp_path, sort, n_channels_dat=6)
    spikes = sort["spikes"]
    sorting = read_phy(folder)
    assert list(sorting.unit_ids) == [0, 1, 2, 3]
    for unit in range(4):
        np.testing.assert_array_equal(
            sorting.get_unit_spike_train(unit),
            spikes["sample_index"][spikes["unit_index"] == unit],
        )
    assert list(sorting.get_property("quality")) == ["good", "mua", "noise", "noise"]
    np.testing.assert_allclose(sorting.get_property("snr"), [8.0, 7.0, 1.0, 6.0])
    kilosort = read_kilosort(folder)
    assert list(kilosort.unit_ids) == [0, 1, 2]  # empty unit removed
    np.testing.assert_array_equal(
        kilosort.get_unit_spike_train(2),
        spikes["sample_index"][spikes["unit_index"] == 2],
    )
    assert read_phy(folder, exclude_cluster_groups=["noise"]).unit_ids.tolist() == [
        0,
        1,
    ]


def test_phy_folder_params_and_atomic_replace(tmp_path):
    sort = make_sort(n_channels=6)
    folder = write_folder(tmp_path, sort, n_channels_dat=6, metrics=None)
    (folder / "stale.txt").write_text("from an older export")
    write_folder(tmp_path, sort, n_channels_dat=6, hp_filtered=True)
    params = runpy.run_path(str(folder / "params.py"))
    assert params["dat_path"] == str(tmp_path / "raw.dat")
    assert params["dtype"] == "int16" and params["offset"] == 0
    assert params["sample_rate"] == FS and params["hp_filtered"] is True
    assert not (folder / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phy", "raw.dat"]
    assert np.load(folder / "spike_times.npy").dtype == np.uint64
    assert np.load(folder / "pc_feature_ind.npy").dtype == np.uint32
    wm = np.load(folder / "whitening_mat.npy")
    np.testing.assert_allclose(
        wm @ np.load(folder / "whitening_mat_inv.npy"), np.eye(6), atol=1e-9
    )


def test_phy_folder_failed_write_leaves_previous_folder(tmp_path, monkeypatch):
    sort = make_sort(n_channels=6)
    folder = write_folder(tmp_path, sort, n_channels_dat=6)
    before = sorted(p.name for p in folder.iterdir())

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_folder(tmp_path, sort, n_channels_dat=6)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phy", "raw.dat"]


def test_phy_folder_with_no_spikes(tmp_path):
    sort = make_sort(n_channels=6)
    sort["spikes"] = sort["spikes"][:0]
    sort["pc_features"] = sort["pc_features"][:0]
    folder = write_folder(tmp_path, sort, n_channels_dat=6)
    assert np.load(folder / "spike_times.npy").shape == (0,)
    assert np.load(folder / "pc_features.npy").shape == (0, 3, 4)
    assert (folder / "cluster_group.tsv").read_text().count("noise") == 4


def test_phy_folder_argument_errors(tmp_path):
    sort = make_sort(n_channels=6)
    unsorted = sort["spikes"][::-1]
    with pytest.raises(ValueError, match=r"sample_index'\] must be >= 0 and ascending"):
        write_folder(tmp_path, dict(sort, spikes=unsorted), n_channels_dat=6)
    with pytest.raises(
        ValueError, match=r"channel_map must be 6 dat columns in \[0, 6\)"
    ):
        write_folder(tmp_path, sort, n_channels_dat=6, channel_map=np.arange(1, 7))
    with pytest.raises(ValueError, match="metric names must be identifiers"):
        write_folder(tmp_path, sort, n_channels_dat=6, metrics={"bad name": np.ones(4)})
    with pytest.raises(ValueError, match=r"metrics\['snr'\] must have shape \(4,\)"):
        write_folder(tmp_path, sort, n_channels_dat=6, metrics={"snr": np.ones(3)})
    assert not (tmp_path / "phy").exists()


# ---------------------------------------------------------------------------
# NWB
# ---------------------------------------------------------------------------

START = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)


def write_nwb_file(tmp_path, sort, **overrides):
    templates_uv = nwb.unwhiten_templates(
        sort["templates"], sort["whitening"], sort["scales_uv"]
    )
    kwargs = {
        "spikes": sort["spikes"],
        "sampling_rate_hz": FS,
        "templates_uv": templates_uv,
        "channel_positions_um": sort["channel_positions_um"],
        "unit_metrics": metrics_for(),
        "session_description": "test sort",
        "identifier": "abc-123",
        "session_start_time": START,
        "recording_name": "rec1",
        "pre_samples": PRE,
    }
    kwargs.update(overrides)
    return nwb.write_nwb(tmp_path / "out" / "sorting.nwb", **kwargs), templates_uv


def test_unwhiten_templates_inverts_the_workflow_whitening():
    rng = np.random.default_rng(2)
    whitening = rng.normal(size=(3, 3))
    scales = np.array([2.0, 3.0, 4.0])
    templates_uv = rng.normal(size=(2, 5, 3))
    whitened = (templates_uv / scales) @ whitening.T
    np.testing.assert_allclose(
        nwb.unwhiten_templates(whitened, whitening, scales), templates_uv, rtol=1e-5
    )


def test_nwb_round_trip(tmp_path):
    from pynwb import NWBHDF5IO

    sort = make_sort(n_channels=6)
    path, templates_uv = write_nwb_file(tmp_path, sort)
    assert sorted(p.name for p in path.parent.iterdir()) == ["sorting.nwb"]
    spikes = sort["spikes"]
    with NWBHDF5IO(path, "r") as io:
        nwbfile = io.read()
        assert nwbfile.session_id == "rec1" and nwbfile.identifier == "abc-123"
        electrodes = nwbfile.electrodes.to_dataframe()
        assert set(electrodes["group_name"]) == {"probe"}
        assert electrodes["group"].iloc[5].device.name == "probe"
        np.testing.assert_allclose(electrodes["rel_x"], 0.0)
        np.testing.assert_allclose(electrodes["rel_y"], 20.0 * np.arange(6))
        units = nwbfile.units
        assert units.waveform_rate == FS
        assert units.waveform_time_before_peak_in_ms == pytest.approx(1e3 * PRE / FS)
        assert list(units.id[:]) == [0, 1, 2, 3]
        for unit in range(4):
            np.testing.assert_allclose(
                units.get_unit_spike_times(unit),
                spikes["sample_index"][spikes["unit_index"] == unit] / FS,
            )
        np.testing.assert_allclose(units["waveform_mean"][1], templates_uv[1] * 1e-6)
        assert list(units["electrodes"][1].index) == list(range(6))
        assert list(units["peak_channel"][:]) == [1, 3, 4, 0]
        np.testing.assert_array_equal(units["snr"][:], [8.0, 7.0, 1.0, 6.0])
        assert np.isnan(units["amplitude_cutoff"][3])
        assert list(units["isi_violations_count"][:]) == [1, 9, 0, 0]


def test_nwb_file_passes_schema_validation(tmp_path):
    from pynwb import validate

    path, _ = write_nwb_file(tmp_path, make_sort(n_channels=6))
    assert validate(path=path) == []


def test_nwb_with_no_units(tmp_path):
    from pynwb import NWBHDF5IO

    sort = make_sort(n_channels=6)
    sort["templates"] = sort["templates"][:0]
    sort["spikes"] = sort["spikes"][:0]
    path, _ = write_nwb_file(tmp_path, sort, unit_metrics={})
    with NWBHDF5IO(path, "r") as io:
        assert len(io.read().units) == 0


def test_nwb_best_channels_only(tmp_path):
    from pynwb import NWBHDF5IO

    sort = make_sort(n_channels=6)
    path, templates_uv = write_nwb_file(tmp_path, sort, n_best_channels=3)
    with NWBHDF5IO(path, "r") as io:
        units = io.read().units
        channels = list(units["electrodes"][1].index)
        assert channels == [2, 3, 4]
        np.testing.assert_allclose(
            units["waveform_mean"][1], templates_uv[1][:, channels] * 1e-6
        )


def test_nwb_argument_errors(tmp_path):
    sort = make_sort(n_channels=6)
    naive = datetime.datetime(2024, 5, 1)
    with pytest.raises(ValueError, match="session_start_time must be timezone-aware"):
        write_nwb_file(tmp_path, sort, session_start_time=naive)
    with pytest.raises(ValueError, match="reserved column name 'spike_times'"):
        write_nwb_file(tmp_path, sort, unit_metrics={"spike_times": np.ones(4)})
    with pytest.raises(ValueError, match=r"n_best_channels must be in \[1, 6\]"):
        write_nwb_file(tmp_path, sort, n_best_channels=0)
    assert not (tmp_path / "out").exists()
