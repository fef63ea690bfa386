"""Peak memory of `facecluster clean` from files, measured beside its up-front estimate.

Each size is written as a manifest + .npy (synthetic, 512-d, 15 images per identity) and
cleaned in a fresh process (`facecluster clean ... -q`); the child's peak resident memory
(getrusage) is set beside `facecluster.memory.estimate_clean_memory` for the same shape, and
beside the embedding matrix (issue 17's bar: peak ≤ 3× the matrix). The estimate should sit
at or above the measurement: it is what `--memory-budget` refuses on.

    python bench/memory_model.py --sizes 10000,30000,100000 --json memory.json
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from facecluster.bench import bench_set, emit_row, write_rows
from facecluster.memory import estimate_clean_memory
from facecluster.synth import label_names


def measure(size: int, effective_dim: float, workdir: Path) -> dict:
    noisy = bench_set(size, dim=512, effective_dim=effective_dim, seed=0)
    n, d = noisy.embeddings.shape
    manifest = workdir / f"set{n}.csv"
    pd.DataFrame({"path": [f"img/{i:07d}.jpg" for i in range(n)], "label": label_names(noisy.labels)}).to_csv(manifest, index=False)
    np.save(workdir / f"set{n}.npy", np.asarray(noisy.embeddings, dtype=np.float32))
    del noisy
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli.main", "clean", str(manifest), "--out", str(workdir / f"out{n}"), "-q"],
                   check=True, cwd=Path(__file__).resolve().parents[1])
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if peak <= before * 1024:
        peak = None  # an earlier, larger child holds the maximum: run sizes in increasing order
    method = "exact" if n <= 200_000 else "ivf"
    estimate = estimate_clean_memory(n, d, 30, knn_method=method)
    matrix = n * d * 4
    return {"rows": n, "seconds": round(seconds, 1), "knn": method, "peak_rss_gib": None if peak is None else round(peak / 2**30, 3),
            "estimate_gib": round(estimate.total / 2**30, 3), "matrix_gib": round(matrix / 2**30, 3),
            "peak_over_matrix": None if peak is None else round(peak / matrix, 2),
            "estimate_over_peak": None if peak is None else round(estimate.total / peak, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--effective-dim", type=float, default=60.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows: list = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sorted(int(v) for v in args.sizes.split(",")):
            emit_row(rows, measure(size, args.effective_dim, Path(tmp)))
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
