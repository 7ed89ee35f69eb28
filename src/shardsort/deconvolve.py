"""Template matching (deconvolution) kernels.

Greedy matching pursuit in the spirit of YASS and Kilosort, run per time chunk
on preprocessed (whitened, unit-noise) traces.

For template onset ``tau`` and unit ``k`` the kernel tracks the inner product
``c[tau, k] = <residual[tau : tau + T], What_k>`` of the residual with a
low-rank (SVD) approximation ``What_k`` of the template. Fitting the template
there with amplitude ``a = clip(c / ||What_k||^2, amplitude_min,
amplitude_max)`` explains the energy (decrease of the squared residual)

    ``E[tau, k] = 2 a c - a^2 ||What_k||^2``.

Each iteration accepts, in one batch, every ``(tau, k)`` whose ``E`` is at least
``threshold`` and is the largest over all units and all onsets within
``T - 1`` samples; accepted spikes therefore never overlap and are fitted
independently. Their full templates, at whichever of ``upsample``
pre-computed sub-sample shifts lies nearest the interpolated peak, are subtracted through precomputed template cross-correlations, so the
residual itself is never materialised. The loop stops when no ``E`` reaches the
threshold. A few sweeps of block coordinate descent then refit every spike's
amplitude, sub-sample shift and time (by up to one sample) given all the
others, which removes most of the greedy bias on overlapping spikes.

:func:`prepare_templates` computes the :class:`DeconvBasis` once (it can be
saved with :meth:`DeconvBasis.to_arrays`); :func:`deconvolve_chunk` runs on one
window ``[core_start - margin, core_stop + margin)`` and reports the spikes of
the core only, in core-local samples. Spikes in the margins are subtracted but
not reported, so a margin of :attr:`DeconvBasis.margin_samples` makes the
result independent of chunking up to float32 rounding.

All kernels are pure: arrays in, arrays out, no I/O and no global state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import fft as sp_fft
from scipy.ndimage import maximum_filter1d

from shardsort.compiled import best_units, subtract_spikes
from shardsort.memory import transpose_into
from shardsort.tables import SPIKE_DTYPE, empty

#: Smallest FFT length of the blocks used to compute the initial objective
#: (2048: the spectra of 384 channels stay in cache; 1.4x faster than 4096).
_MIN_BLOCK_FFT = 2048


@dataclass(frozen=True)
class DeconvBasis:
    """Everything :func:`deconvolve_chunk` needs about the templates.

    Attributes
    ----------
    spatial : ndarray of float32, shape (n_channels, n_units * rank)
        Spatial singular vectors, unit-major (column ``k * rank + r``).
    temporal : ndarray of float32, shape (T, n_units * rank)
        Temporal singular vectors scaled by the singular values, same columns.
    norms : ndarray of float32, shape (n_units,)
        Squared norm of each low-rank template.
    offsets : ndarray of float64, shape (upsample,)
        Sub-sample shifts tried, in samples, within (-0.5, 0.5).
    cross : ndarray of float32, shape (n_values,)
        Cross-correlations of the pairs of templates that share a channel,
        unit by unit: :meth:`cross_block` gives unit ``j``'s values, shaped
        (upsample, 2 T - 1, n_overlapping), whose ``[f, T - 1 + lag, i]`` is
        the inner product of template ``j`` shifted by ``offsets[f]`` with
        low-rank template ``k = overlap_units[overlap_start[j] + i]`` starting
        ``lag`` samples later. Every other pair's is exactly zero (sparse
        templates on a long probe: a few percent of the pairs).
    cross_start : ndarray of int64, shape (n_units + 1,)
        Where each unit's values start in ``cross``.
    overlap_start : ndarray of int64, shape (n_units + 1,)
        Where each unit's overlapping units start in ``overlap_units``.
    overlap_units : ndarray of int64, shape (n_pairs,)
        The units sharing a channel with each unit (itself included), ascending.
    pre_samples : int
        Template index of the trough.
    noise_factors : ndarray of float32, shape (n_units,)
        Variance of each template's inner product with background noise,
        divided by its squared norm (1 for white noise; larger where the
        noise is coloured like the template). Explained energies are divided
        by it, so ``threshold`` is a significance in squared noise SDs of
        the matched filter, the same for every unit.
    """

    spatial: npt.NDArray[np.float32]
    temporal: npt.NDArray[np.float32]
    norms: npt.NDArray[np.float32]
    offsets: npt.NDArray[np.float64]
    cross: npt.NDArray[np.float32]
    cross_start: npt.NDArray[np.int64]
    overlap_start: npt.NDArray[np.int64]
    overlap_units: npt.NDArray[np.int64]
    pre_samples: int
    noise_factors: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        if self.noise_factors is None:
            object.__setattr__(
                self, "noise_factors", np.ones(self.norms.shape[0], dtype=np.float32)
            )

    @property
    def n_units(self) -> int:
        """Number of templates."""
        return self.norms.shape[0]

    @property
    def n_samples(self) -> int:
        """Template length ``T``."""
        return self.temporal.shape[0]

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return self.spatial.shape[0]

    @property
    def rank(self) -> int:
        """Number of SVD components kept per template."""
        return self.spatial.shape[1] // max(self.n_units, 1)

    @property
    def margin_samples(self) -> int:
        """Margin on each side of a chunk core that makes results chunk-free."""
        return 2 * self.n_samples

    def cross_block(self, unit: int) -> npt.NDArray[np.float32]:
        """Unit ``unit``'s cross-correlations, (upsample, 2 T - 1, n_overlapping)."""
        n_overlapping = self.overlap_start[unit + 1] - self.overlap_start[unit]
        return self.cross[self.cross_start[unit] : self.cross_start[unit + 1]].reshape(
            self.offsets.size, 2 * self.n_samples - 1, n_overlapping
        )

    def dense_cross(self) -> npt.NDArray[np.float32]:
        """All cross-correlations, (n_units, upsample, 2 T - 1, n_units), zeros included."""
        dense = np.zeros(
            (self.n_units, self.offsets.size, 2 * self.n_samples - 1, self.n_units),
            dtype=np.float32,
        )
        for unit in range(self.n_units):
            others = self.overlap_units[
                self.overlap_start[unit] : self.overlap_start[unit + 1]
            ]
            dense[unit][..., others] = self.cross_block(unit)
        return dense

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Return the fields as arrays, e.g. for ``numpy.savez``."""
        return {
            "spatial": self.spatial,
            "temporal": self.temporal,
            "norms": self.norms,
            "offsets": self.offsets,
            "cross": self.cross,
            "cross_start": self.cross_start,
            "overlap_start": self.overlap_start,
            "overlap_units": self.overlap_units,
            "pre_samples": np.asarray(self.pre_samples, dtype=np.int64),
            "noise_factors": self.noise_factors,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> DeconvBasis:
        """Rebuild a basis from the output of :meth:`to_arrays`.

        Also reads the dense ``cross`` (n_units, upsample, 2 T - 1, n_units)
        of bases saved before the sparse layout.
        """
        cross = np.asarray(arrays["cross"], dtype=np.float32)
        if "cross_start" in arrays:
            sparse = {
                "cross": cross,
                "cross_start": np.asarray(arrays["cross_start"], dtype=np.int64),
                "overlap_start": np.asarray(arrays["overlap_start"], dtype=np.int64),
                "overlap_units": np.asarray(arrays["overlap_units"], dtype=np.int64),
            }
        else:
            overlapping = [np.flatnonzero((c != 0).any(axis=(0, 1))) for c in cross]
            sparse = _sparse_cross(
                [c[..., others] for c, others in zip(cross, overlapping, strict=True)],
                overlapping,
            )
        return cls(
            spatial=np.asarray(arrays["spatial"], dtype=np.float32),
            temporal=np.asarray(arrays["temporal"], dtype=np.float32),
            norms=np.asarray(arrays["norms"], dtype=np.float32),
            offsets=np.asarray(arrays["offsets"], dtype=np.float64),
            **sparse,
            pre_samples=int(arrays["pre_samples"]),
            noise_factors=(
                np.asarray(arrays["noise_factors"], dtype=np.float32)
                if "noise_factors" in arrays
                else None
            ),
        )


# ---------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------


def _sparse_cross(
    blocks: list[np.ndarray], overlapping: list[np.ndarray]
) -> dict[str, np.ndarray]:
    """The flat ``cross`` of :class:`DeconvBasis` and its index, from each unit's
    block (upsample, 2 T - 1, n_overlapping) and overlapping units."""
    counts = [others.size for others in overlapping]
    sizes = [block.size for block in blocks]
    return {
        "cross": np.concatenate(
            [block.astype(np.float32).ravel() for block in blocks]
            + [np.zeros(0, np.float32)]
        ),
        "cross_start": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "overlap_start": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "overlap_units": np.concatenate(
            [np.asarray(others, dtype=np.int64) for others in overlapping]
            + [np.zeros(0, np.int64)]
        ),
    }


def _subsample_offsets(upsample: int) -> npt.NDArray[np.float64]:
    """``upsample`` evenly spaced shifts, symmetric around 0, within (-0.5, 0.5)."""
    return (np.arange(upsample) - (upsample - 1) / 2) / upsample


def _shift_templates(
    templates: npt.NDArray[np.float64], offsets: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Delay each template by each offset with FFT (sinc) interpolation.

    Returns an array shaped (n_units, n_offsets, T, n_channels) whose entry
    ``[k, f, t]`` approximates ``templates[k]`` at time ``t - offsets[f]``.
    """
    n_times = templates.shape[1]
    n_fft = sp_fft.next_fast_len(2 * n_times, real=True)
    spectrum = sp_fft.rfft(templates, n_fft, axis=1)
    phase = np.exp(-2j * np.pi * np.outer(offsets, sp_fft.rfftfreq(n_fft)))
    shifted = sp_fft.irfft(
        spectrum[:, None, :, :] * phase[None, :, :, None], n_fft, axis=2
    )
    return shifted[:, :, :n_times, :]


def prepare_templates(
    templates: npt.ArrayLike,
    *,
    pre_samples: int,
    rank: int = 5,
    upsample: int = 5,
    noise_factors: npt.ArrayLike | None = None,
) -> DeconvBasis:
    """Precompute the low-rank basis and cross-correlations of the templates.

    Parameters
    ----------
    templates : array_like of float32, shape (n_units, T, n_channels)
        Cleaned, aligned templates (trough at ``pre_samples``), T >= 3.
    pre_samples : int
        Template index of the trough; reported spike times point there.
    rank : int, optional
        SVD components kept per template (capped at ``min(T, n_channels)``).
    upsample : int, optional
        Number of sub-sample shifts tried when subtracting a spike (1 = none).
    noise_factors : array_like, shape (n_units,), optional
        Per-unit noise factors (see :class:`DeconvBasis`); all ones (white
        noise) by default. :func:`shardsort.templates.noise_factors` gives them.

    Returns
    -------
    DeconvBasis
        Memory: ``cross`` holds ``4 * upsample * (2 T - 1)`` bytes per pair of
        templates sharing a channel (all pairs at most).
    """
    array = np.asarray(templates, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(
            "templates must have shape (n_units, n_samples, n_channels), "
            f"got {array.shape}"
        )
    n_units, n_times, n_channels = array.shape
    if n_times < 3 or n_channels < 1:
        raise ValueError(
            "templates must have at least 3 samples and 1 channel, "
            f"got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("templates must be finite, got NaN or inf values")
    if not 0 <= pre_samples < n_times:
        raise ValueError(
            f"pre_samples must lie in [0, {n_times - 1}], got {pre_samples}"
        )
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if upsample < 1:
        raise ValueError(f"upsample must be >= 1, got {upsample}")

    if noise_factors is not None:
        noise_factors = np.asarray(noise_factors, dtype=np.float32)
        if noise_factors.shape != (n_units,) or not np.all(noise_factors > 0):
            raise ValueError(
                f"noise_factors must be {n_units} positive values, got shape "
                f"{noise_factors.shape}"
            )
    rank = min(rank, n_times, n_channels)
    # Each template's SVD on its own channels (sparse templates span tens of a
    # probe's hundreds): a channel where a template is zero has a zero row in
    # the exact SVD, and exact zeros let the matching skip the channels and
    # unit pairs that do not overlap. Components beyond a template's rank
    # (fewer channels than ``rank``) are zero.
    temporal = np.zeros((n_units, n_times, rank))
    spatial = np.zeros((n_units, n_channels, rank))
    singular = np.zeros((n_units, rank))
    for unit, channels in enumerate((array != 0).any(axis=1)):
        where = np.flatnonzero(channels)
        if where.size == 0:
            continue
        left, values, right = np.linalg.svd(array[unit][:, where], full_matrices=False)
        r = min(rank, values.size)
        temporal[unit, :, :r] = left[:, :r] * values[:r]  # (T, R)
        spatial[unit, where, :r] = right[:r].T  # (C, R)
        singular[unit, :r] = values[:r]
    norms = (singular**2).sum(axis=1)
    offsets = _subsample_offsets(upsample)

    spatial_flat = spatial.transpose(1, 0, 2).reshape(n_channels, n_units * rank)
    n_fft = sp_fft.next_fast_len(2 * n_times - 1, real=True)
    temporal_spectrum = np.conj(sp_fft.rfft(temporal, n_fft, axis=1))  # (K, F, R)
    lag_index = np.arange(-(n_times - 1), n_times) % n_fft
    support = (array != 0).any(axis=1)  # (K, C): the channels of each template
    blocks, overlapping = [], []
    for unit in range(n_units):
        # Only the template's channels and the units sharing one of them:
        # the cross-correlation with any other unit is exactly zero.
        channels = np.flatnonzero(support[unit])
        others = np.flatnonzero(support[:, channels].any(axis=1))
        overlapping.append(others)
        if others.size == 0:
            blocks.append(np.zeros((upsample, 2 * n_times - 1, 0), np.float32))
            continue
        columns = (others[:, None] * rank + np.arange(rank)).ravel()
        # projections[f, t, k, r] = <shifted template (unit, f) at t, spatial[k, :, r]>
        # One unit at a time: all units' shifted copies at once would take
        # n_units x upsample x T x n_channels complex values (GBs at 1,024 channels).
        shifted = _shift_templates(array[unit : unit + 1, :, channels], offsets)[0]
        projections = (shifted @ spatial_flat[channels][:, columns]).reshape(
            upsample, n_times, others.size, rank
        )
        spectrum = sp_fft.rfft(projections, n_fft, axis=1)  # (U, F, K', R)
        summed = np.einsum("ufkr,kfr->ufk", spectrum, temporal_spectrum[others])
        block = sp_fft.irfft(summed, n_fft, axis=1)[:, lag_index]
        blocks.append(block.astype(np.float32))

    return DeconvBasis(
        spatial=np.ascontiguousarray(spatial_flat, dtype=np.float32),
        temporal=np.ascontiguousarray(
            temporal.transpose(1, 0, 2).reshape(n_times, n_units * rank),
            dtype=np.float32,
        ),
        norms=norms.astype(np.float32),
        offsets=offsets,
        **_sparse_cross(blocks, overlapping),
        pre_samples=int(pre_samples),
        noise_factors=noise_factors,
    )


# ---------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------


def _unit_channels(
    spatial: npt.NDArray[np.float32], n_units: int, rank: int
) -> list[slice | npt.NDArray[np.intp]]:
    """Channels where each unit's spatial components are not zero.

    A slice where they are compact (a sparse template on a probe whose
    channels are numbered by depth), else their indices.
    """
    active = (spatial.reshape(spatial.shape[0], n_units, rank) != 0).any(axis=2)
    channels = []
    for unit in range(n_units):
        found = np.flatnonzero(active[:, unit])
        if found.size and found[-1] + 1 - found[0] <= 2 * found.size:
            channels.append(slice(found[0], found[-1] + 1))
        else:
            channels.append(found)
    return channels


def _initial_objective(
    traces: npt.NDArray[np.float32], basis: DeconvBasis
) -> npt.NDArray[np.float32]:
    """``c[i, k] = <traces[i - T + 1 : i + 1], What_k>``, traces zero outside.

    Shape (n_samples + T - 1, n_units); row ``i`` is onset ``i - (T - 1)``.
    Computed by overlap-add over time blocks: FFT of the channels, spatial
    projection in the frequency domain (one real matrix product per unit on
    the interleaved spectrum of the channels the unit spans: sparse templates
    span a few tens of channels of hundreds), product with the temporal
    components' spectra and sum over the rank, inverse FFT per unit.
    """
    n_samples = traces.shape[0]
    n_times, n_units, rank = basis.n_samples, basis.n_units, basis.rank
    n_fft = sp_fft.next_fast_len(max(_MIN_BLOCK_FFT, 8 * n_times), real=True)
    block = n_fft - n_times + 1
    kernel = sp_fft.rfft(basis.temporal[::-1].T, n_fft, axis=1)  # (K R, F)
    spatial_t = basis.spatial.T
    channels = _unit_channels(basis.spatial, n_units, rank)
    spatial_units = [
        np.ascontiguousarray(spatial_t[unit * rank : (unit + 1) * rank, where])
        for unit, where in enumerate(channels)
    ]
    objective = np.zeros((n_samples + n_times - 1, n_units), dtype=np.float32)
    padded = np.zeros((traces.shape[1], n_fft), dtype=np.float32)
    summed = np.zeros((n_units, n_fft // 2 + 1), dtype=np.complex64)
    for start in range(0, n_samples, block):
        stop = min(start + block, n_samples)
        transpose_into(padded[:, : stop - start], traces[start:stop])
        padded[:, stop - start :] = 0.0
        # A real matrix acting on interleaved (re, im) columns = complex product.
        spectrum = sp_fft.rfft(padded, axis=1).view(np.float32)  # (C, 2 F)
        for unit, where in enumerate(channels):
            if spatial_units[unit].size == 0:
                continue
            projected = (spatial_units[unit] @ spectrum[where]).view(np.complex64)
            projected *= kernel[unit * rank : (unit + 1) * rank]
            summed[unit] = projected.sum(axis=0)
        length = stop - start + n_times - 1
        segment = sp_fft.irfft(summed, n_fft, axis=1)[:, :length]
        transpose_into(objective[start : start + length], segment, add=True)
    return objective


def _local_peaks(
    best: npt.NDArray[np.float32], threshold: float, half_width: int
) -> npt.NDArray[np.intp]:
    """Indices whose value reaches ``threshold`` and tops ``half_width`` on each side.

    On exact ties the earliest index wins, so peaks are > ``half_width`` apart.
    """
    neighbourhood = maximum_filter1d(
        best, size=2 * half_width + 1, mode="constant", cval=-np.inf
    )
    peaks = np.flatnonzero((best >= threshold) & (best == neighbourhood))
    if peaks.size < 2 or np.diff(peaks).min() > half_width:
        return peaks
    kept = [peaks[0]]
    for peak in peaks[1:]:
        if peak - kept[-1] > half_width:
            kept.append(peak)
    return np.asarray(kept, dtype=np.intp)


def _same_unit_gaps(
    rows: npt.NDArray[np.intp], units: npt.NDArray[np.intp]
) -> npt.NDArray[np.int64]:
    """Distance from each spike to the nearest other spike of its unit."""
    order = np.lexsort((rows, units))
    same = units[order][1:] == units[order][:-1]
    steps = np.where(same, np.diff(rows[order]), np.iinfo(np.int64).max)
    nearest = np.full(rows.size, np.iinfo(np.int64).max, dtype=np.int64)
    nearest[1:] = steps
    nearest[:-1] = np.minimum(nearest[:-1], steps)
    gaps = np.empty_like(nearest)
    gaps[order] = nearest
    return gaps


#: One batch of accepted spikes: onset rows (sorted), units, index of the
#: sub-sample offset, amplitudes. Arrays are updated in place by the refit.
_Batch = tuple[
    npt.NDArray[np.intp],
    npt.NDArray[np.intp],
    npt.NDArray[np.intp],
    npt.NDArray[np.float32],
]


class _Pursuit:
    """Matching-pursuit state of one window.

    ``objective[i, k]`` is the inner product of the current residual with the
    low-rank template ``k`` at onset ``i - (T - 1)``; ``best[i]`` and
    ``winner[i]`` hold the largest explained energy over units and its unit,
    ``-inf`` where every unit is locked (refractory, or the template does not
    fit in the window).
    """

    def __init__(
        self,
        traces: npt.NDArray[np.float32],
        basis: DeconvBasis,
        amplitude_min: float,
        amplitude_max: float,
        threshold: npt.NDArray[np.float32],
    ) -> None:
        self.basis = basis
        self.threshold = threshold
        self.amplitude_min = amplitude_min
        self.amplitude_max = amplitude_max
        self.half = basis.n_samples - 1
        self.n_samples = traces.shape[0]
        norms = basis.norms
        self.inverse_norms = np.divide(
            1.0, norms, out=np.zeros_like(norms), where=norms > 0
        )
        self.objective = _initial_objective(traces, basis)
        # A spike changes the objective of the units overlapping its own only.
        self.cross = basis.cross
        self.cross_start = basis.cross_start.astype(np.intp)
        self.overlap_start = basis.overlap_start.astype(np.intp)
        self.overlap_units = basis.overlap_units.astype(np.intp)
        # Where each unit's own cross-correlation sits in its block (-1: none,
        # an all-zero template).
        self.own_index = np.full(basis.n_units, -1, dtype=np.intp)
        for unit in range(basis.n_units):
            others = self.overlap_units[
                self.overlap_start[unit] : self.overlap_start[unit + 1]
            ]
            found = np.searchsorted(others, unit)
            if found < others.size and others[found] == unit:
                self.own_index[unit] = found
        self.floor = np.broadcast_to(
            threshold * basis.noise_factors, (basis.n_units,)
        ).astype(np.float32)
        self.locked = np.zeros(self.objective.shape, dtype=bool)
        self.locked[: self.half] = True
        self.locked[self.n_samples :] = True
        self.best = np.empty(self.objective.shape[0], dtype=np.float32)
        self.winner = np.empty(self.objective.shape[0], dtype=np.intp)
        self.refresh(np.arange(self.objective.shape[0]))

    def refresh(self, rows: npt.NDArray[np.intp]) -> None:
        """Recompute ``best`` and ``winner`` on ``rows``.

        A unit is a candidate where its energy is significant against its
        own noise (``threshold * noise_factors``) and it is not locked; among
        candidates, the one explaining most energy wins.
        """
        best_units(
            self.objective,
            np.asarray(rows, dtype=np.intp),
            self.basis.norms,
            self.inverse_norms,
            np.float32(self.amplitude_min),
            np.float32(self.amplitude_max),
            self.floor,
            self.locked,
            self.best,
            self.winner,
        )

    def fit(
        self, values: npt.NDArray[np.floating], units: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        """Sub-sample offset and amplitude from objective values at onsets -1, 0, +1.

        A parabola through the three values locates the best match between
        samples; the offset nearest its vertex is chosen and the parabola's
        value there, divided by the template norm, gives the amplitude.
        """
        before, centre, after = values.astype(np.float64).T
        slope = (after - before) / 2.0
        curvature = after - 2.0 * centre + before
        concave = curvature < 0
        vertex = np.zeros_like(slope)
        vertex[concave] = np.clip(-slope[concave] / curvature[concave], -0.5, 0.5)
        offsets = self.basis.offsets
        choice = np.abs(offsets[None, :] - vertex[:, None]).argmin(axis=1)
        offset = offsets[choice]
        value = centre + slope * offset + 0.5 * curvature * offset**2
        amplitudes = np.clip(
            value * self.inverse_norms[units], self.amplitude_min, self.amplitude_max
        )
        return choice, amplitudes.astype(np.float32)

    def subtract(
        self,
        rows: npt.NDArray[np.intp],
        units: npt.NDArray[np.intp],
        choice: npt.NDArray[np.intp],
        scale: npt.NDArray[np.float32],
    ) -> None:
        """Subtract ``scale`` times the shifted templates at onset ``rows``.

        ``rows`` must be sorted and distinct. Spikes are applied in interleaved
        groups whose members are at least 2 T - 1 apart, so that their update
        spans are disjoint.
        """
        n_lags = 2 * self.half + 1
        smallest_gap = np.diff(rows).min() if rows.size > 1 else n_lags
        stride = -(-n_lags // smallest_gap)
        subtract_spikes(
            self.objective,
            self.cross,
            self.cross_start,
            self.overlap_start,
            self.overlap_units,
            np.asarray(rows, dtype=np.intp),
            np.asarray(units, dtype=np.intp),
            np.asarray(choice, dtype=np.intp),
            np.asarray(scale, dtype=np.float32),
            self.half,
            int(stride),
        )

    def own_cross(
        self,
        units: npt.NDArray[np.intp],
        choice: npt.NDArray[np.intp],
        lags: npt.NDArray[np.intp],
    ) -> npt.NDArray[np.float32]:
        """Each spike's template (shifted) against its own low-rank template at
        ``lags`` (indices into the 2 T - 1 lags), shape (n_spikes, n_lags)."""
        n_lags = 2 * self.half + 1
        n_overlap = self.overlap_start[units + 1] - self.overlap_start[units]
        at = self.cross_start[units] + self.own_index[units]
        index = at[:, None] + ((choice * n_lags)[:, None] + lags) * n_overlap[:, None]
        values = self.cross[np.maximum(index, 0)]
        values[self.own_index[units] < 0] = 0.0
        return values

    def search(self, refractory_samples: int, max_iterations: int) -> list[_Batch]:
        """Accept batches of non-overlapping spikes until none explains enough."""
        last_row = self.objective.shape[0] - 1
        refractory = np.arange(-refractory_samples, refractory_samples + 1)
        reach = max(self.half, refractory_samples)
        around = np.arange(-reach, reach + 1)
        batches = []
        for _ in range(max_iterations):
            peaks = _local_peaks(self.best, 0.0, self.half)
            if peaks.size == 0:
                break
            units = self.winner[peaks]
            values = self.objective[peaks[:, None] + np.arange(-1, 2), units[:, None]]
            choice, amplitudes = self.fit(values, units)
            self.subtract(peaks, units, choice, amplitudes)
            self.locked[
                np.clip(peaks[:, None] + refractory, 0, last_row), units[:, None]
            ] = True
            dirty = np.zeros(last_row + 1, dtype=bool)
            dirty[np.clip(peaks[:, None] + around, 0, last_row)] = True
            self.refresh(np.flatnonzero(dirty))
            batches.append((peaks, units, choice, amplitudes))
        return batches

    def refit(self, batches: list[_Batch], refractory_samples: int) -> None:
        """One sweep of block coordinate descent over the batches, in place.

        Each batch (whose spikes do not overlap each other) is refitted given
        all other spikes, with its own contribution added back. A spike may
        move by one sample where that keeps it more than
        ``refractory_samples + 2`` samples from the other spikes of its unit,
        so that refractoriness holds even when neighbours move too.
        """
        window = np.arange(-2, 3)
        moves = np.array([0, -1, 1])
        first = 0
        for rows, units, choice, amplitudes in batches:
            own = self.own_cross(units, choice, self.half + window)
            own = self.objective[rows[:, None] + window, units[:, None]] + (
                amplitudes[:, None] * own
            )
            gaps = _same_unit_gaps(
                np.concatenate([batch[0] for batch in batches]),
                np.concatenate([batch[1] for batch in batches]),
            )[first : first + rows.size]
            first += rows.size
            moved = rows[:, None] + moves
            allowed = (moved >= self.half) & (moved < self.n_samples)
            allowed[gaps <= refractory_samples + 2, 1:] = False
            move = moves[np.where(allowed, own[:, 2 + moves], -np.inf).argmax(axis=1)]
            picked = own[
                np.arange(rows.size)[:, None], 2 + move[:, None] + np.arange(-1, 2)
            ]
            new_choice, new_amplitudes = self.fit(picked, units)
            kept = (move == 0) & (new_choice == choice)
            changed = ~kept
            self.subtract(
                rows[kept],
                units[kept],
                choice[kept],
                new_amplitudes[kept] - amplitudes[kept],
            )
            self.subtract(
                rows[changed], units[changed], choice[changed], -amplitudes[changed]
            )
            rows += move
            self.subtract(
                rows[changed],
                units[changed],
                new_choice[changed],
                new_amplitudes[changed],
            )
            choice[:] = new_choice
            amplitudes[:] = new_amplitudes


def unit_thresholds(
    basis: DeconvBasis, *, highest: float, lowest: float, recall_margin: float
) -> npt.NDArray[np.float32]:
    """Per-unit significance thresholds for :func:`deconvolve_chunk`.

    A unit of matched-filter SNR ``s`` (``sqrt(norm / noise_factor)``: the
    z-score of a spike equal to its template) gets ``(s - recall_margin)^2``
    clipped to ``[lowest, highest]``: low enough to keep the spikes within
    ``recall_margin`` noise SDs of a typical one (97.7 % for 2), never lower
    than needed, since every step down also admits noise and scaled-down
    spikes of other units. Strong units keep ``highest``.

    Returns
    -------
    ndarray of float32, shape (n_units,)
    """
    if not 0 < lowest <= highest:
        raise ValueError(
            f"thresholds must satisfy 0 < lowest <= highest, got {lowest} and {highest}"
        )
    if recall_margin < 0:
        raise ValueError(f"recall_margin must be >= 0, got {recall_margin}")
    snr = np.sqrt(
        np.divide(
            basis.norms.astype(np.float64),
            basis.noise_factors.astype(np.float64),
        )
    )
    reach = np.maximum(snr - recall_margin, 0.0) ** 2
    return np.clip(reach, lowest, highest).astype(np.float32)


def deconvolve_chunk(
    window: npt.ArrayLike,
    basis: DeconvBasis,
    *,
    core_start: int,
    core_stop: int,
    threshold: float | npt.ArrayLike,
    amplitude_min: float,
    amplitude_max: float,
    refractory_samples: int,
    max_iterations: int = 100,
    refit_sweeps: int = 2,
) -> np.ndarray:
    """Find the spikes of the chunk core by greedy template matching.

    Parameters
    ----------
    window : array_like of float32, shape (n_samples, n_channels)
        Preprocessed traces of the chunk with its margins (see
        :attr:`DeconvBasis.margin_samples`).
    basis : DeconvBasis
        Output of :func:`prepare_templates`.
    core_start, core_stop : int
        Core of the chunk within ``window``; only spikes whose trough lies in
        ``[core_start, core_stop)`` are reported.
    threshold : float or array_like of shape (n_units,)
        Smallest explained energy of an accepted spike, in squared noise SDs of
        the unit's matched filter (see :attr:`DeconvBasis.noise_factors`), > 0;
        one value for all units or one per unit (:func:`unit_thresholds`).
    amplitude_min, amplitude_max : float
        Range of the fitted template scaling, ``0 < min <= max``.
    refractory_samples : int
        A unit never fires twice within this many samples (>= 0).
    max_iterations : int, optional
        Upper bound on the number of batches (>= 1).
    refit_sweeps : int, optional
        Passes of refitting after the search (>= 0): each spike's amplitude,
        sub-sample shift and (by up to one sample) time are re-estimated given
        all the other spikes, which removes most of the bias of the greedy fit
        on overlapping spikes.

    Returns
    -------
    ndarray of SPIKE_DTYPE, shape (n_spikes,)
        Spikes sorted by sample then unit: ``sample_index`` is the trough
        sample (onset + ``pre_samples``) relative to ``core_start``,
        ``amplitude`` the fitted scaling of the template.
    """
    traces = np.ascontiguousarray(window, dtype=np.float32)
    if traces.ndim != 2 or traces.shape[1] != basis.n_channels:
        raise ValueError(
            f"window must have shape (n_samples, {basis.n_channels}), "
            f"got {traces.shape}"
        )
    n_samples = traces.shape[0]
    if not 0 <= core_start <= core_stop <= n_samples:
        raise ValueError(
            "core_start and core_stop must satisfy "
            f"0 <= core_start <= core_stop <= {n_samples}, "
            f"got {core_start} and {core_stop}"
        )
    threshold = np.asarray(threshold, dtype=np.float32)
    if threshold.ndim > 1 or (threshold.ndim == 1 and threshold.size != basis.n_units):
        raise ValueError(
            f"threshold must be a number or have shape ({basis.n_units},), "
            f"got shape {threshold.shape}"
        )
    if not (threshold > 0).all():
        raise ValueError(f"threshold must be > 0, got {threshold.min()}")
    if not 0 < amplitude_min <= amplitude_max:
        raise ValueError(
            "amplitudes must satisfy 0 < amplitude_min <= amplitude_max, "
            f"got amplitude_min={amplitude_min} and amplitude_max={amplitude_max}"
        )
    if refractory_samples < 0:
        raise ValueError(f"refractory_samples must be >= 0, got {refractory_samples}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    if refit_sweeps < 0:
        raise ValueError(f"refit_sweeps must be >= 0, got {refit_sweeps}")
    if basis.n_units == 0 or n_samples < basis.n_samples:
        return empty(SPIKE_DTYPE)

    pursuit = _Pursuit(traces, basis, amplitude_min, amplitude_max, threshold)
    batches = pursuit.search(refractory_samples, max_iterations)
    if not batches:
        return empty(SPIKE_DTYPE)
    for _ in range(refit_sweeps):
        pursuit.refit(batches, refractory_samples)

    rows, units, _, amplitudes = (np.concatenate(part) for part in zip(*batches))
    troughs = rows - pursuit.half + basis.pre_samples
    in_core = (troughs >= core_start) & (troughs < core_stop)
    spikes = np.zeros(int(in_core.sum()), dtype=SPIKE_DTYPE)
    spikes["sample_index"] = troughs[in_core] - core_start
    spikes["unit_index"] = units[in_core]
    spikes["amplitude"] = amplitudes[in_core]
    return np.sort(spikes, order=["sample_index", "unit_index"])
