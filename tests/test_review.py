"""The review loop: review.html's queue, a person's decisions.csv, and later runs honouring it.

The browser tests drive review.html in headless Chromium (Debian's package, which .ci/run
installs) through Playwright; they skip, saying why, where either is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import facecluster as fc
from cli.main import app
from facecluster.relabel import read_decisions
from facecluster.review import review_data, review_queue
from facecluster.synth import inject_noise, label_names, make_faces

from .conftest import REPO, cleaned_with_images, write_set

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
ARTIFACTS = Path(os.environ.get("FACECLUSTER_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _browser():
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (the test extra has it)")
    return sync_api


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A small noisy set with image files on disk, cleaned once."""
    return cleaned_with_images(tmp_path_factory.mktemp("review"), seed=5)


def _queue_rows(result) -> list[int]:
    return review_queue(result.audit, result.faceset.label_col, result.report["parameters"]["policy"])["row"].tolist()


def test_queue_holds_every_undecided_finding_most_doubtful_first(first_run):
    _, out, result = first_run
    audit = result.audit
    queue = review_queue(audit, "label", "conservative")
    assert sorted(queue["row"]) == np.flatnonzero((audit["fc_issue"] != "").to_numpy()).tolist()
    assert (np.diff(queue["margin"].to_numpy()) >= 0).all(), "closest to the policy's threshold first"
    assert result.report["counts"]["review_queue"] == len(queue)
    assert (audit["fc_source"] == "algorithm").all()
    page = (out / "review.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script id=data type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data["queue_rows"] == len(queue)
    # one card a row, but one card for all the flagged rows of a duplicate identity
    assert sum(len(c["rows"]) for c in data["cards"]) == len(queue)
    assert [c["rows"][0] for c in data["cards"]] == [r for r in queue["row"] if r in {c["rows"][0] for c in data["cards"]}]
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "What to open next" in report and f"{len(queue):,} rows wait for a person" in report


def test_decisions_beat_the_algorithm_and_leave_the_queue(first_run, tmp_path):
    manifest, _, first = first_run
    queue = _queue_rows(first)
    audit = first.audit
    picks = [r for r in queue if audit["fc_issue"].iat[r] != "duplicate_identity"][:3]
    paths = audit["path"].iloc[picks].tolist()
    decisions = tmp_path / "decisions.csv"
    pd.DataFrame({"path": paths + ["img/not-in-the-manifest.jpg", paths[0]],
                  "decision": ["drop", "relabel", "keep", "drop", "keep"],
                  "label": ["", "a person's new name", "", "", ""],
                  "note": ["", "checked, \"quoted\", note", "", "", "changed my mind"],
                  "timestamp": ["2026-12-04T10:00:00Z"] * 5}).to_csv(decisions, index=False)
    again = fc.clean(manifest, out_dir=tmp_path / "out", stages=("hierarchical", "correlation"), decisions=decisions)
    after = again.audit
    # the last decision for a path wins: the first pick is kept, not dropped
    want = {picks[0]: ("keep", audit["label"].iat[picks[0]]), picks[1]: ("relabel", "a person's new name"),
            picks[2]: ("keep", audit["label"].iat[picks[2]])}
    for row, (action, label) in want.items():
        assert (after["fc_action"].iat[row], after["fc_label"].iat[row], after["fc_source"].iat[row]) == (action, label, "person")
        assert after["fc_reason"].iat[row].startswith("person: ")
        assert after["fc_issue"].iat[row] == audit["fc_issue"].iat[row], "what the algorithm found stays visible"
    others = [r for r in range(len(after)) if r not in want]
    pd.testing.assert_frame_equal(after.iloc[others], audit.iloc[others])
    assert _queue_rows(again) == [r for r in queue if r not in want], "the queue shrinks by exactly the decided rows"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["decided_by_person"] == 3
    assert report["counts"]["review_queue"] == len(queue) - 3
    # report.html's breakdown of the queue is the queue's, not the findings' (the decided rows left it)
    by_issue = report["counts"]["review_queue_by_issue"]
    assert sum(by_issue.values()) == len(queue) - 3
    assert by_issue == {k: int((after["fc_issue"].iloc[_queue_rows(again)] == k).sum()) for k in by_issue}
    page = (tmp_path / "out" / "report.html").read_text()
    listed = "; ".join(f"{k}: {v:,}" for k, v in by_issue.items() if v)
    assert f"{len(queue) - 3:,} rows wait for a person ({listed})" in page
    assert report["decisions"]["unknown_paths"] == 1
    assert report["decisions"]["unknown_examples"] == ["img/not-in-the-manifest.jpg"]
    assert report["decisions"]["superseded"] == 1
    cleaned = pd.read_csv(tmp_path / "out" / "cleaned.csv", dtype=str)
    assert "a person's new name" in set(cleaned["label"])


def test_a_merge_decision_moves_the_whole_label(first_run, tmp_path):
    manifest, _, first = first_run
    audit = first.audit
    sizes = audit["label"].value_counts()
    label = sizes.index[-1]
    rows = np.flatnonzero((audit["label"] == label).to_numpy())
    decisions = tmp_path / "decisions.csv"
    pd.DataFrame({"path": [audit["path"].iat[rows[0]]], "decision": ["merge"], "label": ["id_target"]}).to_csv(decisions, index=False)
    after = fc.clean(manifest, stages=(), decisions=decisions).audit
    assert (after["fc_label"].iloc[rows] == "id_target").all() and (after["fc_action"].iloc[rows] == "merge").all()
    assert (after["fc_source"].iloc[rows] == "person").all()
    assert (after["fc_source"] == "person").sum() == len(rows)


@pytest.mark.parametrize("text, where", [
    ("path,decision\nimg/00001.jpg,burn\n", "row 1, column 'decision'"),
    ("path,decision,label\nimg/00001.jpg,keep,\nimg/00002.jpg,relabel,\n", "row 2, column 'label'"),
    ("path,verdict\nimg/00001.jpg,keep\n", "missing column 'decision'"),
    ("", "decisions file is empty"),
])
def test_bad_decisions_exit_2_and_write_nothing(small_set, tmp_path, text, where):
    bad = tmp_path / "decisions.csv"
    bad.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["clean", str(small_set), "--out", str(out), "--decisions", str(bad), "-q"])
    assert result.exit_code == 2
    assert str(bad) in result.output and where in result.output
    assert not out.exists()


def test_decisions_reader_keeps_the_last_decision_per_path(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("path,decision,label,note,timestamp\na.jpg,drop,,,1\nb.jpg,merge,x,,2\na.jpg,keep,,,3\n", encoding="utf-8")
    got = read_decisions(path)
    assert got.table[["path", "decision"]].values.tolist() == [["b.jpg", "merge"], ["a.jpg", "keep"]]
    assert got.superseded == 1


def test_manifest_text_is_inert_and_no_image_outside_the_root_is_linked(tmp_path):
    x, y = make_faces(300, 20, 32, seed=9)
    noisy = inject_noise(x, y, seed=9)
    names = label_names(noisy.labels).astype(object)
    names[noisy.labels == noisy.labels[0]] = "</script><script>alert(1)</script>"
    manifest = write_set(tmp_path / "in", noisy.embeddings, names)
    frame = pd.read_csv(manifest, dtype=str)
    frame.loc[0, "path"] = "../../outside.jpg"
    frame.loc[1, "path"] = "/etc/passwd"
    frame.to_csv(manifest, index=False)
    result = fc.clean(manifest, out_dir=tmp_path / "out", stages=())
    page = (tmp_path / "out" / "review.html").read_text(encoding="utf-8")
    assert "</script><script>alert" not in page and page.count("</script>") == 2
    data = review_data(result, tmp_path / "out")
    for row in ("0", "1"):
        if row in data["images"]:
            assert data["images"][row][1] == "", "a path outside the image root gets no link"
    inside = [src for _, src in data["images"].values() if src]
    assert inside and all(src.startswith("../in/img/") for src in inside)


@pytest.mark.slow
def test_review_page_in_headless_chromium(first_run, tmp_path):
    from PIL import Image

    sync_api = _browser()
    _, out, result = first_run
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(accept_downloads=True, viewport={"width": 1200, "height": 1400})
            page.goto((out / "review.html").as_uri())
            page.wait_for_selector(".card.focus")
            page.select_option("#issue", "outlier")
            cards = page.locator(".card")
            assert cards.count() >= 3
            outliers = [int(c) for c in cards.evaluate_all("els => els.map(e => e.dataset.card)")][:3]
            page.keyboard.press("a")       # accept: drop the outlier
            page.keyboard.press("x")       # reject: keep it under its label
            page.once("dialog", lambda dialog: dialog.accept("id_checked_by_hand"))
            page.keyboard.press("r")       # relabel to a name typed in
            page.wait_for_function("document.getElementById('decided').textContent.startsWith('3 ')")
            page.screenshot(path=str(ARTIFACTS / "review.png"), full_page=False)
            with page.expect_download() as download:
                page.click("#export")
            exported = pd.read_csv(download.value.path(), dtype=str, keep_default_na=False)
        finally:
            browser.close()
    data = review_data(result, out)
    rows = [data["cards"][i]["rows"][0] for i in outliers]
    paths = [result.audit["path"].iat[r] for r in rows]
    assert exported.columns.tolist() == ["path", "decision", "label", "note", "timestamp"]
    assert exported[["path", "decision", "label"]].values.tolist() == [
        [paths[0], "drop", ""], [paths[1], "keep", ""], [paths[2], "relabel", "id_checked_by_hand"]]
    exported.to_csv(tmp_path / "decisions.csv", index=False)
    assert len(read_decisions(tmp_path / "decisions.csv").table) == 3, "the export is what --decisions reads"
    shot = np.asarray(Image.open(ARTIFACTS / "review.png").convert("L"), dtype=np.float32)
    assert shot.std() > 10, "the page drew cards and thumbnails, not a blank screen"


@pytest.mark.slow
def test_review_page_opens_fast_on_the_real_protocol(real_set, tmp_path):
    # the largest real protocol set here (5,128 rows with the web noise mix; its long-tailed
    # version has 679)
    sync_api = _browser()
    from facecluster.bench import bench_set

    noisy = bench_set(manifest=real_set / "manifest.csv", embeddings=real_set / "embeddings.npy", seed=0)
    manifest = write_set(tmp_path / "in", noisy.embeddings, label_names(noisy.labels))
    fc.clean(manifest, out_dir=tmp_path / "out")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            start = time.perf_counter()
            page.goto((tmp_path / "out" / "review.html").as_uri())
            page.wait_for_selector(".card.focus")
            seconds = time.perf_counter() - start
        finally:
            browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "review-open-seconds.json").write_text(json.dumps({"rows": len(noisy.labels), "seconds": seconds}))
    assert seconds < 2.0, f"review.html took {seconds:.2f} s to show its first card"


def _audit(rows):
    frame = pd.DataFrame(rows, columns=["path", "label", "fc_action", "fc_label", "fc_issue"])
    frame["fc_score"], frame["fc_reason"], frame["fc_source"] = 0.5, "", "algorithm"
    return frame


def test_a_merge_decision_leaves_dropped_rows_out_and_follows_the_algorithms_labels(tmp_path):
    from facecluster.relabel import apply_decisions

    audit = _audit([["a", "L", "keep", "L", "duplicate_identity"], ["b", "L", "dedupe", "", "near_duplicate"],
                    ["c", "L", "drop", "", "outlier"], ["d", "K", "relabel", "L", "mislabeled"],
                    ["e", "L", "relabel", "K", "mislabeled"], ["f", "L", "keep", "L", ""]])
    path = tmp_path / "d.csv"
    path.write_text("path,decision,label\na,merge, M \n", encoding="utf-8")
    after, summary = apply_decisions(audit, read_decisions(path), "path", "label")
    assert after["fc_label"].tolist() == ["M", "", "", "M", "K", "M"], "the label is stripped; drops stay dropped"
    assert after["fc_action"].tolist() == ["merge", "dedupe", "drop", "merge", "relabel", "merge"]
    assert after["fc_source"].tolist() == ["person", "algorithm", "algorithm", "person", "algorithm", "person"]


def test_merge_decisions_chain_and_a_cycle_is_refused(tmp_path):
    """A into B and B into C: A's rows end in C, as the algorithm's merge groups do. A into B
    and B into A says two things at once (it had swapped the two labels): refused."""
    from facecluster.errors import InputError
    from facecluster.relabel import apply_decisions

    audit = _audit([["a", "A", "keep", "A", ""], ["a2", "A", "keep", "A", ""], ["b", "B", "keep", "B", ""],
                    ["c", "C", "keep", "C", ""]])
    path = tmp_path / "d.csv"
    path.write_text("path,decision,label\na,merge,B\nb,merge,C\n", encoding="utf-8")
    after, _ = apply_decisions(audit, read_decisions(path), "path", "label")
    assert after["fc_label"].tolist() == ["C", "C", "C", "C"]
    # a person's relabel into a label a person merges away follows the merge
    path.write_text("path,decision,label\nc,relabel,A\na,merge,B\n", encoding="utf-8")
    after, _ = apply_decisions(audit, read_decisions(path), "path", "label")
    assert after["fc_label"].tolist() == ["B", "B", "B", "B"] and after["fc_action"][3] == "relabel"
    path.write_text("path,decision,label\na,merge,B\nb,merge,A\n", encoding="utf-8")
    with pytest.raises(InputError, match="cycle: (A into B into A|B into A into B)"):
        apply_decisions(audit, read_decisions(path), "path", "label")
    # a merge into the row's own label is no cycle (it moves nothing); nor is a path the
    # manifest lists under two labels, merged into one of them
    path.write_text("path,decision,label\na,merge,A\n", encoding="utf-8")
    after, _ = apply_decisions(audit, read_decisions(path), "path", "label")
    assert after["fc_label"].tolist() == ["A", "A", "B", "C"]
    twice = _audit([["a", "A", "keep", "A", ""], ["a", "B", "keep", "B", ""], ["b", "B", "keep", "B", ""],
                    ["c", "A", "keep", "A", ""]])
    path.write_text("path,decision,label\na,merge,B\n", encoding="utf-8")
    after, _ = apply_decisions(twice, read_decisions(path), "path", "label")
    assert after["fc_label"].tolist() == ["B", "B", "B", "B"]


def test_a_merge_cycle_is_refused_before_any_work(tmp_path, monkeypatch):
    import facecluster.pipeline as pipeline
    from facecluster.errors import InputError
    from facecluster.synth import make_faces

    x, y = make_faces(60, 6, 16, seed=0)
    manifest = pd.DataFrame({"path": [f"p{i}" for i in range(60)], "label": [f"id{v}" for v in y]})
    a, b = manifest.path[manifest.label == "id1"].iloc[0], manifest.path[manifest.label == "id2"].iloc[0]
    path = tmp_path / "d.csv"
    path.write_text(f"path,decision,label\n{a},merge,id2\n{b},merge,id1\n", encoding="utf-8")

    def no_graph(*args, **kwargs):
        raise AssertionError("the kNN graph was built before the decisions were judged")

    monkeypatch.setattr(pipeline, "build_knn_graph", no_graph)
    with pytest.raises(InputError, match="cycle"):
        fc.clean(manifest, x, decisions=path, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_path_listed_twice_is_decided_on_both_rows(tmp_path):
    from facecluster.relabel import apply_decisions

    audit = _audit([["a", "L", "keep", "L", "outlier"], ["b", "L", "keep", "L", ""], ["a", "L", "keep", "L", "outlier"]])
    path = tmp_path / "d.csv"
    path.write_text("path,decision\na,drop\n", encoding="utf-8")
    after, summary = apply_decisions(audit, read_decisions(path), "path", "label")
    assert after["fc_action"].tolist() == ["drop", "keep", "drop"] and summary["rows_by_person"] == 2
    assert review_queue(after, "label").empty


def test_a_decision_with_spaces_around_it_still_needs_its_label(tmp_path):
    """" relabel " is the decision relabel, so it is refused without a label like "relabel" is
    (it had passed the check and written an empty label into cleaned.csv)."""
    from facecluster.errors import InputError

    for decision in (" relabel ", "merge "):
        path = tmp_path / "d.csv"
        path.write_text(f"path,decision,label\na,{decision},\n", encoding="utf-8")
        with pytest.raises(InputError, match="needs the label") as err:
            read_decisions(path)
        assert err.value.row == 1 and err.value.column == "label"


def test_a_decisions_file_that_is_not_utf8_names_the_byte_and_row(tmp_path):
    from facecluster.errors import InputError

    good = "path,decision,label,note,timestamp\n" + "a.jpg,drop,,,\n" * 3000
    path = tmp_path / "d.csv"
    path.write_bytes(good.encode() + b"b.jpg,relabel,Jos\xe9,,\n")
    with pytest.raises(InputError) as err:
        read_decisions(path)
    assert err.value.row == 3001 and f"at byte {len(good.encode()) + 17}" in str(err.value)
    # CR-only line endings count as line ends too
    path.write_bytes(good.replace("\n", "\r").encode() + b"b.jpg,relabel,Jos\xe9,,\r")
    with pytest.raises(InputError) as err:
        read_decisions(path)
    assert err.value.row == 3001


def test_a_path_with_spaces_around_it_is_decided_as_the_manifest_writes_it(tmp_path):
    """The manifest keeps " a.jpg" verbatim, and review.html's export writes it unquoted: the
    decision matches it. A hand-written path with stray spaces matches the one manifest path
    with the same text."""
    from facecluster.relabel import apply_decisions

    audit = _audit([[" a.jpg", "L", "keep", "L", "outlier"], ["b.jpg ", "L", "keep", "L", ""],
                    ["c.jpg", "L", "keep", "L", ""]])
    path = tmp_path / "d.csv"
    path.write_text("path,decision\n a.jpg,drop\nb.jpg ,drop\n c.jpg ,drop\n", encoding="utf-8")
    after, summary = apply_decisions(audit, read_decisions(path), "path", "label")
    assert after["fc_action"].tolist() == ["drop", "drop", "drop"] and summary["unknown_paths"] == 0
    # a path written both ways is one decision, the later: the other is counted as superseded
    path.write_text("path,decision\nc.jpg,keep\n c.jpg ,drop\n", encoding="utf-8")
    after, summary = apply_decisions(audit, read_decisions(path), "path", "label")
    assert after["fc_action"].tolist() == ["keep", "keep", "drop"] and summary["superseded"] == 1


def test_a_custom_policy_writes_the_review_page(small_set, tmp_path):
    from facecluster.relabel import Policy

    fc.clean(small_set, out_dir=tmp_path / "out", stages=(), policy=Policy("mine", 0.7, 0.6, 0.5, None))
    page = (tmp_path / "out" / "review.html").read_text(encoding="utf-8")
    assert '"policy":"mine"' in page
