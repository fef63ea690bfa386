"""`facecluster bench`: every peer runs (or says why not) on a small set, in one process."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from facecluster import bench
from facecluster.bench import PEERS, PeakMemory, bench_set, run_bench


@pytest.fixture(scope="module")
def small_bench():
    noisy = bench_set(1500, dim=64, seed=5)
    return noisy, run_bench(noisy, peers=PEERS, k=15, seed=5)


@pytest.mark.slow
def test_every_peer_reports_quality_time_and_memory(small_bench):
    noisy, rows = small_bench
    by_name = {r.method.split(" ")[0]: r for r in rows if not r.method.startswith("facecluster ") or "clean" in r.method}
    ours = [r for r in rows if r.method.startswith("facecluster") and r.kind == "clusterer"]
    assert len(ours) == 3 and all(r.scores["pairwise_f"] > 0.5 for r in ours)
    assert {"facecluster", "cleanlab", "HDBSCAN", "FINCH", "agglomerative", "FAISS", "Infomap"} <= set(by_name)
    for row in rows:
        assert not row.note.startswith("failed"), row.note
        assert row.seconds is not None and row.seconds >= 0
    ours = by_name["facecluster"]
    assert ours.kind == "cleaner" and ours.peak_mb is not None
    for key in ("mislabeled_f1", "near_duplicate_f1", "merge_p", "kept_label_precision", "clean_rows_lost_share"):
        assert 0.0 <= ours.scores[key] <= 1.0
    assert ours.scores["mislabeled_f1"] > 0.8 and ours.scores["near_duplicate_f1"] > 0.9
    cleanlab = by_name["cleanlab"]
    assert 0.0 <= cleanlab.scores["mislabeled_f1"] <= 1.0
    for name in ("HDBSCAN", "FINCH", "agglomerative", "FAISS", "Infomap"):
        scores = by_name[name].scores
        assert 0.0 < scores["pairwise_f"] <= 1.0 and 0.0 < scores["bcubed_f"] <= 1.0
        assert scores["n_clusters"] >= 1


def test_peers_beyond_their_limits_are_skipped_with_a_note(monkeypatch):
    noisy = bench_set(600, dim=32, seed=1)
    monkeypatch.setitem(bench.PEER_LIMITS, "agglomerative", 100)
    rows = run_bench(noisy, peers=["agglomerative", "cleanlab"], k=10, memory_budget_gb=1e-6)
    notes = {r.method: r.note for r in rows}
    assert notes["agglomerative"].startswith("skipped: above 100")
    assert notes["cleanlab Datalab"].startswith("skipped: its N×K pred_probs")


def test_the_reviewed_outcome_decides_only_review_rows_as_the_truth_says():
    """clean_scores' *_reviewed figures: a person who knows the truth decides the review list
    (through apply_decisions) and nothing else."""
    import numpy as np
    import pandas as pd

    from facecluster.pipeline import CleanConfig, clean
    from facecluster.synth import label_names

    noisy = bench_set(800, dim=32, seed=2)
    names = label_names(noisy.labels)
    manifest = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(len(names))], "label": names})
    result = clean(manifest, noisy.embeddings, CleanConfig(k=10, seed=2))
    issue = noisy.truth["issue"].to_numpy().astype(str)
    # one row of each kind put on the review list by hand
    pick = {kind: int(np.flatnonzero(issue == kind)[0]) for kind in ("", "flip", "open_set", "near_duplicate")}
    audit = result.audit.copy()
    audit["fc_issue"] = audit["fc_issue"].replace("review", "")
    audit.loc[list(pick.values()), "fc_issue"] = "review"
    decided = bench.reviewed_audit(audit, noisy, bench._merge_truth(noisy))
    true_names = bench._true_label_names(noisy)
    assert decided.loc[pick[""], "fc_action"] == "keep" and decided.loc[pick[""], "fc_label"] == names[pick[""]]
    assert decided.loc[pick["flip"], "fc_action"] == "relabel"
    assert decided.loc[pick["flip"], "fc_label"] == true_names[pick["flip"]] != names[pick["flip"]]
    assert decided.loc[pick["open_set"], "fc_action"] == "drop"
    assert decided.loc[pick["near_duplicate"], "fc_action"] == "drop"
    person = decided["fc_source"] == "person"
    assert sorted(np.flatnonzero(person.to_numpy())) == sorted(pick.values())
    others = ~person
    assert decided.loc[others, ["fc_action", "fc_label"]].equals(audit.loc[others, ["fc_action", "fc_label"]])
    scores = bench.clean_scores(result, noisy)
    assert scores["kept_label_precision_reviewed"] >= scores["kept_label_precision"]


def test_peak_memory_sees_an_allocation():
    import numpy as np

    with PeakMemory() as mem:
        block = np.ones((64, 1 << 20), dtype=np.uint8)  # 64 MiB
        block[0, 0] = 2
    assert mem.peak_mb is None or mem.peak_mb >= 50


@pytest.mark.slow
def test_cli_bench_prints_tables_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--size", "800", "--dim", "32", "--peers", "kmeans,finch",
                                      "--scaling", "500,900", "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "Cleaning" in result.stdout and "Clustering" in result.stdout and "Scaling" in result.stdout
    payload = json.loads(out.read_text())
    assert payload["set"]["rows"] > 800 and len(payload["scaling"]) == 2
    for row in payload["scaling"]:  # each size: its stages' times and the cost per kNN edge
        assert row["edges"] == row["n"] * row["k"] and row["us_per_edge"] > 0
        assert {"knn", "correlation", "hierarchical", "camsoftmax", "total"} <= set(row["stage_seconds"])
        assert row["stage_seconds"]["knn"] <= row["seconds"]
    assert {r["method"].split(" ")[0] for r in payload["results"]} >= {"facecluster", "FINCH", "FAISS"}
    bad = CliRunner().invoke(app, ["bench", "--size", "800", "--peers", "nope"])
    assert bad.exit_code == 2


def test_bench_on_a_user_set(tmp_path, small_set):
    result = CliRunner().invoke(app, ["bench", "--manifest", str(small_set), "--peers", "none", "-q"])
    assert result.exit_code == 0, result.output
    assert "facecluster clean" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--json", "{tmp}/no/such/folder/b.json"], "does not exist"),
    (["--json", "{tmp}"], "names a folder"),
    (["--scaling", "0"], "at least 100 rows"),
    (["--offset", "nan"], "finite"),
    (["--effective-dim", "-3"], "above 0"),
    (["--memory-budget-gb", "-1"], "positive"),
    (["--embeddings", "{tmp}/x.npy"], "goes with --manifest"),
])
def test_bench_refuses_bad_options_in_one_line_before_any_work(tmp_path, monkeypatch, args, words):
    # each was a traceback, most after the whole run
    def no_run(*a, **k):
        raise AssertionError("the bench ran before its options were checked")

    monkeypatch.setattr("facecluster.bench.run_bench", no_run)
    result = CliRunner().invoke(app, ["bench", "--size", "300", "--dim", "16", "--peers", "none", "-q",
                                      *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and words in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bench_on_a_user_set_refuses_the_generators_options(small_set):
    # they were ignored, and the JSON recorded them as if they had shaped the set
    result = CliRunner().invoke(app, ["bench", "--manifest", str(small_set), "--size", "500", "--offset", "5",
                                      "--peers", "none", "-q"])
    assert result.exit_code == 2 and "--size, --offset shape the generated set" in result.output


def test_bench_on_a_user_set_takes_its_column_names(tmp_path, small_set):
    text = small_set.read_text().replace("path,label", "file,person", 1)
    (tmp_path / "named.csv").write_text(text)
    (tmp_path / "named.npy").write_bytes(small_set.with_suffix(".npy").read_bytes())
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", "--manifest", str(tmp_path / "named.csv"), "--path-col", "file",
                                      "--label-col", "person", "--peers", "none", "-q", "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["set"]["source"].endswith("named.csv") and "offset" not in payload["set"]
    noisy = bench_set(manifest=tmp_path / "named.csv", path_col="file", label_col="person")
    assert payload["set"]["identities"] == len(set(noisy.labels)) < len(set(pd.read_csv(tmp_path / "named.csv")["person"])), \
        "the labels the noisy set holds (open-set identities have none)"


def test_bench_prints_undefined_figures_as_undefined(tmp_path):
    # a precision over nothing found or a recall over nothing injected was printed 0.000
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", "--size", "300", "--dim", "16", "--peers", "none", "-q",
                                      "--json", str(out)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    ours = json.loads(out.read_text())["results"][0]["scores"]
    assert ours["merge_n_true"] == 0 and ours["merge_n_pred"] == 0, "this small set has no split to find"
    row = next(line for line in result.output.splitlines() if "facecluster clean" in line)
    assert "–/–" in row


def test_scaling_sets_are_drawn_with_the_mean_images_asked(monkeypatch):
    from facecluster import bench as B

    seen = []
    real = B.bench_set
    monkeypatch.setattr(B, "bench_set", lambda *a, **k: seen.append(k) or real(*a, **k))
    B.scaling([300], dim=16, mean_images=50.0, k=10)
    assert seen[0]["mean_images"] == 50.0
