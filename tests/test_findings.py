"""kNN findings: calibration, near-duplicate cut, label votes, the duplicate-identity guard."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.slow
def test_near_duplicate_cut_comes_from_the_data_not_a_constant(noisy_sets):
    cuts = {name: _run(noisy)[1].duplicates.threshold_sim for name, noisy in noisy_sets.items()}
    x, _ = make_faces(2500, 160, 128, spread=0.5, seed=11)  # tighter identities, higher genuine sims
    unit, _, _ = prepare_embeddings(x)
    tight = compute_signals(build_knn_graph(unit, k=30, device="cpu"), np.zeros(len(x), dtype=np.int64), 1)
    assert tight.duplicates.threshold_sim > max(cuts.values())
    # a clean set without copies has (almost) no near-duplicates
    assert tight.duplicates.stats["n_samples_in_groups"] <= 2


def test_many_identical_vectors_neither_hide_the_copies_nor_escape_grouping():
    """A detector's fallback vector repeated in groups of 15 (30% of the rows): those rows have
    no genuine distance scale and stay out of the laws' fits, so the injected copies are all
    still found; and identical vectors are grouped as copies however many there are."""
    from facecluster.votes import near_duplicate_groups

    x, _ = make_faces(3000, 300, 64, seed=2)
    rng = np.random.default_rng(2)
    src = rng.choice(len(x), 80, replace=False)
    copies = x[src] + 0.02 * rng.normal(size=(80, 64)).astype(np.float32) / 8
    fallback = np.repeat(rng.normal(size=(90, 64)).astype(np.float32), 15, axis=0)
    unit, _, _ = prepare_embeddings(np.vstack([x, copies, fallback]))
    group = near_duplicate_groups(build_knn_graph(unit, k=30, device="cpu")).group
    cid = np.arange(len(x), len(x) + 80)
    assert ((group[cid] >= 0) & (group[cid] == group[src])).all()
    assert (group[len(x) + 80:] >= 0).all()


def test_split_identity_becomes_a_merge_suggestion_not_relabels(noisy_sets):
    noisy = noisy_sets["centred"]
    _, _, findings = _run(noisy)
    split_rows = (noisy.truth["issue"] == "split").to_numpy()
    assert not (findings.issue[split_rows] == "mislabeled").any()
    pairs = {tuple(sorted(p)) for p in noisy.merge_pairs.tolist()}
    found = {tuple(sorted((int(a[2:]), int(b[2:])))) for a, b in zip(findings.merges.label, findings.merges.merged_into)}
    assert found & pairs, "at least one injected split is suggested as a merge"


def test_single_image_labels_are_never_judged_one_by_one():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 32))
    x = np.vstack([centres[i] + 0.3 * rng.standard_normal((20, 32)) for i in range(3)])
    labels = np.repeat([0, 1, 2], 20)
    # one image of "person 0" filed under a new name, and one image of nobody here
    x = np.vstack([x, centres[0] + 0.3 * rng.standard_normal((1, 32)), rng.standard_normal((1, 32))])
    labels = np.append(labels, [3, 4])
    unit, _, _ = prepare_embeddings(x, centre=False)
    names = np.array(["a", "b", "c", "solo", "stranger"], dtype=object)
    signals = compute_signals(build_knn_graph(unit, k=10, device="cpu"), labels, 5)
    findings = find_issues(signals, labels, names)
    # the whole of "solo" is claimed by a: a merge suggestion, not a relabel of one image
    assert findings.issue[-2] == "duplicate_identity" and findings.suggested[-2] == -1
    assert [tuple(r) for r in findings.merges[["label", "merged_into"]].values] == [("solo", "a")]
    # the stranger fits nobody, but one image cannot be outvoted: a person's call
    assert findings.issue[-1] == "review" and "cannot tell" in findings.reason[-1]
    nearest = names[labels[build_knn_graph(unit, k=10, device="cpu").indices[-1, 0]]]
    assert f"nearest neighbour of another label is {nearest} (cosine" in findings.reason[-1]


# --------------------------------------------------------------------------- one question at a time,
# on hand-made evidence (no graph): what each find_* function answers, and resolve's precedence


def _evidence(labels, *, given, other, best_other, none_prob, group=None, dup_score=None, partner=None,
              partitions=None, camsoftmax=None):
    from facecluster.findings import Signals
    from facecluster.partition import Partition
    from facecluster.votes import LabelAgreement, NearDuplicates

    n = len(labels)
    f32 = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
    agreement = LabelAgreement(f32(given), np.asarray(best_other, dtype=np.int64), f32(other), f32(none_prob),
                               np.ones(n, np.float32), np.full(n, 10, np.int32))
    group = np.full(n, -1) if group is None else np.asarray(group)
    duplicates = NearDuplicates(group, f32(np.zeros(n) if dup_score is None else dup_score),
                                np.full(n, -1) if partner is None else np.asarray(partner), 0.99)
    parts = {name: Partition(np.asarray(p)) for name, p in (partitions or {}).items()}
    return Signals(None, agreement, duplicates, parts.get("hierarchical"), parts.get("correlation"), camsoftmax)


def _confidence(p_given, top, p_top):
    from facecluster.camsoftmax import Confidence

    p_given = np.asarray(p_given, dtype=np.float32)
    return Confidence(p_given, np.asarray(top, dtype=np.int64), np.asarray(p_top, dtype=np.float32),
                      np.zeros_like(p_given))


# labels: a ×4 (0-3), b ×4 (4-7), c ×1 (8)
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
NAMES = np.array(["a", "b", "c"], dtype=object)


def test_find_mislabeled_pools_the_stages_that_agree():
    from facecluster.findings import find_mislabeled

    given = [0.5, 4, 4, 4, 4, 4, 4, 4, 0.0]
    other = [3.0, 0, 0, 0, 0, 0, 0, 0, 5.0]
    best = [1, -1, -1, -1, -1, -1, -1, -1, 0]
    hier = [1, 0, 0, 0, 1, 1, 1, 1, 2]  # row 0 sits in b's cluster: 4 of its 4 other members are b
    conf = _confidence([0.1] + [0.9] * 7 + [np.nan], [1] + [0] * 3 + [1] * 4 + [-1], [0.8] + [0.9] * 7 + [np.nan])
    sig = _evidence(LABELS, given=given, other=other, best_other=best, none_prob=[0.1] * 9,
                    partitions={"hierarchical": hier}, camsoftmax=conf)
    mis = find_mislabeled(sig, LABELS)
    knn = 3.0 / 4.5
    assert mis.mask.tolist() == [True] + [False] * 8, "c's only image cannot be outvoted"
    assert mis.suggested[0] == 1 and mis.knn_score[0] == pytest.approx(knn)
    assert mis.score[0] == pytest.approx((knn + 1.0 + 0.8) / 3), "kNN, partition share, cam-softmax p(b)"
    assert mis.corroborated_by["hierarchical"][0] and mis.corroborated_by["camsoftmax"][0]
    # a stage that disagrees counts 0: cam-softmax's top is not b
    sig2 = _evidence(LABELS, given=given, other=other, best_other=best, none_prob=[0.1] * 9,
                     camsoftmax=_confidence([0.6] * 9, [0] * 9, [0.6] * 9))
    assert find_mislabeled(sig2, LABELS).score[0] == pytest.approx(knn / 2)


def test_find_outliers_needs_three_images_and_no_other_label_claiming_the_row():
    from facecluster.findings import find_outliers

    none_prob = [0.9, 0.1, 0.1, 0.1, 0.95, 0.1, 0.1, 0.1, 0.99]
    other = [0, 0, 0, 0, 6.0, 0, 0, 0, 0]  # row 4: the votes claim it for a
    best = [-1, -1, -1, -1, 0, -1, -1, -1, -1]
    sig = _evidence(LABELS, given=[1] * 9, other=other, best_other=best, none_prob=none_prob)
    out = find_outliers(sig, LABELS)
    assert out.mask.tolist() == [True] + [False] * 8
    assert out.score[8] == 0.0, "a one-image label is not scored as an outlier"
    # cam-softmax pulls the pool: (0.9 + (1 - 0.95)) / 2 < 0.5
    conf = _confidence([0.95] * 9, [0] * 9, [0.95] * 9)
    pooled = find_outliers(_evidence(LABELS, given=[1] * 9, other=other, best_other=best, none_prob=none_prob,
                                     camsoftmax=conf), LABELS)
    assert not pooled.mask[0] and pooled.score[0] == pytest.approx((0.9 + 0.05) / 2)


def test_an_unsupported_row_of_a_label_with_no_core_goes_to_review_not_out():
    """An outlier falls outside its label's identity; a label none of whose images are mutual,
    likely-same-person neighbours (no core) has no identity to fall outside of, so its
    unsupported row is a person's call. With the label's other three images a core, it is out."""
    import dataclasses

    from facecluster.findings import find_outliers

    none_prob = [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.99]
    sig = _evidence(LABELS, given=[1] * 9, other=[0] * 9, best_other=[-1] * 9, none_prob=none_prob)

    def with_core(core):
        return dataclasses.replace(sig, agreement=dataclasses.replace(sig.agreement, core=np.array(core)))

    out = find_outliers(with_core([False, True, True, True] + [True] * 4 + [False]), LABELS)
    assert out.mask.tolist() == [True] + [False] * 8 and not out.contested.any()
    spread = find_outliers(with_core([False] * 4 + [True] * 4 + [False]), LABELS)
    assert not spread.mask.any() and spread.contested.tolist() == [True] + [False] * 8
    # a stranger is judged by the partitions, not by its label: out even in a label with no core
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    hier = [0, 1, 1, 1, 0, 2, 0, 3, 0, 4]  # row 0 among one b, one c and one d, none its own
    stranger = _evidence(labels, given=[1] * 10, other=[0] * 10, best_other=[-1] * 10, none_prob=[0.9] + [0.1] * 9,
                         partitions={"hierarchical": hier})
    stranger = dataclasses.replace(stranger, agreement=dataclasses.replace(stranger.agreement,
                                                                           core=np.zeros(10, dtype=bool)))
    out = find_outliers(stranger, labels)
    assert out.mask[0] and out.stranger[0] and not out.contested[0]


def test_find_near_duplicates_keeps_one_row_per_group_the_best_backed_when_labels_differ():
    from facecluster.findings import find_near_duplicates

    group = [0, 0, 0, -1, 1, -1, -1, -1, 1]  # group 0: three a's; group 1: a b (row 4) and the c
    given = [2, 2, 2, 2, 0.2, 2, 2, 2, 3.0]
    other = [0, 0, 0, 0, 3.0, 0, 0, 0, 0.0]
    sig = _evidence(LABELS, given=given, other=other, best_other=[-1, -1, -1, -1, 2, -1, -1, -1, -1],
                    none_prob=[0] * 9, group=group, dup_score=[0.9] * 9, partner=[1, 0, 0, -1, 8, -1, -1, -1, 4])
    near = find_near_duplicates(sig, LABELS)
    assert np.flatnonzero(near.mask).tolist() == [1, 2, 4]
    assert near.keep[1] == near.keep[2] == 0, "same label: the first row stays"
    assert near.keep[4] == 8, "mixed labels: the row whose label its neighbours back stays"
    assert (near.score[~near.mask] == 0).all()
    # the one photo of a one-image identity, copied under a big label where it fits nobody: its
    # copy's neighbours back neither label, so the outlier score decides which row stays
    lone = _evidence(LABELS, given=[2] * 8 + [0.0], other=[0] * 4 + [0.1] + [0] * 3 + [0.3],
                     best_other=[-1] * 4 + [2] + [-1] * 3 + [0], none_prob=[0] * 9, group=group,
                     dup_score=[0.9] * 9, partner=[1, 0, 0, -1, 8, -1, -1, -1, 4])
    doubt = np.zeros(9, np.float32)
    doubt[4] = 0.8  # row 4 (a b) fits no b
    assert find_near_duplicates(lone, LABELS).keep[8] == 4, "on the kNN vote alone, row 4 would stay"
    kept = find_near_duplicates(lone, LABELS, doubt=doubt)
    assert kept.keep[4] == 8 and kept.mask[4] and not kept.mask[8]


def test_find_duplicate_identities_needs_votes_both_ways():
    from facecluster.findings import find_duplicate_identities

    labels = np.array([0] * 4 + [1] * 6)
    names = np.array(["small", "big"], dtype=object)
    # one person under two names: each image gives the other name about its expected share
    given = [1.5] * 4 + [2.5] * 6
    other = [2.5] * 4 + [1.5] * 6
    sig = _evidence(labels, given=given, other=other, best_other=[1] * 4 + [0] * 6, none_prob=[0] * 10)
    dup = find_duplicate_identities(sig, labels, names)
    assert dup.merges[["label", "merged_into"]].values.tolist() == [["small", "big"]], "into the larger label"
    assert dup.merged_into.tolist() == [1, -1] and dup.label_score[0] >= 0.5
    # flips from big into small: one of small's images votes big, and nothing votes back
    flips = _evidence(labels, given=[1.5] * 4 + [2.5] * 6, other=[2.5] + [0] * 9, best_other=[1] + [-1] * 9,
                      none_prob=[0] * 10)
    assert len(find_duplicate_identities(flips, labels, names).merges) == 0


def test_a_label_claimed_whole_by_another_is_a_merge_even_without_votes_back():
    from facecluster.findings import find_duplicate_identities

    labels = np.array([0] * 2 + [1] * 8)
    names = np.array(["part", "whole"], dtype=object)
    # both images of "part" are mislabel candidates for "whole"; "whole" barely notices them
    sig = _evidence(labels, given=[0.5, 0.5] + [3.0] * 8, other=[3.0, 3.0] + [0] * 8,
                    best_other=[1, 1] + [-1] * 8, none_prob=[0] * 10)
    dup = find_duplicate_identities(sig, labels, names)
    assert dup.merges[["label", "merged_into"]].values.tolist() == [["part", "whole"]]
    assert "2 of 2 images of part are each claimed by whole" in dup.merges.evidence[0]
    # half a label claimed is not the whole label
    half = _evidence(labels, given=[0.5, 3.0] + [3.0] * 8, other=[3.0, 0] + [0] * 8,
                     best_other=[1, -1] + [-1] * 8, none_prob=[0] * 10)
    assert len(find_duplicate_identities(half, labels, names).merges) == 0
    # a claim the claimer does not win on its nearest photos (a big look-alike's count) is none
    import dataclasses

    for near, merges in ((0.6, 1), (0.4, 0)):
        agreement = dataclasses.replace(sig.agreement, nearest_photos_score=np.array([near, near] + [0.0] * 8,
                                                                                      np.float32))
        got = find_duplicate_identities(dataclasses.replace(sig, agreement=agreement), labels, names)
        assert len(got.merges) == merges


def test_a_merge_needs_some_evidence_from_the_one_person_test():
    """Partitions and centroids put labels together that are not one person (a label holding a
    flip of the other's person beside someone else's photo): the one-person test judges, and a
    pair it scores 0 is no merge, however the other terms pool."""
    import dataclasses

    from facecluster.findings import find_duplicate_identities
    from facecluster.votes import LabelPairs

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    names = np.array(["a", "b", "c"], dtype=object)
    hier = [0] * 8 + [1, 1]  # a and b share one cluster
    sig = _evidence(labels, given=[3] * 10, other=[0] * 10, best_other=[-1] * 10, none_prob=[0] * 10,
                    partitions={"hierarchical": hier})

    def with_score(score):
        pairs = LabelPairs(np.array([0]), np.array([1]), np.array([score], np.float32),
                           np.array([0.5], np.float32), np.array([0.5], np.float32))
        return dataclasses.replace(sig, agreement=dataclasses.replace(sig.agreement, pairs=pairs))

    assert len(find_duplicate_identities(with_score(0.0), labels, names).merges) == 0
    merged = find_duplicate_identities(with_score(0.3), labels, names).merges
    assert merged[["label", "merged_into"]].values.tolist() == [["a", "b"]] or \
        merged[["label", "merged_into"]].values.tolist() == [["b", "a"]]
    # a label all of whose rows are no one's (strangers found as outliers) holds no person to merge
    no_person = np.isin(np.arange(10), [0, 1, 2, 3])
    assert len(find_duplicate_identities(with_score(0.3), labels, names, no_person=no_person).merges) == 0
    assert len(find_duplicate_identities(with_score(0.3), labels, names, no_person=np.arange(10) == 0).merges) == 1


def test_a_partition_that_lumps_two_look_alikes_is_no_evidence_against_either():
    """A cluster that is mostly another label sends a row to review only when the row sits
    there apart from its own label: a cluster holding most of both labels lumped two
    look-alike identities and says nothing against the smaller one's rows."""
    from facecluster.findings import find_review

    # b: 8 images; a: 3 images; row 11 is a's fourth image, alone in b's second cluster
    labels = np.array([1] * 8 + [0] * 4)
    names = np.array(["a", "b"], dtype=object)
    lump = [0] * 8 + [0, 0, 0] + [1]
    part = np.array(lump)
    part[4:8] = 1  # b's second half with a's fourth image
    sig = _evidence(labels, given=[2] * 12, other=[0] * 12, best_other=[-1] * 12, none_prob=[0] * 12,
                    partitions={"correlation": part.tolist()})
    review = find_review(sig, labels, names)
    # rows 8-10 (a) share b's first cluster with most of their label: no review
    assert not review.partition_text[8:11].any()
    # row 11 sits with b's rows and none of its own: a person should look
    assert review.partition_text[11] == "review: correlation cluster is 100% b"


def test_a_two_image_label_that_is_one_person_is_not_sent_to_review():
    """Two images of one label, each the other's likely-same-person neighbour (the label's core),
    are one person photographed twice: not a doubt, even when another label leans on them. Two
    images that do not back each other are: one of them may be someone else."""
    import dataclasses

    from facecluster.findings import find_review

    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    names = np.array(["pair", "big"], dtype=object)
    leaning = dict(given=[1, 1] + [3] * 6, other=[1.0, 1.0] + [0] * 6, best_other=[1, 1] + [-1] * 6,
                   none_prob=[0.2, 0.2] + [0] * 6)
    sig = _evidence(labels, **leaning)
    assert find_review(sig, labels, names).cannot_tell[:2].tolist() == [True, True]
    core = np.array([True, True] + [True] * 6)
    cored = dataclasses.replace(sig, agreement=dataclasses.replace(sig.agreement, core=core))
    assert not find_review(cored, labels, names).cannot_tell.any()


def _unit_rows(v):
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _lumped_pair(labels, one_person: float):
    """Evidence where labels 0 and 1 share one cluster in both partitions (label 2 apart) and
    the one-person test scores them ``one_person``; no kNN vote leans anywhere."""
    import dataclasses

    from facecluster.votes import LabelPairs

    n = len(labels)
    lumped = np.where(labels <= 1, 0, 1).tolist()
    sig = _evidence(labels, given=[3] * n, other=[0] * n, best_other=[-1] * n, none_prob=[0] * n,
                    partitions={"hierarchical": lumped, "correlation": lumped})
    pairs = LabelPairs(np.array([0]), np.array([1]), np.array([one_person], np.float32),
                       np.array([0.5], np.float32), np.array([0.5], np.float32))
    return dataclasses.replace(sig, agreement=dataclasses.replace(sig.agreement, pairs=pairs))


def test_look_alikes_lumped_by_every_partition_are_not_merged_when_the_ranks_say_two_people(monkeypatch):
    """Two people a weak model cannot tell apart: both partitions put their labels in one
    cluster and the one-person test sees strong shared mass, so the pooled score passes, but
    every image of one label sits farther from the other label's centroid than that label's
    own images do. The centroid rank test rejects one person and there is no merge (without
    the test, there would be); one person split at random under two names, with the same
    partitions and score, is merged."""
    import facecluster.findings as findings
    from facecluster.findings import find_duplicate_identities

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [10, 10, 2])
    names = np.array(["a", "b", "c"], dtype=object)
    sig = _lumped_pair(labels, one_person=0.9)
    dim = 32
    centre = rng.normal(size=dim)
    look_alike = centre + 0.6 * rng.normal(size=dim)  # a second person near the first
    spread = 0.15 * np.linalg.norm(centre)
    far = rng.normal(size=(2, dim)) * 3
    two_people = _unit_rows(np.vstack([centre + spread * rng.normal(size=(10, dim)) / np.sqrt(dim),
                                 look_alike + spread * rng.normal(size=(10, dim)) / np.sqrt(dim), far]))
    one_person = _unit_rows(np.vstack([centre + spread * rng.normal(size=(20, dim)) / np.sqrt(dim), far]))

    refused = find_duplicate_identities(sig, labels, names, embeddings=two_people).merges
    assert len(refused) == 0
    with monkeypatch.context() as m:
        m.setattr(findings, "TWO_PEOPLE_P", 0.0)
        assert len(find_duplicate_identities(sig, labels, names, embeddings=two_people).merges) == 1
    merged = find_duplicate_identities(sig, labels, names, embeddings=one_person).merges
    assert sorted(merged[["label", "merged_into"]].values.ravel().tolist()) == ["a", "b"]
    assert "centroid rank test p=" in merged["evidence"].iloc[0]


def test_a_two_image_split_that_every_partition_joins_is_merged_unless_its_images_keep_apart():
    """A two-image label that every partition puts with a ten-image label is a merge candidate
    even when little kNN mass is shared. Two images of the same person, taken at random from
    its photos, mix with the other label's (each is the other label's images' nearest as
    often as chance allows): merged. Two images of a look-alike, nearer each other than
    either label's images: no merge."""
    from facecluster.findings import find_duplicate_identities

    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], [10, 2, 3])
    names = np.array(["big", "pair", "other"], dtype=object)
    sig = _lumped_pair(labels, one_person=0.1)
    dim = 32
    centre, elsewhere = rng.normal(size=dim), rng.normal(size=(3, dim)) * 3
    person = centre + 0.5 * rng.normal(size=(12, dim))
    split = _unit_rows(np.vstack([person, elsewhere]))
    look_alike = centre + 0.9 * rng.normal(size=dim)
    apart = _unit_rows(np.vstack([person[:10], look_alike + 0.05 * rng.normal(size=(2, dim)), elsewhere]))

    merged = find_duplicate_identities(sig, labels, names, embeddings=split).merges
    assert merged[["label", "merged_into"]].values.tolist() == [["pair", "big"]]
    assert "nearest-neighbour mixing" in merged["evidence"].iloc[0]
    assert len(find_duplicate_identities(sig, labels, names, embeddings=apart).merges) == 0


def test_a_split_that_the_graph_keeps_apart_is_merged_when_both_two_sample_tests_say_one_person(monkeypatch):
    """One person split at random under two names, where the partitions keep the two labels
    in clusters of their own and the one-person test sees little shared mass (0.3, enough to
    be a candidate; a person shot in two looks): the pooled score stays under 1/2, but the images mix in both directions and
    pass for each other at the centroids, so the two-sample tests merge them. A small
    look-alike label beside a dense big one, with the same graph evidence: no merge. And the
    mixing test's weaker direction: three images around a tight big label, each nearer the big
    label than the others, mix one way only (pooled 0.53, weaker direction 0)."""
    import dataclasses

    import facecluster.findings as findings
    from facecluster.findings import find_duplicate_identities
    from facecluster.votes import LabelPairs

    rng = np.random.default_rng(5)
    dim = 32
    centre, elsewhere = rng.normal(size=dim), rng.normal(size=(3, dim)) * 3

    def evidence(labels):
        n = len(labels)
        sig = _evidence(labels, given=[3] * n, other=[0] * n, best_other=[-1] * n, none_prob=[0] * n,
                        partitions={"hierarchical": labels.tolist(), "correlation": labels.tolist()})
        pairs = LabelPairs(np.array([0]), np.array([1]), np.array([0.3], np.float32),
                           np.array([0.5], np.float32), np.array([0.5], np.float32))
        return dataclasses.replace(sig, agreement=dataclasses.replace(sig.agreement, pairs=pairs))

    names = np.array(["a", "b", "other"], dtype=object)
    labels = np.repeat([0, 1, 2], [8, 8, 3])
    split = _unit_rows(np.vstack([centre + 0.5 * rng.normal(size=(16, dim)), elsewhere]))
    merged = find_duplicate_identities(evidence(labels), labels, names, embeddings=split).merges
    assert merged[["label", "merged_into"]].values.ravel().tolist() in (["a", "b"], ["b", "a"])
    assert merged["score"].iloc[0] >= 0.5 and "weaker direction" in merged["evidence"].iloc[0]
    with monkeypatch.context() as m:
        m.setattr(findings, "TWO_SAMPLE_BAR", 1.01)  # the pooled mean alone does not merge them
        assert len(find_duplicate_identities(evidence(labels), labels, names, embeddings=split).merges) == 0

    labels = np.repeat([0, 1, 2], [30, 3, 3])
    look_alike = centre + 0.9 * rng.normal(size=dim)
    pair = _unit_rows(np.vstack([centre + 0.5 * rng.normal(size=(30, dim)),
                                 look_alike + 0.2 * rng.normal(size=(3, dim)), elsewhere]))
    assert len(find_duplicate_identities(evidence(labels), labels, names, embeddings=pair).merges) == 0

    from facecluster.findings import _mixing_term, _rows_of

    axis = np.eye(dim)
    tight = axis[0] + 0.02 * rng.normal(size=(30, dim))
    around = axis[0] + 0.5 * axis[1:4]
    pooled, weaker = _mixing_term(_unit_rows(np.vstack([tight, around])), _rows_of(np.repeat([0, 1], [30, 3]), 2), 0, 1)
    assert pooled == pytest.approx((3 / 33) / (2 * 30 * 3 / (33 * 32)))
    assert weaker == 0.0


def test_find_review_sends_what_cannot_be_judged_to_a_person():
    from facecluster.findings import find_review

    none_prob = [0.1] * 8 + [0.9]
    hier = [0, 1, 1, 1, 1, 2, 2, 2, 3]  # row 1 (an a) sits with three b's... and a's rows 2-3
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 2])
    sig = _evidence(labels, given=[1] * 9, other=[0] * 9, best_other=[-1] * 9, none_prob=none_prob,
                    partitions={"hierarchical": hier})
    review = find_review(sig, labels, NAMES)
    # a one-image label nobody else claims is a person photographed once: nothing to review
    assert review.cannot_tell.tolist() == [False] * 9, "a lone one-image label is not in doubt"
    assert review.partition_text[1] == "review: hierarchical cluster is 100% b"
    assert review.mask.sum() == 1
    # another label claiming it at three to one (three reliable votes) is what puts it in doubt;
    # a lean of one vote is a loner beside a big identity
    leaned = _evidence(labels, given=[1] * 8 + [0], other=[0] * 8 + [3.0], best_other=[-1] * 8 + [1],
                       none_prob=none_prob, partitions={"hierarchical": hier})
    assert find_review(leaned, labels, NAMES).cannot_tell.tolist() == [False] * 8 + [True]
    weak = _evidence(labels, given=[1] * 8 + [0], other=[0] * 8 + [1.0], best_other=[-1] * 8 + [1],
                     none_prob=none_prob, partitions={"hierarchical": hier})
    assert not find_review(weak, labels, NAMES).cannot_tell[8]
    # two images that do not back each other: one of them may be a stranger, which is unknown
    pair = np.array([0, 0, 1, 1, 1, 1, 1, 1, 2])
    apart = _evidence(pair, given=[0] * 2 + [1] * 7, other=[0] * 9, best_other=[-1] * 9,
                      none_prob=[0.9, 0.9] + [0.1] * 7, partitions={"hierarchical": hier})
    assert find_review(apart, pair, NAMES).cannot_tell.tolist() == [True, True] + [False] * 7
    # ... unless the other image was found to be noise and leaves: the one that stays is its
    # label's only image, and no other label claims it
    left = find_review(apart, pair, NAMES, leaving=np.arange(9) == 0)
    assert not left.cannot_tell[1] and left.label_images[1] == 1
    # a one-image label claimed at three to one, but judged by the merge tests with the claiming
    # label as more likely two people: a loner beside a look-alike, not a doubt
    assert not find_review(leaned, labels, NAMES, judged={(1, 2): 0.3}).cannot_tell[8]
    assert find_review(leaned, labels, NAMES, judged={(1, 2): 0.6}).cannot_tell[8]
    assert find_review(leaned, labels, NAMES, judged={(0, 2): 0.3}).cannot_tell[8], "another pair says nothing"


def test_a_lump_only_one_partition_made_is_not_a_doubt_when_another_partition_ran():
    """Row 1 (an a) sits with three b's in the hierarchical partition. With no other partition
    that alone sends it to review; where the correlation partition ran too, it takes both
    putting it among the same other label: a lump one stage alone made is that stage's
    look-alikes (65 of 66 such rows were clean over the protocol's 30 sets)."""
    from facecluster.findings import find_review

    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2])
    hier = [0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    n = len(labels)

    def review(**partitions):
        sig = _evidence(labels, given=[1] * n, other=[0] * n, best_other=[-1] * n, none_prob=[0.1] * n,
                        partitions=partitions)
        return find_review(sig, labels, NAMES)

    assert review(hierarchical=hier).partition_text[1] == "review: hierarchical cluster is 100% b"
    alone = review(hierarchical=hier, correlation=[0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2])
    assert not alone.mask.any(), "the correlation partition keeps row 1 with its label"
    both = review(hierarchical=hier, correlation=[0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2])
    assert both.mask.tolist() == [False, True] + [False] * 10
    assert both.partition_text[1] == "review: hierarchical cluster is 100% b; review: correlation cluster is 100% b"
    # both lean, but towards different labels (b, then c): no one label the stages agree on
    other = review(hierarchical=hier, correlation=[0, 1, 2, 2, 2, 2, 2, 2, 1, 1, 1, 3])
    assert not other.mask.any()


def test_a_stranger_filed_under_small_labels_is_an_outlier_and_a_lone_person_is_not():
    """An open-set person whose photos went under random names: both partitions put each photo
    with the others, none of its own label, no label holding half. That is found whatever
    the labels' sizes (one or two images here, where no majority exists); a person
    photographed once, alone in a cluster of their own, is left alone."""
    from facecluster.findings import find_issues, find_outliers

    # a ×4, b ×4; c, d, e one image each (the stranger's three photos); f one image (a loner);
    # g two images: its row 14 is the stranger's fourth photo, row 15 g's own person
    names = np.array(list("abcdefg"), dtype=object)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6])
    hier = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 2, 4]
    corr = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 2, 4]
    n = len(labels)
    sig = _evidence(labels, given=[3] * 8 + [0] * 6, other=[0] * n, best_other=[-1] * n,
                    none_prob=[0.05] * 8 + [0.6] * 6, partitions={"hierarchical": hier, "correlation": corr})
    out = find_outliers(sig, labels)
    assert out.mask.tolist() == [False] * 8 + [True, True, True, False, True, False]
    assert (out.score[out.mask] > 0.5).all()
    found = find_issues(sig, labels, names)
    assert found.issue[[8, 9, 10, 12]].tolist() == ["outlier"] * 4
    assert found.issue[11] == "", "a one-image label nobody claims is not in doubt"
    # one partition that disagrees (puts the photos apart) is enough to hold back
    apart = _evidence(labels, given=[3] * 8 + [0] * 6, other=[0] * n, best_other=[-1] * n,
                      none_prob=[0.05] * 8 + [0.6] * 6,
                      partitions={"hierarchical": hier, "correlation": list(range(n))})
    assert not find_outliers(apart, labels).mask[8:].any()


def test_two_photos_of_a_stranger_under_one_name_are_outliers_though_each_others_core():
    """A stranger of many photos: two landed under one name, each the other's nearest (the
    label's core, and nearer than chance). Every partition puts them among the stranger's
    other photos, where another label leads and none holds half, and the vote finds no
    reliable same-person neighbour: both are outliers. The same pair with vote support (a
    real two-photo identity the partitions lumped) is left alone."""
    from dataclasses import replace

    from facecluster.findings import find_issues

    # a ×6 (rows 0-3 a's person; rows 4, 5 the stranger), b ×4 (6-9); c, d one stranger
    # photo each (10, 11); e: rows 12, 13, both the stranger
    names = np.array(list("abcde"), dtype=object)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 4, 4])
    part = [0, 0, 0, 0, 2, 2, 1, 1, 1, 1, 2, 2, 2, 2]
    n = len(labels)
    core = np.array([True] * 4 + [False] * 2 + [True] * 4 + [False] * 2 + [True] * 2)
    chance = np.where(core, 0.01, 1.0).astype(np.float32)

    def run(none_prob):
        sig = _evidence(labels, given=[3] * 4 + [0, 0] + [3] * 4 + [0] * 4, other=[0] * n, best_other=[-1] * n,
                        none_prob=none_prob, partitions={"hierarchical": part, "correlation": part})
        sig = replace(sig, agreement=replace(sig.agreement, core=core, label_chance=chance))
        return find_issues(sig, labels, names)

    found = run([0.05] * 4 + [0.7] * 2 + [0.05] * 4 + [0.7] * 4)
    assert found.issue[[12, 13]].tolist() == ["outlier", "outlier"]
    assert "1 other of e" in found.reason[12] and "P(no same-person neighbour)=0.70" in found.reason[12]
    assert found.issue[[10, 11]].tolist() == ["outlier", "outlier"]
    assert not found.issue[:4].any() and not found.issue[6:10].any()
    supported = run([0.05] * 4 + [0.7] * 2 + [0.05] * 4 + [0.7] * 2 + [0.05] * 2)
    assert supported.issue[[12, 13]].tolist() == ["", ""]
    # ... and a row outside its label's core with support is no stranger either: its label
    # being in the cluster is allowed only to a row the vote finds no same-person neighbour for
    core_e = core.copy()
    core_e[12:] = False
    sig = _evidence(labels, given=[3] * 4 + [0, 0] + [3] * 4 + [0] * 4, other=[0] * n, best_other=[-1] * n,
                    none_prob=[0.05] * 4 + [0.7] * 2 + [0.05] * 4 + [0.7] * 2 + [0.3] * 2,
                    partitions={"hierarchical": part, "correlation": part})
    sig = replace(sig, agreement=replace(sig.agreement, core=core_e, label_chance=np.ones(n, np.float32)))
    assert not find_issues(sig, labels, names).issue[[12, 13]].any()


def test_a_two_image_label_is_not_judged_on_the_knn_vote_alone():
    """In a label of two images the other image is no majority: a kNN mislabel vote that no
    other stage backs goes to review (a loner beside a big identity looks the same); with a
    partition backing the suggestion it is a finding."""
    from facecluster.findings import find_issues

    # a ×4, b ×4, c ×2: row 8 (a c) leans to b in the kNN vote
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    names = np.array(list("abc"), dtype=object)
    kw = dict(given=[3] * 8 + [0, 0], other=[0] * 8 + [3.0, 0], best_other=[-1] * 8 + [1, -1],
              none_prob=[0.05] * 8 + [0.9, 0.9])
    alone = find_issues(_evidence(labels, **kw, partitions={"hierarchical": [0] * 4 + [1] * 4 + [2, 3]}), labels, names)
    assert alone.issue[8] == "review" and "no other stage backs b" in alone.reason[8]
    backed = find_issues(_evidence(labels, **kw, partitions={"hierarchical": [0] * 4 + [1] * 4 + [1, 3]}), labels, names)
    assert backed.issue[8] == "mislabeled" and backed.suggested[8] == 1
    # with no other stage run at all, the kNN vote is just as alone
    assert find_issues(_evidence(labels, **kw), labels, names).issue[8] == "review"


def test_a_vote_that_only_leans_is_a_finding_when_every_other_stage_names_the_same_label():
    """A flip whose person has two images in the set has two witnesses, each of whose
    reliability counts the flip against it: the kNN vote leans (half the floor) but stays
    under the floor. When both partitions and cam-softmax name the same label it is a
    mislabel finding; one stage that does not (or a partition that also holds the row's own
    label's images) leaves it to review."""
    from facecluster.findings import find_issues

    # a ×4, b ×2, c ×2: row 6 (a c) is the person of b; row 7 is c's own image
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    names = np.array(list("abc"), dtype=object)
    kw = dict(given=[3] * 6 + [0, 0], other=[0] * 6 + [0.6, 0], best_other=[-1] * 6 + [1, -1],
              none_prob=[0.05] * 6 + [0.9, 0.9])
    joined = [0] * 4 + [1, 1, 1, 2]  # row 6 sits with b's two images, away from row 7
    conf = _confidence([0.9] * 6 + [0.05, 0.5], [0] * 4 + [1, 1, 1, 2], [0.9] * 6 + [0.8, 0.5])
    unanimous = _evidence(labels, **kw, partitions={"hierarchical": joined, "correlation": joined}, camsoftmax=conf)
    found = find_issues(unanimous, labels, names)
    assert found.issue[6] == "mislabeled" and found.suggested[6] == 1
    assert found.issue[7] != "mislabeled"
    # cam-softmax ranks c first: not unanimous, the lean alone is a person's call
    dissent = _confidence([0.9] * 6 + [0.5, 0.5], [0] * 4 + [1, 1, 2, 2], [0.9] * 6 + [0.5, 0.5])
    split = find_issues(_evidence(labels, **kw, partitions={"hierarchical": joined, "correlation": joined},
                                  camsoftmax=dissent), labels, names)
    assert split.issue[6] == "review"
    # a partition that lumps b with both of c's images says nothing against c
    lumped = [0] * 4 + [1] * 4
    assert find_issues(_evidence(labels, **kw, partitions={"hierarchical": lumped, "correlation": joined},
                                 camsoftmax=conf), labels, names).issue[6] == "review"
    # one stage beside the kNN vote is no unanimity: at least two must agree
    assert find_issues(_evidence(labels, **kw, partitions={"hierarchical": joined}), labels, names).issue[6] == "review"
    # a vote under half the floor is not rescued by unanimity
    weak = dict(kw, other=[0] * 6 + [0.2, 0])
    assert find_issues(_evidence(labels, **weak, partitions={"hierarchical": joined, "correlation": joined},
                                 camsoftmax=conf), labels, names).issue[6] != "mislabeled"


def test_resolve_applies_the_documented_precedence():
    from facecluster.findings import PRECEDENCE, resolve

    assert PRECEDENCE == ("near_duplicate", "outlier", "duplicate_identity", "mislabeled")
    m = lambda *v: np.array(v, dtype=bool)  # noqa: E731
    masks = {"near_duplicate": m(1, 0, 0, 0, 0), "outlier": m(1, 1, 0, 0, 0),
             "duplicate_identity": m(1, 1, 1, 0, 0), "mislabeled": m(1, 1, 1, 1, 0)}
    scores = {name: np.full(5, i / 10, dtype=np.float32) for i, name in enumerate(PRECEDENCE, start=1)}
    issue, score = resolve(masks, scores)
    assert issue.tolist() == ["near_duplicate", "outlier", "duplicate_identity", "mislabeled", ""]
    assert score.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.0])


def test_find_issues_writes_one_reason_per_finding_and_reviews_only_rows_without_one():
    from facecluster.findings import find_issues

    given = [0.5, 4, 4, 4, 4, 4, 4, 4, 0.0]
    other = [3.0, 0, 0, 0, 0, 0, 0, 0, 3.0]  # row 8, a one-image label, claimed by b at three to one
    best = [1, -1, -1, -1, -1, -1, -1, -1, 1]
    none_prob = [0.1, 0.1, 0.1, 0.95, 0.1, 0.1, 0.1, 0.1, 0.9]
    sig = _evidence(LABELS, given=given, other=other, best_other=best, none_prob=none_prob,
                    partitions={"hierarchical": [1, 0, 0, 1, 1, 1, 1, 1, 2]})
    f = find_issues(sig, LABELS, NAMES)
    assert f.issue.tolist() == ["mislabeled", "", "", "outlier", "", "", "", "", "review"]
    assert f.suggested.tolist() == [1] + [-1] * 8
    assert f.reason[0].startswith("pooled p(b)=") and "hierarchical: 80% of its cluster is b" in f.reason[0]
    assert f.reason[3].startswith("kNN: no label supported")
    # row 3 (an outlier) also sits in b's cluster: its finding carries it, not a review
    assert not f.review[3] and f.review[8] and f.reason[8].startswith("review: cannot tell")
    assert f.counts()["review"] == 1 and (f.reason[f.issue == ""] == "").all()
    assert f.score[8] == pytest.approx(0.9), "review scores how strongly the evidence leans against the label"


def test_label_pairs_one_person_test_tells_a_split_from_two_people_and_from_a_stranger():
    """The vote stage's one-person test: a split scores high whatever its halves' sizes (one
    image included), two people low, and a two-image label whose second image is another
    person's look-alike low too (its own images do not hold together)."""
    from facecluster.knn import build_knn_graph
    from facecluster.votes import label_pairs

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((4, 24)) * 3
    x = np.vstack([c + rng.standard_normal((12, 24)) for c in centres])
    x = np.vstack([x, centres[3] + rng.standard_normal((1, 24)), rng.standard_normal((1, 24)) * 3])
    # person 0 under "p0"; person 1 split 8 / 4 under "p1" and "p1b"; person 2 under "p2";
    # person 3's 12 images under "p3"; one more image of person 3 filed with a stranger as "mix"
    labels = np.array([0] * 12 + [1] * 8 + [2] * 4 + [3] * 12 + [4] * 12 + [5, 5])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    graph = build_knn_graph(unit, k=12, device="cpu")
    # a calibration that knows these people: P(same) = 1 above the halfway cosine, 0 below
    p_same = (graph.sims > 0.5).astype(np.float64) * (graph.indices >= 0)
    pairs = label_pairs(graph, labels, p_same, 6)

    def score(a, b):
        j = pairs.lookup(a, b)
        return float(pairs.score[j]) if j >= 0 else 0.0

    assert score(1, 2) >= 0.6, "the split halves pass for one person"
    assert score(2, 1) == score(1, 2), "lookup in either order"
    assert score(0, 1) <= 0.1 and score(0, 3) <= 0.1, "two people do not"
    assert score(4, 5) <= 0.1, "a label whose images do not hold together is not a second name"
    assert list(zip(pairs.a, pairs.b)) == sorted(zip(pairs.a, pairs.b))


def test_an_outlier_whose_label_is_nearer_than_chance_goes_to_review_not_out():
    """A hard photo of a 6-image label: no neighbour looks like the same person, yet its
    nearest face is of its own label (chance 0.01). It is contested: review, kept, with the
    reason saying why; the same row at chance 1 (no face of its label near) is an outlier."""
    import dataclasses

    from facecluster.findings import find_issues, find_outliers

    labels = np.array([0] * 6 + [1] * 6)
    names = np.array(["a", "b"], dtype=object)
    sig = _evidence(labels, given=[0.0] + [4.0] * 11, other=[0.0] * 12, best_other=[-1] * 12,
                    none_prob=[0.9] + [0.0] * 11)
    # far below chance (CHANCE_TIED) the photo is its label's: neither dropped nor reviewed
    for chance, expect in ((1.0, "outlier"), (0.01, "review"), (0.001, "")):
        agreement = dataclasses.replace(sig.agreement, label_chance=np.array([chance] + [1.0] * 11, np.float32))
        sig_c = dataclasses.replace(sig, agreement=agreement)
        out = find_outliers(sig_c, labels)
        assert out.mask[0] == (expect == "outlier") and bool(out.contested[0]) == (expect == "review")
        found = find_issues(sig_c, labels, names)
        assert found.issue[0] == expect
        if expect == "review":
            assert "nearer than a random label's would be (chance 0.010)" in found.reason[0]


def test_label_chance_counts_only_the_labels_core_so_two_flips_do_not_vouch_for_each_other():
    from facecluster.calibration import fit_calibration
    from facecluster.knn import build_knn_graph
    from facecluster.votes import knn_label_agreement

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((5, 24)) * 3
    x = np.vstack([c + rng.standard_normal((10, 24)) for c in centres])
    # two photos of person 1 filed under label 0, next to each other
    x = np.vstack([x, centres[1] + rng.standard_normal((2, 24))])
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10 + [3] * 10 + [4] * 10 + [0, 0])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    graph = build_knn_graph(unit, k=10, device="cpu")
    agreement = knn_label_agreement(graph, labels, fit_calibration(graph, labels))
    q = 11 / 51  # a random other row carries label 0
    assert np.allclose(agreement.label_chance[:10], q, atol=1e-6), "a member's nearest face is its label's"
    assert (agreement.label_chance[-2:] == 1.0).all(), "the flips' own-label neighbour is the other flip"


def _random_lists(seed, n, k, n_labels):
    """A generator, random neighbour labels (n, k) and row labels (n,) over ``n_labels``."""
    rng = np.random.default_rng(seed)
    return rng, rng.integers(0, n_labels, (n, k)), rng.integers(0, n_labels, n)


@pytest.mark.parametrize("seed", range(6))
def test_label_votes_name_the_other_label_with_most_mass(seed):
    # per row: the own label's mass, and among the other labels with positive weight the one
    # whose weights sum highest (ties: the smaller code), summed in neighbour order
    from facecluster.votes import _label_votes

    rng, nb, labels = _random_lists(seed, 300, 9, 5)
    n, k = nb.shape
    weights = np.where(rng.random((n, k)) < 0.3, 0.0, rng.integers(0, 4, (n, k)) / 4)  # ties and zeros
    given, best, best_mass = _label_votes(nb, weights, labels)
    for i in range(n):
        sums: dict = {}
        for lab, w in zip(nb[i], weights[i]):
            if lab != labels[i] and w > 0:
                sums[int(lab)] = sums.get(int(lab), 0.0) + w
        assert given[i] == pytest.approx(weights[i][nb[i] == labels[i]].sum())
        if not sums:
            assert best[i] == -1 and best_mass[i] == 0.0
        else:
            top = min(sums, key=lambda lab: (-sums[lab], lab))
            assert (best[i], best_mass[i]) == (top, sums[top])


def test_a_label_holding_a_flip_merges_with_the_other_half_of_its_person():
    """A two-image label holding its person and a flip of someone else is judged as it stands
    once the flip has left: one person with the one-image label of the same person."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((4, 32))
    x = np.vstack([centres[i] + 0.3 * rng.standard_normal((20, 32)) for i in range(3)])
    labels = np.repeat([0, 1, 2], 20)
    # person 3, seen twice, under two names; the second name also holds an image of b's person
    x = np.vstack([x, centres[3] + 0.3 * rng.standard_normal((2, 32)), centres[1] + 0.3 * rng.standard_normal((1, 32))])
    labels = np.append(labels, [3, 4, 4])
    unit, _, _ = prepare_embeddings(x, centre=False)
    names = np.array(["a", "b", "c", "solo", "two"], dtype=object)
    graph = build_knn_graph(unit, k=10, device="cpu")
    signals = compute_signals(graph, labels, 5)
    findings = find_issues(signals, labels, names, graph=graph)
    assert findings.issue[-1] == "mislabeled" and names[findings.suggested[-1]] == "b"
    assert sorted(map(tuple, findings.merges[["label", "merged_into"]].values.tolist())) == [("two", "solo")]
    assert findings.issue[-2] == "duplicate_identity" and findings.issue[-3] == ""
    # without the graph the one-person test reads "two" as given, two people: no merge
    assert find_issues(signals, labels, names).merges.empty
    # a mask that would empty every label leaves none: the labels as given
    from facecluster.findings import find_duplicate_identities

    everyone = find_duplicate_identities(signals, labels, names, embeddings=unit, leaving=np.ones(len(labels), bool))
    as_given = find_duplicate_identities(signals, labels, names, embeddings=unit)
    assert everyone.merges.equals(as_given.merges)


def _label_sums_by_matrix(indices, p_same, labels, n_labels):
    """The definition, by sparse matrices: the symmetric maximum of the directed weights,
    summed over label × label."""
    import scipy.sparse as sp

    n = len(labels)
    valid = indices >= 0
    rows = np.repeat(np.arange(n), indices.shape[1])[valid.ravel()]
    w = sp.csr_matrix((p_same[valid], (rows, indices[valid])), shape=(n, n))
    w = w.maximum(w.T)
    member = sp.csr_matrix((np.ones(n), (np.arange(n), labels)), shape=(n, n_labels))
    return (member.T @ w @ member).toarray()


@settings(max_examples=60, deadline=None)
@given(st.integers(4, 40), st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_label_pairs_sums_every_edge_once_at_its_larger_weight(n, k, n_labels, seed):
    """The compiled label sums against the matrix definition: one-way and two-way edges,
    missing neighbours (-1), zero weights (copies), labels with no edge at all."""
    from facecluster.knn import KnnGraph
    from facecluster.votes import label_pairs

    rng = np.random.default_rng(seed)
    k = min(k, n - 1)
    indices = np.array([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)], dtype=np.int32)
    indices[rng.random(indices.shape) < 0.15] = -1
    p_same = np.where(indices >= 0, rng.choice([0.0, 0.25, 0.5, 1.0], indices.shape), 0.0)
    labels = rng.integers(0, n_labels, n)
    graph = KnnGraph(indices, np.zeros(indices.shape, dtype=np.float32))
    pairs = label_pairs(graph, labels, p_same, n_labels)
    between = _label_sums_by_matrix(indices, p_same, labels, n_labels)
    lo, hi = np.nonzero(np.triu(between, 1))
    assert list(zip(pairs.a, pairs.b)) == list(zip(lo, hi))  # the joined pairs, in (a, b) order
    mass = between.sum(axis=1)
    np.testing.assert_allclose(pairs.cross_share_a, between[lo, hi] / np.maximum(mass[lo], 1e-12), rtol=1e-6)
    np.testing.assert_allclose(pairs.cross_share_b, between[lo, hi] / np.maximum(mass[hi], 1e-12), rtol=1e-6)


def test_a_leaving_row_lends_no_evidence_text_to_a_real_labels_merge():
    """A flip found and leaving its label becomes a one-image label of its own for the merge
    tests; its claim on its true label is no evidence for that label's merge, and its
    placeholder name never reaches a merge's evidence or a row's reason."""
    from facecluster.synth import inject_noise

    seed = 69
    rng = np.random.default_rng(seed)
    n = int(rng.integers(150, 700))
    ids = int(rng.integers(10, n // 4))
    x, y = make_faces(n, ids, 32, offset=float(rng.choice([0.0, 2.2])), seed=seed)
    noisy = inject_noise(x, y, flip=0.08, open_set=0.03, split=0.1, duplicates=0.05, min_split_size=4,
                         split_any_size=True, seed=seed)
    unit, _, _ = prepare_embeddings(noisy.embeddings)
    graph = build_knn_graph(unit, k=int(rng.integers(5, 25)), device="cpu")
    labels = noisy.labels
    names = np.array([f"id{i}" for i in range(labels.max() + 1)], dtype=object)
    findings = find_issues(compute_signals(graph, labels, len(names)), labels, names, embeddings=unit, graph=graph)
    assert not findings.merges.empty
    assert not any("images of row " in text for text in findings.merges.evidence)
    assert not any("images of row " in str(text) for text in findings.reason)


def _people_and_strangers(rng, dim=32, n_people=40, per=6, n_strangers=120, spread=0.45):
    """Unit vectors: ``n_people`` people of ``per`` photos each (labels 0…), then
    ``n_strangers`` one-photo people, each under a label of their own."""
    centres = rng.standard_normal((n_people + n_strangers, dim))
    x = [centres[i] + spread * rng.standard_normal((per, dim)) for i in range(n_people)]
    x.append(centres[n_people:] + spread * rng.standard_normal((n_strangers, dim)))
    labels = np.concatenate([np.repeat(np.arange(n_people), per), n_people + np.arange(n_strangers)])
    unit, _, _ = prepare_embeddings(np.vstack(x), centre=False)
    return unit, labels


def test_nearest_stranger_model_weighs_a_similarity_for_one_person_against_the_nearest_stranger():
    """Fitted on the set alone: a similarity typical of two photos of one person is strong
    evidence of one person; one typical of a one-photo label's nearest stranger is evidence
    against. Too few rows to fit: no model."""
    from facecluster.calibration import fit_nearest_stranger

    unit, labels = _people_and_strangers(np.random.default_rng(0))
    graph = build_knn_graph(unit, k=10, device="cpu")
    model = fit_nearest_stranger(graph, labels)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -2.0)
    same = labels[:, None] == labels[None, :]
    multi = np.bincount(labels)[labels] > 1
    nearest_same = np.median(np.where(same, sims, -2.0).max(axis=1)[multi])
    nearest_stranger = np.median(np.where(~same, sims, -2.0).max(axis=1)[~multi])
    assert model.bayes_factor(nearest_same)[0] > 10
    assert model.bayes_factor(nearest_stranger)[0] < 0.1
    assert model.n_stranger == 120 and model.summary()["rows_same"] == 240
    # rows left out (``use``) lend nothing: with the one-photo labels alone there is no
    # same-person side; without them the smallest labels left stand in for them
    assert fit_nearest_stranger(graph, labels, use=labels >= 40) is None
    stand_in = fit_nearest_stranger(graph, labels, use=labels < 40)
    assert 200 <= stand_in.n_stranger <= 240 and stand_in.bayes_factor(nearest_same)[0] > 10
    assert fit_nearest_stranger(build_knn_graph(unit[:15], k=5, device="cpu"), labels[:15]) is None


def test_a_one_image_label_merges_only_when_its_photo_is_nearer_than_strangers_come():
    """Every other merge test passes (both partitions lump the one-image label with a
    six-image one, the one-person score is 1): another photo of that person under a label
    of its own is merged; a stranger whose photo is only as near the label as the nearest
    strangers of the set's one-image labels come is not. Without the graph (no model of the
    set's strangers) both merge, as before."""
    from facecluster.findings import find_duplicate_identities

    rng = np.random.default_rng(1)
    unit, labels = _people_and_strangers(rng)
    # label 1 becomes the one-image label under test; person 1's six photos go to label 0's
    # place and person 0 keeps five: move the first photo of label 0 out to label 1
    test_labels = labels.copy()
    test_labels[test_labels == 1] = 0 + 1000  # person 1's photos: a six-image label of their own
    test_labels[0] = 1                         # a photo of person 0 under a one-image label
    codes = np.unique(test_labels, return_inverse=True)[1]
    names = np.array([f"id{i}" for i in range(codes.max() + 1)], dtype=object)
    assert (codes[1:6] == 0).all() and codes[0] == 1
    sig = _lumped_pair(codes, one_person=1.0)
    graph = build_knn_graph(unit, k=10, device="cpu")
    merged = find_duplicate_identities(sig, codes, names, embeddings=unit, graph=graph).merges
    assert merged[["label", "merged_into"]].values.tolist() == [["id1", "id0"]]
    assert "times as likely for one person as for the nearest stranger" in merged["evidence"].iloc[0]

    # the same label holding a stranger instead, at the median similarity of a one-image
    # label's nearest other photo in this set
    sims = unit @ unit.T
    np.fill_diagonal(sims, -2.0)
    alone = np.bincount(codes)[codes] == 1
    typical = float(np.median(np.where(codes[:, None] != codes[None, :], sims, -2.0).max(axis=1)[alone]))
    anchor = unit[1]
    away = rng.standard_normal(unit.shape[1])
    away -= (away @ anchor) * anchor
    stranger = unit.copy()
    stranger[0] = typical * anchor + np.sqrt(1 - typical**2) * away / np.linalg.norm(away)
    graph = build_knn_graph(stranger, k=10, device="cpu")
    assert len(find_duplicate_identities(sig, codes, names, embeddings=stranger, graph=graph).merges) == 0
    assert len(find_duplicate_identities(sig, codes, names, embeddings=stranger).merges) == 1


def _two_image_label_with_a_stranger(rng):
    """The people-and-strangers set, relabelled: label ``pair`` holds the photo of a
    one-photo person and a photo of person 0, whose only other photo is under the one-image
    label ``solo``; person 0's other four photos are removed. Returns unit vectors, label
    codes, names, and the rows (alone, of person 0, solo)."""
    unit, labels = _people_and_strangers(rng)
    keep = ~np.isin(np.arange(len(labels)), [2, 3, 4, 5])
    unit, labels = unit[keep], labels[keep]  # person 0: rows 0 and 1
    alone = int(np.flatnonzero(labels == labels.max())[0])
    codes = labels.copy()
    codes[1] = labels.max() + 1          # person 0's second photo: a label of its own
    codes[alone] = 0                     # the stranger joins person 0's first photo
    codes = np.unique(codes, return_inverse=True)[1]
    names = np.array([f"id{i}" for i in range(codes.max() + 1)], dtype=object)
    names[codes[0]], names[codes[1]] = "pair", "solo"
    return unit, codes, names, (alone, 0, 1)


def test_of_two_images_that_do_not_match_the_one_with_its_person_elsewhere_is_the_wrong_one():
    """A two-image label holding a stranger's photo and a photo of someone whose other photo
    is filed under a one-image label: the kNN vote cannot judge either (the one-image label's
    photo vouches for nothing), so both would wait for review. Only one of the two has its
    nearest other-label photo at a similarity far likelier for one person than for the set's
    nearest strangers: it is the mislabeled one, pointed at that label, and its label-mate
    keeps its label. With no model of the set's strangers (no graph), both wait for review."""
    from facecluster.findings import tell_two_apart

    unit, codes, names, (alone, person, solo) = _two_image_label_with_a_stranger(np.random.default_rng(2))
    graph = build_knn_graph(unit, k=10, device="cpu")
    signals = compute_signals(graph, codes, len(names))
    findings = find_issues(signals, codes, names, embeddings=unit, graph=graph)
    assert findings.issue[person] == "mislabeled" and names[findings.suggested[person]] == "solo"
    assert findings.issue[alone] == "" and findings.score[person] == 0.5
    assert "times as likely for one person as for the nearest stranger" in findings.reason[person]
    as_before = find_issues(signals, codes, names, embeddings=unit)
    assert as_before.issue[person] == "review" and as_before.issue[alone] == "review"

    # the question alone: both must be in doubt, and exactly one strong
    from facecluster.calibration import fit_nearest_stranger

    model = fit_nearest_stranger(graph, codes)
    doubt = np.zeros(len(codes), dtype=bool)
    doubt[[alone, person]] = True
    apart = tell_two_apart(graph, codes, doubt, np.zeros(len(codes), dtype=bool), model)
    assert np.flatnonzero(apart.wrong).tolist() == [person] and np.flatnonzero(apart.partner).tolist() == [alone]
    assert apart.suggested[person] == codes[solo] and apart.factor[person] >= 3
    one_doubted = doubt.copy()
    one_doubted[alone] = False
    assert not tell_two_apart(graph, codes, one_doubted, np.zeros(len(codes), dtype=bool), model).wrong.any()
    # the photo of the same person leaving (found elsewhere as noise) leaves nothing to tell by
    gone = np.zeros(len(codes), dtype=bool)
    gone[solo] = True
    assert not tell_two_apart(graph, codes, doubt, gone, model).wrong.any()
    # unless it left as a stranger where it was filed: then this is the same stranger (an
    # outlier, no label to suggest), and its label-mate is its label's only image
    kin = tell_two_apart(graph, codes, doubt, gone, model, strangers=gone)
    assert np.flatnonzero(kin.wrong).tolist() == [person] and np.flatnonzero(kin.kin).tolist() == [person]
    assert kin.partner[alone] and kin.evidence[person] == solo and kin.suggested[person] == -1
    assert kin.factor[person] >= 3 and kin.sim[person] == pytest.approx(float(unit[person] @ unit[solo]), abs=1e-5)
    # not when the stranger found there was claimed for this very label: then it is this
    # label's person, and nothing tells which of the two is the wrong one
    claims = np.full(len(codes), -1)
    claims[solo] = codes[person]
    assert not tell_two_apart(graph, codes, doubt, gone, model, strangers=gone, claims=claims).wrong.any()


def test_a_row_left_alone_in_its_label_moves_only_when_its_photo_is_nearer_than_strangers_come():
    """A mislabel candidate whose label-mates all leave is, as the labels stand, a one-image
    label: it moves to the suggested label only on what a one-image merge needs. A stranger's
    photo only as near the suggested label as the set's one-image labels' nearest strangers
    come is withdrawn (it keeps its label); a photo of that label's person is not; nor is a
    candidate whose label keeps another image."""
    from facecluster.calibration import fit_nearest_stranger
    from facecluster.findings import Mislabeled, lone_claims

    unit, labels = _people_and_strangers(np.random.default_rng(4))
    graph = build_knn_graph(unit, k=10, device="cpu")
    model = fit_nearest_stranger(graph, labels)
    n = len(labels)
    strangers = np.flatnonzero(labels >= 40)
    lone, mate, kept_mate = strangers[0], strangers[1], strangers[2]
    codes = labels.copy()
    codes[mate] = codes[lone]            # two strangers under one label; the mate leaves
    codes[kept_mate] = codes[strangers[3]]  # two strangers under another; both candidates, one stays
    mask = np.zeros(n, dtype=bool)
    mask[[lone, kept_mate]] = True
    suggested = np.full(n, -1)
    suggested[[lone, kept_mate]] = 0     # both claimed by person 0's label
    mis = Mislabeled(mask, np.zeros(n, np.float32), np.zeros(n, np.float32), suggested, {}, 1)
    leaving = mask.copy()
    leaving[mate] = True
    assert np.flatnonzero(lone_claims(codes, mis, leaving, unit, model)).tolist() == [lone]
    # the same row holding another photo of person 0: it is that label's person, it moves
    person = unit.copy()
    person[lone] = unit[1]
    assert not lone_claims(codes, mis, leaving, person, model)[lone]


def test_nearest_stranger_factor_never_falls_as_the_similarity_rises():
    """Where one density thins faster than the other (the Gumbel's left tail, the kernel
    density's right tail) the ratio of the two would swing to either extreme: held monotone,
    a photo far from everyone is no evidence of one person and an exact copy is the most."""
    from facecluster.calibration import fit_nearest_stranger

    unit, labels = _people_and_strangers(np.random.default_rng(5))
    model = fit_nearest_stranger(build_knn_graph(unit, k=10, device="cpu"), labels)
    sims = np.linspace(-1.0, 1.0, 401)
    factor = model.bayes_factor(sims)
    assert np.all(np.diff(factor) >= 0)
    assert factor[0] < 1e-3 and factor[-1] > 1e3


def test_a_one_image_label_whose_photo_is_plainly_its_neighbours_person_is_a_merge_candidate():
    """A weak model spreads a photo's same-person mass over strangers, so the one-person test
    can score a one-image split half under the candidate bar (here 0, no evidence at all). When the photo's
    nearest photo under another label is far likelier one person than the nearest stranger,
    the pair is a candidate anyway and that evidence (at even odds) stands in for the test:
    with every partition lumping the two, it merges. Without the graph there is no such
    evidence and no merge."""
    from facecluster.findings import find_duplicate_identities

    unit, labels = _people_and_strangers(np.random.default_rng(1))
    codes = labels.copy()
    codes[codes == 1] = 1000
    codes[0] = 1                      # a photo of person 0 under a one-image label
    codes = np.unique(codes, return_inverse=True)[1]
    names = np.array([f"id{i}" for i in range(codes.max() + 1)], dtype=object)
    sig = _lumped_pair(codes, one_person=0.0)
    graph = build_knn_graph(unit, k=10, device="cpu")
    merged = find_duplicate_identities(sig, codes, names, embeddings=unit, graph=graph).merges
    assert merged[["label", "merged_into"]].values.tolist() == [["id1", "id0"]]
    assert len(find_duplicate_identities(sig, codes, names, embeddings=unit).merges) == 0
    # a fitted model and no graph or vectors to read the similarity from: no test, no crash
    from facecluster.calibration import fit_nearest_stranger

    model = fit_nearest_stranger(graph, codes)
    assert len(find_duplicate_identities(sig, codes, names, stranger=model).merges) == 0


def test_nearest_stranger_factor_is_not_inflated_by_hard_photos_of_small_labels():
    """Some labels hold a hard photo whose nearest same-label photo is far (cosine 0.2): the
    same-person density then has mass where the Gumbel of the strangers has thinned to
    nothing, and the raw ratio there is astronomically large. Held at the strangers' mode, a
    stranger-like similarity stays evidence against one person however many such photos."""
    from facecluster.calibration import fit_nearest_stranger
    from facecluster.knn import KnnGraph

    for hard in (0.0, 0.1):
        rng = np.random.default_rng(1)
        n1, nl, per = 500, 500, 4  # one-image labels, then labels of four
        labels = np.concatenate([np.arange(n1), n1 + np.repeat(np.arange(nl), per)])
        n = len(labels)
        idx = np.full((n, 2), -1, np.int32)
        sims = np.full((n, 2), -np.inf, np.float32)
        idx[:n1, 0] = rng.integers(n1, n, n1)  # a one-image label's nearest: a stranger, a fifth split halves
        sims[:n1, 0] = np.where(rng.random(n1) < 0.2, rng.normal(0.7, 0.08, n1), rng.gumbel(0.45, 0.03, n1))
        for i in range(n1, n):
            mates = np.flatnonzero(labels == labels[i])
            mates = mates[mates != i]
            same = rng.normal(0.2, 0.05) if rng.random() < hard else rng.normal(0.7, 0.08)
            pair = sorted([(same, rng.choice(mates)), (rng.gumbel(0.5, 0.03), rng.integers(0, n1))], reverse=True)
            for c, (sim, j) in enumerate(pair):
                idx[i, c], sims[i, c] = j, sim
        model = fit_nearest_stranger(KnnGraph(idx, sims), labels)
        assert model.bayes_factor(0.45)[0] < 0.1 and model.bayes_factor(0.75)[0] > 10


def test_the_same_person_density_weighs_each_label_once():
    """One big label of near-identical photos beside many small labels of looser pairs: each
    label weighing one, the same-person density peaks where the small labels' pairs are."""
    from facecluster.calibration import fit_nearest_stranger
    from facecluster.knn import KnnGraph

    rng = np.random.default_rng(2)
    n1, big, small = 300, 2000, 300  # one-image labels, one label of 2000 photos, 300 pairs
    labels = np.concatenate([np.arange(n1), np.full(big, n1), n1 + 1 + np.repeat(np.arange(small), 2)])
    n = len(labels)
    idx = np.zeros((n, 2), np.int32)
    sims = np.zeros((n, 2), np.float32)
    for i in range(n):
        mates = np.flatnonzero(labels == labels[i])
        mates = mates[mates != i]
        stranger = (int(rng.integers(0, n1)), rng.gumbel(0.4, 0.03))
        if not len(mates):
            idx[i], sims[i] = [stranger[0], (stranger[0] + 1) % n1], [stranger[1], stranger[1] - 0.01]
            continue
        same = rng.normal(0.95, 0.01) if labels[i] == n1 else rng.normal(0.65, 0.05)
        pair = sorted([(same, int(rng.choice(mates))), (stranger[1], stranger[0])], reverse=True)
        idx[i], sims[i] = [j for _, j in pair], [v for v, _ in pair]
    model = fit_nearest_stranger(KnnGraph(idx, sims), labels)
    assert abs(model.grid[np.argmax(model.density)] - 0.65) < 0.05


def test_two_pairs_in_doubt_are_told_apart_each_by_its_own_evidence():
    """Two two-image labels in doubt, their rows interleaved in row order: each is judged on
    its own images. And two photos of one person in two such labels, each the other's
    nearest: neither is evidence for the other (it is in doubt itself), so both stay a
    person's call rather than swap labels."""
    from facecluster.calibration import fit_nearest_stranger
    from facecluster.findings import tell_two_apart

    unit, labels = _people_and_strangers(np.random.default_rng(2))
    # person 1: its two most alike photos of six (a pair a person would call one person)
    six = np.flatnonzero(labels == 1)
    sims = unit[six] @ unit[six].T
    np.fill_diagonal(sims, -2.0)
    pick = six[list(np.unravel_index(np.argmax(sims), sims.shape))]
    keep = ~np.isin(np.arange(len(labels)), [2, 3, 4, 5, *np.setdiff1d(six, pick)])
    unit, labels = unit[keep], labels[keep]  # person 0: rows 0, 1; person 1: rows 2, 3
    s1, s2 = np.flatnonzero(labels >= 40)[-2:]
    codes = labels.copy()
    codes[1], codes[3] = 5000, 5001      # person 0's and person 1's second photos: labels of their own
    codes[s1], codes[s2] = 0, 1          # each first photo beside a stranger
    codes = np.unique(codes, return_inverse=True)[1]
    graph = build_knn_graph(unit, k=10, device="cpu")
    model = fit_nearest_stranger(graph, codes)
    doubt = np.zeros(len(codes), dtype=bool)
    doubt[[s1, 0, s2, 2]] = True         # rows 0 and 2 come before both strangers
    none = np.zeros(len(codes), dtype=bool)
    apart = tell_two_apart(graph, codes, doubt, none, model)
    assert np.flatnonzero(apart.wrong).tolist() == [0, 2]
    assert sorted(np.flatnonzero(apart.partner).tolist()) == sorted([s1, s2])
    assert apart.suggested[0] == codes[1] and apart.suggested[2] == codes[3]
    # person 0's second photo in a two-image label in doubt as well: no swap
    swap = codes.copy()
    swap[s2] = codes[1]
    doubt_both = np.zeros(len(codes), dtype=bool)
    doubt_both[[0, s1, 1, s2]] = True
    assert not tell_two_apart(graph, swap, doubt_both, none, model).wrong.any()


def test_find_issues_withdraws_the_claims_lone_claims_names(noisy_sets, monkeypatch):
    """The wiring: every candidate ``lone_claims`` withdraws keeps its label in the findings
    (here all of them: what is left mislabeled is the two-image labels told apart)."""
    import facecluster.findings as findings

    noisy = noisy_sets["centred"]
    unit, _, _ = prepare_embeddings(noisy.embeddings)
    graph = build_knn_graph(unit, k=30, device="cpu")
    names = np.array([f"id{i}" for i in range(noisy.labels.max() + 1)], dtype=object)
    signals = compute_signals(graph, noisy.labels, len(names))
    before = find_issues(signals, noisy.labels, names, embeddings=unit, graph=graph)
    assert (before.issue == "mislabeled").sum() > 20
    monkeypatch.setattr(findings, "lone_claims", lambda labels, mis, leaving, embeddings, stranger: mis.mask.copy())
    after = find_issues(signals, noisy.labels, names, embeddings=unit, graph=graph)
    assert (after.issue == "mislabeled").sum() == after.stats["nearest_stranger"]["two_image_labels_told_apart"]


def test_a_label_core_counts_a_photo_and_its_copies_once():
    # label 0: two photos of its person, and a stranger's photo with two near-identical copies.
    # Counted in rows the stranger's three would be the label's core and its two real photos
    # the ones outside it; a copy is no second observation, so the core is the real pair
    from facecluster.calibration import fit_calibration
    from facecluster.knn import build_knn_graph
    from facecluster.votes import vote_stage

    rng = np.random.default_rng(3)
    dim = 32
    centres = rng.standard_normal((8, dim)) * 2.5
    people = [c + rng.standard_normal((10, dim)) for c in centres[:6]]
    a = centres[6] + rng.standard_normal((2, dim))
    s = centres[7] + rng.standard_normal(dim)
    copies = s + 0.01 * rng.standard_normal((2, dim))
    x = np.vstack(people + [a, s[None], copies])
    labels = np.array([i for i in range(1, 7) for _ in range(10)] + [0] * 5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    graph = build_knn_graph(unit, k=8, device="cpu")
    duplicates, agreement = vote_stage(graph, labels, fit_calibration(graph, labels))
    real, stranger = np.arange(60, 62), np.arange(62, 65)
    assert len(set(duplicates.group[stranger])) == 1 and duplicates.group[62] >= 0, "the copies are found"
    assert agreement.core[real].all() and not agreement.core[stranger].any()


def test_a_two_image_labels_photo_of_a_stranger_found_elsewhere_leaves_as_that_stranger(tmp_path, monkeypatch):
    """End to end on a long-tailed set with the web noise mix: two-image labels in doubt
    whose one image matches a photo found to be a stranger where it was filed (an outlier,
    or a mislabel claimed by another label) send that image out as an outlier, no label
    suggested, the evidence named (row counted from 1, its label) in the reason; the
    stranger rows and their claims reach the question as found."""
    import facecluster
    import facecluster.findings as findings_module
    from facecluster.synth import WEB_MIX, inject_noise, label_names, long_tail
    from tests.conftest import write_set

    asked = {}
    real = findings_module.tell_two_apart

    def spy(*args, **kwargs):
        asked.update(strangers=np.asarray(args[5]), claims=np.asarray(args[6]))
        asked["answer"] = real(*args, **kwargs)
        return asked["answer"]

    monkeypatch.setattr(findings_module, "tell_two_apart", spy)
    x, y = make_faces(4000, 600, 64, seed=1, offset=0.6)
    x, y, _ = long_tail(x, y, seed=1)
    noisy = inject_noise(x, np.unique(y, return_inverse=True)[1], seed=1, **WEB_MIX)
    names = label_names(noisy.labels)
    result = facecluster.clean(write_set(tmp_path, noisy.embeddings, names), device="cpu",
                               stages=("hierarchical", "correlation"))
    found, apart = result.findings, asked["answer"]
    kin = np.flatnonzero(apart.kin)
    assert len(kin) >= 3
    codes = result.faceset.labels
    for i in kin:
        ev = apart.evidence[i]
        assert found.issue[i] == "outlier" and found.suggested[i] == -1 and found.score[i] >= 0.5
        assert codes[ev] != codes[i] and found.issue[ev] in ("outlier", "mislabeled")
        assert f"(row {ev + 1}, {names[ev]})" in found.reason[i] and "the same stranger" in found.reason[i]
        assert result.audit["fc_action"].iloc[i] == "drop"
    # a stranger found as a mislabel (claimed by a label other than the image's) counts too
    assert any(found.issue[apart.evidence[i]] == "mislabeled" for i in kin)
    mislabeled = np.flatnonzero((found.issue == "mislabeled") & ~apart.wrong)  # claims before the question
    assert len(mislabeled) and (asked["claims"][mislabeled] == found.suggested[mislabeled]).all()
    assert asked["strangers"][apart.evidence[kin]].all()
    stats = result.report["stages"]["findings"]["nearest_stranger"]
    assert stats["of_them_by_a_found_stranger"] == len(kin) <= stats["two_image_labels_told_apart"]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(2, 24), k=st.integers(1, 6), n_labels=st.integers(1, 4), n_groups=st.integers(0, 4),
       seed=st.integers(0, 10**6))
def test_label_cores_are_the_largest_mutual_groups_counted_in_photos(n, k, n_labels, n_groups, seed):
    """Against networkx: per label, the component of mutual likely-same edges holding the most
    photos (a row and its near-duplicate copies counting once; ties: the one met first in row
    order), marked when it holds two photos or more. Group ids are small integers that also
    name rows, as near_duplicate_groups' do."""
    import networkx as nx

    from facecluster.knn import KnnGraph
    from facecluster.votes import _label_cores

    rng = np.random.default_rng(seed)
    k = min(k, n - 1)
    idx = np.stack([rng.choice(np.delete(np.arange(n), i), size=k, replace=False) for i in range(n)]).astype(np.int32)
    idx[rng.random(idx.shape) < 0.2] = -1
    labels = rng.integers(0, n_labels, n)
    likely = (idx >= 0) & (labels[np.maximum(idx, 0)] == labels[:, None]) & (rng.random(idx.shape) < 0.8)
    groups = np.where(rng.random(n) < 0.5, rng.integers(0, max(n_groups, 1), n), -1) if n_groups else np.full(n, -1)
    got = _label_cores(KnnGraph(idx, np.where(idx >= 0, 0.5, -np.inf).astype(np.float32)), labels, likely, groups)
    edges = {(i, int(idx[i, c])) for i, c in zip(*np.nonzero(likely))}
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from((i, j) for i, j in edges if (j, i) in edges)
    comp = {v: frozenset(c) for c in nx.connected_components(g) for v in c}
    photos = {c: len({("group", groups[v]) if groups[v] >= 0 else ("row", v) for v in c}) for c in comp.values()}
    want = np.zeros(n, dtype=bool)
    for lab in np.unique(labels):
        best = max((comp[r] for r in np.flatnonzero(labels == lab)), key=lambda c: photos[c])  # first max wins
        if photos[best] >= 2:
            want[list(best)] = True
    assert (got == want).all()


def test_even_odds_claims_send_a_weak_claim_in_a_tiny_label_to_a_person():
    """A mislabel claim on a label of one or two images, backed at under even odds, goes to a
    person, unless it is a split's (claimed) or the label's other image matches a photo under
    another label (its person has a label, so this image is the odd one)."""
    from facecluster.findings import Mislabeled, even_odds_claims
    from facecluster.knn import KnnGraph

    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 5, 5, 6, 6])
    n = len(labels)
    # every row's list: one neighbour of another label, at its own similarity
    other = np.array([9, 13, 9, 9, 9, 9, 9, 9, 9, 0, 9, 13, 9, 9])
    sims = np.full(n, 0.2)
    sims[1] = 0.9  # row 0's label-mate matches a photo under label 6
    sims[11] = 0.9  # row 10's too, but row 10's claim is backed at even odds or better
    graph = KnnGraph(other[:, None].astype(np.int32), sims[:, None].astype(np.float32))

    class Stranger:  # factor 10 · sim: 0.9 → 9 (past 3), 0.2 → 2 (short of it)
        @staticmethod
        def bayes_factor(x):
            return 10.0 * np.atleast_1d(np.asarray(x, dtype=np.float64))

    mask = np.zeros(n, dtype=bool)
    mask[[0, 2, 4, 6, 9, 10, 12]] = True
    score = np.full(n, 0.3, dtype=np.float32)
    score[10] = 0.5
    mis = Mislabeled(mask, score, score, np.where(mask, 6, -1), {}, 1, np.zeros(n, dtype=bool))
    claimed = np.zeros(n, dtype=bool)
    claimed[4] = True
    leaving = mask & ~claimed
    even = even_odds_claims(graph, labels, mis, claimed, leaving, Stranger())
    # 0: its mate matches elsewhere; 4: a split's; 6: a label of three; 10: even odds
    # 2: its mate matches nothing; 9: a label of one image; 12: its mate matches at factor 2
    assert np.flatnonzero(even).tolist() == [2, 9, 12]
    # a copy is the candidate's own photo, not a label-mate: with row 1 a copy of row 0 (and
    # row 7 of row 6), labels 0 and 3 hold one and two photos as they stand
    group = np.full(n, -1)
    group[[0, 1]] = 0
    group[[6, 7]] = 1
    even = even_odds_claims(graph, labels, mis, claimed, leaving, Stranger(), group)
    assert np.flatnonzero(even).tolist() == [0, 2, 6, 9, 12]


def test_an_outlier_whose_label_is_found_all_but_it_goes_to_a_person():
    from facecluster.findings import Outliers, lone_outliers

    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    mask = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    stranger = np.zeros(10, dtype=bool)
    stranger[7] = True
    out = Outliers(mask, mask.astype(np.float32), mask.astype(np.float32), np.zeros(10, dtype=bool), stranger)
    found = np.array([1, 1, 1, 1, 0, 0, 0, 1, 1, 1], dtype=bool)
    # 0: the rest of label 0 is found; 3: label 1 keeps three images; 7: a stranger leaves whatever
    assert np.flatnonzero(lone_outliers(out, labels, found)).tolist() == [0]


def test_a_claimed_label_merged_as_the_target_keeps_its_claims(monkeypatch):
    """A label claimed whole whose claimer merges into it (the merge's target) is merged: its
    claims are not weighed again at even odds (they were sent to review while the merge
    stood)."""
    import facecluster.findings as findings_module
    from facecluster.knn import KnnGraph

    class Stranger:
        def bayes_factor(self, x):
            return np.ones_like(np.atleast_1d(np.asarray(x, dtype=np.float64)))

        def summary(self):
            return {}

    monkeypatch.setattr(findings_module, "fit_nearest_stranger", lambda *a, **k: Stranger())
    names = np.array(["part", "whole", "other"], dtype=object)
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    n = len(labels)
    sig = _evidence(labels, given=[0.5, 0.5, 3, 3, 3, 3, 3], other=[3.0, 3.0, 0, 0, 0, 0, 0],
                    best_other=[1, 1, -1, -1, -1, -1, -1], none_prob=[0] * n,
                    partitions={"hierarchical": [0, 1, 0, 0, 0, 2, 2], "correlation": [0, 1, 1, 1, 2, 1, 2]})
    graph = KnnGraph(np.array([[2], [2], [3], [2], [5], [6], [4]], np.int32), np.full((n, 1), 0.9, np.float32))
    found = find_issues(sig, labels, names, graph=graph)
    assert found.merges[["label", "merged_into"]].values.tolist() == [["whole", "part"]]
    assert "review" not in set(found.issue[:2])


def test_an_outlier_alone_in_its_label_says_why_it_is_for_review():
    labels = np.array([0, 0, 0, 0] + [1] * 6 + [2] * 6)
    names = np.array(["a", "b", "c"], dtype=object)
    n = len(labels)
    sig = _evidence(labels, given=[0, 0.2, 0.2, 0.2] + [3] * 12, other=[0, 5, 5, 5] + [0] * 12,
                    best_other=[-1, 1, 2, 2] + [-1] * 12, none_prob=[0.99] + [0] * (n - 1))
    found = find_issues(sig, labels, names)
    assert list(found.issue[:4]) == ["review", "mislabeled", "mislabeled", "mislabeled"]
    assert "every other image of its label was found" in found.reason[0]


@pytest.mark.parametrize("seed", range(4))
def test_nearest_photos_score_counts_each_label_on_its_first_photos(seed):
    # b / (b + g + 1) with the suggested label's and the own label's mass each summed over
    # their first NEAREST_PHOTOS voting neighbours in list order
    from facecluster.votes import NEAREST_PHOTOS, _nearest_photos_score

    n, k, n_labels = 200, 12, 4
    rng, nb, labels = _random_lists(seed, n, k, n_labels)
    # best_other is never the row's own label
    best = np.where(rng.random(n) < 0.1, -1, (labels + rng.integers(1, n_labels, n)) % n_labels)
    weights = np.where(rng.random((n, k)) < 0.3, 0.0, rng.random((n, k)))
    got = _nearest_photos_score(nb, weights, labels, best)
    for i in range(n):
        def mass(lab):
            ws = [w for nl, w in zip(nb[i], weights[i]) if nl == lab and w > 0 and lab >= 0]
            return sum(ws[:NEAREST_PHOTOS])
        b, g = mass(best[i]), mass(labels[i])
        assert got[i] == pytest.approx(b / (b + g + 1.0))


def test_a_big_look_alike_label_does_not_outvote_a_small_labels_close_photos():
    # label 0: three photos of one person, each other's nearest at 0.9; label 1: twenty photos
    # of a look-alike, 0.5 from them; row 23: a photo of label 1's person filed under label 0.
    # Summed, the look-alike's twenty photos outvote the small label's two; counted on its
    # nearest photos, the look-alike loses, and the flip is still found.
    from facecluster.findings import knn_mislabel_score
    from facecluster.knn import KnnGraph
    from facecluster.votes import knn_label_agreement

    class Linear:
        def __call__(self, sims):
            return np.clip((np.asarray(sims, np.float64) - 0.3) / 0.6, 0.0, 1.0).astype(np.float32)

    a_rows, b_rows, flip = [0, 1, 2], list(range(3, 23)), 23
    labels = np.array([0, 0, 0] + [1] * 20 + [0])
    k = 22
    idx = np.full((24, k), -1, np.int32)
    sims = np.full((24, k), -np.inf, np.float32)

    def fill(row, pairs):
        for c, (j, s) in enumerate(pairs[:k]):
            idx[row, c], sims[row, c] = j, s

    for i in a_rows:
        fill(i, [(j, 0.9) for j in a_rows if j != i] + [(j, 0.5) for j in b_rows] + [(flip, 0.3)])
    for i in b_rows:
        fill(i, [(j, 0.8) for j in b_rows if j != i] + [(flip, 0.8)] + [(j, 0.5) for j in a_rows])
    fill(flip, [(j, 0.85) for j in b_rows] + [(j, 0.3) for j in a_rows])
    agreement = knn_label_agreement(KnnGraph(idx, sims), labels, Linear())
    summed = knn_mislabel_score(agreement)
    near = agreement.nearest_photos_score
    assert (agreement.best_other[a_rows] == 1).all()
    assert (summed[a_rows] >= 0.5).all(), "summed, the look-alike's count wins"
    assert (near[a_rows] < 0.5).all(), "on its nearest photos it does not"
    assert summed[flip] >= 0.5 and near[flip] >= 0.5, "the flip is found either way"


def test_a_mislabel_candidate_must_win_on_the_suggested_labels_nearest_photos_too():
    import dataclasses

    from facecluster.findings import find_mislabeled

    # rows 0-3: label 0; row 0's summed vote says label 1 (8 against 1), row 1's too; on its
    # nearest photos row 0's suggested label loses (score 0.3), row 1's wins (0.7)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    sig = _evidence(labels, given=[1.0, 1.0, 4, 4, 4, 4, 4, 4], other=[8.0, 8.0, 0, 0, 0, 0, 0, 0],
                    best_other=[1, 1, -1, -1, -1, -1, -1, -1], none_prob=[0.0] * 8)
    assert find_mislabeled(sig, labels).mask[:2].all(), "without the nearest-photos score both are found"
    near = np.array([0.3, 0.7, 0, 0, 0, 0, 0, 0], np.float32)
    sig = dataclasses.replace(sig, agreement=dataclasses.replace(sig.agreement, nearest_photos_score=near))
    assert find_mislabeled(sig, labels).mask[:2].tolist() == [False, True]
    # report.json counts the votes that won on their count of photos alone
    found = find_issues(sig, labels, np.array(["a", "b"], dtype=object))
    assert found.stats["mislabel_votes_won_on_count_alone"] == 1
