"""What each clustering stage adds to cleaning: the same noisy set cleaned with every stage subset.

    python bench/stage_ablation.py --size 10000 --json docs/ablation-10k.json
    python bench/stage_ablation.py --manifest ../shared/data/celeba_wild_dlib/manifest.csv \\
        --embeddings ../shared/data/celeba_wild_dlib/embeddings.npy

For each subset of stages: wall time, the headline cleaning scores (acted on, conservative
policy), and how trustworthy the evidence is: precision of the mislabeled findings a stage's
partition corroborates against those it does not, and precision / count of the samples sent to
review because a partition disagrees with the label while the kNN vote did not flag them.
"""

from __future__ import annotations

import argparse
import time
from itertools import combinations

import numpy as np
import pandas as pd

from facecluster.bench import (
    _flat_cleaning,
    _merge_truth,
    _true_label_names,
    bench_set,
    emit_row,
    write_rows,
)
from facecluster.metrics import cleaning_scores
from facecluster.pipeline import CLEAN_STAGES, CleanConfig, clean
from facecluster.synth import label_names


def _precision(mask: np.ndarray, truth: np.ndarray) -> float | None:
    return None if not mask.any() else round(float(truth[mask].mean()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--embeddings", default=None)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    noisy = bench_set(args.size, dim=args.dim, seed=args.seed, manifest=args.manifest, embeddings=args.embeddings)
    names = label_names(noisy.labels)
    manifest = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(len(names))], "label": names})
    wrong = noisy.truth["issue"].isin(["flip", "open_set"]).to_numpy()
    rows = []
    subsets = [s for r in range(len(CLEAN_STAGES) + 1) for s in combinations(CLEAN_STAGES, r)]
    for stages in subsets:
        t = time.perf_counter()
        result = clean(manifest, noisy.embeddings, CleanConfig(k=args.k, seed=args.seed, stages=stages))
        seconds = time.perf_counter() - t
        scores = cleaning_scores(result.audit, _true_label_names(noisy), noisy.truth, result.identities,
                                 _merge_truth(noisy))
        f = result.findings
        mis = f.issue == "mislabeled"
        row = {"stages": "+".join(stages) or "kNN votes only", "seconds": round(seconds, 2),
               **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in _flat_cleaning(scores).items()},
               "mislabeled_found": int(mis.sum()),
               "precision_corroborated": _precision(mis & f.corroborated, wrong),
               "n_corroborated": int((mis & f.corroborated).sum()),
               "precision_not_corroborated": _precision(mis & ~f.corroborated, wrong),
               "n_not_corroborated": int((mis & ~f.corroborated).sum()),
               "review_from_partitions": int((f.review & (f.issue == "")).sum()),
               "precision_review_from_partitions": _precision(f.review & (f.issue == ""), wrong)}
        emit_row(rows, row)
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
