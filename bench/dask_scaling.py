"""The exact kNN graph on Dask against the local build, with 1 and 2 worker processes, and the
measured cost of one block pair projected to 10M and 100M rows; with ``--ivf`` also the IVF
graph on Dask (flat lists searched exactly bucket by bucket, refined on the driver), and with
``--ivf-array`` the IVF graph from a dask array the workers read from disk (an .npy stack: the
matrix never comes to the driver, no refinement; recall measured on the cluster).

    python bench/dask_scaling.py --rows 100000 --dim 512 --block-rows 25000 --ivf --ivf-array --json docs/dask-scaling.json

Same synthetic family as the other benches (bench_set: 15 images per identity); the graphs are
compared with the local exact graph (they must be identical).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--block-rows", type=int, default=25_000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--ivf", action="store_true", help="also the IVF graph on Dask (refined here), per worker count")
    parser.add_argument("--bucket-rows", type=int, default=None, help="IVF on Dask: rows per bucket of lists")
    parser.add_argument("--ivf-array", action="store_true",
                        help="also the IVF graph from an .npy stack read by the workers (no refinement), per worker count")
    parser.add_argument("--array-seed-target", type=float, default=0.99,
                        help="--ivf-array: the share of the sampled edges that matter the probed lists must hold")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact graph on Dask (the local one still runs)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from dask.distributed import Client, LocalCluster

    import facecluster.knn_dask as knn_dask
    from facecluster.bench import bench_set
    from facecluster.faceset import prepare_embeddings
    from facecluster.knn import build_knn_graph

    x, _, _ = prepare_embeddings(bench_set(args.rows, dim=args.dim, effective_dim=60.0, seed=0).embeddings)
    t = time.perf_counter()
    local = build_knn_graph(x, k=args.k, device="cpu", method="exact")
    rows = [{"run": "local, one process (FAISS over all cores)", "seconds": round(time.perf_counter() - t, 1)}]
    print(json.dumps(rows[-1]), flush=True)
    knn_dask.BLOCK_ROWS = args.block_rows
    knn_dask.BUCKET_ROWS = args.bucket_rows
    blocks = -(-args.rows // args.block_rows)
    def timed_on_cluster(n: int, method: str):
        """The graph of x by ``method`` on a fresh LocalCluster of n worker processes, timed."""
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        try:
            t = time.perf_counter()
            graph = build_knn_graph(x, k=args.k, device="cpu", dask=client, method=method)
            return graph, time.perf_counter() - t
        finally:
            client.close()
            cluster.close()

    stack = None
    if args.ivf_array:
        import tempfile

        import dask.array as da

        stack = tempfile.mkdtemp(prefix="fc-stack-")
        da.to_npy_stack(stack, da.from_array(x, chunks=(args.block_rows, -1)))

    for n in (int(w) for w in args.workers.split(",")):
        if not args.no_exact:
            graph, seconds = timed_on_cluster(n, "exact")
            same = bool(np.array_equal(graph.indices, local.indices) and np.array_equal(graph.sims, local.sims))
            rows.append({"run": f"Dask, {n} worker process(es), 1 thread each", "seconds": round(seconds, 1),
                         "block_pairs": blocks * blocks,
                         "seconds_per_block_pair_per_worker": round(seconds * n / blocks**2, 3),
                         "identical_to_local": same})
            print(json.dumps(rows[-1]), flush=True)
        if stack is not None:
            import dask.array as da

            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
            client = Client(cluster)
            try:
                t = time.perf_counter()
                indices, _, info = knn_dask.ivf_graph_dask(da.from_npy_stack(stack), args.k, client,
                                                             seed_target=args.array_seed_target,
                                                             block_rows=args.block_rows, bucket_rows=args.bucket_rows)
                seconds = time.perf_counter() - t
            finally:
                client.close()
                cluster.close()
            hit = float((indices[:, :, None] == local.indices[:, None, :]).any(axis=2).mean())
            rows.append({"run": f"Dask IVF from an .npy stack (no refinement), {n} worker process(es)",
                         "seconds": round(seconds, 1), "phase_seconds": info["phase_seconds"], "nlist": info["nlist"],
                         "nprobe": info["nprobe"], "buckets": info["dask_buckets"], "scan_share": info["scan_share"],
                         "seed_target": args.array_seed_target, "seed_recall": info["seed_recall"],
                         "edges_that_matter_recall": round(info["edges_that_matter_recall"], 5),
                         "recall_at_k_all_rows": round(hit, 5)})
            print(json.dumps(rows[-1]), flush=True)
        if args.ivf:
            graph, seconds = timed_on_cluster(n, "ivf")
            info = graph.info
            hit = float((graph.indices[:, :, None] == local.indices[:, None, :]).any(axis=2).mean())
            rows.append({"run": f"Dask IVF, {n} worker process(es), 1 thread each", "seconds": round(seconds, 1),
                         "phase_seconds": info["phase_seconds"], "nlist": info["nlist"], "nprobe": info["nprobe"],
                         "buckets": info["dask_buckets"], "scan_share": info["scan_share"],
                         "seed_recall": info["seed_recall"], "refine_rounds": len(info["refine_rounds"]),
                         "edges_that_matter_recall": round(info["edges_that_matter_recall"], 5),
                         "recall_at_k_all_rows": round(hit, 5)})
            print(json.dumps(rows[-1]), flush=True)
    # on paper: block pairs grow as (N / b)^2, each costing what was measured (b fixed)
    if stack is not None:
        import shutil

        shutil.rmtree(stack, ignore_errors=True)
    timed_pairs = [r["seconds_per_block_pair_per_worker"] for r in rows if "seconds_per_block_pair_per_worker" in r]
    paper = []
    b = args.block_rows
    for n_rows in (10_000_000, 100_000_000) if timed_pairs else ():
        per_pair = min(timed_pairs)
        pairs = (n_rows / b) ** 2
        paper.append({"rows": n_rows, "block_pairs": int(pairs), "worker_core_hours": round(pairs * per_pair / 3600, 1),
                      "task_memory_mb": round((2 * b * args.dim * 4 + 2 * b * (args.k + 9) * 12) / 1e6, 1),
                      "driver_graph_gb": round(n_rows * args.k * 8 / 1e9, 1),
                      "driver_vectors_gb": round(n_rows * args.dim * 4 / 1e9, 1)})
        print(json.dumps(paper[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": args.rows, "dim": args.dim, "k": args.k, "block_rows": b, "runs": rows, "on_paper": paper},
                      fh, indent=2)


if __name__ == "__main__":
    main()
