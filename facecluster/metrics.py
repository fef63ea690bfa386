"""The field's metrics: clustering quality and cleaning quality against ground truth.

Clustering (pairwise precision/recall/F, BCubed precision/recall/F, NMI) works from the
sparse contingency table of (true, predicted) ids: O(N) memory and O(N log N) time, fine at
millions of samples. Cleaning scores compare a run's audit with the ground truth of
:func:`facecluster.synth.inject_noise`; issue types in the truth map onto what the cleaner
reports: flip → mislabeled, open_set → outlier, near_duplicate → near_duplicate,
split → duplicate_identity.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import normalized_mutual_info_score

from .partition import dense_ids

TRUTH_TO_ISSUE = {"flip": "mislabeled", "open_set": "outlier", "split": "duplicate_identity"}


# --------------------------------------------------------------------------- clustering


def _codes(x) -> np.ndarray:
    """Ids 0.. in sorted order of the values (np.unique's inverse); linear for dense integer ids."""
    x = np.asarray(x)
    if dense_ids(x):
        present = np.bincount(x) > 0
        return (np.cumsum(present) - 1)[x]
    return np.unique(x, return_inverse=True)[1].astype(np.int64)


def _contingency(true: np.ndarray, pred: np.ndarray):
    """Sizes of the non-empty (true, pred) cells (true-major order), and of the true and
    predicted clusters. The cells are summed by a sparse matrix (linear time), not a sort."""
    true, pred = _codes(true), _codes(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true and predicted labels differ in length: {true.shape} vs {pred.shape}")
    if not len(true):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    shape = (int(true.max()) + 1, int(pred.max()) + 1)
    table = sp.csr_matrix((np.ones(len(true), dtype=np.int64), (true, pred)), shape=shape)
    table.sum_duplicates()
    table.sort_indices()
    cell_true = np.repeat(np.arange(shape[0]), np.diff(table.indptr))
    return table.data, cell_true, table.indices.astype(np.int64), np.bincount(true), np.bincount(pred)


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def pairwise_scores(true: np.ndarray, pred: np.ndarray) -> dict:
    """Pairwise precision, recall and F-score of a clustering.

    Precision: of the sample pairs put in one cluster, the share that are one identity;
    recall: of the same-identity pairs, the share put in one cluster. Pairs are unordered;
    singletons make no pairs (precision is 1 when no pair is predicted).
    """
    cell_n, _, _, a, b = _contingency(true, pred)
    pairs = lambda n: (n.astype(np.float64) * (n - 1) / 2).sum()  # noqa: E731
    tp, pred_pairs, true_pairs = pairs(cell_n), pairs(b), pairs(a)
    p = tp / pred_pairs if pred_pairs else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    return {"precision": float(p), "recall": float(r), "f": float(_f(p, r))}


def bcubed_scores(true: np.ndarray, pred: np.ndarray) -> dict:
    """BCubed precision, recall and F-score (Bagga & Baldwin 1998; Amigó et al. 2009).

    Per sample: precision = share of its predicted cluster with its identity, recall = share
    of its identity in its predicted cluster (the sample itself included); averaged.
    """
    cell_n, cell_true, cell_pred, a, b = _contingency(true, pred)
    n = float(a.sum())
    sq = cell_n.astype(np.float64) ** 2
    p = float((sq / b[cell_pred]).sum() / n)
    r = float((sq / a[cell_true]).sum() / n)
    return {"precision": p, "recall": r, "f": float(_f(p, r))}


def nmi(true: np.ndarray, pred: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean normalisation, scikit-learn's default)."""
    return float(min(1.0, normalized_mutual_info_score(true, pred)))  # rounding can pass 1


def clustering_scores(true: np.ndarray, pred: np.ndarray) -> dict:
    """Pairwise and BCubed precision/recall/F, NMI and the number of clusters."""
    pw, bc = pairwise_scores(true, pred), bcubed_scores(true, pred)
    return {"pairwise_precision": pw["precision"], "pairwise_recall": pw["recall"], "pairwise_f": pw["f"],
            "bcubed_precision": bc["precision"], "bcubed_recall": bc["recall"], "bcubed_f": bc["f"],
            "nmi": nmi(true, pred), "n_clusters": int(len(np.unique(pred)))}


# --------------------------------------------------------------------------- cleaning


def _prf(tp: int, n_pred: int, n_true: int) -> dict:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    return {"precision": float(p), "recall": float(r), "f1": float(_f(p, r)), "n_pred": int(n_pred),
            "n_true": int(n_true)}


def issue_scores(pred_issue: np.ndarray, truth: pd.DataFrame, *, acted: np.ndarray | None = None) -> dict:
    """Precision / recall / F1 per issue type.

    Parameters
    ----------
    pred_issue : (n,) the cleaner's issue per row ("" for none), e.g. ``audit["fc_issue"]``
    truth : the ``truth`` table of a :class:`~facecluster.synth.NoisySet`
    acted : optional (n,) bool, count only findings that the policy acted on

    Notes
    -----
    Near-duplicates are scored per true pair: a flagged row is right when it belongs to an
    injected (source, copy) pair, and a pair is found when either of its rows is flagged,
    since which copy is kept does not matter. Duplicate identities likewise: a flagged row is
    right when it is in either half of a split identity (``truth.split_of``), and a split is
    found when rows of either half are flagged, since which name survives does not matter.
    """
    pred = np.asarray(pred_issue).astype(str)
    if acted is not None:
        pred = np.where(np.asarray(acted, dtype=bool), pred, "")
    true = truth["issue"].to_numpy().astype(str)
    out = {}
    for t_name, p_name in TRUTH_TO_ISSUE.items():
        is_true, is_pred = true == t_name, pred == p_name
        out[p_name] = _prf(int((is_true & is_pred).sum()), int(is_pred.sum()), int(is_true.sum()))
    copies = np.flatnonzero(true == "near_duplicate")
    sources = truth["duplicate_of"].to_numpy().astype(np.int64)[copies]
    in_pair = np.zeros(len(true), dtype=bool)
    in_pair[copies] = in_pair[sources] = True
    is_pred = pred == "near_duplicate"
    found = is_pred[copies] | is_pred[sources]
    nd = _prf(int((in_pair & is_pred).sum()), int(is_pred.sum()), len(copies))
    nd["recall"] = float(found.mean()) if len(copies) else 0.0
    nd["f1"] = float(_f(nd["precision"], nd["recall"]))
    out["near_duplicate"] = nd
    if "split_of" in truth:
        split_of = truth["split_of"].to_numpy().astype(str)  # ints from synth, names from a CSV
        in_split = ~np.isin(split_of, ["", "-1", "nan"])
        is_pred = pred == "duplicate_identity"
        groups = np.unique(split_of[in_split])
        hit = np.unique(split_of[is_pred & in_split])
        di = _prf(int((is_pred & in_split).sum()), int(is_pred.sum()), len(groups))
        di["recall"] = len(hit) / len(groups) if len(groups) else 0.0
        di["f1"] = float(_f(di["precision"], di["recall"]))
        out["duplicate_identity"] = di
    return out


def merge_scores(suggested: pd.DataFrame | list, true_pairs: list) -> dict:
    """Precision / recall of merge suggestions as unordered label pairs.

    A suggestion (a → b) is right when a and b are one person in the truth (directly, or
    through a chain of true pairs).
    """
    pairs = [tuple(map(str, p)) for p in (zip(suggested["label"], suggested["merged_into"])
                                          if isinstance(suggested, pd.DataFrame) else suggested)]
    truth = [tuple(map(str, p)) for p in true_pairs]
    canon = canonical_labels(truth)
    same = lambda a, b: canon.get(a, a) == canon.get(b, b)  # noqa: E731
    tp = sum(same(a, b) for a, b in pairs)
    found = sum(any(same(a, b) and {a, b} & {x, y} for a, b in pairs) for x, y in truth)
    return {"precision": tp / len(pairs) if pairs else 0.0,
            "recall": found / len(truth) if truth else 0.0,
            "n_suggested": len(pairs), "n_true": len(truth)}


def canonical_labels(pairs: list) -> dict:
    """Map every label in ``pairs`` to one representative per connected group."""
    names = sorted({x for p in pairs for x in p})
    if not names:
        return {}
    index = {name: i for i, name in enumerate(names)}
    rows = [index[a] for a, _ in pairs]
    cols = [index[b] for _, b in pairs]
    adj = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, comp = connected_components(adj, directed=False)
    first = {}
    for name, c in zip(names, comp):
        first.setdefault(c, name)
    return {name: first[c] for name, c in zip(names, comp)}


def cleaning_scores(audit: pd.DataFrame, truth_labels: np.ndarray, truth: pd.DataFrame,
                    identities: pd.DataFrame, true_merges: list) -> dict:
    """Everything a cleaning run is judged on.

    Parameters
    ----------
    audit : the run's audit table (fc_action, fc_label, fc_issue)
    truth_labels : (n,) the true label name of every row ("" for open-set people, who have none)
    truth : the ground-truth table (issue, duplicate_of)
    identities : the run's merge suggestions
    true_merges : list of (label, label) pairs that are one person

    Returns noise found (wrong labels and open-set images, as mislabeled or outlier findings:
    precision/recall/F1), per-issue precision/recall/F1 (found and acted on), relabel accuracy, merge-pair
    precision/recall, kept-label precision (share of rows kept for retraining whose final
    label is right, labels of one person counted as one), clean rows lost, and the rows left
    for review (and how many of them are wrong labels or strangers).
    """
    truth_labels = np.asarray(truth_labels).astype(str)
    action = audit["fc_action"].to_numpy()
    final = audit["fc_label"].to_numpy().astype(str)
    canon = canonical_labels([tuple(map(str, p)) for p in true_merges])
    unify = np.vectorize(lambda x: canon.get(x, x), otypes=[object])
    right = (unify(final) == unify(truth_labels)) & (truth_labels != "") if len(final) else np.zeros(0, bool)
    kept = np.isin(action, ["keep", "relabel", "merge"])
    relabel = action == "relabel"
    clean = truth["issue"].to_numpy().astype(str) == ""
    issue = audit["fc_issue"].to_numpy().astype(str)
    true_noise = np.isin(truth["issue"].to_numpy().astype(str), ["flip", "open_set"])
    found_noise = np.isin(issue, ["mislabeled", "outlier"])
    return {
        "noise_found": _prf(int((true_noise & found_noise).sum()), int(found_noise.sum()), int(true_noise.sum())),
        "found": issue_scores(audit["fc_issue"].to_numpy(), truth),
        "acted_on": issue_scores(audit["fc_issue"].to_numpy(), truth, acted=action != "keep"),
        "relabel_accuracy": float(right[relabel].mean()) if relabel.any() else 0.0,
        "relabelled": int(relabel.sum()),
        "merges": merge_scores(identities, true_merges),
        "kept_label_precision": float(right[kept].mean()) if kept.any() else 0.0,
        "clean_rows_lost": int((~kept & clean).sum()),
        "clean_rows_lost_share": float((~kept & clean).sum() / max(clean.sum(), 1)),
        "rows_kept": int(kept.sum()),
        # rows left to a person: how many, and how many of them are wrong labels or strangers
        "review_rows": int((issue == "review").sum()),
        "review_noisy_rows": int(((issue == "review") & true_noise).sum()),
    }

