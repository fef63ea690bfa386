"""Scale of the clustering stages: average linkage, FINCH and correlation clustering up to 1M nodes.

    python bench/cluster_scale.py --sizes 100000 300000 1000000 --k 30 --dim 32 --cache /tmp/fc-graphs

The kNN graph is built first (IVF, nprobe tuned to recall 0.97; 32-d vectors keep that step
short on 2 cores, since the clustering stage is what is measured) and timed apart. Then for
each size: wall time and peak memory above the graph of average linkage (full dendrogram) and
FINCH, their rounds, and pairwise / BCubed F against the true identities, the average-linkage
cut chosen from the labels; then correlation clustering (signed graph calibrated on the labels,
bias 0, GAEC + refinement + the Pivot comparison, component threads) with its objective before
and after refinement. Memory is compared with the graph's own size, n·k·8 bytes.
"""

from __future__ import annotations

import argparse
import time

from facecluster.bench import PeakMemory, emit_row, write_rows
from facecluster.correlation import correlation_clustering, signed_graph
from facecluster.hierarchical import average_linkage, choose_threshold, finch
from facecluster.knn import build_knn_graph
from facecluster.metrics import clustering_scores
from facecluster.synth import make_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--spread", type=float, default=0.5,
                        help="within-identity spread; 0.5 keeps 32-d identities about as separable as 512-d at 0.8")
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--cache", type=str, default=None,
                        help="folder to keep each size's kNN graph in, so a re-run skips the build")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        x, y = make_faces(n, n // 15, args.dim, spread=args.spread, seed=0)
        t = time.perf_counter()
        cache = None if args.cache is None else f"{args.cache}/n{n}_k{args.k}_d{args.dim}_s{args.spread}"
        graph = build_knn_graph(x, k=args.k, device="cpu", method="ivf" if n > 50_000 else "exact", cache_dir=cache)
        t_graph = time.perf_counter() - t
        del x
        graph_mb = graph.indices.nbytes / 2**20 + graph.sims.nbytes / 2**20
        with PeakMemory() as mem_avg:
            t = time.perf_counter()
            dendrogram = average_linkage(graph)
            t_avg = time.perf_counter() - t
        t = time.perf_counter()
        threshold, _ = choose_threshold(dendrogram, y)
        part = dendrogram.cut(threshold)
        t_cut = time.perf_counter() - t
        with PeakMemory() as mem_finch:
            t = time.perf_counter()
            levels = finch(graph)
            t_finch = time.perf_counter() - t
        with PeakMemory() as mem_cc:
            t = time.perf_counter()
            signed = signed_graph(graph, y, seed=0)
            t_signed = time.perf_counter() - t
            cc = correlation_clustering(signed, seed=0)
            t_cc = time.perf_counter() - t
        cc_scores = clustering_scores(y, cc.labels)
        avg_scores = clustering_scores(y, part)
        finch_scores = max((clustering_scores(y, p) for p in levels), key=lambda s: s["pairwise_f"])
        row = {
            "n": n, "k": args.k, "dim": args.dim, "graph_s": round(t_graph, 1), "graph_method": graph.info["method"],
            "graph_recall": graph.info["recall_at_k"], "graph_mb": round(graph_mb, 1),
            "average_linkage_s": round(t_avg, 1), "average_linkage_rounds": dendrogram.rounds,
            "average_linkage_peak_mb": mem_avg.peak_mb, "cut_search_s": round(t_cut, 1),
            "average_pairwise_f": round(avg_scores["pairwise_f"], 4), "average_bcubed_f": round(avg_scores["bcubed_f"], 4),
            "finch_s": round(t_finch, 1), "finch_levels": len(levels), "finch_peak_mb": mem_finch.peak_mb,
            "finch_best_level_pairwise_f": round(finch_scores["pairwise_f"], 4),
            "correlation_s": round(t_cc, 1), "correlation_signed_graph_s": round(t_signed, 1),
            "correlation_peak_mb": mem_cc.peak_mb, "correlation_components": cc.stats["components_solved"],
            "correlation_objective_gaec": round(cc.objective_gaec, 1),
            "correlation_objective_refined": round(cc.objective_refined, 1),
            "correlation_pairwise_f": round(cc_scores["pairwise_f"], 4),
            "correlation_bcubed_f": round(cc_scores["bcubed_f"], 4),
        }
        emit_row(rows, row)
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
