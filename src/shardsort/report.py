"""Figures and tables of the HTML report (``snakemake --report report.html``).

Pure functions: arrays in, a matplotlib :class:`~matplotlib.figure.Figure`,
summary arrays or an HTML string out; :func:`save_figure` is the one place that
writes a file. Figures are built with matplotlib's object API (never
``pyplot``), so no global figure state is kept and the Agg renderer draws them
headless. The same arrays always give the same pixels: subsampling is by even
strides, never random, and PNG/SVG files carry no date or version stamp.

Per-unit figures are drawn one page (a grid of at most ``units_per_page``
units) at a time: :func:`page_slices` cuts the unit list into pages and the
``*_figure`` functions draw the units they are given.
"""

from __future__ import annotations

import html
import math
import os
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure

from .checks import check_positive as _check_positive

#: Resolution of saved figures.
DPI = 100
#: Grid columns of the per-unit pages.
GRID_COLUMNS = 8
#: Marker and colour of each bad-channel label on the probe map.
_BAD_CHANNEL_STYLE = {"dead": ("x", "black"), "noisy": ("x", "crimson"), "out": ("+", "darkorange")}
#: Style of a bad-channel label not listed above.
_OTHER_BAD_STYLE = ("x", "purple")
#: Size of a unit's plot box inside its 1 x 1 grid cell (data units).
_BOX_W, _BOX_H = 0.9, 0.7
#: Above this many units the probe map does not print unit numbers.
_MAX_LABELLED_UNITS = 60


def _check_count(name: str, value: int, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positions(name: str, positions: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(positions, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2) with columns (x, y), got {array.shape}")
    return array


def _check_length(name: str, values: npt.ArrayLike, length: int) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {array.shape}")
    return array


def _check_spikes(spikes: np.ndarray, n_units: int) -> np.ndarray:
    names = spikes.dtype.names or ()
    if "sample_index" not in names or "unit_index" not in names:
        raise ValueError(
            f"spikes must be a table with sample_index and unit_index columns, got {names}"
        )
    units = spikes["unit_index"]
    if len(units) and (units.min() < 0 or units.max() >= n_units):
        raise ValueError(
            f"spikes unit_index must lie in [0, {n_units}) (n_units={n_units}), "
            f"got values in [{units.min()}, {units.max()}]"
        )
    return spikes


def _bin_count(window_ms: float, bin_ms: float) -> int:
    window_ms = _check_positive("window_ms", window_ms)
    bin_ms = _check_positive("bin_ms", bin_ms)
    n_bins = round(window_ms / bin_ms)
    if n_bins < 1 or not math.isclose(n_bins * bin_ms, window_ms, rel_tol=1e-9):
        raise ValueError(
            f"window_ms must be a whole number of bins of bin_ms={bin_ms}, got {window_ms}"
        )
    return n_bins


def _message(ax: Axes, text: str) -> None:
    """Write ``text`` in the middle of an empty axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def _strided(n: int, max_count: int) -> npt.NDArray[np.intp]:
    """At most ``max_count`` evenly spaced indices into ``n`` items (all if fewer)."""
    if n <= max_count:
        return np.arange(n)
    return np.linspace(0, n - 1, max_count).round().astype(np.intp)


def unit_colors(unit_index: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """RGBA colour of each unit, the same for a unit in every figure.

    Hues follow the golden-ratio sequence, so units with nearby numbers (often
    neighbours on the probe) get clearly different colours.

    Parameters
    ----------
    unit_index : array_like of int, shape (n,)

    Returns
    -------
    ndarray of float64, shape (n, 4)
    """
    index = np.asarray(unit_index, dtype=np.float64).reshape(-1)
    hue = (index * 0.6180339887498949 + 0.05) % 1.0
    value = np.where(index % 2 == 0, 0.85, 0.65)
    hsv = np.stack([hue, np.full_like(hue, 0.8), value], axis=1)
    return np.column_stack([hsv_to_rgb(hsv), np.ones(len(index))])


def page_slices(n_units: int, *, units_per_page: int = 40) -> list[slice]:
    """Cut ``n_units`` units into pages of at most ``units_per_page``.

    Zero units still give one (empty) page, so every per-unit figure exists and
    says "no units".
    """
    n_units = _check_count("n_units", n_units, 0)
    units_per_page = _check_count("units_per_page", units_per_page, 1)
    starts = range(0, max(n_units, 1), units_per_page)
    return [slice(s, min(s + units_per_page, n_units)) for s in starts]


def _unit_grid(
    n_cells: int, *, title: str, cell_in: tuple[float, float]
) -> tuple[Figure, Axes, npt.NDArray[np.float64]]:
    """A page of unit panels drawn on ONE axes (creating dozens of axes is slow).

    Cell ``i`` sits in column ``i % GRID_COLUMNS``, row ``i // GRID_COLUMNS``;
    its plot box is ``_BOX_W`` x ``_BOX_H`` data units, framed in light grey.

    Returns
    -------
    fig, ax
    origins : ndarray, shape (n_cells, 2)
        Lower-left corner of each cell's plot box, in data coordinates.
    """
    n_rows = max(1, math.ceil(n_cells / GRID_COLUMNS))
    n_cols = GRID_COLUMNS if n_cells > 0 else 1
    height = n_rows * cell_in[1] + 0.6
    fig = Figure(figsize=(max(n_cols * cell_in[0], 6.0), height), dpi=DPI)
    fig.suptitle(title, fontsize=9)
    ax = fig.add_axes((0.005, 0.02, 0.99, 1 - 0.02 - 0.6 / height))
    ax.set_axis_off()
    ax.set_xlim(0, n_cols)
    ax.set_ylim(-n_rows, 0)
    if n_cells == 0:
        _message(ax, "no units")
    cells = np.arange(n_cells)
    origins = np.column_stack(
        [cells % GRID_COLUMNS + (1 - _BOX_W) / 2, -(cells // GRID_COLUMNS) - 1 + 0.06]
    ).astype(np.float64)
    corners = np.array([[0, 0], [_BOX_W, 0], [_BOX_W, _BOX_H], [0, _BOX_H]])
    ax.add_collection(PolyCollection(origins[:, None, :] + corners, facecolors="none",
                                     edgecolors="0.8", linewidths=0.5))
    return fig, ax, origins


def _place(
    origins: npt.NDArray[np.float64], u: npt.ArrayLike, v: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Map cell-local coordinates in [0, 1] (shape (n_cells, m)) to points (n_cells, m, 2)."""
    x = origins[:, :1] + _BOX_W * np.asarray(u, dtype=np.float64)
    y = origins[:, 1:] + _BOX_H * np.asarray(v, dtype=np.float64)
    return np.stack(np.broadcast_arrays(x, y), axis=-1)


def _cell_titles(ax: Axes, origins: npt.NDArray[np.float64], titles: Sequence[str]) -> None:
    for (x, y), text in zip(origins, titles):
        ax.text(x + _BOX_W / 2, y + _BOX_H + 0.03, text, ha="center", va="bottom", fontsize=7)


def probe_map_figure(
    channel_positions_um: npt.ArrayLike,
    channel_labels: npt.ArrayLike,
    unit_positions_um: npt.ArrayLike,
    *,
    unit_index: npt.ArrayLike,
    unit_amplitude: npt.ArrayLike,
    no_units_note: str = "",
) -> Figure:
    """Probe map: channels (bad ones marked) and the estimated position of each unit.

    Parameters
    ----------
    channel_positions_um : array_like, shape (n_channels, 2)
    channel_labels : array_like of str, shape (n_channels,)
        ``"good"`` or the reason a channel was left out (``"dead"``,
        ``"noisy"``, ``"out"``, as in ``bad_channels.tsv``).
    unit_positions_um : array_like, shape (n_units, 2)
    unit_index : array_like of int, shape (n_units,)
    unit_amplitude : array_like of float, shape (n_units,)
        Peak-to-peak amplitude (noise units); sets the marker area.
    no_units_note : str, optional
        Written on the map when there is no unit (why: :func:`no_units_reason`);
        "no units" when empty.

    Returns
    -------
    Figure
        One axes: a scatter of good channels, one per bad-channel label
        present, and one of the units (when there are any).
    """
    channels = _check_positions("channel_positions_um", channel_positions_um)
    labels = _check_length("channel_labels", channel_labels, len(channels)).astype(str)
    units = _check_positions("unit_positions_um", unit_positions_um)
    index = _check_length("unit_index", unit_index, len(units))
    amplitude = _check_length("unit_amplitude", unit_amplitude, len(units)).astype(np.float64)

    good = labels == "good"
    fig = Figure(figsize=(5.5, 7.0), dpi=DPI)
    ax = fig.add_subplot()
    ax.scatter(*channels[good].T, marker="s", s=18, color="0.8", label="channel")
    for name in np.unique(labels[~good]):
        mask = labels == name
        marker, colour = _BAD_CHANNEL_STYLE.get(str(name), _OTHER_BAD_STYLE)
        ax.scatter(*channels[mask].T, marker=marker, s=40, color=colour,
                   label=f"{name} channel ({int(mask.sum())})")
    if len(units):
        top = max(float(np.nanmax(amplitude)), 1e-12)
        area = 20.0 + 180.0 * np.clip(np.nan_to_num(amplitude) / top, 0.0, 1.0)
        ax.scatter(*units.T, s=area, c=unit_colors(index), edgecolors="black",
                   linewidths=0.5, alpha=0.85, label="unit (area ~ amplitude)")
        if len(units) <= _MAX_LABELLED_UNITS:
            for (x, y), u in zip(units, index):
                ax.annotate(str(int(u)), (x, y), xytext=(4, 3), textcoords="offset points",
                            fontsize=7)
    else:
        text = textwrap.fill(no_units_note, 38) if no_units_note else "no units"
        ax.text(0.5, 0.98, text, ha="center", va="top", transform=ax.transAxes,
                fontsize=12 if not no_units_note else 9,
                bbox={"facecolor": "white", "edgecolor": "0.6", "alpha": 0.9})
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_title(
        f"{len(channels)} channels ({int((~good).sum())} bad), {len(units)} units", fontsize=10
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.13, right=0.68, top=0.94, bottom=0.08)
    return fig


def no_units_reason(
    *,
    n_detected: int,
    n_clusters: int,
    cluster_dropped: Mapping[str, npt.ArrayLike],
    n_templates: int,
    n_units: int,
) -> str:
    """Why a sort has no unit, from the counts at each stage ("" if it has units).

    Parameters
    ----------
    n_detected : int
        Spikes detected (``spikes.h5``).
    n_clusters : int
        Clusters formed from them (before the template tests).
    cluster_dropped : mapping of str to array_like of bool, shape (n_clusters,)
        Per template test (``too_spread``, ``min_snr``, ...), the clusters it
        dropped (``templates.h5`` ``cluster_dropped``); a cluster may fail
        several.
    n_templates : int
        Templates kept after the tests and the merge (matched in deconvolution).
    n_units : int
        Units in the final sorting.
    """
    counts = [_check_count(name, value, 0) for name, value in (
        ("n_detected", n_detected), ("n_clusters", n_clusters),
        ("n_templates", n_templates), ("n_units", n_units))]
    n_detected, n_clusters, n_templates, n_units = counts
    if n_units:
        return ""
    if n_detected == 0:
        return "No unit: no spike detected above threshold."
    if n_clusters == 0:
        return (f"No unit: no cluster formed; all {n_detected} detected spikes were "
                "triaged (too few per cluster or outliers).")
    if n_templates == 0:
        failed = []
        for name, mask in cluster_dropped.items():
            mask = _check_length(f"cluster_dropped[{name!r}]", mask, n_clusters).astype(bool)
            if mask.any():
                failed.append(f"{name} ({int(mask.sum())})")
        why = (" for " + ", ".join(failed)) if failed else ""
        return (f"No unit: no cluster passed the template tests; {n_clusters} "
                f"dropped{why} (of {n_detected} detected spikes).")
    return (f"No unit: all {n_templates} templates were removed after deconvolution "
            "(too few spikes, too low a rate or amplitude, or riding on another "
            "unit's spikes; see logs/merge_units.log).")


def nonfinite_note(nonfinite: Mapping[int, Sequence[int]]) -> str:
    """One sentence on the NaN/inf raw samples replaced by 0 ("" if none).

    ``nonfinite`` maps a channel to ``[count, first sample]`` (as the filter
    jobs record it in their sidecars, summed over time chunks).
    """
    if not nonfinite:
        return ""
    items = sorted((int(c), int(n), int(first)) for c, (n, first) in nonfinite.items())
    total = sum(n for _, n, _ in items)
    per_channel = "; ".join(f"channel {c}: {n}, the first at sample {first}"
                            for c, n, first in items)
    return (f"{total} NaN/inf raw samples replaced by 0 before filtering ({per_channel}).")


def drift_raster_figure(
    spikes: np.ndarray,
    spike_positions_um: npt.ArrayLike,
    *,
    sampling_rate_hz: float,
    max_spikes: int = 50_000,
) -> Figure:
    """Drift raster: depth (y) of every spike against time, coloured by unit.

    Parameters
    ----------
    spikes : structured array with ``sample_index`` and ``unit_index``
    spike_positions_um : array_like, shape (n_spikes, 2)
    sampling_rate_hz : float
    max_spikes : int
        Above this many spikes an evenly strided subset is drawn.

    Returns
    -------
    Figure
        One axes holding one scatter collection (or a "no spikes" message).
    """
    rate = _check_positive("sampling_rate_hz", sampling_rate_hz)
    max_spikes = _check_count("max_spikes", max_spikes, 1)
    positions = _check_positions("spike_positions_um", spike_positions_um)
    if len(positions) != len(spikes):
        raise ValueError(
            f"spike_positions_um must have one row per spike ({len(spikes)}), got {len(positions)}"
        )
    fig = Figure(figsize=(10.0, 5.0), dpi=DPI)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.11)
    if len(spikes) == 0:
        _message(ax, "no spikes")
        ax.set_title("Spike depth over time", fontsize=10)
        return fig
    keep = _strided(len(spikes), max_spikes)
    shown = spikes[keep]
    ax.scatter(shown["sample_index"] / rate, positions[keep, 1], s=1.5, linewidths=0,
               c=unit_colors(shown["unit_index"]))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("depth y (µm)")
    ax.set_title(
        f"Spike depth over time ({len(keep)} of {len(spikes)} spikes shown)", fontsize=10
    )
    return fig


def motion_figure(
    histogram: npt.ArrayLike,
    depth_edges_um: npt.ArrayLike,
    time_s: npt.ArrayLike,
    displacement_um: npt.ArrayLike,
    window_centres_um: npt.ArrayLike,
    *,
    bin_s: float,
    labels: list[str] | None = None,
) -> Figure:
    """Drift estimate: peak depth histogram per time bin and the displacement.

    Parameters
    ----------
    histogram : array_like, shape (n_time_bins, n_depth_bins)
        Weighted peak counts per time bin and depth bin.
    depth_edges_um : array_like, shape (n_depth_bins + 1,)
    time_s : array_like, shape (n_time_bins,)
        Centre of each time bin.
    displacement_um : array_like, shape (n_time_bins, n_windows)
    window_centres_um : array_like, shape (n_windows,)
    bin_s : float
        Length of a time bin.
    labels : list of str, optional
        Legend entry of each window (default: its depth, or "rigid"); e.g.
        the shank of each window on multi-shank probes.

    Returns
    -------
    Figure
        The histogram as a grey image (darker = more) with one coloured line
        per depth window at its centre plus the displacement.
    """
    bin_s = _check_positive("bin_s", bin_s)
    hist = np.asarray(histogram, dtype=np.float64)
    edges = np.asarray(depth_edges_um, dtype=np.float64)
    times = np.asarray(time_s, dtype=np.float64)
    disp = np.asarray(displacement_um, dtype=np.float64)
    centres = np.asarray(window_centres_um, dtype=np.float64)
    if hist.ndim != 2 or hist.shape != (len(times), len(edges) - 1):
        raise ValueError(
            f"histogram must have shape ({len(times)}, {len(edges) - 1}), got {hist.shape}"
        )
    if disp.shape != (len(times), len(centres)):
        raise ValueError(
            f"displacement_um must have shape ({len(times)}, {len(centres)}), got {disp.shape}"
        )
    fig = Figure(figsize=(10.0, 5.0), dpi=DPI)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.11)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("depth y (µm)")
    ax.set_title("Peak depth histogram and estimated displacement", fontsize=10)
    if len(times) == 0:
        _message(ax, "no time bins")
        return fig
    top = float(hist.max()) if hist.size else 0.0
    extent = (times[0] - bin_s / 2, times[-1] + bin_s / 2, edges[0], edges[-1])
    ax.imshow(hist.T, origin="lower", aspect="auto", extent=extent, cmap="Greys",
              vmin=0.0, vmax=top if top > 0 else 1.0, interpolation="nearest")
    colours = unit_colors(np.arange(len(centres)))
    for k, centre in enumerate(centres):
        ax.plot(times, centre + disp[:, k], color=colours[k], linewidth=1.5,
                label=labels[k] if labels is not None
                else f"window at {centre:.0f} µm" if len(centres) > 1 else "rigid")
    ax.legend(loc="upper right", fontsize=7, ncols=min(len(centres), 4))
    return fig


def _best_channels(
    templates: npt.NDArray[np.float64], positions: npt.NDArray[np.float64], n_best: int
) -> npt.NDArray[np.intp]:
    """Per unit, the ``n_best`` channels nearest its peak (largest peak-to-peak) channel."""
    peak = np.ptp(templates, axis=1).argmax(axis=1)
    distance = np.linalg.norm(positions[peak][:, None, :] - positions[None, :, :], axis=2)
    return np.argsort(distance, axis=1, kind="stable")[:, :n_best]


def _probe_pitch_um(positions: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Smallest positive horizontal and vertical channel spacing (1.0 if none)."""
    steps = []
    for column in (0, 1):
        gaps = np.diff(np.unique(positions[:, column]))
        steps.append(float(gaps.min()) if len(gaps) else 0.0)
    dx, dy = steps
    dx = dx or dy or 1.0
    return dx, (dy or dx)


def waveforms_figure(
    templates: npt.ArrayLike,
    channel_positions_um: npt.ArrayLike,
    *,
    unit_index: npt.ArrayLike,
    n_best_channels: int = 8,
) -> Figure:
    """Unit templates on their best channels, each trace drawn at its channel's place.

    Parameters
    ----------
    templates : array_like, shape (n_units, n_time, n_channels)
        The units of this page (noise units).
    channel_positions_um : array_like, shape (n_channels, 2)
    unit_index : array_like of int, shape (n_units,)
        Unit numbers, for titles and colours.
    n_best_channels : int
        Channels drawn per unit: its peak channel and those nearest to it.

    Returns
    -------
    Figure
        One axes holding the cell frames and one line collection with
        ``n_units * min(n_best_channels, n_channels)`` traces; "no units" if empty.
    """
    waves = np.asarray(templates, dtype=np.float64)
    positions = _check_positions("channel_positions_um", channel_positions_um)
    if waves.ndim != 3 or waves.shape[2] != len(positions):
        raise ValueError(
            "templates must have shape (n_units, n_time, n_channels) with "
            f"n_channels={len(positions)}, got {waves.shape}"
        )
    index = _check_length("unit_index", unit_index, len(waves))
    n_best = min(_check_count("n_best_channels", n_best_channels, 1), len(positions))
    fig, ax, origins = _unit_grid(
        len(waves), cell_in=(1.5, 1.7),
        title=f"Templates (noise units σ) on the {n_best} channels around the peak channel, "
        "each drawn at its channel's probe position",
    )
    if not len(waves):
        return fig
    dx, dy = _probe_pitch_um(positions)
    best = _best_channels(waves, positions, n_best)
    traces = np.take_along_axis(waves, best[:, None, :], axis=2).transpose(0, 2, 1)
    peak = np.abs(traces).max(axis=(1, 2), keepdims=True)
    scale = np.divide(0.9 * dy, peak, out=np.zeros_like(peak), where=peak > 0)
    time = np.linspace(-0.4 * dx, 0.4 * dx, waves.shape[1])
    xy = positions[best]
    x = time + xy[:, :, :1]
    y = traces * scale + xy[:, :, 1:]
    x_lo, x_hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    y_lo, y_hi = y.min(axis=(1, 2), keepdims=True), y.max(axis=(1, 2), keepdims=True)
    u = (x - x_lo) / np.maximum(x_hi - x_lo, 1e-12)
    v = 0.04 + 0.92 * (y - y_lo) / np.maximum(y_hi - y_lo, 1e-12)
    n_units, _, n_time = traces.shape
    segments = _place(origins, u.reshape(n_units, -1), v.reshape(n_units, -1))
    colours = np.repeat(unit_colors(index), n_best, axis=0)
    ax.add_collection(LineCollection(segments.reshape(n_units * n_best, n_time, 2),
                                     colors=colours, linewidths=0.8))
    ptp = np.ptp(waves, axis=1).max(axis=1)
    _cell_titles(ax, origins, [f"u{int(i)}  ptp {p:.0f}σ" for i, p in zip(index, ptp)])
    return fig


def _sorted_by_unit(spikes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((spikes["sample_index"], spikes["unit_index"]))
    units = spikes["unit_index"][order].astype(np.int64)
    return units, spikes["sample_index"][order].astype(np.int64)


def isi_histograms(
    spikes: np.ndarray,
    *,
    n_units: int,
    sampling_rate_hz: float,
    window_ms: float = 50.0,
    bin_ms: float = 1.0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Histogram of inter-spike intervals shorter than ``window_ms``, per unit.

    Parameters
    ----------
    spikes : structured array with ``sample_index`` and ``unit_index``
    n_units : int
        Units are numbered ``0 .. n_units - 1``.
    sampling_rate_hz, window_ms, bin_ms : float

    Returns
    -------
    counts : ndarray of int64, shape (n_units, n_bins)
        ``counts[u, b]``: intervals of unit ``u`` in ``[b, b + 1) * bin_ms``.
    edges_ms : ndarray of float64, shape (n_bins + 1,)
    """
    n_units = _check_count("n_units", n_units, 0)
    rate = _check_positive("sampling_rate_hz", sampling_rate_hz)
    n_bins = _bin_count(window_ms, bin_ms)
    units, samples = _sorted_by_unit(_check_spikes(spikes, n_units))
    gaps = np.diff(samples)
    bins = np.floor(gaps * (1000.0 / (rate * bin_ms))).astype(np.int64)
    valid = (units[1:] == units[:-1]) & (bins < n_bins)
    flat = units[1:][valid] * n_bins + bins[valid]
    counts = np.bincount(flat, minlength=n_units * n_bins).reshape(n_units, n_bins)
    return counts, np.arange(n_bins + 1) * float(bin_ms)


def autocorrelograms(
    spikes: np.ndarray,
    *,
    n_units: int,
    sampling_rate_hz: float,
    window_ms: float = 50.0,
    bin_ms: float = 1.0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Autocorrelogram of each unit: counts of spike pairs by time lag.

    Every pair of spikes of one unit closer than ``window_ms`` is counted at
    its lag ``d >= 0`` in bin ``floor(d / bin_ms)`` of the right half, and again
    in the mirror bin of the left half, so the result is symmetric about zero.

    Returns
    -------
    counts : ndarray of int64, shape (n_units, 2 * n_bins)
        Bins of ``edges_ms``, from ``-window_ms`` to ``window_ms``.
    edges_ms : ndarray of float64, shape (2 * n_bins + 1,)
    """
    n_units = _check_count("n_units", n_units, 0)
    rate = _check_positive("sampling_rate_hz", sampling_rate_hz)
    n_bins = _bin_count(window_ms, bin_ms)
    units, samples = _sorted_by_unit(_check_spikes(spikes, n_units))
    scale = 1000.0 / (rate * bin_ms)
    positive = np.zeros(n_units * n_bins, dtype=np.int64)
    # Lag k pairs each spike with the k-th next one; within a unit's block the
    # gap grows with k, so once no pair at lag k is close enough, none at k+1 is.
    for k in range(1, len(samples)):
        bins = np.floor((samples[k:] - samples[:-k]) * scale).astype(np.int64)
        valid = (units[k:] == units[:-k]) & (bins < n_bins)
        if not valid.any():
            break
        positive += np.bincount(units[k:][valid] * n_bins + bins[valid], minlength=len(positive))
    positive = positive.reshape(n_units, n_bins)
    counts = np.concatenate([positive[:, ::-1], positive], axis=1)
    return counts, np.arange(-n_bins, n_bins + 1) * float(bin_ms)


def histogram_grid_figure(
    counts: npt.ArrayLike,
    edges_ms: npt.ArrayLike,
    *,
    unit_index: npt.ArrayLike,
    title: str,
    refractory_ms: float = 0.0,
) -> Figure:
    """One small histogram per unit (ISI histograms or autocorrelograms).

    Each panel spans ``edges_ms[0] .. edges_ms[-1]`` and is scaled to its own
    highest bin; the panel title gives the unit, its count and that peak.

    Parameters
    ----------
    counts : array_like, shape (n_units, n_bins)
        The units of this page.
    edges_ms : array_like, shape (n_bins + 1,)
    unit_index : array_like of int, shape (n_units,)
    title : str
    refractory_ms : float
        Lags with ``|lag| < refractory_ms`` are shaded red (0: no shading).

    Returns
    -------
    Figure
        One axes holding the cell frames, one polygon per unit (and one
        shading rectangle per unit); "no units" if empty.
    """
    values = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges_ms, dtype=np.float64)
    if values.ndim != 2 or edges.shape != (values.shape[1] + 1,) or values.shape[1] < 1:
        raise ValueError(
            "counts must have shape (n_units, n_bins >= 1) and edges_ms shape (n_bins + 1,), "
            f"got {values.shape} and {edges.shape}"
        )
    span = edges[-1] - edges[0]
    if not span > 0:
        raise ValueError(f"edges_ms must increase, got {edges[0]} .. {edges[-1]}")
    index = _check_length("unit_index", unit_index, len(values))
    if not refractory_ms >= 0:
        raise ValueError(f"refractory_ms must be >= 0, got {refractory_ms!r}")
    fig, ax, origins = _unit_grid(
        len(values), cell_in=(1.5, 1.3),
        title=f"{title}: {edges[0]:g} to {edges[-1]:g} ms per panel, "
        f"bin {edges[1] - edges[0]:g} ms"
        + (f", red: |lag| < {refractory_ms:g} ms" if refractory_ms > 0 else ""),
    )
    if not len(values):
        return fig
    peak = values.max(axis=1, keepdims=True)
    heights = values / np.maximum(peak, 1.0)
    edge_u = (edges - edges[0]) / span
    u = np.concatenate([edge_u[:1], np.repeat(edge_u, 2)[1:-1], edge_u[-1:]])
    v = np.concatenate([np.zeros((len(values), 1)), np.repeat(heights, 2, axis=1),
                        np.zeros((len(values), 1))], axis=1)
    lo = (np.clip(-refractory_ms, edges[0], edges[-1]) - edges[0]) / span
    hi = (np.clip(refractory_ms, edges[0], edges[-1]) - edges[0]) / span
    if hi > lo:
        box = _place(origins, [[lo, hi, hi, lo]], [[0, 0, 1, 1]])
        ax.add_collection(PolyCollection(box, facecolors=(1.0, 0.0, 0.0, 0.15),
                                         edgecolors="none"))
    ax.add_collection(PolyCollection(_place(origins, u[None, :], v),
                                     facecolors=unit_colors(index), edgecolors="none"))
    _cell_titles(ax, origins, [f"u{int(i)}  n={int(n)}  max {int(m)}"
                               for i, n, m in zip(index, values.sum(axis=1), peak[:, 0])])
    return fig


def _per_unit_subset(
    units: npt.NDArray[np.int64], max_per_unit: int
) -> npt.NDArray[np.bool_]:
    """Evenly strided choice of at most ``max_per_unit`` rows per unit (rows sorted by unit)."""
    if not len(units):
        return np.zeros(0, dtype=bool)
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    sizes = np.diff(np.r_[starts, len(units)])
    rank = np.arange(len(units)) - np.repeat(starts, sizes)
    stride = np.repeat(-(-sizes // max_per_unit), sizes)
    return rank % stride == 0


def amplitudes_figure(
    spikes: np.ndarray,
    peak_to_peak: npt.ArrayLike,
    *,
    unit_index: npt.ArrayLike,
    sampling_rate_hz: float,
    duration_s: float,
    max_spikes_per_unit: int = 2000,
) -> Figure:
    """Spike amplitude against time, one panel per unit of ``unit_index``.

    Each panel spans the whole recording in time and ``0 .. max`` in
    amplitude, with the unit's largest amplitude given in its title.

    Parameters
    ----------
    spikes : structured array with ``sample_index``, ``unit_index``, ``amplitude``
        The whole sort; ``amplitude`` scales the unit's template (1 = template).
    peak_to_peak : array_like, shape (n_units_total,)
        Template peak-to-peak of every unit (noise units), indexed by unit number;
        amplitudes are drawn as ``amplitude * peak_to_peak``.
    unit_index : array_like of int, shape (n,)
        The units of this page.
    sampling_rate_hz, duration_s : float
    max_spikes_per_unit : int
        Above this many spikes an evenly strided subset of the unit is drawn.

    Returns
    -------
    Figure
        One axes holding the cell frames and one scatter collection of the
        drawn spikes; "no units" if empty.
    """
    ptp = np.asarray(peak_to_peak, dtype=np.float64).reshape(-1)
    rate = _check_positive("sampling_rate_hz", sampling_rate_hz)
    duration = _check_positive("duration_s", duration_s)
    max_per_unit = _check_count("max_spikes_per_unit", max_spikes_per_unit, 1)
    page = np.asarray(unit_index, dtype=np.int64).reshape(-1)
    if len(page) and (page.min() < 0 or page.max() >= len(ptp)):
        raise ValueError(
            f"unit_index must lie in [0, {len(ptp)}) (the length of peak_to_peak), "
            f"got values in [{page.min()}, {page.max()}]"
        )
    _check_spikes(spikes, len(ptp))
    fig, ax, origins = _unit_grid(
        len(page), cell_in=(1.5, 1.3),
        title=f"Spike amplitude (template peak-to-peak, σ) over time, 0 to {duration:g} s "
        "per panel",
    )
    if not len(page):
        return fig
    cell_of = np.full(len(ptp), -1)
    cell_of[page] = np.arange(len(page))
    chosen = spikes[cell_of[spikes["unit_index"]] >= 0]
    chosen = chosen[np.lexsort((chosen["sample_index"], chosen["unit_index"]))]
    chosen = chosen[_per_unit_subset(chosen["unit_index"].astype(np.int64), max_per_unit)]
    cell = cell_of[chosen["unit_index"]]
    amplitude = chosen["amplitude"].astype(np.float64) * ptp[chosen["unit_index"]]
    top = np.zeros(len(page))
    np.maximum.at(top, cell, amplitude)
    u = np.clip(chosen["sample_index"] / (rate * duration), 0.0, 1.0)
    v = np.clip(np.divide(amplitude, top[cell], out=np.zeros_like(amplitude),
                          where=top[cell] > 0), 0.0, 1.0)
    points = _place(origins[cell], u[:, None], v[:, None])[:, 0]
    ax.scatter(points[:, 0], points[:, 1], s=1.0, linewidths=0,
               c=unit_colors(chosen["unit_index"]))
    _cell_titles(ax, origins, [f"u{int(i)}  max {m:.0f}σ" for i, m in zip(page, top)])
    return fig


def accuracy_vs_snr_figure(
    snr: npt.ArrayLike,
    accuracy: npt.ArrayLike,
    precision: npt.ArrayLike,
    recall: npt.ArrayLike,
    *,
    well_detected_accuracy: float,
) -> Figure:
    """Ground-truth scores: accuracy against SNR, and precision against recall.

    Parameters
    ----------
    snr, accuracy, precision, recall : array_like, shape (n_gt_units,)
        One value per ground-truth unit (SNR may be NaN when unknown: such
        units are left out of the left panel only).
    well_detected_accuracy : float
        Threshold drawn as a dashed line and counted in the title.

    Returns
    -------
    Figure
        Two axes.
    """
    acc = np.asarray(accuracy, dtype=np.float64).reshape(-1)
    snr = _check_length("snr", snr, len(acc)).astype(np.float64)
    prec = _check_length("precision", precision, len(acc)).astype(np.float64)
    rec = _check_length("recall", recall, len(acc)).astype(np.float64)
    if not 0.0 <= well_detected_accuracy <= 1.0:
        raise ValueError(
            f"well_detected_accuracy must lie in [0, 1], got {well_detected_accuracy!r}"
        )
    n_well = int(np.count_nonzero(acc >= well_detected_accuracy))
    fig = Figure(figsize=(10.0, 4.5), dpi=DPI)
    fig.suptitle(
        f"{n_well} of {len(acc)} ground-truth units well detected "
        f"(accuracy ≥ {well_detected_accuracy:g})", fontsize=10
    )
    left, right = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.12, wspace=0.25)
    known = np.isfinite(snr)
    if not len(acc):
        _message(left, "no ground-truth units")
        _message(right, "no ground-truth units")
        return fig
    left.scatter(snr[known], acc[known], s=30, color="tab:blue", label="accuracy")
    left.scatter(snr[known], rec[known], s=10, marker="v", color="tab:green", label="recall")
    left.scatter(snr[known], prec[known], s=10, marker="^", color="tab:orange",
                 label="precision")
    left.axhline(well_detected_accuracy, color="0.4", linestyle="--", linewidth=1)
    left.set_xlabel("ground-truth SNR" + ("" if known.all() else
                                           f" ({int((~known).sum())} without SNR not shown)"))
    left.set_ylabel("score")
    left.set_ylim(-0.03, 1.03)
    left.legend(fontsize=7, loc="lower right")
    right.scatter(rec, prec, s=30, c=acc, cmap="viridis", vmin=0, vmax=1,
                  edgecolors="black", linewidths=0.3)
    right.set_xlabel("recall")
    right.set_ylabel("precision")
    right.set_xlim(-0.03, 1.03)
    right.set_ylim(-0.03, 1.03)
    right.set_title("colour = accuracy", fontsize=8)
    return fig


def rule_totals(
    job_rules: Sequence[str],
    seconds: npt.ArrayLike,
    max_rss_mb: npt.ArrayLike,
) -> dict[str, np.ndarray]:
    """Per-rule totals of Snakemake benchmark records (one record per job).

    Parameters
    ----------
    job_rules : sequence of str, length n_jobs
    seconds : array_like, shape (n_jobs,)
        Wall time of each job.
    max_rss_mb : array_like, shape (n_jobs,)
        Peak resident memory of each job (NaN where not measured).

    Returns
    -------
    dict of arrays, one row per rule, slowest rule first
        ``rule`` (str), ``n_jobs``, ``total_s``, ``max_job_s``,
        ``max_rss_mb`` (NaN if never measured).
    """
    names = np.asarray(list(job_rules), dtype=str)
    secs = _check_length("seconds", seconds, len(names)).astype(np.float64)
    rss = _check_length("max_rss_mb", max_rss_mb, len(names)).astype(np.float64)
    rules, inverse = np.unique(names, return_inverse=True)
    total = np.bincount(inverse, weights=secs, minlength=len(rules))
    longest = np.full(len(rules), -np.inf)
    np.maximum.at(longest, inverse, secs)
    peak = np.full(len(rules), -np.inf)
    np.maximum.at(peak, inverse, np.nan_to_num(rss, nan=-np.inf))
    order = np.lexsort((rules, -total))
    return {
        "rule": rules[order],
        "n_jobs": np.bincount(inverse, minlength=len(rules))[order],
        "total_s": total[order],
        "max_job_s": longest[order],
        "max_rss_mb": np.where(np.isfinite(peak), peak, np.nan)[order],
    }


def runtime_figure(totals: Mapping[str, np.ndarray]) -> Figure:
    """Bar charts of total job seconds and peak memory per rule.

    Parameters
    ----------
    totals : mapping
        The output of :func:`rule_totals`.

    Returns
    -------
    Figure
        Two axes, one bar per rule in each (a message if there are no jobs).
    """
    rules = list(totals["rule"])
    height = 1.2 + 0.28 * max(len(rules), 2)
    fig = Figure(figsize=(10.0, height), dpi=DPI)
    left, right = fig.subplots(1, 2, sharey=True)
    fig.subplots_adjust(left=0.16, right=0.97, top=1 - 0.55 / height, bottom=0.45 / height,
                        wspace=0.08)
    if not rules:
        _message(left, "no benchmark records")
        _message(right, "no benchmark records")
        return fig
    fig.suptitle(
        f"{int(np.sum(totals['n_jobs']))} jobs, {float(np.sum(totals['total_s'])):.1f} s of "
        "job time in all (summed over jobs; cores run jobs side by side)", fontsize=10
    )
    rows = np.arange(len(rules))
    left.barh(rows, totals["total_s"], color="tab:blue")
    for row, total, n in zip(rows, totals["total_s"], totals["n_jobs"]):
        left.annotate(f"{total:.1f} s ({int(n)} job{'s' if n != 1 else ''})", (total, row),
                      xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    rss = np.nan_to_num(np.asarray(totals["max_rss_mb"], dtype=np.float64))
    right.barh(rows, rss, color="tab:purple")
    for row, value in zip(rows, totals["max_rss_mb"]):
        label = "n/a" if np.isnan(value) else f"{value:.0f} MB"
        right.annotate(label, (0 if np.isnan(value) else value, row), xytext=(3, 0),
                       textcoords="offset points", va="center", fontsize=7)
    left.set_yticks(rows, rules, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("total job time (s)")
    right.set_xlabel("peak memory of one job, max RSS (MB)")
    for ax in (left, right):
        ax.margins(x=0.25)
    return fig


def _cell(value: object) -> tuple[str, bool]:
    """HTML text of one table cell, and whether it is a number."""
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return str(int(value)), True
    if isinstance(value, (np.floating, float)):
        return ("–" if np.isnan(value) else f"{float(value):.4g}"), True
    return html.escape(str(value)), False


def html_table(columns: Mapping[str, npt.ArrayLike], *, title: str, note: str = "") -> str:
    """A self-contained HTML page holding one table (for the report to embed).

    Parameters
    ----------
    columns : mapping of column name to array_like, all of one length
        Integers print as integers, floats with 4 significant digits, NaN as "–".
    title : str
    note : str
        A line of text under the title.

    Returns
    -------
    str
    """
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    lengths = {name: len(values) for name, values in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns must all have one length, got {lengths}")
    n_rows = next(iter(lengths.values()), 0)
    head = "".join(f"<th>{html.escape(name)}</th>" for name in arrays)
    body = []
    for i in range(n_rows):
        cells = []
        for values in arrays.values():
            text, numeric = _cell(values[i].item() if values.dtype.kind in "iuf" else values[i])
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    empty = "" if n_rows else f'<tr><td colspan="{max(len(arrays), 1)}">no rows</td></tr>'
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;font-size:13px;margin:12px}"
        "table{border-collapse:collapse}"
        "th{position:sticky;top:0;background:#e8ecf2;text-align:right;padding:3px 8px}"
        "td{padding:2px 8px;border-bottom:1px solid #eee}td.num{text-align:right}"
        "tr:nth-child(even){background:#f7f8fa}"
        "</style></head><body>\n"
        f"<h3>{html.escape(title)}</h3>\n<p>{html.escape(note)}</p>\n"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(body) + empty
        + "\n</tbody></table>\n</body></html>\n"
    )


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write ``fig`` as PNG or SVG (by the path's suffix), with no date or version stamp."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix == ".png":
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    elif suffix == ".svg":
        with matplotlib.rc_context({"svg.hashsalt": "shardsort"}):
            fig.savefig(path, format="svg", metadata={"Date": None, "Creator": None})
    else:
        raise ValueError(f"path must end with .png or .svg, got {os.fspath(path)!r}")
