"""The calibration's degenerate sets."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from facecluster.calibration import fit_pair_calibration


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


@settings(max_examples=60, deadline=None)
@given(st.floats(-0.3, 0.4), st.floats(0.3, 0.95), st.floats(0.02, 0.3), st.floats(0.02, 0.3), st.floats(0.05, 0.5),
       st.integers(0, 2**16))
def test_the_unlabelled_curve_never_falls_as_similarity_rises(m_low, m_high, s_low, s_high, share, seed):
    """The mixture's posterior climbs back towards 1 far below both means when the upper
    component is the wider one (an edge at cosine −0.2 read as near-certain same person,
    log-odds +13.8): the curve is made non-decreasing, everywhere."""
    rng = np.random.default_rng(seed)
    n_high = max(20, int(1000 * share))
    sims = np.clip(np.r_[rng.normal(m_low, s_low, 1000 - n_high), rng.normal(m_high, s_high, n_high)], -1, 1)
    cal = fit_pair_calibration(np.arange(len(sims)), np.arange(len(sims)), sims, None, rng=rng)
    grid = np.linspace(-1.0, 1.0, 4001)
    p = cal(grid).astype(np.float64)
    assert (np.diff(p) >= -1e-6).all() and p.min() >= 0 and p.max() <= 1
    assert cal.similarity_at(0.5) == cal.equal_odds_similarity()


def test_a_wide_same_person_component_does_not_make_dissimilar_faces_one_person():
    rng = np.random.default_rng(0)
    sims = np.clip(np.r_[rng.normal(0.1, 0.03, 900), rng.normal(0.5, 0.25, 100)], -1, 1)
    cal = fit_pair_calibration(np.arange(1000), (np.arange(1000) + 1) % 1000, sims, None)
    assert cal.log_odds(np.array([sims.min()]))[0] < 0  # was +13.8
    assert (cal(np.array([-0.2, 0.0, 0.1])) < 0.5).all()
