"""Synthetic ground-truth extracellular recordings.

A recording is the sum of

* spatially and temporally correlated Gaussian noise: white noise smoothed in
  time by the 3-tap kernel ``[1, 2, 1]`` (power ``cos**4(pi f / fs)``, -3 dB
  near 0.18 x the sampling rate, i.e. 5.5 kHz at 30 kHz) and mixed across
  channels so that the channel covariance is ``exp(-distance / lambda)``;
  it is scaled so that its rms inside 300-6000 Hz equals ``noise_uv``;
* a slow LFP-like component (a few sinusoids of 1-40 Hz with smooth depth
  profiles) and a constant offset per channel, which a sorter's band-pass
  filter must remove;
* the spikes of ``n_units`` units, each adding its template at every spike.

Units sit 15-60 um away from a Neuropixels-like probe. A unit's waveform is a
difference of Gaussians (trough, then a positive after-hyperpolarization)
whose width varies from unit to unit; on each channel it is scaled by a
monopole ``1/distance`` law with an exponential taper, delayed and widened
with distance. A spike's sample index is the sample of the template trough
on the unit's peak channel.

Optionally the probe drifts: at time ``t`` a unit whose reference depth is
``y`` appears ``drift_displacement_um(params, t, y)`` micrometres further up
the probe (positive = towards larger y), linearly over the recording or as a
step at half time, rigidly or with a displacement that changes linearly with
depth (``drift_um`` at the bottom, ``drift_top_um`` at the top channel). Each
spike is rendered with its unit's template moved by the displacement at its
trough, rounded to :data:`DRIFT_STEP_UM`.

The recording is produced in fixed generation blocks of
:data:`GENERATION_BLOCK_SAMPLES` samples whose noise is drawn from a seed
derived from ``(seed, block index)`` with :class:`numpy.random.SeedSequence`,
so any sample range can be rendered on its own (:func:`render_samples`) and
the written bytes do not depend on how the recording is cut into blocks.
Same parameters give identical bytes (with the same numpy/BLAS build).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar
from threadpoolctl import threadpool_limits

from .io.geometry import neuropixels_like_geometry  # noqa: F401 (part of this module's API)

#: Samples per noise generation block (about 0.55 s at 30 kHz). Part of the
#: definition of the recording: changing it changes the noise.
GENERATION_BLOCK_SAMPLES = 16384

#: Drifting units are rendered with templates at displacements rounded to this.
DRIFT_STEP_UM = 0.5
#: Time courses of the drift (see :func:`drift_displacement_um`).
DRIFT_SHAPES = ("linear", "step")

#: Template extent around the trough.
_PRE_TROUGH_MS = 1.0
_POST_TROUGH_MS = 2.0
#: Length of the cosine ramps that bring template edges to zero.
_TAPER_MS = 0.25

#: Band in which ``noise_uv`` is the noise rms.
_NOISE_BAND_HZ = (300.0, 6000.0)
#: Samples of white noise before a coloured sample (kernel ``[1, 2, 1]``).
_NOISE_LAG = 2
#: Power of the kernel ``[1, 2, 1]``: the noise scale divides it out.
_NOISE_KERNEL_POWER = 6.0

#: Cholesky entries below this (relative) are dropped: the mixing matrix
#: becomes banded, so mixing costs O(bandwidth), not O(n_channels).
_MIXING_TOLERANCE = 1e-4
#: Rows per slab when building a generation block (slabs stay in cache).
_SLAB_ROWS = 256
#: Output channels per matrix product when mixing noise across channels.
_MIXING_TILE_CHANNELS = 64

#: Units lie within the probe's x/y extent widened by this margin.
_POSITION_MARGIN_UM = 20.0
#: Channels where a unit's peak is below this fraction of ``noise_uv`` are
#: left out of its template (the template is exactly zero there).
_FOOTPRINT_MIN_NOISE_FRACTION = 0.05

#: LFP-like component: number of sinusoids and their frequency range.
_LFP_COMPONENTS = 8
_LFP_FREQUENCY_HZ = (1.0, 40.0)
_LFP_WAVELENGTH_UM = (500.0, 4000.0)

#: Spawn-key streams of the seed tree (each stream has a fixed key length).
_STREAM_UNIT = 0  # (stream, unit)
_STREAM_TRAIN = 1  # (stream, unit)
_STREAM_BACKGROUND = 2  # (stream, 0)
_STREAM_NOISE = 3  # (stream, block, part): part 0 = body, 1 = tail

_INT16_MIN, _INT16_MAX = -32768, 32767


@dataclass(frozen=True)
class SynthParams:
    """Parameters of a synthetic recording.

    Attributes
    ----------
    n_channels : int
        Channels on a :func:`neuropixels_like_geometry` probe (1-4096).
    duration_s : float
        Recording length in seconds (>= 0).
    sampling_rate_hz : float
        Sampling rate, > 12000 Hz so that the 300-6000 Hz band fits.
    n_units : int
        Number of ground-truth units (>= 0).
    seed : int
        Root seed (>= 0); everything is derived from it.
    noise_uv : float
        Noise rms in the 300-6000 Hz band, in uV.
    snr_min, snr_max : float
        Range of the units' peak amplitude on their peak channel, in units of
        ``noise_uv``; drawn log-uniformly (defaults 3-25: about three
        quarters of the units have SNR >= 5).
    rate_min_hz, rate_max_hz : float
        Range of firing rates, drawn log-uniformly.
    refractory_ms : float
        Dead time after each spike; spike trains are Poisson with dead time.
    noise_correlation_um : float
        Length ``lambda`` of the channel covariance ``exp(-d / lambda)``;
        0 gives independent channels.
    footprint_decay_um : float
        Length of the exponential taper of the ``1/distance`` amplitude law.
    depth_min_um, depth_max_um : float
        Range of the units' distance from the probe plane (> 0).
    lfp_uv : float
        Approximate rms of the slow LFP-like component.
    dc_offset_uv : float
        Per-channel constant offsets are uniform in ``[-dc_offset_uv,
        dc_offset_uv]``.
    gain_to_uv : float
        uV per int16 step of the written recording.
    drift_um : float
        Displacement (um, positive = up the probe) reached by the units at the
        bottom of the probe (y = 0); 0 and ``drift_top_um`` None: no drift.
    drift_top_um : float or None
        Displacement reached at the top channel's depth (linear in depth in
        between: non-rigid drift); None: the same as ``drift_um`` (rigid).
    drift_shape : {"linear", "step"}
        ``"linear"``: from 0 at the start to the full displacement at the end;
        ``"step"``: 0 before half the duration, the full displacement after.
    """

    n_channels: int = 32
    duration_s: float = 10.0
    sampling_rate_hz: float = 30000.0
    n_units: int = 10
    seed: int = 0
    noise_uv: float = 10.0
    snr_min: float = 3.0
    snr_max: float = 25.0
    rate_min_hz: float = 2.0
    rate_max_hz: float = 15.0
    refractory_ms: float = 2.0
    noise_correlation_um: float = 20.0
    footprint_decay_um: float = 50.0
    depth_min_um: float = 15.0
    depth_max_um: float = 60.0
    lfp_uv: float = 30.0
    dc_offset_uv: float = 50.0
    gain_to_uv: float = 0.195
    drift_um: float = 0.0
    drift_top_um: float | None = None
    drift_shape: str = "linear"

    def __post_init__(self) -> None:
        _check_int("n_channels", self.n_channels, 1, 4096)
        _check_int("n_units", self.n_units, 0, None)
        _check_int("seed", self.seed, 0, None)
        _check_number("duration_s", self.duration_s, minimum=0.0)
        if not self.sampling_rate_hz > 2 * _NOISE_BAND_HZ[1]:
            raise ValueError(
                f"sampling_rate_hz must be > {2 * _NOISE_BAND_HZ[1]:g}, "
                f"got {self.sampling_rate_hz!r}"
            )
        _check_number("noise_uv", self.noise_uv, positive=True)
        _check_range("snr_min", self.snr_min, "snr_max", self.snr_max)
        _check_range("rate_min_hz", self.rate_min_hz, "rate_max_hz", self.rate_max_hz)
        _check_range(
            "depth_min_um", self.depth_min_um, "depth_max_um", self.depth_max_um
        )
        _check_number("refractory_ms", self.refractory_ms, minimum=0.0)
        mean_isi_samples = self.sampling_rate_hz / self.rate_max_hz
        if mean_isi_samples <= self.refractory_samples + 1:
            raise ValueError(
                f"rate_max_hz must leave a mean interval longer than "
                f"refractory_ms + 1 sample, got rate_max_hz={self.rate_max_hz!r} "
                f"with refractory_ms={self.refractory_ms!r}"
            )
        _check_number("noise_correlation_um", self.noise_correlation_um, minimum=0.0)
        _check_number("footprint_decay_um", self.footprint_decay_um, positive=True)
        _check_number("lfp_uv", self.lfp_uv, minimum=0.0)
        _check_number("dc_offset_uv", self.dc_offset_uv, minimum=0.0)
        _check_number("gain_to_uv", self.gain_to_uv, positive=True)
        _check_number("drift_um", self.drift_um, minimum=-math.inf)
        if self.drift_top_um is not None:
            _check_number("drift_top_um", self.drift_top_um, minimum=-math.inf)
        if self.drift_shape not in DRIFT_SHAPES:
            raise ValueError(
                f"drift_shape must be one of {DRIFT_SHAPES}, got {self.drift_shape!r}"
            )

    @property
    def n_samples(self) -> int:
        """Number of samples of the recording."""
        return round(self.duration_s * self.sampling_rate_hz)

    @property
    def trough_index(self) -> int:
        """Sample of the trough within a template (1 ms after its start)."""
        return round(_PRE_TROUGH_MS * self.sampling_rate_hz / 1000.0)

    @property
    def template_samples(self) -> int:
        """Template length in samples (3 ms)."""
        post = round(_POST_TROUGH_MS * self.sampling_rate_hz / 1000.0)
        return self.trough_index + post

    @property
    def refractory_samples(self) -> int:
        """Refractory period in whole samples."""
        return math.ceil(self.refractory_ms * self.sampling_rate_hz / 1000.0)

    @property
    def drifts(self) -> bool:
        """Whether any unit moves during the recording."""
        return self.drift_um != 0 or self.drift_top_um not in (None, 0)


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int, maximum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")


def _check_number(
    name: str, value: object, *, minimum: float = 0.0, positive: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")


def _check_range(low_name: str, low: float, high_name: str, high: float) -> None:
    _check_number(low_name, low, positive=True)
    _check_number(high_name, high, positive=True)
    if low > high:
        raise ValueError(
            f"{low_name} must be <= {high_name}, got {low_name}={low!r} "
            f"and {high_name}={high!r}"
        )


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Generator for one branch ``key`` of the seed tree of ``seed``."""
    # SFC64 draws float32 normals about twice as fast as the default PCG64.
    return np.random.Generator(
        np.random.SFC64(np.random.SeedSequence(seed, spawn_key=key))
    )


def _log_uniform(
    rng: np.random.Generator, low: float, high: float, size: int | None = None
) -> npt.NDArray[np.float64] | float:
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


# ---------------------------------------------------------------------------
# Probe and units
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _UnitDraw:
    """Random properties of one unit (everything but its template)."""

    soma_um: npt.NDArray[np.float64]  # (x, y, z)
    peak_amplitude_uv: float
    firing_rate_hz: float
    trough_sigma_ms: float
    repolarization_delay_ms: float
    repolarization_sigma_ms: float
    repolarization_ratio: float
    speed_um_per_ms: float
    widening_um: float


def _draw_unit(params: SynthParams, unit: int) -> _UnitDraw:
    """Draw unit ``unit`` from its own branch of the seed tree."""
    rng = _rng(params.seed, _STREAM_UNIT, unit)
    positions = neuropixels_like_geometry(params.n_channels)
    xy = rng.uniform(
        positions.min(axis=0) - _POSITION_MARGIN_UM,
        positions.max(axis=0) + _POSITION_MARGIN_UM,
    )
    depth = rng.uniform(params.depth_min_um, params.depth_max_um)
    snr = _log_uniform(rng, params.snr_min, params.snr_max)
    rate = _log_uniform(rng, params.rate_min_hz, params.rate_max_hz)
    width = rng.uniform()  # 0 = narrow (fast-spiking) ... 1 = broad
    return _UnitDraw(
        soma_um=np.array([xy[0], xy[1], depth]),
        peak_amplitude_uv=params.noise_uv * snr,
        firing_rate_hz=rate,
        trough_sigma_ms=0.07 + 0.10 * width,
        repolarization_delay_ms=0.25 + 0.40 * width + rng.uniform(0.0, 0.1),
        repolarization_sigma_ms=0.18 + 0.35 * width,
        repolarization_ratio=rng.uniform(0.15, 0.45),
        speed_um_per_ms=rng.uniform(500.0, 1500.0),  # 0.5-1.5 m/s
        widening_um=rng.uniform(200.0, 400.0),
    )


def _waveform_function(draw: _UnitDraw):
    """Waveform at the soma as a function of time in ms, minimum -1 at 0."""

    def raw(t_ms):
        trough = np.exp(-0.5 * (t_ms / draw.trough_sigma_ms) ** 2)
        after = np.exp(
            -0.5
            * ((t_ms - draw.repolarization_delay_ms) / draw.repolarization_sigma_ms)
            ** 2
        )
        return draw.repolarization_ratio * after - trough

    # The positive lobe moves the minimum slightly before 0: find it exactly.
    found = minimize_scalar(
        raw,
        bounds=(-draw.trough_sigma_ms, draw.trough_sigma_ms),
        method="bounded",
        options={"xatol": 1e-9},
    )
    t_min, depth = float(found.x), -float(found.fun)

    def shape(t_ms):
        return raw(t_ms + t_min) / depth

    return shape


def _taper(n_samples: int, ramp_samples: int) -> npt.NDArray[np.float64]:
    window = np.ones(n_samples)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_samples) + 0.5) / ramp_samples)
    window[:ramp_samples] = ramp
    window[n_samples - ramp_samples :] = ramp[::-1]
    return window


def _unit_templates(
    params: SynthParams, draw: _UnitDraw, shifts_um: npt.ArrayLike = (0.0,)
) -> npt.NDArray[np.float32]:
    """Templates (n_shifts, template_samples, n_channels) of a unit moved up by each shift."""
    positions = neuropixels_like_geometry(params.n_channels)
    n_times = params.template_samples
    times_ms = (np.arange(n_times) - params.trough_index) * (
        1000.0 / params.sampling_rate_hz
    )
    taper = _taper(n_times, max(1, round(_TAPER_MS * params.sampling_rate_hz / 1000)))
    min_visible_uv = _FOOTPRINT_MIN_NOISE_FRACTION * params.noise_uv
    shape = _waveform_function(draw)
    shifts = np.atleast_1d(np.asarray(shifts_um, dtype=np.float64))
    templates = np.zeros((len(shifts), n_times, params.n_channels), np.float32)
    # The field is fixed around the soma: amplitude and delay are laws of the
    # distance, normalised at the nearest channel of the unmoved unit, so a
    # moved unit's template samples the same field at other points.
    nearest = np.sqrt(
        np.sum((positions - draw.soma_um[:2]) ** 2, axis=1) + draw.soma_um[2] ** 2
    ).min()
    for template, shift in zip(templates, shifts):
        soma = draw.soma_um + np.array([0.0, shift, 0.0])
        distance = np.sqrt(np.sum((positions - soma[:2]) ** 2, axis=1) + soma[2] ** 2)
        extra = distance - nearest
        footprint = (
            draw.peak_amplitude_uv
            * nearest
            / distance
            * np.exp(-extra / params.footprint_decay_um)
        )
        visible = footprint >= min_visible_uv
        visible[np.argmin(distance)] = True
        delay_ms = extra[visible] / draw.speed_um_per_ms
        stretch = 1.0 + extra[visible] / draw.widening_um
        template[:, visible] = (
            footprint[visible]
            * shape((times_ms[:, None] - delay_ms) / stretch)
            * taper[:, None]
        )
    return templates


def generate_units(params: SynthParams) -> dict[str, np.ndarray]:
    """Draw the ground-truth units: positions, firing rates and templates.

    Unit ``u`` is drawn from its own seed (``seed``, unit ``u``), so adding
    units leaves the existing ones unchanged.

    Parameters
    ----------
    params : SynthParams
        Recording parameters.

    Returns
    -------
    units : dict
        ``templates_uv`` float32 (n_units, template_samples, n_channels):
        the exact waveform added at each spike, trough at ``trough_index`` on
        the peak channel, zero on channels outside the unit's footprint;
        ``unit_positions_um`` float64 (n_units, 3): soma (x, y, z), z = distance
        from the probe plane; ``peak_channel`` int32 (n_units,);
        ``peak_amplitude_uv`` float32 (n_units,): minus the trough value on
        the peak channel; ``snr`` float32 (n_units,): that amplitude over
        ``noise_uv``; ``firing_rate_hz`` float64 (n_units,).
    """
    templates = np.zeros(
        (params.n_units, params.template_samples, params.n_channels), np.float32
    )
    draws = [_draw_unit(params, unit) for unit in range(params.n_units)]
    for unit, draw in enumerate(draws):
        templates[unit] = _unit_templates(params, draw)[0]
    n_times = params.template_samples
    flat = templates.reshape(params.n_units, n_times * params.n_channels)
    peak_amplitude = -flat.min(axis=1)
    return {
        "templates_uv": templates,
        "unit_positions_um": np.array([d.soma_um for d in draws]).reshape(-1, 3),
        "peak_channel": (flat.argmin(axis=1) % params.n_channels).astype(np.int32),
        "peak_amplitude_uv": peak_amplitude,
        "snr": (peak_amplitude / np.float32(params.noise_uv)).astype(np.float32),
        "firing_rate_hz": np.array([d.firing_rate_hz for d in draws]),
    }


# ---------------------------------------------------------------------------
# Spike trains
# ---------------------------------------------------------------------------


def _unit_train(params: SynthParams, unit: int, rate_hz: float) -> np.ndarray:
    """Trough samples of one unit: Poisson process with dead time."""
    first = params.trough_index
    last = params.n_samples - (params.template_samples - params.trough_index)
    if last < first:
        return np.zeros(0, np.int64)
    rng = _rng(params.seed, _STREAM_TRAIN, unit)
    dead = params.refractory_samples
    mean_interval = params.sampling_rate_hz / rate_hz
    # Intervals are dead + Geometric(p) >= dead + 1, with mean 1 / rate.
    p = 1.0 / (mean_interval - dead)
    expected = (last - first) / mean_interval
    batch = int(expected + 5.0 * math.sqrt(expected) + 10.0)
    steps = rng.geometric(p, batch) + dead
    steps[0] -= dead  # the first event is memoryless: no dead time before it
    times = first - 1 + np.cumsum(steps)
    while times[-1] <= last:
        more = times[-1] + np.cumsum(rng.geometric(p, batch) + dead)
        times = np.concatenate([times, more])
    return times[times <= last]


def generate_spike_trains(
    params: SynthParams,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Draw the ground-truth spike trains of all units.

    Each unit fires as a Poisson process with a dead time of
    ``refractory_ms`` (consecutive spikes of a unit are more than
    ``refractory_samples`` apart) at its ``firing_rate_hz``. Only spikes whose
    whole template lies inside the recording are kept.

    Parameters
    ----------
    params : SynthParams
        Recording parameters.

    Returns
    -------
    sample_index : ndarray of int64, shape (n_spikes,)
        Trough sample of each spike on its unit's peak channel, sorted.
    unit_index : ndarray of int32, shape (n_spikes,)
        Unit of each spike (ties in time are ordered by unit).
    """
    trains = [
        _unit_train(params, unit, _draw_unit(params, unit).firing_rate_hz)
        for unit in range(params.n_units)
    ]
    sample_index = np.concatenate([np.zeros(0, np.int64), *trains])
    unit_index = np.repeat(
        np.arange(params.n_units, dtype=np.int32), [len(t) for t in trains]
    )
    order = np.lexsort((unit_index, sample_index))
    return sample_index[order], unit_index[order]


# ---------------------------------------------------------------------------
# Background: noise, LFP-like component, offsets
# ---------------------------------------------------------------------------


def _in_band_power_fraction(sampling_rate_hz: float) -> float:
    """Fraction of the noise power inside ``_NOISE_BAND_HZ``.

    The ``[1, 2, 1]`` kernel has power ``cos(x)**4`` with ``x = pi f / fs``,
    whose primitive is ``3x/8 + sin(2x)/4 + sin(4x)/32``.
    """

    def primitive(frequency_hz: float) -> float:
        x = math.pi * frequency_hz / sampling_rate_hz
        return 3 * x / 8 + math.sin(2 * x) / 4 + math.sin(4 * x) / 32

    low, high = _NOISE_BAND_HZ
    return (primitive(high) - primitive(low)) / primitive(sampling_rate_hz / 2)


@dataclass(frozen=True)
class _Background:
    """Everything but the spikes, in int16 steps (float32)."""

    params: SynthParams
    #: ``(in_start, out_start, out_stop, matrix)`` per tile of output channels,
    #: noise scale included; empty when channels are independent.
    mixing: tuple[tuple[int, int, int, npt.NDArray[np.float32]], ...]
    noise_scale: float
    slow_cycles_per_sample: npt.NDArray[np.float64]  # (n_components,)
    slow_phase: npt.NDArray[np.float64]  # (n_components,)
    #: Per-channel weight of each LFP sinusoid, then a last row of offsets.
    slow_profile: npt.NDArray[np.float32]  # (n_components + 1, n_channels)

    @classmethod
    def build(cls, params: SynthParams) -> _Background:
        positions = neuropixels_like_geometry(params.n_channels)
        in_band_power = _in_band_power_fraction(params.sampling_rate_hz)
        noise_scale = params.noise_uv / params.gain_to_uv
        noise_scale /= math.sqrt(in_band_power * _NOISE_KERNEL_POWER)
        mixing = ()
        if params.noise_correlation_um > 0 and params.n_channels > 1:
            mixing = _mixing_tiles(positions, params.noise_correlation_um, noise_scale)

        rng = _rng(params.seed, _STREAM_BACKGROUND, 0)
        frequency = _log_uniform(rng, *_LFP_FREQUENCY_HZ, _LFP_COMPONENTS)
        phase = rng.uniform(0.0, 2 * np.pi, _LFP_COMPONENTS)
        wavelength = rng.uniform(*_LFP_WAVELENGTH_UM, _LFP_COMPONENTS)
        depth_phase = rng.uniform(0.0, 2 * np.pi, _LFP_COMPONENTS)
        amplitude = params.lfp_uv * math.sqrt(2.0 / _LFP_COMPONENTS)
        profile = amplitude * np.cos(
            2 * np.pi * positions[:, 1] / wavelength[:, None] + depth_phase[:, None]
        )
        offset = rng.uniform(-params.dc_offset_uv, params.dc_offset_uv, len(positions))
        return cls(
            params=params,
            mixing=mixing,
            noise_scale=noise_scale,
            slow_cycles_per_sample=frequency / params.sampling_rate_hz,
            slow_phase=phase,
            slow_profile=(np.vstack([profile, offset]) / params.gain_to_uv).astype(
                np.float32
            ),
        )

    def block(self, block_index: int) -> npt.NDArray[np.float32]:
        """Background of generation block ``block_index``, (G, n_channels).

        The white noise stream is continuous across blocks: block ``k`` is a
        body and a short tail (each with its own seed), and the tail of block
        ``k - 1`` feeds the temporal kernel at the start of block ``k``. The
        block is built in cache-sized slabs of rows.
        """
        n_rows, lag, slab = GENERATION_BLOCK_SAMPLES, _NOISE_LAG, _SLAB_ROWS
        seed = self.params.seed
        # Seed-tree keys are block + 1 so that "block -1" (before the start) exists.
        previous_tail = _rng(seed, _STREAM_NOISE, block_index, 1)
        body = _rng(seed, _STREAM_NOISE, block_index + 1, 0)
        tail = _rng(seed, _STREAM_NOISE, block_index + 1, 1)
        out = np.empty((n_rows, self.params.n_channels), np.float32)
        white = np.empty((slab + lag, self.params.n_channels), np.float32)
        previous_tail.standard_normal(dtype=np.float32, out=white[:lag])
        cycles = np.empty((slab, len(self.slow_phase)))
        slow = np.ones((slab, len(self.slow_profile)), np.float32)
        for start in range(0, n_rows, slab):
            if start + slab < n_rows:
                body.standard_normal(dtype=np.float32, out=white[lag:])
            else:
                body.standard_normal(dtype=np.float32, out=white[lag:slab])
                tail.standard_normal(dtype=np.float32, out=white[slab:])
            coloured = white[:slab] + white[lag:]
            coloured += white[1 : slab + 1]
            coloured += white[1 : slab + 1]
            white[:lag] = white[slab:]

            noise = out[start : start + slab]
            if self.mixing:
                for in_start, out_start, out_stop, matrix in self.mixing:
                    np.matmul(
                        coloured[:, in_start:out_stop],
                        matrix,
                        out=noise[:, out_start:out_stop],
                    )
            else:
                np.multiply(coloured, np.float32(self.noise_scale), out=noise)

            sample = np.arange(start, start + slab) + block_index * n_rows
            np.multiply(sample[:, None], self.slow_cycles_per_sample, out=cycles)
            np.mod(cycles, 1.0, out=cycles)
            slow[:, :-1] = np.sin(2 * np.pi * cycles + self.slow_phase)
            noise += slow @ self.slow_profile
        return out


def _mixing_tiles(
    positions_um: np.ndarray, correlation_um: float, scale: float
) -> tuple[tuple[int, int, int, npt.NDArray[np.float32]], ...]:
    """Banded Cholesky factor of ``exp(-d / correlation_um)``, cut in tiles.

    Entries below ``_MIXING_TOLERANCE`` are dropped and rows renormalised, so
    each channel keeps unit variance before ``scale``. Channel ``i`` mixes
    white channels ``i - bandwidth .. i`` (channels are ordered by depth).
    """
    delta = positions_um[:, None, :] - positions_um[None, :, :]
    covariance = np.exp(-np.sqrt(np.sum(delta**2, axis=-1)) / correlation_um)
    factor = np.linalg.cholesky(covariance)
    factor[np.abs(factor) < _MIXING_TOLERANCE] = 0.0
    factor *= scale / np.linalg.norm(factor, axis=1, keepdims=True)
    rows, columns = np.nonzero(factor)
    bandwidth = int(np.max(rows - columns))
    n_channels = len(positions_um)
    tiles = []
    for out_start in range(0, n_channels, _MIXING_TILE_CHANNELS):
        out_stop = min(out_start + _MIXING_TILE_CHANNELS, n_channels)
        in_start = max(0, out_start - bandwidth)
        matrix = factor[out_start:out_stop, in_start:out_stop].T
        tiles.append(
            (in_start, out_start, out_stop, np.ascontiguousarray(matrix, np.float32))
        )
    return tuple(tiles)


# ---------------------------------------------------------------------------
# Drift
# ---------------------------------------------------------------------------


def drift_displacement_um(
    params: SynthParams, time_s: npt.ArrayLike, depth_um: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """True displacement of the units at times and reference depths.

    Parameters
    ----------
    params : SynthParams
        Recording parameters (``drift_um``, ``drift_top_um``, ``drift_shape``).
    time_s, depth_um : array_like
        Times (s) and reference depths (um, the units' y at time 0); they
        broadcast against each other.

    Returns
    -------
    ndarray of float64
        Displacement in um (positive = the unit appears higher up the probe).
    """
    time = np.asarray(time_s, dtype=np.float64)
    depth = np.asarray(depth_um, dtype=np.float64)
    duration = params.duration_s
    if params.drift_shape == "linear":
        course = np.clip(time / duration, 0.0, 1.0) if duration > 0 else 0.0 * time
    else:  # "step"
        course = (time >= duration / 2.0).astype(np.float64)
    top_y = float(neuropixels_like_geometry(params.n_channels)[:, 1].max())
    fraction = np.clip(depth / top_y, 0.0, 1.0) if top_y > 0 else 0.0 * depth
    top = params.drift_um if params.drift_top_um is None else params.drift_top_um
    return course * (params.drift_um + (top - params.drift_um) * fraction)


def spike_displacement_um(
    params: SynthParams,
    spike_sample_index: npt.ArrayLike,
    spike_unit_index: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """Displacement of each spike's unit at the spike's trough (um)."""
    samples = np.asarray(spike_sample_index, dtype=np.int64)
    units = np.asarray(spike_unit_index, dtype=np.int64)
    if not params.drifts or len(samples) == 0:
        return np.zeros(len(samples))
    depth = np.array([_draw_unit(params, u).soma_um[1] for u in range(params.n_units)])
    return drift_displacement_um(params, samples / params.sampling_rate_hz, depth[units])


def spike_templates(
    params: SynthParams,
    templates_uv: npt.NDArray[np.float32],
    spike_sample_index: npt.NDArray[np.int64],
    spike_unit_index: npt.NDArray[np.int32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Templates to render each spike with, and each spike's template index.

    Without drift these are ``templates_uv`` and ``spike_unit_index``. With
    drift, every (unit, displacement rounded to :data:`DRIFT_STEP_UM`) pair
    that occurs gets its own template, the unit moved by that displacement.

    Returns
    -------
    templates : ndarray of float32, shape (n_templates, template_samples, n_channels)
    template_index : ndarray of int64, shape (n_spikes,)
    """
    units = np.asarray(spike_unit_index, dtype=np.int64)
    if not params.drifts or len(units) == 0:
        return np.asarray(templates_uv, dtype=np.float32), units
    steps = np.rint(
        spike_displacement_um(params, spike_sample_index, units) / DRIFT_STEP_UM
    ).astype(np.int64)
    offset = int(steps.min())
    span = int(steps.max()) - offset + 1
    keys, template_index = np.unique(units * span + (steps - offset), return_inverse=True)
    key_units, key_steps = keys // span, keys % span + offset
    out = np.zeros((len(keys),) + np.shape(templates_uv)[1:], dtype=np.float32)
    for unit in np.unique(key_units):
        rows = np.flatnonzero(key_units == unit)
        out[rows] = _unit_templates(
            params, _draw_unit(params, int(unit)), key_steps[rows] * DRIFT_STEP_UM
        )
    return out, template_index.astype(np.int64)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


class _Renderer:
    """Renders any sample range of one recording, caching the last block."""

    def __init__(
        self,
        params: SynthParams,
        templates_uv: np.ndarray,
        spike_sample_index: np.ndarray,
        spike_unit_index: np.ndarray,
    ) -> None:
        self.params = params
        self.background = _Background.build(params)
        self._cached: tuple[int, np.ndarray] | None = None
        n_times = params.template_samples
        self.units = []
        order = np.argsort(spike_unit_index, kind="stable")
        times_by_unit = np.split(
            np.asarray(spike_sample_index, np.int64)[order],
            np.cumsum(np.bincount(spike_unit_index, minlength=len(templates_uv)))[:-1],
        )
        for template, unsorted_times in zip(templates_uv, times_by_unit):
            times = np.sort(unsorted_times)
            channels = np.flatnonzero(np.any(template != 0, axis=0))
            if len(channels) == 0 or len(times) == 0:
                continue
            steps = (template[:, channels] / np.float32(params.gain_to_uv)).astype(
                np.float32
            )
            # Spikes i and i + n_groups never overlap, so each group can be
            # added with one fancy-indexed += (which needs unique indices).
            n_groups = 1
            while np.any(times[n_groups:] - times[:-n_groups] < n_times):
                n_groups += 1
            flat_offsets = (
                np.arange(n_times)[:, None] * params.n_channels + channels
            ).ravel()
            self.units.append((times, n_groups, channels, steps, flat_offsets))

    def _block(self, block_index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != block_index:
            self._cached = (block_index, self.background.block(block_index))
        return self._cached[1]

    def render(self, start: int, stop: int) -> npt.NDArray[np.int16]:
        params = self.params
        n_rows, n_channels = stop - start, params.n_channels
        chunk = np.empty((n_rows, n_channels), np.float32)
        size = GENERATION_BLOCK_SAMPLES
        for block_index in range(start // size, -(-stop // size)):
            block_start = block_index * size
            lo, hi = max(start, block_start), min(stop, block_start + size)
            chunk[lo - start : hi - start] = self._block(block_index)[
                lo - block_start : hi - block_start
            ]
        self._add_spikes(chunk, start)
        np.rint(chunk, out=chunk)
        np.clip(chunk, _INT16_MIN, _INT16_MAX, out=chunk)
        return chunk.astype(np.int16)

    def _add_spikes(self, chunk: np.ndarray, start: int) -> None:
        n_rows, n_channels = chunk.shape
        n_times, trough = self.params.template_samples, self.params.trough_index
        flat = chunk.reshape(-1)
        for times, n_groups, channels, steps, flat_offsets in self.units:
            first = np.searchsorted(times, start + trough - n_times, side="right")
            last = np.searchsorted(times, start + n_rows + trough, side="left")
            for group in range(n_groups):
                onset = times[first + (group - first) % n_groups : last : n_groups]
                onset = onset - (trough + start)
                inside = (onset >= 0) & (onset <= n_rows - n_times)
                if np.any(inside):
                    index = onset[inside, None] * n_channels + flat_offsets
                    flat[index] += steps.ravel()
                for edge in onset[~inside]:
                    a, b = max(0, -edge), min(n_times, n_rows - edge)
                    chunk[edge + a : edge + b, channels] += steps[a:b]


def render_samples(
    templates_uv: npt.NDArray[np.float32],
    spike_sample_index: npt.NDArray[np.int64],
    spike_unit_index: npt.NDArray[np.int32],
    *,
    params: SynthParams,
    start_sample: int,
    stop_sample: int,
) -> npt.NDArray[np.int16]:
    """Render samples ``[start_sample, stop_sample)`` of a recording.

    Any range renders to the same values as the same range of the whole
    recording, so independent jobs can each render one time shard.

    Parameters
    ----------
    templates_uv : ndarray of float32, shape (n_units, template_samples, n_channels)
        Templates from :func:`generate_units` (for a drifting recording,
        those of :func:`spike_templates`).
    spike_sample_index, spike_unit_index : ndarray, shape (n_spikes,)
        Spike trains from :func:`generate_spike_trains` (for a drifting
        recording, the template index of :func:`spike_templates` as unit).
    params : SynthParams
        Recording parameters.
    start_sample, stop_sample : int
        Range to render, ``0 <= start_sample <= stop_sample <= n_samples``.

    Returns
    -------
    traces : ndarray of int16, shape (stop_sample - start_sample, n_channels)
        Samples in steps of ``gain_to_uv`` uV, clipped to the int16 range.
    """
    templates_uv = np.asarray(templates_uv, dtype=np.float32)
    expected = (params.template_samples, params.n_channels)
    if templates_uv.ndim != 3 or templates_uv.shape[1:] != expected:
        raise ValueError(
            f"templates_uv must have shape (n_units, {expected[0]}, {expected[1]}), "
            f"got {templates_uv.shape}"
        )
    spike_sample_index = np.asarray(spike_sample_index, dtype=np.int64)
    spike_unit_index = np.asarray(spike_unit_index, dtype=np.int64)
    if spike_sample_index.shape != spike_unit_index.shape:
        raise ValueError(
            f"spike_sample_index and spike_unit_index must have the same shape, "
            f"got {spike_sample_index.shape} and {spike_unit_index.shape}"
        )
    if np.any((spike_unit_index < 0) | (spike_unit_index >= len(templates_uv))):
        raise ValueError(
            f"spike_unit_index must be in [0, {len(templates_uv)}), got values "
            f"from {spike_unit_index.min()} to {spike_unit_index.max()}"
        )
    if not 0 <= start_sample <= stop_sample <= params.n_samples:
        raise ValueError(
            f"start_sample and stop_sample must satisfy 0 <= start_sample <= "
            f"stop_sample <= n_samples={params.n_samples}, got "
            f"{start_sample} and {stop_sample}"
        )
    renderer = _Renderer(params, templates_uv, spike_sample_index, spike_unit_index)
    with threadpool_limits(limits=1, user_api="blas"):
        return renderer.render(start_sample, stop_sample)


def write_recording(
    path: str | os.PathLike,
    params: SynthParams,
    *,
    block_samples: int = GENERATION_BLOCK_SAMPLES,
) -> None:
    """Write the recording as raw int16, samples-major, in blocks.

    The file holds ``n_samples x n_channels`` little-endian int16 values
    (multiply by ``gain_to_uv`` for uV). It is written to ``path + ".part"``
    and renamed when complete. Memory is bounded by ``block_samples`` and
    :data:`GENERATION_BLOCK_SAMPLES` (plus the spike trains), whatever the
    duration; the bytes do not depend on ``block_samples`` (multiples of
    :data:`GENERATION_BLOCK_SAMPLES` avoid regenerating noise).

    Parameters
    ----------
    path : str or PathLike
        Output file.
    params : SynthParams
        Recording parameters.
    block_samples : int
        Samples rendered and written per step (>= 1).
    """
    _check_int("block_samples", block_samples, 1, None)
    units = generate_units(params)
    sample_index, unit_index = generate_spike_trains(params)
    templates, template_index = spike_templates(
        params, units["templates_uv"], sample_index, unit_index
    )
    renderer = _Renderer(params, templates, sample_index, template_index)
    partial = Path(f"{os.fspath(path)}.part")
    # The mixing products are small: BLAS threads only add overhead there
    # (and spin-wait badly on busy cores).
    with open(partial, "wb") as stream, threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, params.n_samples, block_samples):
            stop = min(start + block_samples, params.n_samples)
            renderer.render(start, stop).astype("<i2", copy=False).tofile(stream)
    os.replace(partial, path)


def ground_truth_arrays(params: SynthParams) -> dict[str, np.ndarray]:
    """All ground truth of the recording, as arrays ready for ``np.savez``.

    Parameters
    ----------
    params : SynthParams
        Recording parameters.

    Returns
    -------
    ground_truth : dict
        ``spike_sample_index`` int64 and ``spike_unit_index`` int32
        (n_spikes,), sorted by sample; the unit arrays of
        :func:`generate_units` (``templates_uv``, ``unit_positions_um``,
        ``peak_channel``, ``peak_amplitude_uv``, ``snr``,
        ``firing_rate_hz``); ``spike_displacement_um`` float64 (n_spikes,):
        the drift of each spike's unit at the spike (zeros without drift;
        templates and positions are those at zero displacement); channel
        ``positions_um`` (n_channels, 2); and 0-d arrays ``sampling_rate_hz``,
        ``noise_uv``, ``gain_to_uv``, ``trough_index``, ``n_samples``.
    """
    sample_index, unit_index = generate_spike_trains(params)
    return {
        "spike_sample_index": sample_index,
        "spike_unit_index": unit_index,
        "spike_displacement_um": spike_displacement_um(params, sample_index, unit_index),
        **generate_units(params),
        "positions_um": neuropixels_like_geometry(params.n_channels),
        "sampling_rate_hz": np.float64(params.sampling_rate_hz),
        "noise_uv": np.float64(params.noise_uv),
        "gain_to_uv": np.float64(params.gain_to_uv),
        "trough_index": np.int64(params.trough_index),
        "n_samples": np.int64(params.n_samples),
    }
