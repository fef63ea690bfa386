"""Scores of a cleaning run against ground truth (from :func:`facecluster.synth.inject_noise`).

Issue types in the truth map onto what the cleaner reports:
flip → mislabeled, open_set → outlier, near_duplicate → near_duplicate,
split → duplicate_identity.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TRUTH_TO_ISSUE = {"flip": "mislabeled", "open_set": "outlier", "split": "duplicate_identity"}


def _prf(tp: int, n_pred: int, n_true: int) -> dict:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "n_pred": int(n_pred),
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
    since which copy is kept does not matter.
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
    nd["recall"] = round(float(found.mean()) if len(copies) else 0.0, 4)
    p, r = nd["precision"], nd["recall"]
    nd["f1"] = round(2 * p * r / (p + r), 4) if p + r else 0.0
    out["near_duplicate"] = nd
    return out


def relabel_accuracy(final_labels: np.ndarray, given_labels: np.ndarray, truth_labels: np.ndarray,
                     relabelled: np.ndarray) -> float:
    """Share of relabelled rows whose new label is their true label."""
    relabelled = np.asarray(relabelled, dtype=bool)
    if not relabelled.any():
        return 0.0
    return float((np.asarray(final_labels)[relabelled] == np.asarray(truth_labels)[relabelled]).mean())
