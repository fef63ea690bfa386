"""Correlation clustering on a calibrated signed kNN graph.

Each kNN edge gets a weight: the log-odds that its two faces are the same person given their
cosine, calibrated on the set's own labelled kNN pairs (or on a two-component mixture of the
similarities when there are no labels), plus a ``bias`` towards merging (> 0) or splitting
(< 0). Correlation clustering then looks for the partition with the least total weight of
disagreements: positive edges cut plus negative edges kept inside a cluster. It needs no
number of clusters.

Solver: greedy additive edge contraction (GAEC: contract the most positive edge, summing
parallel edges, until no edge is positive; Keuper et al., ICCV 2015) with a heap over the
sparse adjacency, then Kernighan–Lin-style local moves: a node moves to the neighbouring
cluster (or to a cluster of its own) that lowers the objective most, and clusters whose edges
between them sum positive are joined, until nothing improves. A Pivot (KwikCluster; Ailon,
Charikar & Newman, 2008) solution refined the same way is also computed and the better of the
two kept, per component of the positive-edge graph, so the result is never worse than the
Pivot baseline on the same graph. No optimal partition joins nodes with no positive path
between them, so components are solved independently; thousands of them are small, and they
are solved in batches of whole components, each batch in one pass of every kernel (threads
over batches; the numba kernels release the GIL).
"""

from __future__ import annotations

import heapq
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numba import njit
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClusterMixin

from .calibration import (
    Calibration,
    fit_calibration,
    fit_pair_calibration,
    nearest_by_label,
)
from .knn import KnnGraph, build_knn_graph, check_graph, smoothed_graph
from .partition import (
    Partition,
    agreement_report,
    label_codes,
    relabel_by_first,
)

# --------------------------------------------------------------------------- signed graph


@dataclass(frozen=True)
class SignedGraph:
    """Undirected signed graph: edge (a[i], b[i]) with weight w[i] (> 0: same person).

    ``u`` (optional, per node, all <= 0) weighs the pairs that carry no edge: the pair (i, j)
    without an edge counts (u[i] + u[j]) / 2. None means those pairs are neutral (0), the
    classic sparse formulation. ``kth`` keeps the unshifted log-odds at each node's k-th
    neighbour so that :meth:`with_bias` can shift ``u`` consistently with ``w``.
    """

    n: int
    a: np.ndarray
    b: np.ndarray
    w: np.ndarray
    info: dict = field(default_factory=dict)
    u: np.ndarray | None = None
    kth: np.ndarray | None = None

    def with_bias(self, bias: float) -> SignedGraph:
        """The same graph with every log-odds shifted by ``bias`` (relative to the current one)."""
        total = float(self.info.get("bias", 0.0)) + bias
        u = None if self.kth is None else np.minimum(self.kth + total, 0.0)
        return SignedGraph(self.n, self.a, self.b, self.w + bias, dict(self.info, bias=total), u, self.kth)


def signed_graph(graph: KnnGraph, labels: np.ndarray | None = None, *, calibration: Calibration | None = None,
                 bias: float = 0.0, non_edges: str = "bound", shared_neighbours: bool = False,
                 rng: np.random.Generator | None = None) -> SignedGraph:
    """Edge weights = log-odds of "same person" given the cosine, plus ``bias``.

    The log-odds come from the run's shared calibration (:mod:`facecluster.calibration`):
    isotonic regression of "same label" on cosine over the labelled kNN pairs, or, without
    labels, a two-component Gaussian mixture of the similarities. When ``calibration`` is
    not given it is fitted here from ``labels`` (or the mixture when ``labels`` is None),
    with ``rng``. Probabilities are clipped to [eps, 1 − eps] (``Calibration.eps``), so
    weights stay finite. A graph with fewer than two edges has nothing to calibrate on: its
    edges are neutral (0) before the bias.

    Pairs without an edge (``non_edges``): a kNN graph leaves out every pair that is not in
    either's neighbour list, and treating those pairs as neutral lets two people merge on a
    handful of confident edges, since nothing in the objective resists it. What the graph
    does say about such a pair is that its similarity is below both faces' k-th neighbour
    similarity. ``"bound"`` (default) scores it at that bound: u[i] = min(0, log-odds at the
    k-th neighbour's similarity of i), the pair counting (u[i] + u[j]) / 2, the most generous
    value the graph allows, capped at neutral. A face whose k-th neighbour is still clearly
    the same person (an identity larger than k) gets u ≈ 0, so large identities are not cut
    apart; a face whose k-th neighbour is already another person makes merging its cluster
    with a loosely linked one cost what it should. ``"neutral"``: the classic sparse objective.

    ``shared_neighbours`` adds the evidence of how many kNN neighbours an edge's
    two faces share (:func:`shared_neighbour_log_odds`): two photos of one person sit in the
    same crowd, two look-alikes of different people each in their own. On real face sets the
    cosine alone joins look-alike identities (dlib's compressed cosines most of all).
    """
    if non_edges not in ("bound", "neutral"):
        raise ValueError(f"non_edges must be 'bound' or 'neutral', not {non_edges!r}")
    a, b, s = graph.edges()
    info: dict = {"bias": float(bias), "n_edges": len(s), "non_edges": non_edges}
    if len(s) < 2:
        info.update(calibration="none: fewer than two edges", positive_edges=int(bias > 0) * len(s))
        return SignedGraph(graph.n_samples, a, b, np.full(len(s), float(bias)), info)
    if calibration is None:
        calibration = fit_calibration(graph, labels, rng=rng)
    logit = calibration.log_odds(s)
    info.update(calibration=calibration.kind, calibration_pairs=calibration.n_pairs)
    w = logit + bias
    if shared_neighbours:
        evidence, info["shared_neighbours"] = shared_neighbour_log_odds(graph, a, b, labels, rng=rng)
        w = w + evidence
    info["positive_edges"] = int((w > 0).sum())
    if non_edges == "neutral":
        return SignedGraph(graph.n_samples, a, b, w, info)
    # log-odds at each node's k-th neighbour similarity (the last valid one)
    valid = graph.indices >= 0
    last = np.where(valid.any(axis=1), valid.sum(axis=1) - 1, 0)
    s_k = graph.sims[np.arange(graph.n_samples), last].astype(np.float64)
    s_k = np.where(valid.any(axis=1), s_k, -1.0)
    # the curve read at each k-th similarity (clipped to the edges' range, as the curve over the
    # edges is): n values, not a sort of every edge
    kth = calibration.log_odds(np.clip(s_k, s.min(), s.max()))
    u = np.minimum(kth + bias, 0.0)
    info["non_edge_weight_median"] = float(np.median(u))
    return SignedGraph(graph.n_samples, a, b, w, info, u, kth)


@njit(cache=True, nogil=True)
def _shared_counts(closed, a, b):  # pragma: no cover - compiled
    """|N̄(a) ∩ N̄(b)| per edge, N̄ the closed neighbourhood (sorted rows of ``closed``; -1 = none)."""
    out = np.zeros(len(a), dtype=np.int32)
    width = closed.shape[1]
    for e in range(len(a)):
        p = q = 0
        ra, rb = closed[a[e]], closed[b[e]]
        count = 0
        while p < width and q < width:
            u, v = ra[p], rb[q]
            if u < 0:
                p += 1
            elif v < 0:
                q += 1
            elif u == v:
                count += 1
                p += 1
                q += 1
            elif u < v:
                p += 1
            else:
                q += 1
        out[e] = count
    return out


def shared_neighbour_log_odds(graph: KnnGraph, a: np.ndarray, b: np.ndarray, labels: np.ndarray | None = None, *,
                              rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict]:
    """Per edge (a, b): the log-odds of one person that the neighbours the two faces share add
    to what was known before, and a summary for the report.

    The observation is the share of the closed kNN neighbourhoods (each face and its k
    neighbours) the two have in common, |N̄(a) ∩ N̄(b)| / (k + 1), on a logit scale. It is
    calibrated on the graph's own edges exactly as the cosine is (:func:`fit_pair_calibration`:
    with labels the isotonic curve with the label-noise model, without labels a two-component
    mixture), and enters as logit P(same | overlap) − logit P(same), the prior over the edges
    taken out, so that adding it to the cosine's log-odds is the naive-Bayes combination of the
    two observations. Nothing is fixed: a set whose overlaps say nothing gets a flat curve and
    adds nothing. Rank-based, so it reads the same in centred and offset geometries.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    n, k = graph.indices.shape
    closed = np.concatenate([np.arange(n, dtype=np.int32)[:, None], graph.indices.astype(np.int32, copy=False)], axis=1)
    closed.sort(axis=1)  # int32: 4·N·(k+1) bytes
    share = _shared_counts(closed, np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)) / (k + 1.0)
    half = 0.5 / (k + 1.0)
    clipped = np.clip(share, half, 1.0 - half)
    feature = np.log(clipped) - np.log1p(-clipped)
    calibration = fit_pair_calibration(a, b, feature, labels, rng=rng)
    if calibration.kind == "constant":
        return np.zeros(len(a)), {"calibration": "constant: every edge shares as many neighbours"}
    p = np.clip(calibration(feature).astype(np.float64), calibration.eps, 1 - calibration.eps)
    prior = float(np.clip(p.mean(), calibration.eps, 1 - calibration.eps))
    evidence = np.log(p) - np.log1p(-p) - (np.log(prior) - np.log1p(-prior))
    summary = {"calibration": calibration.kind, "share_median": round(float(np.median(share)), 4),
               "prior": round(prior, 4), "log_odds_quantiles": {f"{q:.2f}": round(float(v), 3) for q, v in
                                                                zip((0.05, 0.5, 0.95), np.quantile(evidence, [0.05, 0.5, 0.95]))}}
    return evidence, summary


def objective(a: np.ndarray, b: np.ndarray, w: np.ndarray, labels: np.ndarray, u: np.ndarray | None = None) -> float:
    """Total weight of disagreements: positive edges cut plus |negative| pairs not cut.

    With ``u`` the pairs without an edge count too: (u[i] + u[j]) / 2 each, all <= 0, so they
    disagree only when kept inside a cluster.
    """
    return float(_per_component(np.zeros(len(labels), dtype=np.int64), 1, a, b, w, labels, u)[0])


# --------------------------------------------------------------------------- kernels (numba)


@njit(cache=True, nogil=True)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


# --------------------------------------------------------------------------- pair table (numba)
# GAEC's adjacency without a dictionary per node: one open-addressing table of the live pairs
# (key lo * n + hi, lo < hi), each with its weight and its place in both ends' neighbour
# lists; the lists are exact (swap-removal), so a node's degree is its list's length.

_EMPTY = -1
_GONE = -2  # a deleted slot (tombstone): probing goes on past it


@njit(cache=True, nogil=True, inline="always")
def _home(key, bits):  # pragma: no cover - compiled
    return np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits))


@njit(cache=True, nogil=True)
def _slot_of(keys, key, bits):  # pragma: no cover - compiled
    """The slot holding ``key``, or -1."""
    mask = (1 << bits) - 1
    s = _home(key, bits)
    while True:
        k = keys[s]
        if k == key:
            return s
        if k == _EMPTY:
            return -1
        s = (s + 1) & mask


@njit(cache=True, nogil=True)
def _free_slot(keys, key, bits):  # pragma: no cover - compiled
    """Where ``key`` (not in the table) goes: the first deleted or empty slot on its probe path."""
    mask = (1 << bits) - 1
    s = _home(key, bits)
    while keys[s] >= 0:
        s = (s + 1) & mask
    return s


@njit(cache=True, nogil=True)
def _pair_table(n, a, b, x, bits):  # pragma: no cover - compiled
    """The live pairs of the edges (parallel edges summed in edge order; self-loops left out)
    in a table of 2**bits slots; returns keys, weights and the number of pairs."""
    keys = np.full(1 << bits, _EMPTY, dtype=np.int64)
    val = np.zeros(1 << bits)
    pairs = 0
    for e in range(len(a)):
        if a[e] == b[e]:
            continue
        key = min(a[e], b[e]) * n + max(a[e], b[e])
        s = _slot_of(keys, key, bits)
        if s < 0:
            s = _free_slot(keys, key, bits)
            keys[s] = key
            pairs += 1
        val[s] += x[e]
    return keys, val, pairs


@njit(cache=True, nogil=True)
def _rehash(keys, val, plo, phi, bits):  # pragma: no cover - compiled
    """The live slots moved into a fresh table of 2**bits slots (no deleted ones left)."""
    nk = np.full(1 << bits, _EMPTY, dtype=np.int64)
    nv = np.zeros(1 << bits)
    nlo = np.zeros(1 << bits, dtype=np.int64)
    nhi = np.zeros(1 << bits, dtype=np.int64)
    for s in range(len(keys)):
        if keys[s] >= 0:
            t = _free_slot(nk, keys[s], bits)
            nk[t], nv[t], nlo[t], nhi[t] = keys[s], val[s], plo[s], phi[s]
    return nk, nv, nlo, nhi


@njit(cache=True, nogil=True)
def _swap_remove(nb, st, ln, keys, plo, phi, bits, n, y, p):  # pragma: no cover - compiled
    """Remove the entry at position ``p`` of node ``y``'s neighbour list: the last entry takes
    its place, and its pair's record of where it sits in ``y``'s list follows."""
    last = ln[y] - 1
    if p != last:
        w = nb[st[y] + last]
        nb[st[y] + p] = w
        s = _slot_of(keys, min(y, w) * n + max(y, w), bits)
        if y < w:
            plo[s] = p
        else:
            phi[s] = p
    ln[y] = last


@njit(cache=True, nogil=True)
def _gaec(n, a, b, x, size, usum):
    """Greedy additive edge contraction; returns a root id per node.

    ``x`` is each edge's weight less its non-edge share, (u_a + u_b) / 2; ``size`` and ``usum``
    are the node sizes and sums of u (nodes may be clusters). Joining A and B gains
    X(A, B) + (|B|·U(A) + |A|·U(B)) / 2: the edges between them plus every pair between them
    without an edge. With u = 0 this is plain GAEC. Heap entries are checked against the
    current gain when popped, so stale ones are skipped. Of a contracted pair, the node with
    more neighbours is kept; a tie of gains goes to the pair with the smaller ids.

    With u <= 0 (as the solver passes it), a join only lowers the gains around the joined
    node, except along the pairs whose weights it adds, which are pushed anew. So an entry
    left in the heap is an upper bound on its pair's gain: when popped with a gain that has
    fallen, it goes back with the gain as it is now (lazy greedy). The top entry whose gain
    is current is then the best pair, the same pair as pushing every changed gain at every
    join (which is done when some u > 0), at a fraction of the heap's work.

    The adjacency is one table of the live pairs (:func:`_pair_table`) and an exact neighbour
    list per node; a contraction moves the smaller list's pairs onto the kept node, summing
    the two weights where both had the neighbour.
    """
    size = size.copy()
    usum = usum.copy()
    lifted = False
    falling = True  # u <= 0: a join only lowers the gains around it (but where weights add)
    for i in range(n):
        if usum[i] != 0.0:
            lifted = True
        if usum[i] > 0.0:
            falling = False
    bits = 4
    while (1 << bits) < 2 * len(a) + 16:
        bits += 1
    keys, val, live = _pair_table(n, a, b, x, bits)
    used = live  # live and deleted slots: probing stops only at an empty one
    cap = len(keys)
    plo = np.zeros(cap, dtype=np.int64)
    phi = np.zeros(cap, dtype=np.int64)
    # exact neighbour lists in one pool, room to grow at its end
    ln = np.zeros(n, dtype=np.int64)
    for s in range(cap):
        if keys[s] >= 0:
            ln[keys[s] // n] += 1
            ln[keys[s] % n] += 1
    st = np.zeros(n, dtype=np.int64)
    room = ln.copy()
    for u in range(1, n):
        st[u] = st[u - 1] + room[u - 1]
    top = st[n - 1] + room[n - 1] if n else 0
    nb = np.empty(max(2 * top, 16), dtype=np.int64)
    ln[:] = 0
    heap = [(0.0, np.int64(0), np.int64(0))]
    heap.pop()
    for s in range(cap):
        key = keys[s]
        if key >= 0:
            lo, hi = key // n, key % n
            plo[s], phi[s] = ln[lo], ln[hi]
            nb[st[lo] + ln[lo]] = hi
            nb[st[hi] + ln[hi]] = lo
            ln[lo] += 1
            ln[hi] += 1
            g = val[s] + (size[hi] * usum[lo] + size[lo] * usum[hi]) / 2
            if g > 0:
                heapq.heappush(heap, (-g, lo, hi))
    parent = np.arange(n)
    while len(heap):
        negg, u, v = heapq.heappop(heap)
        if parent[u] != u or parent[v] != v:
            continue
        s = _slot_of(keys, u * n + v, bits)
        if s < 0:
            continue
        g = val[s] + (size[v] * usum[u] + size[u] * usum[v]) / 2
        if g != -negg or g <= 0:
            if lifted and falling and g > 0:
                # the entry was an upper bound: it goes back with the gain as it is now
                heapq.heappush(heap, (-g, u, v))
            continue
        keep, gone = (u, v) if ln[u] >= ln[v] else (v, u)
        # room for the pairs the contraction may add (each replaces one it deletes)
        if used + ln[gone] > (cap * 3) // 4:
            while (1 << bits) < 2 * (live + ln[gone]) + 16:
                bits += 1
            keys, val, plo, phi = _rehash(keys, val, plo, phi, bits)
            cap = len(keys)
            used = live
            s = _slot_of(keys, u * n + v, bits)
        parent[gone] = keep
        size[keep] += size[gone]
        usum[keep] += usum[gone]
        _swap_remove(nb, st, ln, keys, plo, phi, bits, n, keep, plo[s] if keep == u else phi[s])
        keys[s] = _GONE
        live -= 1
        for i in range(ln[gone]):
            y = nb[st[gone] + i]
            if y == keep:
                continue
            s = _slot_of(keys, min(gone, y) * n + max(gone, y), bits)
            xy = val[s]
            py = plo[s] if y < gone else phi[s]  # where gone sits in y's list
            keys[s] = _GONE
            live -= 1
            t = _slot_of(keys, min(keep, y) * n + max(keep, y), bits)
            if t >= 0:
                nx = val[t] + xy
                val[t] = nx
                _swap_remove(nb, st, ln, keys, plo, phi, bits, n, y, py)
            else:
                nx = 0.0 + xy
                nb[st[y] + py] = keep
                if ln[keep] == room[keep]:  # move keep's list to the pool's end, twice the room
                    grow = max(2 * room[keep], 4)
                    if top + grow > len(nb):
                        bigger = np.empty(max(2 * len(nb), top + grow), dtype=np.int64)
                        bigger[:top] = nb[:top]
                        nb = bigger
                    nb[top:top + ln[keep]] = nb[st[keep]:st[keep] + ln[keep]]
                    st[keep] = top
                    room[keep] = grow
                    top += grow
                q = ln[keep]
                nb[st[keep] + q] = y
                ln[keep] += 1
                key = min(keep, y) * n + max(keep, y)
                t = _free_slot(keys, key, bits)
                if keys[t] == _EMPTY:
                    used += 1
                keys[t] = key
                val[t] = nx
                live += 1
                if keep < y:
                    plo[t], phi[t] = q, py
                else:
                    plo[t], phi[t] = py, q
            if not lifted or falling:
                g = nx + (size[y] * usum[keep] + size[keep] * usum[y]) / 2 if lifted else nx
                if g > 0:
                    heapq.heappush(heap, (-g, np.int64(min(keep, y)), np.int64(max(keep, y))))
        ln[gone] = 0
        if lifted and not falling:  # the size of keep changed: every gain around it changed
            for i in range(ln[keep]):
                y = nb[st[keep] + i]
                t = _slot_of(keys, min(keep, y) * n + max(keep, y), bits)
                g = val[t] + (size[y] * usum[keep] + size[keep] * usum[y]) / 2
                if g > 0:
                    heapq.heappush(heap, (-g, np.int64(min(keep, y)), np.int64(max(keep, y))))
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = _find(parent, i)
    return out


@njit(cache=True, nogil=True)
def _node_moves(n, indptr, indices, xs, u, labels, max_sweeps):
    """Move single nodes to the neighbouring cluster (or a new one) that lowers the objective.

    ``xs`` are edge weights less their non-edge share (see :func:`_gaec`); node i joining
    cluster C gains X(i, C) + (|C|·u[i] + U(C)) / 2. A cluster with no edge to i gains at most
    0, no better than a cluster of its own, so only neighbouring clusters are candidates.
    labels must be ids in [0, n). Returns the number of moves made.
    """
    size = np.zeros(n, dtype=np.int64)
    usum = np.zeros(n)
    for i in range(n):
        size[labels[i]] += 1
        usum[labels[i]] += u[i]
    free = [np.int64(0)]
    free.pop()
    for c in range(n):
        if size[c] == 0:
            free.append(np.int64(c))
    acc = np.zeros(n)
    seen = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    moves = 0
    for _ in range(max_sweeps):
        moved = 0
        for i in range(n):
            own = labels[i]
            nt = 0
            for p in range(indptr[i], indptr[i + 1]):
                c = labels[indices[p]]
                if not seen[c]:
                    seen[c] = True
                    touched[nt] = c
                    nt += 1
                acc[c] += xs[p]
            # what i gains by staying (its pairs inside its own cluster)
            w_own = acc[own] + ((size[own] - 1) * u[i] + usum[own] - u[i]) / 2
            best_c = -1
            best_gain = 1e-12
            for t in range(nt):
                c = touched[t]
                if c != own:
                    gain = acc[c] + (size[c] * u[i] + usum[c]) / 2 - w_own
                    if gain > best_gain:
                        best_gain = gain
                        best_c = c
            # a cluster of its own: gain -w_own (only when it is not alone already)
            if size[own] > 1 and -w_own > best_gain and len(free) > 0:
                best_gain = -w_own
                best_c = -2
            for t in range(nt):
                acc[touched[t]] = 0.0
                seen[touched[t]] = False
            if best_c == -1:
                continue
            if best_c == -2:
                best_c = free.pop()
            size[own] -= 1
            usum[own] -= u[i]
            if size[own] == 0:
                free.append(own)
                usum[own] = 0.0
            labels[i] = best_c
            size[best_c] += 1
            usum[best_c] += u[i]
            moved += 1
        moves += moved
        if moved == 0:
            break
    return moves


@njit(cache=True, nogil=True)
def _pivot(n, indptr, indices, weights, order):
    """KwikCluster: each unassigned pivot (in ``order``) takes its unassigned positive neighbours."""
    labels = np.full(n, -1, dtype=np.int64)
    c = 0
    for p in order:
        if labels[p] >= 0:
            continue
        labels[p] = c
        for q in range(indptr[p], indptr[p + 1]):
            j = indices[q]
            if labels[j] < 0 and weights[q] > 0:
                labels[j] = c
        c += 1
    return labels


# --------------------------------------------------------------------------- solver


def _csr(n, a, b, w):
    mat = sp.csr_matrix((np.concatenate([w, w]), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n))
    mat.sum_duplicates()
    return mat.indptr.astype(np.int64), mat.indices.astype(np.int64), mat.data.astype(np.float64)


def _contract(n, a, b, x, u, labels):
    """GAEC on the cluster graph of ``labels`` (every cluster pair whose join gains is
    contracted, greedily); the new cluster of every node.

    A join only happens along edges, and the first one needs a pair that gains: the parts of
    the cluster graph without such a pair are left as they are, unread by GAEC (the same
    result; in the refinement's later rounds that is usually every part)."""
    m = int(labels.max()) + 1
    ca, cb = labels[a], labels[b]
    keep = ca != cb
    if not keep.any():
        return labels
    ca, cb, xk = ca[keep], cb[keep], x[keep]
    size = np.bincount(labels, minlength=m).astype(np.float64)
    usum = np.bincount(labels, weights=u, minlength=m)
    lo, hi = np.minimum(ca, cb), np.maximum(ca, cb)
    pair = sp.coo_matrix((xk, (lo, hi)), shape=(m, m)).tocsr()
    pa = np.repeat(np.arange(m), np.diff(pair.indptr))
    gains = pair.data + (size[pair.indices] * usum[pa] + size[pa] * usum[pair.indices]) / 2
    # summed here in another order than GAEC sums the same edges: a gain within rounding of 0
    # counts as one (a part taken in vain costs only time; GAEC still decides)
    gaining = gains > -1e-9 * (1.0 + np.abs(pair.data) + np.abs(gains - pair.data))
    if not gaining.any():
        return labels
    n_comp, comp = connected_components(pair, directed=False)
    active = np.zeros(n_comp, dtype=bool)
    active[comp[pa[gaining]]] = True
    use = active[comp[lo]]
    joined = _gaec(m, ca[use], cb[use], xk[use], size, usum)
    return joined[labels]


def _refine(n, a, b, x, u, labels, max_rounds: int = 50, max_sweeps: int = 100):
    """Alternate node moves and joins of clusters with positive total gain until neither helps."""
    indptr, indices, xs = _csr(n, a, b, x)
    labels = relabel_by_first(labels).astype(np.int64)
    for _ in range(max_rounds):
        moves = _node_moves(n, indptr, indices, xs, u, labels, max_sweeps)
        labels = relabel_by_first(labels)
        # join clusters: GAEC on the cluster graph (contracts every cluster pair that gains)
        joined = relabel_by_first(_contract(n, a, b, x, u, labels))
        joins = int(labels.max()) - int(joined.max())
        labels = joined
        if moves == 0 and joins == 0:
            break
    return labels


def _per_component(comp, n_comp, a, b, w, labels, u) -> np.ndarray:
    """:func:`objective` of each component (``comp``: the component of every node, in
    [0, n_comp)): every edge and every cluster lies in one component, so the total splits
    into theirs."""
    cut = labels[a] != labels[b]
    per_edge = np.where(cut, np.maximum(w, 0.0), -np.minimum(w, 0.0))
    if u is not None:
        per_edge = per_edge + np.where(cut, 0.0, (u[a] + u[b]) / 2)
    value = np.bincount(comp[a], weights=per_edge, minlength=n_comp).astype(np.float64)  # float even with no edge
    if u is not None:
        ids, lab = np.unique(labels, return_inverse=True)
        size = np.bincount(lab, minlength=len(ids)).astype(np.float64)
        usum = np.bincount(lab, weights=u, minlength=len(ids))
        owner = np.empty(len(ids), dtype=np.int64)
        owner[lab] = comp
        value -= np.bincount(owner, weights=(size - 1) * usum / 2, minlength=n_comp)
    return value


def _solve_components(n, a, b, w, u, refine: bool, seed: int, comp, n_comp: int,
                      start=None) -> tuple[np.ndarray, dict]:
    """Solve a disjoint union of components in one pass of each kernel.

    No kernel lets one component touch another (no edge joins them: GAEC, the node moves and
    the cluster joins act along edges only), so each component gets what solving it alone
    gives, without a Python round trip per component (thousands of them, most of a few dozen
    nodes). The better of the refined GAEC and the refined Pivot solution is kept per
    component, by its own objective. ``comp``: (n,) the component of each node, in [0, n_comp).
    """
    x = w - (u[a] + u[b]) / 2  # edge weight less the non-edge share the cluster terms count
    if start is None:
        greedy = relabel_by_first(_gaec(n, a, b, x, np.ones(n), u))
    else:
        # warm start: contraction goes on from the given partition's clusters
        greedy = relabel_by_first(_contract(n, a, b, x, u, relabel_by_first(start)))
    o_greedy = float(_per_component(comp, n_comp, a, b, w, greedy, u).sum())
    if not refine:
        return greedy, {"gaec": o_greedy, "refined": o_greedy, "pivot_refined": None, "chosen": {"gaec": n_comp}}
    refined = _refine(n, a, b, x, u, greedy)
    indptr, indices, weights = _csr(n, a, b, w)
    order = np.random.default_rng(seed).permutation(n)
    piv = _refine(n, a, b, x, u, _pivot(n, indptr, indices, weights, order))
    o_ref = _per_component(comp, n_comp, a, b, w, refined, u)
    o_piv = _per_component(comp, n_comp, a, b, w, piv, u)
    take_piv = o_piv < o_ref
    best = relabel_by_first(np.where(take_piv[comp], piv + n, refined))
    return best, {"gaec": o_greedy, "refined": float(np.minimum(o_ref, o_piv).sum()),
                  "pivot_refined": float(o_piv.sum()),
                  "chosen": {"gaec+moves": int((~take_piv).sum()), "pivot+moves": int(take_piv.sum())}}


@njit(cache=True, nogil=True)
def _positive_components(n, a, b, w):  # pragma: no cover - compiled
    """A root per node of the union-find over the edges with w > 0."""
    parent = np.arange(n)
    for e in range(len(a)):
        if w[e] > 0:
            ra, rb = _find(parent, a[e]), _find(parent, b[e])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = _find(parent, i)
    return out


# nodes per batch of components solved in one pass: large enough that the per-batch Python
# is negligible, small enough that batches spread over threads and the kernels' per-node
# dictionaries stay small
BATCH_NODES = 1 << 15


@dataclass(frozen=True)
class CorrelationResult:
    """labels : (n,) cluster ids; objective_* : total disagreement weight at each step."""

    labels: np.ndarray
    objective_gaec: float
    objective_refined: float
    objective_pivot_refined: float | None
    stats: dict = field(default_factory=dict)


def correlation_clustering(signed: SignedGraph, *, refine: bool = True, seed: int = 0,
                           n_jobs: int | None = None, start: np.ndarray | None = None) -> CorrelationResult:
    """Solve correlation clustering on ``signed``, component by component of positive edges.

    Components are solved in batches of about :data:`BATCH_NODES` nodes, each batch in one
    pass of every kernel (:func:`_solve_components`), batches on ``n_jobs`` threads.

    ``start``: (n,) a partition to continue contracting from instead of single nodes (a warm
    start), such as the solution of the same graph at a lower bias: raising the bias only
    adds positive edges, so none of its clusters crosses a component here."""
    n, a, b, w = signed.n, signed.a, signed.b, signed.w
    u = np.zeros(n) if signed.u is None else np.minimum(np.asarray(signed.u, dtype=np.float64), 0.0)
    # components of the positive edges, numbered by their first node as scipy's
    # connected_components numbers them (no sparse copy of the edges)
    comp = relabel_by_first(_positive_components(n, a, b, w))
    n_comp = int(comp.max()) + 1 if n else 0
    comp_size = np.bincount(comp, minlength=n_comp)
    inside = (comp[a] == comp[b]) & (comp_size[comp[a]] > 1)
    # nodes of components with more than one node, grouped by component (original order
    # inside each), cut into batches of whole components
    n_order = np.argsort(comp, kind="stable")
    n_order = n_order[comp_size[comp[n_order]] > 1]
    big = np.flatnonzero(comp_size > 1)
    ends = np.cumsum(comp_size[big])
    # a component goes to the batch where it starts; batch ids made consecutive
    batch = np.unique((ends - comp_size[big]) // BATCH_NODES, return_inverse=True)[1].astype(np.int64)
    n_batches = int(batch.max()) + 1 if len(big) else 0
    comp_bounds = np.searchsorted(batch, np.arange(n_batches + 1))
    node_bounds = np.concatenate([[0], ends])[comp_bounds]
    batch_of_comp = np.full(n_comp, -1, dtype=np.int64)
    batch_of_comp[big] = batch
    # the inside edges grouped by batch (one gather of each array: at 1M rows they are
    # hundreds of MB each)
    pick = np.flatnonzero(inside)
    del inside
    pick = pick[np.argsort(batch_of_comp[comp[a[pick]]], kind="stable")]
    ea, eb, ew = a[pick], b[pick], w[pick]
    del pick
    e_bounds = np.searchsorted(batch_of_comp[comp[ea]], np.arange(n_batches + 1))
    local = np.empty(n, dtype=np.int64)
    local[n_order] = np.arange(len(n_order)) - node_bounds[batch_of_comp[comp[n_order]]]

    def solve(i):
        nodes = n_order[node_bounds[i]:node_bounds[i + 1]]
        comps = big[comp_bounds[i]:comp_bounds[i + 1]]
        comp_local = np.searchsorted(comps, comp[nodes])
        sl = slice(e_bounds[i], e_bounds[i + 1])
        lab, st = _solve_components(len(nodes), local[ea[sl]], local[eb[sl]], ew[sl], u[nodes], refine, seed + i,
                                    comp_local, len(comps), None if start is None else
                                    # a start cluster never spans two components here
                                    relabel_by_first(comp_local * len(nodes) + relabel_by_first(start[nodes])))
        return nodes, lab, st

    labels = np.full(n, -1, dtype=np.int64)
    totals = {"gaec": 0.0, "refined": 0.0, "pivot_refined": 0.0}
    chosen = {"gaec+moves": 0, "pivot+moves": 0, "gaec": 0}
    offset = 0
    workers = max(1, min(n_jobs or min(os.cpu_count() or 1, 8), n_batches))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for nodes, lab, st in pool.map(solve, range(n_batches)):
            labels[nodes] = lab + offset
            offset += int(lab.max()) + 1
            for key in totals:
                totals[key] += st.get(key) or 0.0
            for key, count in st["chosen"].items():
                chosen[key] += count
    single = labels < 0
    labels[single] = offset + np.arange(int(single.sum()))
    labels = relabel_by_first(labels)
    # pairs between components are all negative (or without an edge) and all cut, and a
    # one-node component has no pair inside: they add nothing, so the objective of the whole
    # is the sum of the solved components' (no pass over every edge again)
    stats = {"components": int(n_comp), "components_solved": len(big), "batches": n_batches, "chosen": chosen,
             "n_clusters": int(labels.max()) + 1, "threads": workers}
    return CorrelationResult(labels, totals["gaec"], totals["refined"], totals["pivot_refined"] if refine else None,
                             stats)


def choose_bias(signed: SignedGraph, labels: np.ndarray, *, step: float = 1.0, max_steps: int = 4,
                refine: bool = True, seed: int = 0) -> tuple[float, list, CorrelationResult]:
    """The bias whose partition best agrees (pairwise F) with given, mostly right labels.

    How far to lean towards merging or splitting depends on the set (identity sizes against
    k, how well the calibration separates), so it is measured, like the hierarchical cut,
    against the labels: a hill climb from 0 in steps of ``step`` (0, ±1, then onwards in the
    better direction while F improves), typically three or four solves, one per bias at
    most, each upward one warm-started from the solution one step below. Returns the best
    bias, the curve [(bias, pairwise F, n_clusters, objective)] sorted by bias, and the
    solution at the best bias (so it is not solved again).
    """
    from .metrics import pairwise_scores

    # biases are whole numbers of steps (keys are step counts, so a float step cannot make a
    # sum miss its key)
    seen: dict[int, tuple] = {}
    results: dict[int, CorrelationResult] = {}

    def score(k: int) -> float:
        if k not in seen:
            # warm start from the solution one step below, where there is one: a higher bias
            # only adds positive edges, so contraction goes on from there
            below = results.get(k - 1)
            result = results[k] = correlation_clustering(signed.with_bias(k * step), refine=refine, seed=seed,
                                                         start=None if below is None else below.labels)
            seen[k] = (float(k * step), pairwise_scores(labels, result.labels)["f"], int(result.labels.max()) + 1,
                       result.objective_refined)
        return seen[k][1]

    best = 0
    f_down, f0, f_up = score(-1), score(0), score(1)
    direction = -1 if f_down > max(f0, f_up) else (1 if f_up > f0 else 0)
    if direction:
        best = direction
        for _ in range(max_steps - 1):
            nxt = best + direction
            if score(nxt) <= score(best):
                break
            best = nxt
    curve = sorted(seen.values())
    return float(best * step), curve, results[best]


@dataclass(frozen=True)
class CorrelationConfig:
    """Settings of the correlation stage.

    bias : log-odds added to every pair (> 0 merges more); None = hill-climbed against the
        labels when given (:func:`choose_bias`), else 0
    non_edges : "bound" or "neutral" (see :func:`signed_graph`)
    shared_neighbours : add the evidence of shared kNN neighbours to every edge (see
        :func:`signed_graph`); None (default): only when no labels guide the bias. Measured on
        the real protocol sets: without labels it lifts pairwise F by 0.006–0.09 (docs/
        benchmarks.md, issue 16); inside ``clean``, where the labels choose the bias, it moved
        no cleaning figure up and sent 9–19 more rows to review (OMZ long-tail noise F1
        0.873 → 0.861), so there it stays off unless asked for
    refine : run the local-move refinement and the Pivot comparison after GAEC
    attach_singletons : after the solve, give a single-row cluster to its nearest cluster where
        that cluster's own faces list it more often than they list strangers, more likely
        than not (:func:`attach_singletons`); None (default): only without labels (inside
        ``clean`` a photo alone is evidence in itself)
    detach_strays : before that, let a row leave its cluster where its nearest clustermate is
        no nearer than faces come to strangers, more likely than not (:func:`detach_strays`;
        the rejoin then gives it back where a cluster vouches for it); None (default) and True:
        whenever single rows are attached, False: never. Measured with labels hidden
        (docs/benchmarks.md, issue 16): dlib less its noise 0.929 → 0.933 pairwise F, no set
        down
    bias_step, max_bias_steps : the hill climb's step and its most steps in one direction
    smooth : value the edges with faces averaged with their likely-same neighbours
        (:func:`facecluster.knn.smoothed_graph`; needs the vectors, ``embeddings=`` of
        :func:`correlation_stage`); None (default): only without labels and for embeddings
        that had to be centred (an offset geometry, dlib-like). Measured with labels hidden
        (docs/benchmarks.md, issue 16): pairwise F 0.824 → 0.854 (real dlib), 0.870 → 0.903
        (its long-tailed version), 0.934 → 0.967 (dlib-like synthetic, 5k rows), 0.922 → 0.935
        (100k rows); on centred embeddings it cost the long-tailed real set 0.977 → 0.950, so
        there it stays off unless asked for
    """

    bias: float | None = None
    non_edges: str = "bound"
    shared_neighbours: bool | None = None
    smooth: bool | None = None
    attach_singletons: bool | None = None
    detach_strays: bool | None = None
    refine: bool = True
    bias_step: float = 1.0
    max_bias_steps: int = 4

    def __post_init__(self):
        if self.non_edges not in ("bound", "neutral"):
            raise ValueError(f"non_edges must be 'bound' or 'neutral', got {self.non_edges!r}")
        if self.bias is not None and not np.isfinite(self.bias):
            raise ValueError(f"bias must be finite, got {self.bias!r}")
        if not self.bias_step > 0 or self.max_bias_steps < 1:
            raise ValueError("bias_step must be > 0 and max_bias_steps >= 1")
        for name in ("shared_neighbours", "smooth", "attach_singletons", "detach_strays"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be None, True or False, got {getattr(self, name)!r}")


def correlation_stage(graph: KnnGraph, labels: np.ndarray | None = None, config: CorrelationConfig | None = None,
                      *, calibration: Calibration | None = None, rng: np.random.Generator | None = None,
                      embeddings: np.ndarray | None = None, centred: bool = False,
                      keep_graph: bool = True) -> Partition:
    """Calibrate the signed graph, settle the bias and solve: the stage as ``clean``,
    ``cluster`` and :class:`CorrelationClustering` run it.

    Parameters
    ----------
    graph : KnnGraph
    labels : (n_samples,) int label codes, or None
    config : CorrelationConfig
    calibration : the run's shared calibration (fitted here from ``labels`` when not given)
    rng : numpy Generator (the calibration's pair sample, the Pivot orders)
    embeddings, centred : the graph's unit vectors and whether they were centred (the
        faceset's), for the smoothing of ``config.smooth``; without them there is none
    keep_graph : keep the signed graph in ``detail`` (the estimator's ``signed_graph_``);
        ``clean`` does not need it after the stage (24 bytes an edge: 0.5 GB at 1M rows,
        held through every later stage)

    Returns
    -------
    Partition
        ``stats``: the bias and where it came from, whether the edges were smoothed, the
        signed graph's calibration,
        objectives, solver statistics, the bias curve when one was measured, and the
        agreement with the labels when given. ``detail``: {"result": CorrelationResult,
        "signed_graph": the SignedGraph at the chosen bias (with ``keep_graph``)}.
    """
    config = config or CorrelationConfig()
    rng = rng if rng is not None else np.random.default_rng(0)
    labels = None if labels is None else np.asarray(labels)
    lists = graph  # the kNN lists (smoothing revalues their edges, the lists stay)
    shared = labels is None if config.shared_neighbours is None else config.shared_neighbours
    smooth = (labels is None and centred) if config.smooth is None else config.smooth
    smoothing = {"applied": False}
    if smooth and embeddings is not None:
        # the edges valued by faces averaged with their likely-same neighbours (same lists),
        # calibrated afresh on those values
        if calibration is None:
            calibration = fit_calibration(graph, labels, rng=rng)
        graph = smoothed_graph(embeddings, graph, calibration(graph.sims))
        calibration = fit_calibration(graph, labels, rng=rng)
        smoothing = {"applied": True, "neighbours": graph.info["smoothed_neighbours"],
                     "why": "asked" if config.smooth else "no labels, and embeddings centred (offset geometry)"}
    base = signed_graph(graph, labels, calibration=calibration, non_edges=config.non_edges,
                        shared_neighbours=shared, rng=rng)
    seed = int(rng.integers(2**31 - 1))
    report: dict = {}
    if config.bias is not None:
        bias, source = float(config.bias), "user"
        result = correlation_clustering(base.with_bias(bias), refine=config.refine, seed=seed)
    elif labels is not None:
        bias, curve, result = choose_bias(base, labels, step=config.bias_step, max_steps=config.max_bias_steps,
                                          refine=config.refine, seed=seed)
        source = "best pairwise F against the given labels"
        report["bias_curve"] = [{"bias": b, "pairwise_f": round(f, 5), "n_clusters": c, "objective": round(o, 3)}
                                for b, f, c, o in curve]
    else:
        bias, source = 0.0, "default (no labels)"
        result = correlation_clustering(base, refine=config.refine, seed=seed)
    pivot = result.objective_pivot_refined
    report.update(bias=bias, bias_source=source, signed_graph=dict(base.info, bias=bias), smoothing=smoothing,
                  n_clusters=int(result.labels.max()) + 1, objective_gaec=round(result.objective_gaec, 3),
                  objective_refined=round(result.objective_refined, 3),
                  objective_pivot_refined=None if pivot is None else round(pivot, 3), solver=result.stats)
    assigned = result.labels
    attach = labels is None if config.attach_singletons is None else config.attach_singletons
    if attach:
        if config.detach_strays is not False:
            assigned, report["detach_strays"] = detach_strays(lists, assigned)
        assigned, report["attach_singletons"] = attach_singletons(lists, assigned)
        report["n_clusters"] = int(assigned.max()) + 1 if len(assigned) else 0
    if labels is not None:
        report.update(agreement_report(assigned, labels))
    detail = {"result": result}
    if keep_graph:
        detail["signed_graph"] = base.with_bias(bias)
    return Partition(assigned, report, detail)


def attach_singletons(graph: KnnGraph, partition: np.ndarray) -> tuple[np.ndarray, dict]:
    """Give each single-row cluster of ``partition`` to its nearest cluster where the evidence
    says that is more likely than not its person's.

    A clustering cuts a person's hardest photos off (a profile, a blur: its nearest face of
    the same person is far), and on a set of dense identities most of its single-row clusters
    are such photos; on a long-tailed set most are people photographed once. The similarity
    to the nearest cluster does not tell the two apart (a hard photo sits as far from its
    person as a stranger from a look-alike), but the cluster's own faces do: they list a hard
    photo of their person among their nearest neighbours more often than a stranger's. Per
    row, the nearest cluster of two rows or more (its own excluded) and the share of that
    cluster's rows whose kNN list holds the row (:func:`singleton_pvalues`):

    - the null (a photo of no one in that cluster): the same share for every row of a
      cluster, towards its nearest other cluster;
    - each single row's p-value against it (mid-p: the statistic is a count);
    - the p-values as a beta-uniform mixture (:func:`beta_uniform_lfdr`), whose local false
      discovery rate is the probability that a row is a stranger there;
    - a row moves where that is at most 1/2.

    Where the single rows are strangers their p-values are uniform and the fit is flat or
    nearly so: on uniform p-values it moves a row in about one run in five at 20–50 single
    rows (0.45 rows a run) and almost never at a thousand. Needs 20 rows on each side (returns
    the partition renumbered, unchanged, below). Returns the new partition (numbered by first
    appearance) and its statistics.
    """
    partition = np.asarray(partition, dtype=np.int64)
    asked, target, p = singleton_pvalues(graph, partition)
    stats = {"single_rows": int((np.bincount(partition, minlength=1)[partition] == 1).sum()), "attached": 0}
    if p is None:
        return relabel_by_first(partition), stats
    lfdr, null_share, lam, a = beta_uniform_lfdr(p)
    move = lfdr <= 0.5
    out = partition.copy()
    out[asked[move]] = target[move]
    stats.update(attached=int(move.sum()), asked=int(len(asked)), null_share=round(null_share, 4),
                 beta_uniform={"lambda": round(lam, 4), "a": round(a, 4)})
    return relabel_by_first(out), stats


def singleton_pvalues(graph: KnnGraph, partition: np.ndarray, min_rows: int = 20
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """For :func:`attach_singletons`: the single rows of ``partition`` that have a cluster of
    two rows or more in their kNN list, that cluster (the first such row's), and each one's
    mid-p value: how often a row of a cluster is listed by its own nearest other cluster's
    rows at least as often (in share of that cluster's rows) as the single row is by its.
    p is None (nothing to test) when either side has fewer than ``min_rows`` rows."""
    partition = np.asarray(partition, dtype=np.int64)
    n = len(partition)
    sizes = np.bincount(partition, minlength=1)
    multi = sizes[partition] >= 2
    idx = graph.indices
    # the nearest row in another cluster of two rows or more
    nearest, _, _ = nearest_by_label(graph, partition, among=multi)
    target = np.where(nearest >= 0, partition[np.maximum(nearest, 0)], -1)
    has = target >= 0
    null_rows, asked = np.flatnonzero(multi & has), np.flatnonzero(~multi & has)
    if len(null_rows) < min_rows or len(asked) < min_rows:
        return asked, target[asked], None
    # how many rows of the target cluster list each row: edges i -> j with i in j's target,
    # one column of the lists at a time (n-sized temporaries, not n·k)
    listed = np.zeros(n, dtype=np.int64)
    for col in range(idx.shape[1]):
        dst = idx[:, col]
        hit = (dst >= 0) & (partition == target[np.maximum(dst, 0)])
        listed += np.bincount(dst[hit], minlength=n)
    share = listed / np.maximum(sizes[np.maximum(target, 0)], 1)
    return asked, target[asked], _upper_mid_p(share[null_rows], share[asked])


def _upper_mid_p(null: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mid-p of each ``x`` in the upper tail of the ``null`` sample: (the null values above it,
    half those equal to it, and a half) over (the null's size + 1)."""
    null = np.sort(null)
    lo, hi = np.searchsorted(null, x, side="left"), np.searchsorted(null, x, side="right")
    return (len(null) - hi + 0.5 * (hi - lo) + 0.5) / (len(null) + 1)


def detach_strays(graph: KnnGraph, partition: np.ndarray, min_rows: int = 20) -> tuple[np.ndarray, dict]:
    """Let a row leave its cluster where it sits no nearer its clustermates than faces come to
    strangers, more likely than not; :func:`attach_singletons` then gives it back to a
    cluster whose faces vouch for it, or leaves it alone.

    A solver joins a photographed-once person to the cluster of a look-alike, and cuts a
    person's cluster along a bridge of look-alike edges: such a row's nearest clustermate is
    as far as a stranger. Per row of a cluster of two rows or more, from its kNN list:

    - the statistic: the similarity of its nearest clustermate;
    - the null (a photo of no one in that cluster): the similarity of each such row's nearest
      row of another cluster of two rows or more;
    - each row's mid-p value in the null's upper tail, fitted as a beta-uniform mixture
      (:func:`beta_uniform_lfdr`), whose local false discovery rate is the probability that
      the row is a stranger to its cluster;
    - a row leaves (becomes a cluster of its own) where that is above 1/2.

    A row whose list holds no clustermate is not asked: mostly its cluster's hard photos,
    listed by their person but listing others. Needs ``min_rows`` rows on each side (returns
    the partition renumbered, unchanged, below). Returns the new partition (numbered by first
    appearance) and its statistics.
    """
    partition = np.asarray(partition, dtype=np.int64)
    multi = np.bincount(partition, minlength=1)[partition] >= 2
    _, s_other, s_same = nearest_by_label(graph, partition, among=multi)
    null_rows = multi & np.isfinite(s_other)
    asked = np.flatnonzero(multi & np.isfinite(s_same))
    stats = {"rows_asked": int(len(asked)), "detached": 0}
    if null_rows.sum() < min_rows or len(asked) < min_rows:
        return relabel_by_first(partition), stats
    lfdr, null_share, lam, a = beta_uniform_lfdr(_upper_mid_p(s_other[null_rows], s_same[asked]))
    leave = asked[lfdr > 0.5]
    out = partition.copy()
    out[leave] = int(partition.max()) + 1 + np.arange(len(leave))
    stats.update(detached=int(len(leave)), null_share=round(null_share, 4),
                 beta_uniform={"lambda": round(lam, 4), "a": round(a, 4)})
    return relabel_by_first(out), stats


def beta_uniform_lfdr(p: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """The beta-uniform mixture of p-values (Pounds & Morris, 2003), f(p) = λ + (1 − λ)·a·p^(a − 1)
    with 0 < λ, a < 1, fitted by maximum likelihood (Nelder–Mead on their logits). Its null
    share is the density at p = 1, π0 = λ + (1 − λ)·a, and each p-value's local false discovery
    rate is π0 / f(p). Returns (local FDR per p-value, π0, λ, a)."""
    from scipy import optimize

    log_p = np.log(np.asarray(p, dtype=np.float64))

    def density(t):
        lam, a = 1.0 / (1.0 + np.exp(-t[0])), 1.0 / (1.0 + np.exp(-t[1]))
        return lam, a, lam + (1.0 - lam) * a * np.exp((a - 1.0) * log_p)

    fit = optimize.minimize(lambda t: -np.sum(np.log(density(t)[2])), [0.0, 0.0], method="Nelder-Mead")
    lam, a, f = density(fit.x)
    null_share = lam + (1.0 - lam) * a
    return null_share / f, float(null_share), float(lam), float(a)


class CorrelationClustering(ClusterMixin, BaseEstimator):
    """Correlation clustering of faces on a calibrated signed kNN graph (scikit-learn estimator).

    Parameters
    ----------
    bias : float or None, default None
        Added to every edge's log-odds: > 0 merges more, < 0 splits more. None: chosen from
        ``y`` when given (:func:`choose_bias`), else 0.
    k : int, neighbours per sample when ``fit`` is given vectors
    refine : bool, run the local-move refinement after GAEC
    smooth : bool or None, value the edges with faces averaged with their likely-same
        neighbours (:class:`CorrelationConfig`); None: without ``y``, for vectors that had to
        be centred
    attach : bool or None, let rows as far from their clustermates as strangers leave
        (:func:`detach_strays`), then give single-row clusters to their nearest cluster where
        its faces vouch for them (:func:`attach_singletons`); None: without ``y``
    (Without ``y`` the edges also carry the shared-neighbour evidence,
    :func:`shared_neighbour_log_odds`, and, for vectors that had to be centred, are valued
    by faces averaged with their likely-same neighbours, and single-row clusters join their
    nearest cluster where that cluster's faces vouch for them (:func:`attach_singletons`);
    with ``y`` none of these, as in ``clean``.)
    device, seed : as elsewhere

    Attributes
    ----------
    labels_ : (n_samples,) cluster ids
    n_features_in_ : the vectors' dimension (not set when fitted on a KnnGraph)
    bias_ : the bias used; bias_curve_ : [(bias, pairwise F, n_clusters, objective)] when chosen from labels
    objective_gaec_, objective_ : disagreement weight after GAEC and after refinement
    signed_graph_ : SignedGraph at ``bias_``
    stats_ : dict, the stage's report

    Examples
    --------
    >>> from facecluster.synth import make_faces
    >>> X, y = make_faces(300, 20, 32, seed=0)
    >>> CorrelationClustering(k=10).fit(X, y).labels_.shape
    (300,)
    """

    def __init__(self, bias: float | None = None, k: int = 30, refine: bool = True, device: str = "auto",
                 seed: int = 0, smooth: bool | None = None, attach: bool | None = None):
        self.bias = bias
        self.k = k
        self.refine = refine
        self.device = device
        self.seed = seed
        self.smooth = smooth
        self.attach = attach

    def fit(self, X, y=None):
        """Build (or take) the kNN graph, weigh its edges, choose the bias and solve.

        Parameters
        ----------
        X : array of shape (n_samples, n_features) or KnnGraph
            Raw face embeddings (normalised, and centred when the data say so) or a graph.
        y : array of shape (n_samples,), optional
            Identity labels, mostly right: they calibrate the edge weights and choose the
            bias when ``bias`` is None.

        Returns
        -------
        self
        """
        if not (isinstance(self.k, (int, np.integer)) and self.k >= 1):
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("smooth", "attach"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be None, True or False, got {getattr(self, name)!r}")
        config = CorrelationConfig(bias=None if self.bias is None else float(self.bias), refine=bool(self.refine),
                                   smooth=self.smooth, attach_singletons=self.attach)
        if isinstance(X, KnnGraph):  # a graph alone: no vectors to smooth with
            check_graph(X)
            graph, unit, centred = X, None, False
            if hasattr(self, "n_features_in_"):
                del self.n_features_in_
        else:
            from .faceset import prepare_embeddings

            unit, centred, _ = prepare_embeddings(X, seed=self.seed)
            graph = build_knn_graph(unit, k=self.k, device=self.device, seed=self.seed)
            self.n_features_in_ = int(unit.shape[1])  # scikit-learn's convention
        codes = None if y is None else label_codes(y, graph.n_samples)
        part = correlation_stage(graph, codes, config, rng=np.random.default_rng(self.seed), embeddings=unit,
                                 centred=centred)
        result = part.detail["result"]
        self.stats_ = part.stats
        self.bias_ = part.stats["bias"]
        self.bias_curve_ = [(c["bias"], c["pairwise_f"], c["n_clusters"], c["objective"])
                            for c in part.stats.get("bias_curve", [])]
        self.signed_graph_ = part.detail["signed_graph"]
        self.labels_ = part.labels
        self.objective_gaec_ = result.objective_gaec
        self.objective_ = result.objective_refined
        return self
