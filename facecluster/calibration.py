"""P(same person | cosine) for the kNN edges: the one calibration every stage reads.

It is fitted once per run, on the set's own kNN pairs, and handed to the stages that weigh
edges (the kNN votes, the correlation stage's signed graph, the unsupervised hierarchical
cut), so report.json's ``calibration`` is the curve they all used.

- With labels: "same label" is a noisy observation of "same person". Two faces of one person
  carry one label only when both labels are right, with probability α < 1 in a noisy set, so
  P(same label | s) ≈ α·P(same person | s). An isotonic (monotone) regression of "same label"
  on cosine gives the left side; its level over the most similar tenth of the pairs (where
  nearly every pair is one person) estimates α, and P(same person | s) = P(same label | s) / α.
  Without this, injected or natural noise lowers the plateau (to 0.5 on a long-tailed set
  with a quarter of its rows noisy) and every small identity looks unsupported. (The other
  side of the channel, two people sharing a label by a flip, is not identifiable from kNN
  pairs: at the lowest similarities same-label pairs are mostly hard photos of one person,
  and subtracting them as noise cost real sets clean rows; it is taken as 0.) Pairs touching a label with a single image are left out of the fit: they can
  never agree, whoever is in them, so they say nothing about identity (a long tail of
  one-image labels would otherwise drag the whole curve down).
- Without labels (the documented prior): a two-component Gaussian mixture of the kNN
  similarities; P(same) is the posterior of the upper component.

Beside it, for labels of a single image, :class:`NearestStranger`: how near a photo's nearest
other-label photo comes for a stranger against for the same person, and the Bayes factor of
one similarity between the two (the edge curve's P(same) describes the big identities' pairs,
not a one-image label's nearest of thousands of strangers).

Nothing here is a fixed cosine: every curve comes from the similarities in hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .knn import KnnGraph

MAX_PAIRS = 2_000_000
# Float32 rounding of a unit vector's product with itself: pairs this close to 1 are one vector
IDENTICAL = 1e-6


@dataclass(frozen=True)
class Calibration:
    """A fitted map from cosine to P(same person).

    kind : "isotonic" (labelled pairs, label noise modelled), "mixture" (no labels) or "constant" (no
        labels and fewer than two distinct similarities: nothing to learn, P = ``level``
        everywhere: 1/2, or all but 1 when every pair is the same vector)
    model : the fitted ``IsotonicRegression`` or ``GaussianMixture`` (None when constant)
    n_pairs : kNN pairs it was fitted on
    eps : probabilities are clipped to [eps, 1 − eps] before log-odds are taken (1/(m+2)
        for m fitted pairs with labels, 1e-6 for the mixture), so weights stay finite
    same_rate : share of fitted pairs carrying the same label (isotonic only)
    plateau : α of the label-noise model (isotonic only): P(same label) for two faces of one person
    floor : P(same label) for two different people, taken as 0 (see the module docstring)
    """

    kind: str
    model: object
    n_pairs: int
    eps: float
    same_rate: float | None = None
    plateau: float = 1.0
    floor: float = 0.0
    level: float = 0.5
    curve: tuple | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.kind == "mixture" and self.curve is None:  # a mixture given without its curve
            object.__setattr__(self, "curve", _monotone_posterior(self.model))

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
            return self.same_person(self.model.predict(flat))
        if self.kind == "mixture":
            xs, ys = self.curve
            return np.interp(flat, xs, ys)
        return np.full(len(flat), self.level)

    def same_person(self, p_label: np.ndarray) -> np.ndarray:
        """Invert the label-noise model: P(same person) from P(same label)."""
        return np.clip((p_label - self.floor) / (self.plateau - self.floor), 0.0, 1.0)

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
            return float("-inf") if self.level > 0.5 else float("inf")
        if self.kind == "mixture":
            return self.similarity_at(0.5)
        xs, ys = self.model.X_thresholds_, self.same_person(self.model.y_thresholds_)
        above = np.flatnonzero(ys >= 0.5)
        return float(xs[above[0]]) if len(above) else float("inf")

    def similarity_at(self, p: float) -> float:
        """Where P(same person) falls under ``p`` coming down from the most similar pairs: the
        lowest similarity of the run below the upper mean (mixture) or the lowest fitted
        similarity (isotonic) whose P(same) is still at least ``p``. -inf when P never falls
        under ``p`` (constant at 1/2 for p ≤ 1/2), inf when it never reaches it.

        Mixture: read off its monotone curve (:func:`_monotone_posterior`).
        """
        if self.kind == "constant":
            return float("-inf") if p <= self.level else float("inf")
        if self.kind == "mixture":
            xs, ys = self.curve
            if ys[-1] < p:
                return float("inf")
            return float(xs[np.argmax(ys >= p)]) if ys[0] < p else float("-inf")
        xs, ys = self.model.X_thresholds_, self.same_person(self.model.y_thresholds_)
        above = np.flatnonzero(ys >= p)
        return float(xs[above[0]]) if len(above) else float("inf")

    def summary(self, sims: np.ndarray) -> dict:
        """For the report: what was fitted and P(same) at quantiles of ``sims``."""
        finite = sims[np.isfinite(sims)]
        qs = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(finite) else []
        out: dict = {"kind": self.kind, "n_pairs": self.n_pairs}
        if self.kind == "isotonic":
            out.update(same_label_rate=round(float(self.same_rate), 4), plateau=round(self.plateau, 4),
                       floor=round(self.floor, 4))
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
    rows, cols, sims = _kept_pairs(graph)
    fitted = fit_pair_calibration(rows, cols, sims, labels, max_pairs=max_pairs, rng=rng)
    if fitted.kind == "constant" and len(sims) and sims.min() >= 1.0 - IDENTICAL:
        # every pair is one vector twice (a set of copies of one face): one photo, one person
        fitted = replace(fitted, level=1.0 - fitted.eps)
    return fitted


def fit_pair_calibration(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, labels: np.ndarray | None = None,
                         *, max_pairs: int = MAX_PAIRS, rng: np.random.Generator | None = None) -> Calibration:
    """:func:`fit_calibration` for any per-pair observation that grows with the chance of one
    person (``values`` of the pairs ``rows``, ``cols``), not only the cosine: the same
    label-noise model with labels, the same mixture without."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.mixture import GaussianMixture

    rng = rng if rng is not None else np.random.default_rng(0)
    sims = np.asarray(values, dtype=np.float64)
    if len(sims) > max_pairs:
        pick = rng.choice(len(sims), size=max_pairs, replace=False)
        rows, cols, sims = rows[pick], cols[pick], sims[pick]
    if labels is not None:
        labels = np.asarray(labels)
        sizes = np.bincount(labels)
        informative = (sizes[labels[rows]] > 1) & (sizes[labels[cols]] > 1)
        if informative.sum() >= 2:
            rows, cols, sims = rows[informative], cols[informative], sims[informative]
        same = (labels[rows] == labels[cols]).astype(np.float64)
        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(sims, same)
        # the curve's level over the most similar tenth of the pairs: its median there, which a
        # handful of extreme pairs (copies at the very top) cannot move
        plateau, floor = float(model.predict(np.quantile(sims, [0.95]))[0]), 0.0
        if not plateau > 0.05:  # labels say nothing about similarity: take them at face value
            plateau = 1.0
        return Calibration("isotonic", model, len(sims), 1.0 / (len(sims) + 2),
                           float(same.mean()) if len(same) else 0.0, plateau, floor)
    if len(np.unique(sims)) < 2:
        return Calibration("constant", None, len(sims), 1e-6)
    model = GaussianMixture(2, random_state=int(rng.integers(2**31 - 1))).fit(sims[:, None])
    return Calibration("mixture", model, len(sims), 1e-6, curve=_monotone_posterior(model, sims))


#: points of the mixture's monotone curve (a 4-standard-deviation margin each side of the
#: data; cosines: about 1e-3 apart)
CURVE_POINTS = 4001


def _monotone_posterior(model, values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """P(same person) from a two-Gaussian mixture, made non-decreasing in the similarity.

    The upper component's posterior is not monotone when the two spreads differ: where the
    upper component is the wider one it climbs back towards 1 far below both means (an edge
    at cosine −0.2 read as near-certain same person), and where the lower one is wider it
    falls again far above them. Neither is evidence of one person; both are the Gaussian
    tails' shapes. So walking down from the upper mean P may only fall (running minimum),
    and walking up from it only rise (running maximum): the curve is the posterior wherever
    that is already monotone. Returns (grid, P) for linear interpolation; outside the grid P
    is its end value. ``values``: the fitted data, which the grid spans (default: the means)."""
    means = model.means_.ravel()
    spread = float(np.sqrt(np.max(model.covariances_)))
    upper = int(np.argmax(means))
    lo = min(float(means.min()) if values is None else float(values.min()), float(means.min())) - 4 * spread
    hi = max(float(means.max()) if values is None else float(values.max()), float(means.max())) + 4 * spread
    xs = np.linspace(lo, hi, CURVE_POINTS)
    post = model.predict_proba(xs[:, None])[:, upper]
    top = int(np.searchsorted(xs, means[upper]))
    ys = post.copy()
    ys[:top + 1] = np.minimum.accumulate(post[:top + 1][::-1])[::-1]
    ys[top:] = np.maximum.accumulate(post[top:])
    return xs, ys


# a Gumbel fitted by its quartiles: ln(−ln p) at p = 1/4 and 1/2
_GUMBEL_Q25, _GUMBEL_Q50 = float(np.log(-np.log(0.25))), float(np.log(-np.log(0.5)))


def _binned_kde(values: np.ndarray, weights: np.ndarray | None = None, points: int = 1024,
                span: tuple[float, float] | None = None, max_points: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """A weighted 1-d Gaussian kernel density with Scott's bandwidth (scipy.stats.gaussian_kde's
    default: the weighted, unbiased standard deviation times n_eff^(−1/5)), computed on a grid
    by linear binning and one convolution: O(n + grid), evaluated by interpolation. The grid
    covers the values and ``span`` (lo, hi) with four bandwidths to spare, at ``points`` or
    more: at least four points a bandwidth (at most ``max_points``; a narrower kernel is
    widened to that). Returns (grid, density)."""
    values = np.asarray(values, dtype=np.float64)
    w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mean = float(np.sum(w * values))
    # np.cov with aweights, as gaussian_kde: the weighted variance over 1 − Σw²
    var = float(np.sum(w * (values - mean) ** 2)) / max(1.0 - float(np.sum(w**2)), np.finfo(np.float64).eps)
    bandwidth = np.sqrt(var) * (1.0 / np.sum(w**2)) ** (-1.0 / 5.0)
    lo, hi = values.min(), values.max()
    if span is not None:
        lo, hi = min(lo, span[0]), max(hi, span[1])
    width = hi - lo
    bandwidth = max(bandwidth, (width + 8 * bandwidth) * 4 / max_points, np.finfo(np.float32).eps)
    lo, hi = lo - 4 * bandwidth, hi + 4 * bandwidth
    points = int(min(max_points, max(points, np.ceil((hi - lo) / bandwidth * 4) + 1)))
    grid = np.linspace(lo, hi, points)
    step = grid[1] - grid[0]
    pos = (values - lo) / step
    left = np.clip(np.floor(pos).astype(np.int64), 0, points - 2)
    frac = pos - left
    mass = np.bincount(left, w * (1 - frac), minlength=points) + np.bincount(left + 1, w * frac, minlength=points)
    # the kernel to 4 bandwidths, never longer than the grid (which spans 8 of them and the data)
    half = min(int(np.ceil(4 * bandwidth / step)), (points - 1) // 2)
    offsets = np.arange(-half, half + 1) * step
    kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2) / (bandwidth * np.sqrt(2 * np.pi))
    return grid, np.convolve(mass, kernel, mode="same")


def _gumbel_pdf(x: np.ndarray, mu: float, beta: float) -> np.ndarray:
    """The Gumbel (maximum) density, as ``scipy.stats.gumbel_r.pdf`` without its per-call
    overhead (the fit evaluates it a few hundred times)."""
    z = (x - mu) / beta
    with np.errstate(over="ignore"):  # far below the mode: exp(−z) overflows, the density is 0
        return np.exp(-(z + np.exp(-z))) / beta


@dataclass(frozen=True)
class NearestStranger:
    """How close a photo's nearest other-label photo comes when that photo is a stranger,
    against how close a photo of the same person comes: the evidence in one similarity when
    a label has a single image and nothing else to go by.

    The edge calibration (:class:`Calibration`) is fitted on the pairs of the labels with
    several images, where a neighbour is usually the same person; the nearest other-label
    photo of a one-image label is the closest of thousands of strangers, so its similarity is
    high whoever it is, and the curve's P(same person) there says more about the big
    identities than about it. Here each side gets its own distribution, from the set:

    - the nearest stranger: a Gumbel (the law of a maximum), fitted by maximum likelihood to
      the nearest other-label similarity of the rows of the smallest labels, as a mixture with
      the same-person curve below (some of those rows are a split's halves or flips, whose
      nearest other-label photo is their own person);
    - the same person: each row's nearest same-label similarity (labels of two images or
      more, each label weighing one), a Gaussian kernel density (Scott's bandwidth, binned on
      a grid: :func:`_binned_kde`).

    ``bayes_factor(s)`` is the ratio of the two densities at ``s``: how many times more likely
    that similarity is for a photo of the same person than for the nearest of strangers. It is
    held monotone (a higher similarity is never less evidence of one person): the log ratio on
    the grid is fitted by isotonic regression weighted by the mixture's density, so the tails,
    where one density thins faster than the other (the Gumbel's left tail vanishes, the
    kernel density's right tail does), take the value of the nearest similarities that carry
    data rather than a ratio of two vanishing numbers. Nothing is a fixed cosine; a geometry in
    which the two overlap gives factors near one.

    mu, beta : the Gumbel's location and scale; share : its weight in the mixture
    grid, density : the same-person density on a grid of similarities (0 outside it)
    log_factor : the monotone log Bayes factor on the grid (held beyond its ends)
    n_stranger, n_same : rows each side was fitted on
    """

    mu: float
    beta: float
    share: float
    grid: np.ndarray
    density: np.ndarray
    log_factor: np.ndarray
    n_stranger: int
    n_same: int

    def bayes_factor(self, sims) -> np.ndarray:
        """How many times more likely ``sims`` are for one person than for the nearest stranger
        (float64, non-decreasing in the similarity)."""
        sims = np.atleast_1d(np.asarray(sims, dtype=np.float64))
        return np.exp(np.interp(sims, self.grid, self.log_factor))

    def summary(self) -> dict:
        return {"stranger_location": round(self.mu, 4), "stranger_scale": round(self.beta, 4),
                "stranger_share": round(self.share, 4), "rows_stranger": self.n_stranger, "rows_same": self.n_same}


def fit_nearest_stranger(graph: KnnGraph, labels: np.ndarray, use: np.ndarray | None = None, *,
                         min_rows: int = 50, max_rows: int = 4000,
                         rng: np.random.Generator | None = None) -> NearestStranger | None:
    """Fit :class:`NearestStranger` on ``graph`` under ``labels`` (int codes), from the rows in
    ``use`` ((n_samples,) bool; default all) and their neighbours in ``use``.

    The stranger side reads the rows of the smallest labels, taking label sizes in increasing
    order until at least ``min_rows`` rows are in (on a long-tailed set the one-image labels
    alone); a row whose neighbour list holds no other label's photo has none to give. Each side
    is a random ``max_rows`` at most (``rng``). None when either side has fewer than 20 rows
    or the similarities do not spread (nothing to fit).
    """
    from scipy import optimize
    from sklearn.isotonic import IsotonicRegression

    rng = rng if rng is not None else np.random.default_rng(0)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    use = np.ones(n, dtype=bool) if use is None else np.asarray(use, dtype=bool)
    other_row, s_other, s_same = nearest_by_label(graph, labels, use)
    has_other, has_same = other_row >= 0, np.isfinite(s_same)
    sizes = np.bincount(labels[use], minlength=int(labels.max()) + 1 if n else 0)
    size = sizes[labels]
    candidates = np.flatnonzero(has_other)
    if len(candidates) < 20:
        return None
    counts = np.bincount(size[candidates])
    # the smallest size at which the rows of labels up to it reach min_rows (or all of them)
    enough = np.flatnonzero(np.cumsum(counts) >= min_rows)
    cap = int(enough[0]) if len(enough) else len(counts) - 1
    stranger = s_other[candidates[size[candidates] <= cap]]
    same_rows = np.flatnonzero(has_same & (size >= 2))
    if len(stranger) < 20 or len(same_rows) < 20:
        return None
    if len(stranger) > max_rows:
        stranger = rng.choice(stranger, size=max_rows, replace=False)
    weight = 1.0 / size[same_rows]
    if len(same_rows) > max_rows:
        # each label weighing one: drawn with those weights (with replacement, so the draw is
        # proportional however few the labels)
        same_rows = rng.choice(same_rows, size=max_rows, replace=True, p=weight / weight.sum())
        weight = None
    q25, q50 = np.quantile(stranger, [0.25, 0.5])
    if not q50 > q25 or np.ptp(s_same[same_rows]) <= 0:
        return None
    grid, density = _binned_kde(s_same[same_rows], weight, span=(float(stranger.min()), float(stranger.max())))
    f_same = np.interp(stranger, grid, density, left=0.0, right=0.0)
    beta0 = (q50 - q25) / (_GUMBEL_Q25 - _GUMBEL_Q50)

    def nll(t):
        # the search may try a scale that underflows to 0 or a share that overflows: such a
        # point has no density (it scores as the worst), and warns no one
        with np.errstate(all="ignore"):
            share = 1.0 / (1.0 + np.exp(-t[0]))
            mix = share * _gumbel_pdf(stranger, t[1], np.exp(t[2])) + (1.0 - share) * f_same
            mix = np.where(np.isfinite(mix), mix, 0.0)
            return -np.sum(np.log(np.maximum(mix, np.finfo(np.float64).tiny)))

    fit = optimize.minimize(nll, [2.0, q50 + beta0 * _GUMBEL_Q50, np.log(beta0)], method="Nelder-Mead")
    share = float(1.0 / (1.0 + np.exp(-fit.x[0])))
    with np.errstate(over="ignore"):
        mu, beta = float(fit.x[1]), float(np.exp(fit.x[2]))
    if not (np.isfinite(mu) and np.isfinite(share) and np.isfinite(beta) and beta > 0):
        return None  # the fit ran off (a tiny or degenerate set): nothing to weigh by
    # the log ratio on the grid, made monotone where the data are (weights: the mixture). Below
    # the strangers' mode the Gumbel thins to nothing long before the same-person density
    # does, and above the same-person mode the kernel density thins first: the ratio of two
    # vanishing numbers is no evidence, so it is held at its value at those modes (a
    # similarity below the strangers' mode is no more evidence of one person than the mode)
    tiny = np.finfo(np.float64).tiny
    strangers = _gumbel_pdf(grid, mu, beta)
    log_ratio = np.log(np.maximum(density, tiny)) - np.log(np.maximum(strangers, tiny))
    at_mu = float(np.interp(mu, grid, log_ratio))
    same_mode = float(grid[np.argmax(density)])
    at_same = float(np.interp(same_mode, grid, log_ratio))
    log_ratio = np.where(grid < mu, np.minimum(log_ratio, at_mu), log_ratio)
    log_ratio = np.where(grid > same_mode, np.maximum(log_ratio, at_same), log_ratio)
    mixture = share * strangers + (1.0 - share) * density
    if not (np.all(np.isfinite(log_ratio)) and np.all(np.isfinite(mixture))):
        return None
    log_factor = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(
        grid, log_ratio, sample_weight=mixture + tiny).predict(grid)
    return NearestStranger(mu, beta, share, grid, density, log_factor, len(stranger), len(same_rows))


def nearest_by_label(graph: KnnGraph, labels: np.ndarray, use: np.ndarray | None = None, *,
                     among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row in ``use`` (default all), from its neighbour list (most similar first) and among
    the neighbours in ``among`` (default ``use``): the nearest row of another label (-1 if none)
    and its similarity, and the similarity of the nearest row of the same label (-inf where
    none; for rows outside ``use`` as well). Block by block: (block, k) temporaries only."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    use = np.ones(n, dtype=bool) if use is None else np.asarray(use, dtype=bool)
    among = use if among is None else np.asarray(among, dtype=bool)
    other_row = np.full(n, -1, dtype=np.int64)
    s_other, s_same = np.full(n, -np.inf), np.full(n, -np.inf)
    for start in range(0, n, 1 << 16):
        stop = min(n, start + (1 << 16))
        idx = graph.indices[start:stop]
        safe = np.maximum(idx, 0)
        valid = (idx >= 0) & among[safe] & use[start:stop, None]
        own = labels[start:stop, None]
        other = valid & (labels[safe] != own)
        same = valid & (labels[safe] == own)
        rows = np.arange(stop - start)
        first_other, first_same = other.argmax(axis=1), same.argmax(axis=1)
        has_other, has_same = other.any(axis=1), same.any(axis=1)
        other_row[start:stop] = np.where(has_other, idx[rows, first_other], -1)
        sims = graph.sims[start:stop]
        s_other[start:stop] = np.where(has_other, sims[rows, first_other], -np.inf)
        s_same[start:stop] = np.where(has_same, sims[rows, first_same], -np.inf)
    return other_row, s_other, s_same
