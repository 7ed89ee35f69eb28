"""shardsort as a SpikeInterface sorter: registration and parameters (no sort)."""

from __future__ import annotations

import numpy as np
import pytest

from shardsort import spikeinterface as si_bridge


def test_register_makes_run_sorter_find_shardsort():
    from spikeinterface.sorters import get_default_sorter_params, sorterlist

    cls = si_bridge.register()
    assert sorterlist.sorter_dict["shardsort"] is cls
    assert si_bridge.register() is cls and sorterlist.sorter_full_list.count(cls) == 1
    params = get_default_sorter_params("shardsort")
    assert params["n_jobs"] == 1 and params["detect"]["threshold"] == 4.0
    assert "recordings" not in params and "demo" not in params


def test_parameters_are_config_sections():
    assert si_bridge.check_params({"detect": {"threshold": np.float64(4.5)}}) == {
        "detect": {"threshold": 4.5}
    }
    with pytest.raises(ValueError, match=r"shardsort parameters \['detect_threshold'\]"):
        si_bridge.check_params({"detect_threshold": 4.5})


def test_recordings_without_probe_or_with_segments_are_refused(tmp_path):
    from spikeinterface.core import NumpyRecording

    data = np.zeros((100, 4), np.int16)
    with pytest.raises(
        ValueError, match=r"no channel locations \(.*\): attach its probe with"
    ):
        si_bridge.write_inputs(NumpyRecording([data], 30000.0), tmp_path)
    with pytest.raises(ValueError, match="recording has 2 segments: expected 1"):
        si_bridge.write_inputs(NumpyRecording([data, data], 30000.0), tmp_path)
