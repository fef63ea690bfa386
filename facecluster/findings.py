"""Findings: the stages' evidence combined into what is wrong with each row.

The stages (:mod:`~facecluster.votes`, :mod:`~facecluster.hierarchical`,
:mod:`~facecluster.correlation`, :mod:`~facecluster.camsoftmax`) run side by side and return
plain arrays, gathered in :class:`Signals`. This module only combines them: one public
function per question a user asks, each returning plain arrays,

- :func:`find_mislabeled`: which rows carry a wrong label, and which label is right;
- :func:`find_outliers`: which rows fit no labelled identity;
- :func:`find_near_duplicates`: which rows are copies of another row, and which copy stays;
- :func:`find_duplicate_identities`: which labels are one person under two names;
- :func:`find_review`: which rows the evidence cannot judge ("cannot tell");

then :func:`resolve` gives each row one issue by an explicit order of precedence
(:data:`PRECEDENCE`) and :func:`find_issues` writes the reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .calibration import (
    Calibration,
    NearestStranger,
    fit_nearest_stranger,
    nearest_by_label,
)
from .errors import is_whole
from .partition import Partition
from .votes import LabelAgreement, LabelPairs, NearDuplicates, label_pairs_of

if TYPE_CHECKING:
    from .camsoftmax import Confidence
    from .knn import KnnGraph

ISSUES = ("mislabeled", "outlier", "near_duplicate", "duplicate_identity")
# not a problem found but one the evidence cannot decide: a person's call (never acted on)
REVIEW = "review"
NO_ISSUE = ""
# When a row answers several questions, the first issue here wins: a copy is removed whatever
# else is true of it (its kept twin carries the judgement); a row no labelled identity fits
# is an outlier even inside a label merged with another; a label merged into another is not
# torn apart row by row, so its rows are duplicate_identity rather than mislabeled.
PRECEDENCE = ("near_duplicate", "outlier", "duplicate_identity", "mislabeled")
MERGE_COLUMNS = ["label", "merged_into", "score", "evidence"]
# Significance level of "its own label's nearest image is nearer than chance": an outlier
# candidate below it is contested and goes to review (a probability, not a similarity).
CHANCE = 0.05
# ... and below this one (the "statistically significant" level Benjamin et al., 2018, propose
# where 0.05 is "suggestive") the row is tied to its label: a hard photo of the label's person,
# kept without review. Over the protocol's 30 sets the outlier candidates below it were 114
# clean rows and no noisy one; between it and CHANCE, 162 clean and 12 noisy.
CHANCE_TIED = 0.005
# A label pair is judged as one person when its one-person score reaches a quarter: with
# every other term perfect the pooled mean could still reach the bar of 1/2 from there.
MERGE_CANDIDATE = 0.25
# A label of one image is one observation: a merge of it, and a review of it, ask for
# three-to-one odds (a kNN mislabel score b / (b + 1) of 3/4: three reliable same-person votes
# for one other label)
SINGLE_IMAGE_ODDS = 0.75
# ... and the similarity of its photo to the other label's nearest at least three times as
# likely for one person as for the nearest of strangers (a Bayes factor of 3, the start of
# "positive" evidence on Kass & Raftery's scale; :class:`facecluster.calibration.NearestStranger`)
SINGLE_IMAGE_BAYES = 3.0
# A merge is refused when the centroid rank test rejects "one person" at this level: one
# label's images sit farther from the other's centroid than the other's own images do, far
# beyond chance (a probability, not a similarity; 0.1% with many candidate pairs tested).
TWO_PEOPLE_P = 0.001
# ... and only when the ranks are far apart: an image of one label ranks above one of the
# other's own less than one time in four (one person: one in two)
TWO_PEOPLE_AUC = 0.25
# images per label the nearest-neighbour mixing test of a merge looks at (a sample: its
# expectation does not depend on the sizes; bounds the cost at big identities)
MIXING_CAP = 200
# Both two-sample tests (the mixing test in its weaker direction, the centroid test) at half of
# what two random halves of one person's images show: a merge even when the pooled mean is
# under 1/2 (find_duplicate_identities)
TWO_SAMPLE_BAR = 0.5


@dataclass(frozen=True)
class FindingsConfig:
    """How findings are combined.

    report_floor : a kNN mislabel or pooled outlier score at or above this makes a finding
        (the policy decides later whether anything is done)
    review_share : a partition sends a row to review when at least this share of its
        cluster's other members carry one other label ...
    review_min_cluster : ... in a cluster of at least this many rows
    """

    report_floor: float = 0.5
    review_share: float = 0.5
    review_min_cluster: int = 4

    def __post_init__(self):
        if not 0 < self.report_floor <= 1 or not 0 < self.review_share <= 1:
            raise ValueError("report_floor and review_share must be in (0, 1]")
        if not is_whole(self.review_min_cluster) or self.review_min_cluster < 2:
            raise ValueError(f"review_min_cluster must be at least 2, got {self.review_min_cluster}")


@dataclass(frozen=True)
class Signals:
    """Every stage's evidence about one labelled set, as the stages returned it.

    calibration : the shared P(same person | cosine)
    duplicates, agreement : the kNN-vote stage (:func:`facecluster.votes.vote_stage`)
    hierarchical, correlation : the clustering stages' partitions (None when not run)
    camsoftmax : cross-fitted confidence (None when not run)
    """

    calibration: Calibration
    agreement: LabelAgreement
    duplicates: NearDuplicates
    hierarchical: Partition | None = None
    correlation: Partition | None = None
    camsoftmax: Confidence | None = None

    def partitions(self) -> list[tuple[str, Partition]]:
        """The clustering stages that ran, by name."""
        return [(name, p) for name, p in (("hierarchical", self.hierarchical), ("correlation", self.correlation))
                if p is not None]


@dataclass(frozen=True)
class Findings:
    """What is wrong with each sample, before any policy acts on it.

    issue : (n,) object, one of ISSUES, "review" (the evidence cannot decide: a person's call)
        or "" (no issue)
    score : (n,) float32 in [0, 1], higher = more likely a problem (of ``issue``; for review,
        how strongly the evidence leans against the label)
    mislabel_score : (n,) float32, every sample's kNN mislabel score (the pooled one is ``score``)
    outlier_score : (n,) float32, every sample's pooled outlier score (0 for labels under 3 images)
    suggested : (n,) int64, suggested label code for mislabeled samples, else -1
    keep_of_group : (n,) int64, for near-duplicates the row kept for their group, else -1
    review : (n,) bool, the rows whose issue is "review"
    reason : (n,) object, short text naming the evidence
    merges : DataFrame with columns label, merged_into, score, evidence (duplicate identities)
    corroborated : (n,) bool, mislabel candidates whose suggested label another stage also
        gives (a partition's majority or cam-softmax's top label)
    stats : dict of thresholds and counts for the report
    """

    issue: np.ndarray
    score: np.ndarray
    mislabel_score: np.ndarray
    outlier_score: np.ndarray
    suggested: np.ndarray
    keep_of_group: np.ndarray
    review: np.ndarray
    reason: np.ndarray
    merges: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=MERGE_COLUMNS))
    corroborated: np.ndarray | None = None
    stats: dict = field(default_factory=dict)

    def counts(self) -> dict:
        values, counts = np.unique(self.issue[self.issue != NO_ISSUE].astype(str), return_counts=True)
        out = {name: 0 for name in ISSUES}
        out.update({str(v): int(c) for v, c in zip(values, counts)})
        out["review"] = int(self.review.sum())
        return out


# --------------------------------------------------------------------------- evidence per partition


@dataclass(frozen=True)
class ClusterEvidence:
    """What a partition says about each sample's label.

    partition : (n,) cluster id per sample
    majority : (n,) int64, the most frequent label among the OTHER members of the sample's
        cluster (-1 for singletons)
    majority_share : (n,) share of the other members carrying ``majority``
    own_share : (n,) share of the other members carrying the sample's own label
    cluster_size : (n,) int64, rows in the sample's cluster (itself included)
    own_count : (n,) int64, the other members carrying the sample's own label
    """

    partition: np.ndarray
    majority: np.ndarray
    majority_share: np.ndarray
    own_share: np.ndarray
    cluster_size: np.ndarray
    own_count: np.ndarray


def cluster_evidence(partition: np.ndarray, labels: np.ndarray) -> ClusterEvidence:
    """Per-sample majority label of its cluster's other members, vectorised over (cluster, label) cells."""
    n_labels = int(labels.max()) + 1
    key = partition.astype(np.int64) * n_labels + labels
    cells, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    cell_cluster, cell_label = cells // n_labels, cells % n_labels
    # the two largest cells of every cluster (ties: smaller label)
    order = np.lexsort((cell_label, -counts, cell_cluster))
    c_sorted = cell_cluster[order]
    first = np.r_[True, c_sorted[1:] != c_sorted[:-1]]
    second = np.r_[False, first[:-1]] & ~first
    n_clusters = int(partition.max()) + 1
    top_label = np.full(n_clusters, -1, dtype=np.int64)
    top_count = np.zeros(n_clusters, dtype=np.int64)
    sec_label = np.full(n_clusters, -1, dtype=np.int64)
    sec_count = np.zeros(n_clusters, dtype=np.int64)
    top_label[c_sorted[first]], top_count[c_sorted[first]] = cell_label[order][first], counts[order][first]
    sec_label[c_sorted[second]], sec_count[c_sorted[second]] = cell_label[order][second], counts[order][second]
    size = np.bincount(partition, minlength=n_clusters)[partition]
    own_others = counts[inv] - 1
    c = partition
    is_top = top_label[c] == labels
    # among the other members: if the sample carries the top label, compare its remaining count
    # with the runner-up; otherwise the top label stays the majority
    own_wins = is_top & (own_others >= sec_count[c])
    majority = np.where(is_top, np.where(own_wins, labels, sec_label[c]), top_label[c])
    maj_count = np.where(is_top, np.where(own_wins, own_others, sec_count[c]), top_count[c])
    others = np.maximum(size - 1, 1)
    majority = np.where(size > 1, majority, -1)
    return ClusterEvidence(
        partition=partition,
        majority=majority.astype(np.int64),
        majority_share=np.where(size > 1, maj_count / others, 0.0).astype(np.float32),
        own_share=np.where(size > 1, own_others / others, 0.0).astype(np.float32),
        cluster_size=size.astype(np.int64),
        own_count=own_others.astype(np.int64),
    )


# --------------------------------------------------------------------------- one function per question


def partition_evidence(signals: Signals, labels: np.ndarray) -> list[tuple[str, ClusterEvidence]]:
    """What each partition that ran says about each row's label, by stage name. The
    per-question functions compute it when not given; :func:`find_issues` computes it once."""
    return [(name, cluster_evidence(part.labels, labels)) for name, part in signals.partitions()]


def _label_sizes(labels: np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """Images of each row's label, per row."""
    return np.bincount(labels, minlength=n_labels or 0)[labels]


def knn_mislabel_score(agreement: LabelAgreement) -> np.ndarray:
    """b / (b + g + 1): the best other label's reliable vote mass b against the given label's
    g, with one pseudo-vote of benefit of the doubt for the given label; float32, in [0, 1)."""
    g = agreement.given_support.astype(np.float64)
    b = agreement.other_support.astype(np.float64)
    return (b / (b + g + 1.0)).astype(np.float32)


def _knn_candidates(signals: Signals, labels: np.ndarray, floor: float, evidence: list | None = None) -> np.ndarray:
    """Rows the kNN vote says carry another label: score at the floor, a label to suggest,
    a label with at least 2 images (a label's only image cannot be outvoted: strong votes
    for another label mean a wrong label or one person under two names, and one image cannot
    tell which), and the row outside its label's core (a row whose own label's images are its
    mutual, likely-same-person neighbours is that person, however its other neighbours vote:
    on real dlib faces most false mislabel findings were such hard photos, and split halves
    are merged, not torn apart row by row).

    A vote that only leans (half the floor) is enough when every other stage names the same
    label (:func:`_unanimous`): a flip whose person has two or three images in the set has
    that few witnesses, and a witness's reliability counts the flip beside it against it, so
    the vote alone stays under the floor however close the faces.

    The same test holds with each label counted on its nearest photos only
    (:attr:`~facecluster.votes.LabelAgreement.nearest_photos_score`): a big look-alike
    identity's many photos, each a little similar, must not outvote a small label's close ones."""
    agr = signals.agreement
    in_core = np.zeros(len(labels), dtype=bool) if agr.core is None else agr.core
    mis = knn_mislabel_score(agr)
    evidence = evidence if evidence is not None else partition_evidence(signals, labels)
    unanimous = _unanimous(signals, labels, evidence)
    votes = (mis >= floor) | ((mis >= 0.5 * floor) & unanimous)
    if agr.nearest_photos_score is not None:
        # the suggested label must win on its nearest photos too, not on its count of photos
        near = agr.nearest_photos_score
        votes &= (near >= floor) | ((near >= 0.5 * floor) & unanimous)
    return votes & (agr.best_other >= 0) & (_label_sizes(labels) >= 2) & ~in_core


def _unanimous(signals: Signals, labels: np.ndarray, evidence: list) -> np.ndarray:
    """Rows for which every stage besides the kNN vote, at least two of them, names the kNN
    vote's best other label: each partition puts the row in a cluster mostly (over half) of
    that label and holding under half of the row's own label's other images (a cluster that
    lumped two look-alike identities says nothing), and cam-softmax ranks it first (where it
    scored the row)."""
    suggestion = signals.agreement.best_other
    sizes = _label_sizes(labels)
    agree = suggestion >= 0
    stages = np.zeros(len(labels), dtype=np.int64)
    for _, ev in evidence:
        agree &= ((ev.majority == suggestion) & (ev.majority_share > 0.5)
                  & (ev.own_count < 0.5 * np.maximum(sizes - 1, 1)))
        stages += 1
    conf = signals.camsoftmax
    if conf is not None:
        scored = np.isfinite(conf.p_given)
        agree &= ~scored | (conf.top == suggestion)
        stages += scored
    return agree & (stages >= 2)


@dataclass(frozen=True)
class Mislabeled:
    """:func:`find_mislabeled`'s answer; all arrays of shape (n_samples,).

    mask : bool, mislabel candidates
    score : float32, pooled probability that the suggested label is right (every row)
    knn_score : float32, the kNN vote's own mislabel score (every row)
    suggested : int64, the label the kNN votes back most among the others (-1 if none)
    corroborated_by : stage name → bool mask of candidates whose suggestion that stage shares
    n_terms : stages in the pool (kNN, each partition, cam-softmax)
    contested : bool, candidates sent to review: their own label's nearest image is nearer
        than chance (:attr:`~facecluster.votes.LabelAgreement.label_chance` < CHANCE), or their
        label has at most two images and no stage but the kNN vote backs the suggestion, or
        backs it at under even odds (:func:`even_odds_claims`)
    """

    mask: np.ndarray
    score: np.ndarray
    knn_score: np.ndarray
    suggested: np.ndarray
    corroborated_by: dict
    n_terms: int
    contested: np.ndarray | None = None


def find_mislabeled(signals: Signals, labels: np.ndarray, *, report_floor: float = 0.5,
                    evidence: list | None = None) -> Mislabeled:
    """Rows whose label the evidence says is wrong, with the label it says is right.

    Which rows: the kNN vote decides (:func:`knn_mislabel_score` at ``report_floor``, or at
    half of it when every other stage names the same label, and the same with each label
    counted on its nearest photos; labels of at least 2 images; :func:`_knn_candidates`).
    How sure: every stage that ran gives its probability that the
    suggested label L* is right, and the score is their mean (a linear opinion pool, so it
    stays a probability and a policy threshold of 0.75 means three to one): kNN, the score
    above; each partition, the share of the row's cluster carrying L* when L* is its majority
    (else 0); cam-softmax, its cross-fitted probability of L* when L* is its top label (else
    0; a row it could not score leaves the kNN and partition terms to stand alone). A stage
    that disagrees pulls the score down, so a high score needs independent stages to agree.
    """
    agr = signals.agreement
    suggestion = agr.best_other
    knn = knn_mislabel_score(agr)
    evidence = evidence if evidence is not None else partition_evidence(signals, labels)
    mask = _knn_candidates(signals, labels, report_floor, evidence)
    terms = [knn.astype(np.float64)]
    corroborated_by = {}
    for name, ev in evidence:
        agrees = (ev.majority == suggestion) & (suggestion >= 0)
        terms.append(np.where(agrees, ev.majority_share, 0.0))
        corroborated_by[name] = mask & agrees
    conf = signals.camsoftmax
    if conf is not None:
        ok = np.isfinite(conf.p_given)
        agrees = conf.top == suggestion
        terms.append(np.where(ok & agrees, np.nan_to_num(conf.p_top), 0.0))
        corroborated_by["camsoftmax"] = mask & agrees
        counted = np.vstack(terms)
        pooled = np.where(ok, counted.mean(axis=0), counted[:-1].mean(axis=0))
    else:
        pooled = np.vstack(terms).mean(axis=0)
    # as for outliers: a candidate whose own label's nearest image is nearer than chance is a
    # person's call (a hard photo, or a flip that landed beside a look-alike of its label)
    contested = np.zeros(len(labels), dtype=bool)
    if agr.label_chance is not None:
        contested = mask & (agr.label_chance < CHANCE)
    # a label of two images has no majority: its other image not backing the row is no vote
    # against it, and the kNN vote alone cannot tell a wrong label from a loner beside a big
    # identity (on the long-tailed real sets such loners were half of these findings); another
    # stage must back the suggested label, or a person decides
    backed = np.logical_or.reduce(list(corroborated_by.values())) if corroborated_by else np.zeros(len(labels), bool)
    contested |= mask & (_label_sizes(labels) <= 2) & ~backed
    mask = mask & ~contested
    corroborated_by = {name: m & ~contested for name, m in corroborated_by.items()}
    return Mislabeled(mask, pooled.astype(np.float32), knn, np.where(suggestion >= 0, suggestion, -1).astype(np.int64),
                      corroborated_by, len(terms), contested)


@dataclass(frozen=True)
class Outliers:
    """:func:`find_outliers`'s answer; arrays of shape (n_samples,).

    mask : bool, outliers; score : float32 pooled outlier probability (0 for labels under 3
    images but strangers); knn_score : float32, P(no reliable neighbour is the same person);
    contested : bool, sent to review (see :func:`find_outliers`); stranger : bool, outliers
    found by :func:`strangers`
    """

    mask: np.ndarray
    score: np.ndarray
    knn_score: np.ndarray
    contested: np.ndarray | None = None
    stranger: np.ndarray | None = None


def find_outliers(signals: Signals, labels: np.ndarray, *, report_floor: float = 0.5,
                  evidence: list | None = None) -> Outliers:
    """Rows no labelled identity fits.

    The event "no labelled identity fits" gets two probabilities, pooled by their mean: the
    kNN vote's P(no reliable neighbour is the same person) and cam-softmax's 1 − p(given
    label) from a head that never saw the row (the kNN term alone where cam-softmax did not
    run or could not score the row). A row is an outlier when the pool reaches
    ``report_floor``, its label has at least 3 images (with fewer there is no majority to
    disagree with), and the kNN vote does not back another label for it: a row some other
    label claims is a mislabel candidate, not a row that fits no one. A row in its label's core
    (:attr:`~facecluster.votes.LabelAgreement.core`: the largest group of the label's rows
    joined by mutual, likely-same-person kNN edges) belongs to a coherent identity and is
    never an outlier; a row whose own label's nearest image is nearer than a random label's
    would be (at the :data:`CHANCE` level) is contested and goes to review (at the
    :data:`CHANCE_TIED` level it is its label's hard photo: neither), as is a row of a
    label with no core at all (no identity to fall outside of: on the long-tailed real sets
    27 of 46 such drops were clean rows of small identities the model spreads wide).

    A stranger is an outlier whatever its label's size (:func:`strangers`): every partition
    that ran puts it among at least three other rows, none of its own label (or, when the
    vote finds no reliable same-person neighbour for it, its label not leading), no label
    holding half of them. That is the mark of an open-set person whose photos were filed under random
    names, and the one kind of noise a label of one or two images can be judged on (it has
    no majority to disagree with). Its score is the larger of the pooled one and the
    partitions' mean share of rows that are not the cluster's majority label.
    """
    sizes = _label_sizes(labels)
    agr = signals.agreement
    knn = np.where(sizes >= 3, agr.none_prob, 0.0).astype(np.float32)
    terms = [knn.astype(np.float64)]
    conf = signals.camsoftmax
    if conf is not None:
        ok = np.isfinite(conf.p_given)
        terms.append(np.where(ok, 1.0 - np.nan_to_num(conf.p_given), knn))
    pooled = np.vstack(terms).mean(axis=0)
    # a row in its label's core (a coherent identity) is never an outlier: a whole small
    # identity whose images are each other's neighbours used to be dropped this way
    backed = np.zeros(len(labels), dtype=bool) if agr.core is None else agr.core
    evidence = evidence if evidence is not None else partition_evidence(signals, labels)
    candidate = _knn_candidates(signals, labels, report_floor, evidence)
    # a row in its label's core is a stranger only when the vote finds no reliable same-person
    # neighbour for it: two photos of one stranger under one name are each other's core
    unsupported = agr.none_prob >= report_floor
    stranger = strangers(evidence, labels, unsupported) & (~backed | unsupported) & ~candidate
    if stranger.any():
        unclaimed = np.mean([1.0 - ev.majority_share for _, ev in evidence], axis=0)
        pooled = np.where(stranger, np.maximum(pooled, unclaimed), pooled)
        stranger &= pooled >= report_floor
    mask = (~candidate & (pooled >= report_floor) & (sizes >= 3) & ~backed) | stranger
    # a row whose own label's nearest image is nearer than a random label's would be at the
    # CHANCE level is tied to its label however low the similarity (a hard photo), or a
    # stranger that landed beside a look-alike by chance: a person's call, not a drop
    n_lab = int(labels.max()) + 1
    core_n = None if agr.core is None else np.bincount(labels, weights=agr.core.astype(np.float64), minlength=n_lab)
    contested = np.zeros(len(labels), dtype=bool)
    tied = np.zeros(len(labels), dtype=bool)
    if agr.label_chance is not None:
        contested = mask & (agr.label_chance < CHANCE)
        if core_n is not None and stranger.any():
            # ... unless the label's core is strangers too: its nearest image is another
            # photo of the same stranger, which ties the row to the stranger, not to the label
            core_strangers = np.bincount(labels, weights=(agr.core & stranger).astype(np.float64), minlength=n_lab)
            contested &= ~(stranger & (core_n >= 2)[labels] & (core_strangers == core_n)[labels])
        # far below chance the row is its label's person (kept, not reviewed)
        tied = contested & (agr.label_chance < CHANCE_TIED)
        contested &= ~tied
    # a label with no core (no two of its images are mutual, likely-same-person neighbours)
    # has no identity for a row to fall outside of: every row of it is unsupported, and which
    # ones are the person is unknown (a person the model spreads wide, or several people);
    # a person's call, not a drop. Strangers are judged by the partitions, not by their label.
    if core_n is not None:
        contested |= mask & ~stranger & ~(core_n >= 2)[labels] & ~tied
    mask &= ~contested & ~tied
    return Outliers(mask, np.where((sizes >= 3) | stranger, pooled, 0.0).astype(np.float32), knn, contested,
                    stranger & mask)


def strangers(evidence: list[tuple[str, ClusterEvidence]], labels: np.ndarray,
              unsupported: np.ndarray | None = None) -> np.ndarray:
    """Rows that every partition puts among at least three other rows, no label holding half
    of them, and the row's own label not leading: a person with several photos in the set,
    each under another name. (n_samples,) bool; all False when no partition ran. No
    similarity enters: the partitions drew the clusters.

    ``unsupported``: (n_samples,) bool, rows with no reliable same-person neighbour (the kNN
    vote's :attr:`~facecluster.votes.LabelAgreement.none_prob` at the floor). Without it, a
    row's cluster must hold none of its own label; with it, an unsupported row's own label may
    sit in the cluster as long as another label leads: two photos of one stranger filed under
    one name (on the long-tailed real sets, a person of 31 photos had 2 under one label, each
    other's nearest and so the label's core, among 29 under 29 other names)."""
    if np.ndim(labels) == 0:  # the former signature's n_samples: the own-label-absent rule alone
        labels, unsupported = np.full(int(labels), -1), None
    labels = np.asarray(labels)
    if not evidence:
        return np.zeros(len(labels), dtype=bool)
    alone, among = [], []
    for _, ev in evidence:
        # with two others of two labels one holds half: three others is the least that can pass
        scattered = (ev.cluster_size - 1 >= 3) & (ev.majority_share < 0.5)
        alone.append(scattered & (ev.own_share == 0))
        among.append(scattered & (ev.majority != labels))
    out = np.logical_and.reduce(alone)
    if unsupported is not None:
        out |= np.logical_and.reduce(among) & unsupported
    return out


@dataclass(frozen=True)
class NearDuplicateRows:
    """:func:`find_near_duplicates`'s answer; arrays of shape (n_samples,).

    mask : bool, rows to remove as copies; score : float32, strength of the closest duplicate
    edge; keep : int64, the row kept for the row's group (-1 outside groups and for keepers);
    partner : int64, the closest duplicate partner (-1 if none)
    """

    mask: np.ndarray
    score: np.ndarray
    keep: np.ndarray
    partner: np.ndarray


def find_near_duplicates(signals: Signals, labels: np.ndarray, doubt: np.ndarray | None = None) -> NearDuplicateRows:
    """Rows that are copies of another row, and the one row of each group that stays.

    The groups come from the kNN-vote stage (:func:`facecluster.votes.near_duplicate_groups`,
    a data-derived cut). In a group whose members share a label the first row stays; where
    their labels differ, the member whose label fits it best: the lowest of the larger of its
    kNN mislabel score and ``doubt`` ((n_samples,), e.g. the outlier score: how likely no
    labelled identity fits the row; ties: first row); a row whose label holds no other photo
    (its own copies apart) has no label-mate to be backed by, and its kNN score counts as 1/2.
    Without the outlier score, the one photo of a one-image identity, copied under a big label,
    was dropped as the copy while the copy, which fits nobody in the big label, went out as an
    outlier (OMZ's long-tailed set).
    """
    dup = signals.duplicates
    n = len(labels)
    keep = np.full(n, -1, dtype=np.int64)
    mask = np.zeros(n, dtype=bool)
    in_group = np.flatnonzero(dup.group >= 0)
    if len(in_group):
        mis = knn_mislabel_score(signals.agreement)
        grp_all = dup.group[in_group]
        lab_all = labels[in_group]
        n_grp = int(grp_all.max()) + 1
        # a row whose label holds no other photo (its own copies apart) has no label-mate to
        # be supported by: its vote says nothing of its label's fit, even odds. Else the
        # one photo of a one-image label, copied under another name where the copy fits no
        # one either, lost a coin toss to the copy, which then left as that label's mislabel:
        # the photo gone twice (dlib's long-tailed set)
        n_lab = int(labels.max()) + 1
        same_label_copies = np.unique(grp_all * n_lab + lab_all, return_inverse=True, return_counts=True)
        copies_here = same_label_copies[2][same_label_copies[1]]
        alone = np.bincount(labels, minlength=n_lab)[lab_all] == copies_here
        mis = mis.copy()
        mis[in_group[alone]] = 0.5
        if doubt is not None:
            mis = np.maximum(mis, np.asarray(doubt, dtype=np.float32))
        lab_min = np.full(n_grp, np.iinfo(np.int64).max)
        lab_max = np.full(n_grp, -1)
        np.minimum.at(lab_min, grp_all, lab_all)
        np.maximum.at(lab_max, grp_all, lab_all)
        mixed = (lab_min != lab_max)[grp_all]
        rank = np.where(mixed, mis[in_group], 0.0)
        order = np.lexsort((in_group, rank, grp_all))
        rows = in_group[order]
        grp = dup.group[rows]
        head = np.r_[True, grp[1:] != grp[:-1]]
        keeper = np.empty(n_grp, dtype=np.int64)
        keeper[grp[head]] = rows[head]
        dropped = rows[~head]
        keep[dropped] = keeper[dup.group[dropped]]
        mask[dropped] = True
    return NearDuplicateRows(mask, np.where(mask, dup.score, 0.0).astype(np.float32), keep, dup.partner)


@dataclass(frozen=True)
class DuplicateIdentities:
    """:func:`find_duplicate_identities`'s answer.

    merges : DataFrame (label, merged_into, score, evidence), one row per label to merge
    merged_into : (n_labels,) int64, the label code each label merges into (-1: none)
    label_score : (n_labels,) float32, each merged label's pooled score (0 elsewhere)
    evidence : merged label code → the evidence behind its suggestion, in one line
    judged : (label, label) with the smaller code first → the pooled score of every pair the
        merge tests judged, merged or not (the larger of the pooled mean and the two-sample
        score)
    """

    merges: pd.DataFrame
    merged_into: np.ndarray
    label_score: np.ndarray
    evidence: dict
    judged: dict = field(default_factory=dict)


def staying_labels(labels: np.ndarray, leaving: np.ndarray, n_labels: int) -> np.ndarray:
    """Label codes with each row in ``leaving`` given a label of its own (codes n_labels,
    n_labels + 1, … in row order): the labels as they stand once the rows found to be another
    person's, strangers or copies have left. A label all of whose rows would leave keeps them
    (call :func:`leaving_rows` first)."""
    out = np.asarray(labels, dtype=np.int64).copy()
    rows = np.flatnonzero(leaving)
    out[rows] = n_labels + np.arange(len(rows))
    return out


def leaving_rows(labels: np.ndarray, found: np.ndarray, n_labels: int) -> np.ndarray:
    """The rows of ``found`` (noise or copies found) that leave their label: all of them but
    those of a label that would be left empty (its rows say nothing against each other)."""
    found = np.asarray(found, dtype=bool)
    left = np.bincount(labels[~found], minlength=n_labels)
    return found & (left[labels] > 0)


def find_duplicate_identities(signals: Signals, labels: np.ndarray, label_names: np.ndarray, *,
                              embeddings: np.ndarray | None = None,
                              evidence: list | None = None, leaving: np.ndarray | None = None,
                              pairs: LabelPairs | None = None,
                              no_person: np.ndarray | None = None,
                              graph: KnnGraph | None = None,
                              stranger: NearestStranger | None = None) -> DuplicateIdentities:
    """Labels that are one person under two names, and which name each merges into.

    Every test reads the labels as they stand once the rows in ``leaving`` ((n_samples,)
    bool: images found to be another person's, strangers, copies; :func:`leaving_rows`) have
    left them: a two-image label holding its person and a flip of someone else is that
    person's, and a copy does not make a label look tighter than it is. ``pairs``: the
    one-person test on those labels (:func:`facecluster.votes.label_pairs_of` with
    :func:`staying_labels`); without it the vote stage's, on the labels as given. Measured
    on the real protocol sets (docs/benchmarks.md, issue 13): merge recall 0.657 → 0.886 on
    OMZ's long-tailed version, 0.886 → 0.943 on OMZ plain, precision 0.803 → 0.900 on dlib's
    long-tailed version. ``no_person``: (n_samples,) bool, rows that are no labelled
    identity's (outliers, and the copies found among them); a label all of whose rows are
    such holds no person to merge (two photos of one stranger under one name, two more under
    another, were a false merge on OMZ's long-tailed set). ``graph``: the kNN graph, to fit
    :class:`~facecluster.calibration.NearestStranger` on the labels as they stand (or give the
    fitted ``stranger``): a label of one image then merges only when its photo's similarity to
    the other label is evidence of one person against the set's nearest strangers (a Bayes
    factor of :data:`SINGLE_IMAGE_BAYES`); on OMZ's long-tailed real set this took merge
    precision from 0.756 to 0.950 at the same recall. The same model adds candidates: a
    one-image label with the label of its photo's nearest other-label photo, where that
    similarity reaches the factor, the pair's one-person score then at least the factor at
    even odds, f / (1 + f) (a weak model spreads a photo's same-person mass over strangers,
    and the mass test missed such halves: dlib's plain real set, merge recall 0.857 → 0.914).

    Candidate pairs come from three places: labels joined by enough same-person kNN mass
    (the vote stage's one-person test, :func:`facecluster.votes.label_pairs`, score ≥ 1/4),
    labels whose images vote for each other (:func:`_vote_pairs`), and labels claimed whole by
    another label's mislabel votes (:func:`_claimed_labels`, which finds one- and two-image
    parts). Each candidate is judged by the mean of independent terms: the one-person test,
    per partition the share of each label's images sharing a cluster with the other (smaller
    direction), and, given ``embeddings`` ((n_samples, n_features), the processed unit
    vectors), the nearest-neighbour mixing test (:func:`_mixing_term`) and the centroid test
    (:func:`_centroid_term`). A mean of at least 1/2 makes a
    suggestion (three-to-one, 3/4, when one label has a single image), scored by that mean;
    so do the two-sample tests alone when both, the mixing test in its weaker direction, see
    at least half of what two random halves of one person's images show (both labels of
    three images or more; scored by the smaller of the two then, when it is the higher).
    The kNN graph and the partitions see a person shot in two looks as two groups,
    whichever way the person was split: on dlib's
    plain real set the two big splits missed pooled 0.48 and 0.50 with one-person scores of
    0.10 and 0.43, while their images mixed 0.88 and 0.67 in the weaker direction; no pair
    of different people on the real or synthetic sets reached 0.5 in both tests. Every
    suggestion needs the one-person test to see some evidence (a score above 0): a pair it scores
    0 (no same-person mass shared, or a label whose own images do not hold together) is no
    merge however close the partitions and centroids put it. On the long-tailed real sets
    such pairs were most false merges: a label holding a flip of the other's person beside
    an image of someone else. Nor is there a merge where the centroid rank test rejects one
    person (:func:`_two_people`: p below :data:`TWO_PEOPLE_P`, AUC below
    :data:`TWO_PEOPLE_AUC`): on dlib's plain real set every false merge was two
    look-alike identities that both partitions lump together (87–95% shared) while not one
    image of either reaches the other's median (p 2e-4 and 5e-7; true splits ≥ 0.01 over
    three noise draws). The votes of a split's halves are discounted because
    each half looks mislabeled to the other, so the vote tests only propose; the one-person
    test, which weighs every edge by its calibrated P(same person) alone, judges.
    Chains (A→B, B→C) are resolved as connected components with networkx; each group merges
    into its largest label.
    """
    n_labels = len(label_names)
    merged_into = np.full(n_labels, -1, dtype=np.int64)
    label_score = np.zeros(n_labels, dtype=np.float32)
    holds_person = np.ones(n_labels, dtype=bool)
    if no_person is not None:
        holds_person = np.bincount(labels[~np.asarray(no_person, dtype=bool)], minlength=n_labels) > 0
    if leaving is not None:
        # a label is never emptied (its rows say nothing against each other then)
        leaving = leaving_rows(labels, leaving, n_labels)
    if leaving is not None and leaving.any():
        # every row that leaves gets a label of its own; only pairs of real labels can merge
        labels = staying_labels(labels, leaving, n_labels)
        label_names = np.concatenate([np.asarray(label_names, dtype=object),
                                      np.array([f"row {i + 1}" for i in np.flatnonzero(leaving)], dtype=object)])
        evidence = None
    partitions = evidence if evidence is not None else partition_evidence(signals, labels)
    pairs = pairs if pairs is not None else signals.agreement.pairs
    # how near a one-image label's photo comes to strangers, on the labels as they stand
    # (fitted at the first pair that needs it)
    stranger_fit: list = [] if stranger is None else [stranger]

    def stranger_model():
        if not stranger_fit:
            stranger_fit.append(None if graph is None else fit_nearest_stranger(
                graph, labels, None if leaving is None else ~leaving, rng=np.random.default_rng(0)))
        return stranger_fit[0]

    # pairs with a leaving row's own label (codes >= n_labels) never merge: neither they nor
    # their evidence texts are kept
    vote_pairs, vote_text = _vote_pairs(signals.agreement, labels, label_names, n_real=n_labels)
    # the vote tests' own scores stand in for the one-person test only where the vote stage
    # gave none (evidence assembled by hand)
    vote_score = {(min(a, b), max(a, b)): sc for a, b, sc in vote_pairs}
    candidates = set(vote_score)
    for a, b, sc, text in _claimed_labels(signals.agreement, labels, label_names):
        if max(a, b) >= n_labels:
            continue
        candidates.add((min(a, b), max(a, b)))
        vote_score[(min(a, b), max(a, b))] = max(sc, vote_score.get((min(a, b), max(a, b)), 0.0))
        for lab in (a, b):
            vote_text.setdefault(lab, []).append(text)
    sizes = np.bincount(labels, minlength=len(label_names))
    if pairs is not None and len(pairs.a):
        # joined by kNN edges and either sharing enough same-person mass or, both labels of
        # two images or more, put together by every partition (most of each label's images
        # in clusters holding the other); a partition puts a label of one image in whichever
        # cluster is nearest, which says little about its person
        together = np.minimum(sizes[pairs.a], sizes[pairs.b]) >= 2
        for _, ev in partitions:
            together &= np.minimum(shared_shares(ev.partition, labels, pairs.a, pairs.b),
                                   shared_shares(ev.partition, labels, pairs.b, pairs.a)) >= 0.5
        strong = (pairs.score >= MERGE_CANDIDATE) | (together & (len(partitions) > 0))
        candidates.update(zip(pairs.a[strong].tolist(), pairs.b[strong].tolist()))
    # a one-image label and the label of its photo's nearest other-label photo, where that
    # similarity is positive evidence of one person against the nearest stranger
    nearest_one = _nearest_for_one_image(graph, labels, sizes, n_labels, leaving, stranger_model)
    candidates.update(nearest_one)
    accepted, judged = [], {}
    # a < b: a row's own label never merges
    ordered = sorted((a, b) for a, b in candidates if b < n_labels and holds_person[a] and holds_person[b])
    rows_of = _rows_of(labels, len(label_names)) if ordered else None
    first = np.array([a for a, _ in ordered], dtype=np.int64)
    second = np.array([b for _, b in ordered], dtype=np.int64)
    # each partition's shared-cluster shares, both directions, for every candidate at once
    shares = [(name, shared_shares(ev.partition, labels, first, second),
               shared_shares(ev.partition, labels, second, first)) for name, ev in partitions]
    for j, (a, b) in enumerate(ordered):
        one = _one_person(pairs, a, b) if pairs is not None else vote_score[(a, b)]
        # the one-person test asks a single photo to send the other label the share of its
        # same-person mass one identity would; where the model spreads that mass over
        # strangers (dlib), the nearest photo's evidence at even odds stands in when higher
        one = max(one, nearest_one.get((a, b), 0.0))
        pair_shares = [(name, ab[j], ba[j]) for name, ab, ba in shares]
        pooled, parts, samples, two_sample = _pooled_merge(one, pair_shares, rows_of, embeddings, a, b, label_names)
        judged[(a, b)] = max(pooled, two_sample)
        # a label of one image is one observation, its "share" of mass says where that image
        # leans, not how strongly: such a merge asks for three-to-one odds (the conservative
        # policy's bar for a relabel), others for more likely than not, or both two-sample
        # tests at one person's half; and none where the centroid rank test says two people
        # (asked only of pairs that pass the rest)
        if one > 0 and (pooled >= (SINGLE_IMAGE_ODDS if min(sizes[a], sizes[b]) == 1 else 0.5)
                        or two_sample >= TWO_SAMPLE_BAR):
            ranks = _two_people(samples)
            if ranks is not None and ranks[0] < TWO_PEOPLE_P and ranks[1] < TWO_PEOPLE_AUC:
                continue
            # a label of one image: its photo's nearness to the other label must be evidence
            # of one person against the nearest stranger, not only the nearest thing it has
            single = _single_image_factor(stranger_model, graph, embeddings, rows_of, sizes, a, b)
            if single is not None and single[1] < SINGLE_IMAGE_BAYES:
                continue
            rank = [] if ranks is None else [f"centroid rank test p={ranks[0]:.2g}, AUC {ranks[1]:.2f} (two people "
                                             f"below p {TWO_PEOPLE_P:g} and AUC {TWO_PEOPLE_AUC:g})"]
            one_text = f"one person: {one:.2f} (same-person kNN mass shared as one identity's would be; 1 = fully)"
            alone = [] if single is None else [
                f"its one image at similarity {single[0]:.2f}: {single[1]:.3g} times as likely for one person as "
                f"for the nearest stranger (one-image labels need {SINGLE_IMAGE_BAYES:g})"]
            accepted.append((a, b, max(pooled, two_sample), [one_text, *parts, *rank, *alone]))
    if not accepted:
        return DuplicateIdentities(pd.DataFrame(columns=MERGE_COLUMNS), merged_into, label_score, {}, judged)
    graph = nx.Graph()
    best: dict[int, tuple] = {}
    for a, b, pooled, parts in accepted:
        for lab, other in ((a, b), (b, a)):
            if pooled > best.get(lab, (-1.0,))[0]:
                best[lab] = (pooled, other, parts)
        graph.add_edge(a, b)
    out, why = [], {}
    for component in nx.connected_components(graph):
        canonical = max(component, key=lambda lab: (sizes[lab], -lab))
        for lab in sorted(component - {canonical}):
            merged_into[lab] = canonical
            pooled, other, parts = best[lab]
            label_score[lab] = pooled
            text = "; ".join([*vote_text.get(lab, []), f"with {label_names[other]}: " + "; ".join(parts)])
            out.append((label_names[lab], label_names[canonical], pooled, text))
            why[lab] = text
    return DuplicateIdentities(pd.DataFrame(out, columns=MERGE_COLUMNS), merged_into, label_score, why, judged)


def _nearest_for_one_image(graph, labels: np.ndarray, sizes: np.ndarray, n_labels: int, leaving,
                           stranger_model) -> dict:
    """Per one-image label whose photo's nearest staying photo under another real label is at
    a Bayes factor of at least :data:`SINGLE_IMAGE_BAYES` against the nearest stranger
    (``stranger_model()``): (smaller code, larger code) → the probability of one person at even
    odds, factor / (1 + factor). Empty without a graph or a fit."""
    if graph is None or not (sizes[:n_labels] == 1).any() or stranger_model() is None:
        return {}
    model = stranger_model()
    use = np.ones(len(labels), dtype=bool) if leaving is None else ~leaving
    other_row, s_other, _ = nearest_by_label(graph, labels, use)
    first = np.full(len(sizes), -1, dtype=np.int64)
    first[labels[::-1]] = np.arange(len(labels))[::-1]  # each label's first row
    lone = first[np.flatnonzero(sizes[:n_labels] == 1)]
    lone = lone[(lone >= 0) & use[lone] & (other_row[lone] >= 0)]
    lone = lone[labels[other_row[lone]] < n_labels]
    factor = model.bayes_factor(s_other[lone]) if len(lone) else np.zeros(0)
    out = {}
    for row, f in zip(lone[factor >= SINGLE_IMAGE_BAYES], factor[factor >= SINGLE_IMAGE_BAYES]):
        a, b = int(labels[row]), int(labels[other_row[row]])
        out[(min(a, b), max(a, b))] = float(1.0 / (1.0 + 1.0 / f))  # f ≥ 3; an overflowed f gives 1
    return out


def _single_image_factor(stranger_model, graph, embeddings, rows_of: list, sizes: np.ndarray,
                         a: int, b: int) -> tuple[float, float] | None:
    """For a pair in which one label has a single image: that image's highest similarity to
    the other label's images and its Bayes factor of one person against the nearest stranger
    (``stranger_model()``: the fitted :class:`facecluster.calibration.NearestStranger`, or None); None
    for other pairs or without a fit."""
    if min(sizes[a], sizes[b]) != 1 or (graph is None and embeddings is None):
        return None
    stranger = stranger_model()
    if stranger is None:
        return None
    lone, other = (a, b) if sizes[a] == 1 else (b, a)
    row, rows = int(rows_of[lone][0]), rows_of[other]
    if embeddings is not None:
        sim = float(np.max(embeddings[rows] @ embeddings[row]))
    else:
        listed = np.isin(graph.indices[row], rows)
        back = graph.indices[rows] == row
        sim = float(max(graph.sims[row][listed].max(initial=-np.inf), graph.sims[rows][back].max(initial=-np.inf)))
    if not np.isfinite(sim):
        return sim, 0.0
    return sim, float(stranger.bayes_factor(sim)[0])


def _one_person(pairs, a: int, b: int) -> float:
    """The vote stage's one-person score of labels a and b (0 when no edge joins them)."""
    j = pairs.lookup(a, b)
    return float(pairs.score[j]) if j >= 0 else 0.0


def _pooled_merge(one_person: float, shares, rows_of: list, embeddings, a: int, b: int, label_names=None):
    """A merge's pooled score: the one-person test, each partition's shared-cluster share
    (``shares``: (name, a's share with b, b's share with a) per partition; the smaller
    direction counts), the mixing and the centroid tests (``rows_of``: each label's rows,
    :func:`_rows_of`), averaged; with the texts naming each term and the
    centroid test's samples for :func:`_two_people` (empty where it has no label of three
    images to judge by), and the smaller of the two two-sample terms, the mixing test in its
    weaker direction (0 unless both labels have three images or more)."""
    terms, text, two_sample = [one_person], [], []
    for name, ab, ba in shares:
        terms.append(min(ab, ba))
        if label_names is not None:
            text.append(f"{name}: {ab:.0%} of {label_names[a]}'s images share a cluster with {label_names[b]}, "
                        f"{ba:.0%} back")
    cen, samples = (None, []) if embeddings is None else _centroid_term(embeddings, rows_of, a, b)
    # a label of one image has no image of its own to be nearer to: its nearest is the other
    # label's whoever it is, and the test says nothing (for two one-image labels, nothing at all)
    if embeddings is not None and min(len(rows_of[a]), len(rows_of[b])) >= 2:
        mix, weaker = _mixing_term(embeddings, rows_of, a, b)
        terms.append(mix)
        two_sample.append(weaker)
        text.append(f"nearest-neighbour mixing: {mix:.2f}, weaker direction {weaker:.2f} (1 = the two labels' "
                    "images are each other's nearest as often as two random halves of one person's)")
    if cen is not None:
        terms.append(cen)
        two_sample.append(cen)
        text.append(f"centroids: {cen:.2f} (1 = each label's images pass for the other's)")
    # the two-sample tests judge alone only with three images a side: with two, the mixing
    # test hangs on one image's nearest neighbour and the centroid test on one direction
    alone = len(two_sample) == 2 and min(len(rows_of[a]), len(rows_of[b])) >= 3
    return round(float(np.mean(terms)), 4), text, samples, round(float(min(two_sample)), 4) if alone else 0.0


def _claimed_labels(agreement: LabelAgreement, labels: np.ndarray, label_names: np.ndarray,
                    floor: float = 0.5) -> list:
    """Labels claimed whole by another label: (label, claimer, score, evidence text).

    When most of a label's images (all of them for one or two) are each a mislabel candidate
    of the kNN vote suggesting the same other label L, the label is L's person under a second
    name: flips into a label are spread over random labels and never take most of it. This
    finds the splits whose own images look mislabeled one by one, which the reciprocal test
    misses (their votes back are discounted because they look mislabeled), including one- and
    two-image parts; merging such a label into L gives its rows L either way. A claim counts
    where the vote passes ``floor`` both summed and with each label counted on its nearest
    photos (:attr:`~facecluster.votes.LabelAgreement.nearest_photos_score`): on dlib's
    long-tailed protocol draws a two-image label holding a flip of a big look-alike's person
    and its own photo was claimed whole and merged. Score: the claimed share.
    """
    n_labels = len(label_names)
    sizes = np.bincount(labels, minlength=n_labels)
    cand = (knn_mislabel_score(agreement) >= floor) & (agreement.best_other >= 0)
    if agreement.nearest_photos_score is not None:
        # a claim, like a mislabel candidate, must win on the claimer's nearest photos too
        cand &= agreement.nearest_photos_score >= floor
    rows = np.flatnonzero(cand)
    if not len(rows):
        return []
    key = labels[rows].astype(np.int64) * n_labels + agreement.best_other[rows]
    uniq, count = np.unique(key, return_counts=True)
    src, dst = uniq // n_labels, uniq % n_labels
    share = count / sizes[src]
    need = np.where(sizes[src] <= 2, sizes[src], 2)
    chosen = (share > 0.5) & (count >= need)
    return [(int(a), int(b), float(sc),
             f"{c} of {sizes[a]} images of {label_names[a]} are each claimed by {label_names[b]}")
            for a, b, sc, c in zip(src[chosen], dst[chosen], share[chosen], count[chosen])]


def _vote_pairs(agreement: LabelAgreement, labels: np.ndarray, label_names: np.ndarray, n_real: int | None = None):
    """Label pairs (a < b) whose reciprocal votes look like one person, with their vote score
    (:func:`find_duplicate_identities`), and the evidence text per label; only pairs of
    labels under ``n_real`` (the rest are leaving rows' own labels)."""
    n_labels = len(label_names)
    sizes = np.bincount(labels, minlength=n_labels)
    given = agreement.given_support.astype(np.float64)
    other = agreement.other_support.astype(np.float64)
    rows = np.flatnonzero((agreement.best_other >= 0) & (other > 0))
    if not len(rows):
        return [], {}
    src_all, dst_all = labels[rows], agreement.best_other[rows]
    expected_all = sizes[dst_all] / np.maximum(sizes[src_all] + sizes[dst_all] - 1, 1)
    share = other[rows] / np.maximum(given[rows] + other[rows], 1e-12)
    credit = np.minimum(1.0, share / expected_all)
    key = src_all.astype(np.int64) * n_labels + dst_all
    uniq, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    src, dst = uniq // n_labels, uniq % n_labels
    ratio = np.bincount(inv, weights=credit) / sizes[src]
    reverse = dst * n_labels + src
    pos = np.clip(np.searchsorted(uniq, reverse), 0, len(uniq) - 1)
    has_rev = uniq[pos] == reverse
    back = np.where(has_rev, ratio[pos], 0.0)
    back_cnt = np.where(has_rev, cnt[pos], 0)
    pair_score = np.minimum(ratio, back)
    chosen = (pair_score >= 0.5) & (cnt >= 2) & (back_cnt >= 2) & (src < dst)
    pairs, evidence = [], {}
    for j in np.flatnonzero(chosen):
        a, b = int(src[j]), int(dst[j])
        if n_real is not None and max(a, b) >= n_real:
            continue
        text = (f"{cnt[j]} of {sizes[a]} images of {label_names[a]} vote {label_names[b]} and {back_cnt[j]} of "
                f"{sizes[b]} vote back (agreement with one person: {ratio[j]:.2f} / {back[j]:.2f})")
        for lab in (a, b):
            evidence.setdefault(lab, []).append(text)
        pairs.append((a, b, float(min(pair_score[j], 1.0))))
    return pairs, evidence


def shared_shares(partition: np.ndarray, labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each label pair (a[i], b[i]): the share of label a's images that sit in clusters also
    holding an image of label b, vectorised with a sparse label × cluster count table."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if not len(a):
        return np.zeros(0)
    _, cluster = np.unique(partition, return_inverse=True)
    n_labels = int(max(labels.max(), a.max(), b.max())) + 1
    counts = sp.csr_matrix((np.ones(len(labels)), (labels, cluster)), shape=(n_labels, int(cluster.max()) + 1))
    present = (counts > 0).astype(np.float64)
    shared = np.asarray(counts[a].multiply(present[b]).sum(axis=1)).ravel()
    sizes = np.asarray(counts.sum(axis=1)).ravel()
    return shared / np.maximum(sizes[a], 1.0)


def _rows_of(labels: np.ndarray, n_labels: int) -> list[np.ndarray]:
    """Each label code's rows, ascending, from one stable sort (a merge's tests read them per
    candidate pair: a scan of the labels per pair cost 30 s at 1M rows and 9,000 candidates)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(max(n_labels, int(labels.max()) + 1) + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def _centroid_term(embeddings: np.ndarray, rows_of: list, a: int, b: int) -> tuple[float | None, list]:
    """How well label a's images pass for label b's (and back), judged at b's own centroid.

    If a and b are one person, a's images sit as close to b's centroid as b's own images do,
    so about half of them reach the median similarity of b's images to their centroid; for two
    people almost none do. Returns (term, samples):

    - term: min(1, 2·share), the smaller of the two directions; the threshold is each label's
      own spread, not a fixed cosine.
    - samples: per direction, (the other label's cosines to the centroid, the label's own
      leave-one-out cosines), for :func:`_two_people`.

    A label of one or two images has no spread of its own to judge the other against: only the
    direction into the bigger label counts then; (None, []) when neither has three images.
    """
    def one_way(src, dst):
        xd = embeddings[rows_of[dst]].astype(np.float64)
        total = xd.sum(axis=0)
        # b's own images against the centroid of b's OTHER images (leave one out: an image
        # inside its own centroid would look closer than any outsider could)
        own_sq = (xd * xd).sum(axis=1)
        dots = xd @ total
        loo = (dots - own_sq) / np.sqrt(np.maximum(total @ total - 2 * dots + own_sq, 1e-24) * own_sq)
        xs = embeddings[rows_of[src]].astype(np.float64)
        cos = (xs @ total) / np.maximum(np.linalg.norm(xs, axis=1) * np.linalg.norm(total), 1e-12)
        return cos, loo

    samples = [one_way(src, dst) for src, dst in ((a, b), (b, a)) if len(rows_of[dst]) >= 3]
    if not samples:
        return None, []
    share = min(float((cos >= np.median(loo)).mean()) for cos, loo in samples)
    return min(1.0, 2 * share), samples


def _mixing_term(embeddings: np.ndarray, rows_of: list, a: int, b: int,
                 cap: int = MIXING_CAP) -> tuple[float, float]:
    """How often the images of labels a and b have their nearest neighbour (among the two
    labels' images) in the other label, against how often two random halves of one person's
    would: a nearest-neighbour two-sample statistic (Schilling, JASA 1986) as a score, min(1,
    observed / expected). Two look-alike people keep to their own label (near 0); a split
    person mixes (near 1). Other labels' images do not enter, so a dense third identity
    between them changes nothing. Each label is thinned to ``cap`` evenly spaced images (the
    expectations scale with the sizes). Asked only of labels of two images or more
    (:func:`_pooled_merge`).

    Returns (pooled, weaker direction):

    - pooled: all rows together, expected share 2·|a|·|b| / (n·(n − 1)), n = |a| + |b|;
    - weaker direction: a's rows (expected share |b| / (n − 1)) and b's (|a| / (n − 1)) scored
      apart, the smaller counting. A dense big label draws the nearest neighbour of every
      image of a small look-alike label while none of its own images goes the other way: the
      pooled score put such pairs at 0.5–1.0 on the real and synthetic sets, the weaker
      direction at 0.30–0.41, while true splits keep both directions mixed.
    """
    def rows(lab):
        r = rows_of[lab]
        return r if len(r) <= cap else r[np.linspace(0, len(r) - 1, cap).astype(np.int64)]

    ra, rb = rows(a), rows(b)
    n = len(ra) + len(rb)
    if not len(ra) or not len(rb):
        return 0.0, 0.0
    x = embeddings[np.concatenate([ra, rb])].astype(np.float64)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    side = np.arange(n) >= len(ra)
    cross = side[sim.argmax(axis=1)] != side
    pooled = cross.mean() / (2.0 * len(ra) * len(rb) / (n * (n - 1)))
    from_a = cross[~side].mean() / (len(rb) / (n - 1))
    from_b = cross[side].mean() / (len(ra) / (n - 1))
    return float(min(1.0, pooled)), float(min(1.0, from_a, from_b))


def _two_people(samples: list) -> tuple[float, float] | None:
    """The centroid rank test (one-sided Mann–Whitney, :func:`scipy.stats.mannwhitneyu`): one
    label's images against the other's own images at its centroid (``samples`` from
    :func:`_centroid_term`). Returns (p, AUC) of the direction with the smaller p: how likely
    ranks that low are by chance, and how far apart they are (AUC = U / (n₁n₂), the chance an
    image of the one label ranks above one of the other's own; 1/2 for one person, near 0 for
    two people); None without samples. A merge is refused when p < :data:`TWO_PEOPLE_P` and
    AUC < :data:`TWO_PEOPLE_AUC`: look-alike identities a partition lumps together pass the
    median rarely and fail the ranks as a whole, while the halves of one big identity shot in
    two sessions, a little apart, can reach any p with enough images but keep a sizeable AUC."""
    from scipy.stats import mannwhitneyu

    if not samples:
        return None
    tests = []
    for cos, loo in samples:
        res = mannwhitneyu(cos, loo, alternative="less")
        tests.append((float(res.pvalue), float(res.statistic) / (len(cos) * len(loo))))
    return min(tests)


@dataclass(frozen=True)
class Review:
    """:func:`find_review`'s answer; arrays of shape (n_samples,).

    cannot_tell : bool, rows of labels too small to judge whose evidence leans against them
    partition_text : object, "review: <stage> cluster is 80% X" texts ("" where none)
    score : float32, how strongly the evidence leans against the label: the larger of the kNN
        mislabel and no-same-person scores (cannot tell), or the cluster's share of the other
        label (a partition alone)
    label_images : int64, the images of each row's label once the rows found as noise or
        copies have left it (what "cannot tell" judged)
    """

    cannot_tell: np.ndarray
    partition_text: np.ndarray
    score: np.ndarray | None = None
    label_images: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        return self.cannot_tell | (self.partition_text != "")


def find_review(signals: Signals, labels: np.ndarray, label_names: np.ndarray, *,
                config: FindingsConfig | None = None, evidence: list | None = None,
                leaving: np.ndarray | None = None, judged: dict | None = None) -> Review:
    """Rows the evidence cannot judge, for a person to look at.

    - "Cannot tell": a label with one or two images has no majority to outvote or to disagree
      with; when its row's kNN evidence leans against it, it goes to review instead of being
      judged. A two-image label: another label leans on the row (a mislabel score at half the
      floor), or the two images do not back each other (no-same-person probability at the
      floor: one of them may be a stranger, and which one is unknown); never when its two
      images are its core (mutual, likely-same-person neighbours): one person photographed
      twice. On the long-tailed real sets such pairs were 40% of the review list, all clean. A one-image label is
      one observation: it is reviewed when another label claims it at three to one
      (:data:`SINGLE_IMAGE_ODDS`, the odds a merge of a one-image label needs; three
      reliable same-person votes for one label). A loner beside a big identity is a person
      photographed once, not a doubt: on the long-tailed real sets such loners were most of
      the review list, over 80% of it clean. Nor is it a doubt when the merge tests judged
      the label with the claiming one and found two people more likely (``judged``:
      :attr:`DuplicateIdentities.judged`, a pooled score under 1/2): on dlib's long-tailed
      real set 40 of the 42 one-image labels reviewed over five draws were such clean loners.
      Label sizes count the images that stay (``leaving``: rows found as noise or copies,
      :func:`leaving_rows`): the clean image of a two-image label whose other image was found
      to be a stranger is its label's only one (on the long-tailed real sets over a third of
      the two-image reviews were such rows).
    - A partition alone: a row the kNN vote did not flag whose cluster (at least
      ``review_min_cluster`` rows) is mostly (``review_share``) another label; where several
      partitions ran, every one of them must put it among the same other label.
    """
    config = config or FindingsConfig()
    floor = config.report_floor
    sizes = _label_sizes(labels, len(label_names))
    evidence = evidence if evidence is not None else partition_evidence(signals, labels)
    candidate = _knn_candidates(signals, labels, floor, evidence)
    agr = signals.agreement
    mis = knn_mislabel_score(agr)
    # two images that are each other's likely-same-person neighbours (the label's core) are a
    # coherent identity of two, as for outliers: not a doubt however another label leans
    in_core = np.zeros(len(labels), dtype=bool) if agr.core is None else agr.core
    leaving = None if leaving is None else leaving_rows(labels, np.asarray(leaving, dtype=bool), len(label_names))
    stay = sizes if leaving is None else np.bincount(labels[~leaving], minlength=len(label_names))[labels]
    pair = (stay == 2) & ~in_core & ((agr.none_prob >= floor) | (mis >= 0.5 * floor))
    single = (stay == 1) & (mis >= SINGLE_IMAGE_ODDS)
    if judged:
        for i in np.flatnonzero(single & (agr.best_other >= 0)):
            a, b = sorted((int(labels[i]), int(agr.best_other[i])))
            single[i] = judged.get((a, b), 1.0) >= 0.5
    cannot_tell = ~candidate & (pair | single)
    if leaving is not None:
        cannot_tell &= ~leaving  # a row that leaves is judged already
    text = np.full(len(labels), "", dtype=object)
    score = np.where(cannot_tell, np.maximum(mis, agr.none_prob), 0.0).astype(np.float32)
    leans = []
    for name, ev in evidence:
        # most of the row's own label in the same cluster: the partition lumped two look-alike
        # identities, which says nothing against either (on dlib's plain real set such lumps
        # sent 25 clean rows a draw to review and almost no noisy one)
        with_label = ev.own_count / np.maximum(sizes - 1, 1)
        leans.append(~candidate & (ev.majority >= 0) & (ev.majority != labels) & (ev.majority_share >= config.review_share)
                     & (ev.cluster_size >= config.review_min_cluster) & (sizes >= 2) & (with_label < 0.5))
    # where several partitions ran, one alone is a doubt only when every one puts the row
    # among the same other label: a lump only one stage made is that stage's look-alikes
    # (over the protocol's 30 sets, 66 such rows were reviewed, 65 of them clean; rows both
    # partitions put with one other label were 15 of 21 noisy)
    if len(evidence) >= 2:
        agree = np.logical_and.reduce(leans) & np.logical_and.reduce(
            [ev.majority == evidence[0][1].majority for _, ev in evidence[1:]])
        leans = [agree] * len(evidence)
    for (name, ev), alone in zip(evidence, leans):
        for i in np.flatnonzero(alone):
            entry = f"review: {name} cluster is {ev.majority_share[i]:.0%} {label_names[ev.majority[i]]}"
            text[i] = f"{text[i]}; {entry}" if text[i] else entry
        score = np.where(alone & ~cannot_tell, np.maximum(score, ev.majority_share), score).astype(np.float32)
    return Review(cannot_tell, text, score, stay.astype(np.int64))


def lone_outliers(out: Outliers, labels: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Outliers to send to a person: those every other image of whose label is found too
    (``found``: the rows found as strangers, other people's, copies), strangers apart.

    An outlier is a row outside its label's identity. Where the rest of its label leaves, no
    identity is left for it to fall outside of: as the labels stand it is a one-image label's
    image, which no majority can judge (a person's call, as for a label with no core). On the
    protocol's 30 sets: 4 clean rows, each the one photo of its label's person beside two
    photos of an open-set person (or one and a copy), no longer dropped; no noisy row moved.
    Returns (n_samples,) bool.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_labels = int(labels.max()) + 1 if len(labels) else 0
    unfound = np.bincount(labels[~np.asarray(found, dtype=bool)], minlength=n_labels)
    stranger = np.zeros(len(labels), dtype=bool) if out.stranger is None else out.stranger
    return out.mask & ~stranger & (unfound[labels] == 0)


def even_odds_claims(graph: KnnGraph, labels: np.ndarray, mis: Mislabeled, claimed: np.ndarray,
                     leaving: np.ndarray, stranger: NearestStranger, group: np.ndarray | None = None) -> np.ndarray:
    """Mislabel candidates of labels of one or two photos as they stand (its images that stay,
    ``leaving`` apart, and the candidate; the candidate's near-duplicate copies, ``group``,
    count as the candidate's photo) to send to a person: those whose suggested label the
    stages back at under even odds (pooled score < 1/2).

    In a label of two images of two people each image is "not its label's" alike, so only
    the evidence for the suggested label tells which one is wrong, and under even odds that
    is a look-alike's pull. On the protocol's 30 sets this sent 17 findings to review (pooled
    0.13-0.44), 11 on dlib's long-tailed draws and 6 on the dlib-like synthetic ones: 12 were
    the label's own image, dropped while its stranger was kept, and 5 (4 flips, 1 open-set
    image) were right (the 17th: a label claimed whole by a look-alike's that the merge tests
    did not merge, :func:`find_issues` asking again). Kept as found: a split's
    image (``claimed``: its label claimed whole by another; it merges), and a candidate whose
    label's other image stays and matches a photo under another label at
    :data:`SINGLE_IMAGE_BAYES` against the set's nearest strangers (``stranger``): that image's
    person has a label, so this label's person is known, and the candidate is the odd one
    (one case on the protocol's sets: the label was a split's second name holding a stranger;
    contested, its merge was lost). ``leaving``: the rows found as noise or copies. Returns
    (n_samples,) bool.
    """
    labels = np.asarray(labels, dtype=np.int64)
    leaving = np.asarray(leaving, dtype=bool)
    n = len(labels)
    n_labels = int(labels.max()) + 1 if n else 0
    group = np.full(n, -1, dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
    asked = np.zeros(n, dtype=bool)
    candidates = np.flatnonzero(mis.mask & (mis.score < 0.5) & ~np.asarray(claimed, dtype=bool))
    if not len(candidates):
        return asked
    # the label as it stands: its rows that stay, the candidate's own copies apart (one photo)
    stay = np.flatnonzero(~leaving)
    order = stay[np.argsort(labels[stay], kind="stable")]
    lo = np.searchsorted(labels[order], labels[candidates], side="left")
    hi = np.searchsorted(labels[order], labels[candidates], side="right")
    pairs, mates = [], []
    for i, a, b in zip(candidates, lo, hi):
        rows = order[a:b]
        others = rows[(rows != i) & ~((group[rows] == group[i]) & (group[i] >= 0))]
        if len(others) <= 1:
            asked[i] = True
            if len(others) == 1:
                pairs.append(i)
                mates.append(others[0])
    if pairs:
        pairs, mate = np.array(pairs), np.array(mates)
        _, s_other, _ = nearest_by_label(graph, staying_labels(labels, leaving, n_labels), ~leaving)
        found = np.isfinite(s_other[mate])
        strong = np.zeros(len(pairs), dtype=bool)
        strong[found] = stranger.bayes_factor(s_other[mate[found]]) >= SINGLE_IMAGE_BAYES
        asked[pairs[strong]] = False
    return asked


def lone_claims(labels: np.ndarray, mis: Mislabeled, leaving: np.ndarray, embeddings: np.ndarray,
                stranger: NearestStranger) -> np.ndarray:
    """Mislabel candidates to withdraw: rows left alone in their label by the other findings,
    whose photo is not evidence of the suggested label's person.

    A candidate whose label's every other image leaves too (``leaving``: the rows found as
    noise or copies, this one included) is, as the labels stand, a one-image label, and the
    kNN vote moving it to another label is the merge of a one-image label under another name.
    It asks what that merge asks (:func:`find_duplicate_identities`): its highest similarity to
    the suggested label's staying images at a Bayes factor of :data:`SINGLE_IMAGE_BAYES`
    against the set's nearest strangers (``stranger``). Short of it, the photo is a loner beside
    a look-alike and keeps its label. On the protocol's 30 sets this kept 13 clean rows (10 on
    the dlib-like synthetic sets, 2 on dlib's long-tailed set, 1 on dlib plain) and no noisy one.
    Returns (n_samples,) bool.
    """
    labels = np.asarray(labels, dtype=np.int64)
    leaving = np.asarray(leaving, dtype=bool)
    n_labels = int(labels.max()) + 1 if len(labels) else 0
    rest = np.bincount(labels[~leaving], minlength=n_labels)
    weak = np.zeros(len(labels), dtype=bool)
    asked = np.flatnonzero(mis.mask & leaving & (rest[labels] == 0) & (mis.suggested >= 0))
    if not len(asked):
        return weak
    staying = _rows_of(np.where(leaving, n_labels, labels), n_labels + 1)
    for i in asked:
        rows = staying[mis.suggested[i]]
        if not len(rows):  # a label none of whose images stays holds no one to move it to
            weak[i] = True
            continue
        sim = float(np.max(embeddings[rows] @ embeddings[i]))
        weak[i] = stranger.bayes_factor(sim)[0] < SINGLE_IMAGE_BAYES
    return weak


@dataclass(frozen=True)
class TwoApart:
    """:func:`tell_two_apart`'s answer; arrays of shape (n_samples,).

    wrong : bool, the image of a two-image label found to be another person's
    partner : bool, the other image of such a label (its label's only image now)
    kin : bool, the ``wrong`` images whose evidence is a photo found to be a stranger where it
        was filed (the same stranger: an outlier, no label to suggest)
    suggested : int64, the label of ``wrong``'s evidence photo (-1 for ``kin`` and elsewhere)
    evidence : int64, that photo's row (-1 elsewhere)
    sim, factor : float64, its similarity and its Bayes factor (0 elsewhere)
    """

    wrong: np.ndarray
    partner: np.ndarray
    kin: np.ndarray
    suggested: np.ndarray
    evidence: np.ndarray
    sim: np.ndarray
    factor: np.ndarray


def tell_two_apart(graph: KnnGraph, labels: np.ndarray, cannot_tell: np.ndarray, leaving: np.ndarray,
                   stranger: NearestStranger, strangers: np.ndarray | None = None,
                   claims: np.ndarray | None = None) -> TwoApart:
    """Two-image labels whose two images do not match and neither of which the evidence
    could judge (``cannot_tell`` both; :func:`find_review`): which one is the stranger.

    Each image's evidence is the nearer of two photos, weighed by ``stranger``
    (:class:`~facecluster.calibration.NearestStranger`: how many times more likely a
    similarity is for one person than for the nearest of strangers):

    - its nearest photo under another label among the rows that stay (``leaving`` excluded),
      when that photo's own label is not in doubt: two photos of one person in two such
      labels would otherwise each send the other to its label (a swap);
    - its nearest photo among ``strangers`` (rows leaving as another person's or as no
      labelled person's) filed under another label, unless that row's claim (``claims``, the
      label its mislabel finding suggests, -1 for none) is this image's label. An open-set
      person's photos are filed under several labels; where the others were found, this one
      is the same stranger.

    When exactly one of the two reaches :data:`SINGLE_IMAGE_BAYES`, that image is the label's
    wrong one: another person's (a mislabel, its evidence's label suggested) or the found
    stranger's (``kin``: an outlier, scored at least 1/2, its pooled outlier score where that
    is higher); the other is its label's only image, as a one-image label is. Where both or
    neither do, it stays a person's call. Over the protocol's five long-tailed draws of each
    real set (docs/benchmarks.md): by photos that stay, 6 pairs told
    apart on dlib's, all right, and 6 on OMZ's, 5 right; by found strangers, 2 on dlib's (1
    right: the other a look-alike) and 6 on OMZ's (5 right: the other the swap this cannot
    rule out, a label's own person whose second photo had been filed elsewhere and found
    there as fitting no label).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    n_labels = int(labels.max()) + 1 if n else 0
    stay = ~np.asarray(leaving, dtype=bool)
    wrong, partner, kin = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    suggested, evidence = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    sim, factor = np.zeros(n), np.zeros(n)
    asked = np.asarray(cannot_tell, dtype=bool) & stay
    held = np.bincount(labels[stay], minlength=n_labels)
    doubted = np.bincount(labels[asked], minlength=n_labels)
    both = np.flatnonzero((held == 2) & (doubted == 2))
    if not len(both):
        return TwoApart(wrong, partner, kin, suggested, evidence, sim, factor)
    rows = np.flatnonzero(asked & np.isin(labels, both))
    rows = rows[np.argsort(labels[rows], kind="stable")]  # a label's two images side by side
    # the labels as they stand: a leaving row is no one's (staying_labels gives it its own)
    other_row, s_other, _ = nearest_by_label(graph, staying_labels(labels, ~stay, n_labels), stay)
    ev_row = other_row[rows]
    ev_row = np.where((ev_row >= 0) & ~asked[np.maximum(ev_row, 0)], ev_row, -1)
    ev_sim = np.where(ev_row >= 0, s_other[rows], -np.inf)
    by_kin = np.zeros(len(rows), dtype=bool)
    if strangers is not None:
        idx = graph.indices[rows]
        safe = np.maximum(idx, 0)
        claim = np.full(n, -1, dtype=np.int64) if claims is None else np.asarray(claims, dtype=np.int64)
        # found where it was filed, under another label (one that left this image's own label
        # and matches it is evidence for the label, not against it), and not claimed for it
        ok = ((idx >= 0) & np.asarray(strangers, dtype=bool)[safe] & (labels[safe] != labels[rows, None])
              & (claim[safe] != labels[rows, None]))
        col = ok.argmax(axis=1)  # neighbours come most similar first
        k_sim = np.where(ok.any(axis=1), graph.sims[rows, col], -np.inf)
        by_kin = k_sim > ev_sim
        ev_row = np.where(by_kin, idx[np.arange(len(rows)), col], ev_row)
        ev_sim = np.where(by_kin, k_sim, ev_sim)
    bayes = np.zeros(len(rows))
    has = ev_row >= 0
    bayes[has] = stranger.bayes_factor(ev_sim[has])
    strong = (bayes >= SINGLE_IMAGE_BAYES).reshape(-1, 2)
    one = strong[:, 0] != strong[:, 1]
    # position (in rows) of the strong image of each label told apart, and of its partner
    at = (2 * np.arange(len(one)) + np.where(strong[:, 0], 0, 1))[one]
    mate = at ^ 1
    odd = rows[at]
    wrong[odd], partner[rows[mate]], kin[odd] = True, True, by_kin[at]
    evidence[odd] = ev_row[at]
    suggested[odd] = np.where(by_kin[at], -1, labels[ev_row[at]])
    sim[odd], factor[odd] = ev_sim[at], bayes[at]
    return TwoApart(wrong, partner, kin, suggested, evidence, sim, factor)


# --------------------------------------------------------------------------- resolve and explain


def resolve(masks: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One issue per row: the first of :data:`PRECEDENCE` whose mask holds it, with that
    question's score. ``masks`` and ``scores`` map issue names to (n_samples,) arrays."""
    n = len(next(iter(masks.values())))
    issue = np.full(n, NO_ISSUE, dtype=object)
    score = np.zeros(n, dtype=np.float32)
    for name in reversed(PRECEDENCE):
        rows = masks[name]
        issue[rows] = name
        score[rows] = scores[name][rows]
    return issue, score


def _contest_claims(mis: Mislabeled, rows: np.ndarray) -> Mislabeled:
    """``mis`` with the candidates ``rows`` sent to a person instead (contested)."""
    before = np.zeros(len(rows), dtype=bool) if mis.contested is None else mis.contested
    return replace(mis, mask=mis.mask & ~rows, contested=before | rows,
                   corroborated_by={name: m & ~rows for name, m in mis.corroborated_by.items()})


def find_issues(signals: Signals, labels: np.ndarray, label_names: np.ndarray, *,
                config: FindingsConfig | None = None, embeddings: np.ndarray | None = None,
                graph: KnnGraph | None = None) -> Findings:
    """Every question answered, one issue per row resolved by :data:`PRECEDENCE`, the reasons written.

    Parameters
    ----------
    signals : Signals, the stages' evidence
    labels : (n_samples,) int64 label codes; label_names : (n_labels,) their names
    config : FindingsConfig
    embeddings : (n_samples, n_features) processed unit vectors, for the duplicate-identity
        centroid test (skipped when None)
    graph : the kNN graph, to recompute the one-person test on the labels as they stand once
        the rows found to be noise or copies have left them; without it that test reads the
        labels as given (the vote stage's), while the other merge tests still read the
        staying labels

    Returns
    -------
    Findings
    """
    config = config or FindingsConfig()
    floor = config.report_floor
    labels = np.asarray(labels, dtype=np.int64)
    evidence = partition_evidence(signals, labels)
    mis = find_mislabeled(signals, labels, report_floor=floor, evidence=evidence)
    out = find_outliers(signals, labels, report_floor=floor, evidence=evidence)
    near = find_near_duplicates(signals, labels, doubt=out.score)
    n_labels = len(label_names)
    # a label claimed whole by another (most of its images each a mislabel candidate for the
    # same label) is a split: the rows the claimer claims stay and merge with their label, they
    # do not leave one by one (other findings in it still leave)
    claimer = np.full(n_labels, -1, dtype=np.int64)
    for lab, by, *_ in _claimed_labels(signals.agreement, labels, label_names):
        claimer[lab] = by
    claimed = mis.mask & (signals.agreement.best_other == claimer[labels])

    def leaving_now() -> np.ndarray:
        return leaving_rows(labels, out.mask | near.mask | (mis.mask & ~claimed), n_labels)

    leaving = leaving_now()
    # how near the photos of the smallest labels come to strangers, on the labels as they stand
    stranger = None if graph is None else fit_nearest_stranger(
        graph, staying_labels(labels, leaving, n_labels), ~leaving, rng=np.random.default_rng(0))
    withdrawn = 0
    if stranger is not None and embeddings is not None:
        weak = lone_claims(labels, mis, out.mask | near.mask | (mis.mask & ~claimed), embeddings, stranger)
        withdrawn = int(weak.sum())
        if weak.any():
            mis = replace(mis, mask=mis.mask & ~weak)
            claimed &= ~weak
            leaving = leaving_now()
    alone = lone_outliers(out, labels, out.mask | near.mask | (mis.mask & ~claimed))
    weak_claim = np.zeros(len(labels), dtype=bool)  # claims sent to a person at under even odds
    if alone.any():
        before = np.zeros(len(labels), dtype=bool) if out.contested is None else out.contested
        out = replace(out, mask=out.mask & ~alone, contested=before | alone)
        leaving = leaving_now()
    if stranger is not None:
        even = even_odds_claims(graph, labels, mis, claimed, leaving, stranger, signals.duplicates.group)
        weak_claim |= even
        if even.any():
            mis = _contest_claims(mis, even)
            leaving = leaving_now()
    pairs = None
    if graph is not None and leaving.any():
        pairs = label_pairs_of(graph, staying_labels(labels, leaving, n_labels), signals.calibration,
                               signals.duplicates.group, n_labels + int(leaving.sum()))
    # copies count as no one's only in a label where an outlier was found
    has_outlier = np.bincount(labels[out.mask], minlength=n_labels) > 0
    dupid = find_duplicate_identities(signals, labels, label_names, embeddings=embeddings, evidence=evidence,
                                      leaving=leaving, pairs=pairs,
                                      no_person=out.mask | (near.mask & has_outlier[labels]),
                                      graph=None if stranger is None else graph, stranger=stranger)
    if stranger is not None:
        # a label claimed whole stays to merge; where the merge tests did not merge it, its
        # claims are weighed as any other (a one-photo label and its copy, both claimed by a
        # look-alike's label at under even odds, lost the photo)
        # merged: merged into another label, or another merged into it
        merged = dupid.merged_into >= 0
        merged[dupid.merged_into[merged]] = True
        unmerged = claimed & ~merged[labels]
        late = unmerged & even_odds_claims(graph, labels, mis, claimed & ~unmerged, leaving, stranger,
                                           signals.duplicates.group)
        weak_claim |= late
        if late.any():
            mis = _contest_claims(mis, late)
    review = find_review(signals, labels, label_names, config=config, evidence=evidence, leaving=leaving,
                         judged=dupid.judged)
    apart = None
    if stranger is not None:
        # the rows leaving as another person's or as no labelled person's, and whom they claim
        gone = leaving & (out.mask | (mis.mask & ~claimed))
        apart = tell_two_apart(graph, labels, review.cannot_tell, leaving, stranger, gone,
                               np.where(mis.mask, mis.suggested, -1))
        # the wrong image is backed by one photo: one reliable vote, b / (b + 1) = 1/2 (the
        # conservative policy quarantines a mislabel and drops an outlier); its partner is judged
        moved = apart.wrong & ~apart.kin
        mis = replace(mis, mask=mis.mask | moved, score=np.where(moved, 0.5, mis.score).astype(np.float32),
                      suggested=np.where(moved, apart.suggested, mis.suggested))
        out = replace(out, mask=out.mask | apart.kin,
                      score=np.where(apart.kin, np.maximum(out.score, 0.5), out.score).astype(np.float32))
        review = replace(review, cannot_tell=review.cannot_tell & ~apart.wrong & ~apart.partner)
    # a merge moves the rows that stay; the ones leaving keep their own finding
    member = (dupid.merged_into[labels] >= 0) & ~leaving
    issue, score = resolve(
        {"near_duplicate": near.mask, "outlier": out.mask, "duplicate_identity": member, "mislabeled": mis.mask},
        {"near_duplicate": near.score, "outlier": out.score, "duplicate_identity": dupid.label_score[labels],
         "mislabeled": mis.score})
    suggested = np.where(issue == "mislabeled", mis.suggested, -1).astype(np.int64)
    keep_of_group = np.where(issue == "near_duplicate", near.keep, -1).astype(np.int64)
    contested_out = np.zeros(len(labels), dtype=bool) if out.contested is None else out.contested
    contested_mis = np.zeros(len(labels), dtype=bool) if mis.contested is None else mis.contested
    needs_review = (review.mask | contested_out | contested_mis) & (issue == NO_ISSUE)
    issue[needs_review] = REVIEW
    score[needs_review] = np.maximum.reduce([review.score, np.where(contested_out, out.score, 0.0),
                                             np.where(contested_mis, mis.knn_score, 0.0)])[needs_review]
    reason = _reasons(signals, labels, label_names, issue, mis, out, near, dupid, review, needs_review, evidence)
    # the two reviews of labels as they stand say so (unless the label-chance reason holds)
    plain = issue == REVIEW
    if signals.agreement.label_chance is not None:
        plain &= ~(signals.agreement.label_chance < CHANCE)
    for i in np.flatnonzero(plain & weak_claim):
        reason[i] = (f"review: pooled p({label_names[mis.suggested[i]]})={mis.score[i]:.2f}, under even odds, and "
                     f"its label holds at most two photos as it stands: which photo is the label's is a person's call")
    for i in np.flatnonzero(plain & alone):
        reason[i] = (f"review: no label supported (P(no same-person neighbour)={out.knn_score[i]:.2f}), but every other "
                     f"image of its label was found to be someone else's or a copy: as the labels stand it is its "
                     f"label's only photo")
    if apart is not None:
        odds = f"times as likely for one person as for the nearest stranger (needs {SINGLE_IMAGE_BAYES:g})"
        for i in np.flatnonzero(apart.wrong & ~apart.kin & (issue == "mislabeled")):
            reason[i] = (f"of its label's two images, only this one has its nearest photo under another label, "
                         f"{label_names[apart.suggested[i]]}, at similarity {apart.sim[i]:.2f}: {apart.factor[i]:.3g} {odds}")
        for i in np.flatnonzero(apart.kin & (issue == "outlier")):
            reason[i] = (f"of its label's two images, only this one matches a photo found to be a stranger where it was "
                         f"filed (row {apart.evidence[i] + 1}, {label_names[labels[apart.evidence[i]]]}), at similarity "
                         f"{apart.sim[i]:.2f}: {apart.factor[i]:.3g} {odds}; the same stranger")

    corroborated = np.zeros(len(labels), dtype=bool)
    for agree in mis.corroborated_by.values():
        corroborated |= agree
    stats = {"report_floor": floor, "precedence": list(PRECEDENCE), "near_duplicates": signals.duplicates.stats,
             "mislabeled_corroborated": int(corroborated.sum()),
             **{f"mislabeled_corroborated_by_{name}": int(v.sum()) for name, v in mis.corroborated_by.items()}}
    # how near strangers come in this set (report.json: stages.findings), and what it decided
    stats["nearest_stranger"] = None if stranger is None else dict(
        stranger.summary(), two_image_labels_told_apart=0 if apart is None else int(apart.wrong.sum()),
        of_them_by_a_found_stranger=0 if apart is None else int(apart.kin.sum()),
        loners_left_with_their_label=withdrawn)
    agr = signals.agreement
    if agr.nearest_photos_score is not None:
        # votes for another label that won on its count of photos only (a big look-alike's)
        stats["mislabel_votes_won_on_count_alone"] = int(
            ((mis.knn_score >= floor) & (agr.nearest_photos_score < floor) & (agr.best_other >= 0)).sum())
    if len(mis.corroborated_by) >= 2:
        stats["mislabeled_corroborated_by_all_stages"] = int(
            np.logical_and.reduce(list(mis.corroborated_by.values())).sum())
    return Findings(issue=issue, score=score, mislabel_score=mis.knn_score, outlier_score=out.score,
                    suggested=suggested, keep_of_group=keep_of_group, review=needs_review, reason=reason,
                    merges=dupid.merges, corroborated=corroborated, stats=stats)


def _reasons(signals, labels, label_names, issue, mis, out, near, dupid, review, needs_review,
             evidences) -> np.ndarray:
    """The evidence behind each row's final issue (or its review), in one short line."""
    agr, conf = signals.agreement, signals.camsoftmax
    reason = np.full(len(labels), "", dtype=object)
    g, b = agr.given_support, agr.other_support
    names = label_names
    for i in np.flatnonzero(issue == "mislabeled"):
        s = mis.suggested[i]
        text = (f"pooled p({names[s]})={mis.score[i]:.2f} over {mis.n_terms} stage(s); "
                f"kNN: {b[i]:.1f} reliable votes for {names[s]} vs {g[i]:.1f} for its label")
        for name, ev in evidences:
            if mis.corroborated_by[name][i]:
                text += f"; {name}: {ev.majority_share[i]:.0%} of its cluster is {names[ev.majority[i]]}"
        if conf is not None and mis.corroborated_by["camsoftmax"][i]:
            text += f"; cam-softmax: p({names[labels[i]]})={conf.p_given[i]:.2f}, p({names[conf.top[i]]})={conf.p_top[i]:.2f}"
        reason[i] = text
    for i in np.flatnonzero(issue == "outlier"):
        text = f"kNN: no label supported (P(no same-person neighbour)={out.knn_score[i]:.2f})"
        if out.stranger is not None and out.stranger[i]:
            stage, ev = evidences[0]
            own = "none" if ev.own_count[i] == 0 else f"{ev.own_count[i]} other"
            text = (f"a stranger: every partition puts it among other names (the {stage} cluster: "
                    f"{ev.cluster_size[i]} rows, {own} of {names[labels[i]]}, the largest label "
                    f"{ev.majority_share[i]:.0%}); kNN: no label supported (P(no same-person neighbour)="
                    f"{signals.agreement.none_prob[i]:.2f})")
        if conf is not None and np.isfinite(conf.p_given[i]):
            text += f"; cam-softmax: p({names[labels[i]]})={conf.p_given[i]:.2f}"
        reason[i] = text
    for i in np.flatnonzero(issue == "duplicate_identity"):
        lab = labels[i]
        reason[i] = (f"duplicate identity: {names[lab]} looks like {names[dupid.merged_into[lab]]} "
                     f"({dupid.evidence[lab]})")
    for i in np.flatnonzero(issue == "near_duplicate"):
        reason[i] = f"near-duplicate of row {near.keep[i] + 1} (closest partner row {near.partner[i] + 1})"
    sizes = _label_sizes(labels, len(names))
    for i in np.flatnonzero(needs_review):
        if review.cannot_tell[i]:
            near = -1 if agr.nearest_other is None else agr.nearest_other[i]
            hint = (f"; its nearest neighbour of another label is {names[near]} (cosine {agr.nearest_other_sim[i]:.2f})"
                    if near >= 0 else "")
            held = sizes[i] if review.label_images is None else review.label_images[i]
            reason[i] = f"review: cannot tell, label has {held} image(s){hint}"
        elif (out.contested is not None and out.contested[i]) or (mis.contested is not None and mis.contested[i]):
            lean = (f"kNN: {b[i]:.1f} reliable votes for {names[agr.best_other[i]]} vs {g[i]:.1f} for its label"
                    if mis.contested is not None and mis.contested[i] else
                    f"no label supported (P(no same-person neighbour)={out.knn_score[i]:.2f})")
            if agr.label_chance is not None and agr.label_chance[i] < CHANCE:
                text = (f"review: {lean}, yet its label's nearest image is nearer than a random label's would be "
                        f"(chance {agr.label_chance[i]:.3f})")
            elif out.contested is not None and out.contested[i]:
                text = (f"review: {lean}, but no two of its label's {sizes[i]} images back each other (no core): "
                        "which of them are the person is unknown")
            else:
                text = (f"review: {lean}, but its label has {sizes[i]} image(s) and no other stage backs "
                        f"{names[agr.best_other[i]]}")
            reason[i] = "; ".join(t for t in (text, review.partition_text[i]) if t)
        else:
            reason[i] = review.partition_text[i]
    return reason
