"""Metrics on hand-computed cases, against scikit-learn, and their invariants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics.cluster import pair_confusion_matrix

from facecluster.metrics import (
    bcubed_scores,
    cleaning_scores,
    clustering_scores,
    issue_scores,
    merge_scores,
    nmi,
    pairwise_scores,
)


def test_pairwise_by_hand():
    # true: {0,1,2} {3,4}; pred: {0,1} {2,3,4}
    true = [0, 0, 0, 1, 1]
    pred = ["a", "a", "b", "b", "b"]
    # predicted pairs: (0,1) (2,3) (2,4) (3,4) = 4, of which same identity: (0,1) (3,4) = 2
    # true pairs: (0,1) (0,2) (1,2) (3,4) = 4, of which found: 2
    s = pairwise_scores(true, pred)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5) and s["f"] == pytest.approx(0.5)


def test_bcubed_by_hand():
    true = [0, 0, 0, 1, 1]
    pred = ["a", "a", "b", "b", "b"]
    # precision per sample: 0:2/2 1:2/2 2:1/3 3:2/3 4:2/3 -> (1+1+1/3+2/3+2/3)/5 = 11/15
    # recall per sample:    0:2/3 1:2/3 2:1/3 3:2/2 4:2/2 -> (2/3+2/3+1/3+1+1)/5 = 11/15
    s = bcubed_scores(true, pred)
    assert s["precision"] == pytest.approx(11 / 15) and s["recall"] == pytest.approx(11 / 15)


def test_perfect_and_degenerate_clusterings():
    true = np.array([0, 0, 1, 1, 2])
    assert clustering_scores(true, true)["pairwise_f"] == 1.0
    assert clustering_scores(true, true + 7)["bcubed_f"] == pytest.approx(1.0)
    singletons = clustering_scores(true, np.arange(5))
    assert singletons["pairwise_precision"] == 1.0 and singletons["pairwise_recall"] == 0.0
    assert singletons["bcubed_precision"] == 1.0
    one = clustering_scores(true, np.zeros(5))
    assert one["pairwise_recall"] == 1.0 and one["bcubed_recall"] == 1.0
    assert nmi(true, true) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=2, max_size=80))
def test_pairwise_matches_scikit_learn_pair_confusion_matrix(pairs):
    true, pred = map(np.array, zip(*pairs))
    (tn, fp), (fn, tp) = pair_confusion_matrix(true, pred)  # ordered pairs: every count doubled
    s = pairwise_scores(true, pred)
    assert s["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 1.0)
    assert s["recall"] == pytest.approx(tp / (tp + fn) if tp + fn else 1.0)
    b = bcubed_scores(true, pred)
    assert 0 < b["precision"] <= 1 and 0 < b["recall"] <= 1
    # BCubed precision/recall swap when true and predicted swap
    b2 = bcubed_scores(pred, true)
    assert b2["precision"] == pytest.approx(b["recall"]) and b2["recall"] == pytest.approx(b["precision"])


def test_issue_scores_by_hand():
    truth = pd.DataFrame({
        "issue": ["", "flip", "flip", "open_set", "", "near_duplicate", "split"],
        "duplicate_of": [-1, -1, -1, -1, -1, 0, -1],
    })
    pred = np.array(["mislabeled", "mislabeled", "", "outlier", "", "", "duplicate_identity"])
    s = issue_scores(pred, truth)
    assert s["mislabeled"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "n_pred": 2, "n_true": 2}
    assert s["outlier"]["precision"] == 1.0 and s["duplicate_identity"]["recall"] == 1.0
    assert s["near_duplicate"]["recall"] == 0.0
    # flagging either row of the injected pair counts
    pred[0] = "near_duplicate"
    assert issue_scores(pred, truth)["near_duplicate"]["recall"] == 1.0
    acted = issue_scores(pred, truth, acted=np.array([0, 1, 0, 0, 0, 0, 0], bool))
    assert acted["outlier"]["n_pred"] == 0 and acted["mislabeled"]["precision"] == 1.0


def test_merge_scores_follow_chains_and_ignore_direction():
    truth = [("b", "a"), ("c", "b")]
    s = merge_scores([("a", "b"), ("c", "a"), ("d", "a")], truth)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == 1.0


def test_cleaning_scores_count_merged_names_as_one_person():
    audit = pd.DataFrame({
        "fc_action": ["keep", "relabel", "drop", "merge", "keep", "dedupe"],
        "fc_label": ["a", "a", "", "a", "b", ""],
        "fc_issue": ["", "mislabeled", "outlier", "duplicate_identity", "", "near_duplicate"],
    })
    truth = pd.DataFrame({"issue": ["", "flip", "open_set", "split", "open_set", "near_duplicate"],
                          "duplicate_of": [-1, -1, -1, -1, -1, 0]})
    true_labels = np.array(["a", "a", "", "a2", "", "a"])
    s = cleaning_scores(audit, true_labels, truth, pd.DataFrame({"label": ["a2"], "merged_into": ["a"]}),
                        [("a2", "a")])
    # kept: rows 0,1,3,4 -> right: 0 (a), 1 (a), 3 (a ~ a2); wrong: 4 (open-set kept)
    assert s["kept_label_precision"] == 0.75
    assert s["relabel_accuracy"] == 1.0 and s["clean_rows_lost"] == 0
    assert s["merges"] == {"precision": 1.0, "recall": 1.0, "n_suggested": 1, "n_true": 1}
