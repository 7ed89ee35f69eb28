"""Neural-network spike detector (YASS style).

The network maps preprocessed traces (noise units, spikes negative) to a
spike probability per (sample, channel):

1. ``temporal``: a temporal convolution of each channel with shared weights
   (``'same'`` padding, ReLU);
2. ``mixing``: a 1x1 convolution mixing those features (ReLU);
3. ``spatial``: for each channel, a linear combination of the mixed features
   of its K nearest channels in distance order (itself first), giving the
   logit; a sigmoid gives the probability.

The Keras model built by :func:`build_detector` holds these layers on one
*patch*: a window on the K neighbours of a centre channel, shape
``(batch, n_samples, K)``, with the centre channel's logit and probability
as outputs. :func:`detector_logits` applies the same layers to a whole
window of all channels: the temporal and mixing layers run once per
channel and the spatial layer gathers each channel's neighbours, so the
result equals the patch model applied to every channel's patch, and a model
trained on patches applies to any probe.

Detection (:func:`detect_nn`) takes the local maxima of the logit with the
local-exclusivity rule of :func:`shardsort.detect.detect_peaks`, moves each
to its trough (the minimum of the traces within :data:`REFINE_SAMPLES`
samples, on the peak's channel and its neighbours) and keeps a trough
only when it passes the same rule on the traces
(:func:`shardsort.detect.exclusive_minima`), so each spike is reported
once, on its main channel, with the threshold detector's spatio-temporal
exclusion.
"""

from __future__ import annotations

import keras
import numpy as np
import numpy.typing as npt

from shardsort.detect import detect_peaks, exclusive_minima
from shardsort.nn import limit_threads_by_default
from shardsort.tables import PEAK_DTYPE

from ..checks import check_int as _check_int
from .modelinfo import REFINE_SAMPLES as REFINE_SAMPLES  # re-exported
from .modelinfo import check_neighbour_table as _check_neighbour_table
from .modelinfo import detector_margin_samples
from .modelinfo import neighbour_offsets_um as neighbour_offsets_um  # re-exported
from .modelinfo import neighbour_table as neighbour_table  # re-exported

#: Name of every detector model (checked when a model is used).
MODEL_NAME = "nn_detector"


#: Upper bound on the float32 features computed at once (about 32 MB), so
#: memory stays flat whatever the window size.
_BLOCK_VALUES = 2**23


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_window(window: npt.ArrayLike) -> npt.NDArray[np.float32]:
    traces = np.asarray(window, dtype=np.float32)
    if traces.ndim != 2:
        raise ValueError(
            f"window must have shape (n_samples, n_channels), got {traces.shape}"
        )
    return traces


def _detector_layers(
    model: keras.Model,
) -> tuple[keras.layers.Layer, keras.layers.Layer, keras.layers.Layer]:
    if not isinstance(model, keras.Model) or model.name != MODEL_NAME:
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(
            f"model must be a detector from build_detector (name {MODEL_NAME!r}), "
            f"got {name!r}"
        )
    return (
        model.get_layer("temporal"),
        model.get_layer("mixing"),
        model.get_layer("spatial"),
    )


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------


def build_detector(
    *,
    n_neighbours: int,
    temporal_samples: int,
    n_temporal_filters: int,
    n_mixed_filters: int,
) -> keras.Model:
    """Build an untrained detector network on neighbourhood patches.

    Parameters
    ----------
    n_neighbours : int
        K, channels of a neighbourhood including the centre (>= 1).
    temporal_samples : int
        Length of the temporal filters, odd (>= 1); the receptive field
        spans ``temporal_samples // 2`` samples on each side.
    n_temporal_filters, n_mixed_filters : int
        Features after the temporal and after the 1x1 convolution (>= 1).

    Returns
    -------
    keras.Model
        Named :data:`MODEL_NAME`. Input float32 ``(batch, n_samples, K)``;
        outputs the layer ``logit`` ``(batch, n_samples)`` and, as model
        output, its sigmoid ``probability`` for the centre channel.
    """
    n_neighbours = _check_int("n_neighbours", n_neighbours, 1)
    temporal_samples = _check_int("temporal_samples", temporal_samples, 1)
    if temporal_samples % 2 == 0:
        raise ValueError(f"temporal_samples must be odd, got {temporal_samples}")
    n_temporal_filters = _check_int("n_temporal_filters", n_temporal_filters, 1)
    n_mixed_filters = _check_int("n_mixed_filters", n_mixed_filters, 1)
    limit_threads_by_default()

    patch = keras.Input(shape=(None, n_neighbours), name="patch")
    x = keras.layers.Reshape((-1, n_neighbours, 1))(patch)
    x = keras.layers.Conv2D(
        n_temporal_filters,
        (temporal_samples, 1),
        padding="same",
        activation="relu",
        name="temporal",
    )(x)
    x = keras.layers.Conv2D(n_mixed_filters, (1, 1), activation="relu", name="mixing")(
        x
    )
    x = keras.layers.Conv2D(1, (1, n_neighbours), name="spatial")(x)
    logit = keras.layers.Reshape((-1,), name="logit")(x)
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model(patch, probability, name=MODEL_NAME)


def detector_n_neighbours(model: keras.Model) -> int:
    """K, the neighbourhood size a detector model was built for."""
    return int(_detector_layers(model)[2].kernel_size[1])


def nn_margin_samples(model: keras.Model, *, exclude_samples: int) -> int:
    """Margin :func:`detect_nn` needs on each side of the core.

    Parameters
    ----------
    model : keras.Model
        Detector from :func:`build_detector` (or loaded).
    exclude_samples : int
        Temporal exclusion half-width of the peak test (>= 0).

    Returns
    -------
    int
        ``temporal_samples // 2 + exclude_samples + REFINE_SAMPLES``: the
        receptive field of the logit at samples up to ``exclude_samples +
        REFINE_SAMPLES`` beyond the core, whose peaks may refine into it
        (the troughs' own exclusivity test reads ``exclude_samples`` beyond
        the core). With that margin (or the recording edge, zero-padded) the
        result does not depend on how the recording is chunked.
    """
    return detector_margin_samples(
        filter_samples=int(_detector_layers(model)[0].kernel_size[0]),
        exclude_samples=exclude_samples,
    )


# ---------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------


def detector_logits(
    window: npt.NDArray[np.float32],
    model: keras.Model,
    neighbours: npt.NDArray[np.integer],
) -> npt.NDArray[np.float32]:
    """Spike logit of every sample and channel of a window.

    Parameters
    ----------
    window : ndarray of float32, shape (n_samples, n_channels)
        Preprocessed traces.
    model : keras.Model
        Detector from :func:`build_detector` (or loaded).
    neighbours : ndarray of int, shape (n_channels, K)
        Each channel's K neighbours, self first (:func:`neighbour_table`);
        ``-1`` is a silent (all-zero) channel.

    Returns
    -------
    ndarray of float32, shape (n_samples, n_channels)
        Logits (the probability is their sigmoid). Samples beyond the window
        count as zero ('same' padding), as in training. The window is
        processed in blocks of bounded size that overlap by the receptive
        field; a sample's logit depends only on the traces within
        ``temporal_samples // 2`` of it (bit for bit on CPU in our tests).
    """
    traces = _check_window(window)
    n_samples, n_channels = traces.shape
    temporal, mixing, spatial = _detector_layers(model)
    n_neighbours = int(spatial.kernel_size[1])
    table = _check_neighbour_table(neighbours, n_channels, n_neighbours)
    limit_threads_by_default()

    half_width = temporal.kernel_size[0] // 2
    # (K, n_mixed): the spatial kernel is (1, K, n_mixed, 1).
    weights = spatial.kernel.numpy()[0, :, :, 0]
    bias = np.float32(spatial.bias.numpy()[0])
    # Missing neighbours read an extra all-zero channel, index n_channels.
    columns = np.where(table < 0, n_channels, table)
    by_channel = np.ascontiguousarray(traces.T)
    block = max(1, _BLOCK_VALUES // max(1, n_channels * temporal.filters))
    logits = np.zeros((n_samples, n_channels), np.float32)
    if n_channels == 0:
        return logits
    for start in range(0, n_samples, block):
        stop = min(start + block, n_samples)
        low, high = max(0, start - half_width), min(n_samples, stop + half_width)
        features = mixing(temporal(by_channel[:, low:high, None, None]))
        features = features.numpy()[:, start - low : stop - low, 0]
        # projected[k, c, t]: what channel c contributes to the logit of a
        # channel whose k-th neighbour it is.
        projected = np.zeros((n_neighbours, n_channels + 1, stop - start), np.float32)
        np.einsum("ctf,kf->kct", features, weights, out=projected[:, :n_channels])
        total = np.full((n_channels, stop - start), bias, np.float32)
        for slot in range(n_neighbours):
            total += projected[slot, columns[:, slot]]
        logits[start:stop] = total.T
    return logits


def _refine_channels(
    mask: npt.NDArray[np.bool_], good: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    """Each channel, then its good neighbours in ascending order, padded with itself."""
    n_channels = good.size
    others = mask & good[None, :] & ~np.eye(n_channels, dtype=bool)
    degree = int(others.sum(axis=1).max(initial=0))
    table = np.repeat(np.arange(n_channels, dtype=np.int64)[:, None], 1 + degree, axis=1)
    rows, cols = np.nonzero(others)
    slot = np.arange(rows.size) - np.searchsorted(rows, rows)
    table[rows, 1 + slot] = cols
    return table


def detect_nn(
    window: npt.NDArray[np.float32],
    model: keras.Model,
    *,
    core_start: int,
    core_stop: int,
    neighbours: npt.NDArray[np.integer],
    neighbour_mask: npt.NDArray[np.bool_],
    exclude_samples: int,
    probability_threshold: float,
    good_mask: npt.NDArray[np.bool_] | None = None,
) -> np.ndarray:
    """Spikes found by the detector network in the core of a window.

    A (t, c) is a peak when its probability is at least
    ``probability_threshold`` and its logit wins the local-exclusivity test
    of :func:`shardsort.detect.detect_peaks` (strict maximum over
    ``|t' - t| <= exclude_samples`` and channels ``neighbour_mask[c]``,
    ties to the earlier sample, then the lower channel). Each peak is
    reported at the trough of the traces within :data:`REFINE_SAMPLES`
    samples on its channel and its good neighbours (``neighbour_mask``): the
    minimum, the earliest sample first, then the peak's own channel, then
    the lower channel. So a spike gets the channel where it is largest, as
    with :func:`shardsort.detect.detect_peaks`, wherever the network
    answered. A trough is reported when it lies in the core and passes the
    threshold detector's exclusivity test on the traces
    (:func:`shardsort.detect.exclusive_minima`: the strict minimum over
    ``|t' - t| <= exclude_samples`` and channels ``neighbour_mask[c]``), so
    a spike the network answered several times (on channels farther apart
    than the radius, or at samples farther apart than the window, e.g. on
    its rebound) is reported once, at its trough on its main channel; the
    network replaces the threshold, not the exclusion.
    Bad channels produce no spikes, are left out of the comparisons, and
    feed the network as silent channels.

    Parameters
    ----------
    window : ndarray of float32, shape (n_samples, n_channels)
        Preprocessed traces: the core plus margins of at least
        ``nn_margin_samples(model, exclude_samples=exclude_samples)`` where
        the recording extends (zero-padded beyond its edges).
    model : keras.Model
        Detector from :func:`build_detector` (or loaded).
    core_start, core_stop : int
        The core is ``window[core_start:core_stop]``.
    neighbours : ndarray of int, shape (n_channels, K)
        The network's neighbour table (:func:`neighbour_table`).
    neighbour_mask : ndarray of bool, shape (n_channels, n_channels)
        Channels compared with each channel in the exclusivity test
        (:func:`shardsort.detect.neighbour_mask`).
    exclude_samples : int
        Temporal exclusion half-width, >= 0.
    probability_threshold : float
        Smallest spike probability, in (0, 1).
    good_mask : ndarray of bool, shape (n_channels,), optional
        False for bad channels; all channels are good when omitted.

    Returns
    -------
    ndarray of PEAK_DTYPE, shape (n_peaks,)
        As :func:`shardsort.detect.detect_peaks`: sorted by (sample_index,
        channel_index); ``sample_index`` relative to ``core_start`` (the
        trough), ``amplitude`` the trace at the trough, ``x_um`` / ``y_um``
        zero.
    """
    traces = _check_window(window)
    n_samples, n_channels = traces.shape
    core_start = _check_int("core_start", core_start, 0)
    core_stop = _check_int("core_stop", core_stop, core_start)
    if core_stop > n_samples:
        raise ValueError(
            f"core_stop must be <= window length {n_samples}, got {core_stop}"
        )
    if not 0 < probability_threshold < 1:
        raise ValueError(
            f"probability_threshold must be in (0, 1), got {probability_threshold!r}"
        )
    if good_mask is None:
        good = np.ones(n_channels, dtype=bool)
    else:
        good = np.asarray(good_mask)
        if good.dtype != np.bool_ or good.shape != (n_channels,):
            raise ValueError(
                f"good_mask must be a bool array of shape ({n_channels},), "
                f"got {good.dtype} {good.shape}"
            )
    table = _check_neighbour_table(neighbours, n_channels, detector_n_neighbours(model))
    table = np.where((table >= 0) & good[np.maximum(table, 0)], table, -1)
    logits = detector_logits(traces, model, table)

    # Peaks of the logit are the threshold detector's peaks of
    # (threshold_logit - 1) - logit, whose threshold is then 1.
    threshold_logit = np.log(probability_threshold / (1.0 - probability_threshold))
    score = np.float32(threshold_logit - 1.0) - logits
    first = max(0, core_start - REFINE_SAMPLES)
    peaks = detect_peaks(
        score,
        core_start=first,
        core_stop=min(n_samples, core_stop + REFINE_SAMPLES),
        threshold=1.0,
        neighbour_mask=neighbour_mask,
        exclude_samples=exclude_samples,
        good_mask=good,
    )
    t = peaks["sample_index"] + first
    c = peaks["channel_index"].astype(np.int64)

    # The trough: the minimum of the traces within REFINE_SAMPLES of the peak
    # on its channel and its good neighbours, the earliest sample first, then
    # the peak's own channel, then the lower channel. So a spike is assigned
    # to the channel where it is largest, as by the threshold detector,
    # whichever of its channels the network answered on.
    padded = np.pad(
        traces, ((REFINE_SAMPLES, REFINE_SAMPLES), (0, 0)), constant_values=np.inf
    )
    candidates = _refine_channels(np.asarray(neighbour_mask, bool), good)[c]
    n_times = 2 * REFINE_SAMPLES + 1
    around = padded[
        t[:, None, None] + np.arange(n_times)[None, :, None], candidates[:, None, :]
    ].reshape(t.size, n_times * candidates.shape[1])
    best = np.argmin(around, axis=1) if t.size else np.zeros(0, np.int64)
    trough = t - REFINE_SAMPLES + best // candidates.shape[1]
    c = candidates[np.arange(t.size), best % candidates.shape[1]]
    inside = (trough >= core_start) & (trough < core_stop)
    key = np.unique(trough[inside] * n_channels + c[inside])
    trough, c = np.divmod(key, n_channels)
    # One spike, one detection: the trough must pass the threshold
    # detector's exclusivity test on the traces. A network answering one
    # spike twice (on channels farther apart than the radius, or at samples
    # farther apart than the window, e.g. on its rebound) refines the second
    # answer to a sample that a deeper one of the same spike dominates.
    keep = exclusive_minima(
        traces,
        trough,
        c,
        neighbour_mask=neighbour_mask,
        exclude_samples=exclude_samples,
        good_mask=good,
    )
    trough, c = trough[keep], c[keep]

    result = np.zeros(trough.size, dtype=PEAK_DTYPE)
    result["sample_index"] = trough - core_start
    result["channel_index"] = c
    result["amplitude"] = traces[trough, c]
    return result
