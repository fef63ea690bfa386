"""Partitions: the value the clustering stages return, and what can be said of one.

A :class:`Partition` is one cluster id per sample plus the stage's own report (how its cut,
level or bias was chosen). The helpers here are shared by every stage and by findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit


@dataclass(frozen=True)
class Partition:
    """One cluster id per sample, from a clustering stage.

    labels : ndarray of shape (n_samples,), int64
        Cluster ids 0..n_clusters-1, numbered by each cluster's first sample.
    stats : dict
        The stage's report: the cut / level / bias, where it came from, objectives, curves.
    detail : object, optional
        The stage's own structure behind the labels: a Dendrogram, the FINCH levels, a
        correlation-clustering result.
    """

    labels: np.ndarray
    stats: dict = field(default_factory=dict)
    detail: object = None

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


@njit(cache=True, nogil=True)
def edges_by_node(n, a, b):  # pragma: no cover - compiled
    """Each node's edges (ids into ``a``, ``b``), in edge order, laid out by node: a stable
    counting sort of the two ends of every edge (self-loops left out). Returns ``start``
    (n + 1 offsets) and the edge ids; node u's edges are ``ids[start[u]:start[u + 1]]``.
    Tables filled one node at a time from it are the same as filled edge by edge, without
    writing all over memory."""
    start = np.zeros(n + 1, dtype=np.int64)
    for e in range(len(a)):
        if a[e] != b[e]:
            start[a[e] + 1] += 1
            start[b[e] + 1] += 1
    for u in range(n):
        start[u + 1] += start[u]
    fill = start[:n].copy()
    ids = np.empty(start[n], dtype=np.int64)
    for e in range(len(a)):
        if a[e] != b[e]:
            ids[fill[a[e]]] = e
            fill[a[e]] += 1
            ids[fill[b[e]]] = e
            fill[b[e]] += 1
    return start, ids


def label_codes(y, n_samples: int) -> np.ndarray:
    """Any label array of shape (n_samples,) as int64 codes 0..n_labels-1 (the estimators' ``y``)."""
    from .errors import InputError

    if isinstance(y, (list, tuple)) and any(isinstance(v, str) for v in y) and any(
            not isinstance(v, str) and v is not None and v == v for v in y):  # a missing one is asked about below
        # numpy would turn 1 into "1" and merge it with a label "1"
        raise InputError("<y>", "labels must be of one kind (all text or all numbers), got text and other values")
    y = np.asarray(y)
    if y.shape != (n_samples,):
        raise ValueError(f"y must have shape ({n_samples},), got {y.shape}")
    # a missing label is no identity: np.unique would fold every NaN (or None) into one
    if y.dtype.kind in "fc":
        missing = np.isnan(y)
    elif y.dtype.kind in "mM":
        missing = np.isnat(y)
    elif y.dtype.kind == "O":  # None, NaN, pandas' NA and NaT (a nullable column's gaps)
        import pandas as pd

        missing = np.asarray(pd.isna(y), dtype=bool)
    else:
        missing = np.zeros(len(y), dtype=bool)
    if missing.any():
        raise InputError("<y>", f"{int(missing.sum())} missing label(s) (NaN or None); give every sample a "
                         "label, or fit without y", row=int(np.flatnonzero(missing)[0]) + 1)
    try:
        return np.unique(y, return_inverse=True)[1].astype(np.int64)
    except TypeError as exc:  # labels numpy cannot order, e.g. numbers and text mixed
        raise InputError("<y>", f"labels must be of one kind that sorts (all text or all numbers): {exc}") from None


def dense_ids(x: np.ndarray) -> bool:
    """Whether ``x`` holds non-negative integer ids under about twice its length, so that
    tables indexed by id (linear time) can replace sorting."""
    return bool(len(x) and x.dtype.kind in "iu" and x.min() >= 0 and x.max() < 2 * len(x) + 1024)


def relabel_by_first(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster ids 0.. in order of each cluster's first sample (deterministic).

    Linear time for dense integer ids (every stage's own), by sorting otherwise."""
    labels = np.asarray(labels)
    n = len(labels)
    if dense_ids(labels):
        first = np.full(int(labels.max()) + 1, n, dtype=np.int64)
        np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
        is_first = np.zeros(n + 1, dtype=bool)  # slot n: ids that do not occur
        is_first[first] = True
        return (np.cumsum(is_first[:n]) - 1)[first[labels]]
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse]


def spread_labels(partition: np.ndarray, labels: np.ndarray, *, max_main_share: float = 0.5, top: int = 20) -> dict:
    """Labels whose images do not gather in one cluster.

    A label is spread when its largest cluster holds less than ``max_main_share`` of its
    images (a mixed identity, or one name for several people). Labels with fewer than 4
    images are not judged. Returns the count and the worst ``top`` as label code → share of
    images outside the largest cluster.
    """
    n_labels = int(labels.max()) + 1
    n_clusters = int(partition.max()) + 1
    key = labels.astype(np.int64) * n_clusters + partition
    cells, counts = np.unique(key, return_counts=True)
    cell_label = cells // n_clusters
    largest = np.zeros(n_labels, dtype=np.int64)
    np.maximum.at(largest, cell_label, counts)
    sizes = np.bincount(labels, minlength=n_labels)
    outside = 1.0 - largest / np.maximum(sizes, 1)
    spread = np.flatnonzero((outside > 1.0 - max_main_share) & (sizes >= 4))
    worst = spread[np.argsort(-outside[spread], kind="stable")][:top]
    return {"count": len(spread), "max_main_share": max_main_share,
            "worst": {int(lab): round(float(outside[lab]), 3) for lab in worst}}


def agreement_report(partition: np.ndarray, labels: np.ndarray) -> dict:
    """How a partition sits against given labels: spread labels and the clustering scores."""
    from .metrics import clustering_scores

    return {"spread_labels": spread_labels(partition, labels),
            "agreement_with_labels": clustering_scores(labels, partition)}
