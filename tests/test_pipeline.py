"""The pipeline: settings flow to every stage, and tiny or degenerate sets end cleanly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import facecluster as fc
import facecluster.camsoftmax as camsoftmax_module
import facecluster.metrics
import facecluster.pipeline as pipeline
from cli.main import app
from facecluster.camsoftmax import CamSoftmaxConfig
from facecluster.correlation import CorrelationConfig
from facecluster.findings import FindingsConfig
from facecluster.hierarchical import HierarchicalConfig

from .conftest import write_set


def _spy(monkeypatch, module, name, record, key):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        rng = kwargs.get("rng", kwargs.get("seed"))
        record[key] = dict(kwargs, rng_state=getattr(getattr(rng, "bit_generator", None), "state", None))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_seed_and_device_are_decided_once_and_reach_every_stage(monkeypatch, small_set):
    seen: dict = {}
    resolved = []
    real_resolve = pipeline.resolve_device
    monkeypatch.setattr(pipeline, "resolve_device", lambda req: resolved.append(req) or real_resolve(req))
    _spy(monkeypatch, pipeline, "build_knn_graph", seen, "knn")
    _spy(monkeypatch, pipeline, "fit_calibration", seen, "calibration")
    _spy(monkeypatch, pipeline, "hierarchical_stage", seen, "hierarchical")
    _spy(monkeypatch, pipeline, "correlation_stage", seen, "correlation")
    _spy(monkeypatch, camsoftmax_module, "camsoftmax_confidence", seen, "camsoftmax")
    config = fc.CleanConfig(seed=7, device="cpu", camsoftmax=CamSoftmaxConfig(epochs=1))
    result = fc.clean(small_set, config=config)

    assert resolved == ["cpu"], "the device is resolved once per run"
    assert seen["knn"]["device"] is seen["camsoftmax"]["device"] and seen["knn"]["device"].kind == "cpu"
    expected = pipeline.stage_generators(7)
    for stage in ("calibration", "hierarchical", "correlation", "camsoftmax"):
        assert seen[stage]["rng_state"] == expected[stage].bit_generator.state, stage
    other = pipeline.stage_generators(8)["camsoftmax"].bit_generator.state
    assert seen["camsoftmax"]["rng_state"] != other
    stats = result.report["stages"]["camsoftmax"]
    assert stats["device"] == "cpu" and stats["config"]["epochs"] == 1 and len(stats["loss_first_last"]) == 2


def test_same_seed_same_audit_other_seed_other_camsoftmax(small_set):
    config = fc.CleanConfig(seed=3, device="cpu", camsoftmax=CamSoftmaxConfig(epochs=1, folds=2))
    a, b = fc.clean(small_set, config=config), fc.clean(small_set, config=config)
    pd.testing.assert_frame_equal(a.audit, b.audit)
    c = fc.clean(small_set, config=fc.CleanConfig(seed=4, device="cpu", camsoftmax=config.camsoftmax))
    assert not np.array_equal(a.signals.camsoftmax.p_given, c.signals.camsoftmax.p_given)


def test_each_stage_takes_its_own_settings(small_set):
    config = fc.CleanConfig(device="cpu", stages=("hierarchical", "correlation"),
                            hierarchical=HierarchicalConfig(threshold=0.4),
                            correlation=CorrelationConfig(bias=0.5, non_edges="neutral"),
                            findings=FindingsConfig(report_floor=0.9))
    stages = fc.clean(small_set, config=config).report["stages"]
    assert stages["hierarchical"]["threshold"] == 0.4 and stages["hierarchical"]["threshold_source"] == "user"
    assert stages["correlation"]["bias"] == 0.5 and stages["correlation"]["bias_source"] == "user"
    assert stages["correlation"]["signed_graph"]["non_edges"] == "neutral"
    assert stages["findings"]["report_floor"] == 0.9


def test_one_calibration_is_fitted_and_reported(monkeypatch, small_set):
    calls = []
    real = pipeline.fit_calibration
    monkeypatch.setattr(pipeline, "fit_calibration", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = fc.clean(small_set, device="cpu", stages=("hierarchical", "correlation"))
    assert len(calls) == 1
    report = result.report["stages"]
    assert report["calibration"]["kind"] == "isotonic"
    assert report["correlation"]["signed_graph"]["calibration_pairs"] == report["calibration"]["n_pairs"]


def test_a_bad_stage_setting_is_refused_when_the_config_is_made():
    with pytest.raises(ValueError, match="non_edges"):
        CorrelationConfig(non_edges="maybe")
    with pytest.raises(ValueError, match="correlation must be a CorrelationConfig"):
        fc.CleanConfig(correlation={"bias": 1.0})
    with pytest.raises(ValueError, match="report_floor"):
        FindingsConfig(report_floor=0.0)


# --------------------------------------------------------------------------- tiny and degenerate sets


def _tiny(tmp_path, labels, seed=0):
    x = np.random.default_rng(seed).standard_normal((len(labels), 16))
    return write_set(tmp_path / "in", x, labels)


def test_a_one_row_set_is_refused_with_one_line_and_exit_2(tmp_path):
    path = _tiny(tmp_path, ["a"])
    for command in (["clean", str(path)], ["cluster", str(path)]):
        out = tmp_path / command[0]
        result = CliRunner().invoke(app, [*command, "--out", str(out), "-q"])
        assert result.exit_code == 2, result.output
        assert "at least 2" in result.output and len(result.output.strip().splitlines()) == 1
        assert not out.exists()
    with pytest.raises(fc.InputError, match="at least 2"):
        fc.clean(path)


@pytest.mark.parametrize("labels", [["a", "b"], ["a", "a"], ["a", "a", "b"], ["x"] * 12, list("abcdefgh")],
                         ids=["two-rows-two-labels", "two-rows-one-label", "three-rows", "one-identity",
                              "all-singletons"])
def test_tiny_and_one_identity_sets_give_a_sound_result(tmp_path, labels):
    path = _tiny(tmp_path, labels)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["clean", str(path), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    audit = pd.read_csv(out / "audit.csv", dtype=str, keep_default_na=False)
    assert len(audit) == len(labels)
    # random vectors and labels this small: nothing can be judged, so nothing is acted on
    assert set(audit.fc_action) == {"keep"} and (audit.fc_label == audit.label).all()
    assert set(audit.fc_issue) <= {"", "review"}
    sizes = audit.label.map(audit.label.value_counts())
    assert (audit.fc_reason[sizes <= 2].str.startswith("review: cannot tell") | (audit.fc_reason[sizes <= 2] == "")).all()
    for method in ("average", "finch", "correlation"):
        clustered = CliRunner().invoke(app, ["cluster", str(path), "--out", str(tmp_path / method), "--method", method,
                                             "-q"])
        assert clustered.exit_code == 0, clustered.output
        table = pd.read_csv(tmp_path / method / "clusters.csv")
        assert len(table) == len(labels) and table.fc_cluster.min() == 0


def test_a_set_of_one_repeated_vector_is_one_group_of_copies():
    """Every row the same vector (a detector's fallback box on every photo): no genuine
    distance to fit the near-duplicate laws to, so the identical vectors are one group of
    copies and nothing else is claimed; no crash."""
    x = np.tile(np.random.default_rng(0).standard_normal(16), (80, 1)).astype(np.float32)
    manifest = pd.DataFrame({"path": [f"{i}.jpg" for i in range(80)], "label": [f"p{i % 4}" for i in range(80)]})
    result = fc.clean(manifest, x, centre=False, device="cpu")
    stats = result.signals.duplicates.stats
    assert stats["cut"].startswith("identical only") and stats["n_groups"] == 1 and stats["n_samples_in_groups"] == 80
    assert result.report["counts"]["issues"]["near_duplicate"] == 79


def test_finch_can_be_the_hierarchical_evidence_inside_clean(small_set):
    result = fc.clean(small_set, device="cpu", stages=("hierarchical",),
                      hierarchical=HierarchicalConfig(method="finch"))
    stage = result.report["stages"]["hierarchical"]
    assert stage["method"] == "finch" and stage["level_source"].startswith("best pairwise F")
    part = result.signals.hierarchical
    assert stage["n_clusters"] == part.n_clusters and part.labels is part.detail[stage["level"]]
    scores = [fc.metrics.pairwise_scores(result.faceset.labels, p)["f"] for p in part.detail]
    assert stage["agreement_with_labels"]["pairwise_f"] == pytest.approx(max(scores))
