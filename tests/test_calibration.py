"""The calibration's degenerate sets."""

from __future__ import annotations

import numpy as np


def test_a_set_of_copies_of_one_face_is_one_person_without_labels():
    """Every kNN pair the same vector: no spread for the mixture to fit (a constant
    calibration), but one photo is one person, so the label-free cluster is one cluster. Other
    constant sets stay at even odds."""
    from facecluster import FINCH, CorrelationClustering, GraphAverageLinkage
    from facecluster.calibration import fit_calibration
    from facecluster.knn import build_knn_graph

    one = np.tile(np.random.default_rng(0).random((1, 8)), (50, 1))
    cal = fit_calibration(build_knn_graph(one / np.linalg.norm(one, axis=1, keepdims=True), k=10, device="cpu"))
    assert cal.kind == "constant" and cal(np.array([1.0]))[0] > 0.99 and cal.equal_odds_similarity() == -np.inf
    for estimator in (GraphAverageLinkage(device="cpu"), CorrelationClustering(device="cpu"), FINCH(device="cpu")):
        assert estimator.fit(one).labels_.max() == 0, type(estimator).__name__
