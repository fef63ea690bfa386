"""The kNN-vote stage: near-duplicate groups and reliability-weighted label votes.

Two questions answered from the kNN graph alone (and the shared calibration):

- which rows are almost the same vector as another (the near-duplicate cut comes from the
  low tail of the set's own nearest-neighbour distances, not from a constant);
- how much each row's neighbours back its label, which other label they back most, and how
  likely it is that none of them is the same person.

The stage returns plain arrays; :mod:`facecluster.findings` turns them into findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numba import njit
from scipy.sparse.csgraph import connected_components

from .blocks import map_row_blocks
from .calibration import Calibration
from .knn import KnnGraph

# Fewer nearest-neighbour distances than this are too few to fit their law from quartiles:
# the cut would land among the genuine pairs, so only identical vectors count as copies.
MIN_LAW_SAMPLES = 50
IDENTICAL_DISTANCE = 1e-6  # 1 − cosine of vectors equal to float32 precision

# --------------------------------------------------------------------------- near-duplicates


@dataclass(frozen=True)
class NearDuplicates:
    """Groups of almost identical vectors.

    group : (n_samples,) int64, group id per sample; -1 for samples in no group
    score : (n_samples,) float32 in [0, 1], strength of the closest duplicate edge
    partner : (n_samples,) int64, the closest duplicate partner, -1 if none
    threshold_sim : cosine (in the processed embedding space) below which no pair is a
        near-duplicate (the absolute cut), derived from the data (see :func:`near_duplicate_groups`)
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


REFERENCE_NEIGHBOUR = 10  # distances are measured against each row's 10th neighbour's
# The relative law is fitted on the densest quarter of the rows (smallest distance to the
# reference neighbour): there the reference is one of the row's own person's photos, as the law
# assumes. A web set's big identities hold far more than a quarter of its rows even when most
# identities have one image; where the reference is a stranger (a one- or two-image identity)
# the nearest-to-reference ratio mixes two scales and widens the fitted law.
DENSE_SHARE = 0.25


def _relative_log_distance(sims: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log(1 − s_ij) − log(1 − s_i,m): each edge's cosine distance relative to the row's m-th
    neighbour's (m = REFERENCE_NEIGHBOUR, or the last), which takes out the local density (a
    dense identity and a sparse tail have very different genuine distances). Returns the (n, k)
    float64 relative distances and the (n,) reference distances log(1 − s_i,m)."""
    d = np.clip(1.0 - sims.astype(np.float64), 1e-12, None)
    valid = np.isfinite(d) & (indices >= 0)
    m = np.minimum(REFERENCE_NEIGHBOUR, valid.sum(axis=1)) - 1
    ref = np.log(d[np.arange(len(d)), np.maximum(m, 0)])
    return np.where(valid, np.log(d) - ref[:, None], np.inf), ref


def _absolute_log_distance(sims: np.ndarray) -> np.ndarray:
    return np.log(np.clip(1.0 - sims.astype(np.float64), 1e-12, None))


def _nearest_distances(sims: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block of rows: the nearest edge's relative and absolute log distances and the
    reference distance, the laws' samples (:func:`near_duplicate_groups`); the columns of
    :func:`_relative_log_distance` it needs, not all k."""
    valid = (indices >= 0) & np.isfinite(sims)
    m = np.maximum(np.minimum(REFERENCE_NEIGHBOUR, valid.sum(axis=1)) - 1, 0)
    near = _absolute_log_distance(sims[:, 0])
    reference = _absolute_log_distance(sims[np.arange(len(sims)), m])
    return np.where(valid[:, 0], near - reference, np.inf), near, reference


def _duplicate_edges(sims: np.ndarray, indices: np.ndarray, rows: np.ndarray, law: dict, n: int):
    """One block of rows: its duplicate edges (row, neighbour, score), row-major, under the
    cuts in ``law`` (:func:`near_duplicate_groups`)."""
    absolute = _absolute_log_distance(sims)
    valid = indices >= 0
    identical = np.log(IDENTICAL_DISTANCE)
    if "relative_cut" not in law:
        is_dup = (absolute < identical) & valid
        r, c = np.nonzero(is_dup)
        return rows[r], indices[r, c].astype(np.int64), np.ones(len(r))
    relative, _ = _relative_log_distance(sims, indices)
    is_dup = (((relative < law["relative_cut"]) & (absolute < law["absolute_cut"])) | (absolute < identical)) & valid
    r, c = np.nonzero(is_dup)
    # scored by the law as the stats report it (4 decimals), so a score can be redone from them
    mu, beta = round(law["relative_mu"], 4), round(law["relative_beta"], 4)
    score = 1.0 / (1.0 + n * _gumbel_min_cdf(relative[r, c], mu, beta))
    return rows[r], indices[r, c].astype(np.int64), np.where(absolute[r, c] < identical, 1.0, score)


def near_duplicate_groups(graph: KnnGraph, *, client=None) -> NearDuplicates:
    """Near-duplicate groups: pairs far closer than their neighbourhood and than the set allow.

    Two laws, each fitted from the quartiles of the rows' nearest-neighbour distances (which
    the few copies cannot move). The log of a nearest-neighbour distance is the log of a
    minimum over many candidates, so over genuine photos it follows a Gumbel law for minima,
    whose left tail decays exponentially.

    - Relative: r = log(1 − s₁) − log(1 − s₁₀), the nearest distance against the row's own
      10th neighbour's. It takes out the local density (a dense identity and a sparse tail
      have very different genuine distances), so a copy stands out wherever it sits. The law
      is fitted on the densest quarter of the rows (:data:`DENSE_SHARE`), where the reference
      is a photo of the row's own person; in a long-tailed set most rows' reference is a
      stranger, and fitted there the law was wide enough to miss one copy in eight. Cut: the
      law expects fewer than one genuine pair in the whole set, n·F(r) < 1.
    - Absolute: a = log(1 − s₁). A pair must also be among the closest of the whole set: the
      absolute law expects fewer than √n genuine pairs that close. This keeps a tight set
      whose relative distances barely vary (a thin tail the relative fit does not foresee)
      from offering its tightest genuine pairs as copies.

    Every kNN edge below both cuts is a duplicate edge; groups are connected components of
    those edges. An edge's score is 1 / (1 + n·F(r)): 0.5 at the relative cut, → 1 far below
    it. Under ``MIN_LAW_SAMPLES`` rows there are too few distances to fit the laws, and only
    identical vectors are grouped (score 1).

    The per-row work (each row's distances, each edge's cut) runs block by block
    (:func:`facecluster.blocks.map_row_blocks`), on the workers of a Dask ``client`` when
    given; the fits and the groups, which need every row, run here.
    """
    n = graph.n_samples
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return NearDuplicates(empty, np.zeros(0, np.float32), empty.copy(), 1.0,
                              {"cut": "empty", "n_edges": 0, "n_groups": 0, "n_samples_in_groups": 0})
    if n < MIN_LAW_SAMPLES:
        # too few nearest neighbours to fit a law to: only identical vectors (cosine 1 to
        # float precision) are copies
        law: dict = {"cut": f"identical only (n < {MIN_LAW_SAMPLES})"}
        threshold_sim = 1.0 - IDENTICAL_DISTANCE
    else:
        r1, a1, reference = (np.concatenate(part) for part in zip(*map_row_blocks(
            _nearest_distances, n, (graph.sims, graph.indices), client=client)))
        # rows with an identical twin (a detector's fallback vector repeated, a file copied)
        # are copies whatever the laws say: their distances say nothing of genuine photos, so
        # they stay out of both fits; so do rows whose reference is itself identical (ten or
        # more copies), which have no genuine scale. A dense fit with no spread falls back to
        # every other row.
        identical = np.log(IDENTICAL_DISTANCE)
        fit = np.isfinite(r1) & (a1 > identical)
        dense = fit & (reference > identical)
        mu = beta = mu_a = beta_a = 0.0
        if fit.sum() >= 2:  # else (almost) every vector has an identical twin: no genuine distance to fit
            if DENSE_SHARE * dense.sum() >= MIN_LAW_SAMPLES:
                dense &= reference <= np.quantile(reference[dense], DENSE_SHARE)
                mu, beta = _gumbel_min_fit(r1[dense])
                if not beta > 0:
                    mu, beta = _gumbel_min_fit(r1[fit])
            else:
                mu, beta = _gumbel_min_fit(r1[fit])
            mu_a, beta_a = _gumbel_min_fit(a1[np.isfinite(a1) & (a1 > identical)])
        if beta > 0 and beta_a > 0:
            cut_r = mu - beta * np.log(n)
            cut_a = mu_a - beta_a * 0.5 * np.log(n)
            # identical vectors are copies however many there are (ten of them make each
            # other's reference, and their relative distance 0)
            threshold_sim = float(1.0 - np.exp(cut_a))
            law = {"cut": "relative and absolute Gumbel laws", "relative_mu": mu, "relative_beta": beta,
                   "relative_cut": float(cut_r), "absolute_mu": mu_a, "absolute_beta": beta_a,
                   "absolute_cut": float(cut_a)}
        else:  # degenerate (almost every vector identical): only identical vectors are copies
            law = {"cut": "identical only (degenerate: no spread of genuine distances)"}
            threshold_sim = 1.0 - IDENTICAL_DISTANCE
    rows, nb, edge_score = (np.concatenate(part) for part in zip(*map_row_blocks(
        _duplicate_edges, n, (graph.sims, graph.indices, np.arange(n, dtype=np.int64)), (law, n), client=client)))
    law = {key: round(value, 4) if isinstance(value, float) else value for key, value in law.items()
           if key != "absolute_cut"}

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
    stats = {**law, "threshold_sim": round(threshold_sim, 6), "n_edges": len(rows),
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
    nearest_other : (n,) int64, the label of the most similar neighbour carrying another label
        (-1 if none); nearest_other_sim : (n,) float32, that neighbour's cosine (-inf if none)
    core : (n,) bool, the row is in its label's core: the largest group of the label's rows
        joined by mutual kNN edges (each in the other's list) that are likely the same person
        (calibrated P ≥ 1/2), when that group has at least two photos (a row and its
        near-duplicate copies count once). A small identity whose
        images are each other's nearest neighbours is its own core; strangers or flips filed
        under a label sit outside it.
    pairs : :class:`LabelPairs`, label pairs tested as one person under two names
    nearest_photos_score : (n,) float32, the kNN mislabel score b / (b + g + 1) with each
        of the two labels (``best_other`` and the row's own) counted on its
        :data:`NEAREST_PHOTOS` nearest photos in the row's list only (None if not computed)
    label_chance : (n,) float32, how often a label unrelated to the image would have one of
        its images as near as the row's own label does: 1 − (1 − q)^(r + 1) for the rank r of
        the first neighbour in the row's label's core (copies of the row not counted), q =
        (n_label − 1) / (n − 1) the chance that a random other row carries it; 1 where no
        neighbour in the list does. A hard photo whose nearest face is of its own label gets a
        small value however low the similarity; a stranger filed under a random label does
        not, but by chance.
    """

    given_support: np.ndarray
    best_other: np.ndarray
    other_support: np.ndarray
    none_prob: np.ndarray
    reliability: np.ndarray
    n_votes: np.ndarray
    nearest_other: np.ndarray | None = None
    nearest_other_sim: np.ndarray | None = None
    core: np.ndarray | None = None
    pairs: LabelPairs | None = None
    label_chance: np.ndarray | None = None
    nearest_photos_score: np.ndarray | None = None


@dataclass(frozen=True)
class LabelPairs:
    """Label pairs joined by likely-same-person kNN edges, with how well the pair passes for
    one person (:func:`label_pairs`); arrays of shape (n_pairs,).

    a, b : int64 label codes, a < b, sorted by (a, b)
    score : float32 in [0, 1], the one-person consistency: min(R_a, R_b, W_a, W_b)
    cross_share_a, cross_share_b : float32, share of each label's same-person mass that
        reaches the other label
    """

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    cross_share_a: np.ndarray
    cross_share_b: np.ndarray

    def lookup(self, a: int, b: int) -> int:
        """Index of the pair (a, b) in either order, -1 when the labels share no edge."""
        lo, hi = min(a, b), max(a, b)
        # pairs are sorted by (a, b): two binary searches
        start, stop = np.searchsorted(self.a, lo, "left"), np.searchsorted(self.a, lo, "right")
        j = start + np.searchsorted(self.b[start:stop], hi)
        return int(j) if j < stop and self.b[j] == hi else -1


def label_pairs(graph: KnnGraph, labels: np.ndarray, p_same: np.ndarray, n_labels: int) -> LabelPairs:
    """Test every pair of labels joined by kNN edges as one person under two names.

    Every undirected kNN edge carries its calibrated P(same person) (``p_same``, shape of
    ``graph.indices``, 0 for edges that must not count, such as copies of one photo); a
    label's mass M_L is the sum over its images of those weights. If labels A and B were one
    person of n = n_A + n_B images, an image's same-person mass would spread over the other
    n − 1 images alike: A would send a share e_A = n_B / (n − 1) of its mass to B and keep
    (n_A − 1) / (n − 1) inside A. With R_A = min(1, observed / expected share to B) and W_A the
    same for the share kept inside A (1 for a one-image label), the score is
    min(R_A, R_B, W_A, W_B): near 1 for a split identity whatever its halves' sizes (one image
    included); near 0 for two people (little cross mass) and for a label holding a stranger
    who happens to be B's person (its own images do not hold together). The expected shares
    are the label sizes', so the bar adapts to every pair; no cosine enters but through the
    calibration.
    """
    labels = np.asarray(labels, dtype=np.int64)
    # each undirected edge once at the larger of its two directions' weights, summed per label
    # (mass, inside) and per label pair by a compiled pass over the lists: no n × n matrix
    # (at 1M rows the sparse symmetric maximum and products took 6 s and 1.5 GB)
    indices = np.ascontiguousarray(graph.indices)
    weights = np.ascontiguousarray(p_same, dtype=np.float64)
    # room for every listed entry between two labels (an edge listed both ways is kept once)
    bound = int((labels[:, None] != labels[np.maximum(indices, 0)])[indices >= 0].sum())
    mass, inside, lo, hi, val = _label_sums(indices, weights, labels, n_labels, bound)
    key = lo.astype(np.int64) * n_labels + hi
    del lo, hi
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, dtype=np.int64)
    cross = np.add.reduceat(val[order], first) if len(key) else np.zeros(0)
    a, b = key[first] // n_labels, key[first] % n_labels
    sizes = np.bincount(labels, minlength=n_labels).astype(np.float64)
    others = np.maximum(sizes[a] + sizes[b] - 1.0, 1.0)

    def ratio(observed, expected):
        return np.minimum(1.0, observed / np.maximum(expected, 1e-12))

    share_a = cross / np.maximum(mass[a], 1e-12)
    share_b = cross / np.maximum(mass[b], 1e-12)
    within_a = np.where(sizes[a] >= 2, ratio(inside[a] / np.maximum(mass[a], 1e-12), (sizes[a] - 1) / others), 1.0)
    within_b = np.where(sizes[b] >= 2, ratio(inside[b] / np.maximum(mass[b], 1e-12), (sizes[b] - 1) / others), 1.0)
    score = np.minimum.reduce([ratio(share_a, sizes[b] / others), ratio(share_b, sizes[a] / others), within_a, within_b])
    return LabelPairs(a=a, b=b, score=score.astype(np.float32), cross_share_a=share_a.astype(np.float32),
                      cross_share_b=share_b.astype(np.float32))


@njit(cache=True, nogil=True, inline="always")
def _pair_weight(indices, weights, i, c):  # pragma: no cover - compiled
    """The weight of the undirected edge behind entry (i, c), or -1 when the edge is counted
    from its other end (listed both ways, and i is the larger row): the larger of the two
    directions' weights where j lists i too."""
    j = indices[i, c]
    v = weights[i, c]
    for d in range(indices.shape[1]):
        if indices[j, d] == i:
            if i > j:
                return -1.0
            return max(v, weights[j, d])
    return v


@njit(cache=True, nogil=True)
def _label_sums(indices, weights, labels, n_labels, bound):  # pragma: no cover - compiled
    """Per label the weight of its edges (mass, an edge inside counting at both ends) and
    inside it (twice, both directions), and one (lo, hi, weight) per edge of positive weight
    between labels (at most ``bound`` of them)."""
    mass = np.zeros(n_labels)
    inside = np.zeros(n_labels)
    lo = np.empty(bound, dtype=np.int32)
    hi = np.empty(bound, dtype=np.int32)
    val = np.empty(bound)
    m = 0
    for i in range(indices.shape[0]):
        for c in range(indices.shape[1]):
            j = indices[i, c]
            if j < 0:
                continue
            v = _pair_weight(indices, weights, i, c)
            if not v > 0:
                continue
            la, lb = labels[i], labels[j]
            mass[la] += v
            mass[lb] += v
            if la == lb:
                inside[la] += 2.0 * v
            else:
                lo[m], hi[m], val[m] = min(la, lb), max(la, lb), v
                m += 1
    return mass, inside, lo[:m], hi[:m], val[:m]


# A label's vote counted on its nearest photos only (LabelAgreement.nearest_photos_score). A big
# identity's further photos in a row's list repeat one comparison between two people (a
# look-alike is at the same remove from all of them), so summed they outvote a small label's
# two or three close photos: on dlib's long-tailed protocol draws such clean rows of small
# labels beside a 20-photo look-alike were found as mislabeled, and the small label's rows
# lost their reliability. Swept on the 30 protocol sets (docs/benchmarks.md): 3 to 6 lift noise
# found F1 and cut clean rows lost on the dlib sets, 10 on the long-tailed and synthetic ones only;
# smaller counts trade kept-label precision on the plain and synthetic dlib sets.
NEAREST_PHOTOS = 4


def _nearest_photos_score(nb_labels: np.ndarray, weights: np.ndarray, labels: np.ndarray,
                          best: np.ndarray) -> np.ndarray:
    """b / (b + g + 1) with the mass of ``best`` (b) and of the row's own label (g) each summed
    over that label's first :data:`NEAREST_PHOTOS` voting neighbours (the list is nearest first;
    a compiled walk over each row's list, :func:`_first_photos_mass`)."""
    b, g = _first_photos_mass(np.ascontiguousarray(nb_labels, dtype=np.int64),
                              np.ascontiguousarray(weights, dtype=np.float64),
                              np.ascontiguousarray(labels, dtype=np.int64),
                              np.ascontiguousarray(best, dtype=np.int64), NEAREST_PHOTOS)
    return b / (b + g + 1.0)


@njit(cache=True, nogil=True)
def _first_photos_mass(nb_labels, weights, labels, best, cap):  # pragma: no cover - compiled
    """Per row: the summed weight of the first ``cap`` positive-weight neighbours carrying
    ``best`` (0 where best is -1), and of those carrying the row's own label."""
    n, k = nb_labels.shape
    b = np.zeros(n)
    g = np.zeros(n)
    for i in range(n):
        nb_, ng = 0, 0
        for c in range(k):
            w = weights[i, c]
            if not w > 0:
                continue
            lab = nb_labels[i, c]
            if lab == best[i] and best[i] >= 0 and nb_ < cap:
                b[i] += w
                nb_ += 1
            elif lab == labels[i] and ng < cap:
                g[i] += w
                ng += 1
    return b, g


def _own_mass(nb_labels: np.ndarray, weights: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, the weight of the neighbours carrying the row's own label."""
    return np.where(nb_labels == labels[:, None], weights, 0.0).sum(axis=1)


def _label_votes(nb_labels: np.ndarray, weights: np.ndarray, labels: np.ndarray):
    """Own-label mass, and the best other label and its mass, per row (ties: the smaller
    label code). The other labels' masses are summed per row in neighbour order by a compiled
    kernel (:func:`_best_other`; a row has at most k labels)."""
    given = _own_mass(nb_labels, weights, labels)
    best, best_mass = _best_other(np.ascontiguousarray(nb_labels, dtype=np.int64),
                                  np.ascontiguousarray(weights, dtype=np.float64), labels.astype(np.int64, copy=False))
    return given, best, best_mass


@njit(cache=True, nogil=True)
def _best_other(nb_labels, weights, labels):  # pragma: no cover - compiled
    """Per row: the label other than its own with the largest sum of positive weights, in
    neighbour order (ties: the smaller label code; -1 and 0 when there is none)."""
    n, k = nb_labels.shape
    best = np.full(n, -1, dtype=np.int64)
    best_mass = np.zeros(n)
    seen = np.empty(k, dtype=np.int64)
    mass = np.empty(k)
    for i in range(n):
        m = 0
        for c in range(k):
            lab = nb_labels[i, c]
            w = weights[i, c]
            if lab == labels[i] or not w > 0:
                continue
            at = -1
            for t in range(m):
                if seen[t] == lab:
                    at = t
                    break
            if at < 0:
                seen[m] = lab
                mass[m] = 0.0
                at = m
                m += 1
            mass[at] += w
        for t in range(m):
            if mass[t] > best_mass[i] or (mass[t] == best_mass[i] and seen[t] < best[i]) or best[i] < 0:
                best[i] = seen[t]
                best_mass[i] = mass[t]
    return best, best_mass


def _edge_weights(indices, sims, groups, all_groups, calibration):
    """One block of rows: P(same person) of every edge, the vote weights (that P, 0 for
    copies of the row and missing neighbours) and whether each neighbour is a copy."""
    valid = indices >= 0
    nb_safe = np.where(valid, indices, 0)
    p_same = calibration(sims)
    p = np.where(valid, p_same, 0.0).astype(np.float64, copy=False)
    same_dup = (groups[:, None] >= 0) & (all_groups[nb_safe] == groups[:, None])
    return p_same, np.where(same_dup, 0.0, p), same_dup


def _first_pass(indices, sims, labels, groups, all_labels, all_groups, calibration):
    """Pass 1 of :func:`knn_label_agreement` on one block of rows: P(same person) of every
    edge, the vote weights (0 for copies of the row and missing neighbours), whether each
    neighbour is a copy, and each row's reliability."""
    p_same, p, same_dup = _edge_weights(indices, sims, groups, all_groups, calibration)
    given1 = _own_mass(all_labels[np.where(indices >= 0, indices, 0)], p, labels)
    return p_same, p, same_dup, given1 / (p.sum(axis=1) + 1.0)


def label_pairs_of(graph: KnnGraph, labels: np.ndarray, calibration: Calibration, dup_group: np.ndarray,
                   n_labels: int) -> LabelPairs:
    """:func:`label_pairs` for another labelling of the same graph, with the vote stage's
    edge weights (calibrated P(same person), copies of a row not counted), recomputed block
    by block: how the findings test merges on the rows that stay under each label."""
    weights = np.empty(graph.indices.shape)

    def fill(start, stop, block):
        weights[start:stop] = block[1]

    map_row_blocks(_edge_weights, graph.n_samples, (graph.indices, graph.sims, dup_group), (dup_group, calibration),
                   consume=fill)
    return label_pairs(graph, np.asarray(labels, dtype=np.int64), weights, n_labels)


def _second_pass(indices, p, labels, all_labels, reliability):
    """Pass 2 of :func:`knn_label_agreement` on one block of rows: votes weighted by
    P(same person) times the neighbour's reliability; the own-label mass, the best other label
    and its mass, and the chance that no neighbour is the same person."""
    nb_safe = np.where(indices >= 0, indices, 0)
    w = p * reliability[nb_safe]
    nb_labels = all_labels[nb_safe]
    given, best, best_mass = _label_votes(nb_labels, w, labels)
    nearest = _nearest_photos_score(nb_labels, w, labels, best)
    np.clip(w, 0.0, 1.0, out=w)
    np.subtract(1.0, w, out=w)
    return given, best, best_mass, np.prod(w, axis=1), nearest


def knn_label_agreement(graph: KnnGraph, labels: np.ndarray, calibration: Calibration,
                        *, dup_group: np.ndarray | None = None, n_labels: int | None = None,
                        client=None) -> LabelAgreement:
    """Two-pass, reliability-weighted label vote over each sample's kNN.

    Pass 1: each neighbour j votes for its label with weight p_ij = P(same identity | s_ij).
    A sample's reliability is a_i = g_i / (T_i + 1), its own-label mass over all its vote mass
    plus one pseudo-vote. Pass 2: votes are weighted by p_ij·a_j, so neighbours whose own
    labels are unsupported (open-set images, other flips) do not vouch for anything. Near
    duplicates of a sample do not vote for it: a copy is not independent evidence.

    Both passes run block by block (:func:`facecluster.blocks.map_row_blocks`), on the
    workers of a Dask ``client`` when given; the label cores (connected components) and the
    label pairs (a label × label sum over every edge) need the whole graph and run here.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    n_labels = int(n_labels if n_labels is not None else labels.max() + 1)
    nb = graph.indices
    valid = nb >= 0
    nb_safe = np.where(valid, nb, 0)
    groups = dup_group if dup_group is not None else np.full(n, -1, dtype=np.int64)
    # pass 1 block by block (P(same person) of every edge, copies' votes removed, the
    # reliabilities), then pass 2 with every row's reliability at hand
    first_pass = map_row_blocks(_first_pass, n, (graph.indices, graph.sims, labels, groups),
                                (labels, groups, calibration), client=client)
    p_same, p, same_dup, reliability = (np.concatenate(part) for part in zip(*first_pass))
    del first_pass
    given, best, best_mass, none_prob, nearest = (np.concatenate(part) for part in zip(*map_row_blocks(
        _second_pass, n, (graph.indices, p, labels), (labels, reliability), client=client)))
    nb_labels = labels[nb_safe]
    # neighbours come most similar first: the first one with another label is the nearest
    other = valid & (nb_labels != labels[:, None])
    first = np.argmax(other, axis=1)
    has = other.any(axis=1)
    rows = np.arange(len(labels))
    core = _label_cores(graph, labels, valid & ~other & (p_same >= 0.5), groups)
    del p_same
    pairs = label_pairs(graph, labels, p, n_labels)  # p is 0 where no neighbour is
    # only images of the label's core count: two flips of one person into one label would
    # otherwise vouch for each other
    own = valid & ~other & ~same_dup & core[nb_safe]
    size = np.bincount(labels, minlength=n_labels)[labels].astype(np.float64)
    q = (size - 1.0) / max(len(labels) - 1, 1)
    rank = np.argmax(own, axis=1)
    chance = np.where(own.any(axis=1), -np.expm1((rank + 1) * np.log1p(-np.minimum(q, 1 - 1e-12))), 1.0)
    return LabelAgreement(
        given_support=given.astype(np.float32),
        best_other=best,
        other_support=best_mass.astype(np.float32),
        none_prob=none_prob.astype(np.float32),
        reliability=reliability.astype(np.float32),
        n_votes=(p > 0).sum(axis=1).astype(np.int32),
        nearest_other=np.where(has, nb_labels[rows, first], -1).astype(np.int64),
        nearest_other_sim=np.where(has, graph.sims[rows, first], -np.inf).astype(np.float32),
        core=core,
        pairs=pairs,
        label_chance=chance.astype(np.float32),
        nearest_photos_score=nearest.astype(np.float32),
    )


def _label_cores(graph: KnnGraph, labels: np.ndarray, likely_same: np.ndarray,
                 dup_group: np.ndarray | None = None) -> np.ndarray:
    """Rows in their label's largest group of mutual, likely-same-person kNN edges (size ≥ 2).

    A group's size counts photos, not rows: a row and its near-duplicate copies (one
    ``dup_group``, -1 for none) count once. A copy is not a second observation of a person, so
    a stranger filed with its own copy is not a core of two that outvotes the label's real
    images (on the long-tailed real sets such pairs had sent a label's clean images out as
    outliers)."""
    n = graph.n_samples
    r, c = np.nonzero(likely_same)
    directed = sp.csr_matrix((np.ones(len(r)), (r, graph.indices[r, c])), shape=(n, n))
    mutual = directed.multiply(directed.T)
    n_comp, comp = connected_components(mutual, directed=False)
    if dup_group is None:
        size = np.bincount(comp)[comp]
    else:
        groups = np.asarray(dup_group, dtype=np.int64)
        # a row's photo: its group (ids shifted past every row), or the row itself
        photo = np.where(groups >= 0, n + groups, np.arange(n))
        pairs = np.unique(np.stack([comp, photo], axis=1), axis=0)
        size = np.bincount(pairs[:, 0], minlength=n_comp)[comp]
    # per label, the largest component (ties: the one met first)
    order = np.lexsort((np.arange(n), -size, labels))
    first = np.r_[True, labels[order][1:] != labels[order][:-1]]
    best = np.empty(int(labels.max()) + 1, dtype=np.int64)
    best[labels[order][first]] = comp[order][first]
    return (comp == best[labels]) & (size >= 2)


def vote_stage(graph: KnnGraph, labels: np.ndarray, calibration: Calibration, *,
               n_labels: int | None = None, client=None) -> tuple[NearDuplicates, LabelAgreement]:
    """The stage as ``clean`` runs it: near-duplicate groups first (copies of a sample do not
    vote for it), then the two-pass label votes; the per-row work on the workers of a Dask
    ``client`` when given (same result)."""
    duplicates = near_duplicate_groups(graph, client=client)
    agreement = knn_label_agreement(graph, labels, calibration, dup_group=duplicates.group, n_labels=n_labels,
                                    client=client)
    return duplicates, agreement
