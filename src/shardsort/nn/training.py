"""Training the networks, and saving / loading them with a YAML sidecar.

Training is seeded and deterministic as far as TensorFlow allows: the seed
fixes the weight initialisation, the validation split and the batch order
(``keras.utils.set_random_seed``), and ``enable_op_determinism`` makes the
kernels deterministic (on CPU and, where implemented, GPU). Both are
process-wide TensorFlow settings. TensorFlow uses a GPU when it sees one.

A saved model is a folder holding ``model.keras`` and ``model.yaml``; the
sidecar records what the model needs of a recording (sampling rate,
neighbourhood size and geometry), its architecture, training metrics and
seed. Files are written under temporary names and renamed, the sidecar
last, so a folder with a sidecar is complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf
import yaml

from shardsort.nn import configure_tensorflow, limit_threads_by_default
from shardsort.nn import detector as nn_detector
from shardsort.nn import triage as nn_triage

from ..checks import check_int as _check_int
from ..checks import check_positive as _check_positive
from .modelinfo import MODEL_FILE, SIDECAR_FILE, check_model_fits, read_sidecar
from .modelinfo import SAMPLING_RATE_RTOL as SAMPLING_RATE_RTOL  # re-exported

#: Examples per network call when computing validation metrics.
_PREDICT_BATCH = 1024


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_examples(
    x_name: str,
    x: npt.ArrayLike,
    y_name: str,
    y: npt.ArrayLike,
    x_ndim: int,
    y_shape_of_x: Callable[[tuple[int, ...]], tuple[int, ...]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    inputs = np.asarray(x, dtype=np.float32)
    if inputs.ndim != x_ndim or inputs.shape[0] == 0:
        raise ValueError(
            f"{x_name} must be a non-empty {x_ndim}-D array, got shape {inputs.shape}"
        )
    if not np.all(np.isfinite(inputs)):
        raise ValueError(f"{x_name} must be finite, got NaN or inf values")
    outputs = np.asarray(y, dtype=np.float32)
    expected = y_shape_of_x(inputs.shape)
    if outputs.shape != expected:
        raise ValueError(f"{y_name} must have shape {expected}, got {outputs.shape}")
    if not np.all((outputs == 0) | (outputs == 1)):
        raise ValueError(f"{y_name} must hold only 0 and 1")
    return inputs, outputs


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def _logistic_loss(positive_weight: float):
    """Mean logistic loss on logits, positives weighted by ``positive_weight``."""

    def loss(targets, logits):
        targets = keras.ops.cast(targets, logits.dtype)
        per_value = positive_weight * targets * keras.ops.softplus(-logits) + (
            1.0 - targets
        ) * keras.ops.softplus(logits)
        return keras.ops.mean(per_value, axis=-1)

    return loss


def _split(
    n_examples: int, validation_fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded (train, validation) example indices."""
    if not 0 <= validation_fraction < 1:
        raise ValueError(
            f"validation_fraction must be in [0, 1), got {validation_fraction!r}"
        )
    order = np.random.default_rng(seed).permutation(n_examples)
    n_validation = int(validation_fraction * n_examples)
    if n_validation == n_examples:
        raise ValueError(
            f"validation_fraction={validation_fraction} leaves no training "
            f"example out of {n_examples}"
        )
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


def _fit(
    model: keras.Model,
    inputs: npt.NDArray[np.float32],
    targets: npt.NDArray[np.float32],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    positive_weight: float,
) -> float:
    """Train ``model``'s logit on (inputs, targets); return the last epoch loss."""
    trainer = keras.Model(model.input, model.get_layer("logit").output)
    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=_logistic_loss(positive_weight),
    )
    history = trainer.fit(
        inputs, targets, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0
    )
    return float(history.history["loss"][-1])


def _seed_tensorflow(seed: int, n_threads: int) -> None:
    configure_tensorflow(n_threads=n_threads)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _check_training(
    seed: int, epochs: int, batch_size: int, learning_rate: float, n_threads: int
) -> None:
    _check_int("seed", seed, 0)
    _check_int("epochs", epochs, 1)
    _check_int("batch_size", batch_size, 1)
    _check_positive("learning_rate", learning_rate)
    _check_int("n_threads", n_threads, 1)


def _binary_scores(
    probability: npt.NDArray[np.float32], targets: npt.NDArray[np.float32]
) -> dict[str, float]:
    """Precision, recall and accuracy of ``probability >= 0.5``."""
    predicted = probability >= 0.5
    truth = targets == 1
    hits = float(np.sum(predicted & truth))
    return {
        "precision": hits / max(1.0, float(predicted.sum())),
        "recall": hits / max(1.0, float(truth.sum())),
        "accuracy": float(np.mean(predicted == truth)),
    }


def _predict(
    model: keras.Model, inputs: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Model output on ``inputs``, computed in batches of bounded size."""
    outputs = [
        model(inputs[start : start + _PREDICT_BATCH]).numpy()
        for start in range(0, inputs.shape[0], _PREDICT_BATCH)
    ]
    return np.concatenate(outputs)


def train_detector(
    windows: npt.NDArray[np.float32],
    targets: npt.NDArray[np.float32],
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    learning_rate: float = 3e-3,
    temporal_samples: int = 15,
    n_temporal_filters: int = 8,
    n_mixed_filters: int = 4,
    positive_weight: float = 1.0,
    validation_fraction: float = 0.2,
    n_threads: int = 2,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train a detector network on neighbourhood patches.

    Parameters
    ----------
    windows : ndarray of float32, shape (n_windows, n_samples, K)
        Patches on the K neighbours of a centre channel
        (:func:`shardsort.nn.augment.make_detector_training_set`).
    targets : ndarray of float32, shape (n_windows, n_samples)
        1 where the centre channel has a spike trough (+-1 sample), else 0.
    seed : int
        Seed (>= 0) of initialisation, validation split and batch order.
    epochs, batch_size : int
        Passes over the training examples and examples per step (>= 1).
    learning_rate : float
        Adam step size (> 0).
    temporal_samples, n_temporal_filters, n_mixed_filters : int
        Architecture, see :func:`shardsort.nn.detector.build_detector`.
    positive_weight : float
        Weight of target-1 values in the logistic loss (> 0).
    validation_fraction : float
        Fraction of the windows held out for the metrics, in [0, 1).
    n_threads : int
        TensorFlow CPU threads (see :func:`shardsort.nn.configure_tensorflow`).

    Returns
    -------
    model : keras.Model
        The trained detector.
    metrics : dict
        ``train_loss`` (last epoch), ``n_train``, ``n_validation`` and, with a
        validation set, ``validation_precision``, ``validation_recall`` and
        ``validation_accuracy`` of ``probability >= 0.5`` per sample.
    """
    inputs, outputs = _check_examples(
        "windows", windows, "targets", targets, 3, lambda shape: shape[:2]
    )
    _check_training(seed, epochs, batch_size, learning_rate, n_threads)
    _check_positive("positive_weight", positive_weight)
    train, validation = _split(inputs.shape[0], validation_fraction, seed)
    _seed_tensorflow(seed, n_threads)
    model = nn_detector.build_detector(
        n_neighbours=inputs.shape[2],
        temporal_samples=temporal_samples,
        n_temporal_filters=n_temporal_filters,
        n_mixed_filters=n_mixed_filters,
    )
    loss = _fit(
        model,
        inputs[train],
        outputs[train],
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        positive_weight=positive_weight,
    )
    metrics: dict[str, Any] = {
        "train_loss": loss,
        "n_train": int(train.size),
        "n_validation": int(validation.size),
    }
    if validation.size:
        probability = _predict(model, inputs[validation])
        scores = _binary_scores(probability, outputs[validation])
        metrics.update({f"validation_{k}": v for k, v in scores.items()})
    return model, metrics


def train_triage(
    snippets: npt.NDArray[np.float32],
    labels: npt.NDArray[np.float32],
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    learning_rate: float = 1e-3,
    temporal_samples: int = 9,
    n_temporal_filters: int = 8,
    n_mixed_filters: int = 4,
    n_hidden: int = 32,
    validation_fraction: float = 0.2,
    n_threads: int = 2,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train a triage network on clean (1) and collided (0) snippets.

    Parameters
    ----------
    snippets : ndarray of float32, shape (n_snippets, n_times, K)
        Snippets (:func:`shardsort.nn.augment.make_triage_training_set`).
    labels : ndarray of float32, shape (n_snippets,)
        1 for clean, 0 for collided.
    seed, epochs, batch_size, learning_rate, validation_fraction, n_threads
        As in :func:`train_detector`.
    temporal_samples, n_temporal_filters, n_mixed_filters, n_hidden : int
        Architecture, see :func:`shardsort.nn.triage.build_triage`.

    Returns
    -------
    model : keras.Model
        The trained triage network.
    metrics : dict
        ``train_loss``, ``n_train``, ``n_validation`` and, with a validation
        set, ``validation_accuracy``, ``validation_precision`` and
        ``validation_recall`` (of "clean") at probability 0.5.
    """
    inputs, outputs = _check_examples(
        "snippets", snippets, "labels", labels, 3, lambda shape: shape[:1]
    )
    _check_training(seed, epochs, batch_size, learning_rate, n_threads)
    train, validation = _split(inputs.shape[0], validation_fraction, seed)
    _seed_tensorflow(seed, n_threads)
    model = nn_triage.build_triage(
        snippet_samples=inputs.shape[1],
        n_neighbours=inputs.shape[2],
        temporal_samples=temporal_samples,
        n_temporal_filters=n_temporal_filters,
        n_mixed_filters=n_mixed_filters,
        n_hidden=n_hidden,
    )
    loss = _fit(
        model,
        inputs[train],
        outputs[train, None],
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        positive_weight=1.0,
    )
    metrics: dict[str, Any] = {
        "train_loss": loss,
        "n_train": int(train.size),
        "n_validation": int(validation.size),
    }
    if validation.size:
        probability = nn_triage.triage_spikes(inputs[validation], model)
        scores = _binary_scores(probability, outputs[validation])
        metrics.update({f"validation_{k}": v for k, v in scores.items()})
    return model, metrics


# ---------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------


def _architecture(model: keras.Model) -> dict[str, Any]:
    """Kind and hyper-parameters of a detector or triage model."""
    temporal = model.get_layer("temporal")
    common = {
        "temporal_samples": int(temporal.kernel_size[0]),
        "n_temporal_filters": int(temporal.filters),
        "n_mixed_filters": int(model.get_layer("mixing").filters),
    }
    if model.name == nn_detector.MODEL_NAME:
        return {
            "kind": "detector",
            "n_neighbours": nn_detector.detector_n_neighbours(model),
            "receptive_field_samples": int(temporal.kernel_size[0]),
            **common,
        }
    if model.name == nn_triage.MODEL_NAME:
        _, n_times, n_neighbours = model.input_shape
        return {
            "kind": "triage",
            "n_neighbours": int(n_neighbours),
            "snippet_samples": int(n_times),
            "n_hidden": int(model.get_layer("hidden").units),
            **common,
        }
    raise ValueError(
        f"model must be a detector ({nn_detector.MODEL_NAME!r}) or triage "
        f"({nn_triage.MODEL_NAME!r}) network, got {model.name!r}"
    )


def _plain(value: Any) -> Any:
    """``value`` with numpy arrays and scalars turned into Python lists/numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_model(
    path_dir: str | os.PathLike, model: keras.Model, sidecar: dict[str, Any]
) -> None:
    """Save a model and its YAML sidecar into a folder.

    Parameters
    ----------
    path_dir : str or PathLike
        Folder to write (created if needed): ``model.keras`` and
        ``model.yaml``; existing files of those names are replaced.
    model : keras.Model
        Detector or triage network.
    sidecar : dict
        Facts about the training, numpy values allowed. Must hold
        ``sampling_rate_hz`` (> 0); a triage model also ``pre_samples``
        (the trough index of its snippets). Recommended:
        ``neighbour_offsets_um`` (:func:`shardsort.nn.detector.neighbour_offsets_um`),
        ``window_samples``, ``metrics``, ``seed``. The kind, the
        architecture (``n_neighbours`` included), the Keras file name and
        the TensorFlow / Keras versions are added from the model and
        override entries of the same name.

    Raises
    ------
    ValueError
        If the model is neither kind or a required sidecar entry is missing
        or invalid.
    """
    architecture = _architecture(model)
    if "sampling_rate_hz" not in sidecar:
        raise ValueError("sidecar must hold 'sampling_rate_hz', got no such key")
    _check_positive("sidecar['sampling_rate_hz']", sidecar["sampling_rate_hz"])
    if architecture["kind"] == "triage":
        if "pre_samples" not in sidecar:
            raise ValueError(
                "sidecar of a triage model must hold 'pre_samples', got no such key"
            )
        _check_int("sidecar['pre_samples']", sidecar["pre_samples"], 0)
        if sidecar["pre_samples"] >= architecture["snippet_samples"]:
            raise ValueError(
                "sidecar['pre_samples'] must be < snippet_samples="
                f"{architecture['snippet_samples']}, got {sidecar['pre_samples']}"
            )
    content = _plain(
        {
            **sidecar,
            "kind": architecture.pop("kind"),
            "n_neighbours": architecture["n_neighbours"],
            "architecture": architecture,
            "keras_file": MODEL_FILE,
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
        }
    )
    folder = Path(path_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # Keras insists on the .keras suffix, so the temporary name keeps it.
    partial_model = folder / f".{MODEL_FILE}.partial.keras"
    model.save(partial_model)
    os.replace(partial_model, folder / MODEL_FILE)
    partial_sidecar = folder / f".{SIDECAR_FILE}.partial"
    partial_sidecar.write_text(yaml.safe_dump(content, sort_keys=False))
    os.replace(partial_sidecar, folder / SIDECAR_FILE)


def load_model(
    path_dir: str | os.PathLike,
    *,
    expected_sampling_rate_hz: float | None = None,
    expected_n_neighbours: int | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Load a model saved by :func:`save_model` and check it fits the data.

    Parameters
    ----------
    path_dir : str or PathLike
        Model folder.
    expected_sampling_rate_hz : float, optional
        The recording's sampling rate; must agree with the model's within
        :data:`SAMPLING_RATE_RTOL` (relative).
    expected_n_neighbours : int, optional
        K of the recording's neighbour table; must equal the model's.

    Returns
    -------
    model : keras.Model
        The network (not compiled).
    sidecar : dict
        The parsed sidecar.

    Raises
    ------
    FileNotFoundError
        If the folder lacks the sidecar or the Keras file.
    ValueError
        If the sampling rate or the neighbourhood size does not fit; the
        message names the sidecar file, the parameter, the model's value and
        the recording's value.
    """
    folder = Path(path_dir)
    sidecar = read_sidecar(folder)
    check_model_fits(
        sidecar,
        source=folder / SIDECAR_FILE,
        sampling_rate_hz=expected_sampling_rate_hz,
        n_neighbours=expected_n_neighbours,
    )
    model_path = folder / sidecar.get("keras_file", MODEL_FILE)
    limit_threads_by_default()
    model = keras.saving.load_model(model_path, compile=False)
    return model, sidecar
