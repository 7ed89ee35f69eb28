"""Matches pure noise gives a template (noise_lag_correlation, expected_noise_matches)."""

import numpy as np
import pytest
from scipy.signal import fftconvolve, sosfiltfilt, butter

from shardsort.curation import expected_noise_matches, select_units
from shardsort.templates import noise_lag_correlation, sample_noise_windows


def _template(n_times=40, n_channels=4):
    t = np.arange(n_times)[:, None] - 15.0
    gains = np.array([1.0, 0.6, 0.3, 0.1])[:n_channels]
    return (-np.exp(-0.5 * (t / 2.5) ** 2) + 0.3 * np.exp(-0.5 * ((t - 8) / 5.0) ** 2)) * gains


@pytest.mark.parametrize("band_limited", [False, True])
def test_rice_formula_predicts_the_up_crossings_of_a_template_score_on_noise(band_limited):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((400_000, 4))
    if band_limited:
        noise = sosfiltfilt(butter(3, [0.02, 0.4], btype="band", output="sos"), noise, axis=0)
        noise /= noise.std(axis=0)
    w = _template()
    windows = sample_noise_windows(noise, n_windows=2000, window_samples=40, threshold=None, seed=1)
    rho = noise_lag_correlation(w[None], windows)[0]
    # The score at every onset: sum over channels of the correlation with w.
    score = sum(fftconvolve(noise[:, c], w[::-1, c], mode="valid") for c in range(4))
    z = (score - score.mean()) / score.std()
    for theta in (9.0, 12.0):
        u = np.sqrt(theta)
        observed = int(((z[1:] >= u) & (z[:-1] < u)).sum())
        expected = expected_noise_matches([theta], [rho], n_samples=len(z))[0]
        assert observed == pytest.approx(expected, rel=0.2), (theta, observed, expected)


def test_a_smoother_score_crosses_less_often():
    rho = np.array([0.5, 0.9, 0.99])
    counts = expected_noise_matches(np.full(3, 16.0), rho, n_samples=30000)
    assert np.all(np.diff(counts) < 0)
    # And a higher threshold, far less often.
    assert expected_noise_matches([25.0], [0.9], n_samples=30000)[0] < 0.02 * counts[1]


def test_units_with_most_spikes_expected_from_noise_are_removed():
    units = np.repeat([0, 1], [100, 100])
    amps = np.ones(200)
    selection = select_units(
        units, amps, n_units=2, duration_s=10.0,
        expected_noise=np.array([30.0, 70.0]), max_noise_fraction=0.5,
    )
    assert selection.alive.tolist() == [True, False]
    assert "expected from noise alone" in selection.reasons[1]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="lag_correlation must lie"):
        expected_noise_matches([16.0], [1.0], n_samples=10)
    with pytest.raises(ValueError, match="expected_noise must have shape"):
        select_units([0], [1.0], n_units=1, duration_s=1.0, expected_noise=[1.0, 2.0])
