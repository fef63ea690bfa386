"""P(same person | cosine) for the kNN edges: the one calibration every stage reads.

It is fitted once per run, on the set's own kNN pairs, and handed to the stages that weigh
edges (the kNN votes, the correlation stage's signed graph, the unsupervised hierarchical
cut), so report.json's ``calibration`` is the curve they all used.

- With labels: isotonic (monotone) regression of "same label" on cosine over the kNN pairs.
  Label noise pulls the plateau below 1 (a flipped sample's close neighbours carry another
  label) but does not move where the curve rises.
- Without labels (the documented prior): a two-component Gaussian mixture of the kNN
  similarities; P(same) is the posterior of the upper component.

Nothing here is a fixed cosine: both curves come from the similarities in hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .knn import KnnGraph

MAX_PAIRS = 2_000_000


@dataclass(frozen=True)
class Calibration:
    """A fitted map from cosine to P(same person).

    kind : "isotonic" (fitted on labelled pairs), "mixture" (no labels) or "constant" (no
        labels and fewer than two distinct similarities: nothing to learn, P = 1/2 everywhere)
    model : the fitted ``IsotonicRegression`` or ``GaussianMixture`` (None when constant)
    n_pairs : kNN pairs it was fitted on
    eps : probabilities are clipped to [eps, 1 − eps] before log-odds are taken (1/(m+2)
        for m fitted pairs with labels, 1e-6 for the mixture), so weights stay finite
    same_rate : share of fitted pairs carrying the same label (isotonic only)
    """

    kind: str
    model: object
    n_pairs: int
    eps: float
    same_rate: float | None = None

    def __call__(self, sims: np.ndarray) -> np.ndarray:
        """P(same person) at each similarity, same shape as ``sims``, float32 (-inf → 0)."""
        sims = np.asarray(sims)
        flat = np.nan_to_num(sims.ravel().astype(np.float64), neginf=-1.0)
        return self._predict(flat).reshape(sims.shape).astype(np.float32)

    def log_odds(self, sims: np.ndarray) -> np.ndarray:
        """log(p / (1 − p)) with p clipped to [eps, 1 − eps], float64."""
        sims = np.asarray(sims, dtype=np.float64)
        p = np.clip(self._predict(sims.ravel()), self.eps, 1 - self.eps).reshape(sims.shape)
        return np.log(p) - np.log1p(-p)

    def _predict(self, flat: np.ndarray) -> np.ndarray:
        if self.kind == "isotonic":
            return self.model.predict(flat)
        if self.kind == "mixture":
            return self.model.predict_proba(flat[:, None])[:, self._upper]
        return np.full(len(flat), 0.5)

    @property
    def _upper(self) -> int:
        return int(np.argmax(self.model.means_.ravel()))

    def equal_odds_similarity(self) -> float:
        """The similarity where same-person and different-person edges are equally likely.

        Mixture: the point between the two means where the upper component's posterior
        reaches 1/2. Isotonic: the lowest fitted similarity whose P(same) reaches 1/2 (inf
        when the curve never does). Constant: inf (nothing is known to be the same person).
        """
        if self.kind == "constant":
            return float("inf")
        if self.kind == "mixture":
            means = self.model.means_.ravel()
            grid = np.linspace(means.min(), means.max(), 2001)
            post = self.model.predict_proba(grid[:, None])[:, self._upper]
            return float(grid[np.argmax(post >= 0.5)])
        xs, ys = self.model.X_thresholds_, self.model.y_thresholds_
        above = np.flatnonzero(ys >= 0.5)
        return float(xs[above[0]]) if len(above) else float("inf")

    def summary(self, sims: np.ndarray) -> dict:
        """For the report: what was fitted and P(same) at quantiles of ``sims``."""
        finite = sims[np.isfinite(sims)]
        qs = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(finite) else []
        out: dict = {"kind": self.kind, "n_pairs": self.n_pairs}
        if self.kind == "isotonic":
            out["same_label_rate"] = round(float(self.same_rate), 4)
        elif self.kind == "mixture":
            out.update(means=self.model.means_.ravel().tolist(), weights=self.model.weights_.tolist(),
                       equal_odds_similarity=self.equal_odds_similarity())
        out["p_same_at_sim_quantiles"] = {f"{q:.3f}": round(float(self(np.array([q]))[0]), 4) for q in qs}
        return out


def _kept_pairs(graph: KnnGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every valid kNN entry (row, neighbour, similarity), directed as the graph holds it."""
    valid = graph.indices >= 0
    rows = np.broadcast_to(np.arange(graph.n_samples)[:, None], graph.indices.shape)[valid]
    return rows, graph.indices[valid].astype(np.int64), graph.sims[valid].astype(np.float64)


def fit_calibration(graph: KnnGraph, labels: np.ndarray | None = None, *, max_pairs: int = MAX_PAIRS,
                    rng: np.random.Generator | None = None) -> Calibration:
    """Fit P(same person | cosine) on the graph's kNN pairs (a random ``max_pairs`` of them).

    Parameters
    ----------
    graph : KnnGraph
    labels : (n_samples,) int label codes, or None for the unlabelled prior (mixture)
    max_pairs : at most this many pairs are used (a uniform sample drawn with ``rng``)
    rng : numpy Generator for that sample (default: seeded with 0)

    Returns
    -------
    Calibration
    """
    from sklearn.isotonic import IsotonicRegression
    from sklearn.mixture import GaussianMixture

    rng = rng if rng is not None else np.random.default_rng(0)
    rows, cols, sims = _kept_pairs(graph)
    if len(sims) > max_pairs:
        pick = rng.choice(len(sims), size=max_pairs, replace=False)
        rows, cols, sims = rows[pick], cols[pick], sims[pick]
    if labels is not None:
        labels = np.asarray(labels)
        same = (labels[rows] == labels[cols]).astype(np.float64)
        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(sims, same)
        return Calibration("isotonic", model, len(sims), 1.0 / (len(sims) + 2),
                           float(same.mean()) if len(same) else 0.0)
    if len(np.unique(sims)) < 2:
        return Calibration("constant", None, len(sims), 1e-6)
    model = GaussianMixture(2, random_state=int(rng.integers(2**31 - 1))).fit(sims[:, None])
    return Calibration("mixture", model, len(sims), 1e-6)
