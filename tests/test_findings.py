"""kNN findings: calibration, near-duplicate cut, label votes, the duplicate-identity guard."""

from __future__ import annotations

import numpy as np
import pytest

from facecluster import build_knn_graph, compute_signals, find_issues
from facecluster.faceset import prepare_embeddings
from facecluster.metrics import issue_scores
from facecluster.synth import make_faces


def _run(noisy, k=30):
    unit, _, _ = prepare_embeddings(noisy.embeddings)
    graph = build_knn_graph(unit, k=k, device="cpu")
    labels = noisy.labels
    names = np.array([f"id{i}" for i in range(labels.max() + 1)], dtype=object)
    signals = compute_signals(graph, labels, len(names))
    return graph, signals, find_issues(signals, labels, names)


@pytest.mark.parametrize("shape", ["centred", "offset"])
def test_finds_flips_and_near_duplicates_in_centred_and_offset_sets(noisy_sets, shape):
    noisy = noisy_sets[shape]
    _, signals, findings = _run(noisy)
    scores = issue_scores(findings.issue, noisy.truth)
    assert scores["mislabeled"]["precision"] >= 0.9 and scores["mislabeled"]["recall"] >= 0.9
    assert scores["near_duplicate"]["precision"] >= 0.98 and scores["near_duplicate"]["recall"] >= 0.98
    assert scores["outlier"]["precision"] >= 0.85 and scores["outlier"]["recall"] >= 0.6
    # a flagged sample suggests its true label
    flips = (noisy.truth["issue"] == "flip").to_numpy() & (findings.issue == "mislabeled")
    assert (findings.suggested[flips] == noisy.truth["true_label"].to_numpy()[flips]).mean() >= 0.97


def test_calibration_is_monotone_and_follows_labels(noisy_sets):
    _, signals, _ = _run(noisy_sets["centred"])
    grid = np.linspace(-1, 1, 201)
    p = signals.calibration(grid)
    assert (np.diff(p) >= -1e-7).all() and p[0] < 0.2 and p[-1] > 0.8


def test_near_duplicate_cut_comes_from_the_data_not_a_constant(noisy_sets):
    cuts = {name: _run(noisy)[1].duplicates.threshold_sim for name, noisy in noisy_sets.items()}
    x, _ = make_faces(2500, 160, 128, spread=0.5, seed=11)  # tighter identities, higher genuine sims
    unit, _, _ = prepare_embeddings(x)
    tight = compute_signals(build_knn_graph(unit, k=30, device="cpu"), np.zeros(len(x), dtype=np.int64), 1)
    assert tight.duplicates.threshold_sim > max(cuts.values())
    # a clean set without copies has (almost) no near-duplicates
    assert tight.duplicates.stats["n_samples_in_groups"] <= 2


def test_split_identity_becomes_a_merge_suggestion_not_relabels(noisy_sets):
    noisy = noisy_sets["centred"]
    _, _, findings = _run(noisy)
    split_rows = (noisy.truth["issue"] == "split").to_numpy()
    assert not (findings.issue[split_rows] == "mislabeled").any()
    pairs = {tuple(sorted(p)) for p in noisy.merge_pairs.tolist()}
    found = {tuple(sorted((int(a[2:]), int(b[2:])))) for a, b in zip(findings.merges.label, findings.merges.merged_into)}
    assert found & pairs, "at least one injected split is suggested as a merge"


def test_single_image_label_is_not_judged_but_sent_to_review():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 32))
    x = np.vstack([centres[i] + 0.3 * rng.standard_normal((20, 32)) for i in range(3)])
    labels = np.repeat([0, 1, 2], 20)
    x = np.vstack([x, centres[0] + 0.3 * rng.standard_normal((1, 32))])
    labels = np.append(labels, 3)  # one image of "person 0" filed under a new, single-image label
    unit, _, _ = prepare_embeddings(x, centre=False)
    names = np.array(["a", "b", "c", "solo"], dtype=object)
    signals = compute_signals(build_knn_graph(unit, k=10, device="cpu"), labels, 4)
    findings = find_issues(signals, labels, names)
    assert findings.review[-1] and findings.issue[-1] != "outlier"
    assert "cannot tell" in findings.reason[-1]
