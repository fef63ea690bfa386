"""report.html thumbnails (issue 14): images are read only from inside the image root, only from
regular files, within byte, pixel and time bounds; every skipped thumbnail is counted on the page."""

from __future__ import annotations

import contextlib
import html
import os
import re
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from typer.testing import CliRunner

import facecluster as fc
from cli.main import app
from facecluster import report as report_mod
from facecluster.report import render_html
from facecluster.synth import inject_noise, label_names, make_faces

from .conftest import write_set

FILLER = "img/ok.jpg"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small real run whose manifest lies in ``<base>/in``; ``<base>/outside.jpg`` is a valid
    image outside that folder and ``<base>/in/img/ok.jpg`` one inside it."""
    base = tmp_path_factory.mktemp("thumbs")
    x, y = make_faces(400, 30, 32, seed=4)
    noisy = inject_noise(x, y, seed=4)
    manifest = write_set(base / "in", noisy.embeddings, label_names(noisy.labels))
    result = fc.clean(manifest, stages=(), device="cpu")
    rng = np.random.default_rng(0)
    (base / "in" / "img").mkdir()
    for target in (base / "outside.jpg", base / "in" / FILLER):
        Image.fromarray(rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(target)
    return result, base / "in", base


def shown_rows(result, per_issue: int = 20) -> list:
    """The audit rows the page shows, in page order (as report._offenders picks them)."""
    audit = result.audit
    rows = []
    for name in report_mod.ISSUE_COLOURS:
        part = audit[audit["fc_issue"] == name]
        rows += list(part.sort_values("fc_score", ascending=False, kind="stable").head(per_issue).index)
    return rows


def with_paths(result, paths: list[str], filler: str = FILLER):
    """A copy of ``result`` whose first shown offenders have ``paths`` and every other row ``filler``."""
    audit = result.audit.copy()
    col = result.faceset.path_col
    audit[col] = filler
    rows = shown_rows(result)
    assert len(rows) >= len(paths), "the run has enough offenders for the crafted paths"
    for row, path in zip(rows, paths):
        audit.loc[row, col] = path
    return replace(result, audit=audit), len(rows)


def thumb_line(page: str) -> tuple[int, dict[str, int]]:
    """(shown, {reason: count}) from the page's one thumbnail line."""
    line = html.unescape(re.search(r"<p>(Thumbnails read only from [^<]*)</p>", page).group(1))
    shown = int(re.search(r": (\d+) shown, \d+ skipped", line).group(1))
    reasons = re.search(r"skipped \((.*)\)\.$", line)
    counts = {}
    if reasons:
        for part in reasons.group(1).split(", "):
            reason, count = part.rsplit(": ", 1)
            counts[reason] = int(count)
    assert sum(counts.values()) == int(re.search(r"(\d+) skipped", line).group(1))
    return shown, counts


@contextlib.contextmanager
def fail_after(seconds: int):
    """Turn a hang into a test failure (SIGALRM interrupts a blocking open of a FIFO)."""
    def boom(*_):
        raise TimeoutError(f"render_html still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def spies(monkeypatch):
    """Every path os.open is asked for, and every Image.open call."""
    opened, image_opens = [], []
    real_os_open, real_image_open = os.open, Image.open

    def os_open(path, *args, **kwargs):
        opened.append(os.path.realpath(path) if isinstance(path, (str, os.PathLike)) else path)
        return real_os_open(path, *args, **kwargs)

    def image_open(fp, *args, **kwargs):
        image_opens.append(fp)
        return real_image_open(fp, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(Image, "open", image_open)
    return opened, image_opens


def test_paths_outside_the_image_root_are_never_read(run, spies):
    result, folder, base = run
    outside = base / "outside.jpg"
    (folder / "img" / "link.jpg").symlink_to(outside)
    (folder / "img" / "linkdir").symlink_to(base, target_is_directory=True)
    crafted = ["../outside.jpg", str(outside), "img/link.jpg", "img/linkdir/outside.jpg", "img/../../outside.jpg",
               "../in/img/ok.jpg"]  # the last leaves and comes back in: allowed
    crafted_result, n_shown = with_paths(result, crafted)
    page = render_html(crafted_result, image_root=folder)
    opened, image_opens = spies
    assert str(outside.resolve()) not in opened, "the image outside the root was never opened"
    assert all(Path(p).is_relative_to(folder.resolve()) for p in opened if isinstance(p, str) and p.endswith(".jpg"))
    shown, skipped = thumb_line(page)
    assert skipped == {"outside the image root": 5}
    assert shown == n_shown - 5 == page.count("data:image/jpeg") == len(image_opens)


def test_the_manifest_folder_is_the_default_root(run, spies):
    result, folder, base = run
    crafted_result, n_shown = with_paths(result, ["../outside.jpg"])
    page = render_html(crafted_result)
    assert str(folder.resolve()) in html.unescape(page)
    assert str((base / "outside.jpg").resolve()) not in spies[0]
    assert thumb_line(page) == (n_shown - 1, {"outside the image root": 1})


def test_a_fifo_a_folder_and_a_missing_file_are_never_opened(run, spies):
    result, folder, _ = run
    os.mkfifo(folder / "img" / "pipe.jpg")
    (folder / "img" / "dir.jpg").mkdir()
    crafted_result, n_shown = with_paths(result, ["img/pipe.jpg", "img/dir.jpg", "img", "", "img/nope.jpg"])
    with fail_after(30):
        page = render_html(crafted_result, image_root=folder)
    opened, _ = spies
    assert not any(str(p).endswith(("pipe.jpg", "dir.jpg", "nope.jpg")) for p in opened)
    assert thumb_line(page) == (n_shown - 5, {"not a regular file": 4, "missing": 1})


def _spy_decodes(monkeypatch) -> list:
    """The sizes of the images Pillow decodes from now on (ImageFile.load is where pixels are read)."""
    loads = []
    real_load = ImageFile.ImageFile.load

    def load(self):
        loads.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return loads


@pytest.mark.slow
def test_huge_images_are_skipped_before_decoding(run, monkeypatch, tmp_path):
    result, folder, _ = run
    Image.new("1", (14000, 14000)).save(folder / "img" / "bomb.png")  # 196 MP: past Pillow's own bomb error
    Image.new("1", (10000, 10000)).save(folder / "img" / "warn.png")  # 100 MP: Pillow only warns
    Image.new("1", (8000, 8000)).save(folder / "img" / "big.png")  # 64 MP: over our own pixel limit
    (folder / "img" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    loads = _spy_decodes(monkeypatch)
    crafted_result, _ = with_paths(result, ["img/bomb.png", "img/warn.png", "img/big.png", "img/bad.jpg"],
                                   filler="img/nope.jpg")
    page = render_html(crafted_result, image_root=folder)  # no DecompressionBombError, no warning
    shown, skipped = thumb_line(page)
    assert shown == 0 and page.count("data:image/jpeg") == 0
    assert skipped["too large"] == 3 and skipped["unreadable"] == 1
    assert all(w * h <= report_mod.THUMB_MAX_PIXELS for w, h in loads), "no huge image was decoded"

    monkeypatch.setattr(report_mod, "THUMB_MAX_BYTES", 100)  # the 40x32 JPEG is bigger than that
    crafted_result, n_shown = with_paths(result, [])
    assert thumb_line(render_html(crafted_result, image_root=folder)) == (0, {"too large": n_shown})


def test_a_small_jpeg_inside_the_root_gets_a_thumbnail_and_the_line_is_escaped(run, tmp_path, monkeypatch):
    result, folder, _ = run
    loads = _spy_decodes(monkeypatch)
    root = tmp_path / "a<b&c"
    (root / "img").mkdir(parents=True)
    Image.fromarray(np.full((900, 1200, 3), 200, dtype=np.uint8)).save(root / "img" / "large.jpg")  # draft path
    (root / FILLER).write_bytes((folder / FILLER).read_bytes())
    crafted_result, n_shown = with_paths(result, ["img/large.jpg"])
    page = render_html(crafted_result, image_root=root)
    assert thumb_line(page) == (n_shown, {})
    assert page.count("data:image/jpeg") == n_shown
    assert "a&lt;b&amp;c" in page and "a<b&c" not in page
    assert loads and (1200, 900) not in loads, "a big JPEG decodes at reduced scale (draft)"


def test_the_time_budget_bounds_the_thumbnails(run, monkeypatch):
    result, folder, _ = run
    monkeypatch.setattr(report_mod, "THUMB_TIME_BUDGET_S", -1.0)
    crafted_result, n_shown = with_paths(result, [])
    page = render_html(crafted_result, image_root=folder)
    assert thumb_line(page) == (0, {"time budget": n_shown})


def test_cli_image_root_option(tmp_path):
    x, y = make_faces(400, 30, 32, seed=4)
    noisy = inject_noise(x, y, seed=4)
    manifest = write_set(tmp_path / "in", noisy.embeddings, label_names(noisy.labels))  # paths img/00000.jpg...
    images = tmp_path / "images"
    (images / "img").mkdir(parents=True)
    picture = Image.fromarray(np.full((40, 32, 3), 90, dtype=np.uint8))
    for i in range(len(noisy.labels)):
        picture.save(images / "img" / f"{i:05d}.jpg")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["clean", str(manifest), "--out", str(out), "--stages", "", "--device", "cpu",
                                      "-q", "--image-root", str(images)])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text(encoding="utf-8")
    shown, skipped = thumb_line(page)
    assert f"Thumbnails read only from {html.escape(str(images.resolve()))}" in page
    assert skipped == {} and shown == page.count("data:image/jpeg")
