"""Per-sample findings from the kNN graph: mislabeled, outlier, near_duplicate.

Each detector is a plain function of the graph (and labels) that returns arrays; ``find_issues``
fuses them into one :class:`Findings`. Later stages add their own signal arrays to
:class:`Signals` and their own rule in ``find_issues`` without touching the others.

Nothing here uses a fixed cosine: the same-identity probability of an edge is calibrated on
the set's own labelled kNN pairs, and the near-duplicate cut comes from the distribution of
nearest-neighbour distances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.isotonic import IsotonicRegression

from .knn import KnnGraph

if TYPE_CHECKING:
    from .camsoftmax import CamSoftmaxConfig, Confidence

ISSUES = ("mislabeled", "outlier", "near_duplicate", "duplicate_identity")
NO_ISSUE = ""


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class SameIdentityCalibration:
    """P(same identity | cosine) for kNN edges, fitted on the set's labelled kNN pairs.

    Isotonic (monotone) regression of "same label" on similarity. Label noise only pulls the
    curve's plateau below 1 (a flipped sample's close neighbours carry another label) and
    does not move where it rises, so the curve stays a usable, conservative weight.
    """

    model: IsotonicRegression
    n_pairs: int
    same_rate: float

    def __call__(self, sims: np.ndarray) -> np.ndarray:
        shape = sims.shape
        flat = np.nan_to_num(sims.ravel().astype(np.float64), neginf=-1.0)
        return self.model.predict(flat).reshape(shape).astype(np.float32)

    def summary(self, sims: np.ndarray) -> dict:
        qs = np.quantile(sims[np.isfinite(sims)], [0.05, 0.25, 0.5, 0.75, 0.95])
        return {"n_pairs": self.n_pairs, "same_label_rate": round(self.same_rate, 4),
                "p_same_at_sim_quantiles": {f"{q:.3f}": round(float(self(np.array([q]))[0]), 4) for q in qs}}


def calibrate_same_identity(graph: KnnGraph, labels: np.ndarray, *, max_pairs: int = 2_000_000,
                            seed: int = 0) -> SameIdentityCalibration:
    """Fit P(same label | cosine) on (a sample of) the graph's edges."""
    valid = graph.indices >= 0
    rows = np.broadcast_to(np.arange(graph.n_samples)[:, None], graph.indices.shape)[valid]
    cols = graph.indices[valid]
    sims = graph.sims[valid].astype(np.float64)
    if len(sims) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(sims), size=max_pairs, replace=False)
        rows, cols, sims = rows[pick], cols[pick], sims[pick]
    same = (labels[rows] == labels[cols]).astype(np.float64)
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(sims, same)
    return SameIdentityCalibration(model=model, n_pairs=int(len(sims)), same_rate=float(same.mean()))


# --------------------------------------------------------------------------- near-duplicates


@dataclass(frozen=True)
class NearDuplicates:
    """Groups of almost identical vectors.

    group : (n_samples,) int64, group id per sample; -1 for samples in no group
    score : (n_samples,) float32 in [0, 1], strength of the closest duplicate edge
    partner : (n_samples,) int64, the closest duplicate partner, -1 if none
    threshold_sim : cosine (in the processed embedding space) at and above which a pair is a
        near-duplicate, derived from the data (see :func:`find_near_duplicates`)
    """

    group: np.ndarray
    score: np.ndarray
    partner: np.ndarray
    threshold_sim: float
    stats: dict = field(default_factory=dict)


def _gumbel_min_fit(u: np.ndarray) -> tuple[float, float]:
    """Location and scale of a Gumbel-for-minima law, from the quartiles (robust to the tail)."""
    q25, q50, q75 = np.quantile(u, [0.25, 0.5, 0.75])
    beta = float((q75 - q25) / (np.log(np.log(4.0)) - np.log(-np.log(0.75))))
    mu = float(q50 - beta * np.log(np.log(2.0)))
    return mu, beta


def _gumbel_min_cdf(u: np.ndarray, mu: float, beta: float) -> np.ndarray:
    return -np.expm1(-np.exp((u - mu) / beta))


def find_near_duplicates(graph: KnnGraph) -> NearDuplicates:
    """Near-duplicate groups from the low tail of nearest-neighbour distances.

    u = log(1 − s₁), the log cosine distance of each sample to its nearest neighbour, is the
    log of a minimum over many candidates, so over genuine photos it follows a Gumbel law for
    minima, whose left tail decays exponentially (heavier than a normal's: real sets hold many
    same-session photos). The law is fitted from the quartiles, which the few duplicates
    cannot move, and the cut is where it expects fewer than one genuine nearest pair in the
    whole set: n·F(u) < 1, i.e. u < μ − β·ln n. Every kNN edge below the cut is a duplicate
    edge; groups are connected components of those edges (union-find).

    An edge's score is 1 / (1 + n·F(u)): 0.5 at the cut, → 1 far below it (duplicate against
    the expected count of genuine pairs at least that close).
    """
    n = graph.n_samples
    first = graph.sims[:, 0].astype(np.float64)
    u1 = np.log(np.clip(1.0 - first[np.isfinite(first)], 1e-12, None))
    mu, beta = _gumbel_min_fit(u1)
    if not beta > 0:  # degenerate (almost every vector identical): nothing is separable
        empty = np.full(n, -1, dtype=np.int64)
        return NearDuplicates(empty, np.zeros(n, np.float32), empty.copy(), 1.0,
                              {"gumbel_mu": mu, "gumbel_beta": beta, "n_edges": 0, "n_groups": 0})
    cut_u = mu - beta * np.log(max(n, 2))
    threshold_sim = float(1.0 - np.exp(cut_u))

    u = np.log(np.clip(1.0 - graph.sims.astype(np.float64), 1e-12, None))
    is_dup = (u < cut_u) & (graph.indices >= 0)
    rows, cols = np.nonzero(is_dup)
    nb = graph.indices[rows, cols]
    edge_score = 1.0 / (1.0 + n * _gumbel_min_cdf(u[rows, cols], mu, beta))

    score = np.zeros(n, dtype=np.float32)
    partner = np.full(n, -1, dtype=np.int64)
    if len(rows):
        # closest duplicate partner per sample: edges come sorted by similarity within a row,
        # so the first edge seen per row (and per neighbour, for the reverse direction) wins.
        both_r = np.concatenate([rows, nb])
        both_p = np.concatenate([nb, rows])
        both_s = np.concatenate([edge_score, edge_score])
        order = np.lexsort((-both_s, both_r))
        both_r, both_p, both_s = both_r[order], both_p[order], both_s[order]
        firsts = np.r_[True, both_r[1:] != both_r[:-1]]
        partner[both_r[firsts]] = both_p[firsts]
        score[both_r[firsts]] = both_s[firsts]
    adj = sp.coo_matrix((np.ones(len(rows)), (rows, nb)), shape=(n, n))
    _, comp = connected_components(adj, directed=True, connection="weak")
    in_group = partner >= 0
    group = np.full(n, -1, dtype=np.int64)
    _, group[in_group] = np.unique(comp[in_group], return_inverse=True)
    stats = {"gumbel_mu": round(mu, 4), "gumbel_beta": round(beta, 4),
             "threshold_sim": round(threshold_sim, 6), "n_edges": int(len(rows)),
             "n_groups": int(group.max() + 1) if in_group.any() else 0,
             "n_samples_in_groups": int(in_group.sum())}
    return NearDuplicates(group, score, partner, threshold_sim, stats)


# --------------------------------------------------------------------------- label agreement


@dataclass(frozen=True)
class LabelAgreement:
    """Similarity-weighted kNN label votes, per sample.

    given_support : (n,) reliability-weighted vote mass for the sample's own label
    best_other : (n,) int64, the other label with most vote mass (-1 if none)
    other_support : (n,) vote mass for ``best_other``
    none_prob : (n,) probability that no reliable neighbour is the same person
    reliability : (n,) how well each sample's own label is backed by its neighbours, in [0, 1]
    n_votes : (n,) int, neighbours that voted (duplicates of the sample excluded)
    """

    given_support: np.ndarray
    best_other: np.ndarray
    other_support: np.ndarray
    none_prob: np.ndarray
    reliability: np.ndarray
    n_votes: np.ndarray


def _label_votes(nb_labels: np.ndarray, weights: np.ndarray, labels: np.ndarray, n_labels: int):
    """Own-label mass, and the best other label and its mass, per row, vectorised."""
    n, k = nb_labels.shape
    own = nb_labels == labels[:, None]
    given = np.where(own, weights, 0.0).sum(axis=1)
    other = (~own) & (weights > 0)
    r, c = np.nonzero(other)
    best = np.full(n, -1, dtype=np.int64)
    best_mass = np.zeros(n, dtype=np.float64)
    if len(r):
        key = r.astype(np.int64) * n_labels + nb_labels[r, c]
        uniq, inv = np.unique(key, return_inverse=True)
        mass = np.bincount(inv, weights=weights[r, c].astype(np.float64))
        key_row = uniq // n_labels
        # per row, the label with the largest mass (ties: smaller label code, deterministic)
        order = np.lexsort((uniq % n_labels, -mass, key_row))
        first = np.r_[True, key_row[order][1:] != key_row[order][:-1]]
        top = order[first]
        best[key_row[top]] = uniq[top] % n_labels
        best_mass[key_row[top]] = mass[top]
    return given, best, best_mass


def knn_label_agreement(graph: KnnGraph, labels: np.ndarray, calibration: SameIdentityCalibration,
                        *, dup_group: np.ndarray | None = None, n_labels: int | None = None) -> LabelAgreement:
    """Two-pass, reliability-weighted label vote over each sample's kNN.

    Pass 1: each neighbour j votes for its label with weight p_ij = P(same identity | s_ij).
    A sample's reliability is a_i = g_i / (T_i + 1), its own-label mass over all its vote mass
    plus one pseudo-vote. Pass 2: votes are weighted by p_ij·a_j, so neighbours whose own
    labels are unsupported (open-set images, other flips) do not vouch for anything. Near
    duplicates of a sample do not vote for it: a copy is not independent evidence.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_labels = int(n_labels if n_labels is not None else labels.max() + 1)
    nb = graph.indices
    valid = nb >= 0
    nb_safe = np.where(valid, nb, 0)
    p = np.where(valid, calibration(graph.sims), 0.0).astype(np.float64)
    if dup_group is not None:
        g_self = dup_group[:, None]
        same_dup = (g_self >= 0) & (dup_group[nb_safe] == g_self)
        p = np.where(same_dup, 0.0, p)
    nb_labels = labels[nb_safe]

    given1, _, _ = _label_votes(nb_labels, p, labels, n_labels)
    reliability = given1 / (p.sum(axis=1) + 1.0)
    w = p * reliability[nb_safe]
    given, best, best_mass = _label_votes(nb_labels, w, labels, n_labels)
    none_prob = np.prod(1.0 - np.clip(w, 0.0, 1.0), axis=1)
    return LabelAgreement(
        given_support=given.astype(np.float32),
        best_other=best,
        other_support=best_mass.astype(np.float32),
        none_prob=none_prob.astype(np.float32),
        reliability=reliability.astype(np.float32),
        n_votes=(p > 0).sum(axis=1).astype(np.int32),
    )


# --------------------------------------------------------------------------- fusion


@dataclass(frozen=True)
class Findings:
    """What is wrong with each sample, before any policy acts on it.

    issue : (n,) object, one of ISSUES or "" (no issue)
    score : (n,) float32 in [0, 1], higher = more likely a problem (of ``issue``)
    mislabel_score : (n,) float32, every sample's kNN mislabel score (the pooled one is ``score``)
    outlier_score : (n,) float32, every sample's pooled outlier score (0 for labels under 3 images)
    suggested : (n,) int64, suggested label code for mislabeled samples, else -1
    keep_of_group : (n,) int64, for near-duplicates the row kept for their group, else -1
    review : (n,) bool, samples the evidence cannot judge ("cannot tell"), kept for a person
    reason : (n,) object, short text naming the evidence
    merges : DataFrame with columns label, merged_into, score, evidence (duplicate identities)
    corroborated : (n,) bool, mislabeled findings whose suggested label another stage also
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
    merges: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["label", "merged_into", "score", "evidence"]))
    corroborated: np.ndarray | None = None
    stats: dict = field(default_factory=dict)

    def counts(self) -> dict:
        values, counts = np.unique(self.issue[self.issue != NO_ISSUE].astype(str), return_counts=True)
        out = {name: 0 for name in ISSUES}
        out.update({str(v): int(c) for v, c in zip(values, counts)})
        out["review"] = int(self.review.sum())
        return out


@dataclass(frozen=True)
class ClusterEvidence:
    """What a partition says about each sample's label.

    partition : (n,) cluster id per sample
    majority : (n,) int64, the most frequent label among the OTHER members of the sample's
        cluster (-1 for singletons)
    majority_share : (n,) share of the other members carrying ``majority``
    own_share : (n,) share of the other members carrying the sample's own label
    stats : the stage's own report (threshold, curve, agreement with the labels)
    """

    partition: np.ndarray
    majority: np.ndarray
    majority_share: np.ndarray
    own_share: np.ndarray
    stats: dict = field(default_factory=dict)


def cluster_evidence(partition: np.ndarray, labels: np.ndarray, stats: dict | None = None) -> ClusterEvidence:
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
        stats=stats or {},
    )


@dataclass(frozen=True)
class Signals:
    """Per-sample evidence from every stage that has run; stages add fields as they land."""

    calibration: SameIdentityCalibration
    agreement: LabelAgreement
    duplicates: NearDuplicates
    hierarchical: ClusterEvidence | None = None
    correlation: ClusterEvidence | None = None
    camsoftmax: Confidence | None = None

    def partitions(self) -> list[tuple[str, ClusterEvidence]]:
        """The clustering stages that ran, by name."""
        return [(name, ev) for name, ev in (("hierarchical", self.hierarchical), ("correlation", self.correlation))
                if ev is not None]


def hierarchical_signal(graph: KnnGraph, labels: np.ndarray) -> ClusterEvidence:
    """Graph average linkage cut where it best agrees with the (mostly right) labels."""
    from .hierarchical import average_linkage, choose_threshold
    from .metrics import clustering_scores

    dendrogram = average_linkage(graph)
    threshold, curve = choose_threshold(dendrogram, labels)
    partition = dendrogram.cut(threshold)
    stats = {"threshold": threshold, "rounds": dendrogram.rounds, "inversions": dendrogram.stats["inversions"],
             "n_clusters": int(partition.max()) + 1, "spread_labels": spread_labels(partition, labels),
             "agreement_with_labels": clustering_scores(labels, partition),
             "threshold_curve": [{"threshold": round(t, 5), "pairwise_f": round(f, 5), "n_clusters": c}
                                 for t, f, c in curve]}
    return cluster_evidence(partition, labels, stats)


def correlation_signal(graph: KnnGraph, labels: np.ndarray, reliable: np.ndarray | None = None, *,
                       seed: int = 0) -> ClusterEvidence:
    """Correlation clustering on the signed graph calibrated on the labels.

    The calibration leaves out pairs touching a sample whose label its neighbours do not back
    (``reliable`` False), and the bias is the one whose partition best agrees with the labels.
    """
    from .correlation import fit_signed_graph
    from .metrics import clustering_scores

    result, stats = fit_signed_graph(graph, labels, reliable=reliable, seed=seed)
    partition = result.labels
    stats.update(spread_labels=spread_labels(partition, labels),
                 agreement_with_labels=clustering_scores(labels, partition))
    return cluster_evidence(partition, labels, stats)


def spread_labels(partition: np.ndarray, labels: np.ndarray, *, max_main_share: float = 0.5, top: int = 20) -> dict:
    """Labels whose images do not gather in one cluster: the label's largest cluster holds
    less than ``max_main_share`` of its images (a mixed identity, or one name for several
    people). Labels with fewer than 4 images are not judged. Returns the count and the worst
    ``top`` as label code → share of images outside the largest cluster."""
    n_labels = int(labels.max()) + 1
    n_clusters = int(partition.max()) + 1
    key = labels.astype(np.int64) * n_clusters + partition
    cells, counts = np.unique(key, return_counts=True)
    cell_label = cells // n_clusters
    largest = np.zeros(n_labels, dtype=np.int64)
    np.maximum.at(largest, cell_label, counts)
    sizes = np.bincount(labels, minlength=n_labels)
    outside = 1.0 - largest / np.maximum(sizes, 1)
    spread = np.flatnonzero((outside > 1.0 - max_main_share) & (sizes >= 4))
    worst = spread[np.argsort(-outside[spread], kind="stable")][:top]
    return {"count": int(len(spread)), "max_main_share": max_main_share,
            "worst": {int(lab): round(float(outside[lab]), 3) for lab in worst}}


def compute_signals(graph: KnnGraph, labels: np.ndarray, n_labels: int, *, seed: int = 0,
                    hierarchical: bool = True, correlation: bool = True, embeddings: np.ndarray | None = None,
                    camsoftmax: CamSoftmaxConfig | None = None, timings: dict | None = None) -> Signals:
    """Every stage's per-sample evidence; ``timings`` (seconds per stage) are filled in when given."""
    import time

    t = time.perf_counter()
    calibration = calibrate_same_identity(graph, labels, seed=seed)
    duplicates = find_near_duplicates(graph)
    agreement = knn_label_agreement(graph, labels, calibration, dup_group=duplicates.group, n_labels=n_labels)
    clock = {"knn_signals": time.perf_counter() - t}
    t = time.perf_counter()
    hier = hierarchical_signal(graph, labels) if hierarchical else None
    clock["hierarchical"] = time.perf_counter() - t
    t = time.perf_counter()
    corr = correlation_signal(graph, labels, agreement.reliability >= 0.5, seed=seed) if correlation else None
    clock["correlation"] = time.perf_counter() - t
    t = time.perf_counter()
    conf = None
    if camsoftmax is not None and embeddings is not None:
        from .camsoftmax import camsoftmax_confidence

        conf = camsoftmax_confidence(embeddings, labels, n_labels, graph.indices, camsoftmax)
    clock["camsoftmax"] = time.perf_counter() - t
    if timings is not None:
        timings.update(clock)
    return Signals(calibration=calibration, agreement=agreement, duplicates=duplicates, hierarchical=hier,
                   correlation=corr, camsoftmax=conf)


def find_issues(signals: Signals, labels: np.ndarray, label_names: np.ndarray, *,
                report_floor: float = 0.5, embeddings: np.ndarray | None = None) -> Findings:
    """Fuse the signals into one issue per sample.

    Which issue: the kNN vote decides whether a sample is a mislabeled candidate (kNN mislabel
    score m = b / (b + g + 1): the best other label's reliable vote mass b against the given
    label's g, with one pseudo-vote of benefit of the doubt) or an outlier candidate (kNN
    outlier score = P(no reliable neighbour is the same person)), at ``report_floor``.

    How sure: every stage that ran gives its own probability for the same event, and the score
    is their mean (a linear opinion pool, so it is a probability on the same scale, and a
    policy threshold of 0.75 means three to one):

    - mislabeled, the event "the suggested label L* is right": kNN m; each partition, the
      share of the sample's cluster carrying L* when L* is its majority (else 0); cam-softmax,
      its cross-fitted probability of L* when L* is its top label (else 0). A stage that
      disagrees pulls the score down, so a high score needs independent stages to agree.
    - outlier, the event "no labelled identity fits": kNN none-probability and cam-softmax's
      1 − p(given label) (a cross-fitted head that never saw the sample).

    Outliers are judged only for labels with at least 3 images (with fewer there is no
    majority to disagree with), mislabels only for labels with at least 2: such samples go to
    review ("cannot tell") instead. Whether anything is done is the policy's call (relabel.py).
    Near-duplicates: in each group the row with the lowest mislabel score is kept (ties: first
    row), the others are near_duplicate findings pointing at it.

    Duplicate identities (one person under two names): candidate pairs come from reciprocal
    kNN votes (:func:`_duplicate_identity_guard`); their score pools that vote score with, per
    partition, the share of each label's images sharing a cluster with the other (the smaller
    of the two directions), and, given ``embeddings``, a centroid test (:func:`_centroid_term`).
    """
    agr, dup = signals.agreement, signals.duplicates
    n = len(labels)
    sizes = np.bincount(labels, minlength=len(label_names))[labels]
    g = agr.given_support.astype(np.float64)
    b = agr.other_support.astype(np.float64)
    mis = (b / (b + g + 1.0)).astype(np.float32)
    out = np.where(sizes >= 3, agr.none_prob, 0.0).astype(np.float32)

    issue = np.full(n, NO_ISSUE, dtype=object)
    score = np.zeros(n, dtype=np.float32)
    suggested = np.full(n, -1, dtype=np.int64)
    review = np.zeros(n, dtype=bool)
    reason = np.full(n, "", dtype=object)

    # A label's only image cannot be outvoted: strong votes for another label mean either a
    # wrong label or one person under two names, and one image cannot tell which.
    is_mis = (mis >= report_floor) & (agr.best_other >= 0) & (sizes >= 2)
    conf = signals.camsoftmax
    pooled_mis, pooled_out, pool_terms = _pooled_scores(signals, labels, mis, out)
    is_out = ~is_mis & (pooled_out >= report_floor) & (sizes >= 3)
    issue[is_mis], score[is_mis] = "mislabeled", pooled_mis[is_mis]
    suggested[is_mis] = agr.best_other[is_mis]
    issue[is_out], score[is_out] = "outlier", pooled_out[is_out]
    partitions = signals.partitions()
    corroborated = np.zeros(n, dtype=bool)
    corroborated_by = {name: np.zeros(n, dtype=bool) for name, _ in partitions}
    for i in np.flatnonzero(is_mis):
        reason[i] = (f"pooled p({label_names[agr.best_other[i]]})={pooled_mis[i]:.2f} over {pool_terms} stage(s); "
                     f"kNN: {b[i]:.1f} reliable votes for {label_names[agr.best_other[i]]} "
                     f"vs {g[i]:.1f} for its label")
    for name, ev in partitions:
        agree = is_mis & (ev.majority == agr.best_other)
        corroborated_by[name] = agree
        corroborated |= agree
        for i in np.flatnonzero(agree):
            reason[i] += f"; {name}: {ev.majority_share[i]:.0%} of its cluster is {label_names[ev.majority[i]]}"
    if conf is not None:
        agree = is_mis & (conf.top == agr.best_other)
        corroborated_by["camsoftmax"] = agree
        corroborated |= agree
        for i in np.flatnonzero(agree):
            reason[i] += (f"; cam-softmax: p({label_names[labels[i]]})={conf.p_given[i]:.2f}, "
                          f"p({label_names[conf.top[i]]})={conf.p_top[i]:.2f}")
    for name, ev in partitions:
        # a partition alone: a sample whose cluster (of at least 3 others) is mostly another
        # label, that the kNN vote did not flag, is reported for review, not acted on
        alone = (~is_mis & (ev.majority >= 0) & (ev.majority != labels) & (ev.majority_share >= 0.5)
                 & (np.bincount(ev.partition)[ev.partition] >= 4) & (sizes >= 2))
        for i in np.flatnonzero(alone):
            review[i] = True
            reason[i] = (reason[i] + "; " if reason[i] else "") + (
                f"review: {name} cluster is {ev.majority_share[i]:.0%} {label_names[ev.majority[i]]}")
    for i in np.flatnonzero(is_out):
        reason[i] = f"kNN: no label supported (P(no same-person neighbour)={out[i]:.2f})"
        if conf is not None and np.isfinite(conf.p_given[i]):
            reason[i] += f"; cam-softmax: p({label_names[labels[i]]})={conf.p_given[i]:.2f}"

    # "Cannot tell": too few images of the label to outvote or to disagree with.
    small = (sizes <= 2) & ~is_mis
    unsure = small & ((agr.none_prob >= report_floor) | (mis >= 0.5 * report_floor))
    review[unsure] = True
    for i in np.flatnonzero(unsure):
        hint = f"; neighbours suggest {label_names[agr.best_other[i]]}" if agr.best_other[i] >= 0 and b[i] > 0 else ""
        reason[i] = f"review: cannot tell, label has {sizes[i]} image(s){hint}"

    merges = _duplicate_identity_guard(labels, label_names, g, b, agr.best_other, issue, score, reason)
    suggested[issue == "duplicate_identity"] = -1

    keep_of_group = np.full(n, -1, dtype=np.int64)
    in_group = np.flatnonzero(dup.group >= 0)
    if len(in_group):
        # Keep the first row of a group whose members share a label; where their labels
        # differ, keep the member whose label is best supported (lowest mislabel score).
        grp_all = dup.group[in_group]
        lab_all = labels[in_group]
        n_grp = int(grp_all.max()) + 1
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
        keeper = np.empty(int(dup.group.max()) + 1, dtype=np.int64)
        keeper[grp[head]] = rows[head]
        dropped = rows[~head]
        keep_of_group[dropped] = keeper[dup.group[dropped]]
        issue[dropped] = "near_duplicate"
        score[dropped] = dup.score[dropped]
        suggested[dropped] = -1
        review[dropped] = False
        for i in dropped:
            reason[i] = f"near-duplicate of row {keep_of_group[i] + 1} (closest partner row {dup.partner[i] + 1})"

    if len(merges):
        merges = _pool_merges(merges, partitions, labels, label_names, embeddings, issue, score)
    stats = {"report_floor": report_floor, "near_duplicates": dup.stats,
             "mislabeled_corroborated": int(corroborated.sum()),
             **{f"mislabeled_corroborated_by_{name}": int(v.sum()) for name, v in corroborated_by.items()}}
    if len(corroborated_by) >= 2:
        stats["mislabeled_corroborated_by_all_stages"] = int(np.logical_and.reduce(list(corroborated_by.values())).sum())
    pooled_out = np.where(sizes >= 3, pooled_out, 0.0).astype(np.float32)
    return Findings(issue=issue, score=score, mislabel_score=mis, outlier_score=pooled_out, suggested=suggested,
                    keep_of_group=keep_of_group, review=review, reason=reason, merges=merges,
                    corroborated=corroborated, stats=stats)


def _pooled_scores(signals: Signals, labels: np.ndarray, knn_mis: np.ndarray, knn_out: np.ndarray):
    """Linear opinion pools of the stages' probabilities (see :func:`find_issues`).

    Returns (mislabeled pool, outlier pool, number of stages in the mislabeled pool).
    """
    suggestion = signals.agreement.best_other
    terms = [knn_mis.astype(np.float64)]
    for _, ev in signals.partitions():
        terms.append(np.where((ev.majority == suggestion) & (suggestion >= 0), ev.majority_share, 0.0))
    out_terms = [knn_out.astype(np.float64)]
    conf = signals.camsoftmax
    if conf is not None:
        ok = np.isfinite(conf.p_given)
        # a sample whose label has no image outside its fold cannot be scored: the kNN term stands alone
        terms.append(np.where(ok & (conf.top == suggestion), np.nan_to_num(conf.p_top), 0.0))
        out_terms.append(np.where(ok, 1.0 - np.nan_to_num(conf.p_given), knn_out))
        counted = np.vstack(terms)
        mis = np.where(ok, counted.mean(axis=0), counted[:-1].mean(axis=0))
    else:
        mis = np.vstack(terms).mean(axis=0)
    out = np.vstack(out_terms).mean(axis=0)
    return mis.astype(np.float32), out.astype(np.float32), len(terms)


def _shared_share(ev: ClusterEvidence, labels: np.ndarray, a: int, b: int) -> float:
    """Share of label a's images in clusters that also hold label b."""
    rows_a = labels == a
    if not rows_a.any():
        return 0.0
    return float(np.isin(ev.partition[rows_a], np.unique(ev.partition[labels == b])).mean())


def _centroid_term(embeddings: np.ndarray, labels: np.ndarray, a: int, b: int) -> float:
    """How well label a's images pass for label b's (and back), judged at b's own centroid.

    If a and b are one person, a's images sit as close to b's centroid as b's own images do,
    so about half of them reach the median similarity of b's images to their centroid; for two
    people almost none do. Returns min(1, 2·share), the smaller of the two directions; the
    threshold is each label's own spread, not a fixed cosine.
    """
    def one_way(src, dst):
        xd = embeddings[labels == dst].astype(np.float64)
        total = xd.sum(axis=0)
        # b's own images against the centroid of b's OTHER images (leave one out: an image
        # inside its own centroid would look closer than any outsider could)
        own_sq = (xd * xd).sum(axis=1)
        dots = xd @ total
        loo = (dots - own_sq) / np.sqrt(np.maximum(total @ total - 2 * dots + own_sq, 1e-24) * own_sq)
        median_own = np.median(loo) if len(xd) > 1 else 1.0
        xs = embeddings[labels == src].astype(np.float64)
        cos = (xs @ total) / np.maximum(np.linalg.norm(xs, axis=1) * np.linalg.norm(total), 1e-12)
        return float((cos >= median_own).mean())

    return min(1.0, 2 * min(one_way(a, b), one_way(b, a)))


def _pool_merges(merges: pd.DataFrame, partitions, labels, label_names, embeddings, issue, score) -> pd.DataFrame:
    """Pool each merge suggestion's vote score with the partitions' and the centroids' evidence."""
    index = {name: i for i, name in enumerate(label_names)}
    merges = merges.copy()
    pooled, texts = [], []
    for row in merges.itertuples(index=False):
        a, b = index[row.label], index[row.merged_into]
        terms, text = [float(row.score)], [row.evidence]
        for name, ev in partitions:
            ab, ba = _shared_share(ev, labels, a, b), _shared_share(ev, labels, b, a)
            terms.append(min(ab, ba))
            text.append(f"{name}: {ab:.0%} of {row.label}'s images share a cluster with {row.merged_into}, "
                        f"{ba:.0%} back")
        if embeddings is not None:
            cen = _centroid_term(embeddings, labels, a, b)
            terms.append(cen)
            text.append(f"centroids: {cen:.2f} (1 = each label's images pass for the other's)")
        pooled.append(round(float(np.mean(terms)), 4))
        texts.append("; ".join(text))
    merges["score"], merges["evidence"] = pooled, texts
    # the member rows carry their label's pooled score
    by_label = dict(zip(merges.label, merges.score))
    rows = np.flatnonzero(issue == "duplicate_identity")
    if len(rows):
        score[rows] = [by_label.get(label_names[lab], score[i]) for i, lab in zip(rows, labels[rows])]
    return merges


def _duplicate_identity_guard(labels, label_names, given, other, best_other, issue, score, reason) -> pd.DataFrame:
    """Find labels that are the same person as another label, before any row is relabelled.

    When one person is filed under two names, each half's neighbours carry the other name and
    a per-sample vote would tear the smaller half away row by row. If labels L and L* were one
    person, a member of L would give L* a share of its reliable votes near
    e = n(L*) / (n(L) + n(L*) − 1) (neighbours split in proportion to the halves). So for each
    pair, R(L→L*) is the mean over ALL of L's images of min(1, s_i / e), s_i being image i's
    vote share for L* (0 when L* is not its best other label). A split gives R ≈ 1 in both
    directions; flips from L* into L give it only for the flipped subset, and not back. The
    pair's score is min(R(L→L*), R(L*→L)); a score ≥ 1/2 with at least two images on each
    side voting makes a merge suggestion. L's rows with no other finding become
    ``duplicate_identity`` findings. Chains (A→B, B→C) are resolved as connected components
    with networkx; each group merges into its largest label.
    """
    n_labels = len(label_names)
    sizes = np.bincount(labels, minlength=n_labels)
    columns = ["label", "merged_into", "score", "evidence"]
    rows = np.flatnonzero((best_other >= 0) & (other > 0))
    if not len(rows):
        return pd.DataFrame(columns=columns)
    src_all, dst_all = labels[rows], best_other[rows]
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
    if not chosen.any():
        return pd.DataFrame(columns=columns)
    graph = nx.Graph()
    evidence: dict[int, list[str]] = {}
    best: dict[int, float] = {}
    for j in np.flatnonzero(chosen):
        a, b = int(src[j]), int(dst[j])
        sc = float(min(pair_score[j], 1.0))
        text = (f"{cnt[j]} of {sizes[a]} images of {label_names[a]} vote {label_names[b]} and {back_cnt[j]} of "
                f"{sizes[b]} vote back (agreement with one person: {ratio[j]:.2f} / {back[j]:.2f})")
        for lab in (a, b):
            evidence.setdefault(lab, []).append(text)
            best[lab] = max(best.get(lab, 0.0), sc)
        graph.add_edge(a, b)
    merged_into = np.full(n_labels, -1, dtype=np.int64)
    out = []
    for component in nx.connected_components(graph):
        canonical = max(component, key=lambda lab: (sizes[lab], -lab))
        for lab in sorted(component - {canonical}):
            merged_into[lab] = canonical
            out.append((label_names[lab], label_names[canonical], round(best[lab], 4), "; ".join(evidence[lab])))
    members = np.flatnonzero((merged_into[labels] >= 0) & ((issue == NO_ISSUE) | (issue == "mislabeled")))
    label_score = np.zeros(n_labels, dtype=np.float32)
    for lab, sc in best.items():
        label_score[lab] = sc
    issue[members] = "duplicate_identity"
    score[members] = label_score[labels[members]]
    for i in members:
        lab = labels[i]
        reason[i] = (f"duplicate identity: {label_names[lab]} looks like {label_names[merged_into[lab]]} "
                     f"({'; '.join(evidence[lab])})")
    return pd.DataFrame(out, columns=columns)
