"""Collision triage network (YASS style).

A small classifier scores each detected spike's snippet on its K
neighbouring channels (main channel first), ``(n_times, K)``, with the
probability that the spike is *clean* (alone in its window) rather than
*collided* with another spike. Layers: a temporal convolution shared by the
channels (ReLU), a 1x1 feature mixing (ReLU), a dense layer on all samples
and channels (ReLU), and the logit, whose sigmoid is the output.
"""

from __future__ import annotations

import keras
import numpy as np
import numpy.typing as npt

from shardsort.detect import extract_snippets
from shardsort.nn import limit_threads_by_default

#: Name of every triage model (checked when a model is used).
MODEL_NAME = "nn_triage"

#: Snippets scored per network call.
_BATCH_SNIPPETS = 4096


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_model(model: keras.Model) -> tuple[int, int]:
    """The (n_times, K) snippet shape of a triage model."""
    if not isinstance(model, keras.Model) or model.name != MODEL_NAME:
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(
            f"model must be a triage network from build_triage (name "
            f"{MODEL_NAME!r}), got {name!r}"
        )
    _, n_times, n_neighbours = model.input_shape
    return int(n_times), int(n_neighbours)


def build_triage(
    *,
    snippet_samples: int,
    n_neighbours: int,
    temporal_samples: int,
    n_temporal_filters: int,
    n_mixed_filters: int,
    n_hidden: int,
) -> keras.Model:
    """Build an untrained triage network.

    Parameters
    ----------
    snippet_samples : int
        Samples per snippet, n_times (>= 1).
    n_neighbours : int
        K, channels per snippet (>= 1).
    temporal_samples : int
        Length of the temporal filters (>= 1), 'same' padding.
    n_temporal_filters, n_mixed_filters, n_hidden : int
        Features after the temporal and the 1x1 convolution, and units of
        the dense layer (>= 1).

    Returns
    -------
    keras.Model
        Named :data:`MODEL_NAME`. Input float32 ``(batch, n_times, K)``;
        layer ``logit`` ``(batch, 1)``; output its sigmoid, the probability
        that the spike is clean.
    """
    snippet_samples = _check_int("snippet_samples", snippet_samples, 1)
    n_neighbours = _check_int("n_neighbours", n_neighbours, 1)
    temporal_samples = _check_int("temporal_samples", temporal_samples, 1)
    n_temporal_filters = _check_int("n_temporal_filters", n_temporal_filters, 1)
    n_mixed_filters = _check_int("n_mixed_filters", n_mixed_filters, 1)
    n_hidden = _check_int("n_hidden", n_hidden, 1)
    limit_threads_by_default()

    snippet = keras.Input(shape=(snippet_samples, n_neighbours), name="snippet")
    x = keras.layers.Reshape((snippet_samples, n_neighbours, 1))(snippet)
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
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(n_hidden, activation="relu", name="hidden")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model(snippet, probability, name=MODEL_NAME)


def cut_triage_snippets(
    window: npt.NDArray[np.float32],
    sample_index_in_window: npt.NDArray[np.integer],
    channels: npt.NDArray[np.integer],
    *,
    pre_samples: int,
    post_samples: int,
) -> npt.NDArray[np.float32]:
    """Snippets for :func:`triage_spikes`, missing neighbours read as zeros.

    Parameters
    ----------
    window : ndarray of float32, shape (n_samples, n_channels)
        Preprocessed traces.
    sample_index_in_window : ndarray of int, shape (n_spikes,)
        Trough sample of each spike, as an index into ``window``.
    channels : ndarray of int, shape (n_spikes, K)
        Each spike's neighbour-table row (main channel first), ``-1`` for a
        missing channel, e.g. ``neighbour_table(...)[channel_index]``.
    pre_samples, post_samples : int
        Samples before the trough and from the trough on; the model's
        ``pre_samples`` (sidecar) and ``n_times - pre_samples``.

    Returns
    -------
    ndarray of float32, shape (n_spikes, pre_samples + post_samples, K)
        As :func:`shardsort.detect.extract_snippets`, with zeros for ``-1``.
    """
    traces = np.asarray(window, dtype=np.float32)
    if traces.ndim != 2:
        raise ValueError(
            f"window must have shape (n_samples, n_channels), got {traces.shape}"
        )
    n_channels = traces.shape[1]
    table = np.asarray(channels)
    if not np.issubdtype(table.dtype, np.integer) or (
        table.size and (table.min() < -1 or table.max() >= n_channels)
    ):
        raise ValueError(
            f"channels must be integers in [-1, {n_channels - 1}] (-1: no "
            f"channel), got {table.dtype} array"
            + (f" of range [{table.min()}, {table.max()}]" if table.size else "")
        )
    padded = np.concatenate(
        [traces, np.zeros((traces.shape[0], 1), np.float32)], axis=1
    )
    return extract_snippets(
        padded,
        sample_index_in_window,
        np.where(table < 0, n_channels, table),
        pre_samples=pre_samples,
        post_samples=post_samples,
    )


def triage_spikes(
    snippets: npt.NDArray[np.float32], model: keras.Model
) -> npt.NDArray[np.float32]:
    """Probability that each spike is clean (not collided).

    Parameters
    ----------
    snippets : ndarray of float32, shape (n_spikes, n_times, K)
        Preprocessed snippets on each spike's K neighbours, main channel
        first, trough at the model's ``pre_samples`` (see its sidecar), e.g.
        from :func:`shardsort.detect.extract_snippets`. Missing neighbours
        are zero.
    model : keras.Model
        Triage network from :func:`build_triage` (or loaded).

    Returns
    -------
    ndarray of float32, shape (n_spikes,)
        Probability of "clean", in [0, 1].
    """
    n_times, n_neighbours = _check_model(model)
    waves = np.asarray(snippets, dtype=np.float32)
    if waves.ndim != 3 or waves.shape[1:] != (n_times, n_neighbours):
        raise ValueError(
            f"snippets must have shape (n_spikes, {n_times}, {n_neighbours}) to "
            f"match the model, got {waves.shape}"
        )
    probability = np.empty(waves.shape[0], np.float32)
    if waves.shape[0] == 0:
        return probability
    limit_threads_by_default()
    for start in range(0, waves.shape[0], _BATCH_SNIPPETS):
        batch = waves[start : start + _BATCH_SNIPPETS]
        output = model(batch, training=False).numpy()
        probability[start : start + batch.shape[0]] = output[:, 0]
    return probability
