"""Unit curation after deconvolution (shardsort.curation)."""

import numpy as np
import pytest

from shardsort.curation import select_units, shared_spikes


def _spikes(spec, seed=0):
    """spec: list of (n_spikes, amplitude centre) per unit."""
    rng = np.random.default_rng(seed)
    units = np.concatenate([np.full(n, u) for u, (n, _) in enumerate(spec)])
    amps = np.concatenate([rng.normal(c, 0.05, n) for n, c in spec])
    return units, amps


def test_keeps_real_units_and_removes_noise_templates():
    # unit 0: real; 1: too few spikes; 2: too rare; 3: events at the lower bound
    units, amps = _spikes([(500, 1.0), (10, 1.0), (30, 1.0), (400, 0.62)])
    sel = select_units(
        units, amps, n_units=5, duration_s=600.0,
        min_spikes=20, min_rate_hz=0.1, min_median_amplitude=0.8,
    )
    assert sel.alive.tolist() == [True, False, False, False, False]
    assert sel.n_spikes.tolist() == [500, 10, 30, 400, 0]
    assert sel.rate_hz[0] == pytest.approx(500 / 600)
    assert sel.median_amplitude[3] == pytest.approx(0.62, abs=0.02)
    assert np.isnan(sel.median_amplitude[4])
    assert "spikes" in sel.reasons[1] and "rate" in sel.reasons[2]
    assert "median amplitude" in sel.reasons[3] and sel.reasons[0] == ""


def test_spike_order_does_not_matter():
    units, amps = _spikes([(300, 1.0), (200, 0.7), (250, 0.95)])
    perm = np.random.default_rng(1).permutation(units.size)
    a = select_units(units, amps, n_units=3, duration_s=100.0, min_median_amplitude=0.8)
    b = select_units(units[perm], amps[perm], n_units=3, duration_s=100.0, min_median_amplitude=0.8)
    assert a.alive.tolist() == b.alive.tolist() == [True, False, True]
    np.testing.assert_array_equal(a.median_amplitude, b.median_amplitude)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(unit_index=[0, 5], amplitude=[1.0, 1.0], n_units=3, duration_s=1.0), "unit_index"),
        (dict(unit_index=[0], amplitude=[1.0, 1.0], n_units=3, duration_s=1.0), "one length"),
        (dict(unit_index=[0], amplitude=[1.0], n_units=3, duration_s=0.0), "duration_s"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_units(**kwargs)


def test_spikes_riding_on_a_larger_units_spikes_are_removed():
    """A residual template fires on a big unit's spikes: those spikes go, and a
    unit made of little else goes with them; a real unit that also picked up
    residuals keeps its own spikes; an independent unit keeps all of its."""
    rng = np.random.default_rng(4)
    duration = 300 * 30_000
    big = np.sort(rng.choice(duration, 3000, replace=False))
    independent = np.sort(rng.choice(duration, 400, replace=False))
    # unit 2: 40 % of its spikes lie 0-10 samples after the big unit's, the
    # rest are its own; unit 3: residuals only, and a few chance spikes.
    riding = rng.choice(big, 160, replace=False) + rng.integers(0, 11, 160)
    own = np.sort(rng.choice(duration, 240, replace=False))
    residual = np.concatenate([rng.choice(big, 190, replace=False) + rng.integers(0, 11, 190),
                               rng.choice(duration, 10, replace=False)])
    times = np.concatenate([big, independent, riding, own, residual])
    units = np.repeat([0, 1, 2, 2, 3], [big.size, independent.size, riding.size, own.size,
                                        residual.size])
    amps = np.ones(times.size)
    kwargs = dict(n_units=4, duration_s=300.0, sample_index=times, shared_window_samples=15)
    sel = select_units(units, amps, max_shared_fraction=0.2, **kwargs)
    assert sel.alive.tolist() == [True, True, True, False]
    assert "on unit 0's" in sel.reasons[3] and "spikes < 20" in sel.reasons[3]
    kept = sel.keep_spike
    assert kept[units == 0].all() and kept[units == 1].all()
    assert not kept[units == 3].any()
    # unit 2 loses the riding spikes and at most the own spikes that fall near
    # a big-unit spike by chance (3000 x 31 samples / 9e6: ~1 %)
    lost = ~kept[units == 2]
    assert lost[: riding.size].all()
    assert lost[riding.size :].sum() <= 10
    assert sel.n_spikes[2] == (units == 2).sum() - lost.sum()
    # the test is off by default and with a fraction of 1
    assert select_units(units, amps, **kwargs).alive.all()
    # shuffled input: same decision, same spikes
    perm = rng.permutation(times.size)
    again = select_units(units[perm], amps, max_shared_fraction=0.2,
                         **{**kwargs, "sample_index": times[perm]})
    assert again.alive.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(again.keep_spike, kept[perm])
    with pytest.raises(ValueError, match="sample_index must have the shape"):
        select_units(units, amps, max_shared_fraction=0.2,
                     **{**kwargs, "sample_index": times[:-1]})


def test_a_big_unit_never_rides_on_a_unit_of_its_residues():
    """A unit of residues (small template) that fired on a big unit's spikes and
    on many others has more spikes than the big unit: ranked by template size,
    the residues go and the big unit keeps every spike."""
    rng = np.random.default_rng(8)
    duration = 120 * 30_000
    big = np.sort(rng.choice(duration, 900, replace=False))
    residues = np.concatenate([big[rng.random(big.size) < 0.6] + rng.integers(0, 6, 1).item(),
                               rng.choice(duration, 1500, replace=False)])
    times = np.concatenate([big, residues])
    units = np.repeat([0, 1], [big.size, residues.size])
    amps = np.ones(times.size)
    kwargs = dict(n_units=2, duration_s=120.0, sample_index=times, shared_window_samples=60,
                  max_shared_fraction=0.3)
    # By spike count the big unit (900 spikes) rides on the residues' (1,440+).
    by_count = select_units(units, amps, **kwargs)
    assert not by_count.keep_spike[units == 0].all()
    by_size = select_units(units, amps, unit_size=[60.0, 4.0], **kwargs)
    assert by_size.keep_spike[units == 0].all()
    assert by_size.n_spikes[0] == big.size
    with pytest.raises(ValueError, match="size must have one value per unit"):
        select_units(units, amps, unit_size=[1.0], **kwargs)


def test_residues_of_several_big_units_are_counted_together():
    """A residue template fires after the spikes of four big units, a fifth of
    its spikes on each: no single partner reaches the shared fraction, all of
    them together do. An independent unit next to the same big units keeps
    every spike (its chance coincidences are no partner)."""
    rng = np.random.default_rng(21)
    duration = 300 * 30_000
    bigs = [np.sort(rng.choice(duration, 3000, replace=False)) for _ in range(4)]
    residue = np.concatenate(
        [rng.choice(b, 200, replace=False) + rng.integers(20, 50, 200) for b in bigs]
        + [rng.choice(duration, 150, replace=False)]
    )
    independent = np.sort(rng.choice(duration, 2000, replace=False))
    times = np.concatenate(bigs + [residue, independent])
    units = np.repeat(np.arange(6), [b.size for b in bigs] + [residue.size, independent.size])
    amps = np.ones(times.size)
    size = [50.0, 40.0, 30.0, 20.0, 5.0, 6.0]
    kwargs = dict(n_units=6, duration_s=300.0, sample_index=times, shared_window_samples=60,
                  max_shared_fraction=0.3, unit_size=size)
    one = select_units(units, amps, **kwargs)
    assert one.alive.all()  # no single big unit holds 30 % of the residues
    together = select_units(units, amps, shared_min_z=4.0, **kwargs)
    assert together.alive.tolist() == [True] * 4 + [True, True]
    kept = together.keep_spike
    # the residues' own (chance) spikes stay, nearly all riding ones go
    assert (~kept[units == 4][:800]).mean() > 0.95
    assert together.n_spikes[4] < 200
    assert kept[units == 5].all() and kept[units < 4].all()
    riding, partner, fraction = shared_spikes(
        times, units, np.ones(6, bool), window_samples=60, max_shared_fraction=0.3, size=size,
        min_z=4.0,
    )
    assert fraction[4] > 0.75 and partner[4] in (0, 1, 2, 3)
    assert fraction[5] == 0.0 and partner[5] == -1
    with pytest.raises(ValueError, match="min_z must be > 0"):
        shared_spikes(times, units, np.ones(6, bool), window_samples=60,
                      max_shared_fraction=0.3, min_z=0.0)
