"""The library's input contract: what a data-curation pipeline passes in wrong is refused
with a message naming it, before any work, never taken silently or read out of bounds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import facecluster as fc
from facecluster.errors import InputError
from facecluster.faceset import prepare_embeddings
from facecluster.knn import KnnGraph
from facecluster.synth import label_names, make_faces


@pytest.fixture(scope="module")
def faces():
    x, y = make_faces(120, 12, 16, seed=3)
    return x, y


@pytest.fixture(scope="module")
def graph(faces):
    return fc.graph_from_vectors(faces[0], 10, device="cpu")


def _broken(graph: KnnGraph, how: str) -> KnnGraph:
    idx, sims = graph.indices.copy(), graph.sims.copy()
    if how == "out of range":
        idx[7, 3] = graph.n_samples + 5
    elif how == "itself":
        idx[7, 0] = 7
    else:
        sims[7, 2] = np.nan
    return KnnGraph(idx, sims, dict(graph.info))


@pytest.mark.parametrize("how, words", [("out of range", "out of range"), ("itself", "its own neighbour"),
                                        ("nan", "not finite")])
@pytest.mark.parametrize("estimator", [fc.GraphAverageLinkage, fc.FINCH, fc.CorrelationClustering])
def test_a_broken_graph_is_refused_by_row(graph, faces, how, words, estimator):
    # a neighbour index past the end was written through by a compiled kernel (a crash,
    # or memory corrupted); a row listing itself read as a perfect match
    with pytest.raises(InputError, match=words) as err:
        estimator().fit(_broken(graph, how), faces[1])
    assert err.value.row == 8


def test_compute_signals_refuses_codes_past_n_labels(graph, faces):
    codes = faces[1].astype(np.int64)
    with pytest.raises(ValueError, match="n_labels"):
        fc.compute_signals(graph, codes, int(codes.max()), fc.CleanConfig(device="cpu", stages=()))
    with pytest.raises(ValueError, match="integer codes"):
        fc.compute_signals(graph, codes[:-1], None, fc.CleanConfig(device="cpu", stages=()))


@pytest.mark.parametrize("x, words", [
    (np.full((6, 4), 0.5, dtype=np.float32) * 3, "norm 3"),
    (np.vstack([np.eye(4, dtype=np.float32), [[np.nan, 0, 0, 0]]]), "row 5 of x is not finite"),
    (np.ones(6, dtype=np.float32), "2-D"),
])
def test_build_knn_graph_takes_unit_rows_only(x, words):
    # inner products of raw vectors are not cosines: every similarity cut downstream would
    # read them as such
    with pytest.raises(ValueError, match=words):
        fc.build_knn_graph(x, 2, device="cpu")


@pytest.mark.parametrize("k", [2.5, True, "10"])
def test_build_knn_graph_refuses_a_k_that_is_not_whole(faces, k):
    unit, _, _ = prepare_embeddings(faces[0])
    with pytest.raises(ValueError, match="whole number"):
        fc.build_knn_graph(unit, k, device="cpu")


@pytest.mark.parametrize("missing", [np.nan, None])
@pytest.mark.parametrize("estimator", [fc.GraphAverageLinkage, fc.FINCH, fc.CorrelationClustering])
def test_missing_labels_are_refused_not_one_identity(graph, faces, missing, estimator):
    # np.unique folds every NaN into one class: half the set unlabelled became one person
    y = np.asarray(faces[1], dtype=object if missing is None else float)
    y[::2] = missing
    with pytest.raises(InputError, match="missing label") as err:
        estimator().fit(graph, y)
    assert err.value.row == 1


def test_labels_of_two_kinds_are_refused_by_name(graph):
    y = np.array([1, "a"] * (graph.n_samples // 2), dtype=object)
    with pytest.raises(InputError, match="one kind"):
        fc.GraphAverageLinkage().fit(graph, y)


@pytest.mark.parametrize("table, words", [
    ({"path": ["a"], "decision": ["Drop"]}, "decision must be one of"),
    ({"path": ["a"], "decision": ["merge"], "label": [np.nan]}, "needs the label to merge into"),
    ({"path": ["a"], "decision": ["relabel"], "label": [None]}, "needs the label to relabel"),
    ({"path": [""], "decision": ["keep"]}, "empty path"),
    ({"decision": ["keep"]}, "missing column 'path'"),
])
def test_hand_built_decisions_are_checked_as_a_file_is(table, words):
    # an unknown decision was applied as a merge into an empty label
    with pytest.raises(InputError, match=words):
        fc.Decisions(pd.DataFrame(table), "my pipeline")


def test_hand_built_decisions_are_normalised():
    d = fc.Decisions(pd.DataFrame({"path": ["a", "b", "a"], "decision": ["keep", " relabel ", "drop"],
                                   "label": [None, " x ", 5]}), "my pipeline")
    assert list(d.table.columns) == ["path", "decision", "label", "note", "timestamp"]
    assert d.table.to_dict("list") == {"path": ["b", "a"], "decision": ["relabel", "drop"], "label": ["x", "5"],
                                       "note": ["", ""], "timestamp": ["", ""]}
    assert d.superseded == 1


def test_a_hand_built_drop_is_applied(faces):
    x, y = faces
    manifest = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(len(y))], "label": label_names(y)})
    decisions = fc.Decisions(pd.DataFrame({"path": ["img/4.jpg"], "decision": ["drop"]}), "my pipeline")
    result = fc.clean(manifest, x, fc.CleanConfig(device="cpu", stages=()), decisions=decisions)
    assert "img/4.jpg" not in set(result.cleaned["path"])
    assert result.audit.loc[4, "fc_action"] == "drop"


@pytest.mark.parametrize("value", ["no", "yes", "false", 0, 1, None])
def test_centre_is_true_false_or_auto(faces, value):
    # bool("no") is True: "no" centred the vectors
    with pytest.raises(ValueError, match="centre must be"):
        prepare_embeddings(faces[0], centre=value)
    with pytest.raises(ValueError, match="centre must be"):
        fc.CleanConfig(centre=value)
    with pytest.raises(ValueError, match="centre must be"):
        fc.ClusterConfig(centre=value)


@pytest.mark.parametrize("field, value, words", [
    ("k", 2.5, "whole number"), ("k", True, "whole number"), ("k", 0, "at least 1"),
    ("seed", None, "reproducible"), ("seed", -1, "at least 0"), ("seed", 1.0, "whole number"),
    ("memory_budget", [6], "number of bytes"), ("memory_budget", "lots", "memory size"),
])
def test_configs_refuse_settings_they_would_take_silently(field, value, words):
    with pytest.raises(ValueError, match=words):
        fc.CleanConfig(**{field: value})
    if field != "memory_budget":
        with pytest.raises(ValueError, match=words):
            fc.ClusterConfig(**{field: value})


def test_config_reads_sizes_and_a_single_stage_as_the_cli_does():
    config = fc.CleanConfig(memory_budget="6G", stages="camsoftmax")
    assert config.memory_budget == 6 << 30
    assert config.stages == ("camsoftmax",)


def test_clean_without_a_label_column_is_refused_before_any_work():
    with pytest.raises(ValueError, match="clean needs labels"):
        fc.CleanConfig(label_col=None)


def test_a_bad_output_folder_is_refused_before_any_work_for_tables_too(faces, tmp_path, monkeypatch):
    x, y = faces
    manifest = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(len(y))], "label": label_names(y)})
    (tmp_path / "afile").write_text("x")

    def no_graph(*args, **kwargs):
        raise AssertionError("the kNN graph was built before the output folder was checked")

    monkeypatch.setattr("facecluster.pipeline.build_knn_graph", no_graph)
    with pytest.raises(InputError, match="is a file"):
        fc.clean(manifest, x, fc.CleanConfig(device="cpu"), out_dir=tmp_path / "afile" / "out")


def test_a_budget_refusal_names_the_array_not_its_values(faces):
    x, y = faces
    manifest = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(len(y))], "label": label_names(y)})
    with pytest.raises(InputError) as err:
        fc.clean(manifest, x, fc.CleanConfig(device="cpu", memory_budget=10_000))
    assert str(err.value.file) == "<embeddings>"


@pytest.mark.parametrize("make, words", [
    (lambda: fc.HierarchicalConfig(threshold=5.0), "cosine in"),
    (lambda: fc.HierarchicalConfig(threshold=float("nan")), "cosine in"),
    (lambda: fc.HierarchicalConfig(method="finch", level=1.5), "whole number"),
    (lambda: fc.CamSoftmaxConfig(scale=-1.0), "scale must be > 0"),
    (lambda: fc.CamSoftmaxConfig(scale=0.0), "scale must be > 0"),
    (lambda: fc.CamSoftmaxConfig(n_negatives=-3), "n_negatives"),
    (lambda: fc.CamSoftmaxConfig(quantile=1.5), "quantile"),
    (lambda: fc.FindingsConfig(review_min_cluster=2.5), "review_min_cluster"),
    (lambda: fc.Policy("mine", relabel_min=2.0, drop_min=0.5, dedupe_min=0.5, merge_min=None), "relabel_min"),
    (lambda: fc.Policy("mine", relabel_min=0.7, drop_min=-1.0, dedupe_min=0.5, merge_min=None), "drop_min"),
    (lambda: fc.Policy("mine", relabel_min=0.7, drop_min=0.5, dedupe_min=float("nan"), merge_min=None), "dedupe_min"),
    (lambda: fc.Policy("mine", relabel_min=0.7, drop_min=0.5, dedupe_min=0.5, merge_min=1.5), "merge_min"),
])
def test_stage_settings_out_of_their_range_are_refused(make, words):
    # each was taken silently: a threshold of 5 made every row a cluster of its own, a policy
    # score of 2 never acted, one of -1 always did
    with pytest.raises(ValueError, match=words):
        make()


@pytest.mark.parametrize("dtype", ["string", "Int64", "float64"])
def test_a_nullable_label_column_with_gaps_is_refused(graph, faces, dtype):
    y = pd.Series(faces[1]).astype(dtype)
    y.iloc[3] = None
    with pytest.raises(InputError, match="missing label") as err:
        fc.CorrelationClustering().fit(graph, y)
    assert err.value.row == 4


@pytest.mark.parametrize("y, words", [
    (["1", 1, "2"] * 40, "one kind"),  # numpy made 1 the text "1": two labels merged
    (["a", None, "b"] * 40, "missing label"),
    (np.array(["2020-01-01", "NaT", "2020-01-02"] * 40, dtype="datetime64[D]"), "missing label"),
])
def test_labels_given_as_lists_or_dates_are_checked_too(graph, y, words):
    with pytest.raises(InputError, match=words):
        fc.GraphAverageLinkage().fit(graph, y)


def test_a_header_only_decisions_file_decides_nothing(tmp_path, faces):
    # review.html exports just the header when nothing was decided: that crashed the run
    x, y = faces
    manifest = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(len(y))], "label": label_names(y)})
    (tmp_path / "decisions.csv").write_text("path,decision,label,note,timestamp\n")
    decisions = fc.read_decisions(tmp_path / "decisions.csv")
    assert decisions.table.empty
    result = fc.clean(manifest, x, fc.CleanConfig(device="cpu", stages=()), decisions=decisions)
    assert (result.audit["fc_source"] != "person").all()


def test_hand_built_decisions_read_gaps_and_whole_numbers_as_a_file_does():
    import io

    table = pd.read_csv(io.StringIO("path,decision,label\na.jpg,relabel,\nb.jpg,relabel,7201\n"), dtype="string")
    with pytest.raises(InputError, match="needs the label to relabel"):
        fc.Decisions(table, "hand")
    numbers = pd.read_csv(io.StringIO("path,decision,label\na.jpg,keep,\nb.jpg,relabel,7201\n"))  # floats: 7201.0
    assert fc.Decisions(numbers, "hand").table["label"].tolist() == ["", "7201"]


@pytest.mark.parametrize("make, words", [
    (lambda: fc.CleanConfig(memory_budget=float("nan")), "memory_budget"),
    (lambda: fc.CleanConfig(memory_budget=True), "memory_budget"),
    (lambda: fc.Policy("mine", 0.7, 0.5, 0.5, None, quarantine="no"), "quarantine"),
])
def test_more_settings_taken_silently_before(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_a_policy_takes_numpy_scores():
    assert fc.Policy("mine", np.float32(0.7), np.float64(0.5), 0.5, None).relabel_min == np.float32(0.7)
