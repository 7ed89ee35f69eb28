"""Train the default detector and triage models shipped with shardsort.

Run ``python -m shardsort.nn.make_default [--out-dir DIR] [--n-threads N]``.

The training data are synthetic (:mod:`shardsort.synth`): a Neuropixels-like
probe at 30 kHz, preprocessed the way the workflow's default configuration
does it (zero-phase 300-6000 Hz band-pass, global median reference, unit-noise
scaling, no whitening: ``preprocess.whiten: false``), with noise statistics
from a spike-free rendering of the same probe and templates of many synthetic
units passed through the same preprocessing. The sidecars record that
preprocessing; the workflow refuses the models for a recording at another
rate, of another probe pitch or with whitening on. For anything else, train
models on the recording itself (``detect.nn_model: trained``: the
``train_detector`` / ``train_triage`` rules).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import signal

from shardsort import synth
from shardsort.nn import DEFAULT_MODELS_DIR, augment, configure_tensorflow, training
from shardsort.nn import detector as nn_detector
from shardsort.preprocess import (
    common_reference,
    design_bandpass,
    local_whitening_matrix,
    robust_noise_scale,
)

SAMPLING_RATE_HZ = 30000.0
N_CHANNELS = 32
N_NEIGHBOURS = 7
FREQ_MIN_HZ, FREQ_MAX_HZ, FILTER_ORDER = 300.0, 6000.0, 3
REFERENCE = "global"
WHITEN = False
WHITENING_RADIUS_UM = 100.0
NOISE_SECONDS = 4.0
NOISE_LAGS = 12
N_UNITS = 64
SNR_RANGE = (5.0, 20.0)
SEED = 20240601

DETECTOR_WINDOWS, DETECTOR_WINDOW_SAMPLES = 30000, 64
TRIAGE_SNIPPETS = 20000
EPOCHS, BATCH_SIZE = 15, 128
# As the workflow's defaults (config/config.yaml, nn section).
AMPLITUDE_RANGE = (0.8, 1.5)
POSITIVE_WEIGHT = 4.0


def preprocessed_training_material(
    *, seed: int
) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32], int, npt.NDArray[np.float64]
]:
    """Spike-free preprocessed noise and preprocessed templates.

    Parameters
    ----------
    seed : int
        Root seed of the synthetic recording.

    Returns
    -------
    noise : ndarray of float32, shape (n_samples, n_channels)
        Preprocessed traces without spikes.
    templates : ndarray of float32, shape (n_units, n_times, n_channels)
        Preprocessed templates, each cut so that its trough on its main
        channel is at ``pre_samples``.
    pre_samples : int
        Trough index of the templates.
    positions_um : ndarray, shape (n_channels, 2)
        Channel positions.
    """
    params = synth.SynthParams(
        n_channels=N_CHANNELS,
        duration_s=NOISE_SECONDS,
        sampling_rate_hz=SAMPLING_RATE_HZ,
        n_units=N_UNITS,
        seed=seed,
        snr_min=SNR_RANGE[0],
        snr_max=SNR_RANGE[1],
    )
    positions = synth.neuropixels_like_geometry(N_CHANNELS)
    units = synth.generate_units(params)
    raw_noise = synth.render_samples(
        params=params,
        templates_uv=units["templates_uv"],
        spike_sample_index=np.zeros(0, np.int64),
        spike_unit_index=np.zeros(0, np.int32),
        start_sample=0,
        stop_sample=params.n_samples,
    ).astype(np.float32) * np.float32(params.gain_to_uv)

    sos = design_bandpass(
        sampling_rate_hz=SAMPLING_RATE_HZ,
        freq_min_hz=FREQ_MIN_HZ,
        freq_max_hz=FREQ_MAX_HZ,
        order=FILTER_ORDER,
    )
    filtered = common_reference(
        signal.sosfiltfilt(sos, raw_noise, axis=0), mode=REFERENCE
    )
    scales = robust_noise_scale(filtered)
    scaled = filtered / scales
    if WHITEN:
        whitening = local_whitening_matrix(
            scaled.T @ scaled / scaled.shape[0],
            positions,
            radius_um=WHITENING_RADIUS_UM,
        ).astype(np.float64)
    else:
        whitening = np.eye(N_CHANNELS)
    noise = (scaled @ whitening.T).astype(np.float32)

    # Templates go through the same steps, padded so the filter's response is
    # not cut, then are re-cut around their new trough.
    pre, n_times = params.trough_index, params.template_samples
    pad = 4 * n_times
    padded = np.pad(units["templates_uv"], ((0, 0), (pad, pad), (0, 0)))
    filtered_templates = signal.sosfiltfilt(sos, padded, axis=1)
    referenced = np.stack(
        [common_reference(t, mode=REFERENCE) for t in filtered_templates]
    )
    processed = referenced / scales @ whitening.T
    main = processed.min(axis=1).argmin(axis=1)
    trough = processed[np.arange(N_UNITS), :, main].argmin(axis=1)
    cut = trough[:, None] - pre + np.arange(n_times)
    templates = processed[np.arange(N_UNITS)[:, None], cut]
    return noise, templates.astype(np.float32), pre, positions


def main(argv: list[str] | None = None) -> None:
    """Train both default models and write them under ``--out-dir``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--n-threads", type=int, default=2)
    args = parser.parse_args(argv)
    configure_tensorflow(n_threads=args.n_threads)

    noise, templates, pre, positions = preprocessed_training_material(seed=SEED)
    noise_model = augment.estimate_noise_model(noise, n_lags=NOISE_LAGS)
    neighbours = nn_detector.neighbour_table(positions, n_neighbours=N_NEIGHBOURS)
    whitening = f"local whitening ({WHITENING_RADIUS_UM:g} um)" if WHITEN else "no whitening"
    common = {
        "sampling_rate_hz": SAMPLING_RATE_HZ,
        "neighbour_offsets_um": nn_detector.neighbour_offsets_um(positions, neighbours),
        "seed": SEED,
        "preprocessing": {"whiten": WHITEN, "reference": REFERENCE},
        "training_data": (
            f"shardsort.synth: {N_CHANNELS}-channel Neuropixels-like probe, "
            f"{N_UNITS} units of SNR {SNR_RANGE[0]:g}-{SNR_RANGE[1]:g}, band-pass "
            f"{FREQ_MIN_HZ:g}-{FREQ_MAX_HZ:g} Hz, {REFERENCE} median reference, "
            f"unit noise, {whitening}; amplitudes x{AMPLITUDE_RANGE[0]:g}-"
            f"{AMPLITUDE_RANGE[1]:g}"
        ),
    }

    windows, targets = augment.make_detector_training_set(
        templates,
        noise_model,
        neighbours,
        pre_samples=pre,
        n_windows=DETECTOR_WINDOWS,
        window_samples=DETECTOR_WINDOW_SAMPLES,
        seed=SEED + 1,
        amplitude_range=AMPLITUDE_RANGE,
    )
    model, metrics = training.train_detector(
        windows,
        targets,
        seed=SEED,
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        positive_weight=POSITIVE_WEIGHT,
        n_threads=args.n_threads,
    )
    training.save_model(
        args.out_dir / "detector",
        model,
        {**common, "window_samples": DETECTOR_WINDOW_SAMPLES, "metrics": metrics},
    )

    snippets, labels = augment.make_triage_training_set(
        templates,
        noise_model,
        neighbours,
        pre_samples=pre,
        n_snippets=TRIAGE_SNIPPETS,
        seed=SEED + 2,
        amplitude_range=AMPLITUDE_RANGE,
    )
    model, metrics = training.train_triage(
        snippets,
        labels,
        seed=SEED,
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        n_threads=args.n_threads,
    )
    training.save_model(
        args.out_dir / "triage",
        model,
        {**common, "pre_samples": pre, "metrics": metrics},
    )


if __name__ == "__main__":
    main()
