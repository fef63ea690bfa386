"""Does cam-softmax help? AUROC of (1 − p(given label)) for finding injected label noise.

    python bench/camsoftmax_auroc.py --size 10000 --identities 667 --json docs/camsoftmax-10k.json
    python bench/camsoftmax_auroc.py --size 100000 --identities 10000 --json docs/camsoftmax-100k.json

On one noisy set (facecluster.synth: flips and open-set images are the positives; clean rows
the negatives; split identities and appended near-duplicates are left out, since their label
is not wrong), every scorer is cross-fitted the same way (same folds, same candidates, same
temperature fit) and differs only in its head:

- cam-softmax, adaptive schedule (ours, the default)
- cam-softmax, linear ramp to π/4 over the first 20% of steps
- cam-softmax, the reference rate (c −= 1e-4 per step)
- the same head with c fixed at π/2 (normalised softmax)
- nearest centroid (the head at its centroid initialisation, no training)

Prints AUROC, average precision, wall time and peak memory per scorer.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from facecluster.bench import PeakMemory, bench_set, emit_row, write_rows
from facecluster.camsoftmax import CamSoftmaxConfig, camsoftmax_confidence
from facecluster.faceset import prepare_embeddings
from facecluster.knn import build_knn_graph

SCORERS = {
    "cam-softmax (adaptive c)": {"schedule": "adaptive"},
    "cam-softmax (linear ramp to pi/4)": {"schedule": "linear"},
    "cam-softmax (reference rate 1e-4/step)": {"schedule": "reference"},
    "normalised softmax (c fixed at pi/2)": {"schedule": "fixed"},
    "nearest centroid (no training)": {"epochs": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--identities", type=int, default=None, help="default: size / 15")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--offset", type=float, default=0.0)
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--embeddings", default=None)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=CamSoftmaxConfig.epochs)
    parser.add_argument("--adapter", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, help="scorer names (substrings) to run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    mean_images = args.size / args.identities if args.identities else 15.0
    noisy = bench_set(args.size, dim=args.dim, offset=args.offset, mean_images=mean_images,
                      manifest=args.manifest, embeddings=args.embeddings)
    unit, _, _ = prepare_embeddings(noisy.embeddings)
    t = time.perf_counter()
    graph = build_knn_graph(unit, k=args.k, device="cpu")
    t_graph = time.perf_counter() - t
    issue = noisy.truth["issue"].to_numpy()
    judged = np.isin(issue, ["", "flip", "open_set"])
    positive = np.isin(issue, ["flip", "open_set"])
    n_classes = int(noisy.labels.max()) + 1
    print(json.dumps({"rows": len(issue), "identities": n_classes, "flips": int((issue == "flip").sum()),
                      "open_set": int((issue == "open_set").sum()), "graph_s": round(t_graph, 1)}), flush=True)
    rows = []
    for name, overrides in SCORERS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        config = CamSoftmaxConfig(**{"epochs": args.epochs, "adapter": args.adapter, **overrides})
        with PeakMemory() as mem:
            t = time.perf_counter()
            conf = camsoftmax_confidence(unit, noisy.labels, n_classes, graph.indices, config)
            seconds = time.perf_counter() - t
        ok = judged & np.isfinite(conf.p_given)
        score = 1.0 - conf.p_given[ok]
        row = {"scorer": name, "auroc": round(float(roc_auc_score(positive[ok], score)), 4),
               "average_precision": round(float(average_precision_score(positive[ok], score)), 4),
               "auroc_flips": round(float(roc_auc_score(positive[ok & ~(issue == "open_set")],
                                                         1.0 - conf.p_given[ok & ~(issue == "open_set")])), 4),
               "auroc_open_set": round(float(roc_auc_score(positive[ok & ~(issue == "flip")],
                                                            1.0 - conf.p_given[ok & ~(issue == "flip")])), 4),
               "top_label_accuracy_on_flips": round(float(np.mean(
                   conf.top[(issue == "flip") & ok] == noisy.truth["true_label"].to_numpy()[(issue == "flip") & ok])), 4),
               "unscorable": conf.stats["unscorable"], "seconds": round(seconds, 1), "peak_mb": mem.peak_mb,
               "final_c_degrees": conf.stats["final_c_degrees"], "temperature": conf.stats["temperature"],
               "mode": conf.stats["mode"], "device": conf.stats["device"]}
        emit_row(rows, row)
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
