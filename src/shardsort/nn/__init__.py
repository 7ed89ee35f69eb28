"""YASS-style neural networks: spike detector and collision triage.

Modules
-------
modelinfo
    Model sidecars and neighbour tables, checked without TensorFlow.
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
work in the process. A GPU is used automatically when TensorFlow sees one,
except in workflow jobs, which call :func:`configure_job` first.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Threads of TensorFlow's CPU pools when the caller does not choose.
DEFAULT_THREADS = 2

#: Folder of the shipped default models (``detector/`` and ``triage/``).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "models"

#: TensorFlow threads of a workflow job. Fixed, because the thread count may
#: change the order of floating-point sums, and results must not depend on
#: ``--cores``.
JOB_THREADS = 1

#: Memory (MB) that importing TensorFlow and loading the networks adds to a
#: job (measured about 630 MB of resident memory, numpy work included).
TENSORFLOW_JOB_MB = 600


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


def configure_job() -> None:
    """TensorFlow settings of a workflow job; call before any TensorFlow work.

    CPU only (so a job gives the same answer on any machine), at most
    :data:`JOB_THREADS` threads, deterministic kernels
    (``enable_op_determinism``), and TensorFlow's C++ information messages
    off (warnings and errors still reach the job's log).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised: leave them
        pass
    configure_tensorflow(n_threads=JOB_THREADS)
    tf.config.experimental.enable_op_determinism()
