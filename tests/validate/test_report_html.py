"""report.html: self-contained, every value it shows comes from report.json, and it renders in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llama_export.validate.pipeline import validate_build
from llama_export.validate.report import _get


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.keys, self.images, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-key" in attrs:
            self.keys.append(attrs["data-key"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("href", "src"):
            if tag != "img" and attrs.get(name):
                self.links.append(attrs[name])


@pytest.fixture(scope="module")
def report_dir(perturbed_dir) -> Path:
    """A failing report has every section (gate, bisection with the per-layer plot)."""
    return validate_build(perturbed_dir, steps=4, prompt_tokens=16).path


def test_html_is_self_contained_and_backed_by_report_json(report_dir):
    data = json.loads((report_dir / "report.json").read_text())
    page = _Page()
    page.feed((report_dir / "report.html").read_text())
    assert len(page.keys) > 30
    for key in page.keys:
        _get(data, key)  # KeyError / IndexError if the JSON lacks what the page shows
    assert {"passed", "layers.first_bad_layer", "perplexity.delta", "free_running.first_divergence"} <= set(page.keys)
    assert len(page.images) == 3 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.links == []  # no external assets: readable offline
    for name in ("per_step", "per_layer", "per_position"):
        assert (report_dir / f"{name}.png").stat().st_size > 1000
    assert data["gate"]["table"]["fp32"]["max_abs"] == 1e-4 and data["versions"]["libraries"]["onnxruntime"]
    assert not list(report_dir.parent.glob(".report.tmp-*"))  # staged and renamed into place


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(report_dir, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}", "--window-size=1200,2000"]
    url = (report_dir / "report.html").absolute().as_uri()
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=False)
    assert "First layer whose error jumps" in dom.stdout, dom.stderr[-2000:]
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', dom.stdout)) == 3
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=False)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    assert pixels[..., :3].std() > 0.05  # not a blank page: text, tables and plots
