"""Final unit curation after deconvolution.

Deconvolution gives every template the events it explains best. A template
built from noise (threshold crossings that clustered together) explains few
events, and those at the smallest allowed scaling: it was the mean of events
selected for being large, so unselected noise matches it only partly. A real
unit's events scatter around scaling 1. Units are therefore kept when they
have enough spikes, fire often enough, and their median amplitude (the
fitted template scaling) is not far below 1.

A template can also be made of what other units leave behind: events where a
large unit's spike differs from its template (or two units collide) leave a
residual that a template built from such events matches. Its spikes then sit
on another unit's spikes, at a lag of up to a couple of milliseconds (the
residual of the big unit's slower phases), far more often than chance (the
other unit's rate times the window: a few %). When more than
``max_shared_fraction`` of a unit's spikes sit on one larger unit's, those
spikes are removed and the unit is judged again on the rest: a unit made of
residuals goes, a real unit that also picked up a neighbour's residuals stays
with its own spikes.

Every unit is also tested against what pure noise would give it: matching a
template at its threshold ``theta`` (squared noise SDs of its matching score)
accepts noise wherever the score, a smooth Gaussian process on noise, rises
above ``sqrt(theta)`` SDs: by Rice's formula about
``sqrt(2 (1 - rho)) / (2 pi) * exp(-theta / 2)`` times per sample, ``rho``
the score's lag-1 correlation on the recording's noise
(:func:`shardsort.templates.noise_lag_correlation`). A unit with more than
``max_noise_fraction`` of its spikes expected from noise alone is a noise
unit, whatever the number of channels or the recording's length: one test in
place of a fixed SNR gate that cannot fit 16 and 1,000 channels alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shardsort.checks import as_index_array


@dataclass(frozen=True)
class UnitSelection:
    """Which units survive, and why the others did not."""

    alive: npt.NDArray[np.bool_]  # (n_units,)
    n_spikes: npt.NDArray[np.int64]  # (n_units,)
    rate_hz: npt.NDArray[np.float64]  # (n_units,)
    median_amplitude: npt.NDArray[np.float64]  # (n_units,), NaN without spikes
    reasons: tuple[str, ...]  # (n_units,), "" for kept units
    keep_spike: npt.NDArray[np.bool_]  # (n_spikes,): spike of a kept unit, not a residual


def expected_noise_matches(
    thresholds: npt.ArrayLike, lag_correlation: npt.ArrayLike, *, n_samples: int
) -> npt.NDArray[np.float64]:
    """Matches pure noise gives each unit over ``n_samples`` (see the module docstring).

    Parameters
    ----------
    thresholds : array_like, shape (n_units,)
        Matching thresholds in squared noise SDs (:func:`shardsort.deconvolve.unit_thresholds`).
    lag_correlation : array_like, shape (n_units,)
        Lag-1 correlation of each unit's matching score on noise.
    n_samples : int
        Samples matched.

    Returns
    -------
    ndarray of float64, shape (n_units,)
    """
    theta = np.asarray(thresholds, dtype=np.float64)
    rho = np.asarray(lag_correlation, dtype=np.float64)
    if theta.shape != rho.shape or theta.ndim != 1:
        raise ValueError(
            f"thresholds {theta.shape} and lag_correlation {rho.shape} must be 1-D of one length"
        )
    if not np.all(theta > 0):
        raise ValueError("thresholds must be > 0")
    if not np.all((rho >= -1) & (rho < 1)):
        raise ValueError("lag_correlation must lie in [-1, 1)")
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    per_sample = np.sqrt(2.0 * (1.0 - rho)) / (2.0 * np.pi) * np.exp(-0.5 * theta)
    return per_sample * float(n_samples)


def _judge(units, amps, n_units, duration_s, min_spikes, min_rate_hz, min_median_amplitude,
           noise, max_noise_fraction):
    """Counts, rates, median amplitudes and the reason (or "") for every unit."""
    counts = np.bincount(units, minlength=n_units).astype(np.int64)
    rate = counts / float(duration_s)
    median = np.full(n_units, np.nan)
    if units.size:
        # Grouped by unit (an index array only); each unit's median in float64.
        order = np.argsort(units, kind="stable")
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        for unit in np.flatnonzero(counts):
            mine = order[starts[unit] : starts[unit] + counts[unit]]
            median[unit] = np.median(amps[mine].astype(np.float64))
    reasons = []
    for unit in range(n_units):
        if counts[unit] < min_spikes:
            reasons.append(f"{counts[unit]} spikes < {min_spikes}")
        elif rate[unit] < min_rate_hz:
            reasons.append(f"rate {rate[unit]:.3g} Hz < {min_rate_hz:g} Hz")
        elif median[unit] < min_median_amplitude:
            reasons.append(f"median amplitude {median[unit]:.2f} < {min_median_amplitude:g}")
        elif noise is not None and noise[unit] > max_noise_fraction * counts[unit]:
            reasons.append(
                f"{noise[unit]:.0f} of its {counts[unit]} spikes expected from noise alone "
                f"> {max_noise_fraction:g}"
            )
        else:
            reasons.append("")
    return counts, rate, median, reasons


def shared_spikes(
    sample_index: npt.ArrayLike,
    unit_index: npt.ArrayLike,
    eligible: npt.ArrayLike,
    *,
    window_samples: int,
    max_shared_fraction: float,
    size: npt.ArrayLike | None = None,
    min_z: float | None = None,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Spikes that ride on larger units' spikes.

    "Larger" is by ``size`` when given (one value per unit, e.g. the
    template's norm: a big spike's subtraction residue is fitted by a
    smaller template, however many spikes that unit collected elsewhere),
    else by number of spikes.

    With ``min_z`` None, the larger eligible unit on whose spikes (within
    ``window_samples``) most of a unit's spikes lie is its partner, and when
    that fraction exceeds ``max_shared_fraction`` those spikes are marked.

    With ``min_z``, every larger unit on whose spikes a unit's spikes lie more
    often than chance is a partner: the count near it exceeds what
    independent trains give (the partner's rate times the window's
    ``2 window_samples + 1`` samples, over the span of all spikes) by at
    least ``min_z`` binomial standard deviations. A unit of residues collects
    them from every big unit around it, each a modest share; when the spikes
    near any partner exceed ``max_shared_fraction`` of the unit's, all of
    them are marked.

    Returns
    -------
    riding : ndarray of bool, shape (n_spikes,)
    partner : ndarray of int64, shape (n_units,)
        The partner of each unit whose spikes were marked (with ``min_z``:
        the one sharing the most), else -1.
    fraction : ndarray of float64, shape (n_units,)
        Fraction of each unit's spikes on its partners' (without ``min_z``:
        on the one larger unit sharing the most).
    """
    times = np.asarray(sample_index, dtype=np.int64)
    units = as_index_array(unit_index)
    eligible = np.asarray(eligible, dtype=bool)
    n_units = eligible.size
    counts = np.bincount(units, minlength=n_units)
    rank = counts if size is None else np.asarray(size, dtype=np.float64)
    if rank.shape != (n_units,):
        raise ValueError(f"size must have one value per unit ({n_units}), got {rank.shape}")
    if min_z is not None and not min_z > 0:
        raise ValueError(f"min_z must be > 0, got {min_z!r}")
    span = float(times.max() - times.min() + 1) if times.size else 1.0
    # Each unit's spikes in time order (ties in table order): views of one
    # sort of the table, not one scan of it per unit.
    by_unit = np.lexsort((times, units))
    members = np.split(by_unit, np.cumsum(counts)[:-1]) if n_units else []
    riding = np.zeros(times.size, dtype=bool)
    partner = np.full(n_units, -1, dtype=np.int64)
    fraction = np.zeros(n_units)
    for unit in np.flatnonzero(eligible & (counts > 0)):
        own = times[members[unit]]
        best, best_near, best_other = 0.0, None, -1
        union = np.zeros(own.size, dtype=bool)
        for other in np.flatnonzero(eligible & (counts > 0) & (rank > rank[unit])):
            theirs = times[members[other]]
            right = np.searchsorted(theirs, own)
            near = np.zeros(own.size, dtype=bool)
            for k in (right - 1, right):
                ok = (k >= 0) & (k < theirs.size)
                near[ok] |= np.abs(theirs[k[ok]] - own[ok]) <= window_samples
            n_near = int(near.sum())
            share = n_near / own.size
            if min_z is not None:
                chance = min(1.0, theirs.size * (2 * window_samples + 1) / span)
                sd = np.sqrt(own.size * chance * (1.0 - chance))
                if n_near - own.size * chance < min_z * max(sd, 1.0):
                    continue
                union |= near
            if share > best:
                best, best_near, best_other = share, near, int(other)
        if min_z is not None:
            best, best_near = float(union.mean()), union
        fraction[unit] = best
        if best > max_shared_fraction:
            riding[members[unit][best_near]] = True
            partner[unit] = best_other
    return riding, partner, fraction


def select_units(
    unit_index: npt.ArrayLike,
    amplitude: npt.ArrayLike,
    *,
    n_units: int,
    duration_s: float,
    min_spikes: int = 20,
    min_rate_hz: float = 0.0,
    min_median_amplitude: float = 0.0,
    sample_index: npt.ArrayLike | None = None,
    shared_window_samples: int = 0,
    max_shared_fraction: float = 1.0,
    expected_noise: npt.ArrayLike | None = None,
    max_noise_fraction: float = 1.0,
    unit_size: npt.ArrayLike | None = None,
    shared_min_z: float | None = None,
) -> UnitSelection:
    """Keep units with enough spikes, a high enough rate and median amplitude.

    Parameters
    ----------
    unit_index : array_like of int, shape (n_spikes,)
        Unit of every spike, in ``[0, n_units)``.
    amplitude : array_like of float, shape (n_spikes,)
        Fitted template scaling of every spike.
    n_units : int
        Number of units (units without spikes are removed).
    duration_s : float
        Recording duration, for the firing rate.
    min_spikes, min_rate_hz, min_median_amplitude
        Thresholds; a unit must reach all three.
    sample_index : array_like of int, shape (n_spikes,), optional
        Spike times; with it, when more than ``max_shared_fraction`` of a
        passing unit's spikes lie within ``shared_window_samples`` of spikes of
        one other passing unit with more spikes (:func:`shared_spikes`), those
        spikes are dropped (``keep_spike``) and the unit is judged again on
        the rest. With ``unit_size`` (one value per unit), "larger" means
        larger by it (:func:`shared_spikes`).
    shared_window_samples : int
    max_shared_fraction : float
    expected_noise : array_like, shape (n_units,), optional
        Matches pure noise would give each unit (:func:`expected_noise_matches`);
        a unit is removed when more than ``max_noise_fraction`` of its spikes
        could be such matches.
    max_noise_fraction : float
    shared_min_z : float, optional
        Count the spikes on every larger unit whose spikes a unit's lie on
        more often than chance by this many standard deviations, together
        (:func:`shared_spikes`), not only on the one sharing the most.

    Returns
    -------
    UnitSelection
    """
    # As given (no int64/float64 copies of a long recording's columns).
    units = as_index_array(unit_index)
    amps = np.asarray(amplitude)
    if units.shape != amps.shape or units.ndim != 1:
        raise ValueError(
            f"unit_index and amplitude must be 1-D of one length, got shapes "
            f"{units.shape} and {amps.shape}"
        )
    if n_units < 0:
        raise ValueError(f"n_units must be >= 0, got {n_units}")
    if units.size and (units.min() < 0 or units.max() >= n_units):
        raise ValueError(f"unit_index must lie in [0, {n_units}), got [{units.min()}, {units.max()}]")
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    noise = None
    if expected_noise is not None:
        noise = np.asarray(expected_noise, dtype=np.float64)
        if noise.shape != (n_units,):
            raise ValueError(f"expected_noise must have shape ({n_units},), got {noise.shape}")
    keep_spike = np.ones(units.size, dtype=bool)
    counts, rate, median, reasons = _judge(
        units, amps, n_units, duration_s, min_spikes, min_rate_hz, min_median_amplitude,
        noise, max_noise_fraction,
    )
    alive = np.array([not r for r in reasons], dtype=bool)
    if sample_index is not None and max_shared_fraction < 1.0 and alive.sum() > 1:
        times = np.asarray(sample_index, dtype=np.int64)
        if times.shape != units.shape:
            raise ValueError(
                f"sample_index must have the shape of unit_index {units.shape}, "
                f"got {times.shape}"
            )
        if shared_window_samples < 0:
            raise ValueError(
                f"shared_window_samples must be >= 0, got {shared_window_samples}"
            )
        # Spikes of a unit that sit on one larger unit's spikes far more often
        # than chance are that unit's residuals: they go, and the unit is
        # judged again on what is left (a real unit that also picked up a
        # neighbour's residuals stays; a unit made of residuals goes).
        riding, partners, fractions = shared_spikes(
            times, units, alive, window_samples=shared_window_samples,
            max_shared_fraction=max_shared_fraction, size=unit_size, min_z=shared_min_z,
        )
        keep_spike = alive[units] & ~riding
        counts_left, rate, median, reasons_left = _judge(
            units[keep_spike], amps[keep_spike], n_units, duration_s, min_spikes,
            min_rate_hz, min_median_amplitude, noise, max_noise_fraction,
        )
        for unit in np.flatnonzero(alive & (partners >= 0)):
            on = (f"unit {partners[unit]}'s" if shared_min_z is None
                  else f"larger units' (most on unit {partners[unit]}'s)")
            shared = f"{fractions[unit]:.0%} of its spikes on {on} > {max_shared_fraction:.0%}"
            reasons[unit] = f"{shared}, then {reasons_left[unit]}" if reasons_left[unit] else ""
        alive = np.array([not r for r in reasons], dtype=bool)
        counts = counts_left
    if units.size:
        keep_spike &= alive[units]
    return UnitSelection(alive, counts, rate, median, tuple(reasons), keep_spike)
