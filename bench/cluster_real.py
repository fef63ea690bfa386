"""Clustering faces with the labels hidden: ours at its own choice against every peer at its best.

    python bench/cluster_real.py [--long-tail-draws 5] [--base] --json docs/cluster-real.json

On every real set in ../shared/data (as given, and ``--long-tail``: identities subsampled to a
web-like size distribution, facecluster.synth.long_tail, in five draws whose mean and sd are
reported; every peer at its oracle setting per draw) and on synthetic sets of both
geometries, the identity labels are hidden from every method and used only to score:

- facecluster, defaults (``facecluster cluster``: correlation clustering, bias 0, the
  shared-neighbour evidence, and on embeddings that had to be centred the edges valued by
  faces averaged with their likely-same neighbours), and the previous default (graph
  average linkage cut at the mixture's equal-odds similarity). Neither sees the labels.
- The peers at their **oracle** setting, the one that scores best against the hidden labels:
  average linkage over all pairs (scipy, cosine) at its best threshold, Infomap on the same
  kNN graph at its best edge-similarity floor, FINCH at its best level, HDBSCAN (scikit-learn)
  at its best min_cluster_size, and our graph average linkage at its best threshold.

Pairwise F and BCubed F (the best setting is chosen on pairwise F). Embeddings are processed
once (L2-normalised, centred when the data say so) and every method gets the same vectors and,
where it takes one, the same k = 30 graph.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from facecluster.bench import bench_set, infomap_partition
from facecluster.calibration import fit_calibration
from facecluster.correlation import CorrelationConfig, correlation_stage
from facecluster.faceset import prepare_embeddings
from facecluster.hierarchical import (
    HierarchicalConfig,
    average_linkage,
    finch,
    hierarchical_stage,
)
from facecluster.knn import build_knn_graph
from facecluster.metrics import bcubed_scores, pairwise_scores
from facecluster.partition import label_codes
from facecluster.synth import long_tail

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def scores(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    return pairwise_scores(truth, pred)["f"], bcubed_scores(truth, pred)["f"]


def best(truth: np.ndarray, candidates) -> tuple[tuple[float, float], object]:
    """The candidate (setting, partition) scoring best on pairwise F."""
    top = ((-1.0, -1.0), None)
    for setting, pred in candidates:
        f = scores(truth, pred)
        if f[0] > top[0][0]:
            top = (f, setting)
    return top


def run_set(name: str, x: np.ndarray, truth: np.ndarray, *, k: int, seed: int, peers: bool) -> list[dict]:
    from scipy.cluster.hierarchy import fcluster, linkage
    from sklearn.cluster import HDBSCAN

    unit, centred, _ = prepare_embeddings(x)
    graph = build_knn_graph(unit, k=k, device="cpu", seed=seed)
    rows = []

    def emit(method: str, f, setting, seconds: float, oracle: bool):
        rows.append(result_row(name, truth, method, f, setting, seconds, oracle))

    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    calibration = fit_calibration(graph, None, rng=rng)
    part = correlation_stage(graph, None, CorrelationConfig(), calibration=calibration, rng=rng, embeddings=unit,
                             centred=centred)
    emit("facecluster cluster (defaults: correlation, shared neighbours, smoothing on offset embeddings)",
         scores(truth, part.labels), f"bias 0, smoothed {part.stats['smoothing']['applied']}",
         time.perf_counter() - t, False)
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    calibration = fit_calibration(graph, None, rng=rng)
    part = hierarchical_stage(graph, None, HierarchicalConfig(), calibration=calibration, rng=rng)
    emit("facecluster average linkage, cut from the data (previous default)", scores(truth, part.labels),
         round(part.stats["threshold"], 4), time.perf_counter() - t, False)
    if not peers:
        return rows
    t = time.perf_counter()
    dendrogram = average_linkage(graph)
    f, setting = best(truth, ((round(float(c), 3), dendrogram.cut(c)) for c in np.linspace(-0.3, 0.98, 65)))
    emit("facecluster graph average linkage, best threshold", f, setting, time.perf_counter() - t, True)
    t = time.perf_counter()
    tree = linkage(unit, "average", metric="cosine")
    f, setting = best(truth, ((round(float(d), 3), fcluster(tree, d, "distance")) for d in np.linspace(0.02, 1.3, 65)))
    emit("average linkage, all pairs (scipy), best threshold", f, setting, time.perf_counter() - t, True)
    t = time.perf_counter()
    floors = np.quantile(graph.sims[graph.indices >= 0], np.linspace(0.0, 0.95, 20))
    f, setting = best(truth, ((round(float(q), 3), infomap_partition(graph, q, seed)) for q in floors))
    emit("Infomap (same kNN graph), best similarity floor", f, setting, time.perf_counter() - t, True)
    t = time.perf_counter()
    f, setting = best(truth, ((level, part) for level, part in enumerate(finch(graph))))
    emit("FINCH, best level", f, setting, time.perf_counter() - t, True)
    t = time.perf_counter()

    def hdbscan(size):
        pred = HDBSCAN(min_cluster_size=size).fit_predict(unit)
        return np.where(pred < 0, pred.max() + 1 + np.arange(len(pred)), pred)  # noise: singletons
    f, setting = best(truth, ((size, hdbscan(size)) for size in (2, 3, 5, 10)))
    emit("HDBSCAN (scikit-learn), best min_cluster_size", f, setting, time.perf_counter() - t, True)
    return rows


def real_sets(data: Path, draws: int = 5):
    """Each real set as given, and ``draws`` long-tailed subsamples of it (seeds 0..draws-1):
    one draw of a few hundred identities moves pairwise F by ±0.02. With each, the rows a
    clustering that follows the faces does not put under their label
    (:func:`real_protocol.unseen_by_the_faces`)."""
    from real_protocol import unseen_by_the_faces

    for folder in sorted(p for p in data.glob("*") if (p / "manifest.csv").exists() and (p / "embeddings.npy").exists()):
        manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
        x = np.load(folder / "embeddings.npy")
        truth = label_codes(manifest["label"].to_numpy(), len(manifest))
        unseen = unseen_by_the_faces(folder, manifest)
        yield f"{folder.name}, plain", x, truth, unseen
        for draw in range(draws):
            xl, yl, kept = long_tail(x, truth, seed=draw)
            yield f"{folder.name}, long-tail (draw {draw})", xl, label_codes(yl, len(yl)), unseen[kept]


def result_row(name: str, truth: np.ndarray, method: str, f, setting, seconds: float, oracle: bool) -> dict:
    """One bench row (printed as it comes): a method's pairwise and BCubed F on one set."""
    row = {"set": name, "rows": len(truth), "identities": int(len(np.unique(truth))), "method": method,
           "oracle": oracle, "setting": setting, "pairwise_f": round(f[0], 4), "bcubed_f": round(f[1], 4),
           "seconds": round(seconds, 2)}
    print(json.dumps(row), flush=True)
    return row


def ceiling_row(name: str, truth: np.ndarray, unseen: np.ndarray) -> dict:
    """The labels with the ``unseen`` rows split off as single rows, scored against the labels:
    about the best a clustering that follows the faces can reach on a set as given (no method
    here is told which rows those are)."""
    pred = np.asarray(truth).copy()
    rows = np.flatnonzero(unseen)
    pred[rows] = pred.max() + 1 + np.arange(len(rows))
    return result_row(name, truth, "ceiling: the labels, failed detections and rows every face model rejects as "
                      "single rows", scores(truth, pred), f"{len(rows)} rows split off", 0.0, True)


def base_sets(data: Path, draws: int = 5):
    """Each real set less its documented natural noise (failed detections, byte-identical
    files, the mixed identities, photos with several faces, the rows every face model places
    with another identity, re-crops of one photo: the cleaning protocol's base set,
    bench/real_protocol.py), as given and in the same long-tailed draws. The truth of the sets
    as given holds those rows under labels they do not show; here every method is scored
    against labels that are the people in the photos."""
    import tempfile

    from real_protocol import base_set

    for folder in sorted(p for p in data.glob("*") if (p / "manifest.csv").exists() and (p / "embeddings.npy").exists()):
        with tempfile.TemporaryDirectory() as tmp:
            manifest_path, embeddings_path, _ = base_set(folder, Path(tmp))
            manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
            x = np.load(embeddings_path)
        truth = label_codes(manifest["label"].to_numpy(), len(manifest))
        name = f"{folder.name} less its natural noise"
        yield f"{name}, plain", x, truth, None
        for draw in range(draws):
            xl, yl, _ = long_tail(x, truth, seed=draw)
            yield f"{name}, long-tail (draw {draw})", xl, label_codes(yl, len(yl)), None


def summary(rows: list[dict]) -> list[dict]:
    """Mean and sd over the long-tailed draws, per set and method."""
    out = []
    frame = pd.DataFrame(rows)
    frame["family"] = frame["set"].str.replace(r" \(draw \d+\)$", "", regex=True)
    for (family, method), group in frame[frame["set"] != frame["family"]].groupby(["family", "method"], sort=False):
        row = {"set": family, "method": method, "draws": len(group)}
        for key in ("pairwise_f", "bcubed_f"):
            row[key] = round(float(group[key].mean()), 4)
            row[f"{key}_sd"] = round(float(group[key].std(ddof=0)), 4)
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def synthetic_sets(size: int):
    for name, kwargs in (("centred", {}), ("dlib-like", dict(offset=2.2, effective_dim=12))):
        noisy = bench_set(size, dim=128, seed=0, **kwargs)
        yield f"synthetic {name} {size // 1000}k", noisy.embeddings, noisy.truth["true_person"].to_numpy(), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of real sets (manifest.csv + embeddings.npy)")
    parser.add_argument("--synthetic-size", type=int, default=5000)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true", help="ours only")
    parser.add_argument("--long-tail-draws", type=int, default=5, help="long-tailed subsamples of each real set")
    parser.add_argument("--base", action="store_true",
                        help="also each real set less its documented natural noise (the cleaning protocol's base set)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows = []
    sets = list(real_sets(args.data, args.long_tail_draws)) if args.data.exists() else []
    if sets and args.base:
        sets += list(base_sets(args.data, args.long_tail_draws))
    if not sets:
        print(f"no real sets under {args.data}: synthetic only")
    for name, x, truth, unseen in sets + list(synthetic_sets(args.synthetic_size)):
        if unseen is not None and unseen.any():
            rows.append(ceiling_row(name, truth, unseen))
        rows += run_set(name, x, truth, k=args.k, seed=args.seed, peers=not args.no_peers)
    means = summary(rows) if rows else []
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "long_tail_means": means}, indent=1) + "\n")


if __name__ == "__main__":
    main()
