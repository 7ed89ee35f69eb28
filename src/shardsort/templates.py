"""Template estimation, cleaning and merging kernels.

A template is the mean waveform of one unit, shaped ``(T, n_channels)`` with
``T = pre_samples + post_samples``: the snippet of a spike whose trough lies at
sample ``s`` is ``traces[s - pre_samples : s + post_samples]``, so the trough
sits at template index ``pre_samples``. Template stacks are float32 arrays
shaped ``(n_units, T, n_channels)``.

Typical use by the workflow:

1. :func:`select_spikes_per_unit` once on the merged spike table, when the
   number of spikes averaged per unit is capped (the choice must see the whole
   table so that it does not depend on chunking);
2. :func:`accumulate_templates` per time chunk (sums and counts only, never all
   waveforms in memory), then :func:`reduce_templates` over the chunks;
3. :func:`align_templates`, :func:`clean_templates` and
   :func:`merge_similar_templates` once, on the reduced templates.

No sum of squares is accumulated: the traces are whitened to unit noise, so a
template's amplitude is already a signal-to-noise ratio and is what
:func:`clean_templates` thresholds.

Shift convention, shared by :func:`align_templates` and
:func:`merge_similar_templates`: a returned ``shift`` ``d`` for a unit means
its old template is the new one delayed by ``d`` samples, so the unit's spike
times become ``sample_index + d``.

All kernels are pure: arrays in, arrays out, no I/O and no global state.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from shardsort.checks import as_index_array

#: Upper bound on the number of float32 values gathered at once when summing
#: snippets (about 16 MB), so memory stays flat on dense chunks.
_GATHER_BATCH_VALUES = 4_000_000

#: Spikes whose close pairs :func:`refractory_conflicts` gathers at a time.
_CONFLICT_BLOCK_SPIKES = 1_000_000

#: Names of the rejection criteria of :func:`clean_templates`, in order.
CLEAN_REASONS = ("too_small", "too_few_spikes", "too_spread", "off_centre")


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_templates(templates: npt.ArrayLike) -> npt.NDArray[np.float32]:
    array = np.asarray(templates, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(
            "templates must have shape (n_units, n_samples, n_channels), "
            f"got {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("templates must be finite, got NaN or inf values")
    return array


def _check_counts(counts: npt.ArrayLike, n_units: int) -> npt.NDArray[np.int64]:
    array = np.asarray(counts)
    if array.shape != (n_units,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"counts must be an integer array of shape ({n_units},), "
            f"got {array.dtype} {array.shape}"
        )
    if np.any(array < 0):
        raise ValueError(f"counts must be >= 0, got minimum {array.min()}")
    return array.astype(np.int64)


def _check_labels(labels: npt.ArrayLike, n_units: int) -> npt.NDArray[np.int64]:
    if n_units < 0:
        raise ValueError(f"n_units must be >= 0, got {n_units}")
    array = np.asarray(labels)
    if array.ndim != 1 or not (
        np.issubdtype(array.dtype, np.integer) or array.size == 0
    ):
        raise ValueError(
            f"labels must be a 1-D integer array, got {array.dtype} {array.shape}"
        )
    array = array.astype(np.int64)
    if array.size and (array.min() < -1 or array.max() >= n_units):
        raise ValueError(
            f"labels must lie in [-1, {n_units - 1}] (n_units={n_units}), "
            f"got range [{array.min()}, {array.max()}]"
        )
    return array


def _check_positions(
    positions_um: npt.ArrayLike, n_channels: int
) -> npt.NDArray[np.float64]:
    positions = np.asarray(positions_um, dtype=np.float64)
    if positions.shape != (n_channels, 2):
        raise ValueError(
            f"positions_um must have shape ({n_channels}, 2), got {positions.shape}"
        )
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions_um must be finite, got NaN or inf values")
    return positions


def _check_max_shift(max_shift_samples: int, n_samples: int) -> None:
    if not 0 <= max_shift_samples < max(n_samples, 1):
        raise ValueError(
            f"max_shift_samples must lie in [0, {max(n_samples - 1, 0)}] "
            f"(template length {n_samples}), got {max_shift_samples}"
        )


def _check_floor_fraction(floor_fraction: float) -> None:
    if not 0.0 <= floor_fraction < 1.0:
        raise ValueError(f"floor_fraction must lie in [0, 1), got {floor_fraction}")


# ---------------------------------------------------------------------------
# Accumulation
# ---------------------------------------------------------------------------


def select_spikes_per_unit(
    labels: npt.ArrayLike,
    *,
    n_units: int,
    max_per_unit: int,
    seed: int,
) -> npt.NDArray[np.bool_]:
    """Choose at most ``max_per_unit`` spikes of each unit, at random.

    Run it once on the whole (merged) spike table before cutting it into time
    chunks: the selection then does not depend on chunking.

    Parameters
    ----------
    labels : array_like of int, shape (n_spikes,)
        Unit of each spike; ``-1`` (unassigned) is never selected.
    n_units : int
        Number of units; labels lie in ``[-1, n_units)``.
    max_per_unit : int
        Largest number of spikes kept per unit (>= 1).
    seed : int
        Seed of the random choice; the same labels and seed give the same mask.

    Returns
    -------
    ndarray of bool, shape (n_spikes,)
        True for the selected spikes.
    """
    labels = _check_labels(labels, n_units)
    if max_per_unit < 1:
        raise ValueError(f"max_per_unit must be >= 1, got {max_per_unit}")
    keys = np.random.default_rng(seed).random(labels.size)
    order = np.lexsort((keys, labels))
    sorted_labels = labels[order]
    rank = np.arange(labels.size) - np.searchsorted(sorted_labels, sorted_labels)
    keep = np.zeros(labels.size, dtype=bool)
    keep[order] = (rank < max_per_unit) & (sorted_labels >= 0)
    return keep


def accumulate_templates(
    window: npt.ArrayLike,
    sample_index_in_window: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_units: int,
    pre_samples: int,
    post_samples: int,
    out: tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Sum the snippets of each unit over one time chunk.

    Parameters
    ----------
    window : array_like of float32, shape (n_samples, n_channels)
        Preprocessed traces of the chunk with its margins.
    sample_index_in_window : array_like of int, shape (n_spikes,)
        Trough sample of each spike, relative to the start of ``window``.
        Pass only the spikes of the chunk core (each spike in exactly one
        chunk), already capped with :func:`select_spikes_per_unit` if wanted.
    labels : array_like of int, shape (n_spikes,)
        Unit of each spike; spikes labelled ``-1`` are skipped.
    n_units : int
        Number of units (rows of the output).
    pre_samples, post_samples : int
        Snippet ``window[s - pre_samples : s + post_samples]``. Spikes whose
        snippet does not fit in ``window`` are skipped (use margins of at
        least ``pre_samples`` and ``post_samples``).
    out : (sums, counts), optional
        Arrays shaped as returned, added to in place and returned (a job
        summing its chunk block by block keeps one set).

    Returns
    -------
    sums : ndarray of float64, shape (n_units, pre_samples + post_samples, n_channels)
        Sum of the snippets of each unit.
    counts : ndarray of int64, shape (n_units,)
        Number of snippets summed per unit.
    """
    traces = np.asarray(window, dtype=np.float32)
    if traces.ndim != 2:
        raise ValueError(
            f"window must have shape (n_samples, n_channels), got {traces.shape}"
        )
    labels = _check_labels(labels, n_units)
    samples = np.asarray(sample_index_in_window)
    if samples.shape != labels.shape or not (
        np.issubdtype(samples.dtype, np.integer) or samples.size == 0
    ):
        raise ValueError(
            "sample_index_in_window must be an integer array shaped like labels "
            f"{labels.shape}, got {samples.dtype} {samples.shape}"
        )
    if pre_samples < 0:
        raise ValueError(f"pre_samples must be >= 0, got {pre_samples}")
    if post_samples < 1:
        raise ValueError(f"post_samples must be >= 1, got {post_samples}")

    n_times = pre_samples + post_samples
    shape = (n_units, n_times, traces.shape[1])
    if out is None:
        sums, total = np.zeros(shape, dtype=np.float64), np.zeros(n_units, dtype=np.int64)
    else:
        sums, total = out
        if sums.shape != shape or sums.dtype != np.float64 or total.shape != (n_units,):
            raise ValueError(
                f"out must be float64 sums of shape {shape} and counts of shape "
                f"({n_units},), got {sums.dtype} {sums.shape} and {total.shape}"
            )
    starts = samples.astype(np.int64) - pre_samples
    usable = (labels >= 0) & (starts >= 0) & (starts + n_times <= traces.shape[0])
    order = np.argsort(labels[usable], kind="stable")
    starts = starts[usable][order]
    labels = labels[usable][order]
    total += np.bincount(labels, minlength=n_units).astype(np.int64)

    # Each unit's snippets are added in float64 one after the other, in runs
    # of at most `batch` spikes whose sum is then added to the unit's total
    # (the rounding of the former gather-and-reduceat form, without copying
    # every snippet: 4x faster).
    batch = max(1, _GATHER_BATCH_VALUES // max(n_times * traces.shape[1], 1))
    run = np.empty((n_times, traces.shape[1]), dtype=np.float64)
    for first in range(0, labels.size, batch):
        batch_labels = labels[first : first + batch]
        units, group_starts = np.unique(batch_labels, return_index=True)
        bounds = np.append(group_starts, batch_labels.size) + first
        for unit, begin, end in zip(units, bounds[:-1], bounds[1:], strict=True):
            run[...] = traces[starts[begin] : starts[begin] + n_times]
            for start in starts[begin + 1 : end]:
                run += traces[start : start + n_times]
            sums[unit] += run
    return sums, total


#: Rows added at a time when reducing sparse per-chunk sums.
_ROW_BLOCK = 64
#: Templates projected on the noise windows at a time (float64 copies).
_TEMPLATE_BLOCK = 128


def reduce_templates(
    parts: Iterable[tuple[npt.NDArray[np.float64], ...]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Turn per-chunk sums and counts into mean templates.

    Parameters
    ----------
    parts : iterable of (sums, counts) or (sums, counts, rows)
        Outputs of :func:`accumulate_templates`, one per chunk: sums of shape
        (n_units, T, n_channels), counts of shape (n_units,). With ``rows``
        (the units with spikes in the chunk), ``sums`` holds only those rows,
        shape (len(rows), T, n_channels). Consumed one at a time, so a
        generator keeps memory flat in the number of chunks, and no full-size
        copy of a chunk's sparse sums is made.

    Returns
    -------
    templates : ndarray of float32, shape (n_units, T, n_channels)
        Mean snippet of each unit; zeros for units without spikes.
    counts : ndarray of int64, shape (n_units,)
        Total number of snippets per unit.
    """
    total = None
    total_counts = None
    for part in parts:
        part_sums, part_counts = part[0], part[1]
        rows = part[2] if len(part) > 2 else None
        n_units = np.shape(part_counts)[0] if rows is not None else np.shape(part_sums)[0]
        if total is None:
            if np.ndim(part_sums) != 3:
                raise ValueError(
                    "sums must hold arrays shaped (n_units, T, n_channels), "
                    f"got {np.shape(part_sums)}"
                )
            total = np.zeros((n_units,) + np.shape(part_sums)[1:], dtype=np.float64)
            total_counts = np.zeros(total.shape[0], dtype=np.int64)
        if rows is None:
            if np.shape(part_sums) != total.shape:
                raise ValueError(
                    f"every sums array must have shape {total.shape}, "
                    f"got {np.shape(part_sums)}"
                )
            total += part_sums
        else:
            rows = np.asarray(rows, dtype=np.int64)
            if (np.shape(part_sums) != (rows.size,) + total.shape[1:]
                    or (rows.size and (rows.min() < 0 or rows.max() >= total.shape[0]))
                    or np.any(np.diff(rows) <= 0)):
                raise ValueError(
                    f"sums of shape {np.shape(part_sums)} do not fit rows {rows.size} "
                    f"(ascending, in [0, {total.shape[0]})) of templates {total.shape}"
                )
            # In blocks of rows: a fancy-indexed += gathers a copy of its rows.
            for i in range(0, rows.size, _ROW_BLOCK):
                total[rows[i : i + _ROW_BLOCK]] += part_sums[i : i + _ROW_BLOCK]
        total_counts += _check_counts(part_counts, total.shape[0])
    if total is None:
        raise ValueError("parts must hold at least one (sums, counts) pair")
    total /= np.maximum(total_counts, 1)[:, None, None]  # in place: no second float64 copy
    return total.astype(np.float32), total_counts


def sparsify_templates(
    templates: npt.ArrayLike,
    counts: npt.ArrayLike,
    *,
    min_fraction: float = 0.1,
    noise_ptp: float = 6.0,
    positions_um: npt.ArrayLike | None = None,
    radius_um: float | None = None,
) -> npt.NDArray[np.float32]:
    """Zero the channels where a mean template is only averaged noise.

    A mean of ``n`` snippets of unit-variance noise keeps a peak-to-peak of
    about ``noise_ptp / sqrt(n)`` on every channel. Summed over hundreds of
    channels that residue dominates a small template's norm: it inflates
    matched-filter SNRs (noise units look significant), lowers the cosine
    between two copies of one unit (they are not merged) and costs
    deconvolution time. A channel is kept when its peak-to-peak reaches both
    ``min_fraction`` of the template's largest one and ``noise_ptp / sqrt(n)``.

    Parameters
    ----------
    templates : array_like of float32, shape (n_units, T, n_channels)
        Mean snippets in noise units.
    counts : array_like of int, shape (n_units,)
        Snippets averaged into each template.
    min_fraction : float, optional
        Fraction of the largest peak-to-peak, in [0, 1).
    noise_ptp : float, optional
        Peak-to-peak of one unit-noise snippet channel (>= 0).
    positions_um : array_like, shape (n_channels, 2), optional
    radius_um : float, optional
        With ``positions_um``: channels farther than this from the template's
        peak channel are zeroed too. On a long probe a weak unit's mean keeps
        averaged noise above the floor on a few of hundreds of distant
        channels, which would make it look spread over the whole probe.

    Returns
    -------
    ndarray of float32, shape (n_units, T, n_channels)
        A copy with the other channels set to 0.
    """
    out = _check_templates(templates).copy()
    counts = _check_counts(counts, out.shape[0])
    _check_floor_fraction(min_fraction)
    if not noise_ptp >= 0:
        raise ValueError(f"noise_ptp must be >= 0, got {noise_ptp!r}")
    if out.shape[0] == 0:
        return out
    ptp = out.max(axis=1) - out.min(axis=1)  # (n_units, n_channels)
    floor = np.maximum(
        min_fraction * ptp.max(axis=1), noise_ptp / np.sqrt(np.maximum(counts, 1))
    )
    keep = ptp >= floor[:, None]
    if radius_um is not None and positions_um is not None:
        positions = _check_positions(positions_um, out.shape[2])
        if not radius_um > 0:
            raise ValueError(f"radius_um must be > 0, got {radius_um!r}")
        peak = positions[ptp.argmax(axis=1)]  # (n_units, 2)
        distance = np.linalg.norm(positions[None, :, :] - peak[:, None, :], axis=2)
        keep &= distance <= radius_um
    out *= keep[:, None, :]
    return out


# ---------------------------------------------------------------------------
# Per-template summaries
# ---------------------------------------------------------------------------


def template_peak_channels(templates: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Channel of each template's most negative sample.

    Parameters
    ----------
    templates : array_like of float32, shape (n_units, T, n_channels)

    Returns
    -------
    ndarray of int64, shape (n_units,)
        Peak (trough) channel; 0 for an all-zero template.
    """
    templates = _check_templates(templates)
    if templates.shape[1] == 0 or templates.shape[2] == 0:
        return np.zeros(templates.shape[0], dtype=np.int64)
    return templates.min(axis=1).argmin(axis=1).astype(np.int64)


def template_amplitudes(templates: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Peak-to-peak amplitude of each template on its peak channel.

    Parameters
    ----------
    templates : array_like of float32, shape (n_units, T, n_channels)

    Returns
    -------
    ndarray of float32, shape (n_units,)
        Amplitude in the units of the traces (noise units once whitened).
    """
    templates = _check_templates(templates)
    if templates.shape[1] == 0 or templates.shape[2] == 0:
        return np.zeros(templates.shape[0], dtype=np.float32)
    peak = template_peak_channels(templates)
    waveforms = templates[np.arange(templates.shape[0]), :, peak]
    return np.ptp(waveforms, axis=1).astype(np.float32)


def _spatial_weights(
    templates: npt.NDArray[np.float32], floor_fraction: float
) -> npt.NDArray[np.float64]:
    """Per-channel amplitude above ``floor_fraction`` of the largest one."""
    amplitudes = np.ptp(templates, axis=1).astype(np.float64)
    floor = floor_fraction * amplitudes.max(axis=1, initial=0.0)
    return np.maximum(amplitudes - floor[:, None], 0.0)


def _centres_and_spreads(
    templates: npt.NDArray[np.float32],
    positions: npt.NDArray[np.float64],
    floor_fraction: float,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    weights = _spatial_weights(templates, floor_fraction)
    total = weights.sum(axis=1)
    has_signal = total > 0
    safe_total = np.where(has_signal, total, 1.0)
    centres = np.where(
        has_signal[:, None],
        weights @ positions / safe_total[:, None],
        positions[template_peak_channels(templates)],
    )
    squared = ((positions[None, :, :] - centres[:, None, :]) ** 2).sum(axis=2)
    spreads = np.sqrt((weights * squared).sum(axis=1) / safe_total)
    return centres, spreads


def template_positions(
    templates: npt.ArrayLike,
    positions_um: npt.ArrayLike,
    *,
    floor_fraction: float = 0.2,
) -> npt.NDArray[np.float64]:
    """Amplitude-weighted centre of each template on the probe.

    Each channel weighs its peak-to-peak amplitude minus ``floor_fraction``
    times the template's largest one (clipped at zero), so that residual noise
    on far channels does not pull the centre towards the middle of the probe.

    Parameters
    ----------
    templates : array_like of float32, shape (n_units, T, n_channels)
    positions_um : array_like of float, shape (n_channels, 2)
        Channel (x, y) positions in micrometres.
    floor_fraction : float, optional
        Fraction of the largest channel amplitude ignored, in [0, 1).

    Returns
    -------
    ndarray of float64, shape (n_units, 2)
        (x, y) centre in micrometres; the peak channel's position for an
        all-zero template.
    """
    templates = _check_templates(templates)
    positions = _check_positions(positions_um, templates.shape[2])
    _check_floor_fraction(floor_fraction)
    return _centres_and_spreads(templates, positions, floor_fraction)[0]


# ---------------------------------------------------------------------------
# Cleaning and alignment
# ---------------------------------------------------------------------------


def clean_templates(
    templates: npt.ArrayLike,
    counts: npt.ArrayLike,
    positions_um: npt.ArrayLike,
    *,
    pre_samples: int,
    min_amplitude: float,
    min_count: int,
    max_spread_um: float,
    peak_window_samples: int,
    floor_fraction: float = 0.2,
) -> tuple[npt.NDArray[np.bool_], dict[str, npt.NDArray[np.bool_]]]:
    """Flag templates that are too small, too rare, too spread or off-centre.

    Parameters
    ----------
    templates : array_like of float32, shape (n_units, T, n_channels)
        Mean waveforms in noise units.
    counts : array_like of int, shape (n_units,)
        Number of spikes averaged per template.
    positions_um : array_like of float, shape (n_channels, 2)
        Channel (x, y) positions in micrometres.
    pre_samples : int
        Template index where the trough should be.
    min_amplitude : float
        Smallest peak-to-peak amplitude on the peak channel kept.
    min_count : int
        Smallest number of spikes kept.
    max_spread_um : float
        Largest amplitude-weighted spatial spread (root mean square distance
        of the channels to the template centre, weighted as in
        :func:`template_positions`) kept.
    peak_window_samples : int
        Largest distance between the trough on the peak channel and
        ``pre_samples`` kept.
    floor_fraction : float, optional
        Amplitude floor of the spatial weights, as in :func:`template_positions`.

    Returns
    -------
    keep : ndarray of bool, shape (n_units,)
        True for templates that pass every criterion.
    reasons : dict of str to ndarray of bool, shape (n_units,)
        One mask per criterion of :data:`CLEAN_REASONS` (``"too_small"``,
        ``"too_few_spikes"``, ``"too_spread"``, ``"off_centre"``), True where
        the template fails it.
    """
    templates = _check_templates(templates)
    counts = _check_counts(counts, templates.shape[0])
    positions = _check_positions(positions_um, templates.shape[2])
    if not 0 <= pre_samples < templates.shape[1]:
        raise ValueError(
            f"pre_samples must lie in [0, {templates.shape[1] - 1}], got {pre_samples}"
        )
    if min_amplitude < 0:
        raise ValueError(f"min_amplitude must be >= 0, got {min_amplitude}")
    if min_count < 0:
        raise ValueError(f"min_count must be >= 0, got {min_count}")
    if max_spread_um <= 0:
        raise ValueError(f"max_spread_um must be > 0, got {max_spread_um}")
    if peak_window_samples < 0:
        raise ValueError(f"peak_window_samples must be >= 0, got {peak_window_samples}")
    _check_floor_fraction(floor_fraction)

    peak = template_peak_channels(templates)
    units = np.arange(templates.shape[0])
    trough = templates[units, :, peak].argmin(axis=1)
    spreads = _centres_and_spreads(templates, positions, floor_fraction)[1]
    reasons = {
        "too_small": template_amplitudes(templates) < min_amplitude,
        "too_few_spikes": counts < min_count,
        "too_spread": spreads > max_spread_um,
        "off_centre": np.abs(trough - pre_samples) > peak_window_samples,
    }
    keep = ~np.logical_or.reduce([reasons[name] for name in CLEAN_REASONS])
    return keep, reasons


def _advance(
    templates: npt.NDArray[np.float32], shifts: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """``out[i, t] = templates[i, t + shifts[i]]``, zero outside the template."""
    n_times = templates.shape[1]
    source = np.arange(n_times)[None, :] + shifts[:, None]
    inside = (source >= 0) & (source < n_times)
    rows = np.arange(templates.shape[0])[:, None]
    out = templates[rows, np.clip(source, 0, max(n_times - 1, 0))]
    out[~inside] = 0.0
    return out


def align_templates(
    templates: npt.ArrayLike, *, pre_samples: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Move each template's trough on its peak channel to ``pre_samples``.

    Parameters
    ----------
    templates : array_like of float32, shape (n_units, T, n_channels)
    pre_samples : int
        Target trough index.

    Returns
    -------
    aligned : ndarray of float32, shape (n_units, T, n_channels)
        Templates shifted by whole samples, zero-filled.
    shifts : ndarray of int64, shape (n_units,)
        Trough index minus ``pre_samples``; add it to the spike times of the
        unit so that they point at the trough of the aligned template.
    """
    templates = _check_templates(templates)
    if not 0 <= pre_samples < max(templates.shape[1], 1):
        raise ValueError(
            f"pre_samples must lie in [0, {templates.shape[1] - 1}], got {pre_samples}"
        )
    if templates.shape[1] == 0 or templates.shape[2] == 0:
        return templates.copy(), np.zeros(templates.shape[0], dtype=np.int64)
    peak = template_peak_channels(templates)
    trough = templates[np.arange(templates.shape[0]), :, peak].argmin(axis=1)
    shifts = trough.astype(np.int64) - pre_samples
    return _advance(templates, shifts), shifts


# ---------------------------------------------------------------------------
# Similarity and merging
# ---------------------------------------------------------------------------


def _similarity_and_lags(
    templates: npt.NDArray[np.float32], max_shift_samples: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Best cosine over lags, and the lag by which template j trails template i.

    ``lags[i, j] = d`` means ``templates[j, t] ~ templates[i, t - d]``.
    """
    n_units, n_times, n_channels = templates.shape
    # In blocks of templates: no float64 copy of them all.
    flat_norms = np.empty(n_units)
    for j in range(0, n_units, _TEMPLATE_BLOCK):
        block = templates[j : j + _TEMPLATE_BLOCK].astype(np.float64)
        flat_norms[j : j + len(block)] = np.sqrt((block**2).sum(axis=(1, 2)))
    # Pairs of templates without a channel in common have no product at any
    # lag: zero, lag 0. The others, by blocks of neighbouring templates on the
    # channels the two blocks share.
    best = np.zeros((n_units, n_units))
    lags = np.zeros((n_units, n_units), dtype=np.int64)
    blocks = [(units, lo, hi) for units, lo, hi in _blocks_by_channels(templates)]
    for a, (units_a, lo_a, hi_a) in enumerate(blocks):
        for units_b, lo_b, hi_b in blocks[a:]:
            lo, hi = max(lo_a, lo_b), min(hi_a, hi_b)
            if lo >= hi:
                continue
            first = np.ascontiguousarray(templates[units_a][:, :, lo:hi])
            second = np.ascontiguousarray(templates[units_b][:, :, lo:hi])
            pair_best = np.full((len(units_a), len(units_b)), -np.inf)
            pair_lags = np.zeros(pair_best.shape, dtype=np.int64)
            for lag in range(max_shift_samples + 1):
                # [i, j]: sum_t <first[i, t], second[j, t + lag]>, and the reverse.
                forward = (first[:, : n_times - lag].reshape(len(first), -1)
                           @ second[:, lag:].reshape(len(second), -1).T)
                backward = (first[:, lag:].reshape(len(first), -1)
                            @ second[:, : n_times - lag].reshape(len(second), -1).T)
                for value, signed_lag in ((forward, lag), (backward, -lag)):
                    better = value > pair_best
                    pair_best[better] = value[better]
                    pair_lags[better] = signed_lag
            best[np.ix_(units_a, units_b)] = pair_best
            lags[np.ix_(units_a, units_b)] = pair_lags
            if units_b is not units_a:
                best[np.ix_(units_b, units_a)] = pair_best.T
                lags[np.ix_(units_b, units_a)] = -pair_lags.T
    # Mirror the upper triangle so that rounding cannot break the symmetry.
    upper = np.triu_indices(n_units, 1)
    best.T[upper] = best[upper]
    lags.T[upper] = -lags[upper]
    denominator = np.outer(flat_norms, flat_norms)
    positive = denominator > 0
    cosine = np.zeros_like(best)
    cosine[positive] = best[positive] / denominator[positive]
    return cosine, lags


def template_similarity(
    templates: npt.ArrayLike, *, max_shift_samples: int
) -> npt.NDArray[np.float32]:
    """Best cosine similarity of every template pair over small shifts.

    Parameters
    ----------
    templates : array_like of float32, shape (n_units, T, n_channels)
    max_shift_samples : int
        Largest relative shift tried, in samples (0 <= shift < T).

    Returns
    -------
    ndarray of float32, shape (n_units, n_units)
        Symmetric; 1 on the diagonal of non-zero templates; 0 for any pair
        with an all-zero template.
    """
    templates = _check_templates(templates)
    _check_max_shift(max_shift_samples, templates.shape[1])
    return _similarity_and_lags(templates, max_shift_samples)[0].astype(np.float32)


def merge_similar_templates(
    templates: npt.ArrayLike,
    counts: npt.ArrayLike,
    *,
    max_shift_samples: int,
    min_cosine: float,
    max_amplitude_ratio: float,
    noise_factors: npt.ArrayLike | None = None,
    max_difference: float | None = None,
    floor_cosine: float = 0.8,
    distinct: npt.ArrayLike | None = None,
) -> tuple[
    npt.NDArray[np.float32],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    list[list[int]],
    npt.NDArray[np.int64],
]:
    """Merge templates that are shifted, rescaled copies of each other.

    A pair is accepted when its best cosine over shifts of up to
    ``max_shift_samples`` (see :func:`template_similarity`) is at least
    ``min_cosine`` and the ratio of the larger to the smaller amplitude
    (:func:`template_amplitudes`) is at most ``max_amplitude_ratio``. Groups
    are stars, not chains: in order of decreasing spike count (lowest index
    on ties) each template not accepted with an earlier reference becomes a
    reference; every other template then joins the reference it is most
    similar to (highest cosine) among those it is accepted with. Two distinct
    units are thus never joined through a small, noisy template similar to
    both, and a piece of one unit is not taken by a larger neighbour. Members
    are shifted onto their reference and averaged with weights equal to their
    spike counts.

    Parameters
    ----------
    templates : array_like of float32, shape (n_units, T, n_channels)
    counts : array_like of int, shape (n_units,)
        Spikes per template (the averaging weights; equal weights for a group
        without spikes).
    max_shift_samples : int
        Largest relative shift tried, in samples.
    min_cosine : float
        Smallest cosine similarity merged, in [-1, 1].
    max_amplitude_ratio : float
        Largest amplitude ratio merged (>= 1).
    noise_factors : array_like, shape (n_units,), optional
        Per-template noise factors (:func:`noise_factors`). With
        ``max_difference`` they add a second, noise-aware test: a pair whose
        cosine is at least ``floor_cosine`` also merges when what tells the
        two apart, ``min(||a||^2, ||b||^2) * (1 - cosine^2)`` divided by the
        larger noise factor, is at most ``max_difference`` (squared
        matched-filter noise SDs): template matching could not tell such
        templates apart reliably, whatever their cosine.
    max_difference : float, optional
        See ``noise_factors``.
    floor_cosine : float, default 0.8
        Smallest cosine for the noise-aware test.
    distinct : array_like of bool, shape (n_units, n_units), optional
        Pairs known to be different neurons (e.g. from
        :func:`refractory_conflicts`: their spikes come closer than a neuron's
        refractory period as often as independent trains would); never merged,
        however similar their templates.

    Returns
    -------
    templates : ndarray of float32, shape (n_new, T, n_channels)
        Merged templates, ordered by the lowest old index of their group.
    counts : ndarray of int64, shape (n_new,)
        Summed spike counts.
    mapping : ndarray of int64, shape (n_units,)
        New index of every old template.
    groups : list of list of int
        Old indices of each new template, ascending.
    shifts : ndarray of int64, shape (n_units,)
        Add ``shifts[old]`` to the spike times of an old unit to place them on
        the merged template (0 for references and unmerged units).
    """
    templates = _check_templates(templates)
    counts = _check_counts(counts, templates.shape[0])
    _check_max_shift(max_shift_samples, templates.shape[1])
    if not -1.0 <= min_cosine <= 1.0:
        raise ValueError(f"min_cosine must lie in [-1, 1], got {min_cosine}")
    if max_amplitude_ratio < 1.0:
        raise ValueError(f"max_amplitude_ratio must be >= 1, got {max_amplitude_ratio}")

    n_units = templates.shape[0]
    cosine, lags = _similarity_and_lags(templates, max_shift_samples)
    amplitudes = template_amplitudes(templates).astype(np.float64)
    larger = np.maximum.outer(amplitudes, amplitudes)
    smaller = np.minimum.outer(amplitudes, amplitudes)
    close_in_size = larger <= max_amplitude_ratio * smaller
    similar = cosine >= min_cosine
    if noise_factors is not None and max_difference is not None:
        factors = np.asarray(noise_factors, dtype=np.float64)
        if factors.shape != (n_units,):
            raise ValueError(
                f"noise_factors must have shape ({n_units},), got {factors.shape}"
            )
        flat = templates.reshape(n_units, templates.shape[1] * templates.shape[2])
        energy = np.empty(n_units)
        for j in range(0, n_units, _TEMPLATE_BLOCK):  # no float64 copy of them all
            energy[j : j + _TEMPLATE_BLOCK] = (
                flat[j : j + _TEMPLATE_BLOCK].astype(np.float64) ** 2
            ).sum(axis=1)
        difference = (
            np.minimum.outer(energy, energy)
            * (1.0 - np.clip(cosine, 0.0, 1.0) ** 2)
            / np.maximum.outer(factors, factors)
        )
        similar |= (cosine >= floor_cosine) & (difference <= max_difference)
    accepted = similar & close_in_size & (smaller > 0)
    np.fill_diagonal(accepted, False)
    accepted |= accepted.T
    if distinct is not None:
        distinct = np.asarray(distinct, dtype=bool)
        if distinct.shape != (n_units, n_units):
            raise ValueError(
                f"distinct must have shape ({n_units}, {n_units}), got {distinct.shape}"
            )
        accepted &= ~(distinct | distinct.T)
    # Star groups, not connected components: the unit with the most spikes
    # takes every unassigned unit similar to it, then the next one. Chains
    # through small, noisy templates (similar to two distinct units) would
    # otherwise merge distinct neighbours.
    # A member accepted by several references joins the most similar one.
    owner = np.full(n_units, -1, dtype=np.int64)
    for reference in np.lexsort((np.arange(n_units), -counts)):
        if owner[reference] >= 0:
            continue
        owner[reference] = reference
        owner[accepted[reference] & (owner < 0)] = reference
    hubs = np.flatnonzero(owner == np.arange(n_units))
    members = np.flatnonzero(owner != np.arange(n_units))
    if members.size:
        score = np.where(accepted[np.ix_(members, hubs)], cosine[np.ix_(members, hubs)], -np.inf)
        owner[members] = hubs[score.argmax(axis=1)]
    shifts = np.zeros(n_units, dtype=np.int64)
    shifts[members] = lags[owner[members], members]
    component = owner
    new_templates = []
    new_counts = []
    groups: list[list[int]] = []
    mapping = np.zeros(n_units, dtype=np.int64)
    _, first_members = np.unique(component, return_index=True)
    for first_member in np.sort(first_members):
        members = np.flatnonzero(component == component[first_member])
        weights = counts[members].astype(np.float64)
        if weights.sum() == 0:
            weights[:] = 1.0
        aligned = _advance(templates[members], shifts[members]).astype(np.float64)
        merged = np.tensordot(weights / weights.sum(), aligned, axes=1)
        mapping[members] = len(groups)
        groups.append(members.tolist())
        new_templates.append(merged.astype(np.float32))
        new_counts.append(counts[members].sum())
    new_shape = (len(groups),) + templates.shape[1:]
    return (
        np.array(new_templates, dtype=np.float32).reshape(new_shape),
        np.array(new_counts, dtype=np.int64),
        mapping,
        groups,
        shifts,
    )


def _check_lags(duration_samples: int, min_lag_samples: int, max_lag_samples: int) -> None:
    if duration_samples <= 0:
        raise ValueError(f"duration_samples must be > 0, got {duration_samples}")
    if not 0 <= min_lag_samples <= max_lag_samples:
        raise ValueError(
            f"lags must satisfy 0 <= min_lag_samples <= max_lag_samples, got "
            f"{min_lag_samples} and {max_lag_samples}"
        )


def refractory_conflicts(
    sample_index: npt.ArrayLike,
    labels: npt.ArrayLike,
    n_units: int,
    *,
    duration_samples: int,
    min_lag_samples: int,
    max_lag_samples: int,
    block_spikes: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Spike pairs of two units closer than a refractory period, and how many
    independent firing would give.

    One neuron cannot fire twice within its refractory period, so two pieces
    of one neuron (a cluster split in two, or found by two channel groups)
    almost never have spikes ``min_lag``-``max_lag`` samples apart, while two
    neurons firing independently do, about ``n_a n_b W / D`` times (``W`` the
    width of the two-sided lag window, ``D`` the duration). Lags shorter than
    ``min_lag_samples`` are left out: the same spike detected twice, and the
    spatial exclusion of the detector, live there.

    Parameters
    ----------
    sample_index : array_like of int, shape (n_spikes,)
    labels : array_like of int, shape (n_spikes,)
        Unit of every spike in ``[0, n_units)``; negative labels are ignored.
    n_units : int
    duration_samples : int
        Length of the recording (> 0).
    min_lag_samples, max_lag_samples : int
        Lags counted: ``min_lag <= |t_a - t_b| <= max_lag`` (0 <= min <= max).
    block_spikes : int, optional
        Count the pairs this many time-ordered spikes at a time (default
        1,000,000: the pairs of a long recording's spikes would otherwise be
        gathered all at once, several per spike); the counts do not depend
        on it.

    Returns
    -------
    observed : ndarray of int64, shape (n_units, n_units)
        Symmetric counts of spike pairs in the lag window (0 on the diagonal).
    expected : ndarray of float64, shape (n_units, n_units)
        The counts independent Poisson trains with the same spike counts give.
    """
    times = np.asarray(sample_index, dtype=np.int64)
    units = as_index_array(labels)  # blocks are converted to int64 one at a time
    if times.shape != units.shape or times.ndim != 1:
        raise ValueError(
            f"sample_index {times.shape} and labels {units.shape} must be 1-D of one length"
        )
    _check_lags(duration_samples, min_lag_samples, max_lag_samples)
    if units.size and units.max() >= n_units:
        raise ValueError(f"labels must be < n_units={n_units}, got {units.max()}")
    if times.size > 1 and not np.all(times[1:] >= times[:-1]):
        valid = units >= 0
        order = np.lexsort((units[valid], times[valid]))
        times, units = times[valid][order], units[valid][order]
    # (time-ordered already: read in place; negative labels are skipped per block)
    block = _CONFLICT_BLOCK_SPIKES if block_spikes is None else int(block_spikes)
    if block < 1:
        raise ValueError(f"block_spikes must be >= 1, got {block_spikes}")
    blocks = ((times[i : i + block], units[i : i + block]) for i in range(0, times.size, block))
    return refractory_conflicts_in_blocks(
        blocks, n_units, duration_samples=duration_samples,
        min_lag_samples=min_lag_samples, max_lag_samples=max_lag_samples,
    )


def refractory_conflicts_in_blocks(
    blocks: Iterable[tuple[npt.ArrayLike, npt.ArrayLike]],
    n_units: int,
    *,
    duration_samples: int,
    min_lag_samples: int,
    max_lag_samples: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """:func:`refractory_conflicts` over a time-ordered spike table read a
    block at a time: memory follows the block, not the recording.

    ``blocks`` yields ``(sample_index, labels)`` pairs whose samples never
    decrease, within a block or from one block to the next (ties in any
    order); negative labels are ignored. The spikes of the blocks already
    seen that lie within ``max_lag_samples`` of the last one are carried over,
    so every pair is counted once whatever the block sizes.
    """
    _check_lags(duration_samples, min_lag_samples, max_lag_samples)
    observed = np.zeros((n_units, n_units), dtype=np.int64)
    counts = np.zeros(n_units, dtype=np.int64)
    tail_times = np.zeros(0, dtype=np.int64)
    tail_units = np.zeros(0, dtype=np.int64)
    for block_times, block_units in blocks:
        block_times = np.asarray(block_times, dtype=np.int64)
        block_units = np.asarray(block_units, dtype=np.int64)
        if block_times.shape != block_units.shape or block_times.ndim != 1:
            raise ValueError(
                f"sample_index {block_times.shape} and labels {block_units.shape} of a block "
                "must be 1-D of one length"
            )
        if block_units.size and block_units.max() >= n_units:
            raise ValueError(f"labels must be < n_units={n_units}, got {block_units.max()}")
        if block_times.size and (
            np.any(np.diff(block_times) < 0)
            or (tail_times.size and block_times[0] < tail_times[-1])
        ):
            raise ValueError("sample_index must not decrease from one spike to the next")
        keep = block_units >= 0
        block_times, block_units = block_times[keep], block_units[keep]
        counts += np.bincount(block_units, minlength=n_units)
        n_tail = tail_times.size
        times = np.concatenate([tail_times, block_times])
        units = np.concatenate([tail_units, block_units])
        codes = []
        # Pairs (i, i + k) in time order with i + k in this block: k grows
        # until no pair is close enough.
        for k in range(1, times.size):
            first = max(0, n_tail - k)
            lag = times[first + k :] - times[first : times.size - k]
            close = lag <= max_lag_samples
            if not close.any():  # every later spike's lags only grow with k
                break
            hit = close & (lag >= min_lag_samples)
            a, b = units[first : times.size - k][hit], units[first + k :][hit]
            codes.append(np.minimum(a, b) * n_units + np.maximum(a, b))
        if codes:
            code, count = np.unique(np.concatenate(codes), return_counts=True)
            np.add.at(observed, (code // n_units, code % n_units), count)
        if times.size:
            recent = times >= times[-1] - max_lag_samples
            tail_times, tail_units = times[recent], units[recent]
    observed = observed + observed.T
    np.fill_diagonal(observed, 0)
    counts = counts.astype(np.float64)
    width = 2.0 * (max_lag_samples - min_lag_samples + 1)
    expected = np.outer(counts, counts) * width / float(duration_samples)
    np.fill_diagonal(expected, 0.0)
    return observed, expected


def sample_noise_windows(
    traces: npt.ArrayLike,
    *,
    n_windows: int,
    window_samples: int,
    threshold: float | None,
    seed: int,
) -> npt.NDArray[np.float32]:
    """Background-noise windows: random windows, optionally free of threshold crossings.

    Excluding windows with crossings biases the noise low, the more so the
    more channels a window spans (with hundreds of channels few windows are
    free of any crossing): :func:`noise_factors` uses a robust spread
    instead, and the workflow passes ``threshold=None``.

    Parameters
    ----------
    traces : array_like, shape (n_samples, n_channels)
        Preprocessed traces (unit noise).
    n_windows : int
        Windows wanted; fewer are returned if the traces hold fewer clean ones.
    window_samples : int
        Length of each window (the template length).
    threshold : float or None
        Windows containing any ``|value| > threshold`` are rejected (None:
        windows anywhere).
    seed : int
        Seed of the random window starts.

    Returns
    -------
    ndarray of float32, shape (n, window_samples, n_channels)
    """
    x = np.asarray(traces, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"traces must be 2-D (samples, channels), got shape {x.shape}")
    if window_samples < 1:
        raise ValueError(f"window_samples must be >= 1, got {window_samples}")
    if n_windows < 0:
        raise ValueError(f"n_windows must be >= 0, got {n_windows}")
    if threshold is not None and threshold <= 0:
        raise ValueError(f"threshold must be None or > 0, got {threshold}")
    n_starts = x.shape[0] - window_samples + 1
    if n_starts < 1 or n_windows == 0:
        return np.zeros((0, window_samples, x.shape[1]), dtype=np.float32)
    if threshold is None:
        clean = np.arange(n_starts)
    else:
        loud = (np.abs(x) > threshold).any(axis=1).astype(np.int64)
        # loud samples inside [s, s + window): a running sum over the window
        csum = np.concatenate([[0], np.cumsum(loud)])
        clean = np.flatnonzero(csum[window_samples:] - csum[:n_starts] == 0)
    if clean.size == 0:
        return np.zeros((0, window_samples, x.shape[1]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(clean, size=min(n_windows, clean.size), replace=False))
    return x[starts[:, None] + np.arange(window_samples)]


def _check_noise_windows(
    templates: npt.ArrayLike, noise_windows: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], np.ndarray]:
    """Templates as float64 and noise windows of the same (T, n_channels), >= 2 of them."""
    w = np.asarray(templates, dtype=np.float64)
    noise = np.asarray(noise_windows)
    if w.ndim != 3 or noise.ndim != 3 or w.shape[1:] != noise.shape[1:]:
        raise ValueError(
            f"templates {w.shape} and noise_windows {noise.shape} must be 3-D with "
            "the same (T, n_channels)"
        )
    if noise.shape[0] < 2:
        raise ValueError(f"noise_windows must hold at least 2 windows, got {noise.shape[0]}")
    return w, noise


#: Templates projected together by :func:`noise_factors` and
#: :func:`noise_lag_correlation`: neighbours on the probe (sorted by peak
#: channel), so that the channels they span together stay few.
_SPARSE_BLOCK = 32


def _blocks_by_channels(
    t: np.ndarray,
) -> list[tuple[npt.NDArray[np.intp], int, int]]:
    """Blocks of template indices, neighbours on the probe, with the channel
    range ``[lo, hi)`` outside which every template of the block is zero.

    Sparse templates (zero beyond ``sparsity_radius_um``) span tens of a
    probe's hundreds of channels: projecting noise windows on a block's
    channels only skips products with exact zeros (the same sums, up to the
    order of the additions). Empty templates form no block.
    """
    n_units = len(t)
    peak = np.empty(n_units, dtype=np.int64)
    active = np.zeros((n_units, t.shape[2]), dtype=bool)
    for j in range(0, n_units, _TEMPLATE_BLOCK):
        part = np.abs(t[j : j + _TEMPLATE_BLOCK]).max(axis=1)
        peak[j : j + len(part)] = part.argmax(axis=1)
        active[j : j + len(part)] = part > 0
    nonzero = np.flatnonzero(active.any(axis=1))
    order = nonzero[np.argsort(peak[nonzero], kind="stable")]
    blocks = []
    for j in range(0, order.size, _SPARSE_BLOCK):
        units = order[j : j + _SPARSE_BLOCK]
        channels = np.flatnonzero(active[units].any(axis=0))
        blocks.append((units, int(channels[0]), int(channels[-1]) + 1))
    return blocks


def _channel_major(x: np.ndarray, lo: int, hi: int, times: slice = slice(None)) -> np.ndarray:
    """``x[:, times, lo:hi]`` as float64 rows, channel by channel (n, (hi - lo) * T)."""
    part = x[:, times, lo:hi].transpose(0, 2, 1).astype(np.float64)
    return part.reshape(len(x), -1)


def noise_factors(
    templates: npt.ArrayLike, noise_windows: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """Variance of each template's projection on noise, over its squared norm.

    The variance is robust (squared 1.4826 x median absolute deviation), so
    that the few windows holding spikes do not inflate it.

    White noise of unit variance gives 1; band-limited, spatially correlated
    noise gives more for templates shaped like the noise. Dividing a matching
    score by it makes one threshold mean the same significance for every unit.

    Parameters
    ----------
    templates : array_like, shape (n_units, T, n_channels)
    noise_windows : array_like, shape (n_windows, T, n_channels)
        From :func:`sample_noise_windows`; at least 2 windows.

    Returns
    -------
    ndarray of float32, shape (n_units,)
        Factors (>= a small floor); 1 for all-zero templates.
    """
    t = np.asarray(templates)
    _, noise = _check_noise_windows(t[:0] if t.ndim == 3 else t, noise_windows)  # shapes only
    # Explicit widths: reshape(0, -1) is ambiguous and fails on zero templates.
    # Per block of neighbouring templates, on the channels they span: no
    # float64 copy of all windows or of all templates (hundreds of MB each for
    # a thousand channels or clusters), and no products with zero channels.
    projections = np.zeros((len(noise), len(t)))  # (n_windows, n_units)
    norms = np.zeros(len(t))
    blocks = [(units, lo, hi, _channel_major(t[units], lo, hi))
              for units, lo, hi in _blocks_by_channels(t)]
    for units, _, _, flat_w in blocks:
        norms[units] = (flat_w**2).sum(axis=1)
    for i in range(0, len(noise), 256):
        windows = noise[i : i + 256]
        for units, lo, hi, flat_w in blocks:
            projections[i : i + 256, units] = _channel_major(windows, lo, hi) @ flat_w.T
    centred = projections - np.median(projections, axis=0)
    variance = (1.4826 * np.median(np.abs(centred), axis=0)) ** 2
    factors = np.divide(variance, norms, out=np.ones_like(variance), where=norms > 0)
    return np.maximum(factors, 1e-3).astype(np.float32)


def matched_snr(
    templates: npt.ArrayLike, factors: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """Matched-filter SNR of each template: ``||w|| / sqrt(factor)``.

    The z-score a spike of unit amplitude reaches against background noise.
    """
    t = np.asarray(templates)
    flat = t.reshape(len(t), int(np.prod(t.shape[1:])))
    norms = np.empty(len(flat))
    for j in range(0, len(flat), _TEMPLATE_BLOCK):  # float64 copies of a block at a time
        norms[j : j + _TEMPLATE_BLOCK] = np.sqrt(
            (flat[j : j + _TEMPLATE_BLOCK].astype(np.float64) ** 2).sum(axis=1)
        )
    return (norms / np.sqrt(np.asarray(factors, dtype=np.float64))).astype(np.float32)


def noise_lag_correlation(
    templates: npt.ArrayLike, noise_windows: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """Correlation of each template's matching score with itself one sample later,
    on background noise.

    The matching score of template ``w`` at onset ``tau`` is ``<x[tau:], w>``;
    on noise it is a smooth random process whose lag-1 correlation ``rho``
    sets how often it crosses a level (Rice's formula: about
    ``sqrt(2 (1 - rho)) / (2 pi) * exp(-u^2 / 2)`` up-crossings of ``u`` SDs
    per sample), and so how many matches pure noise gives a template at its
    threshold (:func:`shardsort.curation.expected_noise_matches`). Measured
    on the recording's own noise windows (band-limited, spatially
    correlated), with the robust spread of :func:`noise_factors`.

    Parameters
    ----------
    templates : array_like, shape (n_units, T, n_channels)
    noise_windows : array_like, shape (n_windows, T, n_channels)
        At least 2 windows.

    Returns
    -------
    ndarray of float32, shape (n_units,)
        In [-1, 1); 1 - 1e-6 at most, 0 for all-zero templates.
    """
    t = np.asarray(templates)
    _, noise = _check_noise_windows(t[:0] if t.ndim == 3 else t, noise_windows)  # shapes only
    n_units, n_times, n_channels = t.shape
    if n_units == 0 or n_times < 2:
        return np.zeros(n_units, dtype=np.float32)
    # The template without its last sample, against the window at onsets 0 and
    # 1; per block of neighbouring templates on the channels they span (no
    # float64 copy of all templates or windows, no products with zeros).
    a = np.zeros((len(noise), n_units))  # (n_windows, n_units)
    b = np.zeros((len(noise), n_units))
    head, tail = slice(None, -1), slice(1, None)
    blocks = [(units, lo, hi, _channel_major(t[units], lo, hi, head))
              for units, lo, hi in _blocks_by_channels(t)]
    for i in range(0, len(noise), 256):
        windows = noise[i : i + 256]
        for units, lo, hi, flat_w in blocks:
            a[i : i + 256, units] = _channel_major(windows, lo, hi, head) @ flat_w.T
            b[i : i + 256, units] = _channel_major(windows, lo, hi, tail) @ flat_w.T
    # Robust correlation: 1 - var(a - b) / (2 var), spreads from the MAD, so
    # that windows holding spikes do not dominate.
    def robust_var(x):
        return (1.4826 * np.median(np.abs(x - np.median(x, axis=0)), axis=0)) ** 2

    spread = 0.5 * (robust_var(a) + robust_var(b))
    rho = np.zeros(n_units)
    ok = spread > 0
    rho[ok] = 1.0 - robust_var(a - b)[ok] / (2.0 * spread[ok])
    return np.clip(rho, -1.0, 1.0 - 1e-6).astype(np.float32)
