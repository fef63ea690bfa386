"""``facecluster bench``: our pipeline, its stages and the peers a user would pick instead, on
the same noisy set, in one process, with quality, wall time and peak memory side by side.

Cleaners (scored on the injected issues): facecluster ``clean``, and cleanlab Datalab with
``features=`` (label, outlier and near_duplicate issues). Clusterers (scored against the
identity really shown, open-set people included): our graph average linkage and FINCH (cut /
level chosen from the noisy labels, as ``clean`` does), and HDBSCAN, FINCH (finch-clust),
scikit-learn average-linkage agglomerative, FAISS spherical k-means and Infomap on the kNN graph. k-means and
agglomerative are given the true number of identities (oracle K) and FINCH's level closest to
it, so these figures are upper bounds for them. A peer that cannot run at the size asked for
(memory it would need, or a documented complexity limit) is skipped with a note, never
silently.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .knn import build_knn_graph
from .metrics import canonical_labels, cleaning_scores, clustering_scores
from .pipeline import CleanConfig, clean
from .progress import NullProgress, Progress
from .relabel import Decisions, apply_decisions
from .synth import WEB_MIX, NoisySet, inject_noise, label_names, make_faces
from .synth import long_tail as subsample_long_tail

PEERS = ("cleanlab", "hdbscan", "finch", "agglomerative", "kmeans", "infomap")

# Sizes above which a peer is skipped: each is where its memory or time stops being
# reasonable on one machine (agglomerative keeps an n² distance matrix; HDBSCAN's core
# distances in high dimension are brute force).
PEER_LIMITS = {"agglomerative": 30_000, "hdbscan": 60_000}


@dataclass
class BenchRow:
    """One method's outcome on the bench set."""

    method: str
    kind: str  # "cleaner", "clusterer" or "stage"
    seconds: float | None = None
    peak_mb: float | None = None
    scores: dict = field(default_factory=dict)
    note: str = ""


class PeakMemory:
    """Peak resident memory above the starting level while the block runs (sampled every 10 ms).

    Works in one process for allocations from C libraries (FAISS, BLAS) too, which
    tracemalloc does not see. Linux /proc; elsewhere reports None.
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak_mb: float | None = None

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return None

    def __enter__(self):
        self._base = self._rss()
        self._peak = self._base or 0
        self._stop = threading.Event()

        def watch():
            while not self._stop.is_set():
                rss = self._rss() or 0
                self._peak = max(self._peak, rss)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss() or 0)
        if self._base is not None:
            self.peak_mb = round((self._peak - self._base) / 2**20, 1)
        return False


MIXES = {"synthetic": {}, "web": WEB_MIX}


def bench_set(size: int = 10_000, *, dim: int = 512, offset: float = 0.0, effective_dim: float | None = None,
              mean_images: float = 15.0, seed: int = 0, manifest: str | Path | None = None, embeddings: str | Path | None = None,
              path_col: str = "path", label_col: str = "label", mix: str | None = None, long_tail: bool = False,
              generator: dict | None = None) -> NoisySet:
    """The noisy set to bench on: generated, or a user's labelled set with noise injected.

    A user's set is taken as clean (its own label noise then counts against every method
    alike); the injected noise is the ground truth. ``mix``: "web" (:data:`~facecluster.synth.WEB_MIX`,
    the real-set protocol: the default with ``manifest``) or "synthetic" (inject_noise's
    defaults: the default for generated sets). ``long_tail`` first subsamples the identities
    to a web-like size distribution (:func:`~facecluster.synth.long_tail`). ``generator``:
    further ``make_faces`` settings (e.g. :func:`~facecluster.synth.fit_generator`'s, for a
    synthetic set shaped like a real one).
    """
    if manifest is not None:
        from .faceset import load_faceset

        fs = load_faceset(manifest, embeddings, path_col=path_col, label_col=label_col)
        x, y = fs.embeddings, fs.labels
    else:
        settings = {"offset": offset, "effective_dim": effective_dim, **(generator or {})}
        x, y = make_faces(size, max(2, int(round(size / mean_images))), dim, seed=seed, **settings)
    mix = mix or ("web" if manifest is not None else "synthetic")
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {', '.join(MIXES)}, got {mix!r}")
    if long_tail:
        x, y, _ = subsample_long_tail(x, y, seed=seed)
        y = np.unique(y, return_inverse=True)[1]
    return inject_noise(x, y, seed=seed, **MIXES[mix])


def _true_label_names(noisy: NoisySet) -> np.ndarray:
    true = noisy.truth["true_label"].to_numpy()
    return np.where(true >= 0, label_names(np.maximum(true, 0)), "")


def _merge_truth(noisy: NoisySet) -> list:
    return [(str(a), str(b)) for a, b in zip(label_names(noisy.merge_pairs[:, 0]), label_names(noisy.merge_pairs[:, 1]))]


def _flat_cleaning(scores: dict) -> dict:
    out = {"noise_found_p": scores["noise_found"]["precision"], "noise_found_r": scores["noise_found"]["recall"],
           "noise_found_f1": scores["noise_found"]["f1"]}
    # the counts behind each figure: a precision over nothing found, a recall over nothing
    # injected, is undefined (printed "–"), not 0
    out.update(noise_found_n_pred=scores["noise_found"]["n_pred"], noise_found_n_true=scores["noise_found"]["n_true"])
    for issue, s in scores["acted_on"].items():
        out[f"{issue}_p"], out[f"{issue}_r"], out[f"{issue}_f1"] = s["precision"], s["recall"], s["f1"]
        out[f"{issue}_n_pred"], out[f"{issue}_n_true"] = s["n_pred"], s["n_true"]
    out.update(merge_p=scores["merges"]["precision"], merge_r=scores["merges"]["recall"],
               merge_n_pred=scores["merges"]["n_suggested"], merge_n_true=scores["merges"]["n_true"],
               relabel_acc=scores["relabel_accuracy"], relabelled=scores["relabelled"],
               kept_label_precision=scores["kept_label_precision"],
               clean_rows_lost_share=scores["clean_rows_lost_share"], review_rows=scores["review_rows"],
               review_noisy_rows=scores["review_noisy_rows"])
    return out


def _timed(fn):
    with PeakMemory() as mem:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    return out, round(seconds, 2), mem.peak_mb


# --------------------------------------------------------------------------- methods


def clean_scores(result, noisy: NoisySet) -> dict:
    """A ``clean`` result's cleaning figures against the injected truth of ``noisy``, flat.

    Beside the run's own figures, the outcome once a person has decided its review list
    (``*_reviewed``): every row left for review (``fc_issue`` = review) decided as the truth
    says, through the same :func:`~facecluster.relabel.apply_decisions` a decisions.csv goes
    through: keep where its label is right, relabel where its person has another label, drop a
    stranger or an injected copy. Rows the run decided itself stay as it decided them."""
    truth_labels = _true_label_names(noisy)
    merges = _merge_truth(noisy)
    out = _flat_cleaning(cleaning_scores(result.audit, truth_labels, noisy.truth, result.identities, merges))
    decided = cleaning_scores(reviewed_audit(result.audit, noisy, merges), truth_labels, noisy.truth,
                              result.identities, merges)
    out.update(kept_label_precision_reviewed=decided["kept_label_precision"],
               clean_rows_lost_share_reviewed=decided["clean_rows_lost_share"])
    return out


def reviewed_audit(audit: pd.DataFrame, noisy: NoisySet, true_merges: list, path_col: str = "path",
                   label_col: str = "label") -> pd.DataFrame:
    """``audit`` with its review rows decided by a person who knows the truth of ``noisy``
    (:func:`clean_scores`), applied as a decisions.csv is."""
    rows = np.flatnonzero(audit["fc_issue"].to_numpy().astype(str) == "review")
    if not len(rows):
        return audit
    truth_labels = _true_label_names(noisy)[rows]
    canon = canonical_labels([tuple(map(str, pair)) for pair in true_merges])
    given = audit[label_col].astype(str).to_numpy()[rows]
    stranger = (truth_labels == "") | (noisy.truth["issue"].to_numpy().astype(str)[rows] == "near_duplicate")
    right = np.array([canon.get(t, t) == canon.get(g, g) for t, g in zip(truth_labels, given)], dtype=bool)
    decision = np.where(stranger, "drop", np.where(right, "keep", "relabel"))
    table = pd.DataFrame({"path": audit[path_col].astype(str).to_numpy()[rows], "decision": decision,
                          "label": np.where(decision == "relabel", truth_labels, ""), "note": "", "timestamp": ""})
    return apply_decisions(audit, Decisions(table, "simulated reviewer"), path_col, label_col)[0]


def _run_clean(noisy: NoisySet, k: int, seed: int, policy: str) -> tuple[list[BenchRow], object]:
    """``clean`` once, timed: its row, one row per stage, and the result."""
    names = label_names(noisy.labels)
    manifest = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(len(names))], "label": names})
    result, seconds, peak = _timed(lambda: clean(manifest, noisy.embeddings, CleanConfig(k=k, seed=seed, policy=policy)))
    t = result.report["timings"]
    rows = [BenchRow(f"facecluster clean ({policy})", "cleaner", seconds, peak, clean_scores(result, noisy))]
    knn = result.graph.info
    rows.append(BenchRow("  stage: kNN graph", "stage", round(t["knn"], 3), None,
                         {"recall_at_k": knn["recall_at_k"], "method": knn["method"]}))
    for stage in ("calibration", "knn_votes", "hierarchical", "correlation", "camsoftmax"):
        if stage in t:
            rows.append(BenchRow(f"  stage: {stage.replace('_', ' ')}", "stage", round(t[stage], 3), None,
                                 _stage_extras(result.report["stages"].get(stage))))
    rows.append(BenchRow("  stage: findings + decisions", "stage", round(t["findings"] + t["relabel"], 3),
                         None, {"mislabeled_corroborated": result.findings.stats.get("mislabeled_corroborated")}))
    return rows, result


def _run_facecluster(noisy: NoisySet, k: int, seed: int, policy: str) -> list[BenchRow]:
    rows, _ = _run_clean(noisy, k, seed, policy)
    true_person = noisy.truth["true_person"].to_numpy()
    rows.append(_cluster_row(f"facecluster average linkage (k={k}, cut from noisy labels)",
                             lambda: _ours_average(noisy, k, seed), true_person, "includes its kNN graph build"))
    rows.append(_cluster_row(f"facecluster FINCH on the graph (k={k}, level from noisy labels)",
                             lambda: _ours_finch(noisy, k, seed), true_person, "includes its kNN graph build"))
    rows.append(_cluster_row(f"facecluster correlation clustering (k={k}, bias from noisy labels)",
                             lambda: _ours_correlation(noisy, k, seed), true_person, "includes its kNN graph build"))
    return rows


def _stage_extras(stage: dict | None) -> dict:
    if not stage:
        return {}
    keys = ("n_clusters", "bias", "threshold", "objective_gaec", "objective_refined", "mode", "final_c_degrees",
            "temperature")
    return {key: stage[key] for key in keys if key in stage}


def _ours_correlation(noisy: NoisySet, k: int, seed: int) -> np.ndarray:
    from .correlation import CorrelationClustering

    return CorrelationClustering(k=k, device="cpu", seed=seed).fit(noisy.embeddings, noisy.labels).labels_


def _ours_average(noisy: NoisySet, k: int, seed: int) -> np.ndarray:
    from .hierarchical import GraphAverageLinkage

    return GraphAverageLinkage(k=k, device="cpu", seed=seed).fit(noisy.embeddings, noisy.labels).labels_


def _ours_finch(noisy: NoisySet, k: int, seed: int) -> np.ndarray:
    from .hierarchical import FINCH as OurFinch

    return OurFinch(k=k, device="cpu", seed=seed).fit(noisy.embeddings, noisy.labels).labels_


def _run_cleanlab(noisy: NoisySet, k: int, seed: int, memory_budget_gb: float) -> BenchRow:
    n_classes = int(noisy.labels.max()) + 1
    need_gb = len(noisy.labels) * n_classes * 8 * 3 / 2**30  # pred_probs + one-hot + a working copy
    if need_gb > memory_budget_gb:
        return BenchRow("cleanlab Datalab", "cleaner", note=f"skipped: its N×K pred_probs would need ~{need_gb:.0f} GiB "
                                                            f"({len(noisy.labels)} × {n_classes}), over {memory_budget_gb:.0f}")
    import logging

    from cleanlab import Datalab

    logging.getLogger("cleanlab").setLevel(logging.ERROR)
    names = label_names(noisy.labels)

    def run():
        lab = Datalab(data={"label": names}, label_name="label", verbosity=0)
        lab.find_issues(features=noisy.embeddings, issue_types={"label": {"k": k}, "outlier": {"k": k},
                                                               "near_duplicate": {"k": k}})
        return lab

    lab, seconds, peak = _timed(run)
    issues = lab.get_issues()
    label_table = lab.get_issues("label")
    dup_table = lab.get_issues("near_duplicate")
    n = len(names)
    issue = np.full(n, "", dtype=object)
    action = np.full(n, "keep", dtype=object)
    final = names.astype(object).copy()
    label_issue = issues["is_label_issue"].to_numpy()
    predicted = label_table["predicted_label"].to_numpy().astype(str)
    issue[label_issue], action[label_issue], final[label_issue] = "mislabeled", "relabel", predicted[label_issue]
    out = issues["is_outlier_issue"].to_numpy() & ~label_issue
    issue[out], action[out], final[out] = "outlier", "drop", ""
    # a user keeps one row of each near-duplicate set: the first
    is_dup = issues["is_near_duplicate_issue"].to_numpy()
    sets = dup_table["near_duplicate_sets"].to_numpy()
    for i in np.flatnonzero(is_dup):
        if len(sets[i]) and min(sets[i]) < i:
            issue[i], action[i], final[i] = "near_duplicate", "dedupe", ""
    audit = pd.DataFrame({"fc_action": action, "fc_label": final, "fc_issue": issue})
    scores = cleaning_scores(audit, _true_label_names(noisy), noisy.truth,
                             pd.DataFrame(columns=["label", "merged_into"]), _merge_truth(noisy))
    return BenchRow("cleanlab Datalab", "cleaner", seconds, peak, _flat_cleaning(scores),
                    note="no duplicate-identity detection")


def _cluster_row(name: str, fn, true_person: np.ndarray, note: str = "") -> BenchRow:
    pred, seconds, peak = _timed(fn)
    return BenchRow(name, "clusterer", seconds, peak, clustering_scores(true_person, pred), note)


def _run_clusterer(peer: str, x: np.ndarray, true_person: np.ndarray, k: int, seed: int) -> BenchRow:
    n = len(x)
    n_true = int(len(np.unique(true_person)))
    limit = PEER_LIMITS.get(peer)
    if limit is not None and n > limit:
        return BenchRow(peer, "clusterer", note=f"skipped: above {limit:,} samples ({'n² memory' if peer == 'agglomerative' else 'brute-force core distances'})")
    if peer == "hdbscan":
        from sklearn.cluster import HDBSCAN

        def fn():
            pred = HDBSCAN(min_cluster_size=2, metric="euclidean").fit_predict(x)
            noise = pred < 0  # HDBSCAN's noise points are singletons
            pred[noise] = pred.max() + 1 + np.arange(noise.sum())
            return pred
        return _cluster_row("HDBSCAN (sklearn, min_cluster_size=2)", fn, true_person)
    if peer == "finch":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from finch import FINCH

        def fn():
            c, num, _ = FINCH(x, distance="cosine", verbose=False, random_state=seed)
            level = int(np.argmin(np.abs(np.asarray(num) - n_true)))
            return c[:, level]
        return _cluster_row("FINCH (level closest to true K)", fn, true_person, "oracle K used to pick the level")
    if peer == "agglomerative":
        from sklearn.cluster import AgglomerativeClustering

        fn = lambda: AgglomerativeClustering(n_clusters=n_true, metric="cosine", linkage="average").fit_predict(x)  # noqa: E731
        return _cluster_row("agglomerative (sklearn, average, oracle K)", fn, true_person, "oracle K")
    if peer == "kmeans":
        import faiss

        def fn():
            km = faiss.Kmeans(x.shape[1], n_true, niter=20, spherical=True, seed=seed, verbose=False,
                              min_points_per_centroid=1)
            km.train(x)
            return km.index.search(x, 1)[1][:, 0]
        return _cluster_row("FAISS k-means (spherical, oracle K)", fn, true_person, "oracle K")
    if peer == "infomap":
        def fn():
            return infomap_partition(build_knn_graph(x, k=k, device="cpu", seed=seed), 0.0, seed)
        return _cluster_row(f"Infomap (kNN graph, k={k})", fn, true_person, "includes its kNN graph build")
    raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


def infomap_partition(graph, floor: float = 0.0, seed: int = 0) -> np.ndarray:
    """Infomap's two-level modules on the kNN graph's edges of similarity above ``floor``
    (weights: the similarities); a sample with no such edge is a module of its own."""
    from infomap import Infomap

    n = graph.n_samples
    rows = np.repeat(np.arange(n), graph.k)
    keep = (graph.indices.ravel() >= 0) & (graph.sims.ravel() > floor)
    im = Infomap(f"--two-level --silent --seed {seed + 1}")
    im.add_links(zip(rows[keep].tolist(), graph.indices.ravel()[keep].tolist(),
                     graph.sims.ravel()[keep].astype(float).tolist()))
    im.add_nodes(range(n))
    im.run()
    modules = im.get_modules()
    return np.array([modules.get(i, -1 - i) for i in range(n)])


def run_bench(noisy: NoisySet, *, peers=PEERS, k: int = 30, seed: int = 0, policy: str = "conservative",
              memory_budget_gb: float = 8.0, progress: Progress | None = None) -> list[BenchRow]:
    """Run our pipeline and each peer on ``noisy``; a failing peer becomes a row with its error."""
    progress = progress or NullProgress()
    rows: list[BenchRow] = []
    true_person = noisy.truth["true_person"].to_numpy()
    with progress.task("facecluster clean", total=None):
        rows += _run_facecluster(noisy, k, seed, policy)
    for peer in peers:
        with progress.task(f"peer: {peer}", total=None):
            try:
                if peer == "cleanlab":
                    rows.append(_run_cleanlab(noisy, k, seed, memory_budget_gb))
                else:
                    rows.append(_run_clusterer(peer, noisy.embeddings, true_person, k, seed))
            except ImportError as exc:
                rows.append(BenchRow(peer, "peer", note=f"skipped: not installed ({exc.name}); pip install '.[bench]'"))
            except Exception as exc:  # a peer's failure is a result to report, not a crash
                rows.append(BenchRow(peer, "peer", note=f"failed: {type(exc).__name__}: {exc}"[:300]))
                traceback.print_exc()
    return rows


def scaling(sizes, *, dim: int = 512, offset: float = 0.0, effective_dim: float | None = None,
            mean_images: float = 15.0, k: int = 30, seed: int = 0, progress: Progress | None = None) -> list[dict]:
    """Our ``clean`` alone at each size, in this process: wall time, each stage's time, peak
    memory, headline quality, and the cost per kNN edge (N·k), which stays flat when the run
    grows linearly in the edges. The first size also pays the one-off costs (imports, numba's
    cache), so list a small size first when the per-edge line matters."""
    progress = progress or NullProgress()
    out = []
    for size in sizes:
        with progress.task(f"scaling: {size:,} rows", total=None):
            noisy = bench_set(size, dim=dim, offset=offset, effective_dim=effective_dim, mean_images=mean_images,
                              seed=seed)
            rows, result = _run_clean(noisy, k, seed, "conservative")
        n = int(len(noisy.labels))
        edges = n * result.graph.k
        timings = {key: round(value, 2) for key, value in result.report["timings"].items()}
        row = rows[0]
        out.append({"n": n, "k": result.graph.k, "edges": edges, "seconds": row.seconds, "peak_mb": row.peak_mb,
                    "stage_seconds": timings,
                    "us_per_edge": round(1e6 * row.seconds / edges, 2),
                    "us_per_edge_without_knn": round(1e6 * (row.seconds - timings.get("knn", 0.0)) / edges, 2),
                    "knn": {key: result.graph.info.get(key) for key in
                            ("method", "nlist", "nprobe", "shortlist_factor", "edges_that_matter_recall", "recall_at_k",
                             "fallback") if key in result.graph.info},
                    "mislabeled_f1": row.scores["mislabeled_f1"], "near_duplicate_f1": row.scores["near_duplicate_f1"],
                    "kept_label_precision": row.scores["kept_label_precision"]})
    return out


def emit_row(rows: list, row: dict) -> None:
    """Keep a bench script's result row and print it as one JSON line (progress for long runs)."""
    rows.append(row)
    print(json.dumps(row, default=str), flush=True)


def write_rows(path: str | Path | None, rows: list) -> None:
    """Write a bench script's rows as a JSON list (nothing when ``path`` is None)."""
    if path:
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=2, default=str)
