"""report.html: one self-contained page a person can read to check a cleaning run.

Summary counts, score histograms per issue, same-label vs different-label similarity of the kNN
edges, the cluster-size distribution of each clustering stage, and the worst offenders per
issue type with their evidence and, when the image files exist on disk, thumbnails. Plots are
small SVG documents drawn here and thumbnails JPEGs (Pillow), embedded as data: URIs, so the
page opens anywhere with no other file.
"""

from __future__ import annotations

import base64
import html
import io
import os
import stat
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

ISSUE_COLOURS = {"mislabeled": "#d62728", "outlier": "#9467bd", "near_duplicate": "#1f77b4",
                 "duplicate_identity": "#ff7f0e", "review": "#7f7f7f"}


# --------------------------------------------------------------------------- plots as SVG
# The page's three plots are bars, overlaid histograms and a log-log scatter: drawn as small SVG
# documents here (no plotting library: importing and rendering with matplotlib was a third of a
# small run's time), embedded as data: URIs like the thumbnails.

_W, _H, _PAD = 300, 170, 34  # one panel, in px; _PAD leaves room for the axes' labels


def _svg_uri(width: int, height: int, body: list[str]) -> str:
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">'
           f'<rect width="{width}" height="{height}" fill="white"/>' + "".join(body) + "</svg>")
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _text(x: float, y: float, text: str, anchor: str = "middle", size: int = 10) -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}">'
            f"{html.escape(str(text))}</text>")


def _axes(x0: float, y0: float, w: float, h: float, xlo, xhi, ylo, yhi, xlabel: str, title: str) -> list[str]:
    """Frame, the two axes' end values and labels, and the title of one panel."""
    return [f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{h:.1f}" fill="none" stroke="#888"/>',
            _text(x0, y0 + h + 12, _fmt(xlo), "start"), _text(x0 + w, y0 + h + 12, _fmt(xhi), "end"),
            _text(x0 + w / 2, y0 + h + 24, xlabel), _text(x0 - 3, y0 + h, _fmt(ylo), "end"),
            _text(x0 - 3, y0 + 8, _fmt(yhi), "end"), _text(x0 + w / 2, y0 - 6, title, size=11)]


def _fmt(v) -> str:
    v = float(v)
    return f"{v:,.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.2f}"


def _bars(x0, y0, w, h, counts, colour, opacity=1.0, top=None) -> list[str]:
    top = top or max(float(np.max(counts)) if len(counts) else 0.0, 1e-12)
    step = w / max(len(counts), 1)
    return [f'<rect x="{x0 + i * step:.1f}" y="{y0 + h - h * c / top:.1f}" width="{max(step - 0.5, 0.5):.1f}" '
            f'height="{h * c / top:.1f}" fill="{colour}" fill-opacity="{opacity}"/>'
            for i, c in enumerate(counts) if c > 0]


def _plots(result) -> dict[str, str]:
    out = {}
    f = result.findings
    issues = [name for name in ISSUE_COLOURS if (f.issue == name).any()]
    body = []
    for j, name in enumerate(issues or ["no issues found"]):
        x0, y0, w, h = j * _W + _PAD, 16, _W - _PAD - 8, _H - 16 - _PAD
        if not issues:
            body.append(_text(_W / 2, _H / 2, name))
            break
        counts = np.histogram(f.score[f.issue == name], bins=np.linspace(0, 1, 21))[0]
        body += _axes(x0, y0, w, h, 0, 1, 0, counts.max(), "score", f"{name} ({int((f.issue == name).sum()):,})")
        body += _bars(x0, y0, w, h, counts, ISSUE_COLOURS[name])
    out["scores"] = _svg_uri(_W * max(len(issues), 1), _H, body)

    graph, labels = result.graph, result.faceset.labels
    valid = graph.indices >= 0
    rows = np.repeat(np.arange(graph.n_samples), graph.k).reshape(graph.indices.shape)
    same = labels[rows[valid]] == labels[graph.indices[valid]]
    sims = graph.sims[valid]
    lo, hi = (float(sims.min()), float(sims.max())) if len(sims) else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 61)  # a tiny set can have one similarity only
    dens = {name: np.histogram(sims[mask], bins=bins, density=True)[0] if mask.any() else np.zeros(60)
            for mask, name in ((same, "same label"), (~same, "different label"))}
    top = max(max(float(d.max()) for d in dens.values()), 1e-12)
    x0, y0, w, h = _PAD + 8, 16, 2 * _W - _PAD - 24, _H - 16 - _PAD
    body = _axes(x0, y0, w, h, lo, hi, 0, top, "cosine similarity of kNN edges (processed embeddings)",
                 "density of kNN edge similarities")
    for j, ((name, d), colour, mask) in enumerate(zip(dens.items(), ("#2ca02c", "#d62728"), (same, ~same))):
        body += _bars(x0, y0, w, h, d, colour, 0.55, top)
        body.append(f'<rect x="{x0 + w - 150:.1f}" y="{y0 + 5 + 12 * j:.1f}" width="8" height="8" fill="{colour}"/>')
        body.append(_text(x0 + w - 138, y0 + 12 + 12 * j, f"{name} ({int(mask.sum()):,})", "start"))
    out["similarity"] = _svg_uri(2 * _W, _H, body)

    parts = result.signals.partitions()
    if parts:
        series = [(name, np.bincount(np.bincount(part.labels))[1:]) for name, part in parts]
        series.append(("given labels", np.bincount(np.bincount(labels))[1:]))
        xmax = max(len(c) for _, c in series)
        ymax = max(int(c.max()) for _, c in series if len(c))
        lx, ly = np.log10(max(xmax, 2)), np.log10(max(ymax, 2))
        x0, y0, w, h = _PAD + 8, 16, 2 * _W - _PAD - 24, _H - 16 - _PAD
        body = _axes(x0, y0, w, h, 1, xmax, 1, ymax, "cluster size (images), log scale", "clusters per size (log)")
        for j, ((name, counts), colour) in enumerate(zip(series, ("#1f77b4", "#ff7f0e", "#555555"))):
            size = np.flatnonzero(counts) + 1
            px = x0 + w * np.log10(size) / lx
            py = y0 + h - h * np.log10(counts[size - 1]) / ly
            body += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2" fill="{colour}" fill-opacity="0.8"/>' for a, b in zip(px, py)]
            body.append(f'<circle cx="{x0 + w - 110:.1f}" cy="{y0 + 8 + 12 * j:.1f}" r="3" fill="{colour}"/>')
            body.append(_text(x0 + w - 104, y0 + 12 + 12 * j, name, "start"))
        out["clusters"] = _svg_uri(2 * _W, _H, body)
    return out


# Thumbnails read files named by the manifest, which may come from anywhere: they are read only
# from inside one folder (the image root), only when they are regular files, and within bounds on
# bytes, pixels and total time; a thumbnail that cannot be made is skipped and counted by reason.
THUMB_MAX_BYTES = 50 * 2**20  # 50 MiB: a face photo is far smaller; a bigger file is not worth reading for a 72 px thumb
THUMB_MAX_PIXELS = 50_000_000  # ~7000 x 7000: below Pillow's own bomb warning (89 MP); ~150 MB decoded as RGB
THUMB_TIME_BUDGET_S = 10.0  # all thumbnails of one page together; the rest are skipped as "time budget"
THUMB_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")  # no EPS (Ghostscript) or other exotic decoders
SKIP_REASONS = ("outside the image root", "not a regular file", "missing", "too large", "unreadable", "time budget")


class _Skip(Exception):
    """A thumbnail that is not made; ``args[0]`` is one of SKIP_REASONS."""


def _open_regular(path: Path, root: Path):
    """A binary file object for ``path`` (relative to ``root``, or absolute) when it resolves
    inside ``root`` to a regular file within the byte limit; else raises _Skip. Nothing that is
    not a regular file (a FIFO, a device, a folder) is ever opened."""
    try:
        resolved = (root / path).resolve()  # follows every symlink, so a link out of the root is caught
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
        raise _Skip("unreadable") from exc
    if not resolved.is_relative_to(root):
        raise _Skip("outside the image root")
    try:
        st = os.stat(resolved)
    except FileNotFoundError as exc:
        raise _Skip("missing") from exc
    except (OSError, ValueError) as exc:
        raise _Skip("unreadable") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _Skip("not a regular file")
    if st.st_size > THUMB_MAX_BYTES:
        raise _Skip("too large")
    # the file could be swapped between stat and open: open without blocking or following a
    # link, then check that what was opened is the regular file that was checked
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(resolved, flags)
    except OSError as exc:
        raise _Skip("unreadable") from exc
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) \
            or opened.st_size > THUMB_MAX_BYTES:
        os.close(fd)
        raise _Skip("unreadable")
    return os.fdopen(fd, "rb")


def _thumbnail(path: str | Path, root: Path, size: int = 72) -> str:
    """A JPEG data: URI of at most ``size`` px, or raises _Skip with the reason."""
    from PIL import Image

    with _open_regular(Path(path), root) as fh, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(fh, formats=THUMB_FORMATS) as im:  # reads the header only
                width, height = im.size
                if width * height > THUMB_MAX_PIXELS:
                    raise _Skip("too large")
                im.draft("RGB", (size, size))  # a JPEG decodes at reduced scale; no effect on other formats
                im = im.convert("RGB")
                im.thumbnail((size, size))
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=80)
        except _Skip:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _Skip("too large") from exc
        except Exception as exc:  # a corrupt file can raise anything from a decoder: skip it, never fail the page
            raise _Skip("unreadable") from exc
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Thumbnails:
    """Makes the page's thumbnails under one time budget and counts the skipped ones."""

    def __init__(self, root: Path | None):
        self.root = root
        self.shown = 0
        self.skipped: Counter[str] = Counter()
        self.deadline = time.monotonic() + THUMB_TIME_BUDGET_S

    def img(self, path) -> str:
        if self.root is None:
            return ""
        try:
            if time.monotonic() > self.deadline:
                raise _Skip("time budget")
            uri = _thumbnail(str(path), self.root)
        except _Skip as skip:
            self.skipped[skip.args[0]] += 1
            return ""
        self.shown += 1
        return f'<img src="{uri}" alt="">'

    def summary(self) -> str:
        if self.root is None:
            return "<p>Thumbnails: none (no image folder: the manifest is not a file on disk and no image root was given).</p>"
        skipped = sum(self.skipped.values())
        line = f"Thumbnails read only from {self.root}: {self.shown} shown, {skipped} skipped"
        if skipped:
            line += " (" + ", ".join(f"{reason}: {self.skipped[reason]}" for reason in SKIP_REASONS
                                     if self.skipped[reason]) + ")"
        return f"<p>{html.escape(line)}.</p>"


def _offenders(result, per_issue: int, image_root: Path | None) -> str:
    audit = result.audit
    path_col = result.faceset.path_col
    label_col = result.faceset.label_col
    thumbs = _Thumbnails(image_root)
    parts = []
    for name in ISSUE_COLOURS:
        rows = audit.index[audit["fc_issue"] == name]
        if not len(rows):
            continue
        worst = audit.loc[rows].sort_values("fc_score", ascending=False, kind="stable").head(per_issue)
        body = []
        for idx, row in worst.iterrows():
            thumb = thumbs.img(row[path_col])
            body.append(
                f"<tr><td>{idx + 1}</td><td>{thumb}</td><td>{html.escape(str(row[path_col]))}</td>"
                f"<td>{html.escape(str(row[label_col]))}</td><td>{html.escape(str(row['fc_label']))}</td>"
                f"<td>{html.escape(str(row['fc_action']))}</td><td>{row['fc_score']:.3f}</td>"
                f"<td class=reason>{html.escape(str(row['fc_reason']))}</td></tr>")
        parts.append(
            f'<h3 style="color:{ISSUE_COLOURS[name]}">{name}: {len(rows):,} (worst {len(worst)})</h3>'
            "<table><tr><th>row</th><th></th><th>path</th><th>given</th><th>cleaned</th><th>action</th>"
            "<th>score</th><th>evidence</th></tr>" + "".join(body) + "</table>")
    return thumbs.summary() + "".join(parts) if parts else "<p>No issue found.</p>"


def _identity_table(report: dict, top: int = 20) -> str:
    ids = pd.DataFrame(report.get("identities", {}))
    if ids.empty:
        return "<p>None.</p>"
    worst = ids[ids.images >= 2].sort_values(["purity", "images"], ascending=[True, False], kind="stable").head(top)
    return (f"<p>{len(ids):,} identities; median purity {ids.purity.median():.3f}; "
            f"{int((ids.purity < 1).sum()):,} with at least one finding. Lowest purity:</p>"
            + worst.to_html(index=False, escape=True, border=0))


def _table(mapping: dict) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in mapping.items())
    return f"<table class=kv>{cells}</table>"


ISSUE_MEANINGS = {
    "mislabeled": "the image looks like another identity of the set (the suggested label)",
    "outlier": "the image fits no identity of the set: a person outside the label set, or a bad crop",
    "near_duplicate": "the image is a copy (or near copy) of another row; one of each group is kept",
    "duplicate_identity": "the whole label looks like the same person as another label",
    "review": "the evidence leans against the label but cannot decide: a person's call",
}
ACTION_MEANINGS = {
    "keep": "kept under its label (a finding below the policy's threshold is kept and listed)",
    "relabel": "kept under the suggested label",
    "drop": "left out of the cleaned set",
    "merge": "kept, its label merged into another",
    "dedupe": "left out as a copy of a kept row",
}


def _next_steps(report: dict) -> str:
    counts = report["counts"]
    waiting = counts.get("review_queue", 0)
    # the queue's own breakdown (rows a person decided have left it); reports written before it
    # was recorded fall back to the findings' counts
    by_issue = "; ".join(f"{k}: {v:,}" for k, v in counts.get("review_queue_by_issue", counts["issues"]).items() if v)
    decided = report.get("decisions")
    person = (f"<li>{counts.get('decided_by_person', 0):,} rows follow a person's decisions "
              f"({html.escape(str(decided['file']))}: {decided['applied']:,} applied, "
              f"{decided['unknown_paths']:,} naming a path not in the manifest).</li>") if decided else ""
    issues = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in ISSUE_MEANINGS.items())
    actions = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in ACTION_MEANINGS.items())
    return (f"<ol><li><b>review.html</b>: {waiting:,} rows wait for a person ({html.escape(by_issue)}), the "
            "most doubtful first. Decide with the keyboard, export decisions.csv, and run again with "
            "<code>--decisions decisions.csv</code>: every later run honours them.</li>"
            "<li><b>cleaned.csv</b>: the rows to retrain on, with the cleaned labels.</li>"
            "<li><b>audit.csv</b>: every input row with its issue, action, score, evidence and source "
            "(algorithm or person); <b>identities.csv</b>: the duplicate-identity suggestions.</li>"
            f"{person}</ol><table class=kv><tr><th>issue</th><td>what it means</td></tr>{issues}</table>"
            f"<table class=kv><tr><th>action</th><td>what it does</td></tr>{actions}</table>")


def resolve_image_root(result, image_root: str | Path | None) -> Path | None:
    """The folder images may come from, resolved: ``image_root``, else the manifest's folder
    (None when the manifest is not a file on disk or the folder cannot be resolved)."""
    if image_root is None:
        manifest = result.faceset.source.get("manifest")
        image_root = Path(manifest).parent if manifest and Path(str(manifest)).exists() else None
    try:
        return None if image_root is None else Path(image_root).resolve()
    except (OSError, RuntimeError):
        return None


def render_html(result, *, per_issue: int = 20, image_root: str | Path | None = None) -> str:
    """The page as a string. ``image_root``: folder the manifest's paths are relative to
    (default: the manifest's folder). Thumbnails are read only from regular files that resolve
    (symlinks followed) inside it, within THUMB_MAX_BYTES, THUMB_MAX_PIXELS and a total of
    THUMB_TIME_BUDGET_S; the page counts the skipped ones by reason."""
    report = result.report
    image_root = resolve_image_root(result, image_root)
    plots = _plots(result)
    counts = report["counts"]
    summary = {"rows": f"{report['inputs']['rows']:,}", "identities": f"{report['inputs']['identities']:,}",
               "rows kept": f"{counts['rows_kept']:,}", "merge suggestions": counts["merge_suggestions"],
               "rows waiting for review": f"{counts.get('review_queue', 0):,}",
               "policy": report["parameters"]["policy"],
               **{f"issue: {k}": v for k, v in counts["issues"].items()},
               **{f"action: {k}": v for k, v in counts["actions"].items()}}
    merges = result.identities
    merge_html = ("<p>None.</p>" if not len(merges) else
                  merges.to_html(index=False, escape=True, classes="merges", border=0))
    images = ["scores", "similarity", "clusters"]
    titles = {"scores": "Score per issue", "similarity": "Same-label vs different-label similarity",
              "clusters": "Cluster sizes"}
    figures = "".join(f"<h3>{titles[k]}</h3><img class=plot src=\"{plots[k]}\" alt=\"{titles[k]}\">"
                      for k in images if k in plots)
    timings = report.get("timings", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>facecluster report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
td.reason {{ font-size: 12px; color: #444; max-width: 520px; }}
table.kv th {{ font-weight: normal; color: #555; }}
img.plot {{ max-width: 100%; }}
</style></head><body>
<h1>facecluster report</h1>
<p>{html.escape(str(report['inputs'].get('manifest', '')))} &middot; facecluster {html.escape(report['facecluster_version'])}
&middot; {timings.get('total', 0):.1f} s</p>
<h2 id=summary>Summary</h2>{_table(summary)}
<h2 id=next>What to open next</h2>{_next_steps(report)}
<h2 id=plots>Distributions</h2>{figures}
<h2 id=identities>Duplicate identities</h2>{merge_html}
<h2 id=purity>Identities</h2>{_identity_table(report)}
<h2 id=offenders>Worst offenders</h2>{_offenders(result, per_issue, image_root)}
</body></html>
"""
