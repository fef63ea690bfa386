"""`facecluster cluster`: unlabelled faces in, clusters.csv + report.json out."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import facecluster as fc
from cli.main import app
from facecluster.metrics import clustering_scores
from facecluster.synth import make_faces

from .conftest import write_set


@pytest.fixture
def unlabelled(tmp_path):
    x, y = make_faces(900, 60, 48, seed=9)
    path = write_set(tmp_path / "in", x, y)
    frame = pd.read_csv(path, dtype=str).drop(columns=["label"])
    frame["camera"] = "c1"
    frame.to_csv(path, index=False)
    return path, y


def test_cluster_writes_the_table_and_report(tmp_path, unlabelled):
    path, y = unlabelled
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["cluster", str(path), "--out", str(out), "--k", "15"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "clusters.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["path", "camera", "fc_cluster", "fc_cluster_size", "fc_score"]
    assert table.path.tolist() == pd.read_csv(path, dtype=str).path.tolist()
    clusters = table.fc_cluster.astype(int).to_numpy()
    sizes = np.bincount(clusters)
    assert (table.fc_cluster_size.astype(int).to_numpy() == sizes[clusters]).all()
    score = table.fc_score.astype(float)
    assert ((score >= 0) & (score <= 1)).all() and (score[sizes[clusters] == 1] == 0).all()
    report = json.loads((out / "report.json").read_text())
    stage = report["stages"]["clustering"]
    assert stage["method"] == "correlation" and stage["bias_source"] == "default (no labels)"
    assert stage["signed_graph"]["shared_neighbours"]["calibration"] == "mixture"
    assert clustering_scores(y, clusters)["bcubed_f"] > 0.8


def test_average_linkage_cut_from_the_data_without_labels(tmp_path, unlabelled):
    path, y = unlabelled
    result = fc.cluster(path, method="average", k=15)
    stage = result.report["stages"]["clustering"]
    assert stage["threshold_source"].startswith("two-component")
    assert clustering_scores(y, result.clusters.fc_cluster.to_numpy())["bcubed_f"] > 0.8


def test_labels_guide_the_cut_when_given(small_set):
    result = fc.cluster(small_set, method="average", label_col="label", k=15)
    stage = result.report["stages"]["clustering"]
    assert stage["threshold_source"].startswith("best pairwise F") and stage["threshold_curve"]
    assert stage["agreement_with_labels"]["pairwise_f"] > 0.9


def test_finch_method_and_level(small_set):
    result = fc.cluster(small_set, method="finch", k=15)
    stage = result.report["stages"]["clustering"]
    assert stage["level"] == 0 and stage["clusters_per_level"][0] == stage["n_clusters"]
    coarse = fc.cluster(small_set, method="finch", level=1, k=15)
    assert coarse.report["stages"]["clustering"]["n_clusters"] < stage["n_clusters"]


def test_cluster_bad_input_exits_2_and_writes_nothing(tmp_path, unlabelled):
    path, _ = unlabelled
    np.save(path.with_suffix(".npy"), np.zeros((900, 48), dtype=np.float32))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["cluster", str(path), "--out", str(out), "-q"])
    assert result.exit_code == 2 and "all-zero" in result.output
    assert not out.exists()
    missing = CliRunner().invoke(app, ["cluster", str(path), "--label-col", "person", "-q"])
    assert missing.exit_code == 2 and "missing column 'person'" in missing.output


@pytest.mark.parametrize("name", ["centred", "offset"])
def test_correlation_method_finds_the_people_behind_noisy_labels(noisy_sets, name, tmp_path):
    noisy = noisy_sets[name]
    path = write_set(tmp_path / name, noisy.embeddings, noisy.labels)
    true_person = noisy.truth["true_person"].to_numpy()
    result = fc.cluster(path, method="correlation", label_col="label", k=20)
    stage = result.report["stages"]["clustering"]
    assert stage["bias_source"].startswith("best pairwise F") and len(stage["bias_curve"]) >= 3
    assert stage["objective_refined"] <= stage["objective_gaec"] + 1e-6
    assert stage["signed_graph"]["non_edges"] == "bound"
    # the partition is closer to the people than the noisy labels it was tuned on
    ours = clustering_scores(true_person, result.labels)["pairwise_f"]
    given = clustering_scores(true_person, noisy.labels)["pairwise_f"]
    assert ours > given and ours > 0.9
    unlabelled = fc.cluster(path, method="correlation", bias=0.5, k=20)
    assert unlabelled.report["stages"]["clustering"]["bias_source"] == "user"
    assert clustering_scores(true_person, unlabelled.labels)["bcubed_f"] > 0.8


def test_correlation_from_the_command_line(tmp_path, unlabelled):
    path, y = unlabelled
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["cluster", str(path), "--out", str(out), "--k", "15", "--method", "correlation"])
    assert result.exit_code == 0, result.output
    assert "objective" in result.output
    clusters = pd.read_csv(out / "clusters.csv").fc_cluster.to_numpy()
    assert clustering_scores(y, clusters)["bcubed_f"] > 0.8


def test_a_setting_of_another_method_is_refused_not_ignored(tmp_path, unlabelled):
    path, _ = unlabelled
    result = CliRunner().invoke(app, ["cluster", str(path), "--threshold", "0.5", "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2 and "threshold applies to method 'average' only" in result.output
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="level applies to method 'finch'"):
        fc.ClusterConfig(method="average", level=1)
    assert fc.ClusterConfig(method="average", threshold=0.5).threshold == 0.5
