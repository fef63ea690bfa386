"""The kNN graph every stage works on: FAISS inner-product search over L2-normalised vectors.

Exact (flat) search up to ``exact_max`` samples, IVF above it (4-bit PQ fast-scan codes
shortlist candidates that are re-ranked on the full vectors, the lists scanned and the
shortlist's length tuned on sampled queries; then rounds of neighbour-of-neighbour refinement,
NN-descent's join, until the recall of the edges that matter reaches a target on those queries;
HNSW on request), recall measured on an independent sample; queries in chunks; faiss-gpu or torch CUDA when present; the result
cached on disk under a fingerprint of its inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numba import njit

from .device import Device, query_chunk_rows, resolve_device
from .errors import is_whole
from .progress import NullProgress, Progress

GRAPH_FORMAT_VERSION = 5  # 2: IVF shortlists on PQ fast-scan codes, re-ranked exactly; 3: float64 rescore; 4: IVF refined; 5: exact k-th place
# Above this many rows `auto` builds the refined IVF graph: measured on the 512-d synthetic
# family, 2 cores, it took 3.7 s against exact's 5.9 at 30k rows, 9.9 against 23.3 at 61k and
# 22.7 against 61.4 at 102k, where every cleaning figure stayed within 0.002 of the exact
# graph's (one merge suggestion of 70 aside); up to here exact search costs a minute at most.
EXACT_MAX = 100_000
# Exact search returns this many neighbours more than k; all are rescored and the k best kept by
# (−cosine, row), so the k-th place is decided by the one fixed summation, ties by row number,
# not by a search's float32 order (which differs between a single search, blocks on Dask, a GPU).
EXACT_MARGIN = 8
# The IVF search only seeds the graph; refinement (:func:`refine_graph`) finds most of what it
# missed (1M rows: 89% in one round, 93% in two). The IVF is tuned to miss at most this many
# times the edges the whole build may miss.
REFINE_SEED_SLACK = 10.0
# IVF is kept only when the lists it must scan are at most 1/IVF_MAX_PROBE_SHARE of all lists.
IVF_MAX_PROBE_SHARE = 8
# An IVF graph short of its recall target is kept only when a query's work (:func:`_ivf_work`)
# is at most 1/IVF_MIN_SPEEDUP of exact search's; counted, not timed, so the choice is the same
# on a loaded machine.
IVF_MIN_SPEEDUP = 8.0
# Fewest rows an IVF graph is built for (asked for on fewer, the graph is exact): 39 training
# rows for each of the 16 centroids of a 4-bit sub-quantizer's codebook.
IVF_MIN_ROWS = 39 * 16


def _ivf_work(n: int, d: int, nlist: int, nprobe: int, shortlist: int) -> float:
    """Rough work of one IVF query in exact-search units (one d-dim dot product = d): the
    coarse quantiser, the 4-bit codes scanned (about d/4 each), and the re-rank's full-vector
    reads (random, counted 4x). Exact search's is n·d. The ratio measured at 1M rows
    (153 µs against about 7 ms a query) was 4x under this model's: hence the margin."""
    return nlist * d + nprobe * (n / max(nlist, 1)) * d / 4 + shortlist * d * 4


@dataclass(frozen=True)
class KnnGraph:
    """k nearest neighbours of every sample, self excluded, most similar first.

    Attributes
    ----------
    indices : ndarray of shape (n_samples, k), int32
        Neighbour row numbers; -1 where the index returned fewer than k results. int32 keeps
        the graph at n·k·8 bytes with the similarities (sets beyond 2³¹ rows are refused).
    sims : ndarray of shape (n_samples, k), float32
        Cosine similarities, non-increasing along each row; -inf where ``indices`` is -1.
    info : dict
        How it was built (method, device, recall, timings), for the report.
    """

    indices: np.ndarray
    sims: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def to_csr(self, symmetric: bool = False) -> sp.csr_matrix:
        """Sparse (n, n) similarity matrix of the kNN edges.

        With ``symmetric=True`` an edge found in either direction is kept in both, with the
        larger similarity (they are equal except for approximate search).
        """
        n, k = self.indices.shape
        if symmetric:  # from the undirected edges: a maximum against the transpose would read a
            # pair listed one way as 0 the other way, and lose it when its similarity is <= 0
            a, b, s = self.edges()
            return sp.csr_matrix((np.concatenate([s, s]).astype(np.float32), (np.concatenate([a, b]),
                                                                              np.concatenate([b, a]))), shape=(n, n))
        valid = self.indices >= 0
        rows = np.repeat(np.arange(n, dtype=np.int64), k)[valid.ravel()]
        cols = self.indices[valid]
        vals = self.sims[valid].astype(np.float32)
        return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undirected edges, each once (a < b), ordered by (a, b), with their similarity: every
        pair listed in either direction, whatever the sign of its similarity (two compiled
        counting sorts: at 1M rows × k = 30, 3.3 s and 1.0 GB of temporaries against 7.8 s and
        1.4 GB through scipy.sparse, which also lost a pair listed one way with similarity <= 0).

        Returns
        -------
        a, b : ndarray of shape (n_edges,), int64
        sims : ndarray of shape (n_edges,), float64 (the larger of the two directions)
        """
        start, other, value, kept = _edge_buckets(self.indices, self.sims)
        # the arrays the stages keep are allocated by numpy, like every other array they read
        a = np.empty(kept[-1], dtype=np.int64)
        b = np.empty(kept[-1], dtype=np.int64)
        s = np.empty(kept[-1], dtype=np.float64)
        _fill_edges(start, other, value, kept, a, b, s)
        return a, b, s

    def save(self, path: str | Path, fingerprint: str | None = None) -> None:
        """Write atomically to ``path`` (.npz) with the fingerprint of its inputs
        (default: the one :func:`build_knn_graph` put in ``info["fingerprint"]``)."""
        fingerprint = fingerprint or self.info.get("fingerprint")
        if not fingerprint:
            raise ValueError("no fingerprint: pass one, or save a graph made by build_knn_graph")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # the pid in the name lets a later run tell a dead run's leftover from a live one's
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-knn-{os.getpid()}-", suffix=".npz")
        os.close(fd)
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, indices=self.indices, sims=self.sims,
                         fingerprint=np.array(fingerprint), info=np.array(json.dumps(self.info)))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None, *, n_samples: int | None = None,
             k: int | None = None) -> KnnGraph | None:
        """Load a saved graph; None when missing, unreadable, of another fingerprint, or not
        a valid graph of ``n_samples`` rows × ``k`` neighbours (checked: shapes, dtypes,
        every index in [-1, n_samples) and never the row itself, similarities finite where
        an index is, -inf where none is). A file that fails is rebuilt, never trusted: the
        fingerprint says which inputs the file claims, not that its arrays are sound."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if fingerprint is not None and str(data["fingerprint"]) != fingerprint:
                    return None
                info = json.loads(str(data["info"]))
                graph = cls(indices=data["indices"], sims=data["sims"], info=info)
        except Exception:  # a stale or damaged cache is rebuilt, never trusted
            return None
        return graph if _valid_graph(graph, n_samples, k) else None


@njit(cache=True, nogil=True)
def _edge_buckets(indices, sims):  # pragma: no cover - compiled
    """Every pair listed in either direction, in the bucket of its smaller end (bucket i at
    ``start[i]``), sorted by the larger end within it, its repeats folded into the bucket's
    first ``kept[i + 1] - kept[i]`` entries with the larger of the similarities (the two
    directions', or a pair listed twice in one row). Two stable counting sorts, by the
    larger end and then by the smaller (a radix sort on the pair): no comparison sort."""
    n, k = indices.shape
    count_hi = np.zeros(n + 1, dtype=np.int64)
    start = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        for r in range(k):
            j = indices[i, r]
            if j >= 0 and j != i:
                count_hi[max(i, j) + 1] += 1
                start[min(i, j) + 1] += 1
    for i in range(n):
        count_hi[i + 1] += count_hi[i]
        start[i + 1] += start[i]
    m = start[n]
    # pass 1: each listed pair's smaller end and similarity, in buckets of its larger end
    at_hi = count_hi[:n].copy()
    lo_by_hi = np.empty(m, dtype=np.int64)
    sim_by_hi = np.empty(m, dtype=np.float32)
    for i in range(n):
        for r in range(k):
            j = indices[i, r]
            if j >= 0 and j != i:
                h = max(i, j)
                lo_by_hi[at_hi[h]] = min(i, j)
                sim_by_hi[at_hi[h]] = sims[i, r]
                at_hi[h] += 1
    # pass 2, stable: the larger ends in order into the buckets of the smaller ends, so each
    # bucket comes out sorted
    other = np.empty(m, dtype=np.int64)
    value = np.empty(m, dtype=np.float32)
    fill = start[:n].copy()
    for h in range(n):
        for p in range(count_hi[h], count_hi[h + 1]):
            lo = lo_by_hi[p]
            other[fill[lo]] = h
            value[fill[lo]] = sim_by_hi[p]
            fill[lo] += 1
    kept = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        lo, hi = start[i], start[i + 1]
        q = 0
        for p in range(lo, hi):
            if q > 0 and other[p] == other[lo + q - 1]:
                if value[p] > value[lo + q - 1]:
                    value[lo + q - 1] = value[p]
            else:
                other[lo + q] = other[p]
                value[lo + q] = value[p]
                q += 1
        kept[i + 1] = kept[i] + q
    return start, other, value, kept


@njit(cache=True, nogil=True)
def _fill_edges(start, other, value, kept, a, b, s):  # pragma: no cover - compiled
    """(a, b, sim) of :func:`_edge_buckets`' kept entries, in (a, b) order."""
    for i in range(len(kept) - 1):
        lo = start[i]
        for q in range(kept[i + 1] - kept[i]):
            a[kept[i] + q] = i
            b[kept[i] + q] = other[lo + q]
            s[kept[i] + q] = value[lo + q]


#: how far a row's norm may be from 1 in :func:`build_knn_graph` (float32 rounding of a
#: normalised 4096-d row is under 1e-6; a raw, unnormalised row is off by far more)
UNIT_TOLERANCE = 1e-3


def check_unit_rows(x: np.ndarray, chunk: int = 1 << 16) -> None:
    """Refuse vectors that are not finite unit rows: inner products of other vectors are not
    cosines, and every similarity threshold downstream would read them as such."""
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        bad = ~(np.abs(norms - 1.0) <= UNIT_TOLERANCE)  # NaN and inf norms too
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            what = ("is not finite" if not np.isfinite(block[r]).all()
                    else f"has norm {norms[r]:.6g}, not 1")
            raise ValueError(f"row {start + r + 1} of x {what}: build_knn_graph takes L2-normalised "
                             "rows (facecluster.prepare_embeddings or graph_from_vectors make them)")


def check_graph(graph: KnnGraph, n_samples: int | None = None) -> None:
    """Refuse a :class:`KnnGraph` that breaks its invariants, with the one it breaks: the
    stages index arrays by its neighbours, so one out of range is memory read or written
    out of bounds, and a row listed as its own neighbour reads as a perfect match."""
    from .errors import InputError

    idx, sims = np.asarray(graph.indices), np.asarray(graph.sims)

    def refuse(message: str, row: int | None = None) -> None:
        raise InputError("<KnnGraph>", message, row=row)

    if idx.ndim != 2 or sims.shape != idx.shape:
        refuse(f"indices and sims must be 2-D arrays of one shape, got {idx.shape} and {sims.shape}")
    if idx.dtype.kind not in "iu":
        refuse(f"indices must be integers, got {idx.dtype}")
    n = idx.shape[0]
    if n_samples is not None and n != n_samples:
        refuse(f"the graph has {n} rows, the labels {n_samples}")
    if not idx.size:
        return
    out = (idx < -1) | (idx >= n)
    if out.any():
        r = int(np.flatnonzero(out.any(axis=1))[0])
        refuse(f"neighbour {int(idx[r][out[r]][0])} is out of range for {n} rows (-1 marks a missing one)", r + 1)
    own = idx == np.arange(n)[:, None]
    if own.any():
        r = int(np.flatnonzero(own.any(axis=1))[0])
        refuse("lists itself as its own neighbour (the graph excludes self; facecluster.knn.drop_self)", r + 1)
    valid = idx >= 0
    bad = valid & ~np.isfinite(sims)
    if bad.any():
        refuse("a neighbour's similarity is not finite", int(np.flatnonzero(bad.any(axis=1))[0]) + 1)


def _valid_graph(graph: KnnGraph, n_samples: int | None, k: int | None) -> bool:
    idx, sims = graph.indices, graph.sims
    if not isinstance(graph.info, dict) or idx.ndim != 2 or sims.shape != idx.shape:
        return False
    if idx.dtype.kind != "i" or sims.dtype != np.float32:
        return False
    n, kk = idx.shape
    if (n_samples is not None and n != n_samples) or (k is not None and kk != k):
        return False
    if idx.size and (idx.min() < -1 or idx.max() >= n or (idx == np.arange(n)[:, None]).any()):
        return False
    valid = idx >= 0
    return bool(np.isfinite(sims[valid]).all() and np.isneginf(sims[~valid]).all())


def graph_fingerprint(x: np.ndarray, **params) -> str:
    """Hash of the vectors (bytes, shape) and every parameter that changes the graph."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"v": GRAPH_FORMAT_VERSION, "shape": list(x.shape), **params},
                        sort_keys=True, default=str).encode())
    flat = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    step = 1 << 26
    for start in range(0, flat.size, step):
        h.update(flat[start:start + step])
    return h.hexdigest()


# --------------------------------------------------------------------------- search backends


def drop_self(idx: np.ndarray, sim: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 results per query, remove the query itself (or, if absent, the last one).

    ``rows`` holds each query's own row number. The query can be absent from its own list
    when exact duplicates tie with it or an approximate index missed it.
    """
    is_self = idx == np.asarray(rows)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    # A stable sort moves the one flagged entry per row to the end, keeping the order of the rest.
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(sim, order, axis=1)


def _search_index(index, x: np.ndarray, k: int, progress: Progress, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Query every row of ``x`` against ``index`` in chunks; ``index=None`` is exact search
    straight over ``x`` (faiss.knn: no copy of the vectors into an index)."""
    import faiss

    n, d = x.shape
    chunk = query_chunk_rows(d, k + 1)
    indices = np.empty((n, k), dtype=np.int32)
    sims = np.empty((n, k), dtype=np.float32)
    with progress.task(label, total=n) as advance:
        for start in range(0, n, chunk):
            q = x[start:start + chunk]
            if index is None:
                s, i = faiss.knn(q, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
            else:
                s, i = index.search(q, k + 1)
            i, s = drop_self(i, s, np.arange(start, start + len(q)), k)
            indices[start:start + len(q)] = i
            sims[start:start + len(q)] = s
            advance(len(q))
    return indices, sims


def _knn_torch(x: np.ndarray, k: int, device: str, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN by blocked matmul + topk in torch (used on CUDA when faiss-gpu is absent).

    A chunk of queries' similarities to every row is one (chunk, n) float32 block; on CUDA the
    chunk takes up to a quarter of the memory free at the start (at most 4 GiB), so a 1M-row set
    runs in about a thousand launches rather than tens of thousands.
    """
    import torch

    n, d = x.shape
    dev = torch.device(device)
    base = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
    budget = 1 << 28
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        budget = int(min(free // 4, 1 << 32))
    chunk = int(max(256, min(1 << 16, budget // (4 * max(n, 1)))))
    indices = np.empty((n, k), dtype=np.int32)
    sims = np.empty((n, k), dtype=np.float32)
    with progress.task("kNN search (torch)", total=n) as advance, torch.no_grad():
        for start in range(0, n, chunk):
            q = base[start:start + chunk]
            s, i = torch.topk(q @ base.T, k + 1, dim=1, largest=True, sorted=True)
            i, s = drop_self(i.cpu().numpy(), s.float().cpu().numpy(), np.arange(start, start + len(q)), k)
            indices[start:start + len(q)] = i
            sims[start:start + len(q)] = s
            advance(len(q))
    return indices, sims


@njit(cache=True, nogil=True, inline="always")
def _dot64(x, r, c):  # pragma: no cover - compiled
    """Dot product of rows ``r`` and ``c`` of ``x`` summed in float64 over eight fixed lanes (a
    float32 product is exact in float64, so a fused multiply-add gives the same bits), rounded
    to float32: the one definition of an edge's cosine (:func:`rescore`, :func:`refine_graph`)."""
    d = x.shape[1]
    d8 = d - d % 8
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    for t in range(0, d8, 8):
        a0 += np.float64(x[r, t]) * np.float64(x[c, t])
        a1 += np.float64(x[r, t + 1]) * np.float64(x[c, t + 1])
        a2 += np.float64(x[r, t + 2]) * np.float64(x[c, t + 2])
        a3 += np.float64(x[r, t + 3]) * np.float64(x[c, t + 3])
        a4 += np.float64(x[r, t + 4]) * np.float64(x[c, t + 4])
        a5 += np.float64(x[r, t + 5]) * np.float64(x[c, t + 5])
        a6 += np.float64(x[r, t + 6]) * np.float64(x[c, t + 6])
        a7 += np.float64(x[r, t + 7]) * np.float64(x[c, t + 7])
    tail = 0.0
    for t in range(d8, d):
        tail += np.float64(x[r, t]) * np.float64(x[c, t])
    return np.float32(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + tail)


@njit(cache=True, nogil=True)
def _rescore_rows(x, indices, lo, hi, out_idx, out_sim):  # pragma: no cover - compiled
    """Rows lo..hi of :func:`rescore`: each edge's cosine by :func:`_dot64`, then the row
    insertion-sorted by (−cosine, index), −1s last."""
    k = indices.shape[1]
    big = np.iinfo(np.int64).max
    sim = np.empty(k, np.float32)
    key = np.empty(k, np.int64)
    for r in range(lo, hi):
        for j in range(k):
            c = indices[r, j]
            if c < 0:
                sim[j] = -np.inf
                key[j] = big
                continue
            sim[j] = _dot64(x, r, c)
            key[j] = c
        for j in range(1, k):  # insertion sort: k is small
            s, c = sim[j], key[j]
            m = j - 1
            while m >= 0 and (sim[m] < s or (sim[m] == s and key[m] > c)):
                sim[m + 1] = sim[m]
                key[m + 1] = key[m]
                m -= 1
            sim[m + 1] = s
            key[m + 1] = c
        for j in range(k):
            out_sim[r, j] = sim[j]
            out_idx[r, j] = -1 if key[j] == big else key[j]


# Neighbours each face is averaged with by :func:`smoothed_graph`, where its calibrated
# P(same person) is at least 1/2. Measured with labels hidden on the dlib geometry (docs/
# benchmarks.md, issue 16): on 4.6k–5k-row sets 1 to 5 all help, but at 100k rows (6.7k
# identities, more strangers near every face) pairwise F went 0.922 -> 0.935 with 1, 0.923
# with 2, 0.911 with 3 and 0.899 with 5. The nearest likely-same neighbour alone is the
# choice that held at every size.
SMOOTH_NEIGHBOURS = 1


def smoothed_graph(x: np.ndarray, graph: KnnGraph, p_same: np.ndarray,
                   neighbours: int = SMOOTH_NEIGHBOURS) -> KnnGraph:
    """The same neighbour lists, valued by faces averaged with their likely-same neighbours.

    Each unit vector gets its first ``neighbours`` neighbours added, weighted by their P(same
    person) (``p_same``, the shape of ``graph.indices``; only edges where it is at least 1/2),
    then is normalised again, and every edge of ``graph`` is rescored (:func:`rescore`) with
    these vectors. A face's noise averages out against its own person's photos, so an
    identity's fragments come closer. The lists are kept, so the shared-neighbour evidence of
    the graph is unchanged. Costs N·k dot products, no new search.
    """
    m = min(int(neighbours), graph.k)
    idx = graph.indices[:, :m]
    weight = np.where((idx >= 0) & (p_same[:, :m] >= 0.5), p_same[:, :m], 0.0).astype(np.float32)
    smoothed = np.array(x, dtype=np.float32, copy=True)
    step = query_chunk_rows(x.shape[1], m)
    for lo in range(0, len(x), step):  # a block of rows at a time: no (N, m, D) array
        hi = min(lo + step, len(x))
        block = smoothed[lo:hi]
        for j in range(m):
            block += weight[lo:hi, j:j + 1] * x[np.maximum(idx[lo:hi, j], 0)]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    indices, sims = rescore(smoothed, graph.indices)
    return KnnGraph(indices, sims, dict(graph.info, smoothed_neighbours=m))


def rescore(x: np.ndarray, indices: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Each found edge's cosine recomputed by one fixed summation, rows re-sorted by (−cosine,
    neighbour index); missing neighbours (−1) last, at −inf.

    BLAS, FAISS and torch sum a dot product in an order that depends on the thread count, the
    block sizes and the processor's vector width, so the same edge can differ in the 7th digit
    between two machines, a CPU and a GPU, or two ``OMP_NUM_THREADS``; every threshold derived
    from the similarities (the hierarchical cut, the near-duplicate law) then moves. Here each
    pair is summed in float64 over eight fixed lanes in a fixed order, which IEEE arithmetic
    makes bit-identical everywhere: the graph's values and order depend on the vectors only
    (the neighbour *sets* can still differ at an exact tie for the k-th place). Costs N·k·D
    multiply-adds, a fraction of the search's N²·D, spread over the cores by row blocks.
    """
    from concurrent.futures import ThreadPoolExecutor

    x = np.ascontiguousarray(x, dtype=np.float32)
    indices = np.ascontiguousarray(indices)
    n, _ = indices.shape
    out_idx = np.empty_like(indices)
    out_sim = np.empty(indices.shape, dtype=np.float32)
    blocks = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    workers = max(1, min(len(blocks), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda b: _rescore_rows(x, indices, b[0], b[1], out_idx, out_sim), blocks))
    return out_idx, out_sim


@njit(cache=True, nogil=True, fastmath=True)
def _dot32(x, r, c):  # pragma: no cover - compiled
    """A fast float32 dot product (vectorised in any order): only ever a screen, within
    :data:`SCREEN_TOL` of :func:`_dot64`'s value."""
    s = np.float32(0.0)
    for t in range(x.shape[1]):
        s += x[r, t] * x[c, t]
    return s


# |float32 dot − exact| ≤ d·2⁻²⁴/(1 − d·2⁻²⁴) · Σ|x_t y_t| ≤ 3.1e-5 for unit vectors of up to
# 512 dimensions (Higham, Accuracy and Stability of Numerical Algorithms, §3.1); twice that
# up to 1,024. A candidate whose float32 value is this far under the k-th kept cosine cannot
# enter the list, so the screen never changes the result.
def screen_tolerance(d: int) -> float:
    u = d * 2.0 ** -24
    return 2.0 * u / (1.0 - u) + 1e-6


@njit(cache=True, nogil=True, fastmath=True)
def _dot32x4(x, r, c0, c1, c2, c3, out, at):  # pragma: no cover - compiled
    """:func:`_dot32` of row ``r`` with four rows at once, into out[at:at + 4]: four streams
    of memory in flight instead of one (random rows of a large matrix are latency-bound)."""
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for t in range(x.shape[1]):
        v = x[r, t]
        s0 += v * x[c0, t]
        s1 += v * x[c1, t]
        s2 += v * x[c2, t]
        s3 += v * x[c3, t]
    out[at] = s0
    out[at + 1] = s1
    out[at + 2] = s2
    out[at + 3] = s3


@njit(cache=True)
def _reverse_lists(indices):  # pragma: no cover - compiled
    """CSR of the reversed graph: for each row, the rows whose lists hold it (counting sort,
    ascending row order; −1 entries skipped)."""
    n, k = indices.shape
    ptr = np.zeros(n + 1, np.int64)
    for r in range(n):
        for j in range(k):
            c = indices[r, j]
            if c >= 0:
                ptr[c + 1] += 1
    for r in range(n):
        ptr[r + 1] += ptr[r]
    pos = ptr[:n].copy()
    out = np.empty(ptr[n], np.int32)
    for r in range(n):
        for j in range(k):
            c = indices[r, j]
            if c >= 0:
                out[pos[c]] = r
                pos[c] += 1
    return ptr, out


@njit(cache=True, nogil=True, inline="always")
def _take(c, r, stamp, buf, nc):  # pragma: no cover - compiled
    """Append candidate ``c`` of row ``r`` to ``buf[:nc]`` unless it is −1 or already there."""
    if c >= 0 and stamp[c] != r:
        stamp[c] = r
        buf[nc] = c
        return nc + 1
    return nc


@njit(cache=True, nogil=True)
def _refine_rows(x, indices, rev_ptr, rev_idx, order, lo, hi, out_idx, out_sim, stamp, buf, screen, tol):  # pragma: no cover - compiled
    """Rows lo..hi of one :func:`refine_graph` round: a row's candidates are its own list, its
    neighbours' lists and the rows listing it, each scored once by :func:`_dot64`; the k best by
    (−cosine, index) are kept. A candidate is first screened by :func:`_dot32`: once the list is
    full, one more than ``tol`` under its k-th cosine is skipped without the exact sum.
    ``stamp`` (one per thread, −1 filled) marks candidates already taken for the row. Returns
    how many kept edges are new to their row."""
    k = indices.shape[1]
    top_s = np.empty(k, np.float32)
    top_c = np.empty(k, np.int64)
    new_edges = 0
    for i in range(lo, hi):
        r = order[i]
        stamp[r] = r
        n_own = 0
        for j in range(k):
            n_own = _take(indices[r, j], r, stamp, buf, n_own)
        nc = n_own
        for j in range(k):
            u = indices[r, j]
            if u >= 0:
                for jj in range(k):
                    nc = _take(indices[u, jj], r, stamp, buf, nc)
        for p in range(rev_ptr[r], rev_ptr[r + 1]):
            nc = _take(rev_idx[p], r, stamp, buf, nc)
        t = n_own
        while t + 4 <= nc:
            _dot32x4(x, r, buf[t], buf[t + 1], buf[t + 2], buf[t + 3], screen, t)
            t += 4
        while t < nc:
            screen[t] = _dot32(x, r, buf[t])
            t += 1
        m = 0
        for t in range(nc):
            c = buf[t]
            if m == k and t >= n_own and screen[t] < top_s[k - 1] - tol:
                continue
            s = _dot64(x, r, c)
            if m == k and (s < top_s[k - 1] or (s == top_s[k - 1] and c > top_c[k - 1])):
                continue
            q = m - 1 if m == k else m  # insert, the last one falling off a full list
            if m < k:
                m += 1
            while q > 0 and (top_s[q - 1] < s or (top_s[q - 1] == s and top_c[q - 1] > c)):
                top_s[q] = top_s[q - 1]
                top_c[q] = top_c[q - 1]
                q -= 1
            top_s[q] = s
            top_c[q] = c
        for j in range(k):
            if j < m:
                out_idx[r, j] = top_c[j]
                out_sim[r, j] = top_s[j]
            else:
                out_idx[r, j] = -1
                out_sim[r, j] = -np.inf
        # the row's own old neighbours were buf[:n_own]; a kept edge outside them is new
        for j in range(m):
            c = top_c[j]
            old = False
            for t in range(n_own):
                if buf[t] == c:
                    old = True
                    break
            if not old:
                new_edges += 1
    return new_edges


def locality_order(indices: np.ndarray) -> np.ndarray:
    """Rows ordered so that rows sharing neighbours come together: grouped by the components of
    the first-neighbour graph, those grouped again by each component's first neighbour outside
    it (FINCH's first two partitions, Sarfraz et al., CVPR 2019). A refinement round reads
    about 300 random rows of the matrix a row; in this order most are still in cache (1M rows:
    84 → 35 µs a row). Only the speed depends on it."""
    from scipy.sparse.csgraph import connected_components

    n, k = indices.shape
    rows = np.arange(n)
    first = np.where(indices[:, 0] >= 0, indices[:, 0], rows)
    _, comp = connected_components(sp.csr_matrix((np.ones(n, np.int8), (rows, first)), shape=(n, n)),
                                   directed=True, connection="weak")
    n_comp = int(comp.max()) + 1 if n else 0
    # each component's link: the outside neighbour ranked highest in any of its rows' lists
    ci = comp[np.maximum(indices, 0)]
    outside = (ci != comp[:, None]) & (indices >= 0)
    has = outside.any(axis=1)
    rank = np.where(has, outside.argmax(axis=1), k)
    target = np.where(has, ci[rows, np.minimum(rank, k - 1)], comp)
    pick = np.lexsort((rank, comp))  # per component, its row with the best-ranked outside edge first
    starts = np.r_[0, np.flatnonzero(np.diff(comp[pick])) + 1]
    link = np.empty(n_comp, np.int64)
    link[comp[pick[starts]]] = target[pick[starts]]
    _, comp2 = connected_components(sp.csr_matrix((np.ones(n_comp, np.int8), (np.arange(n_comp), link)),
                                                  shape=(n_comp, n_comp)), directed=True, connection="weak")
    return np.lexsort((rows, comp, comp2[comp]))


# NN-descent's stopping rule (Dong, Moses & Li, "Efficient k-nearest neighbor graph
# construction for generic similarity measures", WWW 2011): a round that changes fewer than
# this share of the edges has converged.
REFINE_DELTA = 0.001
REFINE_MAX_ROUNDS = 4


def _refine_round(x, indices, blocks, workers, tol, advance):
    """One round of :func:`refine_graph` over the row blocks, ``workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    n, k = indices.shape
    order = locality_order(indices)
    rev_ptr, rev_idx = _reverse_lists(indices)
    width = k + k * k + int(np.diff(rev_ptr).max(initial=0))
    out_idx = np.empty_like(indices)
    out_sim = np.empty(indices.shape, dtype=np.float32)
    new = [0] * len(blocks)

    def run(w):
        stamp, buf, screen = np.full(n, -1, np.int64), np.empty(width, np.int64), np.empty(width, np.float32)
        for b in range(w, len(blocks), workers):
            lo, hi = blocks[b]
            new[b] = _refine_rows(x, indices, rev_ptr, rev_idx, order, lo, hi, out_idx, out_sim, stamp, buf, screen, tol)
            advance(hi - lo)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, range(workers)))
    return out_idx, out_sim, sum(new)


def refine_graph(x: np.ndarray, indices: np.ndarray, *, max_rounds: int = REFINE_MAX_ROUNDS,
                 done=None, progress: Progress | None = None, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray, list]:
    """Rounds of neighbour-of-neighbour refinement (the join step of NN-descent) on an
    approximate graph: each row's candidates are its list, its neighbours' lists and the rows
    that list it; all are scored exactly (:func:`_dot64`) and the k best kept. Edges that matter
    are mostly among one person's images, which find each other through any of them: one round
    took a 1M-row IVF graph from 0.9916 of the edges that matter to 0.999 for about 300
    exact dot products a row.

    Rounds stop when one changes fewer than ``REFINE_DELTA`` of the edges, when ``done(indices)``
    says the graph is good enough (asked before the first round too), or after ``max_rounds``.
    Each round reads the previous round's graph only, so the result does not depend on the
    thread count or the order rows are visited in (:func:`locality_order`, for the cache).
    ``x`` must hold unit rows (as every graph here does): the float32 screen's error bound
    assumes it. Returns (indices, sims) sorted and valued as :func:`rescore` would, and one
    dict a round (new edges, seconds).
    """

    progress = progress or NullProgress()
    x = np.ascontiguousarray(x, dtype=np.float32)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    n, k = indices.shape
    blocks = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    workers = max(1, min(len(blocks), os.cpu_count() or 1))
    history: list = []
    sims = None
    tol = np.float32(screen_tolerance(x.shape[1]))
    for round_ in range(max_rounds if done is None or not done(indices) else 0):
        t = time.perf_counter()
        with progress.task(f"kNN refinement, round {round_ + 1} (neighbours of neighbours)", total=n) as advance:
            out_idx, out_sim, new = _refine_round(x, indices, blocks, workers, tol, advance)
        indices, sims = out_idx, out_sim
        changed = new / max(1, n * k)
        history.append({"new_edges": int(new), "changed": round(changed, 6),
                        "seconds": round(time.perf_counter() - t, 2)})
        reached = done is not None and done(indices)  # asked after every round, the last included
        if changed < REFINE_DELTA or reached:
            break
    if sims is None:
        indices, sims = rescore(x, indices)
    return indices, sims, history


def _flat_index(x: np.ndarray, device: Device):
    """A flat index on the GPU(s) for faiss-gpu; on the CPU none (faiss.knn searches x as is)."""
    if device.backend != "faiss-gpu":
        return None
    import faiss

    index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(x.shape[1]))
    index.add(x)
    return index


def _hnsw_index(x: np.ndarray, m: int, ef_construction: int, ef_search: int, progress: Progress):
    import faiss

    index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    chunk = 1 << 16
    with progress.task("HNSW index build", total=x.shape[0]) as advance:
        for start in range(0, x.shape[0], chunk):
            index.add(x[start:start + chunk])
            advance(min(chunk, x.shape[0] - start))
    return index


def pq_subquantizers(d: int) -> int:
    """Sub-quantizers of the 4-bit PQ codes: one per 2 dimensions up to 128 of them (64 bytes a
    vector; a 512-d float32 row is 2 KiB), the largest divisor of ``d`` under that bound. Fewer,
    coarser codes (one per 4 dimensions) needed 4x longer shortlists on 16-d sets."""
    bound = max(1, min(128, d // 2))
    return max(m for m in range(1, bound + 1) if d % m == 0)


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` rows: 4·sqrt(n), but at least 39 training points a list (FAISS's
    k-means minimum) and at most 65,536."""
    return int(max(1, min(65536, round(4 * np.sqrt(n)), n // 39)))


def ivf_training_sample(n: int, nlist: int, seed: int) -> np.ndarray | None:
    """The row numbers IVF lists are trained on (:func:`ivf_training_rows`), or None for all."""
    n_train = min(n, 64 * nlist)
    return np.sort(np.random.default_rng(seed).choice(n, size=n_train, replace=False)) if n_train < n else None


def ivf_training_rows(x: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """The rows IVF lists are trained on: 64 a list (FAISS's k-means needs 39), sampled with
    ``seed``, in row order; every row in a smaller set."""
    rows = ivf_training_sample(x.shape[0], nlist, seed)
    return x if rows is None else x[rows]


def _ivf_index(x: np.ndarray, nlist: int, seed: int, progress: Progress):
    """IVF over 4-bit product-quantised codes scanned with FAISS's fast-scan kernels
    (``IVF{nlist},PQ{m}x4fs``, m = :func:`pq_subquantizers`: 64 bytes a 512-d row): the codes
    only shortlist candidates, which :func:`_search_reranked` re-ranks on the full vectors, so
    the index never holds a second copy of the embeddings."""
    import faiss

    n, d = x.shape
    # L2, not inner product: on unit vectors both rank alike, and k-means lists and residual
    # codes are L2 constructs (with inner product, uncentred dlib-like sets lost the ranking
    # as more lists were scanned: recall 0.92 at 4 lists, 0.80 at 8)
    index = faiss.index_factory(d, f"IVF{nlist},PQ{pq_subquantizers(d)}x4fs", faiss.METRIC_L2)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    train = ivf_training_rows(x, nlist, seed)
    with progress.task("IVF training (k-means, PQ codebooks)", total=None):
        index.train(np.ascontiguousarray(train))
    chunk = 1 << 16
    with progress.task("IVF index build", total=n) as advance:
        for start in range(0, n, chunk):
            index.add(x[start:start + chunk])
            advance(min(chunk, n - start))
    return index


def _reranked(index, x: np.ndarray, rows: np.ndarray, k: int, shortlist: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours of the rows ``rows`` of ``x``: ``shortlist`` candidates from the compressed
    ``index``, re-ranked by their exact inner product with the full vectors (read from ``x``
    where it lies: faiss.knn_inner_products_by_idx), self dropped."""
    import faiss

    q = np.ascontiguousarray(x[rows])
    _, cand = index.search(q, shortlist)
    nq, d = q.shape
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    vals = np.empty((nq, k + 1), dtype=np.float32)
    ids = np.empty((nq, k + 1), dtype=np.int64)
    # a query whose scanned lists hold fewer than `shortlist` vectors ends its row in -1
    # fillers, where the kernel stops; the row stride is given (-1 crashed faiss 1.15 at 1000 queries)
    faiss.knn_inner_products_by_idx(faiss.swig_ptr(q), faiss.swig_ptr(x), faiss.swig_ptr(cand), d, nq, x.shape[0],
                                    shortlist, k + 1, faiss.swig_ptr(vals), faiss.swig_ptr(ids), shortlist)
    vals[ids < 0] = -np.inf
    return drop_self(ids, vals, rows, k)


def _search_reranked(index, x: np.ndarray, k: int, shortlist: int, progress: Progress,
                     label: str) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    chunk = 1 << 14
    indices = np.empty((n, k), dtype=np.int32)
    sims = np.empty((n, k), dtype=np.float32)
    with progress.task(label, total=n) as advance:
        for start in range(0, n, chunk):
            rows = np.arange(start, min(n, start + chunk))
            indices[rows], sims[rows] = _reranked(index, x, rows, k, shortlist)
            advance(len(rows))
    return indices, sims


def _exact_neighbours(x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (self excluded) of the rows ``rows`` of ``x``, and their
    similarities; faiss.knn searches ``x`` where it lies, so the matrix is never copied into
    an index."""
    import faiss

    s, i = faiss.knn(np.ascontiguousarray(x[rows]), x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    return drop_self(i, s, rows, k)


def sample_rows(n: int, n_queries: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """``n_queries`` of ``n`` row numbers drawn with ``seed``, ascending (recall samples);
    none of the rows in ``exclude`` (fewer where too few are left)."""
    if exclude is None or not len(exclude):
        return np.sort(np.random.default_rng(seed).choice(n, size=min(n_queries, n), replace=False))
    rest = np.setdiff1d(np.arange(n), exclude)
    return np.sort(np.random.default_rng(seed).choice(rest, size=min(n_queries, len(rest)), replace=False))


# An exact neighbour "matters" when its calibrated P(same person) is at least this: a real
# chance of being the same person, which is what every stage reads off the graph.
MATTER_FLOOR = 0.1


class EdgeRecall:
    """Recall of an approximate graph on sampled queries against their exact neighbours.

    Raw recall@k counts every exact neighbour alike; with k = 30 and identities of ~15
    images half of them are other people at cosine ≈ 0, whose order no index can or needs
    to find. What the stages use are the edges with a real chance of being one person: the
    exact neighbours whose P(same person) is at least ``MATTER_FLOOR``, P from a
    two-component mixture fitted on the sampled exact similarities (no cosine is fixed;
    :func:`facecluster.calibration.fit_pair_calibration`), and, with labels, every exact
    neighbour carrying the query's label.
    """

    def __init__(self, x: np.ndarray | None, rows: np.ndarray, k: int, labels: np.ndarray | None = None,
                 seed: int = 0, *, neighbours: tuple | None = None):
        """``neighbours``: the sampled rows' exact neighbours (indices, similarities), self
        excluded, k a row, where they were searched elsewhere (on a Dask cluster); else they
        are searched in ``x`` here."""
        from .calibration import fit_pair_calibration

        self.rows, self.k = rows, k
        t = time.perf_counter()
        self.truth, sims = neighbours if neighbours is not None else _exact_neighbours(x, rows, k)
        # what exact search costs a query here, measured: an approximate search that costs as
        # much is not worth its missed edges
        self.exact_seconds_per_query = (time.perf_counter() - t) / max(1, len(rows))
        valid = self.truth >= 0
        query = np.broadcast_to(rows[:, None], self.truth.shape)
        calibration = fit_pair_calibration(query[valid], self.truth[valid], sims[valid].astype(np.float64),
                                           rng=np.random.default_rng(seed))
        self.matters = np.zeros_like(valid)
        self.matters[valid] = calibration(sims[valid]) >= MATTER_FLOOR
        self.same_label = None
        if labels is not None:
            labels = np.asarray(labels)
            self.same_label = valid & (labels[np.maximum(self.truth, 0)] == labels[rows][:, None])
        self.calibration = calibration.kind

    def __call__(self, got: np.ndarray) -> dict:
        """Recall figures of the neighbour lists ``got`` (one row per sampled query)."""
        hit = (self.truth[:, :, None] == got[:, None, :]).any(axis=2) & (self.truth >= 0)
        valid = self.truth >= 0
        out = {"recall_at_k": float(hit.sum() / max(1, valid.sum())),
               "edges_that_matter_recall": float(hit[self.matters].mean()) if self.matters.any() else 1.0,
               "edges_that_matter_per_row": round(float(self.matters.sum(axis=1).mean()), 2),
               "n_queries": len(self.rows), "matter_floor": MATTER_FLOOR}
        if self.same_label is not None:
            out["same_label_recall"] = float(hit[self.same_label].mean()) if self.same_label.any() else 1.0
        return out


# The IVF search's two knobs start here and double: the lists scanned (nprobe) find candidates
# the coarse quantiser put elsewhere; the shortlist (this many candidates per neighbour wanted)
# recovers those the 4-bit codes ranked too low.
IVF_START = (4, 4)
IVF_MAX_FACTOR = 16  # a 1,984-long shortlist made each tuning query slower than its search


def _tune_ivf(index, x: np.ndarray, k: int, target: float, n_queries: int, seed: int,
              labels: np.ndarray | None = None) -> tuple[int, int, float, list, float, float]:
    """The (nprobe, shortlist factor) whose recall of the edges that matter
    (:class:`EdgeRecall`) on sampled queries reaches ``target``, found greedily: from
    :data:`IVF_START`, double whichever knob gains more recall (which one binds depends on the
    set: the lists on 512-d faces, the codes on 16-d points), until the target is reached or
    neither gains. The curve lists (nprobe, factor, that recall, recall@k) for each setting
    measured (with its search time per query, µs). Returns (nprobe, factor, its recall,
    curve, its seconds per query, the :class:`EdgeRecall` of the sample, the sampled rows)."""
    q = sample_rows(x.shape[0], n_queries, seed + 1)
    measure = EdgeRecall(x, q, k, labels, seed)
    nlist = index.nlist
    # scanning more than 1/IVF_MAX_PROBE_SHARE of the lists is refused anyway (exact is cheaper)
    max_probe = max(1, nlist // IVF_MAX_PROBE_SHARE)
    curve: list = []
    seen: dict = {}
    cost: dict = {}

    def recall(nprobe: int, factor: int) -> float:
        if (nprobe, factor) not in seen:
            index.nprobe = nprobe
            t = time.perf_counter()
            got, _ = _reranked(index, x, q, k, min(factor * (k + 1), x.shape[0]))
            cost[(nprobe, factor)] = (time.perf_counter() - t) / len(q)
            figures = measure(got)
            seen[(nprobe, factor)] = figures["edges_that_matter_recall"]
            curve.append((nprobe, factor, round(figures["edges_that_matter_recall"], 4), round(figures["recall_at_k"], 4),
                          round(1e6 * cost[(nprobe, factor)], 1)))
        return seen[(nprobe, factor)]

    nprobe, factor = min(IVF_START[0], max_probe), IVF_START[1]
    while recall(nprobe, factor) < target:
        steps = [s for s in ((min(2 * nprobe, max_probe), factor), (nprobe, min(2 * factor, IVF_MAX_FACTOR)))
                 if s != (nprobe, factor)]
        if not steps:
            break
        best = max(steps, key=lambda s: (recall(*s), -s[0] * s[1]))
        if recall(*best) <= recall(nprobe, factor):
            if len(steps) < 2:
                break  # the one knob left gains nothing (1M rows: 505 lists no better than 256)
            best = (steps[0][0], steps[1][1])  # neither alone gains: both, or stop
            if recall(*best) <= recall(nprobe, factor):
                break
        nprobe, factor = best
    reached = recall(nprobe, factor)
    return nprobe, factor, reached, curve, cost[(nprobe, factor)], measure, q


def measure_recall(x: np.ndarray, graph_indices: np.ndarray, k: int, *, n_queries: int = 1000,
                   seed: int = 0, labels: np.ndarray | None = None, exclude: np.ndarray | None = None) -> dict:
    """Recall of ``graph_indices`` against exact search on a random sample of queries (none of
    the rows ``exclude``, such as the ones a graph was tuned on): raw recall@k and the recall
    of the edges that matter (:class:`EdgeRecall`)."""
    q = sample_rows(x.shape[0], n_queries, seed, exclude)
    if not len(q):
        return {"n_queries": 0}
    return EdgeRecall(x, q, k, labels, seed)(graph_indices[q])


# --------------------------------------------------------------------------- public builder


def _refine_to_target(x: np.ndarray, indices: np.ndarray, k: int, target_recall: float, measure: EdgeRecall,
                      tune_rows: np.ndarray, recall_queries: int, seed: int, info: dict, phases: dict,
                      progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Refine an IVF seed graph (:func:`refine_graph`) until the tuning sample reaches
    ``target_recall``, then measure its recall on independent queries; returns the graph
    (indices, sims) and puts the figures into ``info`` and ``phases``."""
    t = time.perf_counter()
    rounds_recall: list = []

    def done(graph_indices: np.ndarray) -> bool:
        rounds_recall.append(measure(graph_indices[tune_rows])["edges_that_matter_recall"])
        return rounds_recall[-1] >= target_recall

    indices, sims, history = refine_graph(x, indices, done=done, progress=progress)
    for entry, reached in zip(history, rounds_recall[1:]):
        entry["tuned_recall"] = round(reached, 6)
    tuned = rounds_recall[-1]
    info.update(tuned_recall=tuned, refine_rounds=history)
    phases["refine"] = round(time.perf_counter() - t, 2)
    if tuned < target_recall:  # the best reached, far cheaper than exact: kept, and said
        info["target_missed"] = (f"the refined IVF graph reached {tuned:.4f} of the edges that matter on the "
                                 f"tuning queries, short of {target_recall} (IVF nprobe {info.get('nprobe')}, "
                                 f"{len(history)} refinement rounds)")
    t = time.perf_counter()
    info.update(measure_recall(x, indices, k, n_queries=recall_queries, seed=seed, exclude=tune_rows))
    phases["recall"] = round(time.perf_counter() - t, 2)
    return indices, sims


def build_knn_graph(
    x: np.ndarray,
    k: int = 30,
    *,
    device: str | Device = "auto",
    method: str = "auto",
    exact_max: int = EXACT_MAX,
    target_recall: float = 0.999,
    nlist: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    ef_search: int | None = None,
    recall_queries: int = 1000,
    cache: str | Path | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    dask=None,
    scratch: str | Path | None = None,
) -> KnnGraph:
    """Build the kNN graph of L2-normalised vectors under cosine similarity.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features), float32, rows of unit norm
    k : neighbours per sample (clamped to n_samples - 1)
    device : "auto", "cpu", "cuda" or a resolved :class:`~facecluster.device.Device`
    method : "exact", "ivf", "hnsw" or "auto" (exact up to ``exact_max`` samples on CPU, IVF
        above; always exact on a GPU, where brute force is fastest)
    target_recall : IVF only: the recall of the edges that matter (exact neighbours with a real
        chance of being the same person, :class:`EdgeRecall`) the graph is built to, measured on
        ``recall_queries`` sampled queries. The IVF search seeds the graph: its lists scanned
        (nprobe) and shortlist re-ranked on the full vectors are tuned greedily
        (:func:`_tune_ivf`) to miss at most :data:`REFINE_SEED_SLACK` times what the target
        allows; rounds of neighbour-of-neighbour refinement (:func:`refine_graph`) then run
        until the sample reaches the target. Short of the seed target at the most the tuner
        scans, IVF is kept where a query is :data:`IVF_MIN_SPEEDUP` times less work than exact
        search, else the search is exact (``info["fallback"]`` says why); a refined graph short
        of the target is kept and ``info["target_missed"]`` says so. The recall reported is
        measured on queries independent of the tuning ones
    nlist : IVF lists; default 4·sqrt(n_samples), at most n_samples / 39
    ef_search : HNSW search breadth; default max(2k, 64)
    recall_queries : queries used to measure the recall of an approximate graph against exact
    cache : path of a saved graph (``knn_graph.npz``); when it holds a graph of the same
        fingerprint (``x`` and every parameter that changes the graph) it is loaded instead of
        searching. Nothing is written here: ``info["fingerprint"]`` goes with the returned
        graph and :meth:`KnnGraph.save` writes it where the caller stages its outputs.
    dask : a ``dask.distributed.Client``: the search runs on its cluster
        (:mod:`facecluster.knn_dask`): exact, block pair by block pair, giving the same graph;
        or IVF (``auto`` above ``exact_max`` rows, as here), flat lists searched exactly
        bucket by bucket with nprobe tuned on the same sample, then refined here to
        ``target_recall`` as the local IVF graph is
    scratch : with ``dask``, the folder for the scratch copy of ``x`` the workers read

    Returns
    -------
    KnnGraph
    """
    progress = progress or NullProgress()
    if not is_whole(k):
        raise ValueError(f"k must be a whole number, got {k!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n_samples, n_features), got shape {x.shape}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"a kNN graph needs at least 2 samples, got n_samples={n}")
    if n >= 2**31 - 1:
        raise ValueError("more than 2**31 - 2 samples: shard the set")
    check_unit_rows(x)
    k = int(min(k, n - 1))
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    dev = device if isinstance(device, Device) else resolve_device(device)
    if method == "auto":
        method = "exact" if (dev.kind == "cuda" or n <= exact_max) else "ivf"
    if dask is not None and method not in ("exact", "ivf"):
        raise ValueError(f"on Dask the graph is exact or IVF: knn method {method!r} is not distributed")
    if method not in {"exact", "ivf", "hnsw"}:
        raise ValueError(f"method must be auto, exact, ivf or hnsw, got {method!r}")
    fallback = None
    if method == "ivf" and n < IVF_MIN_ROWS:
        # the 4-bit codebooks are 16 centroids a sub-quantizer, which FAISS's k-means wants
        # 39 training rows each for (it refuses under 16): an exact graph here costs nothing
        method, fallback = "exact", f"ivf asked, exact used: {n} rows, under the {IVF_MIN_ROWS} the IVF codes train on"
    ef_search = int(ef_search or max(2 * k, 64))
    params = {"k": k, "method": method}
    nlist = int(nlist or default_nlist(n))
    if method == "hnsw":
        params.update(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, seed=seed)
    elif method == "ivf":
        params.update(nlist=nlist, target_recall=target_recall, recall_queries=recall_queries, seed=seed)

    t_load = time.perf_counter()
    fingerprint = graph_fingerprint(x, **params)
    if cache is not None:
        cached = KnnGraph.load(cache, fingerprint, n_samples=n, k=k)
        if cached is not None:
            # how it was built stays (method, recall, the build's own device and seconds,
            # under "built"); this run's seconds are the load's
            built = {key: cached.info[key] for key in ("seconds", "phase_seconds", "device", "backend")
                     if key in cached.info}
            return KnnGraph(cached.indices, cached.sims,
                            dict(cached.info, cache="hit", cache_path=str(cache), built=built,
                                 seconds=round(time.perf_counter() - t_load, 3), phase_seconds={}))

    t0 = time.perf_counter()
    info = {"k": k, "method": method, "device": dev.kind, "backend": dev.backend,
            "device_reason": dev.reason, "n_samples": n}
    if fallback is not None:
        info["method_reason"] = fallback
    if method == "exact":
        t = time.perf_counter()
        wide = min(k + EXACT_MARGIN, n - 1)
        if dask is not None:
            from .knn_dask import search_on_dask

            indices, sims, on_dask = search_on_dask(x, wide, dask, scratch=scratch, progress=progress)
            info.update(on_dask, device="cpu", backend=on_dask["backend"])
        elif dev.backend == "torch-cuda":
            indices, sims = _knn_torch(x, wide, "cuda", progress)
        else:
            indices, sims = _search_index(_flat_index(x, dev), x, wide, progress, "kNN search (exact)")
        info.setdefault("phase_seconds", {})["search"] = round(time.perf_counter() - t, 2)
    elif method == "ivf" and dask is not None:
        from .knn_dask import ivf_on_dask

        seed_target = max(0.0, 1.0 - REFINE_SEED_SLACK * (1.0 - target_recall))
        t = time.perf_counter()
        tune_rows = sample_rows(n, recall_queries, seed + 1)
        measure = EdgeRecall(x, tune_rows, k, None, seed)
        tune_seconds = time.perf_counter() - t
        indices, _, on_dask = ivf_on_dask(x, k, dask, scratch=scratch, nlist=nlist, seed_target=seed_target,
                                       measure=measure, tune_rows=tune_rows, seed=seed, progress=progress)
        phases = info["phase_seconds"] = dict(on_dask.pop("phase_seconds"), tune=round(tune_seconds, 2))
        info.update(on_dask, device="cpu", seed_target=round(seed_target, 6), target_recall=target_recall)
        indices, sims = _refine_to_target(x, indices, k, target_recall, measure, tune_rows, recall_queries, seed,
                                          info, phases, progress)
    elif method == "ivf":
        phases = info["phase_seconds"] = {}
        t = time.perf_counter()
        index = _ivf_index(x, nlist, seed, progress)
        phases["index"] = round(time.perf_counter() - t, 2)
        seed_target = max(0.0, 1.0 - REFINE_SEED_SLACK * (1.0 - target_recall))
        t = time.perf_counter()
        nprobe, factor, seeded, curve, ivf_cost, measure, tune_rows = _tune_ivf(index, x, k, seed_target,
                                                                              recall_queries, seed)
        exact_cost = measure.exact_seconds_per_query
        phases["tune"] = round(time.perf_counter() - t, 2)
        info.update(nlist=nlist, nprobe=nprobe, shortlist_factor=factor, nprobe_recall_curve=curve,
                    seed_target=round(seed_target, 6), seed_recall=seeded,
                    us_per_query={"ivf": round(1e6 * ivf_cost, 1), "exact": round(1e6 * exact_cost, 1)},
                    target_recall=target_recall, codes=f"PQ{pq_subquantizers(x.shape[1])}x4fs")
        t = time.perf_counter()
        shortlist = min(factor * (k + 1), n)
        if seeded < seed_target and IVF_MIN_SPEEDUP * _ivf_work(n, x.shape[1], nlist, nprobe, shortlist) > n * x.shape[1]:
            # Short of the seed target at the most the tuner scans (1/IVF_MAX_PROBE_SHARE of the
            # lists, shortlists of IVF_MAX_FACTOR per neighbour), and not IVF_MIN_SPEEDUP times
            # less work a query than exact search: go exact.
            del index
            info.update(method="exact", fallback=f"IVF reached {seeded:.4f} of the edges that matter at nprobe {nprobe} "
                                                 f"of {nlist} lists, short of {seed_target:.4f}, and would save exact "
                                                 f"search less than {IVF_MIN_SPEEDUP:.0f}x its work; exact search is cheaper")
            indices, sims = _search_index(None, x, min(k + EXACT_MARGIN, n - 1), progress, "kNN search (exact)")
        else:
            index.nprobe = nprobe
            indices, _ = _search_reranked(index, x, k, shortlist, progress,
                                          f"kNN search (IVF, nprobe={nprobe}, re-ranked {shortlist})")
            del index
            phases["search"] = round(time.perf_counter() - t, 2)
            indices, sims = _refine_to_target(x, indices, k, target_recall, measure, tune_rows, recall_queries, seed,
                                              info, phases, progress)
    else:
        index = _hnsw_index(x, hnsw_m, ef_construction, ef_search, progress)
        indices, sims = _search_index(index, x, k, progress, "kNN search (HNSW)")
        info.update(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
        info.update(measure_recall(x, indices, k, n_queries=recall_queries, seed=seed))
    if info["method"] == "exact":
        info.update(recall_at_k=1.0, edges_that_matter_recall=1.0)
    if info.get("refine_rounds") is None:  # a refined graph is valued and sorted as rescore does already
        t = time.perf_counter()
        indices, sims = rescore(x, indices)
        if indices.shape[1] > k:  # the exact search's margin: the k best by (−cosine, row)
            indices, sims = np.ascontiguousarray(indices[:, :k]), np.ascontiguousarray(sims[:, :k])
        info.setdefault("phase_seconds", {})["rescore"] = round(time.perf_counter() - t, 2)
    info["missing_neighbours"] = int((indices < 0).sum())
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["fingerprint"] = fingerprint
    if cache is not None:
        info.update(cache="miss", cache_path=str(cache))
    return KnnGraph(indices=indices, sims=sims, info=info)


def graph_from_vectors(x, k: int = 30, *, device: str | Device = "auto", centre: bool | str = "auto",
                       seed: int = 0, **options) -> KnnGraph:
    """The kNN graph of raw vectors: validated, L2-normalised, centred when the data say so
    (:func:`facecluster.faceset.prepare_embeddings`), then :func:`build_knn_graph`.

    ``x`` may already be a :class:`KnnGraph`, which is returned as it is (the estimators
    accept either).
    """
    if isinstance(x, KnnGraph):
        check_graph(x)
        return x
    from .faceset import prepare_embeddings

    unit, _, _ = prepare_embeddings(x, centre=centre, seed=seed)
    return build_knn_graph(unit, k=k, device=device, seed=seed, **options)
