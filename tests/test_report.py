"""report.html: self-contained, rendered by a real browser (headless Chromium) in the tests."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from .conftest import cleaned_with_images

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def run_with_images(tmp_path_factory):
    """A small noisy set whose manifest paths point at real image files (for thumbnails)."""
    _, out, result = cleaned_with_images(tmp_path_factory.mktemp("report"), seed=4)
    return result, out


@pytest.mark.slow
def test_report_is_one_self_contained_page(run_with_images):
    result, out = run_with_images
    page = (out / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources), "every image is embedded"
    assert "href=\"http" not in page and "<script" not in page
    for section in ("Summary", "Score per issue", "Same-label vs different-label similarity", "Cluster sizes",
                    "Duplicate identities", "Worst offenders"):
        assert section in page
    counts = result.report["counts"]["issues"]
    assert f"mislabeled: {counts['mislabeled']:,}" in page
    assert page.count("data:image/jpeg") >= 1, "thumbnails of image files found on disk"


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (.ci/run installs Debian's chromium)")
@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_with_images, tmp_path):
    from PIL import Image

    _, out = run_with_images
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000",
           f"--screenshot={shot}", (out / "report.html").as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert image.shape == (2000, 1200)
    assert image.std() > 10, "the page drew something (text and plots), not a blank screen"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom",
                          (out / "report.html").as_uri()], check=True, capture_output=True, text=True, timeout=120)
    assert "Worst offenders" in dom.stdout and dom.stdout.count("<img") >= 3
    shutil.copy(shot, out / "report.png")  # kept beside the run for a person to look at
