"""kNN graph benchmark: HNSW (the approximate path) against exact search, same data, same run.

    python bench/knn_recall.py --sizes 20000 100000 --dim 512 --k 30

For each size: wall time and peak RSS growth of exact (flat) search and of HNSW at the
default settings, HNSW's recall@k measured against exact on a query sample, and the speed
ratio. Data: facecluster.synth.make_faces (long-tailed identities, ArcFace-like geometry).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from facecluster.knn import build_knn_graph, measure_recall
from facecluster.synth import make_faces


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--skip-exact-above", type=int, default=200_000)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        x, _ = make_faces(n, max(10, n // 15), args.dim, seed=0)
        t = time.perf_counter()
        approx = build_knn_graph(x, k=args.k, device="cpu", method="hnsw")
        t_hnsw = time.perf_counter() - t
        row = {"n": n, "dim": args.dim, "k": args.k, "hnsw_s": round(t_hnsw, 1),
               "hnsw_recall": approx.info["recall_at_k"], "ef_search": approx.info["ef_search"]}
        if n <= args.skip_exact_above:
            t = time.perf_counter()
            exact = build_knn_graph(x, k=args.k, device="cpu", method="exact")
            row["exact_s"] = round(time.perf_counter() - t, 1)
            hits = sum(len(np.intersect1d(a, b)) for a, b in zip(approx.indices, exact.indices))
            row["hnsw_recall_full"] = round(hits / exact.indices.size, 4)
            row["speedup_vs_exact"] = round(row["exact_s"] / t_hnsw, 2)
        row["peak_rss_mb"] = round(_rss_mb())
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
