"""`snakemake --report` on a finished small sort, rendered in headless Chromium.

Snakemake 9 writes one self-contained HTML file: every result is a base64
``data:`` URI in the JSON object ``var results = {...}`` (keyed by path, with
its labels and mime type), and a React app draws the page from it. The tests
decode those URIs, then let Chromium run the app, open the units page and
decode every figure itself.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import h5py
import matplotlib.image
import numpy as np
import pytest

from .conftest import run_snakemake

pytestmark = pytest.mark.workflow

NAME = "small"
FIGURES = {
    "probe map", "drift raster", "quality metrics (table)", "1 waveforms", "2 amplitudes",
    "3 ISI histograms", "4 autocorrelograms", "accuracy vs SNR", "accuracy per unit (table)",
    "time and memory per rule",
    # drift correction runs by default (motion.enabled: auto) on this probe
    "drift estimate",
}
WAVEFORMS = f"results/{NAME}/report/waveforms/units_000-"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium; installed with apt-get when running as root."""
    found = _find_chromium()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
            subprocess.run(cmd, check=False, env=env, capture_output=True, timeout=900)
        found = _find_chromium()
    if found is None:
        pytest.skip("no Chromium found (chromium, google-chrome) and it could not be installed: "
                    "`apt-get install chromium` needs root and a package mirror")
    return found


@pytest.fixture(scope="module")
def report_html(sorted_small, small_recording, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    run_snakemake(sorted_small, "--report", str(path), config={"recordings": small_recording})
    return path


def _results(page: str) -> dict:
    pattern = r'<script id="results">\s*var results = (\{.*?\});\s*</script>'
    match = re.search(pattern, page, re.DOTALL)
    assert match, "no results object in the report"
    return json.loads(match.group(1))


def _payload(data_uri: str) -> bytes:
    return base64.b64decode(data_uri.split(";base64,", 1)[1])


def _png(data: bytes) -> np.ndarray:
    return matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3]


def _assert_drawn(pixels: np.ndarray, what: str) -> None:
    ink = (pixels < 0.9).any(axis=-1)
    assert pixels.std() > 0.02 and ink.mean() > 0.002, f"{what} looks blank"


def _units(workdir: Path) -> int:
    with h5py.File(workdir / "results" / NAME / "sorting.h5", "r") as f:
        return len(f["units"])


def test_report_embeds_every_figure_drawn(report_html, sorted_small):
    results = _results(report_html.read_text(encoding="utf-8"))
    assert {r["labels"]["figure"] for r in results.values()} == FIGURES
    pngs = {p: r for p, r in results.items() if r["mime_type"] == "image/png"}
    assert len(pngs) == 9
    for path, entry in pngs.items():
        _assert_drawn(_png(_payload(entry["data_uri"])), path)
    tables = {r["labels"]["figure"]: _payload(r["data_uri"]).decode()
              for r in results.values() if r["mime_type"] == "text/html"}
    assert tables["quality metrics (table)"].count("<tr>") == 1 + _units(sorted_small)
    assert tables["accuracy per unit (table)"].count("<tr>") == 1 + 10
    log = (sorted_small / "results" / NAME / "logs" / "report_runtime.log").read_text()
    jobs, rules = map(int, re.search(r"(\d+) benchmark records of (\d+) rules", log).groups())
    assert rules >= 17 and jobs > rules


class _Probe(HTMLParser):
    """Collects the probe's decoded-image marks, the home text and the page's images."""

    def __init__(self):
        super().__init__()
        self.decoded, self.images, self.home, self._in_home = {}, [], "", False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("class") == "decoded":
            self.decoded[a["data-path"]] = a["data-size"]
        if tag == "img":
            self.images.append(a.get("src", ""))
        self._in_home = a.get("id") == "home-text"

    def handle_data(self, data):
        if self._in_home:
            self.home += data


PROBE = """<script>
function mark(path, size) {
  var span = document.createElement("span");
  span.className = "decoded";
  span.setAttribute("data-path", path);
  span.setAttribute("data-size", size);
  document.getElementById("probe").appendChild(span);
}
function probeWhenDrawn() {
  var description = document.querySelector("#app .prose");
  if (!description) { setTimeout(probeWhenDrawn, 100); return; }
  var probe = document.createElement("div");
  probe.id = "probe";
  var home = document.createElement("pre");
  home.id = "home-text";
  home.textContent = description.textContent;
  probe.appendChild(home);
  document.body.appendChild(probe);
  Object.keys(results).forEach(function (path) {
    if (results[path].mime_type !== "image/png") { return; }
    var img = new Image();
    img.onload = function () { mark(path, img.naturalWidth + "x" + img.naturalHeight); };
    img.onerror = function () { mark(path, "error"); };
    img.src = results[path].data_uri;
  });
  app.setView({navbarMode: "subcategory", category: "CATEGORY", subcategory: "2 units",
               content: "img", contentPath: results["SHOWN"].data_uri, resultPath: "SHOWN"});
}
setTimeout(probeWhenDrawn, 100);
</script>
"""


def _chromium(binary: str, page: Path, tmp_path: Path, *args: str) -> str:
    proc = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000",
         "--virtual-time-budget=10000", *args, page.as_uri()],
        check=False, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_report_renders_in_chromium(report_html, chromium, tmp_path):
    page = report_html.read_text(encoding="utf-8")
    results = _results(page)
    shown = next(p for p in results if p.startswith(WAVEFORMS))
    probe = PROBE.replace("CATEGORY", NAME).replace("SHOWN", shown)
    opened = tmp_path / "opened.html"
    head, end, tail = page.rpartition("</body>")
    opened.write_text(head + probe + end + tail, encoding="utf-8")

    dumped = _chromium(chromium, opened, tmp_path, "--dump-dom")
    dom = _Probe()
    dom.feed(dumped)
    # First view: the workflow description (report/workflow.rst).
    assert "shardsort sorts spikes" in dom.home and "2 units" in dom.home
    # The units page lists the four per-unit figures and shows the waveforms.
    listing = re.findall(r"<table class=\"table-auto.*?</table>", dumped, re.DOTALL)
    assert len(listing) == 1
    for label in ("1 waveforms", "2 amplitudes", "3 ISI histograms", "4 autocorrelograms"):
        assert f">{label}<" in listing[0]
    assert results[shown]["data_uri"] in dom.images
    # Chromium decoded every embedded figure, at the size it was saved.
    pngs = {p: r for p, r in results.items() if r["mime_type"] == "image/png"}
    assert set(dom.decoded) == set(pngs)
    for path, entry in pngs.items():
        height, width = _png(_payload(entry["data_uri"])).shape[:2]
        assert dom.decoded[path] == f"{width}x{height}", path

    shot = tmp_path / "shot.png"
    _chromium(chromium, opened, tmp_path, f"--screenshot={shot}")
    pixels = matplotlib.image.imread(shot)[..., :3]
    content = pixels[:, int(0.4 * pixels.shape[1]):]  # right of the navigation bar
    _assert_drawn(content, "the waveforms page on screen")
    coloured = (content.max(axis=-1) - content.min(axis=-1)) > 0.3
    assert coloured.sum() > 500, "no coloured unit traces on screen"
