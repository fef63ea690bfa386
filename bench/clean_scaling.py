"""End-to-end ``clean`` on generated noisy sets: time per stage, peak memory, quality.

    python bench/clean_scaling.py --sizes 10000 100000 --dim 512

Each size: make_faces (n/15 identities on average, long-tailed) + inject_noise at its default
mix, then facecluster.clean with the default (conservative) policy; prints one JSON line with
stage timings, peak RSS and precision/recall per issue against the injected truth.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pandas as pd

import facecluster as fc
from facecluster.metrics import issue_scores
from facecluster.synth import inject_noise, label_names, make_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--offset", type=float, default=0.0)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        t = time.perf_counter()
        x, y = make_faces(n, max(10, n // 15), args.dim, offset=args.offset, seed=0)
        noisy = inject_noise(x, y, seed=0)
        del x
        names = label_names(noisy.labels)
        manifest = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(len(names))], "label": names})
        t_gen = time.perf_counter() - t
        result = fc.clean(manifest, noisy.embeddings, fc.CleanConfig(k=args.k))
        audit = result.audit
        scores = issue_scores(audit.fc_issue.to_numpy(), noisy.truth)
        acted = issue_scores(audit.fc_issue.to_numpy(), noisy.truth, acted=(audit.fc_action != "keep").to_numpy())
        truth_names = np.where(noisy.truth.true_label >= 0, label_names(np.maximum(noisy.truth.true_label, 0)), "")
        kept = audit.fc_action.isin(["keep", "relabel", "merge"]).to_numpy()
        row = {
            "n": int(len(names)), "dim": args.dim, "offset": args.offset, "generate_s": round(t_gen, 1),
            "timings_s": result.report["timings"], "knn": {k: result.graph.info.get(k) for k in
                                                          ("method", "recall_at_k", "nprobe")},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "found": {k: (v["precision"], v["recall"]) for k, v in scores.items()},
            "acted": {k: (v["precision"], v["recall"]) for k, v in acted.items()},
            "kept_label_precision": round(float((audit.fc_label.to_numpy()[kept] == truth_names[kept]).mean()), 4),
            "clean_rows_lost": int(((~kept) & (noisy.truth.issue == "").to_numpy()).sum()),
            "merges_suggested": int(len(result.identities)), "merges_true": int(len(noisy.merge_pairs)),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
