"""Hierarchical stage: exact against scipy on complete graphs, FINCH, cuts, estimators."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage

from facecluster import build_knn_graph
from facecluster.hierarchical import (
    FINCH,
    GraphAverageLinkage,
    average_linkage,
    choose_threshold,
    finch,
    pairwise_f_curve,
    unsupervised_threshold,
)
from facecluster.metrics import clustering_scores, pairwise_scores
from facecluster.synth import make_faces


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n,d,seed", [(150, 4, 0), (300, 16, 1), (250, 64, 2)])
def test_complete_graph_equals_scipy_average_linkage(n, d, seed):
    x = _unit(np.random.default_rng(seed).standard_normal((n, d)))
    dendrogram = average_linkage(build_knn_graph(x, k=n - 1, device="cpu"))
    z = linkage(x.astype(np.float64), method="average", metric="cosine")
    assert dendrogram.n_merges == n - 1 and dendrogram.stats["inversions"] == 0
    np.testing.assert_allclose(np.sort(1 - dendrogram.similarity), np.sort(z[:, 2]), atol=1e-5)
    np.testing.assert_allclose(dendrogram.to_scipy()[:, 2], z[:, 2], atol=1e-5)
    # the partition at every merge height (midway between consecutive heights) is scipy's
    heights = np.sort(z[:, 2])
    for t in (heights[:-1] + heights[1:]) / 2:
        ours = dendrogram.cut(1 - t)
        theirs = fcluster(z, t, criterion="distance")
        assert pairwise_scores(theirs, ours)["f"] == 1.0 or len(np.unique(theirs)) == n
        assert len(np.unique(ours)) == len(np.unique(theirs))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 60), k=st.integers(1, 12), seed=st.integers(0, 10_000), t=st.floats(-0.5, 0.9))
def test_dendrogram_invariants_on_sparse_graphs(n, k, seed, t):
    x = _unit(np.random.default_rng(seed).standard_normal((n, 6)))
    dendrogram = average_linkage(build_knn_graph(x, k=k, device="cpu"))
    # merges refer only to earlier nodes; sizes add up; monotone heights never exceed raw ones
    for i, (a, b) in enumerate(dendrogram.children):
        assert a < n + i and b < n + i
    assert (dendrogram.monotone_similarity <= dendrogram.similarity + 1e-12).all()
    part = dendrogram.cut(t)
    assert part.shape == (n,) and part.min() == 0
    # a higher threshold never merges more: partitions refine as the threshold rises
    finer = dendrogram.cut(t + 0.1)
    assert len(np.unique(finer)) >= len(np.unique(part))
    pairs = {(int(f), int(p)) for f, p in zip(finer, part)}
    assert len({f for f, _ in pairs}) == len(pairs), "each finer cluster sits inside one coarser cluster"


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 60), k=st.integers(1, 12), n_labels=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_the_f_curve_is_the_f_of_every_cut(n, k, n_labels, seed):
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((n, 6)))
    # string labels, some with one image: the curve codes them itself
    y = np.array([f"id{v}" for v in rng.integers(0, n_labels, n)])
    dendrogram = average_linkage(build_knn_graph(x, k=k, device="cpu"))
    thresholds, f, clusters = pairwise_f_curve(dendrogram, y)
    assert (np.diff(thresholds) < 0).all()
    for t, fv, c in zip(thresholds, f, clusters):
        part = dendrogram.cut(t)
        assert fv == pytest.approx(pairwise_scores(y, part)["f"], abs=1e-12)
        assert c == len(np.unique(part))
    if len(thresholds):
        best, curve = choose_threshold(dendrogram, y)
        assert best in {t for t, _, _ in curve}
        for t, fv, c in curve:  # every candidate scored as its cut scores
            assert fv == pytest.approx(pairwise_scores(y, dendrogram.cut(t))["f"], abs=1e-12)


def test_threshold_stops_merging():
    x, y = make_faces(600, 30, 32, seed=4)
    graph = build_knn_graph(x, k=15, device="cpu")
    full = average_linkage(graph)
    stopped = average_linkage(graph, threshold=0.5)
    assert stopped.n_merges < full.n_merges and (stopped.similarity >= 0.5).all()
    np.testing.assert_array_equal(stopped.cut(0.5), full.cut(0.5))


@pytest.mark.parametrize("offset", [0.0, 2.2])
def test_cut_chosen_from_labels_recovers_identities(offset):
    x, y = make_faces(2000, 120, 64, offset=offset, seed=5)
    est = GraphAverageLinkage(k=20).fit(x, y)
    scores = clustering_scores(y, est.labels_)
    assert scores["pairwise_f"] > 0.9 and scores["bcubed_f"] > 0.9
    assert est.threshold_curve_ and max(f for _, f, _ in est.threshold_curve_) == pytest.approx(abs=1e-5, expected=
        pairwise_scores(y, est.labels_)["f"])
    # without labels the data-derived cut is still good
    unsup = GraphAverageLinkage(k=20).fit(x)
    assert clustering_scores(y, unsup.labels_)["bcubed_f"] > 0.8


def test_finch_levels_coarsen_and_one_fits_the_identities():
    x, y = make_faces(1500, 100, 64, seed=6)
    graph = build_knn_graph(x, k=20, device="cpu")
    levels = finch(graph)
    counts = [int(p.max()) + 1 for p in levels]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)
    for fine, coarse in zip(levels, levels[1:]):
        assert len({(a, b) for a, b in zip(fine, coarse)}) == int(fine.max()) + 1  # nested
    est = FINCH(k=20).fit(graph, y)
    assert clustering_scores(y, est.labels_)["pairwise_f"] > 0.8
    assert est.labels_ is est.partitions_[est.level_]


def test_unsupervised_threshold_sits_between_same_and_different_people():
    for offset in (0.0, 2.2):
        x, y = make_faces(2000, 120, 64, offset=offset, seed=7)
        graph = build_knn_graph(x, k=20, device="cpu")
        t, info = unsupervised_threshold(graph)
        same = graph.sims[y[graph.indices] == y[:, None]]
        diff = graph.sims[y[graph.indices] != y[:, None]]
        assert np.median(diff) < t < np.median(same)


def test_estimators_follow_the_sklearn_contract():
    from sklearn.base import clone

    x, y = make_faces(400, 25, 32, seed=8)
    est = GraphAverageLinkage(threshold=0.3, k=10)
    assert clone(est).get_params() == est.get_params()
    labels = est.fit_predict(x)
    assert labels.shape == (400,) and est.children_.shape[1] == 2
    np.testing.assert_allclose(est.distances_, 1 - est.similarities_)
    assert FINCH(k=10).fit_predict(x).shape == (400,)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 300), k=st.integers(1, 15), seed=st.integers(0, 10_000))
def test_incremental_rounds_give_the_same_dendrogram_as_full_recomputation(n, k, seed):
    x, _ = make_faces(n, max(1, n // 10), 16, seed=seed)
    graph = build_knn_graph(x, k=k, device="cpu")
    full = average_linkage(graph, incremental=False)
    fast = average_linkage(graph)
    # the compiled rounds hand the long tail to pair-by-pair merging, in another order: the
    # same merges (which samples, at which similarity), and so the same cut at every height
    assert _merges(full) == _merges(fast)
    np.testing.assert_allclose(np.sort(full.monotone_similarity), np.sort(fast.monotone_similarity), rtol=0, atol=1e-12)
    for t in np.unique(full.monotone_similarity):
        np.testing.assert_array_equal(full.cut(t), fast.cut(t))


@pytest.mark.parametrize("threshold", [-np.inf, 0.3])
def test_pair_by_pair_merging_gives_the_merges_of_the_rounds(threshold):
    x, _ = make_faces(1500, 150, 16, offset=1.0, seed=3)
    graph = build_knn_graph(x, k=10, device="cpu")
    rounds = average_linkage(graph, threshold, tail_share=0.0)
    pairwise = average_linkage(graph, threshold, tail_share=1.0)  # the tail from the first merge on
    default = average_linkage(graph, threshold)
    assert rounds.rounds > 5 and pairwise.rounds == 0
    assert pairwise.stats["tail_merges"] == pairwise.n_merges and rounds.stats["tail_merges"] == 0
    # a limit on the rounds is a limit on the merges: the tail, which would run to the end, is off
    limited = average_linkage(graph, threshold, tail_share=1.0, max_rounds=2)
    assert limited.rounds == 2 and limited.stats["tail_merges"] == 0 and limited.n_merges < rounds.n_merges
    assert _merges(rounds) == _merges(pairwise) == _merges(default)
    for t in np.quantile(rounds.monotone_similarity, [0.1, 0.5, 0.9]):
        np.testing.assert_array_equal(rounds.cut(t), pairwise.cut(t))


def _merges(dendrogram) -> set:
    """Each merge as (the samples it joins, its similarity to 12 digits)."""
    n = dendrogram.n_samples
    members = [frozenset([i]) for i in range(n)]
    out = set()
    for (c0, c1), s in zip(dendrogram.children, dendrogram.similarity):
        members.append(members[c0] | members[c1])
        out.add((members[-1], round(float(s), 12)))
    return out


@pytest.mark.parametrize("est", [GraphAverageLinkage(threshold=float("nan")), GraphAverageLinkage(k=0),
                                 FINCH(level=-1), FINCH(device="tpu")], ids=["nan-cut", "k0", "level", "device"])
def test_estimators_check_their_parameters_in_fit(est):
    x, _ = make_faces(60, 5, 8, seed=1)
    with pytest.raises(ValueError):
        est.fit(x)


def test_estimators_accept_string_labels_and_a_prebuilt_graph():
    x, y = make_faces(400, 25, 32, seed=9)
    graph = build_knn_graph(x, k=10, device="cpu")
    names = np.array([f"person-{v}" for v in y])
    a = GraphAverageLinkage(k=10).fit(graph, names)
    b = GraphAverageLinkage(k=10).fit(graph, y)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    with pytest.raises(ValueError, match="shape"):
        GraphAverageLinkage(k=10).fit(graph, y[:-1])


def test_the_merge_floor_sits_where_same_person_odds_fall_coming_down():
    """A wide same-person component's posterior climbs back in the far left tail; the floor
    is the crossing below the upper mean, not that tail."""
    from sklearn.mixture import GaussianMixture

    from facecluster.calibration import Calibration

    rng = np.random.default_rng(0)
    sims = np.concatenate([rng.normal(0.1, 0.05, 8000), rng.normal(0.6, 0.15, 2000)])
    gm = GaussianMixture(2, random_state=0).fit(sims[:, None])
    cal = Calibration("mixture", gm, len(sims), 1e-6)
    floor = cal.similarity_at(0.1)
    assert 0.1 < floor < 0.6
    assert cal(np.array([floor]))[0] >= 0.1 > cal(np.array([floor - 0.01]))[0]
    assert cal.similarity_at(0.5) > floor  # higher odds, higher similarity
    constant = Calibration("constant", None, 0, 1e-6)
    assert constant.similarity_at(0.1) == -np.inf and constant.similarity_at(0.9) == np.inf


def test_merging_stops_at_the_floor_and_the_chosen_cut_is_above_it():
    from facecluster.calibration import fit_calibration
    from facecluster.hierarchical import MERGE_FLOOR, hierarchical_stage

    x, y = make_faces(3000, 200, 64, seed=5)
    graph = build_knn_graph(x, k=20, device="cpu")
    cal = fit_calibration(graph, y, rng=np.random.default_rng(0))
    part = hierarchical_stage(graph, y, calibration=cal)
    floor = part.stats["merge_floor"]
    assert floor == cal.similarity_at(MERGE_FLOOR)
    assert part.detail.similarity.min() >= floor  # no merge below the floor was made
    assert part.stats["threshold"] > floor
    full = average_linkage(graph)
    assert full.n_merges >= part.detail.n_merges
    # above the floor both dendrograms give the same partition
    np.testing.assert_array_equal(full.cut(part.stats["threshold"]), part.labels)
