"""The GPU figures of issue 17: `clean` on CUDA beside the CPU, on one machine, same sets.

For each size: a synthetic set (15 images per identity, intrinsic dimension 60, the default
noise mix) is cleaned with ``device="cuda"`` (exact kNN on the GPU) and timed per stage. At
the first size the same set is also cleaned on the CPU with the exact graph, and the two
audits are compared row by row: identical findings and actions, or the differing rows listed
with their scores (a graph tie broken differently is the expected cause).

Sizes above ``--clean-max`` time the GPU's parts alone: the exact graph on the GPU, the
cam-softmax heads trained on CUDA (``--train-epochs``) and in closed form, and, with
``--cpu-graph``, the CPU's IVF graph of the same set on the same machine, its recall measured
against exact search on 2,000 sampled queries, and its neighbour lists compared with the GPU's. A small clean first compiles the numba kernels, so no timed run pays that.
Rows are written to ``--json`` as they come, so a run cut short keeps what it measured.

    python bench/gpu_check.py --sizes 100000,1000000 --json gpu.json

Without a usable GPU the CUDA run falls back to the CPU and the report says so
(``device_resolved``); the script still runs, which is how CI keeps it working.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from facecluster import CleanConfig, clean
from facecluster.bench import bench_set, clean_scores, emit_row, write_rows
from facecluster.camsoftmax import (
    CamSoftmaxConfig,
    _torch_device,
    camsoftmax_confidence,
)
from facecluster.faceset import prepare_embeddings
from facecluster.knn import build_knn_graph, measure_recall
from facecluster.synth import label_names


def _run(noisy, device: str, knn_method: str):
    names = label_names(noisy.labels)
    manifest = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(len(names))], "label": names})
    t = time.perf_counter()
    result = clean(manifest, noisy.embeddings, CleanConfig(device=device, knn_method=knn_method))
    seconds = time.perf_counter() - t
    return result, seconds, clean_scores(result, noisy)


def _differing(gpu_audit, cpu_audit, rows) -> list:
    cols = ["fc_issue", "fc_action", "fc_score"]
    return [{"row": int(r), **{f"gpu_{c}": str(gpu_audit[c].iloc[r]) for c in cols},
             **{f"cpu_{c}": str(cpu_audit[c].iloc[r]) for c in cols}} for r in rows]


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 2)


def _gpu_parts(noisy, epochs: int, cpu_graph: bool) -> list:
    """The GPU's parts of a clean, alone, at a size too big to clean twice in the lease."""
    x, _, _ = prepare_embeddings(noisy.embeddings, seed=0)
    labels = noisy.labels
    n_labels = int(labels.max()) + 1
    graph, seconds = _timed(lambda: build_knn_graph(x, 30, device="cuda"))
    rows = [{"rows": len(labels), "part": "kNN graph", "device": graph.info["backend"], "seconds": seconds,
             "phase_seconds": graph.info.get("phase_seconds"), "method": graph.info["method"]}]
    for device, cfg in (("cuda", CamSoftmaxConfig(epochs=epochs)), ("cpu", CamSoftmaxConfig())):
        conf, seconds = _timed(lambda: camsoftmax_confidence(x, labels, n_labels, graph.indices, cfg, device=device))
        issue = noisy.truth["issue"].to_numpy()
        ok = np.isin(issue, ["", "flip", "open_set"]) & np.isfinite(conf.p_given)
        positive, score = np.isin(issue[ok], ["flip", "open_set"]), 1.0 - conf.p_given[ok]
        rows.append({"rows": len(labels), "part": f"cam-softmax ({'trained %d epochs' % cfg.epochs if cfg.epochs else 'closed form'})",
                     "device": _torch_device(device) if cfg.epochs else "cpu (numpy)", "seconds": seconds, "auroc": round(float(roc_auc_score(positive, score)), 4),
                     "average_precision": round(float(average_precision_score(positive, score)), 4)})
    if cpu_graph:
        ivf, seconds = _timed(lambda: build_knn_graph(x, 30, device="cpu"))
        agree = measure_recall(x, ivf.indices, 30, n_queries=2000, seed=1)
        same = float((ivf.indices == graph.indices).all(axis=1).mean())
        rows.append({"rows": len(labels), "part": "kNN graph", "device": "cpu", "seconds": seconds,
                     "method": ivf.info["method"], "phase_seconds": ivf.info.get("phase_seconds"),
                     "gpu_speedup": round(seconds / rows[0]["seconds"], 2), "recall_vs_exact": agree,
                     "rows_with_identical_neighbour_lists_vs_gpu": same})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--effective-dim", type=float, default=60.0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--clean-max", type=int, default=200_000, help="larger sizes time the GPU's parts alone")
    parser.add_argument("--train-epochs", type=int, default=2, help="cam-softmax epochs trained on CUDA (large sizes)")
    parser.add_argument("--cpu-graph", action="store_true", help="large sizes: the CPU's IVF graph too")
    args = parser.parse_args()
    rows: list = []
    _, seconds = _timed(lambda: _run(bench_set(3000, dim=512, seed=1), "cpu", "exact"))
    emit_row(rows, {"part": "warm-up (compiles the numba kernels)", "seconds": seconds})
    for i, size in enumerate(int(v) for v in args.sizes.split(",")):
        noisy = bench_set(size, dim=512, effective_dim=args.effective_dim, seed=0)
        if size > args.clean_max:
            for row in _gpu_parts(noisy, args.train_epochs, args.cpu_graph):
                emit_row(rows, row)
                write_rows(args.json, rows)
            continue
        gpu, seconds, scores = _run(noisy, "cuda", "auto")
        emit_row(rows, {"rows": len(noisy.labels), "device": gpu.report["parameters"]["device_resolved"],
                        "seconds": round(seconds, 1), "stage_seconds": gpu.report["timings"],
                        "knn": {k: gpu.graph.info.get(k) for k in ("method", "backend", "edges_that_matter_recall")},
                        "peak_rss_bytes": gpu.report["memory"]["peak_rss_bytes"], **scores})
        write_rows(args.json, rows)
        if i == 0:
            cpu, cpu_seconds, cpu_scores = _run(noisy, "cpu", "exact")
            cols = ["fc_issue", "fc_action", "fc_label"]
            a, b = gpu.audit[cols].astype(str), cpu.audit[cols].astype(str)
            differ = np.flatnonzero((a != b).any(axis=1).to_numpy())
            same_graph = float((gpu.graph.indices == cpu.graph.indices).all(axis=1).mean())
            emit_row(rows, {"rows": len(noisy.labels), "device": "cpu (exact graph)", "seconds": round(cpu_seconds, 1),
                            "gpu_speedup": round(cpu_seconds / seconds, 2), "rows_with_identical_neighbour_lists": same_graph,
                            "rows_differing": int(len(differ)),
                            "differing": _differing(gpu.audit, cpu.audit, differ[:50]), **cpu_scores})
            write_rows(args.json, rows)


if __name__ == "__main__":
    main()
