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

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .knn import drop_self
from .progress import NullProgress, Progress

BLOCK_ROWS = 65_536


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
    return Client(str(spec)), True


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


def knn_graph_dask(source, k: int, client, *, block_rows: int = BLOCK_ROWS,
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
    from dask.distributed import as_completed

    progress = progress or NullProgress()
    if isinstance(source, (str, Path)):
        path = str(Path(source).resolve())
        n, d = np.load(path, mmap_mode="r").shape
        bounds = [(s, min(s + block_rows, n)) for s in range(0, n, block_rows)]
        blocks = [dask.delayed(_read_block, pure=True)(path, s, e) for s, e in bounds]
    else:
        if any(np.isnan(c) for c in source.chunks[0]):  # e.g. a Parquet frame's to_dask_array()
            source = source.compute_chunk_sizes()
        n, d = source.shape
        if len(source.chunks[1]) != 1:
            source = source.rechunk({1: -1})  # a block holds whole rows
        starts = np.r_[0, np.cumsum(source.chunks[0])]
        bounds = [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        blocks = [dask.delayed(np.ascontiguousarray)(b, dtype=np.float32) for b in source.to_delayed().ravel()]
    k = int(min(k, n - 1))
    outs = []
    for qi, (qs, _) in enumerate(bounds):
        parts = [dask.delayed(_search_pair, pure=True, nout=2)(blocks[qi], blocks[bj], bs, k)
                 for bj, (bs, _) in enumerate(bounds)]
        merged = _tree(parts, lambda a, b: dask.delayed(_merge, pure=True, nout=2)(a, b))
        outs.append(dask.delayed(_finish, pure=True, nout=2)(merged, qs, k))
    t = time.perf_counter()
    futures = client.compute(outs)
    index_of = {f.key: i for i, f in enumerate(futures)}
    indices = np.empty((n, k), dtype=np.int32)
    sims = np.empty((n, k), dtype=np.float32)
    with progress.task(f"kNN search (exact, Dask: {len(bounds)}² block pairs)", total=n) as advance:
        for future in as_completed(futures):
            i = index_of[future.key]
            s, e = bounds[i]
            indices[s:e], sims[s:e] = future.result()
            advance(e - s)
    workers = len(client.scheduler_info().get("workers", {}))
    info = {"backend": "faiss-cpu on dask", "dask_workers": workers, "dask_blocks": len(bounds),
            "dask_block_rows": block_rows, "phase_seconds": {"search": round(time.perf_counter() - t, 2)}}
    return indices, sims, info


def search_on_dask(x: np.ndarray, k: int, client, *, scratch: str | Path | None = None,
                   block_rows: int | None = None, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`knn_graph_dask` for unit vectors ``x`` held here (``build_knn_graph(...,
    dask=client)`` calls it): ``x`` is written to a scratch .npy in ``scratch`` (default: the
    system's temporary folder; on a real cluster, a folder every worker can read), searched on
    the cluster, and the scratch file removed, whatever happens."""
    folder = Path(scratch) if scratch is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".tmp-dask-{os.getpid()}-", suffix=".npy", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.ascontiguousarray(x, dtype=np.float32))
        return knn_graph_dask(name, k, client, block_rows=block_rows or BLOCK_ROWS, progress=progress)
    finally:
        Path(name).unlink(missing_ok=True)
