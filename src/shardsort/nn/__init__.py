"""YASS-style neural networks: spike detector and collision triage.

Modules
-------
augment
    Noise model and training examples synthesised from templates (numpy).
detector
    Detector network, its margin, and detection on a chunk.
triage
    Collision triage network and its scoring of snippets.
training
    Seeded training, and saving / loading a model with its YAML sidecar.
make_default
    Script that trains the default models shipped in ``models/``.

TensorFlow runs with at most :data:`DEFAULT_THREADS` CPU threads unless
:func:`configure_tensorflow` is called first, before any other TensorFlow
work in the process. A GPU is used automatically when TensorFlow sees one.
"""

from __future__ import annotations

from pathlib import Path

#: Threads of TensorFlow's CPU pools when the caller does not choose.
DEFAULT_THREADS = 2

#: Folder of the shipped default models (``detector/`` and ``triage/``).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "models"


def configure_tensorflow(*, n_threads: int) -> None:
    """Set the number of CPU threads TensorFlow may use.

    Parameters
    ----------
    n_threads : int
        Threads of both the intra-op and inter-op pools (>= 1).

    Raises
    ------
    ValueError
        If ``n_threads`` is not an integer >= 1.
    RuntimeError
        If TensorFlow already started with another thread count (the pools
        are fixed once the first operation runs).
    """
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"n_threads must be an integer >= 1, got {n_threads!r}")
    import tensorflow as tf

    threading = tf.config.threading
    current = threading.get_intra_op_parallelism_threads()
    if (
        current == n_threads
        and threading.get_inter_op_parallelism_threads() == n_threads
    ):
        return
    try:
        threading.set_intra_op_parallelism_threads(n_threads)
        threading.set_inter_op_parallelism_threads(n_threads)
    except RuntimeError as error:
        raise RuntimeError(
            f"TensorFlow already runs with intra-op threads={current} (0: all "
            f"cores); call configure_tensorflow(n_threads={n_threads}) before any "
            "other TensorFlow work in the process"
        ) from error


def limit_threads_by_default() -> None:
    """Apply :data:`DEFAULT_THREADS` unless the thread count is already set.

    Called by every function of this package that runs TensorFlow. If
    TensorFlow was started elsewhere without a thread count, it is left as
    it is.
    """
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() == 0:
        try:
            configure_tensorflow(n_threads=DEFAULT_THREADS)
        except RuntimeError:
            return
