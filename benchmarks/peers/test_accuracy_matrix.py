"""Fast checks of the accuracy matrix's summaries (no sorter runs, no generation).

.venv/bin/python -m pytest -q -p no:cacheprovider benchmarks/peers/test_accuracy_matrix.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_matrix import (  # noqa: E402
    MATRIX,
    band_summary,
    check,
    missed_mid_snr,
    recording_key,
    snr_band,
)
from mearec_recordings import mean_waveforms, mearec_positions_offset  # noqa: E402
from recordings import neuropixels_positions  # noqa: E402


def _unit(i, snr, acc, prec=None, rec=None):
    return dict(gt_unit=i, snr=snr, accuracy=acc,
                precision=acc if prec is None else prec, recall=acc if rec is None else rec)


def _row(sorter, units, *, well=None, fp=0, recording="r", status="ok"):
    return dict(
        recording=recording, held_out=False, sorter=sorter, status=status,
        well_detected=sum(u["accuracy"] >= 0.8 for u in units) if well is None else well,
        false_positive_units=fp, _units=units,
    )


@pytest.mark.parametrize(
    "snr, band", [(0.5, "<3"), (2.999, "<3"), (3.0, "3-5"), (4.99, "3-5"), (5.0, "5-8"),
                  (7.9, "5-8"), (8.0, ">=8"), (40.0, ">=8")],
)
def test_snr_band_edges(snr, band):
    assert snr_band(snr) == band


def test_snr_band_rejects_negative():
    with pytest.raises(ValueError, match="snr must be >= 0"):
        snr_band(-1.0)


def test_band_summary_counts_well_detected_and_means():
    units = [_unit(0, 2.0, 0.1), _unit(1, 4.0, 0.9), _unit(2, 4.5, 0.5), _unit(3, 10.0, 0.95)]
    s = band_summary(units)
    assert s["<3"] == (0, 1, pytest.approx(0.1))
    assert s["3-5"] == (1, 2, pytest.approx(0.7))
    assert s["5-8"][:2] == (0, 0) and np.isnan(s["5-8"][2])
    assert s[">=8"] == (1, 1, pytest.approx(0.95))


def test_check_passes_against_the_best_peer_by_well_detected():
    ss = _row("shardsort", [_unit(0, 9.0, 0.9), _unit(1, 4.0, 0.85)], fp=2)
    # SC2 finds more units than TDC2 and has 1 FP: it is the best peer; TDC2's
    # 0 FP does not count against shardsort.
    sc2 = _row("SpykingCircus2", [_unit(0, 9.0, 0.9), _unit(1, 4.0, 0.2)], well=2, fp=1)
    tdc2 = _row("Tridesclous2", [_unit(0, 9.0, 0.9)], well=1, fp=0)
    assert check([ss, sc2, tdc2]) == (True, "")


def test_check_reports_each_failure():
    ss = _row("shardsort", [_unit(0, 9.0, 0.3), _unit(1, 4.0, 0.9)], fp=4)
    peer = _row("MountainSort5", [_unit(0, 9.0, 0.9), _unit(1, 4.0, 0.9)], fp=1)
    ok, why = check([ss, peer])
    assert ok is False
    assert "well 1 < MountainSort5 2" in why
    assert "FP 4 > MountainSort5 1 + 1" in why
    assert "SNR>=8 without own unit: #0 (9.0)" in why


def test_check_without_shardsort_or_peers():
    peer = _row("Tridesclous2", [_unit(0, 9.0, 0.9)])
    assert check([peer]) == (None, "no shardsort run")
    assert check([_row("shardsort", [], status="failed"), peer])[0] is None
    ok, why = check([_row("shardsort", [_unit(0, 9.0, 0.6)]),
                     _row("Tridesclous2", [], status="failed")])
    assert ok is True and "no peer finished" in why


def test_missed_mid_snr_lists_units_a_peer_detects_with_a_hint():
    ss = _row("shardsort", [
        _unit(0, 3.5, 0.0, 0.0, 0.0),   # missed, a peer has it: no matching unit
        _unit(1, 4.0, 0.6, 0.95, 0.62),  # missed: low recall
        _unit(2, 4.5, 0.6, 0.62, 0.95),  # missed: low precision
        _unit(3, 4.0, 0.9),              # detected
        _unit(4, 6.0, 0.1),              # outside the band
        _unit(5, 3.2, 0.1),              # no peer detects it either
    ])
    peer = _row("SpykingCircus2", [_unit(i, u["snr"], 0.85) for i, u in enumerate(ss["_units"])])
    peer["_units"][5]["accuracy"] = 0.5
    missed = missed_mid_snr([ss, peer])
    assert [m["gt_unit"] for m in missed] == [0, 1, 2]
    assert [m["hint"] for m in missed] == ["no matching unit", "low recall", "low precision"]
    assert missed[0]["peers"] == {"SpykingCircus2": 0.85}


def test_matrix_names_are_unique_and_keys_stable():
    names = [e.name for e in MATRIX]
    assert len(names) == len(set(names))
    assert {e.generator for e in MATRIX} == {"spikeinterface", "shardsort", "mearec"}
    assert any(e.held_out for e in MATRIX if e.generator == "mearec")
    si32 = next(e for e in MATRIX if e.name == "si32_s601")
    assert recording_key(si32) == recording_key(si32)
    assert recording_key(si32) != recording_key(next(e for e in MATRIX if e.name == "si32_s602"))


def test_mearec_positions_offset_maps_centred_sites_back():
    pos = neuropixels_positions(16)
    centred = np.column_stack([np.zeros(16), pos - pos.mean(axis=0)])
    assert np.allclose(centred[:, 1:] + mearec_positions_offset(centred, pos), pos)
    with pytest.raises(ValueError, match="differ"):
        mearec_positions_offset(centred[::-1], pos)


def test_mean_waveforms_averages_around_spikes():
    traces = np.zeros((1000, 2))
    traces[[100, 300, 500], 1] = -10.0
    w = mean_waveforms(traces, [np.array([1, 100, 300, 500, 998])], half_width=3)
    assert w.shape == (1, 7, 2)
    assert w[0, 3, 1] == -10.0 and w[0, :, 0].sum() == 0.0
