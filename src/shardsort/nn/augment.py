"""Training data for the neural networks, made from the recording itself.

YASS trains its detector and collision triage on spikes synthesised from the
templates of a first threshold-based pass, added to noise drawn with the
recording's own statistics. Everything here is numpy only and seeded: the
same arguments give the same arrays.

Noise model
    :func:`estimate_noise_model` fits a separable Gaussian model to spike-free
    preprocessed traces: a spatial covariance (n_channels, n_channels) times a
    temporal autocorrelation, the latter as an autoregressive (AR) model fitted
    by Yule-Walker. An AR(p) fit reproduces the measured autocorrelation at
    lags 0..p exactly and extends it to every lag as a valid (positive
    definite) covariance, so noise of any length can be drawn exactly from
    the stationary process (:func:`simulate_noise`).

Examples on neighbourhoods
    The detector's output on a channel depends only on the traces of that
    channel's K nearest channels, so a detector example is a *patch*: a window
    of ``window_samples`` on the K channels of one centre channel, with a
    target for the centre channel only. Training on patches is exact for that
    architecture and independent of the probe size. A triage example is a
    snippet on the K channels of the spike's main channel.

Neighbour tables are (n_channels, K) integer arrays, self first, with ``-1``
marking a missing neighbour (read as a silent channel); see
:func:`shardsort.nn.detector.neighbour_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import linalg, signal

from ..checks import check_int as _check_int

#: Examples generated per batch, so memory stays bounded for large sets.
_BATCH_EXAMPLES = 4096


@dataclass(frozen=True)
class NoiseModel:
    """Separable Gaussian noise model: spatial covariance times AR process.

    The covariance between channel i at time t and channel j at time t + lag
    is ``spatial_covariance[i, j] * autocorrelation(lag)``, where the
    autocorrelation is that of the unit-variance AR process
    ``x[t] = sum_k ar_coefficients[k] * x[t - 1 - k] + innovation_std * e[t]``.

    Attributes
    ----------
    spatial_covariance : ndarray of float64, shape (n_channels, n_channels)
        Zero-lag covariance between channels.
    autocorrelation : ndarray of float64, shape (n_lags + 1,)
        Measured temporal autocorrelation at lags 0..n_lags (first entry 1).
    ar_coefficients : ndarray of float64, shape (n_lags,)
        Yule-Walker AR coefficients matching ``autocorrelation``.
    innovation_std : float
        Standard deviation of the AR innovation (unit process variance).
    """

    spatial_covariance: npt.NDArray[np.float64]
    autocorrelation: npt.NDArray[np.float64]
    ar_coefficients: npt.NDArray[np.float64]
    innovation_std: float

    @property
    def n_channels(self) -> int:
        """Number of channels of the model."""
        return self.spatial_covariance.shape[0]


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_fraction(name: str, value: float) -> float:
    if not np.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def _check_range(
    name: str, value: tuple[float, float], *, minimum: float
) -> tuple[float, float]:
    low, high = value
    if not (np.isfinite(low) and np.isfinite(high) and minimum <= low <= high):
        raise ValueError(
            f"{name} must be a pair (low, high) with {minimum:g} <= low <= high, "
            f"got {value!r}"
        )
    return float(low), float(high)


def _check_amplitude(name: str, value: float) -> float:
    if isinstance(value, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_templates(
    templates: npt.ArrayLike, pre_samples: int
) -> tuple[npt.NDArray[np.float32], int]:
    array = np.asarray(templates, dtype=np.float32)
    if array.ndim != 3 or array.shape[1] == 0:
        raise ValueError(
            "templates must have shape (n_units, n_times, n_channels) with "
            f"n_times > 0, got {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("templates must be finite, got NaN or inf values")
    pre_samples = _check_int("pre_samples", pre_samples, 0)
    if pre_samples >= array.shape[1]:
        raise ValueError(
            f"pre_samples must be < n_times={array.shape[1]} of the templates, "
            f"got {pre_samples}"
        )
    return array, pre_samples


def _check_neighbours(
    neighbours: npt.ArrayLike, n_channels: int
) -> npt.NDArray[np.int64]:
    table = np.asarray(neighbours)
    if (
        table.ndim != 2
        or table.shape[0] != n_channels
        or table.shape[1] == 0
        or not np.issubdtype(table.dtype, np.integer)
    ):
        raise ValueError(
            f"neighbours must be an integer array of shape ({n_channels}, k) with "
            f"k >= 1, got {table.dtype} {table.shape}"
        )
    if table.size and (table.min() < -1 or table.max() >= n_channels):
        raise ValueError(
            f"neighbours must lie in [-1, {n_channels - 1}] (-1: no channel), "
            f"got range [{table.min()}, {table.max()}]"
        )
    return table.astype(np.int64)


def _check_noise_model(noise_model: NoiseModel, n_channels: int) -> None:
    if noise_model.n_channels != n_channels:
        raise ValueError(
            f"noise_model must describe {n_channels} channels (those of the "
            f"templates), got {noise_model.n_channels}"
        )


# ---------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------


def estimate_noise_model(
    noise_traces: npt.NDArray[np.floating], *, n_lags: int
) -> NoiseModel:
    """Fit the separable noise model to spike-free traces.

    Parameters
    ----------
    noise_traces : ndarray, shape (n_samples, n_channels) or (n_segments, n_samples, n_channels)
        Preprocessed traces free of spikes; several segments (e.g. snippets
        cut between spikes) are pooled without being joined, so no lag
        straddles two segments.
    n_lags : int
        Order of the AR model (>= 0): the autocorrelation is matched at lags
        0..n_lags. 0 gives temporally white noise. Must be < n_samples.

    Returns
    -------
    NoiseModel
        Means are removed per segment and channel. The autocorrelation is
        the average over channels of each channel's (biased, hence positive
        definite) autocorrelation; channels without variance are left out of
        it. Traces without any variance give white noise of zero covariance.
    """
    data = np.asarray(noise_traces, dtype=np.float64)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(
            "noise_traces must have shape (n_samples, n_channels) or "
            f"(n_segments, n_samples, n_channels), got {np.shape(noise_traces)}"
        )
    if not np.all(np.isfinite(data)):
        raise ValueError("noise_traces must be finite, got NaN or inf values")
    n_lags = _check_int("n_lags", n_lags, 0)
    n_segments, n_samples, n_channels = data.shape
    if n_segments == 0 or n_samples <= n_lags:
        raise ValueError(
            f"noise_traces must hold at least one segment of more than "
            f"n_lags={n_lags} samples, got shape {data.shape}"
        )
    data = data - data.mean(axis=1, keepdims=True)
    n_total = n_segments * n_samples
    flat = data.reshape(n_total, n_channels)
    covariance = flat.T @ flat / n_total

    variance = np.diag(covariance)
    live = variance > 0
    autocorrelation = np.zeros(n_lags + 1)
    autocorrelation[0] = 1.0
    if np.any(live):
        scaled = data[:, :, live] / np.sqrt(variance[live])
        for lag in range(1, n_lags + 1):
            products = scaled[:, :-lag] * scaled[:, lag:]
            autocorrelation[lag] = products.sum() / (n_total * scaled.shape[2])

    if n_lags:
        ar = linalg.solve_toeplitz(autocorrelation[:-1], autocorrelation[1:])
    else:
        ar = np.zeros(0)
    innovation_variance = 1.0 - float(ar @ autocorrelation[1:])
    return NoiseModel(
        spatial_covariance=covariance,
        autocorrelation=autocorrelation,
        ar_coefficients=ar,
        innovation_std=float(np.sqrt(max(innovation_variance, 0.0))),
    )


def _ar_series(
    noise_model: NoiseModel, n_series: int, n_samples: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Independent unit-variance stationary AR series, shape (n_series, n_samples).

    The first ``p`` samples are drawn from their exact stationary
    distribution (Toeplitz of the autocorrelation) and become the initial
    state of the recursion, so there is no burn-in transient.
    """
    ar = noise_model.ar_coefficients
    order = ar.size
    head_length = min(order, n_samples)
    if head_length == 0:
        return rng.standard_normal((n_series, n_samples))
    head_factor = linalg.cholesky(
        linalg.toeplitz(noise_model.autocorrelation[:head_length]), lower=True
    )
    head = rng.standard_normal((n_series, head_length)) @ head_factor.T
    if n_samples <= order:
        return head
    # State of lfilter's transposed direct form after the head: with numerator
    # [innovation_std] only, state k is sum_{j > k} ar[j - 1] * y[-(j - k)].
    lag_index = np.arange(order)[:, None] + np.arange(order)[None, :]
    state_map = np.where(lag_index < order, ar[np.minimum(lag_index, order - 1)], 0.0)
    state = head[:, ::-1] @ state_map
    white = rng.standard_normal((n_series, n_samples - order))
    tail, _ = signal.lfilter(
        [noise_model.innovation_std], np.r_[1.0, -ar], white, axis=1, zi=state
    )
    return np.concatenate([head, tail], axis=1)


def _batches(n_examples: int) -> list[slice]:
    """Slices of at most :data:`_BATCH_EXAMPLES` examples."""
    return [
        slice(start, start + _BATCH_EXAMPLES)
        for start in range(0, n_examples, _BATCH_EXAMPLES)
    ]


def _spatial_roots(
    covariance: npt.NDArray[np.float64], neighbours: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Symmetric square roots of each neighbourhood's covariance, (n_ch, K, K).

    Missing neighbours (-1) are silent channels: zero rows and columns.
    """
    n_channels = covariance.shape[0]
    padded = np.zeros((n_channels + 1, n_channels + 1))
    padded[:n_channels, :n_channels] = covariance
    table = np.where(neighbours < 0, n_channels, neighbours)
    blocks = padded[table[:, :, None], table[:, None, :]]
    eigenvalues, eigenvectors = np.linalg.eigh(blocks)
    roots = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * roots[:, None, :]) @ eigenvectors.transpose(0, 2, 1)


def _neighbourhood_noise(
    noise_model: NoiseModel,
    roots: npt.NDArray[np.float64],
    centres: npt.NDArray[np.int64],
    n_samples: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """Noise (n, n_samples, K) on the neighbourhood of each centre channel."""
    n_neighbours = roots.shape[1]
    noise = np.empty((centres.size, n_samples, n_neighbours), np.float32)
    for part in _batches(centres.size):
        n_part = centres[part].size
        series = _ar_series(noise_model, n_part * n_neighbours, n_samples, rng)
        series = series.reshape(n_part, n_neighbours, n_samples)
        noise[part] = np.einsum("nkt,njk->ntj", series, roots[centres[part]])
    return noise


def simulate_noise(
    noise_model: NoiseModel, *, n_samples: int, seed: int
) -> npt.NDArray[np.float32]:
    """Draw noise traces from a noise model.

    Parameters
    ----------
    noise_model : NoiseModel
        From :func:`estimate_noise_model`.
    n_samples : int
        Number of samples (>= 0).
    seed : int
        Seed of the random generator.

    Returns
    -------
    ndarray of float32, shape (n_samples, n_channels)
        A stationary Gaussian sample with the model's covariance at every
        lag (exactly, from the first sample on).
    """
    n_samples = _check_int("n_samples", n_samples, 0)
    rng = np.random.default_rng(seed)
    n_channels = noise_model.n_channels
    everything = np.arange(n_channels, dtype=np.int64)[None, :]
    root = _spatial_roots(noise_model.spatial_covariance, everything)[0]
    series = _ar_series(noise_model, n_channels, n_samples, rng)
    return (series.T @ root).astype(np.float32)


# ---------------------------------------------------------------------------
# Placing templates
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Units:
    """Per-unit facts the generators draw from."""

    templates: npt.NDArray[np.float32]  # (n_units, T, n_channels + 1), last = 0
    pre_samples: int
    main_channel: npt.NDArray[np.int64]  # (n_units,)
    usable: npt.NDArray[np.int64]  # units with a non-zero template
    channel_peak: npt.NDArray[np.float32]  # (n_units, n_channels + 1): max |t|


def _units(templates: npt.NDArray[np.float32], pre_samples: int) -> _Units:
    n_units, n_times, n_channels = templates.shape
    padded = np.zeros((n_units, n_times, n_channels + 1), np.float32)
    padded[:, :, :n_channels] = templates
    troughs = templates.min(axis=1, initial=np.inf)  # (n_units, n_channels)
    channel_peak = np.abs(padded).max(axis=1, initial=0.0)
    return _Units(
        templates=padded,
        pre_samples=pre_samples,
        main_channel=np.argmin(troughs, axis=1).astype(np.int64),
        usable=np.flatnonzero(channel_peak.max(axis=1, initial=0.0) > 0),
        channel_peak=channel_peak,
    )


def _padded_columns(
    channels: npt.NDArray[np.int64], units: _Units
) -> npt.NDArray[np.int64]:
    """Neighbour entries as columns of the padded unit arrays (-1 -> zero column)."""
    return np.where(channels < 0, units.templates.shape[2] - 1, channels)


def _random_true(
    mask: npt.NDArray[np.bool_], rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """A uniformly chosen True column of each row, and whether a row had one."""
    found = mask.any(axis=1)
    if mask.shape[1] == 0:
        return np.zeros(mask.shape[0], np.int64), found
    keys = rng.random(mask.shape) * mask
    return np.argmax(keys, axis=1), found


def _partners(
    units: _Units,
    table: npt.NDArray[np.int64],
    primary: npt.NDArray[np.int64],
    centres: npt.NDArray[np.int64],
    min_amplitude: float,
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Second units of collisions: units reaching ``min_amplitude`` on the
    neighbourhood of the centre channel, chosen uniformly; the primary unit
    itself when none does (a unit overlaps itself).
    """
    # reach[c, u]: peak of unit u on the neighbourhood of channel c.
    reach = units.channel_peak[:, _padded_columns(table, units)].max(axis=2).T
    reaches = np.zeros_like(reach, dtype=bool)
    reaches[:, units.usable] = reach[:, units.usable] >= min_amplitude
    chosen, found = _random_true(reaches[centres], rng)
    return np.where(found, chosen, primary)


def _add_spikes(
    out: npt.NDArray[np.float32],
    units: _Units,
    table: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
    unit: npt.NDArray[np.int64],
    centres: npt.NDArray[np.int64],
    trough_at: npt.NDArray[np.int64],
    scale: npt.NDArray[np.float64],
) -> None:
    """Add ``scale * template[unit]`` on the neighbourhood of ``centres`` to
    ``out[rows]`` (shape (n, L, K)), trough at sample ``trough_at``, cropped.
    """
    n_times = units.templates.shape[1]
    length = out.shape[1]
    onset = np.clip(trough_at - units.pre_samples, -n_times, length) + n_times
    for part in _batches(rows.size):
        channels = _padded_columns(table[centres[part]], units)
        waves = units.templates[
            unit[part, None, None],
            np.arange(n_times)[None, :, None],
            channels[:, None, :],
        ]
        waves *= scale[part, None, None].astype(np.float32)
        # Place into a buffer padded by a template length on both sides, so
        # no sample index is clipped (clipping would make fancy-indexed +=
        # lose values); an onset clipped to the padding keeps its spike out
        # of sight.
        padded = np.zeros(
            (waves.shape[0], length + 2 * n_times, out.shape[2]), np.float32
        )
        time = onset[part, None] + np.arange(n_times)
        padded[np.arange(waves.shape[0])[:, None], time] += waves
        out[rows[part]] += padded[:, n_times : n_times + length]


def _signed_shifts(
    low: int, high: int, size: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Shifts with magnitude uniform in [low, high] and a random sign."""
    magnitude = rng.integers(low, high + 1, size)
    return np.where(rng.random(size) < 0.5, -magnitude, magnitude)


def _prepare(
    templates: npt.ArrayLike,
    noise_model: NoiseModel,
    neighbours: npt.ArrayLike,
    pre_samples: int,
) -> tuple[_Units, npt.NDArray[np.int64]]:
    array, pre_samples = _check_templates(templates, pre_samples)
    table = _check_neighbours(neighbours, array.shape[2])
    _check_noise_model(noise_model, array.shape[2])
    return _units(array, pre_samples), table


# ---------------------------------------------------------------------------
# Detector examples
# ---------------------------------------------------------------------------


def make_detector_training_set(
    templates: npt.NDArray[np.float32],
    noise_model: NoiseModel,
    neighbours: npt.NDArray[np.integer],
    *,
    pre_samples: int,
    n_windows: int,
    window_samples: int,
    seed: int,
    amplitude_range: tuple[float, float] = (0.5, 1.5),
    jitter_samples: int = 2,
    misaligned_min_samples: int = 5,
    collision_shift_samples: tuple[int, int] = (3, 20),
    collision_min_amplitude: float = 2.0,
    noise_fraction: float = 0.15,
    misaligned_fraction: float = 0.25,
    collision_fraction: float = 0.3,
    main_channel_fraction: float = 0.5,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Detector training patches with their target maps.

    Each example is a window of ``window_samples`` on the K neighbours of a
    centre channel (``neighbours[centre]``, centre first). Its kind is drawn
    per example:

    * noise only (``noise_fraction``);
    * misaligned (``misaligned_fraction``): one spike whose trough is at least
      ``misaligned_min_samples`` (and at most half a window) from the window
      centre, so there is no spike at the centre;
    * clean (the rest): one spike with its trough within ``jitter_samples``
      of the window centre.

    A spike is a template drawn uniformly among the non-zero ones, scaled by
    a factor uniform in ``amplitude_range``. The centre channel is the
    spike's main channel (``main_channel_fraction`` of the examples) or one
    of the other channels of its neighbourhood, so that the network learns
    to answer on the main channel only. A fraction ``collision_fraction`` of
    the spike examples get a second spike, of a unit reaching at least
    ``collision_min_amplitude`` on the centre's neighbourhood (the same unit
    if none does), scaled likewise and shifted by
    ``collision_shift_samples`` (magnitude range, random sign). Noise comes
    from ``noise_model`` with the neighbourhood's spatial covariance.

    Parameters
    ----------
    templates : ndarray of float32, shape (n_units, n_times, n_channels)
        Templates in noise units (preprocessed), trough at ``pre_samples``
        on the main channel (the channel of the most negative value).
    noise_model : NoiseModel
        Noise of the same ``n_channels`` (:func:`estimate_noise_model`).
    neighbours : ndarray of int, shape (n_channels, K)
        Neighbour table, self first, ``-1`` for a missing channel.
    pre_samples : int
        Trough index of the templates.
    n_windows : int
        Number of examples (>= 0).
    window_samples : int
        Samples per window (>= 1).
    seed : int
        Seed of the random generator.
    amplitude_range : (float, float)
        Range of the template scaling factors.
    jitter_samples : int
        Largest offset of a clean spike's trough from the window centre.
    misaligned_min_samples : int
        Smallest offset of a misaligned spike's trough from the centre;
        > ``jitter_samples``.
    collision_shift_samples : (int, int)
        Range of the trough offset of the second spike of a collision.
    collision_min_amplitude : float
        Peak (noise units) a collision partner must reach on the centre's
        neighbourhood.
    noise_fraction, misaligned_fraction, collision_fraction, main_channel_fraction : float
        Proportions described above, each in [0, 1];
        ``noise_fraction + misaligned_fraction <= 1``.

    Returns
    -------
    windows : ndarray of float32, shape (n_windows, window_samples, K)
        Traces of the K neighbours of each example's centre channel.
    targets : ndarray of float32, shape (n_windows, window_samples)
        1 at the trough sample (+-1) of every spike, of any kind, whose main
        channel is the centre channel; 0 elsewhere.

    Notes
    -----
    With no usable (non-zero) template every example is noise only.
    """
    units, table = _prepare(templates, noise_model, neighbours, pre_samples)
    n_windows = _check_int("n_windows", n_windows, 0)
    window_samples = _check_int("window_samples", window_samples, 1)
    low_scale, high_scale = _check_range("amplitude_range", amplitude_range, minimum=0)
    jitter_samples = _check_int("jitter_samples", jitter_samples, 0)
    misaligned_min_samples = _check_int(
        "misaligned_min_samples", misaligned_min_samples, jitter_samples + 1
    )
    shift_low, shift_high = (
        int(v)
        for v in _check_range(
            "collision_shift_samples", collision_shift_samples, minimum=1
        )
    )
    noise_fraction = _check_fraction("noise_fraction", noise_fraction)
    misaligned_fraction = _check_fraction("misaligned_fraction", misaligned_fraction)
    if noise_fraction + misaligned_fraction > 1:
        raise ValueError(
            "noise_fraction + misaligned_fraction must be <= 1, got "
            f"{noise_fraction} + {misaligned_fraction}"
        )
    collision_fraction = _check_fraction("collision_fraction", collision_fraction)
    collision_min_amplitude = _check_amplitude(
        "collision_min_amplitude", collision_min_amplitude
    )
    main_channel_fraction = _check_fraction(
        "main_channel_fraction", main_channel_fraction
    )

    rng = np.random.default_rng(seed)
    n_channels = table.shape[0]
    roots = _spatial_roots(noise_model.spatial_covariance, table)

    # Kinds: 0 noise only, 1 clean, 2 misaligned.
    draw = rng.random(n_windows)
    kind = np.where(draw < noise_fraction, 0, 1)
    kind[(draw >= noise_fraction) & (draw < noise_fraction + misaligned_fraction)] = 2
    if units.usable.size == 0:
        kind[:] = 0
    spiking = np.flatnonzero(kind > 0)
    n_spiking = spiking.size

    primary = units.usable[rng.integers(0, max(units.usable.size, 1), n_spiking)]
    main = units.main_channel[primary]
    others = table[main, 1:] >= 0
    other_slot, has_other = _random_true(others, rng)
    use_main = (rng.random(n_spiking) < main_channel_fraction) | ~has_other
    centres = rng.integers(0, n_channels, n_windows)
    centres[spiking] = np.where(use_main, main, table[main, 1 + other_slot])

    middle = window_samples // 2
    half_window = max(window_samples // 2, misaligned_min_samples)
    offset = rng.integers(-jitter_samples, jitter_samples + 1, n_spiking)
    misaligned = kind[spiking] == 2
    offset[misaligned] = _signed_shifts(
        misaligned_min_samples, half_window, int(misaligned.sum()), rng
    )
    trough = middle + offset
    scale = rng.uniform(low_scale, high_scale, n_spiking)

    colliding = np.flatnonzero(rng.random(n_spiking) < collision_fraction)
    partner = _partners(
        units,
        table,
        primary[colliding],
        centres[spiking[colliding]],
        collision_min_amplitude,
        rng,
    )
    partner_trough = trough[colliding] + _signed_shifts(
        shift_low, shift_high, colliding.size, rng
    )
    partner_scale = rng.uniform(low_scale, high_scale, colliding.size)

    windows = _neighbourhood_noise(noise_model, roots, centres, window_samples, rng)
    targets = np.zeros((n_windows, window_samples), np.float32)
    for rows, unit, at, factor in (
        (spiking, primary, trough, scale),
        (spiking[colliding], partner, partner_trough, partner_scale),
    ):
        _add_spikes(windows, units, table, rows, unit, centres[rows], at, factor)
        labelled = units.main_channel[unit] == centres[rows]
        time = at[labelled, None] + np.arange(-1, 2)
        inside = (time >= 0) & (time < window_samples)
        example = np.broadcast_to(rows[labelled, None], time.shape)
        targets[example[inside], time[inside]] = 1.0
    return windows, targets


# ---------------------------------------------------------------------------
# Triage examples
# ---------------------------------------------------------------------------


def make_triage_training_set(
    templates: npt.NDArray[np.float32],
    noise_model: NoiseModel,
    neighbours: npt.NDArray[np.integer],
    *,
    pre_samples: int,
    n_snippets: int,
    seed: int,
    amplitude_range: tuple[float, float] = (0.5, 1.5),
    jitter_samples: int = 2,
    collision_shift_samples: tuple[int, int] = (3, 20),
    collision_min_amplitude: float = 4.0,
    collision_fraction: float = 0.5,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Triage training snippets: clean spikes and collisions.

    Each example is a snippet of the templates' length on the K neighbours
    of a spike's main channel, the trough within ``jitter_samples`` of
    ``pre_samples``, as the detector would cut it. A fraction
    ``collision_fraction`` is collided: a second unit reaching at least
    ``collision_min_amplitude`` on those channels (the same unit if none
    does) is added, scaled by a factor in ``amplitude_range`` and shifted by
    ``collision_shift_samples`` (magnitude range, random sign).

    Parameters
    ----------
    templates, noise_model, neighbours, pre_samples, seed, amplitude_range, \
jitter_samples, collision_shift_samples
        As in :func:`make_detector_training_set`.
    n_snippets : int
        Number of examples (>= 0).
    collision_min_amplitude : float
        Peak (noise units) a collision partner must reach on the snippet's
        channels.
    collision_fraction : float
        Fraction of collided examples, in [0, 1].

    Returns
    -------
    snippets : ndarray of float32, shape (n_snippets, n_times, K)
        Waveforms on the neighbours of the main channel (main channel first).
    labels : ndarray of float32, shape (n_snippets,)
        1 for clean, 0 for collided.

    Raises
    ------
    ValueError
        If ``n_snippets > 0`` and every template is zero.
    """
    units, table = _prepare(templates, noise_model, neighbours, pre_samples)
    n_snippets = _check_int("n_snippets", n_snippets, 0)
    low_scale, high_scale = _check_range("amplitude_range", amplitude_range, minimum=0)
    jitter_samples = _check_int("jitter_samples", jitter_samples, 0)
    shift_low, shift_high = (
        int(v)
        for v in _check_range(
            "collision_shift_samples", collision_shift_samples, minimum=1
        )
    )
    collision_fraction = _check_fraction("collision_fraction", collision_fraction)
    collision_min_amplitude = _check_amplitude(
        "collision_min_amplitude", collision_min_amplitude
    )
    if n_snippets and units.usable.size == 0:
        raise ValueError("templates must hold at least one non-zero template, got none")

    rng = np.random.default_rng(seed)
    n_times = units.templates.shape[1]
    roots = _spatial_roots(noise_model.spatial_covariance, table)
    primary = units.usable[rng.integers(0, max(units.usable.size, 1), n_snippets)]
    centres = units.main_channel[primary]
    trough = units.pre_samples + rng.integers(
        -jitter_samples, jitter_samples + 1, n_snippets
    )
    scale = rng.uniform(low_scale, high_scale, n_snippets)
    colliding = np.flatnonzero(rng.random(n_snippets) < collision_fraction)
    partner = _partners(
        units,
        table,
        primary[colliding],
        centres[colliding],
        collision_min_amplitude,
        rng,
    )
    partner_trough = trough[colliding] + _signed_shifts(
        shift_low, shift_high, colliding.size, rng
    )
    partner_scale = rng.uniform(low_scale, high_scale, colliding.size)

    snippets = _neighbourhood_noise(noise_model, roots, centres, n_times, rng)
    every = np.arange(n_snippets)
    _add_spikes(snippets, units, table, every, primary, centres, trough, scale)
    _add_spikes(
        snippets,
        units,
        table,
        colliding,
        partner,
        centres[colliding],
        partner_trough,
        partner_scale,
    )
    labels = np.ones(n_snippets, np.float32)
    labels[colliding] = 0.0
    return snippets, labels
