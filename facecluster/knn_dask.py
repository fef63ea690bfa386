"""The exact kNN graph as a Dask computation, for sets beyond one machine (dask.distributed).

The rows are cut into blocks. One task a (query block, database block) pair searches the
query block against the database block with FAISS (exact inner product, k + 1 results a
row); a query block's partial lists are merged pairwise, in a tree, keeping the k + 1 best by
(−cosine, row), the same total order everywhere, so the merge's shape cannot change the
result (FAISS's ``ResultHeap`` idea, one heap a query block). Then the query itself is dropped
and, on the caller's side, :func:`facecluster.knn.rescore` recomputes every edge with the one
fixed summation the local build uses: the graph equals the local exact graph (up to an exact
tie for the k-th place, as between any two machines).

Blocks are read by the workers themselves from a .npy file (memory-mapped, one block a task),
so no worker ever holds the whole matrix and every task can be recomputed: a worker lost
mid-run is replaced and its tasks run again elsewhere, with the same result. ``clean(...,
dask=...)`` writes the prepared unit vectors to a scratch .npy first (a folder every worker
can read: the output folder by default), builds the graph on the cluster, rescores it and runs
the stages on the calling machine. A task holds two blocks and a block's lists: with ``block_rows`` b,
d dimensions and k neighbours about 8·b·d + 16·b·k bytes (b = 65,536, d = 512: 270 MB).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .knn import (
    IVF_MAX_PROBE_SHARE,
    EdgeRecall,
    default_nlist,
    drop_self,
    ivf_training_sample,
    sample_rows,
)
from .progress import NullProgress, Progress

BLOCK_ROWS = 65_536
# IVF on Dask: rows per bucket of neighbouring lists (None: a block's); smaller buckets scan
# closer to the probed lists alone, for more tasks (blocks × buckets)
BUCKET_ROWS = None


def check_spec(spec: str) -> int | None:
    """Validate a ``--dask`` value: the worker count of ``"local:N"``, None for an address."""
    spec = str(spec)
    if spec.startswith("local:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--dask local:N needs a worker count N >= 1, got {spec!r}")
        return n
    if "://" not in spec:
        raise ValueError(f"--dask takes local:N or a scheduler address such as tcp://host:8786, got {spec!r}")
    if spec.split("://", 1)[0].lower() in ("http", "https"):
        raise ValueError(f"--dask {spec} looks like the dashboard's address; the scheduler's is like "
                         "tcp://host:8786")
    return None


def connect(spec):
    """A ``dask.distributed.Client`` from ``spec``: a Client (used as it is), ``"local:N"`` (a
    LocalCluster of N worker processes, one thread each, started here and closed by the
    caller) or a scheduler address (``"tcp://host:8786"``). Returns (client, owned)."""
    from dask.distributed import Client, LocalCluster

    if isinstance(spec, Client):
        return spec, False
    n = check_spec(spec)
    if n is not None:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
        return Client(cluster), True
    try:
        return Client(str(spec)), True  # waits distributed.comm.timeouts.connect (30 s by default)
    except (OSError, ValueError) as exc:  # nothing listens there, it does not answer in time, a bad address
        from .errors import InputError

        raise InputError("--dask", f"cannot reach the Dask scheduler at {spec} ({exc}); start it, or check "
                                   "the address") from None


def close(client) -> None:
    """Close a client made by :func:`connect`, and the LocalCluster behind it."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _read_block(path: str, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(np.load(path, mmap_mode="r")[start:stop], dtype=np.float32)


def _search_pair(query: np.ndarray, base: np.ndarray, base_start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k + 1 most similar rows of ``base`` (row numbers offset by ``base_start``) for each
    row of ``query``, by FAISS's exact inner-product search; −1 and −inf where base is short."""
    import faiss

    kk = min(k + 1, base.shape[0])
    sims, idx = faiss.knn(query, base, kk, metric=faiss.METRIC_INNER_PRODUCT)
    idx = np.where(idx >= 0, idx + base_start, -1)
    if kk < k + 1:
        pad = k + 1 - kk
        idx = np.hstack([idx, np.full((len(idx), pad), -1, dtype=idx.dtype)])
        sims = np.hstack([sims, np.full((len(sims), pad), -np.inf, dtype=sims.dtype)])
    return sims.astype(np.float32), idx.astype(np.int64)


def _merge(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The k + 1 best of two partial lists a row, by (−cosine, row number), −1s last."""
    sims = np.hstack([a[0], b[0]])
    idx = np.hstack([a[1], b[1]])
    key_idx = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((key_idx, -sims.astype(np.float64)), axis=1)[:, :a[0].shape[1]]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _finish(merged: tuple, start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims, idx = merged
    rows = np.arange(start, start + len(idx))
    idx, sims = drop_self(idx, sims, rows, k)
    return idx.astype(np.int32), sims


def _tree(items: list, combine):
    while len(items) > 1:
        items = [combine(items[i], items[i + 1]) if i + 1 < len(items) else items[i] for i in range(0, len(items), 2)]
    return items[0]


def _gather_lists(client, bounds: list, parts: list, k: int, progress: Progress, label: str):
    """Run on the cluster, for every query block (``bounds``: its rows), the merge of its
    partial lists (``parts[i]``: delayed (sims, idx) pairs of k + 1 a row) in a tree and the
    drop of the query itself; gathered here as (indices int32, sims float32), block by block
    as they finish."""
    import dask
    from dask.distributed import as_completed

    outs = []
    for (qs, _), block_parts in zip(bounds, parts):
        merged = _tree(block_parts, lambda a, b: dask.delayed(_merge, pure=True, nout=2)(a, b))
        outs.append(dask.delayed(_finish, pure=True, nout=2)(merged, qs, k))
    futures = client.compute(outs)
    index_of = {f.key: i for i, f in enumerate(futures)}
    n = bounds[-1][1]
    indices = np.empty((n, k), dtype=np.int32)
    sims = np.empty((n, k), dtype=np.float32)
    with progress.task(label, total=n) as advance:
        for future in as_completed(futures):
            s, e = bounds[index_of[future.key]]
            indices[s:e], sims[s:e] = future.result()
            advance(e - s)
    return indices, sims


def _source_blocks(source, block_rows: int):
    """A .npy path or a dask array as (n, d, bounds, blocks, take): the row range and a
    delayed float32 array of each block (a .npy's blocks are ``block_rows`` rows read by the
    task itself, memory-mapped; a dask array's are its own row chunks, its columns joined),
    and ``take(rows)``, a delayed array of the rows ``rows`` (ascending), read where they lie."""
    import dask

    if isinstance(source, (str, Path)):
        path = str(Path(source).resolve())
        n, d = np.load(path, mmap_mode="r").shape
        bounds = [(s, min(s + block_rows, n)) for s in range(0, n, block_rows)]
        blocks = [dask.delayed(_read_block, pure=True)(path, s, e) for s, e in bounds]
        return int(n), int(d), bounds, blocks, lambda rows: dask.delayed(_read_rows, pure=True)(path, rows)
    if any(np.isnan(c) for c in source.chunks[0]):  # e.g. a Parquet frame's to_dask_array()
        source = source.compute_chunk_sizes()
    n, d = source.shape
    if len(source.chunks[1]) != 1:
        source = source.rechunk({1: -1})  # a block holds whole rows
    starts = np.r_[0, np.cumsum(source.chunks[0])]
    bounds = [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
    blocks = [dask.delayed(np.ascontiguousarray)(b, dtype=np.float32) for b in source.to_delayed().ravel()]

    def take(rows):
        part = source[np.asarray(rows, dtype=np.int64)].rechunk({0: -1})
        return dask.delayed(np.ascontiguousarray)(part.to_delayed().ravel()[0], dtype=np.float32)

    return int(n), int(d), bounds, blocks, take


def _sample_neighbours(client, blocks: list, bounds: list, queries: np.ndarray, rows: np.ndarray,
                       k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (self excluded) of the sampled rows ``rows`` (their vectors
    ``queries``, held here), searched against every block on the cluster and merged in a tree
    as :func:`knn_graph_dask` merges a block's lists: (indices, similarities)."""
    import dask

    query = dask.delayed(np.ascontiguousarray(queries, dtype=np.float32), pure=True)
    parts = [dask.delayed(_search_pair, pure=True, nout=2)(query, block, start, k)
             for block, (start, _) in zip(blocks, bounds)]
    sims, idx = client.compute(_tree(parts, lambda a, b: dask.delayed(_merge, pure=True, nout=2)(a, b)), sync=True)
    return drop_self(idx, sims, rows, k)


def knn_graph_dask(source, k: int, client, *, block_rows: int | None = None,
                   progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Exact k nearest neighbours (self excluded) of unit vectors, searched on the cluster
    behind ``client``, block pair by block pair.

    ``source`` : a .npy file every worker can read (blocks of ``block_rows`` rows are read by
    the tasks, memory-mapped), or a dask array of unit vectors from anywhere
    (``da.from_zarr``, ``da.from_npy_stack``, a Parquet frame's ``to_dask_array``), whose row
    chunks are the blocks: the matrix is never gathered on one machine. Returns (indices
    int32, sims float32 as FAISS gave them, info); a caller holding the vectors rescores
    (:func:`facecluster.knn.rescore`)."""
    import dask

    progress = progress or NullProgress()
    block_rows = block_rows or BLOCK_ROWS
    n, d, bounds, blocks, _ = _source_blocks(source, block_rows)
    k = int(min(k, n - 1))
    t = time.perf_counter()
    indices, sims = _gather_lists(client, bounds, [[dask.delayed(_search_pair, pure=True, nout=2)(
        blocks[qi], blocks[bj], bs, k) for bj, (bs, _) in enumerate(bounds)] for qi in range(len(bounds))], k, progress,
        f"kNN search (exact, Dask: {len(bounds)}² block pairs)")
    workers = len(client.scheduler_info().get("workers", {}))
    info = {"backend": "faiss-cpu on dask", "dask_workers": workers, "dask_blocks": len(bounds),
            "dask_block_rows": block_rows, "phase_seconds": {"search": round(time.perf_counter() - t, 2)}}
    return indices, sims, info


def _read_rows(path: str, rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.load(path, mmap_mode="r")[rows], dtype=np.float32)


def _assign(block: np.ndarray, centroids: np.ndarray, nprobe: int) -> np.ndarray:
    """Each row's ``nprobe`` nearest IVF lists (nearest first), by L2 to the centroids."""
    import faiss

    return faiss.knn(block, centroids, nprobe)[1].astype(np.int32)


def _search_bucket(query: np.ndarray, probes: np.ndarray, base: np.ndarray, base_rows: np.ndarray, lo: int, hi: int,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k + 1 best rows of one bucket (the lists ``lo`` ≤ list < ``hi``: ``base``, whose row
    numbers are ``base_rows``) for the queries of a block that probe any of its lists; −1 and
    −inf for the others. Inside the bucket the search is exact."""
    sims = np.full((len(query), k + 1), -np.inf, dtype=np.float32)
    idx = np.full((len(query), k + 1), -1, dtype=np.int64)
    hit = ((probes >= lo) & (probes < hi)).any(axis=1)
    if hit.any() and len(base):
        s, i = _search_pair(query[hit], base, 0, k)
        sims[hit] = s
        idx[hit] = np.where(i >= 0, base_rows[np.maximum(i, 0)], -1)
    return sims, idx


def ivf_graph_dask(source, k: int, client, *, x: np.ndarray | None = None, nlist: int | None = None,
                   seed_target: float = 0.999, measure=None, tune_rows: np.ndarray | None = None,
                   recall_queries: int = 1000, seed: int = 0, block_rows: int | None = None,
                   bucket_rows: int | None = None,
                   progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """An approximate kNN graph searched on the cluster: IVF lists, searched exactly.

    ``source`` is a .npy file every worker can read or a dask array of unit vectors, as for
    :func:`knn_graph_dask`; ``x``, the same vectors, where the caller holds them (the samples
    below are then read here instead of on the cluster).

    - A coarse quantiser of ``nlist`` lists (default :func:`facecluster.knn.default_nlist`;
      FAISS k-means, L2 on the unit vectors, as the local IVF) is trained here on a sample of
      64 rows a list, read from the source.
    - The workers put every row in its nearest list.
    - nprobe, the lists a query scans, is the fewest (doubling from 4, at most 1/8 of the
      lists) whose lists hold ``seed_target`` of the edges that matter of the sampled queries
      ``tune_rows`` (``measure``, an :class:`facecluster.knn.EdgeRecall` of them; without it,
      ``recall_queries`` rows whose exact neighbours are searched on the cluster): inside a
      list the search is exact, so a neighbour is found exactly when its list is probed, and
      that is known from the assignments alone, before any search.
    - Neighbouring lists are grouped into buckets of about ``bucket_rows`` rows (k-means over
      the centroids); one task searches the queries of a block that probe a bucket against all
      of it (exact inner product), and a block's partial lists are merged in a tree, as in
      :func:`knn_graph_dask`. A query scans the buckets its lists fall in: more rows than its
      lists hold, never fewer.

    Returns (indices (n, k) int32 with −1 where fewer were found, sims float32 as FAISS gave
    them, info). A caller holding the vectors refines the graph
    (:func:`facecluster.knn.refine_graph`, as ``build_knn_graph(..., dask=client)`` does);
    without them (``x`` None) the graph is what the probed lists hold, and ``info`` carries
    its recall of the edges that matter on ``recall_queries`` rows drawn apart from the
    tuning ones, their exact neighbours searched on the cluster."""
    import dask
    import faiss


    progress = progress or NullProgress()
    block_rows = block_rows or BLOCK_ROWS
    n, d, bounds, blocks, take = _source_blocks(source, block_rows)
    k = int(min(k, n - 1))
    nlist = int(nlist or default_nlist(n))

    def rows_here(rows):
        return x[rows] if x is not None else client.compute(take(rows), sync=True)

    t = time.perf_counter()
    if tune_rows is None:
        tune_rows = sample_rows(n, recall_queries, seed + 1)
    tune_x = np.ascontiguousarray(rows_here(tune_rows), dtype=np.float32)
    if measure is None:
        measure = EdgeRecall(None, tune_rows, k, None, seed,
                             neighbours=_sample_neighbours(client, blocks, bounds, tune_x, tune_rows, k))
    phases = {"tune": round(time.perf_counter() - t, 2)}
    sample = ivf_training_sample(n, nlist, seed)
    train = x if sample is None and x is not None else rows_here(np.arange(n) if sample is None else sample)
    t = time.perf_counter()
    kmeans = faiss.Kmeans(d, nlist, niter=20, seed=seed, verbose=False)
    with progress.task("IVF lists (k-means)", total=None):
        kmeans.train(np.ascontiguousarray(train, dtype=np.float32))
    del train
    centroids = kmeans.centroids.astype(np.float32)
    # buckets of neighbouring lists (k-means over the centroids, about bucket_rows rows each),
    # numbered so that each bucket is a range of list ids: a query's nearest lists then fall
    # in one bucket or a few, and a task scans little beyond the lists it probes
    bucket_rows = bucket_rows or BUCKET_ROWS or block_rows
    n_buckets = int(min(nlist, max(1, -(-n // bucket_rows))))
    if n_buckets > 1:
        groups = faiss.Kmeans(d, n_buckets, niter=20, seed=seed, verbose=False)
        groups.train(centroids)
        group_of = faiss.knn(centroids, groups.centroids, 1)[1][:, 0]
        centroids = np.ascontiguousarray(centroids[np.argsort(group_of, kind="stable")])
        edges = np.r_[0, np.cumsum(np.bincount(group_of, minlength=n_buckets))]
    else:
        edges = np.array([0, nlist])
    edges = np.unique(edges)
    phases["lists"] = round(time.perf_counter() - t, 2)
    cents = dask.delayed(centroids)
    t = time.perf_counter()
    owner = np.concatenate(client.compute([dask.delayed(_assign, pure=True)(b, cents, 1) for b in blocks], sync=True))[:, 0]
    # nprobe from the assignments: the rank of each sampled edge's list among its query's lists
    max_probe = max(1, nlist // IVF_MAX_PROBE_SHARE)
    ranked = faiss.knn(tune_x, centroids, max_probe)[1]
    hit = owner[np.maximum(measure.truth, 0)][:, :, None] == ranked[:, None, :]
    rank = np.where(hit.any(axis=2), hit.argmax(axis=2), max_probe)
    matters = measure.matters
    curve = []
    nprobe = min(4, max_probe)
    while True:
        reached = float((rank[matters] < nprobe).mean()) if matters.any() else 1.0
        curve.append((nprobe, round(reached, 4)))
        if reached >= seed_target or nprobe >= max_probe:
            break
        nprobe = min(2 * nprobe, max_probe)
    phases["assign"] = round(time.perf_counter() - t, 2)
    # the share of the rows a sampled query scans (the buckets its lists fall in): the work
    # against exact search's
    bucket_of_list = np.searchsorted(edges, np.arange(nlist), side="right") - 1
    bucket_size = np.bincount(bucket_of_list[owner], minlength=len(edges) - 1)
    probed = np.zeros((len(tune_rows), len(edges) - 1), dtype=bool)
    np.put_along_axis(probed, bucket_of_list[ranked[:, :nprobe]], True, axis=1)
    scan_share = float((probed * bucket_size).sum(axis=1).mean() / n)
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], edges)
    buckets = []
    for b in range(len(edges) - 1):
        members = np.sort(order[starts[b]:starts[b + 1]])
        rows = dask.delayed(members, pure=True)  # one key, shared by the tasks
        buckets.append((int(edges[b]), int(edges[b + 1]), rows, take(members)))
    probes = [dask.delayed(_assign, pure=True)(b, cents, nprobe) for b in blocks]
    t = time.perf_counter()
    indices, sims = _gather_lists(client, bounds, [[dask.delayed(_search_bucket, pure=True, nout=2)(
        blocks[qi], probes[qi], base, rows, lo, hi, k) for lo, hi, rows, base in buckets] for qi in range(len(bounds))],
        k, progress, f"kNN search (IVF on Dask: nprobe {nprobe} of {nlist} lists, {len(buckets)} buckets)")
    phases["search"] = round(time.perf_counter() - t, 2)
    info = {"backend": "faiss-cpu on dask", "dask_workers": len(client.scheduler_info().get("workers", {})),
            "dask_blocks": len(bounds), "dask_block_rows": block_rows, "dask_buckets": len(buckets), "nlist": nlist,
            "nprobe": nprobe, "seed_recall": curve[-1][1], "nprobe_recall_curve": curve, "phase_seconds": phases,
            "scan_share": round(scan_share, 4),
            "lists": "flat (exact inside a list)"}
    if x is None:
        # the recall of what was found, on queries drawn apart from the tuning ones
        t = time.perf_counter()
        check = sample_rows(n, recall_queries, seed, exclude=tune_rows)
        if len(check):
            check_x = client.compute(take(check), sync=True)
            independent = EdgeRecall(None, check, k, None, seed,
                                     neighbours=_sample_neighbours(client, blocks, bounds, check_x, check, k))
            info.update(independent(indices[check]))
        phases["recall"] = round(time.perf_counter() - t, 2)
    return indices, sims, info


@contextlib.contextmanager
def _scratch_copy(x: np.ndarray, scratch: str | Path | None):
    """``x`` written to a scratch .npy in ``scratch`` (default: the system's temporary folder;
    on a real cluster, a folder every worker can read); yields its path, removed whatever
    happens."""
    folder = Path(scratch) if scratch is not None else Path(tempfile.gettempdir())
    # the folders made here for it (the run's --out, before the outputs) go with it when the
    # run ends without writing them: an interrupted run leaves no empty --out behind
    made = []
    probe = folder.absolute()
    while not probe.exists() and probe.parent != probe:
        made.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".tmp-dask-{os.getpid()}-", suffix=".npy", dir=folder)
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.ascontiguousarray(x, dtype=np.float32))
        except OSError as exc:  # a full disk, say: the run cannot go on, and says why in one line
            from .errors import InputError

            raise InputError(folder, f"cannot write the scratch copy of the vectors the Dask workers read "
                                     f"({exc.strerror or exc}); free space there or choose another --out") from None
        yield name
    finally:
        try:
            Path(name).unlink(missing_ok=True)
            for path in made:  # deepest first; one that now holds something stays
                path.rmdir()
        except OSError:
            pass


def search_on_dask(x: np.ndarray, k: int, client, *, scratch: str | Path | None = None,
                   block_rows: int | None = None, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`knn_graph_dask` for unit vectors ``x`` held here (``build_knn_graph(...,
    dask=client)`` calls it): ``x`` is written to a scratch .npy in ``scratch`` (a folder every
    worker can read), searched on the cluster, and the scratch file removed."""
    with _scratch_copy(x, scratch) as name:
        return knn_graph_dask(name, k, client, block_rows=block_rows, progress=progress)


def ivf_on_dask(x: np.ndarray, k: int, client, *, scratch: str | Path | None = None, block_rows: int | None = None,
                **kwargs) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`ivf_graph_dask` for unit vectors ``x`` held here, through a scratch .npy as
    :func:`search_on_dask`."""
    with _scratch_copy(x, scratch) as name:
        return ivf_graph_dask(name, k, client, x=x, block_rows=block_rows, **kwargs)
