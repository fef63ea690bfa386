"""kNN graph benchmark: exact, IVF and HNSW on the same data in one run.

    python bench/knn_recall.py --sizes 20000 100000 --dim 512 --k 30

For each size and method: wall time, recall@k against the exact graph (computed on all rows
where exact ran, else on the method's own sampled estimate), the sampled recall of the edges
that matter (facecluster.knn.EdgeRecall: what IVF is tuned on) and time as a ratio of exact's.
Data: facecluster.synth.make_faces (long-tailed identities, ArcFace-like geometry), seeded.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from facecluster.bench import emit_row, write_rows
from facecluster.knn import build_knn_graph
from facecluster.synth import make_faces


def _recall(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum(len(np.intersect1d(x, y)) for x, y in zip(a, b)) / a.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--methods", nargs="+", default=["exact", "ivf", "hnsw"])
    parser.add_argument("--skip-exact-above", type=int, default=300_000)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        x, _ = make_faces(n, max(10, n // 15), args.dim, seed=0)
        graphs, seconds = {}, {}
        for method in args.methods:
            if method == "exact" and n > args.skip_exact_above:
                continue
            t = time.perf_counter()
            graphs[method] = build_knn_graph(x, k=args.k, device="cpu", method=method)
            seconds[method] = time.perf_counter() - t
        for method, graph in graphs.items():
            row = {"n": n, "dim": args.dim, "k": args.k, "method": graph.info["method"],
                   "seconds": round(seconds[method], 1), "recall_sampled": graph.info["recall_at_k"],
                   "edges_that_matter_recall_sampled": graph.info.get("edges_that_matter_recall")}
            if "exact" in graphs:
                row["recall_full"] = round(_recall(graph.indices, graphs["exact"].indices), 4)
                row["time_vs_exact"] = round(seconds[method] / seconds["exact"], 3)
            for key in ("nprobe", "nlist", "ef_search"):
                if key in graph.info:
                    row[key] = graph.info[key]
            emit_row(rows, row)
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
