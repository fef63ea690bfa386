"""Hierarchical clustering on the kNN graph: graph average linkage and FINCH.

Graph average linkage: the similarity of two clusters is the mean similarity of the graph
edges between them (on a complete graph, exactly UPGMA average linkage). Average linkage is
reducible, so every reciprocal best pair can be merged at once: each round finds every
cluster's best neighbour, merges all reciprocal best pairs whose similarity reaches the
threshold, and contracts the graph (parallel edges summed). Each round is a few passes over
the edges in compiled code (scipy.sparse), never a Python loop over edges; there are
O(log n) rounds on typical data. The merge history is kept as a dendrogram (child, child,
similarity, size), so any cut is cheap.

FINCH (Sarfraz, Sharma & Stiefelhagen, "Efficient Parameter-free Clustering Using First
Neighbor Relations", CVPR 2019): link every sample to its first neighbour, take connected
components, then repeat on the clusters with their first neighbour by average linkage on the
same graph (the paper uses cluster means; on the graph we use the edges), giving a hierarchy
of partitions with no parameter.

References
----------
Sumengen et al., "Scaling Hierarchical Agglomerative Clustering to Billion-sized Datasets"
(RAC), arXiv 2105.11653 — reciprocal-pair rounds for reducible linkages.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from numba import njit, types
from numba.typed import Dict, List
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClusterMixin

from .calibration import Calibration, fit_calibration
from .errors import is_whole
from .knn import KnnGraph, graph_from_vectors
from .metrics import pairwise_scores
from .partition import (
    Partition,
    agreement_report,
    edges_by_node,
    label_codes,
    relabel_by_first,
)

# --------------------------------------------------------------------------- graph machinery


def _contract(a, b, wsum, count, new_id, m):
    """Relabel edge endpoints, drop edges inside a cluster, sum parallel edges.

    Weight sums and edge counts ride together as one complex number so that a single
    sum-duplicates pass (scipy's COO→CSR) adds both and keeps them aligned.
    """
    a, b = new_id[a], new_id[b]
    keep = a != b
    a, b, wsum, count = a[keep], b[keep], wsum[keep], count[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    mat = sp.coo_matrix((wsum + 1j * count, (lo, hi)), shape=(m, m)).tocsr()
    mat.sum_duplicates()
    coo = mat.tocoo()
    return coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.real.copy(), coo.data.imag.copy()


@njit(cache=True, nogil=True)
def _best_neighbours_kernel(a, b, sim, m):
    best = np.full(m, -1, dtype=np.int64)
    best_sim = np.full(m, -np.inf)
    for i in range(len(a)):
        u, v, x = a[i], b[i], sim[i]
        if x > best_sim[u] or (x == best_sim[u] and v < best[u]):
            best_sim[u] = x
            best[u] = v
        if x > best_sim[v] or (x == best_sim[v] and u < best[v]):
            best_sim[v] = x
            best[v] = u
    return best, best_sim


def _best_neighbours(a, b, sim, m):
    """Each node's most similar neighbour (ties: smaller index) and that similarity; -1 if none.

    One pass over the edges (numba): the per-row argmax needs no sorted sparse structure.
    """
    return _best_neighbours_kernel(np.ascontiguousarray(a, dtype=np.int64), np.ascontiguousarray(b, dtype=np.int64),
                                   np.ascontiguousarray(sim, dtype=np.float64), int(m))


@njit(cache=True, nogil=True)
def _update_best(a, b, wsum, count, n_edges, affected, best, best_sim):  # pragma: no cover - compiled
    """Best neighbour (ties: smaller index) of every ``affected`` node, from the first
    ``n_edges`` edges; the others' entries are left as they are."""
    for i in range(len(affected)):
        if affected[i]:
            best[i] = -1
            best_sim[i] = -np.inf
    for e in range(n_edges):
        u, v = a[e], b[e]
        if affected[u] or affected[v]:
            x = wsum[e] / count[e]
            if affected[u] and (x > best_sim[u] or (x == best_sim[u] and v < best[u])):
                best_sim[u] = x
                best[u] = v
            if affected[v] and (x > best_sim[v] or (x == best_sim[v] and u < best[v])):
                best_sim[v] = x
                best[v] = u


# a round of reciprocal merges passes over every edge left; once a round merges fewer than
# this share of the clusters (the long tail of chains: 3,300 of 3,370 rounds at a million rows),
# the rest is merged pair by pair on per-cluster tables (:func:`_rac_tail`), which touch only
# the merged clusters and their neighbours. Speed only: the merges are the same, except where
# two average similarities tie exactly (duplicate vectors), where the order of the merges can
# settle the tie another way; the tree is then another, equally valid average-linkage tree
# (a review found cut partitions differing by at most 5e-5 in pairwise F on a 60k set with 20%
# exact duplicates; none on the protocol's sets, at 100k or at 1M). Building the
# tables costs about as much as 130 late rounds, so the switch comes late: measured (one run
# each, 2 cores), 0.01 / 0.003 / 0.001 / never took 18.6 / 19.7 / 25.3 / 71.0 s at 1M rows
# and 1.15 / 0.69 / 0.67 / 0.67 s at 100k rows
TAIL_SHARE = 0.003


@njit(cache=True, nogil=True)
def _best_in_heap(heap, table, wsum, count):  # pragma: no cover - compiled
    """The best neighbour (ties: smaller index) and its similarity from a cluster's lazy heap of
    (-similarity, neighbour): entries whose neighbour left the cluster's ``table`` or whose
    similarity changed since are dropped on the way (each change pushed a fresh entry)."""
    while len(heap):
        neg, x = heap[0]
        if x in table:
            e = table[x]
            if wsum[e] / count[e] == -neg:
                return x, -neg
        heapq.heappop(heap)
    return np.int64(-1), -np.inf


@njit(cache=True, nogil=True)
def _rac_tail(m, a, b, wsum, count, n_edges, node, size, best, best_sim, threshold, n, n_merges,
              children, msim, msize):  # pragma: no cover - compiled
    """Merge reciprocal best pairs one at a time until none is left at or above ``threshold``.

    Average linkage over the graph's edges is reducible (a merged cluster is never nearer to a
    third than the nearer of its two parts), so merging reciprocal pairs in any order gives the
    same merges as the rounds do. Each cluster keeps a table neighbour -> edge and a lazy heap
    of its neighbours by similarity. A merge folds the smaller table into the larger (small into
    large: each edge moves O(log n) times), pushes the changed similarities, and checks the
    clusters it touched for a new reciprocal pair; nothing else is read. Returns the number of
    merges made so far (``children``, ``msim``, ``msize`` are filled from ``n_merges``)."""
    # tables and heaps filled one cluster at a time (:func:`edges_by_node`): the same as
    # adding the edges in turn, without writing all over memory
    start, half = edges_by_node(m, a[:n_edges], b[:n_edges])
    adj = List()
    heaps = List()
    for c in range(m):
        table = Dict.empty(types.int64, types.int64)
        h = List()
        h.append((0.0, np.int64(0)))
        h.pop()
        for p in range(start[c], start[c + 1]):
            e = half[p]
            x = b[e] if a[e] == c else a[e]
            table[x] = e
            h.append((-(wsum[e] / count[e]), x))
        heapq.heapify(h)
        adj.append(table)
        heaps.append(h)
    stack = List()
    for c in range(m - 1, -1, -1):
        stack.append(np.int64(c))
    while len(stack):
        c = stack.pop()
        d = best[c]
        if size[c] == 0 or d < 0 or best[d] != c or best_sim[c] < threshold:
            continue
        lo, hi = min(c, d), max(c, d)
        children[n_merges, 0] = node[lo]
        children[n_merges, 1] = node[hi]
        msim[n_merges] = best_sim[c]
        msize[n_merges] = size[c] + size[d]
        keep, gone = (c, d) if len(adj[c]) >= len(adj[d]) else (d, c)
        node[keep] = n + n_merges
        n_merges += 1
        size[keep] += size[gone]
        size[gone] = 0
        best[gone] = -1
        del adj[keep][gone]
        for x, e in adj[gone].items():
            if x == keep:
                continue
            del adj[x][gone]
            if x in adj[keep]:
                f = adj[keep][x]
                wsum[f] += wsum[e]
                count[f] += count[e]
            else:
                f = e
                adj[keep][x] = f
                adj[x][keep] = f
            s = wsum[f] / count[f]
            heapq.heappush(heaps[keep], (-s, x))
            heapq.heappush(heaps[x], (-s, keep))
            # x's similarity to the pair changed: its best may be another cluster now
            best[x], best_sim[x] = _best_in_heap(heaps[x], adj[x], wsum, count)
            stack.append(x)
        adj[gone].clear()
        heaps[gone].clear()
        best[keep], best_sim[keep] = _best_in_heap(heaps[keep], adj[keep], wsum, count)
        stack.append(keep)
    return n_merges


@njit(cache=True, nogil=True)
def _rac_rounds(n, a, b, wsum, count, threshold, max_rounds, tail_share):  # pragma: no cover - compiled
    """Every round of :func:`average_linkage` in compiled code: two passes over the edges a
    round (contract in place, then the affected clusters' best neighbours); scratch for the
    edges is allocated once, and per round only for the edges a merge touches. ``a``, ``b``, ``wsum``, ``count`` are overwritten.

    Returns the merge arrays (children, similarity, size; filled up to ``n_merges``), the
    rounds made, whether the tail is left to merge (:data:`TAIL_SHARE`), and the state it
    starts from: clusters ``m``, edges ``n_edges`` (the first of ``a``, ``b``, ``wsum``,
    ``count``), and each cluster's node, size and best neighbour.
    """
    m = n
    n_edges = len(a)
    node = np.arange(n)
    size = np.ones(n, dtype=np.int64)
    children = np.empty((max(n - 1, 0), 2), dtype=np.int64)
    msim = np.empty(max(n - 1, 0))
    msize = np.empty(max(n - 1, 0), dtype=np.int64)
    best = np.full(n, -1, dtype=np.int64)
    best_sim = np.full(n, -np.inf)
    _update_best(a, b, wsum, count, n_edges, np.ones(n, dtype=np.bool_), best, best_sim)
    ta = np.empty(n_edges, dtype=np.int64)
    tb = np.empty(n_edges, dtype=np.int64)
    tw = np.empty(n_edges)
    tc = np.empty(n_edges)
    order = np.empty(n_edges, dtype=np.int64)
    seen_at = np.full(n, -1, dtype=np.int64)  # per second end: the first end last seen with it
    where = np.empty(n, dtype=np.int64)  # ... and where that pair's edge was written
    left = np.empty(n, dtype=np.int64)
    n_merges = 0
    rounds = 0
    switched = False
    while n_edges > 0 and rounds < max_rounds:
        k = 0
        for i in range(m):
            j = best[i]
            if j > i and best[j] == i and best_sim[i] >= threshold:
                left[k] = i
                k += 1
        if k == 0:
            break
        if k < tail_share * m:
            switched = True  # the caller merges the rest (:func:`_rac_tail`), this scratch freed
            break
        rounds += 1
        keep = np.ones(m, dtype=np.bool_)
        target = np.arange(m)
        merged = np.zeros(m, dtype=np.bool_)
        for t in range(k):
            lt = left[t]
            rt = best[lt]
            children[n_merges + t, 0] = node[lt]
            children[n_merges + t, 1] = node[rt]
            msim[n_merges + t] = best_sim[lt]
            msize[n_merges + t] = size[lt] + size[rt]
            target[rt] = lt
            keep[rt] = False
            merged[lt] = True
            merged[rt] = True
        compact = np.cumsum(keep) - 1
        m_new = int(compact[m - 1]) + 1
        new_id = compact[target]
        new_node = np.empty(m_new, dtype=np.int64)
        new_size = np.zeros(m_new, dtype=np.int64)
        for i in range(m):
            new_size[new_id[i]] += size[i]
            if keep[i]:
                new_node[compact[i]] = node[i]
        for t in range(k):
            new_node[compact[left[t]]] = n + n_merges + t
        n_merges += k
        # pass 1: edges away from every merge keep their place (relabelled, order kept); the
        # others are relabelled, those inside a new cluster dropped, parallel ones summed
        j = 0
        nt = 0
        for e in range(n_edges):
            u, v = a[e], b[e]
            nu, nv = new_id[u], new_id[v]
            if merged[u] or merged[v]:
                if nu != nv:
                    ta[nt] = min(nu, nv)
                    tb[nt] = max(nu, nv)
                    tw[nt] = wsum[e]
                    tc[nt] = count[e]
                    nt += 1
            else:
                a[j] = nu
                b[j] = nv
                wsum[j] = wsum[e]
                count[j] = count[e]
                j += 1
        affected = np.zeros(m_new, dtype=np.bool_)
        for t in range(k):
            affected[compact[left[t]]] = True
        if nt:
            # parallel edges summed in order of appearance: a stable counting sort by the
            # first end, then within each first end the pairs met before found by a table
            # indexed by the second end (linear; a sort of the touched edges was most of the
            # early rounds, where nearly every edge is touched)
            start = np.zeros(m_new + 1, dtype=np.int64)
            for q in range(nt):
                start[ta[q] + 1] += 1
            for c in range(m_new):
                start[c + 1] += start[c]
            fill = start[:m_new].copy()
            seen_at[:m_new] = -1  # cluster ids are new each round
            for q in range(nt):
                order[fill[ta[q]]] = q
                fill[ta[q]] += 1
            for c in range(m_new):
                for p in range(start[c], start[c + 1]):
                    e = order[p]
                    v = tb[e]
                    if seen_at[v] == c:
                        f = where[v]
                        wsum[f] += tw[e]
                        count[f] += tc[e]
                    else:
                        seen_at[v] = c
                        where[v] = j
                        a[j] = c
                        b[j] = v
                        wsum[j] = tw[e]
                        count[j] = tc[e]
                        affected[c] = True
                        affected[v] = True
                        j += 1
        n_edges = j
        # best neighbours: carried over (relabelled) where nothing next to a cluster changed
        new_best = np.full(m_new, -1, dtype=np.int64)
        new_best_sim = np.full(m_new, -np.inf)
        for i in range(m):
            if keep[i]:
                c = compact[i]
                if best[i] >= 0:
                    new_best[c] = new_id[best[i]]
                new_best_sim[c] = best_sim[i]
        _update_best(a, b, wsum, count, n_edges, affected, new_best, new_best_sim)
        m, node, size, best, best_sim = m_new, new_node, new_size, new_best, new_best_sim
    return children, msim, msize, n_merges, rounds, switched, m, n_edges, node, size, best, best_sim


# --------------------------------------------------------------------------- dendrogram


@dataclass(frozen=True)
class Dendrogram:
    """Merge history of an agglomerative clustering, in the order the merges were made.

    children : (n_merges, 2) int64, the two nodes merged; nodes < n_samples are samples, node
        n_samples + i is the cluster made by merge i (scikit-learn's ``children_`` convention)
    similarity : (n_merges,) float64, average edge similarity at which the merge was made
    size : (n_merges,) int64, samples in the merged cluster
    monotone_similarity : (n_merges,) similarity made non-increasing towards the root (a merge
        is never higher than the merges below it); cuts use it. Equal to ``similarity`` when the
        graph is complete; sparse graphs can have rare inversions.
    n_samples : int
    rounds : rounds of reciprocal merges before the long tail was merged pair by pair
        (``stats["tail_merges"]``: how many merges that tail made)
    """

    children: np.ndarray
    similarity: np.ndarray
    size: np.ndarray
    monotone_similarity: np.ndarray
    n_samples: int
    rounds: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def n_merges(self) -> int:
        return len(self.similarity)

    def cut(self, threshold: float) -> np.ndarray:
        """Cluster id per sample (0..n_clusters-1, by first sample) joining merges with similarity ≥ threshold."""
        n = self.n_samples
        take = self.monotone_similarity >= threshold
        leaf = self._leaves
        ca, cb = leaf[self.children[take, 0]], leaf[self.children[take, 1]]
        adj = sp.coo_matrix((np.ones(len(ca)), (ca, cb)), shape=(n, n))
        _, comp = connected_components(adj, directed=False)
        return relabel_by_first(comp)

    @cached_property
    def _leaves(self) -> np.ndarray:
        return self._representative_leaves()

    def _representative_leaves(self) -> np.ndarray:
        """For every node, one sample inside it (the first child's representative, recursively)."""
        return _fill_in_merge_order(self.children, self.similarity, self.n_samples)[0]

    def to_scipy(self) -> np.ndarray:
        """scipy.cluster.hierarchy linkage matrix (distance = 1 − similarity), merges sorted by
        height; valid when heights are monotone (complete graphs, or after ``monotone``)."""
        n = self.n_samples
        order = np.argsort(-self.monotone_similarity, kind="stable")
        new_index = np.empty(self.n_merges, dtype=np.int64)
        new_index[order] = np.arange(self.n_merges)
        remap = np.concatenate([np.arange(n), n + new_index])
        z = np.empty((self.n_merges, 4))
        z[:, :2] = np.sort(remap[self.children[order]], axis=1)
        z[:, 2] = 1.0 - self.monotone_similarity[order]
        z[:, 3] = self.size[order]
        return z


def average_linkage(graph: KnnGraph, threshold: float = -np.inf, *, max_rounds: int | None = None,
                    incremental: bool = True, tail_share: float = TAIL_SHARE) -> Dendrogram:
    """Graph average-linkage agglomeration by rounds of reciprocal best pairs.

    Parameters
    ----------
    graph : KnnGraph (made symmetric: an edge found from either end is used)
    threshold : stop merging below this average similarity (-inf: merge while edges remain)
    incremental : every round compiled (:func:`_rac_rounds`): the edges are contracted in place
        (those away from every merge keep their place), and best neighbours are recomputed only
        for clusters next to a merge. Same dendrogram as recomputing everything each round (up to
        the last bit of a sum of three or more parallel edges, which are added in another order),
        without a pass of numpy over all edges per operation. Once a round merges fewer than
        :data:`TAIL_SHARE` of the clusters, the long tail of chains is merged pair by pair on
        per-cluster adjacency (:func:`_rac_tail`): the same merges, in another order. ``False``
        is the plain numpy version, every merge in rounds, kept for tests.
    max_rounds : stop after this many rounds of reciprocal merges (None: merge until no
        reciprocal pair is left at or above ``threshold``)
    tail_share : the share below which the tail is merged pair by pair (0: never; 1: from the
        first round; not used when ``max_rounds`` limits the rounds). Speed only, up to exact
        ties (see :data:`TAIL_SHARE`).

    Returns
    -------
    Dendrogram
    """
    n = graph.n_samples
    a, b, wsum = graph.edges()
    count = np.ones_like(wsum)
    if incremental:
        # a limit on the rounds is a limit on the merges: no tail then (it runs to the end)
        share = float(tail_share) if max_rounds is None else 0.0
        (children_arr, sim_arr, size_arr, n_merges, rounds, switched, m, n_edges, node, size, best,
         best_sim) = _rac_rounds(n, a, b, wsum, count, float(threshold), n if max_rounds is None else int(max_rounds),
                                 share)
        tail = 0
        if switched:
            # the tail's tables are built after the rounds' scratch (sized to every edge) is
            # gone, from copies of the edges left (a few per cent of the graph's at 1M)
            a, b, wsum, count = a[:n_edges].copy(), b[:n_edges].copy(), wsum[:n_edges].copy(), count[:n_edges].copy()
            before = n_merges
            n_merges = _rac_tail(m, a, b, wsum, count, n_edges, node, size, best, best_sim, float(threshold), n,
                                 n_merges, children_arr, sim_arr, size_arr)
            tail = n_merges - before
        return _dendrogram(children_arr[:n_merges], sim_arr[:n_merges], size_arr[:n_merges], n, rounds, threshold,
                           tail)
    m = n
    node = np.arange(n, dtype=np.int64)  # dendrogram node of each current cluster
    size = np.ones(n, dtype=np.int64)
    children, sims, sizes = [], [], []
    n_merges = 0
    rounds = 0
    best, best_sim = _best_neighbours(a, b, wsum / count, m)
    while len(a) and (max_rounds is None or rounds < max_rounds):
        idx = np.arange(m)
        mutual = (best >= 0) & (best > idx)
        mutual[mutual] = best[best[mutual]] == idx[mutual]
        mutual &= best_sim >= threshold
        left = np.flatnonzero(mutual)
        if not len(left):
            break
        right = best[left]
        rounds += 1
        k = len(left)
        children.append(np.stack([node[left], node[right]], axis=1))
        sims.append(best_sim[left])
        sizes.append(size[left] + size[right])
        # new cluster index: merged pairs take the left index; then compact (order-preserving)
        target = idx.copy()
        target[right] = left
        keep = np.ones(m, dtype=bool)
        keep[right] = False
        compact = np.cumsum(keep) - 1
        new_id = compact[target]
        m_new = int(keep.sum())
        new_node = node[keep].copy()
        new_size = np.bincount(new_id, weights=size, minlength=m_new).astype(np.int64)
        new_node[compact[left]] = n + n_merges + np.arange(k)
        n_merges += k
        a, b, wsum, count = _contract(a, b, wsum, count, new_id, m_new)
        m, node, size = m_new, new_node, new_size
        best, best_sim = _best_neighbours(a, b, wsum / count, m)
    children_arr = np.concatenate(children) if children else np.zeros((0, 2), dtype=np.int64)
    sim_arr = np.concatenate(sims) if sims else np.zeros(0)
    size_arr = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
    return _dendrogram(children_arr, sim_arr, size_arr, n, rounds, threshold)


def _dendrogram(children, sim, size, n, rounds, threshold, tail_merges: int = 0) -> Dendrogram:
    mono = _fill_in_merge_order(children, sim, n)[1]
    return Dendrogram(children, sim, size, mono, n, rounds,
                      {"threshold": float(threshold), "n_merges": int(len(sim)), "rounds": int(rounds),
                       "tail_merges": int(tail_merges), "inversions": int((mono < sim).sum())})


@njit(cache=True, nogil=True)
def _fill_in_merge_order(children, sim, n):  # pragma: no cover - compiled
    """Per node, one sample inside it (the first child's, recursively), and per merge its
    monotone similarity: min(own similarity, its children's monotone similarity). Merges
    only refer to earlier nodes, so one pass in merge order fills both."""
    n_merges = len(sim)
    rep = np.empty(n + n_merges, dtype=np.int64)
    node_mono = np.full(n + n_merges, np.inf)
    mono = np.empty(n_merges)
    for i in range(n):
        rep[i] = i
    for i in range(n_merges):
        c0, c1 = children[i, 0], children[i, 1]
        rep[n + i] = rep[c0]
        v = min(sim[i], node_mono[c0], node_mono[c1])
        mono[i] = v
        node_mono[n + i] = v
    return rep, mono


# --------------------------------------------------------------------------- FINCH


def finch(graph: KnnGraph, *, max_levels: int = 64) -> list[np.ndarray]:
    """FINCH partitions on the graph, finest first; each is a cluster id per sample.

    Level 1 links every sample to its nearest neighbour; each next level links every cluster
    to its most similar cluster by average linkage over the graph's edges. Stops when one
    cluster remains or no cluster has a neighbour left.
    """
    n = graph.n_samples
    first = graph.indices[:, 0].astype(np.int64)
    ok = first >= 0
    adj = sp.coo_matrix((np.ones(int(ok.sum())), (np.flatnonzero(ok), first[ok])), shape=(n, n))
    _, labels = connected_components(adj, directed=False)
    labels = relabel_by_first(labels)
    levels = [labels]
    a, b, wsum = graph.edges()
    count = np.ones_like(wsum)
    a, b, wsum, count = _contract(a, b, wsum, count, labels, int(labels.max()) + 1)
    while len(levels) < max_levels:
        m = int(levels[-1].max()) + 1
        if m <= 1 or not len(a):
            break
        best, _ = _best_neighbours(a, b, wsum / count, m)
        has = best >= 0
        adj = sp.coo_matrix((np.ones(int(has.sum())), (np.flatnonzero(has), best[has])), shape=(m, m))
        _, merged = connected_components(adj, directed=False)
        merged = relabel_by_first(merged)
        if merged.max() + 1 == m:
            break
        levels.append(merged[levels[-1]])
        a, b, wsum, count = _contract(a, b, wsum, count, merged, int(merged.max()) + 1)
    return levels


# --------------------------------------------------------------------------- choosing the cut


@njit(cache=True, nogil=True)
def _pair_counts_along(n, ca, cb, labels, n_labels, group_end):  # pragma: no cover - compiled
    """Join the merges in order (leaves ``ca``, ``cb``) and, after each group of merges ending
    at ``group_end``, count the predicted pairs, the same-label predicted pairs and the
    clusters. Each cluster keeps its label counts in one table keyed (root, label); a join
    walks the smaller cluster's labels (small into large: O(n log n) lookups in all)."""
    parent = np.arange(n)
    size = np.ones(n, dtype=np.int64)
    counts = Dict.empty(types.int64, types.int64)
    # each cluster's distinct labels as a linked list of entries (entry i starts as leaf i's label)
    head = np.arange(n)
    nxt = np.full(n, -1, dtype=np.int64)
    entry_label = labels.copy()
    n_distinct = np.ones(n, dtype=np.int64)
    for i in range(n):
        counts[i * n_labels + labels[i]] = 1
    out_tp = np.zeros(len(group_end))
    out_pp = np.zeros(len(group_end))
    out_clusters = np.zeros(len(group_end), dtype=np.int64)
    tp = 0.0
    pp = 0.0
    clusters = n
    g = 0
    for m in range(len(ca)):
        ra = ca[m]
        while parent[ra] != ra:
            parent[ra] = parent[parent[ra]]
            ra = parent[ra]
        rb = cb[m]
        while parent[rb] != rb:
            parent[rb] = parent[parent[rb]]
            rb = parent[rb]
        if ra != rb:
            if n_distinct[ra] < n_distinct[rb]:
                ra, rb = rb, ra
            e = head[rb]
            while e >= 0:
                following = nxt[e]
                lab = entry_label[e]
                key = rb * n_labels + lab
                c = counts[key]
                del counts[key]
                key = ra * n_labels + lab
                have = counts.get(key, 0)
                tp += float(c) * have
                if have == 0:
                    nxt[e] = head[ra]
                    head[ra] = e
                    n_distinct[ra] += 1
                counts[key] = have + c
                e = following
            head[rb] = -1
            pp += float(size[ra]) * size[rb]
            size[ra] += size[rb]
            parent[rb] = ra
            clusters -= 1
        while g < len(group_end) and group_end[g] == m:
            out_tp[g] = tp
            out_pp[g] = pp
            out_clusters[g] = clusters
            g += 1
    return out_tp, out_pp, out_clusters


def pairwise_f_curve(dendrogram: Dendrogram, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise F against ``labels`` of the cut at every height of the dendrogram, exactly, in
    one pass over the merges (no cut made).

    Returns (thresholds descending, pairwise F, n_clusters): the cut at ``thresholds[i]``
    (:meth:`Dendrogram.cut`) joins every merge at or above it.
    """
    labels = label_codes(np.asarray(labels), dendrogram.n_samples)
    h = dendrogram.monotone_similarity
    finite = np.flatnonzero(np.isfinite(h))
    order = finite[np.argsort(-h[finite], kind="stable")]
    if not len(order):
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    heights = h[order]
    # a cut takes every merge of its height: the groups end where the height changes
    group_end = np.r_[np.flatnonzero(heights[1:] != heights[:-1]), len(heights) - 1].astype(np.int64)
    leaf = dendrogram._leaves
    n_labels = int(labels.max()) + 1
    tp, pred_pairs, clusters = _pair_counts_along(dendrogram.n_samples, leaf[dendrogram.children[order, 0]],
                                                  leaf[dendrogram.children[order, 1]], labels.astype(np.int64),
                                                  n_labels, group_end)
    sizes = np.bincount(labels).astype(np.float64)
    true_pairs = float((sizes * (sizes - 1) / 2).sum())
    precision = np.divide(tp, pred_pairs, out=np.ones_like(tp), where=pred_pairs > 0)
    recall = tp / true_pairs if true_pairs else np.ones_like(tp)
    denominator = precision + recall
    f = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return heights[group_end], f, clusters


def choose_threshold(dendrogram: Dendrogram, labels: np.ndarray, *, n_candidates: int = 32) -> tuple[float, list]:
    """The cut that best agrees (pairwise F) with given, mostly right labels.

    Coarse to fine: ``n_candidates`` quantiles of the merge heights, then as many again between
    the best one's neighbours; each candidate's F is read off the exact curve
    (:func:`pairwise_f_curve`, one pass over the merges). The search stays coarse on purpose:
    the curve is flat near its top, and its exact maximum lies by a hair (under 0.001 in F)
    at much lower cuts on the long-tailed real sets, where the bigger clusters then backed
    false merges (one to three more a set in two of ten protocol draws). Returns the best
    threshold and the curve [(threshold, pairwise F, n_clusters), ...] sorted by threshold.
    """
    thresholds, f, clusters = pairwise_f_curve(dendrogram, labels)
    if not len(thresholds):
        return float("inf"), []
    heights, f, clusters = thresholds[::-1], f[::-1], clusters[::-1]  # ascending
    scored: dict[float, tuple[float, int]] = {}

    def evaluate(cands):
        # the cut at t joins the merges at or above t: the curve's value at the first height >= t
        at = np.searchsorted(heights, cands, side="left")
        for t, i in zip(cands, at):
            scored.setdefault(float(t), (float(f[i]), int(clusters[i])) if i < len(heights) else
                              (pairwise_scores(labels, np.arange(dendrogram.n_samples))["f"], dendrogram.n_samples))

    coarse = np.unique(np.quantile(heights, np.linspace(0.0, 1.0, n_candidates)))
    evaluate(coarse)
    best = max(scored, key=lambda t: (scored[t][0], t))
    i = int(np.searchsorted(coarse, best))
    lo, hi = coarse[max(i - 1, 0)], coarse[min(i + 1, len(coarse) - 1)]
    inside = heights[(heights >= lo) & (heights <= hi)]
    if len(inside):
        evaluate(np.unique(np.quantile(inside, np.linspace(0.0, 1.0, n_candidates))))
    best = max(scored, key=lambda t: (scored[t][0], t))
    curve = [(t, fv, c) for t, (fv, c) in sorted(scored.items())]
    return best, curve


def choose_level(levels: list[np.ndarray], labels: np.ndarray | None = None,
                 level: int | None = None) -> tuple[int, str]:
    """Which FINCH partition to use: ``level`` when given (clamped to the coarsest), else the
    one that best agrees (pairwise F) with ``labels``, else the finest. Returns (level, source)."""
    if level is not None:
        if int(level) > len(levels) - 1:  # how many levels a set has is known only once they are built
            return len(levels) - 1, f"user asked for level {int(level)}: the coarsest of this set's {len(levels)}"
        return int(level), "user"
    if labels is not None:
        return int(np.argmax([pairwise_scores(labels, p)["f"] for p in levels])), \
            "best pairwise F against the given labels"
    return 0, "finest (no labels)"


def choose_cut(dendrogram: Dendrogram, labels: np.ndarray | None = None, *, threshold: float | None = None,
               calibration: Calibration | None = None, n_candidates: int = 32) -> tuple[float, dict]:
    """The average-linkage cut, decided in one place.

    ``threshold`` when given; else the cut that best agrees with ``labels``
    (:func:`choose_threshold`); else where the unlabelled calibration (a two-component
    mixture of the kNN similarities) puts same-person and different-person edges at equal
    odds. Returns the threshold and a report (its source, and the curve or the mixture).
    """
    if threshold is not None:
        return float(threshold), {"threshold_source": "user"}
    if labels is not None:
        t, curve = choose_threshold(dendrogram, labels, n_candidates=n_candidates)
        return t, {"threshold_source": "best pairwise F against the given labels",
                   "threshold_curve": [{"threshold": round(a, 5), "pairwise_f": round(b, 5), "n_clusters": c}
                                       for a, b, c in curve]}
    if calibration is None or calibration.kind == "isotonic":
        raise ValueError("an unlabelled cut needs the unlabelled calibration (fit_calibration(graph))")
    return calibration.equal_odds_similarity(), {"threshold_source": "two-component mixture of kNN similarities "
                                                                     "(equal odds)",
                                                 "mixture": calibration.summary(np.zeros(0))}


def unsupervised_threshold(graph: KnnGraph, *, calibration: Calibration | None = None,
                           rng: np.random.Generator | None = None) -> tuple[float, dict]:
    """A cut for unlabelled faces: where same-person and different-person kNN edges are equally likely.

    A two-component Gaussian mixture on the kNN edge similarities (:mod:`facecluster.calibration`):
    the upper component is same-person edges, the lower different-person edges; the
    threshold is the similarity between their means where the posterior is 1/2.
    """
    calibration = calibration or fit_calibration(graph, None, rng=rng)
    return calibration.equal_odds_similarity(), calibration.summary(np.zeros(0))


# --------------------------------------------------------------------------- the stage

# Average linkage stops merging where the calibrated P(same person) of the link is under this:
# odds of 1 to 9. The cuts chosen sit far above it: at P(same) 0.91-0.93 from the labels and
# 0.5 (equal odds) without, on 100k synthetic rows, whatever the floor.
MERGE_FLOOR = 0.1


@dataclass(frozen=True)
class HierarchicalConfig:
    """Settings of the hierarchical stage.

    method : "average" (graph average linkage) or "finch"
    threshold : average-linkage cut (cosine in the processed space); None = from the labels
        when given, else from the data (equal odds under the unlabelled calibration)
    level : FINCH level (0 = finest); None = best agreement with the labels, else finest
    n_candidates : cuts tried per pass when the cut is chosen from labels
    """

    method: str = "average"
    threshold: float | None = None
    level: int | None = None
    n_candidates: int = 32

    def __post_init__(self):
        if self.method not in ("average", "finch"):
            raise ValueError(f"hierarchical method must be average or finch, got {self.method!r}")
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:  # NaN too
            raise ValueError(f"threshold must be a cosine in [-1, 1], got {self.threshold!r}")
        if self.level is not None and (not is_whole(self.level) or self.level < 0):
            raise ValueError(f"level must be a whole number >= 0, got {self.level!r}")
        if self.n_candidates < 2:
            raise ValueError(f"n_candidates must be at least 2, got {self.n_candidates}")


def hierarchical_stage(graph: KnnGraph, labels: np.ndarray | None = None, config: HierarchicalConfig | None = None,
                       *, calibration: Calibration | None = None,
                       rng: np.random.Generator | None = None) -> Partition:
    """The hierarchical stage as ``clean``, ``cluster`` and the estimators run it.

    Parameters
    ----------
    graph : KnnGraph
    labels : (n_samples,) int label codes, or None (unlabelled faces)
    config : HierarchicalConfig
    calibration : the run's shared calibration; needed only for an unlabelled average-linkage
        cut, and fitted here (unlabelled mixture) when not given
    rng : numpy Generator for that fit

    Returns
    -------
    Partition
        ``labels`` the chosen cut or level; ``detail`` the Dendrogram (average) or the list
        of FINCH levels; ``stats`` how the cut was chosen. The average-linkage dendrogram
        stops at ``stats["merge_floor"]`` (the user's threshold, else where P(same person)
        falls under :data:`MERGE_FLOOR`): a cut below it gives the partition at the floor.
    """
    config = config or HierarchicalConfig()
    labels = None if labels is None else np.asarray(labels)
    if config.method == "finch":
        levels = finch(graph)
        level, source = choose_level(levels, labels, config.level)
        stats = {"method": "finch", "level": level, "level_source": source,
                 "clusters_per_level": [int(p.max()) + 1 for p in levels], "n_clusters": int(levels[level].max()) + 1}
        if labels is not None:
            stats.update(agreement_report(levels[level], labels))
        return Partition(levels[level], stats, levels)
    if config.threshold is None and calibration is None:
        calibration = fit_calibration(graph, labels, rng=rng)
    # Merging stops where no cut could be wanted: at the user's cut, else where the
    # calibrated P(same person) of the average link falls under MERGE_FLOOR. The rounds below
    # join different people's clusters a few pairs at a time; each costs a pass over the edges
    # (at 1M rows: 2,128 rounds and 129 s with the floor; without it, over 10 minutes).
    floor = config.threshold if config.threshold is not None else calibration.similarity_at(MERGE_FLOOR)
    floor = float(floor) if np.isfinite(floor) else -np.inf
    dendrogram = average_linkage(graph, threshold=floor)
    threshold, report = choose_cut(dendrogram, labels, threshold=config.threshold, calibration=calibration,
                                   n_candidates=config.n_candidates)
    part = dendrogram.cut(threshold)
    stats = {"method": "average", "threshold": threshold, **report, "merge_floor": float(floor), "rounds": dendrogram.rounds,
             "merges": dendrogram.n_merges, "inversions": dendrogram.stats["inversions"],
             "n_clusters": int(part.max()) + 1}
    if labels is not None:
        stats.update(agreement_report(part, labels))
    return Partition(part, stats, dendrogram)


# --------------------------------------------------------------------------- estimators


def _check_common(est) -> None:
    if not (isinstance(est.k, (int, np.integer)) and est.k >= 1):
        raise ValueError(f"k must be a positive integer, got {est.k!r}")
    if est.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {est.device!r}")


def _fit_input(est, X, y):
    """The graph (built from vectors when needed) and the labels as an int array, checked."""
    graph = graph_from_vectors(X, est.k, device=est.device, seed=est.seed)
    if not isinstance(X, KnnGraph):
        est.n_features_in_ = int(np.shape(X)[1])  # scikit-learn's convention (validated above)
    elif hasattr(est, "n_features_in_"):
        del est.n_features_in_  # refitted on a graph: no vectors, no dimension
    return graph, None if y is None else label_codes(y, graph.n_samples)


class GraphAverageLinkage(ClusterMixin, BaseEstimator):
    """Average-linkage agglomerative clustering on a kNN graph (scikit-learn estimator).

    Parameters
    ----------
    threshold : float or None
        Cut at this average cosine similarity. None: chosen from ``y`` (the cut that best
        agrees with the labels) when ``fit`` is given labels, else from the data
        (:func:`unsupervised_threshold`).
    k : int
        Neighbours per sample when ``fit`` is given vectors.
    device : "auto", "cpu" or "cuda" for the kNN search.
    seed : int

    Attributes
    ----------
    labels_ : (n_samples,) int64 cluster id per sample
    n_features_in_ : the vectors' dimension (not set when fitted on a KnnGraph)
    children_ : (n_merges, 2) merged nodes (samples < n_samples), scikit-learn's convention
    similarities_ : (n_merges,) merge similarities
    distances_ : (n_merges,) 1 − similarities_
    threshold_ : the cut used; threshold_curve_ : [(threshold, pairwise F, n_clusters)] when chosen from labels
    dendrogram_ : Dendrogram; merging stopped at ``stats_["merge_floor"]`` (the threshold
        given, else where the calibrated P(same person) falls under :data:`MERGE_FLOOR`), so
        ``children_`` ends there and a cut below it gives the partition at the floor
    stats_ : dict, how the cut was chosen

    Examples
    --------
    >>> from facecluster.synth import make_faces
    >>> X, y = make_faces(300, 20, 32, seed=0)
    >>> GraphAverageLinkage(threshold=0.3, k=10).fit_predict(X).shape
    (300,)
    """

    def __init__(self, threshold: float | None = None, k: int = 30, device: str = "auto", seed: int = 0):
        self.threshold = threshold
        self.k = k
        self.device = device
        self.seed = seed

    def fit(self, X, y=None):
        """Build (or take) the kNN graph, agglomerate, and cut.

        Parameters
        ----------
        X : array of shape (n_samples, n_features) or KnnGraph
            Raw face embeddings (normalised, and centred when the data say so) or a graph.
        y : array of shape (n_samples,), optional
            Identity labels, mostly right; they choose the cut when ``threshold`` is None.

        Returns
        -------
        self
        """
        _check_common(self)
        config = HierarchicalConfig(threshold=None if self.threshold is None else float(self.threshold))
        graph, codes = _fit_input(self, X, y)
        part = hierarchical_stage(graph, codes, config,
                                  rng=np.random.default_rng(self.seed))
        self.dendrogram_ = part.detail
        self.stats_ = part.stats
        self.threshold_ = part.stats["threshold"]
        self.threshold_curve_ = [(c["threshold"], c["pairwise_f"], c["n_clusters"])
                                 for c in part.stats.get("threshold_curve", [])]
        self.labels_ = part.labels
        self.children_ = self.dendrogram_.children
        self.similarities_ = self.dendrogram_.similarity
        self.distances_ = 1.0 - self.similarities_
        return self


class FINCH(ClusterMixin, BaseEstimator):
    """FINCH first-neighbour clustering on a kNN graph (scikit-learn estimator).

    Parameters
    ----------
    level : int or None
        Which partition to return as ``labels_`` (0 = finest). None: the level that best
        agrees (pairwise F) with ``y`` when given, else the finest level.
    k, device, seed : as in :class:`GraphAverageLinkage`

    Attributes
    ----------
    partitions_ : list of (n_samples,) arrays, finest first
    n_clusters_ : clusters per level
    labels_ : the chosen level's partition; level_ : its index
    n_features_in_ : the vectors' dimension (not set when fitted on a KnnGraph)
    """

    def __init__(self, level: int | None = None, k: int = 30, device: str = "auto", seed: int = 0):
        self.level = level
        self.k = k
        self.device = device
        self.seed = seed

    def fit(self, X, y=None):
        """Build (or take) the kNN graph, compute every FINCH level, and pick one.

        Parameters
        ----------
        X : array of shape (n_samples, n_features) or KnnGraph
        y : array of shape (n_samples,), optional; picks the level when ``level`` is None

        Returns
        -------
        self
        """
        _check_common(self)
        if self.level is not None and not isinstance(self.level, (int, np.integer)):
            raise ValueError(f"level must be a non-negative integer, got {self.level!r}")
        config = HierarchicalConfig(method="finch", level=self.level)
        graph, codes = _fit_input(self, X, y)
        part = hierarchical_stage(graph, codes, config)
        self.partitions_ = part.detail
        self.n_clusters_ = part.stats["clusters_per_level"]
        self.level_ = part.stats["level"]
        self.labels_ = self.partitions_[self.level_]
        return self
