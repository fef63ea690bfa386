"""facecluster clean against cleanlab Datalab on a long-tailed set at web scale (issue 15).

The real long-tailed sets of ../shared/data are small (665 rows from 4.6k), where cleanlab's
whole run is a fraction of a second. This builds the web-scale case the issue measured (a
long-tailed set of tens of thousands of faces and thousands of identities): the generator is
fitted to a real set (``synth.fit_generator``: its same-identity low tail and spread), a
``--size``-row set is drawn from it, subsampled to a web-like size distribution
(``--long-tail`` of the protocol: most identities 1–3 images) and the protocol's noise mix
injected; then both cleaners run in this process, timed in the same run.

    python bench/long_tail_scale.py [--data ../shared/data/celeba_wild_dlib] [--size 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_protocol import DEFAULT_DATA, base_set  # noqa: E402

from facecluster.bench import bench_set, run_bench  # noqa: E402
from facecluster.faceset import load_faceset  # noqa: E402
from facecluster.synth import fit_generator  # noqa: E402

FIGURES = ("noise_found_f1", "near_duplicate_f1", "merge_p", "merge_r", "kept_label_precision", "clean_rows_lost_share")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA / "celeba_wild_dlib")
    parser.add_argument("--size", type=int, default=100_000, help="rows drawn before the long-tail subsample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (args.data / "manifest.csv").is_file():
        sys.exit(f"no real set at {args.data}")
    with tempfile.TemporaryDirectory() as tmp:
        manifest, embeddings, _ = base_set(args.data, Path(tmp))
        fs = load_faceset(manifest, embeddings)
    fitted = fit_generator(fs.embeddings, fs.labels, seed=args.seed)
    noisy = bench_set(size=args.size, dim=fs.dim, mean_images=fs.n_samples / fs.n_labels, mix="web",
                      generator=fitted["settings"], long_tail=True, seed=args.seed)
    out = {"set": f"synthetic like {args.data.name}, {args.size} rows drawn, long-tailed",
           "rows": int(len(noisy.labels)), "labels": int(len(np.unique(noisy.labels))), "methods": []}
    print(f"{out['rows']} rows, {out['labels']} labels", flush=True)
    for row in run_bench(noisy, peers=["cleanlab"], seed=args.seed):
        if row.kind != "cleaner":
            continue
        figures = {k: round(float(row.scores[k]), 4) for k in FIGURES if k in row.scores}
        out["methods"].append({"method": row.method, "seconds": row.seconds, "peak_mb": row.peak_mb, **figures})
        print(f"{row.method:34s} {row.seconds:7.2f} s  " + "  ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
