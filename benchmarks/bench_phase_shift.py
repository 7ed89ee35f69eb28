"""Neuropixels inter-sample shift: common noise left after the median reference.

A Neuropixels 1.0 probe (384 channels, bank 0) samples channel ``c`` at
``(n + s_c) / fs``, ``s_c`` from its ADC slot (probeinterface, through
shardsort's SpikeGLX reader of a generated ``.meta``). The synthetic recording
holds a large common-mode signal (band-limited noise, 300-6000 Hz, shared by
all channels, each seeing it at its own sampling instant) plus independent
noise per channel. The filter job's kernel (:func:`shardsort.phase.
bandpass_and_align`) runs with and without the shifts, then the global
common median reference (:func:`shardsort.preprocess.common_reference`).

Reported (``phase_shift`` table, ``phase_shift.csv``/``.json``, PNG):

* ``common_residual``: rms after the reference / rms before it, of the
  common-mode signal alone (same pipeline on a recording without the
  independent noise): 0 = removed exactly.
* ``total_over_independent``: rms after the reference of the full recording /
  rms of the filtered independent noise: 1.0 = only the independent noise is
  left (within ~1 %: the median of 384 noisy channels barely changes it).
* per frequency of a common-mode sinusoid (the PNG): the residual grows with
  frequency without the correction (``2 pi f s / fs`` of the amplitude).

Run alone (``python benchmarks/bench_phase_shift.py``, ~20 s) or as the
``phase_shift`` section of ``run_all.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib import Table  # noqa: E402

from shardsort.io.spikeglx import spikeglx_fields  # noqa: E402
from shardsort.phase import PHASE_HALF_WIDTH, bandpass_and_align  # noqa: E402
from shardsort.preprocess import (  # noqa: E402
    common_reference,
    design_bandpass,
    filter_margin_samples,
)

FS = 30000.0
N_CHANNELS = 384
COMMON_UV = 50.0  # rms of the common-mode signal
INDEPENDENT_UV = 10.0  # rms of each channel's own noise
FREQUENCIES_HZ = (300.0, 600.0, 1000.0, 2000.0, 3000.0, 4500.0, 6000.0)


def np1_sample_shifts() -> np.ndarray:
    """Sample shifts of an NP 1.0 probe as shardsort reads them from SpikeGLX."""
    with tempfile.TemporaryDirectory() as folder:
        bin_path = Path(folder) / "np1_g0_t0.imec0.ap.bin"
        bin_path.write_bytes(np.zeros((2, N_CHANNELS + 1), np.int16).tobytes())
        imro = "(0,384)" + "".join(f"({c} 0 0 500 250 1)" for c in range(N_CHANNELS))
        meta = {
            "typeThis": "imec",
            "imSampRate": "30000",
            "nSavedChans": str(N_CHANNELS + 1),
            "snsApLfSy": f"{N_CHANNELS},0,1",
            "snsSaveChanSubset": "all",
            "imAiRangeMax": "0.6",
            "imMaxInt": "512",
            "imDatPrb_pn": "NP1000",
            "imDatPrb_type": "0",
            "fileSizeBytes": str(bin_path.stat().st_size),
            "~imroTbl": imro,
        }
        bin_path.with_suffix(".meta").write_text(
            "".join(f"{k}={v}\n" for k, v in meta.items())
        )
        return np.asarray(spikeglx_fields(bin_path).sample_shifts, dtype=np.float64)


def late_sampled(common_spectrum: np.ndarray, n: int, shifts: np.ndarray) -> np.ndarray:
    """Each channel's samples of the common signal, taken ``shifts`` periods late."""
    freqs = np.fft.rfftfreq(n, d=1 / FS)
    out = np.empty((n, shifts.size), np.float32)
    for first in range(0, shifts.size, 64):
        block = shifts[first : first + 64]
        late = np.exp(2j * np.pi * freqs[:, None] * block[None, :] / FS)
        out[:, first : first + 64] = np.fft.irfft(
            common_spectrum[:, None] * late, n=n, axis=0
        )
    return out


def band_limited_spectrum(n: int, rms: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    freqs = np.fft.rfftfreq(n, d=1 / FS)
    spectrum = rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size)
    spectrum[(freqs < 300.0) | (freqs > 6000.0)] = 0
    return spectrum * rms / np.fft.irfft(spectrum, n=n).std()


def filter_and_reference(raw, sos, shifts):
    """The filter job's kernel on the whole recording, then the global median."""
    filtered = bandpass_and_align(
        raw,
        sos=sos,
        sample_shifts=shifts,
        core_start=0,
        core_stop=raw.shape[0],
        at_recording_start=True,
        at_recording_end=True,
    )
    return filtered, common_reference(filtered, mode="global")


def rms(x: np.ndarray, edge: int) -> float:
    core = x[edge:-edge]
    return float(np.sqrt(np.mean(np.square(core, dtype=np.float64))))


def measure(duration_s: float = 2.0, seed: int = 0) -> dict:
    shifts = np1_sample_shifts()
    sos = design_bandpass(
        sampling_rate_hz=FS, freq_min_hz=300.0, freq_max_hz=6000.0, order=3
    )
    edge = filter_margin_samples(sos) + PHASE_HALF_WIDTH  # recording-edge effects
    n = int(duration_s * FS)
    common = late_sampled(band_limited_spectrum(n, COMMON_UV, seed), n, shifts)
    independent = np.random.default_rng(seed + 1).normal(
        0.0, INDEPENDENT_UV, (n, N_CHANNELS)
    ).astype(np.float32)
    independent_filtered, _ = filter_and_reference(independent, sos, None)
    independent_rms = rms(independent_filtered, edge)

    rows = []
    for label, correction in (("off", None), ("on", shifts)):
        before, after = filter_and_reference(common, sos, correction)
        _, full_after = filter_and_reference(common + independent, sos, correction)
        rows.append(
            {
                "phase_shift": label,
                "common_rms_uv": rms(before, edge),
                "common_after_reference_uv": rms(after, edge),
                "common_residual": rms(after, edge) / rms(before, edge),
                "total_after_reference_uv": rms(full_after, edge),
                "independent_rms_uv": independent_rms,
                "total_over_independent": rms(full_after, edge) / independent_rms,
            }
        )

    # Common-mode sinusoids: residual versus frequency.
    n_tone = int(0.5 * FS)
    t = np.arange(n_tone)[:, None]
    tones = []
    for frequency in FREQUENCIES_HZ:
        row = {"frequency_hz": frequency}
        late = (COMMON_UV * np.sqrt(2)) * np.sin(
            2 * np.pi * frequency * (t + shifts[None, :]) / FS
        )
        for label, correction in (("off", None), ("on", shifts)):
            before, after = filter_and_reference(late.astype(np.float32), sos, correction)
            row[f"residual_{label}"] = rms(after, edge) / rms(before, edge)
        tones.append(row)
    return {
        "rows": rows,
        "tones": tones,
        "n_adc_slots": int(np.unique(shifts).size),
        "max_shift_samples": float(shifts.max()),
        "duration_s": duration_s,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tones = result["tones"]
    freqs = [r["frequency_hz"] for r in tones]
    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=110)
    for label, style in (("off", "o-"), ("on", "s-")):
        ax.loglog(
            freqs,
            [max(r[f"residual_{label}"], 1e-6) for r in tones],
            style,
            label=f"phase shift {label}",
        )
    noise = {r["phase_shift"]: r["common_residual"] for r in result["rows"]}
    ax.set_xlabel("common-mode frequency (Hz)")
    ax.set_ylabel("rms after / before median reference")
    ax.set_title(
        "NP 1.0, 384 ch: common noise left by the reference\n"
        f"band-limited noise: {noise['off']:.3f} off, {noise['on']:.1e} on",
        fontsize=9,
    )
    ax.set_xticks(freqs, [f"{f:g}" for f in freqs], fontsize=7)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def tables(result: dict) -> list[Table]:
    return [
        Table(
            "phase_shift",
            "Neuropixels inter-sample shift: common noise after the median reference",
            result["rows"],
            note=(
                f"Synthetic NP 1.0 recording, {N_CHANNELS} channels, "
                f"{result['duration_s']:g} s at 30 kHz: common-mode noise "
                f"(300-6000 Hz, {COMMON_UV:g} uV rms) seen by each channel at its "
                f"ADC sampling instant ({result['n_adc_slots']} slots, up to "
                f"{result['max_shift_samples']:.3f} sample late), plus "
                f"{INDEPENDENT_UV:g} uV rms independent noise per channel; band-pass "
                "(300-6000 Hz) with and without the shift correction, then the "
                "global median reference. common_residual: rms of the common-mode "
                "signal after / before the reference; total_over_independent: rms "
                "after the reference / filtered independent noise (1.0 = only that "
                "is left)."
            ),
        ),
        Table(
            "phase_shift_tones",
            "Common-mode sinusoid left after the median reference, by frequency",
            result["tones"],
            note="rms after / before the global median reference (phase_shift.png).",
        ),
    ]


def run(ctx) -> list[Table]:
    """``run_all.py`` section ``phase_shift`` (writes phase_shift.png too)."""
    start = time.perf_counter()
    result = measure(duration_s=1.0 if ctx.quick else 2.0)
    ctx.results.mkdir(parents=True, exist_ok=True)
    plot(result, ctx.results / "phase_shift.png")
    ctx.log(f"phase_shift: measured in {time.perf_counter() - start:.0f} s")
    return tables(result)


def main(argv: list[str] | None = None) -> int:
    """Standalone: the ``phase_shift`` section of ``run_all.py`` (same options)."""
    import run_all

    return run_all.main(["--only", "phase_shift", *(argv or [])])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
