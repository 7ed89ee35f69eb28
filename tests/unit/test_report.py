"""Figures and tables of the HTML report (shardsort.report)."""

from __future__ import annotations

import io

import matplotlib.image
import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from shardsort import report
from shardsort.tables import SPIKE_DTYPE

RATE = 30_000.0


def spikes_of(samples, units, amplitudes=None):
    table = np.zeros(len(samples), dtype=SPIKE_DTYPE)
    table["sample_index"] = samples
    table["unit_index"] = units
    table["amplitude"] = 1.0 if amplitudes is None else amplitudes
    return table


def texts(fig):
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def collections(fig, kind):
    return [c for ax in fig.axes for c in ax.collections if type(c) is kind]


def png_pixels(fig, tmp_path, name="fig.png"):
    path = tmp_path / name
    report.save_figure(fig, path)
    return matplotlib.image.imread(path)


def test_unit_colors_are_fixed_per_unit_and_differ_between_neighbours():
    colours = report.unit_colors([0, 1, 2, 1])
    assert colours.shape == (4, 4)
    assert np.array_equal(colours[1], colours[3])
    assert np.array_equal(report.unit_colors([2])[0], colours[2])
    assert np.abs(colours[0, :3] - colours[1, :3]).max() > 0.2
    assert np.all((colours >= 0) & (colours <= 1))


def test_page_slices_cover_every_unit_once():
    pages = report.page_slices(85, units_per_page=40)
    assert [(p.start, p.stop) for p in pages] == [(0, 40), (40, 80), (80, 85)]
    assert [(p.start, p.stop) for p in report.page_slices(0)] == [(0, 0)]
    with pytest.raises(ValueError, match="units_per_page must be an integer >= 1, got 0"):
        report.page_slices(3, units_per_page=0)


def test_isi_histograms_count_planted_intervals():
    # unit 0: intervals 1 ms, 2 ms, 97 ms (outside the window); unit 1: 10.5 ms.
    # Unit 2's spike between unit 0's must not cut unit 0's intervals.
    spikes = spikes_of([3000, 0, 30, 90, 1000, 1315, 45], [0, 0, 0, 0, 1, 1, 2])
    counts, edges = report.isi_histograms(spikes, n_units=3, sampling_rate_hz=RATE,
                                          window_ms=50.0, bin_ms=1.0)
    assert counts.shape == (3, 50) and counts.dtype == np.int64
    assert np.array_equal(edges, np.arange(51.0))
    assert np.flatnonzero(counts[0]).tolist() == [1, 2] and counts[0].sum() == 2
    assert np.flatnonzero(counts[1]).tolist() == [10] and counts[1].sum() == 1
    assert counts[2].sum() == 0


def test_autocorrelograms_count_every_pair_once_per_direction():
    # unit 0 at 0, 1, 2 ms: lags 1 ms (twice) and 2 ms (once), each way.
    spikes = spikes_of([0, 30, 60, 15, 45], [0, 0, 0, 1, 1])
    counts, edges = report.autocorrelograms(spikes, n_units=2, sampling_rate_hz=RATE,
                                            window_ms=5.0, bin_ms=1.0)
    assert np.array_equal(edges, np.arange(-5.0, 6.0))
    assert counts[0].tolist() == [0, 0, 1, 2, 0, 0, 2, 1, 0, 0]
    assert counts[1].tolist() == [0, 0, 0, 1, 0, 0, 1, 0, 0, 0]


def test_autocorrelograms_match_all_pairs_on_random_trains():
    rng = np.random.default_rng(3)
    samples = np.sort(rng.integers(0, 60_000, 400))
    units = rng.integers(0, 4, 400)
    counts, _ = report.autocorrelograms(spikes_of(samples, units), n_units=4,
                                        sampling_rate_hz=RATE, window_ms=20.0, bin_ms=2.0)
    for u in range(4):
        t = samples[units == u]
        lag_ms = (t[None, :] - t[:, None]) / RATE * 1000.0  # t is sorted: >= 0 above the diagonal
        lags = lag_ms[np.triu(np.ones_like(lag_ms, dtype=bool), k=1)]
        later, _ = np.histogram(lags[lags < 20.0], bins=np.arange(0.0, 21.0, 2.0))
        assert np.array_equal(counts[u], np.concatenate([later[::-1], later])), u


def test_histograms_of_empty_sort_are_empty():
    counts, edges = report.isi_histograms(spikes_of([], []), n_units=0, sampling_rate_hz=RATE)
    assert counts.shape == (0, 50) and len(edges) == 51
    counts, _ = report.autocorrelograms(spikes_of([], []), n_units=2, sampling_rate_hz=RATE)
    assert counts.shape == (2, 100) and counts.sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_units": 1}, r"unit_index must lie in \[0, 1\) \(n_units=1\), got values in \[0, 1\]"),
        ({"n_units": 2, "sampling_rate_hz": 0.0}, "sampling_rate_hz must be a finite number > 0"),
        ({"n_units": 2, "window_ms": 10.0, "bin_ms": 3.0},
         "window_ms must be a whole number of bins of bin_ms=3.0, got 10.0"),
    ],
)
def test_histograms_reject_bad_arguments(kwargs, message):
    arguments = {"sampling_rate_hz": RATE, **kwargs}
    for function in (report.isi_histograms, report.autocorrelograms):
        with pytest.raises(ValueError, match=message):
            function(spikes_of([0, 10], [0, 1]), **arguments)


def test_waveforms_figure_draws_best_channels_of_every_unit(tmp_path):
    positions = np.array([[0, 0], [32, 0], [16, 20], [48, 20], [0, 40]], dtype=float)
    templates = np.zeros((3, 20, 5), dtype=np.float32)
    templates[:, 8, :] = -np.arange(1, 6)  # channel 4 largest, then 3, 2, 1
    fig = report.waveforms_figure(templates, positions, unit_index=[4, 5, 6], n_best_channels=4)
    (lines,) = collections(fig, LineCollection)
    assert len(lines.get_segments()) == 3 * 4
    assert all(len(segment) == 20 for segment in lines.get_segments())
    titles = [t for t in texts(fig) if t.startswith("u")]
    assert titles == ["u4  ptp 5σ", "u5  ptp 5σ", "u6  ptp 5σ"]
    assert png_pixels(fig, tmp_path).std() > 0.01


def test_waveforms_figure_draws_channels_nearest_the_peak_channel():
    positions = np.array([[0, 0], [32, 0], [16, 20], [48, 20], [0, 40]], dtype=float)
    templates = np.zeros((1, 20, 5))
    templates[0, 8, [4, 3]] = [-5.0, -4.0]  # channel 3 is large but far from peak channel 4
    fig = report.waveforms_figure(templates, positions, unit_index=[0], n_best_channels=2)
    peak, nearest = collections(fig, LineCollection)[0].get_segments()
    assert np.ptp(peak[:, 1]) > 0.3  # the trough of channel 4
    assert np.ptp(nearest[:, 1]) == 0  # channel 2 (flat), not channel 3


def test_waveforms_figure_of_no_units_says_so():
    fig = report.waveforms_figure(np.zeros((0, 20, 3)), np.zeros((3, 2)), unit_index=[])
    assert "no units" in texts(fig)
    assert not collections(fig, LineCollection)
    message = r"templates must have shape .* n_channels=3, got \(2, 20, 4\)"
    with pytest.raises(ValueError, match=message):
        report.waveforms_figure(np.zeros((2, 20, 4)), np.zeros((3, 2)), unit_index=[0, 1])


def test_histogram_grid_figure_one_polygon_per_unit(tmp_path):
    counts = np.array([[0, 3, 5, 1], [2, 0, 0, 4]])
    fig = report.histogram_grid_figure(counts, [-2.0, -1.0, 0.0, 1.0, 2.0], unit_index=[7, 9],
                                       title="Autocorrelograms", refractory_ms=1.0)
    shading, bars = [c for c in collections(fig, PolyCollection)][1:]
    assert len(bars.get_paths()) == 2 and len(shading.get_paths()) == 2
    assert "u7  n=9  max 5" in texts(fig) and "u9  n=6  max 4" in texts(fig)
    assert png_pixels(fig, tmp_path).std() > 0.01
    empty = report.histogram_grid_figure(np.zeros((0, 4)), np.arange(5.0), unit_index=[],
                                         title="ISI")
    assert "no units" in texts(empty)
    message = r"edges_ms shape \(n_bins \+ 1,\), got \(2, 4\) and \(4,\)"
    with pytest.raises(ValueError, match=message):
        report.histogram_grid_figure(counts, np.arange(4.0), unit_index=[7, 9], title="x")


def test_amplitudes_figure_subsamples_each_unit_evenly():
    samples = np.arange(0, 30_000, 10)  # 3000 spikes over one second
    units = np.where(samples < 3_000, 1, 0)  # unit 1: 300 spikes, unit 0: 2700
    spikes = spikes_of(samples, units, amplitudes=np.linspace(0.5, 1.5, len(samples)))
    fig = report.amplitudes_figure(spikes, [10.0, 20.0], unit_index=[0, 1],
                                   sampling_rate_hz=RATE, duration_s=1.0,
                                   max_spikes_per_unit=1000)
    (points,) = collections(fig, PathCollection)
    # unit 0: every 3rd of 2700 spikes -> 900; unit 1: all 300.
    assert len(points.get_offsets()) == 900 + 300
    titles = [t for t in texts(fig) if t.startswith("u")]
    assert titles == [f"u0  max {1.5 * 10:.0f}σ", f"u1  max {20 * (0.5 + 299 / 2999):.0f}σ"]
    page = report.amplitudes_figure(spikes, [10.0, 20.0], unit_index=[1], sampling_rate_hz=RATE,
                                    duration_s=1.0)
    assert len(collections(page, PathCollection)[0].get_offsets()) == 300
    empty = report.amplitudes_figure(spikes_of([], []), [], unit_index=[], sampling_rate_hz=RATE,
                                     duration_s=1.0)
    assert "no units" in texts(empty)
    with pytest.raises(ValueError, match=r"unit_index must lie in \[0, 2\)"):
        report.amplitudes_figure(spikes, [1.0, 1.0], unit_index=[2], sampling_rate_hz=RATE,
                                 duration_s=1.0)


def test_probe_map_marks_bad_channels_and_units(tmp_path):
    positions = np.array([[0, 0], [20, 0], [0, 20], [20, 20], [0, 40]], dtype=float)
    labels = np.array(["good", "dead", "good", "noisy", "good"])
    fig = report.probe_map_figure(positions, labels, [[5.0, 10.0], [15.0, 30.0]],
                                  unit_index=[0, 1], unit_amplitude=[10.0, 20.0])
    (ax,) = fig.axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["channel", "dead channel (1)", "noisy channel (1)",
                      "unit (area ~ amplitude)"]
    assert "5 channels (2 bad), 2 units" in texts(fig)
    sizes = ax.collections[-1].get_sizes()
    assert sizes[1] == pytest.approx(200.0) and sizes[0] == pytest.approx(110.0)
    assert png_pixels(fig, tmp_path).std() > 0.01
    empty = report.probe_map_figure(positions, labels, np.zeros((0, 2)), unit_index=[],
                                    unit_amplitude=[])
    assert "no units" in texts(empty)
    why = "No unit: no spike detected above threshold."
    explained = report.probe_map_figure(positions, labels, np.zeros((0, 2)), unit_index=[],
                                        unit_amplitude=[], no_units_note=why)
    assert any("no spike detected" in t for t in texts(explained))
    with pytest.raises(ValueError, match=r"channel_labels must have shape \(5,\), got \(4,\)"):
        report.probe_map_figure(positions, labels[:4], np.zeros((0, 2)), unit_index=[],
                                unit_amplitude=[])


def test_no_units_reason_names_the_stage_that_left_nothing():
    def why(**counts):
        args = dict(n_detected=100, n_clusters=3, n_templates=2, n_units=0,
                    cluster_dropped={})
        args.update(counts)
        return report.no_units_reason(**args)

    assert why(n_units=2) == ""
    assert why(n_detected=0, n_clusters=0, n_templates=0) == (
        "No unit: no spike detected above threshold.")
    assert "no cluster formed; all 100 detected spikes were triaged" in why(
        n_clusters=0, n_templates=0)
    dropped = {"too_small": [False, False, False], "too_spread": [True, True, False],
               "min_snr": [True, False, True]}
    assert why(n_templates=0, cluster_dropped=dropped) == (
        "No unit: no cluster passed the template tests; 3 dropped for too_spread (2), "
        "min_snr (2) (of 100 detected spikes).")
    assert "all 2 templates were removed after deconvolution" in why()
    with pytest.raises(ValueError, match=r"cluster_dropped\['min_snr'\] must have shape \(3,\)"):
        why(n_templates=0, cluster_dropped={"min_snr": [True]})
    with pytest.raises(ValueError, match="n_units must be an integer >= 0"):
        why(n_units=-1)


def test_nonfinite_note_sums_per_channel():
    assert report.nonfinite_note({}) == ""
    assert report.nonfinite_note({7: [2, 50], 5: [10, 1000]}) == (
        "12 NaN/inf raw samples replaced by 0 before filtering (channel 5: 10, the first at "
        "sample 1000; channel 7: 2, the first at sample 50).")


def test_drift_raster_draws_an_even_subset():
    spikes = spikes_of(np.arange(1000) * 30, np.arange(1000) % 3)
    positions = np.column_stack([np.zeros(1000), np.arange(1000.0)])
    fig = report.drift_raster_figure(spikes, positions, sampling_rate_hz=RATE, max_spikes=101)
    offsets = collections(fig, PathCollection)[0].get_offsets()
    assert len(offsets) == 101
    assert np.allclose(offsets[:, 1], np.arange(0, 1000, 9.99).round())
    assert "Spike depth over time (101 of 1000 spikes shown)" in texts(fig)
    empty = report.drift_raster_figure(spikes_of([], []), np.zeros((0, 2)), sampling_rate_hz=RATE)
    assert "no spikes" in texts(empty)
    with pytest.raises(ValueError, match="spike_positions_um must have one row per spike"):
        report.drift_raster_figure(spikes, positions[:5], sampling_rate_hz=RATE)


def test_motion_figure_draws_the_histogram_and_one_line_per_window():
    from matplotlib.image import AxesImage

    histogram = np.arange(20.0).reshape(4, 5)
    edges = np.arange(0.0, 60.0, 10.0)
    time_s = np.array([1.0, 3.0, 5.0, 7.0])
    displacement = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0]])
    fig = report.motion_figure(histogram, edges, time_s, displacement, [15.0, 35.0], bin_s=2.0)
    ax = fig.axes[0]
    assert len([a for a in ax.get_children() if isinstance(a, AxesImage)]) == 1
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[1].get_ydata(), 35.0 + displacement[:, 1])
    assert "window at 35 µm" in texts(fig)
    rigid = report.motion_figure(histogram, edges, time_s, displacement[:, :1], [25.0], bin_s=2.0)
    assert "rigid" in texts(rigid)
    empty = report.motion_figure(np.zeros((0, 5)), edges, [], np.zeros((0, 1)), [25.0], bin_s=2.0)
    assert "no time bins" in texts(empty)
    with pytest.raises(ValueError, match=r"displacement_um must have shape \(4, 2\)"):
        report.motion_figure(histogram, edges, time_s, displacement[:, :1], [1.0, 2.0], bin_s=2.0)


def test_accuracy_vs_snr_counts_well_detected_units():
    fig = report.accuracy_vs_snr_figure([3.0, 8.0, np.nan], [0.1, 0.9, 0.85], [0.2, 1.0, 0.9],
                                        [0.1, 0.9, 0.9], well_detected_accuracy=0.8)
    assert "2 of 3 ground-truth units well detected (accuracy ≥ 0.8)" in texts(fig)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].collections[0].get_offsets()) == 2  # the unit without SNR is left out
    assert len(fig.axes[1].collections[0].get_offsets()) == 3
    empty = report.accuracy_vs_snr_figure([], [], [], [], well_detected_accuracy=0.8)
    assert "no ground-truth units" in texts(empty)
    with pytest.raises(ValueError, match=r"well_detected_accuracy must lie in \[0, 1\], got 1.5"):
        report.accuracy_vs_snr_figure([], [], [], [], well_detected_accuracy=1.5)


def test_rule_totals_sum_time_and_keep_peak_memory():
    totals = report.rule_totals(["filter", "detect", "filter", "merge"],
                                [2.0, 5.0, 4.0, 1.0], [100.0, 300.0, 150.0, np.nan])
    assert totals["rule"].tolist() == ["filter", "detect", "merge"]
    assert totals["n_jobs"].tolist() == [2, 1, 1]
    assert totals["total_s"].tolist() == [6.0, 5.0, 1.0]
    assert totals["max_job_s"].tolist() == [4.0, 5.0, 1.0]
    assert totals["max_rss_mb"][:2].tolist() == [150.0, 300.0] and np.isnan(totals["max_rss_mb"][2])


def test_runtime_figure_one_bar_per_rule():
    totals = report.rule_totals(["filter", "detect", "filter"], [2.0, 5.0, 4.0], [1.0, 3.0, 2.0])
    fig = report.runtime_figure(totals)
    left, right = fig.axes
    for ax in (left, right):
        assert len([p for p in ax.patches if isinstance(p, Rectangle)]) == 2
    assert [t.get_text() for t in left.get_yticklabels()] == ["filter", "detect"]
    assert "6.0 s (2 jobs)" in texts(fig) and "3 MB" in texts(fig)
    empty = report.runtime_figure(report.rule_totals([], np.zeros(0), np.zeros(0)))
    assert "no benchmark records" in texts(empty)


def test_html_table_formats_and_escapes():
    page = report.html_table(
        {"unit_index": np.array([0, 1]), "snr": np.array([12.345678, np.nan]),
         "note": np.array(["<b>", "ok"])},
        title="Metrics & more", note="2 units",
    )
    assert "<title>Metrics &amp; more</title>" in page
    assert page.count("<tr>") == 3
    assert '<td class="num">12.35</td>' in page and '<td class="num">–</td>' in page
    assert "<td>&lt;b&gt;</td>" in page
    assert "no rows" in report.html_table({"a": np.zeros(0)}, title="t")
    with pytest.raises(ValueError, match="columns must all have one length"):
        report.html_table({"a": [1, 2], "b": [1]}, title="t")


def test_saved_figures_are_byte_identical_and_suffix_checked(tmp_path):
    def draw():
        return report.drift_raster_figure(spikes_of([0, 3000, 6000], [0, 1, 0]),
                                          [[0, 0], [0, 20], [0, 40]], sampling_rate_hz=RATE)

    for suffix in ("png", "svg"):
        report.save_figure(draw(), tmp_path / f"a.{suffix}")
        report.save_figure(draw(), tmp_path / f"b.{suffix}")
        assert (tmp_path / f"a.{suffix}").read_bytes() == (tmp_path / f"b.{suffix}").read_bytes()
    pixels = matplotlib.image.imread(io.BytesIO((tmp_path / "a.png").read_bytes()), format="png")
    assert pixels.shape[:2] == (500, 1000)
    with pytest.raises(ValueError, match=r"path must end with .png or .svg, got '.*fig.pdf'"):
        report.save_figure(draw(), tmp_path / "fig.pdf")
