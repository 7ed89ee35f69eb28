"""Merging units after deconvolution (shardsort.unitmerge)."""

import numpy as np
import pytest

from shardsort.unitmerge import merge_units

RATE = 30000.0
N_SAMPLES = int(300 * RATE)
POSITIONS = np.stack([np.tile([0.0, 20.0], 8), np.repeat(np.arange(8) * 20.0, 2)], axis=1)
SETTINGS = dict(
    n_samples=N_SAMPLES,
    bin_samples=int(2 * RATE),
    max_shift_samples=6,
    radius_um=100.0,
    min_cosine=0.85,
    max_amplitude_ratio=2.0,
    min_lag_samples=15,
    max_lag_samples=45,
    max_overlap_ratio=0.5,
    max_complementarity_z=-5.0,
    min_expected=8.0,
    max_violation_fraction=0.1,
    distinct_min_violations=3,
    distinct_violation_fraction=0.2,
)


def _template(peak_channel: int, *, width: float = 3.0, amplitude: float = 10.0) -> np.ndarray:
    t = np.arange(60)[:, None] - 20.0
    distance = np.linalg.norm(POSITIONS - POSITIONS[peak_channel], axis=1)[None, :]
    shape = -np.exp(-0.5 * (t / width) ** 2) + 0.3 * np.exp(-0.5 * ((t - 12) / 6.0) ** 2)
    return (amplitude * shape * np.exp(-distance / 30.0)).astype(np.float32)


def _train(rng: np.random.Generator, rate_hz: float, refractory: int = 60) -> np.ndarray:
    times = np.cumsum(rng.exponential(RATE / rate_hz, size=int(rate_hz * 400)) + refractory)
    return times[times < N_SAMPLES].astype(np.int64)


def _pieces_by_time(times: np.ndarray, period_s: float = 40.0) -> np.ndarray:
    """0 in the first half of every drift period, 1 in the second."""
    phase = (times / RATE) % period_s
    return (phase >= period_s / 2).astype(np.int64)


def _run(times, units, templates):
    order = np.argsort(times, kind="stable")
    return merge_units(times[order], units[order], templates, POSITIONS, **SETTINGS), order


def test_drift_pieces_complementary_in_time_are_merged_onto_the_larger_one():
    rng = np.random.default_rng(0)
    neuron = _train(rng, 8.0)
    piece = _pieces_by_time(neuron)
    # Piece 1 holds fewer spikes: only 40 % of its half-periods' spikes are kept
    # elsewhere, so piece 0 is the larger and keeps its index.
    base = _template(6)
    shifted = np.roll(base, 2, axis=0) * 1.2  # the unit seen lower on the probe, 2 samples later
    other = _template(12)
    times = np.concatenate([neuron, _train(rng, 5.0)])
    units = np.concatenate([piece, np.full(len(times) - len(neuron), 2)])
    result, _ = _run(times, units, np.stack([base, shifted, other]))
    assert [(d.kept, d.absorbed) for d in result.decisions] == [(int(np.bincount(piece).argmax()), int(np.bincount(piece).argmin()))]
    assert result.decisions[0].reason == "complementary in time"
    assert result.mapping.tolist()[2] == 1 and result.mapping[0] == result.mapping[1] == 0
    assert len(result.templates) == 2
    kept, absorbed = result.decisions[0].kept, result.decisions[0].absorbed
    # The absorbed piece's spikes move by its lag onto the kept template.
    expected_shift = 2 if kept == 0 else -2
    assert result.shifts[absorbed] == expected_shift and result.shifts[kept] == 0


def test_two_neurons_with_similar_templates_firing_independently_stay_apart():
    rng = np.random.default_rng(1)
    a, b = _train(rng, 10.0), _train(rng, 10.0)
    times = np.concatenate([a, b])
    units = np.r_[np.zeros(len(a), np.int64), np.ones(len(b), np.int64)]
    templates = np.stack([_template(6), _template(6, width=3.3) * 1.1])
    result, _ = _run(times, units, templates)
    assert result.decisions == ()
    assert result.mapping.tolist() == [0, 1]


def test_pieces_of_one_neuron_without_drift_are_merged_by_their_missing_refractory_violations():
    rng = np.random.default_rng(2)
    neuron = _train(rng, 15.0)
    units = rng.integers(0, 2, size=len(neuron))  # split at random, both pieces fire throughout
    templates = np.stack([_template(6), _template(6) * 1.3])
    result, _ = _run(neuron, units, templates)
    assert len(result.decisions) == 1
    assert result.decisions[0].reason == "no refractory violations"
    assert result.decisions[0].observed == 0 and result.decisions[0].expected >= 8
    assert result.mapping.tolist() == [0, 0]


def test_complementary_units_with_different_templates_are_not_merged():
    rng = np.random.default_rng(3)
    neuron = _train(rng, 8.0)
    piece = _pieces_by_time(neuron)
    templates = np.stack([_template(2), _template(6)])  # 40 µm apart: cosine far below 0.85
    result, _ = _run(neuron, piece, templates)
    assert result.decisions == ()


def test_a_neuron_cut_in_three_pieces_joins_up():
    rng = np.random.default_rng(4)
    neuron = _train(rng, 12.0)
    phase = (neuron / RATE) % 60.0
    units = np.digitize(phase, [20.0, 40.0]).astype(np.int64)
    templates = np.stack([_template(6), _template(6, width=3.2), _template(6, width=3.4) * 0.9])
    result, _ = _run(neuron, units, templates)
    assert result.mapping.tolist() == [0, 0, 0]
    assert len(result.templates) == 1


def test_result_does_not_depend_on_unit_numbering():
    rng = np.random.default_rng(5)
    neuron = _train(rng, 8.0)
    piece = _pieces_by_time(neuron)
    other = _train(rng, 6.0)
    times = np.concatenate([neuron, other])
    units = np.concatenate([piece, np.full(len(other), 2)])
    templates = np.stack([_template(6), _template(6, width=3.3), _template(6, width=3.1) * 1.05])
    first, _ = _run(times, units, templates)
    permutation = np.array([2, 0, 1])  # old unit u becomes permutation[u]
    second, _ = _run(times, permutation[units], templates[np.argsort(permutation)])
    groups_first = {tuple(np.flatnonzero(first.mapping == g)) for g in np.unique(first.mapping)}
    groups_second = {
        tuple(sorted(np.argsort(permutation)[np.flatnonzero(second.mapping == g)]))
        for g in np.unique(second.mapping)
    }
    assert groups_first == groups_second


@pytest.mark.parametrize("n_units", [0, 1])
def test_no_or_one_unit_is_returned_unchanged(n_units):
    templates = np.stack([_template(6)] * n_units) if n_units else np.zeros((0, 60, 16), np.float32)
    times = np.arange(0, 100 * n_units, 10, dtype=np.int64)
    result = merge_units(times, np.zeros(len(times), np.int64), templates, POSITIONS, **SETTINGS)
    assert result.mapping.tolist() == list(range(n_units))
    assert result.templates.shape == templates.shape
    assert result.decisions == ()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unit_index must lie in"):
        merge_units(np.array([1]), np.array([3]), np.stack([_template(6)] * 2), POSITIONS, **SETTINGS)
    with pytest.raises(ValueError, match="positions_um must have shape"):
        merge_units(np.array([1]), np.array([0]), np.stack([_template(6)] * 2), POSITIONS[:4], **SETTINGS)


def test_a_piece_joins_its_neuron_once_a_neighbour_is_cut_off_it():
    """Neuron X is split over units 0 and 1; unit 0 also holds neighbour Y's
    spikes (amplitude 0.7 of X's). Y's spikes come within a refractory period
    of X's as independent trains do, so units 0 and 1 are not merged; cut on
    amplitude (shardsort.unitsplit), the part of X merges with unit 1 (what
    merge_units' second pass does)."""
    from shardsort.unitsplit import split_units

    rng = np.random.default_rng(12)
    x = _train(rng, 12.0)
    y = _train(rng, 10.0)
    x_in_0 = rng.random(x.size) < 0.4
    times = np.concatenate([x[x_in_0], y, x[~x_in_0]])
    units = np.repeat([0, 0, 1], [x_in_0.sum(), y.size, (~x_in_0).sum()])
    amps = np.concatenate([1.0 + 0.05 * rng.standard_normal(x_in_0.sum()),
                           0.7 + 0.05 * rng.standard_normal(y.size),
                           1.0 + 0.05 * rng.standard_normal((~x_in_0).sum())])
    order = np.argsort(times, kind="stable")
    times, units, amps = times[order], units[order], amps[order]
    is_y = np.isin(times, y) & (units == 0)
    templates = np.stack([_template(5), _template(5)])
    before, _ = _run(times, units, templates)
    assert before.decisions == ()  # Y's violations keep 0 and 1 apart
    features = np.zeros((times.size, 3, 4))  # the features carry nothing
    labels, parent, cuts = split_units(
        times, units, features, amplitudes=amps, amplitude_bounds=(0.6, 1.6), n_units=2,
        n_samples=N_SAMPLES, bin_samples=int(2 * RATE), min_part=50, split_threshold=2.25,
        max_overlap_ratio=0.5, max_complementarity_z=-5.0,
    )
    assert len(cuts) == 1 and cuts[0].unit == 0 and cuts[0].on == "amplitude"
    y_label = int(np.bincount(labels[is_y]).argmax())
    x_part = ({0, cuts[0].new} - {y_label}).pop()
    assert np.mean(labels[is_y] == y_label) > 0.95
    assert np.mean(labels[~is_y & (units == 0)] == x_part) > 0.95
    scales = np.ones(3)
    scales[y_label] = 0.7
    after, _ = _run(times, labels, templates[[0, 1, 0]] * scales[:, None, None].astype(np.float32))
    assert len(after.decisions) == 1
    assert after.mapping[x_part] == after.mapping[1] != after.mapping[y_label]
