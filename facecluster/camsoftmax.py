"""Cam-softmax confidence: how much a cosine classifier that never saw a face believes its label.

The loss (Suveges & McKenna, "Cam-Softmax for Discriminative Deep Feature Learning", ICPR 2020):
features and class weights are L2-normalised, logits are cos θ_j; for the target class only,
cos θ is replaced by

    f(cos θ) = 2·((cos θ + 1) / 2)^c' − 1,    c' = 1 / (1 − log2(1 + cos c)),

and the logits, scaled by s (20), go into cross-entropy. At c = π/2, c' = 1 and f is the
identity (plain normalised softmax); f(cos c) = 0, so a target at angle c is scored as if it
were at 90°. As c decreases towards c_min, c' grows, the target logit of a sample far from its
class weight is pushed towards −1 and its gradient f′ towards 0: wrongly labelled samples
stop pulling their class weight. That is where the robustness to label noise comes from.

Schedules for c (``CamSoftmaxConfig.schedule``):

- ``"reference"``: as the authors' code does it: c starts at π/2 and after every optimiser
  step c ← max(c_min, c − 1e-4).
- ``"linear"``: the same ramp, expressed as a share of this run's steps (``ramp``): a head on
  fixed embeddings takes a few thousand steps, far fewer than a CNN run, so the reference
  rate would never reach c_min.
- ``"adaptive"`` (ours, the default): c follows the ``quantile`` (0.9) of the batch's target
  angles, smoothed by an exponential moving average (``momentum``), clamped to
  [c_min, π/2]. The samples beyond the quantile (the ones most likely to carry a wrong label)
  then get f < 0 and little gradient, whatever the angular scale of the embedding model is.
- ``"fixed"``: c = π/2 throughout, i.e. the normalised-softmax head with no cam transform
  (the ablation baseline).

The stage trains the head on the set's own (processed, unit) embeddings, optionally through a
learned linear adapter initialised at the identity, with class weights initialised at the
class centroids. Confidence is out-of-sample by cross-fitting: samples are split into folds
stratified by label, and each fold is scored by a head trained on the others. Probabilities
are softmax(s·cos / T) with one temperature T fitted on the held-out logits (the cam logits
are not calibrated, and f is never applied at prediction time).

Many identities: the softmax runs over candidate classes per sample (its label, the labels of
its kNN neighbours, and ``n_negatives`` sampled classes, resampled every batch while
training), so memory is O(N·candidates). With few identities (``full_max_classes``) it runs
the full softmax, as long as N × identities stays under 50M held-out logits. The report says
which, and why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

HALF_PI = math.pi / 2
SCHEDULES = ("adaptive", "linear", "reference", "fixed")
_EPS = 1e-6
FULL_MAX_CELLS = 50_000_000  # held-out logits kept for the temperature fit: 200 MB of float32


def cam_exponent(c: float) -> float:
    """c' = 1 / (1 − log2(1 + cos c)): 1 at c = π/2, about 4.38 at π/4."""
    return 1.0 / (1.0 - math.log2(1.0 + math.cos(c)))


def cam_transform(cos, c: float):
    """f(cos θ) = 2·((cos θ + 1)/2)^c' − 1 on a torch tensor; monotone, [−1, 1] onto itself.

    cos is clamped to [−1 + 1e-6, 1] first, so a value that rounds below −1 cannot make the
    fractional power NaN and the gradient stays finite at ±1.
    """
    x = cos.clamp(-1.0 + _EPS, 1.0)
    return 2.0 * ((x + 1.0) / 2.0).pow(cam_exponent(c)) - 1.0


def cam_softmax_loss(cos, target, c: float, scale: float = 20.0, valid=None):
    """Mean cam-softmax cross-entropy.

    cos : (B, M) cosines between each sample and M classes (all classes, or its candidates)
    target : (B,) int64 column of each sample's target class
    valid : optional (B, M) bool; False columns (padding, duplicate candidates) get no mass
    """
    import torch.nn.functional as F

    t = target[:, None]
    logits = cos.scatter(1, t, cam_transform(cos.gather(1, t), c)) * scale
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    return F.cross_entropy(logits, target)


class CamSchedule:
    """The margin angle c over training; ``step(target_cos)`` is called after every optimiser step."""

    def __init__(self, kind: str = "adaptive", *, c_min: float = math.pi / 4, total_steps: int = 1, ramp: float = 0.2,
                 quantile: float = 0.9, momentum: float = 0.9, rate: float = 1e-4):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
        if not 0 < c_min <= HALF_PI:
            raise ValueError(f"c_min must be in (0, pi/2], got {c_min}")
        self.kind, self.c_min, self.quantile, self.momentum = kind, c_min, quantile, momentum
        self.rate = rate if kind == "reference" else (HALF_PI - c_min) / max(1.0, ramp * total_steps)
        self.c = HALF_PI
        self.history: list[float] = []

    def step(self, target_cos: np.ndarray | None = None) -> float:
        if self.kind in ("reference", "linear"):
            self.c = max(self.c_min, self.c - self.rate)
        elif self.kind == "adaptive" and target_cos is not None and len(target_cos):
            angle = float(np.quantile(np.arccos(np.clip(target_cos, -1.0, 1.0)), self.quantile))
            self.c = min(HALF_PI, max(self.c_min, self.momentum * self.c + (1 - self.momentum) * angle))
        self.history.append(self.c)
        return self.c


@dataclass(frozen=True)
class CamSoftmaxConfig:
    """Settings of the cam-softmax stage (see the module docstring)."""

    scale: float = 20.0
    schedule: str = "adaptive"
    c_min: float = math.pi / 4
    ramp: float = 0.2
    quantile: float = 0.9
    momentum: float = 0.9
    epochs: int = 6
    batch_size: int = 256
    lr: float = 0.01
    folds: int = 5
    adapter: bool = False
    n_negatives: int = 16
    full_max_classes: int = 512

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError("epochs must be >= 0 and batch_size >= 1")


@dataclass(frozen=True)
class Confidence:
    """Out-of-sample confidence per sample (NaN where the label had no image outside the fold).

    p_given : probability of the given label
    top : the most probable label (-1 where unscorable)
    p_top : its probability
    margin : p_given − the best other label's probability, in [−1, 1]
    """

    p_given: np.ndarray
    top: np.ndarray
    p_top: np.ndarray
    margin: np.ndarray
    stats: dict = field(default_factory=dict)


def stratified_folds(labels: np.ndarray, folds: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Fold id per sample; each label's images are spread round-robin from a random start."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    order = np.lexsort((rng.random(n), labels))
    sorted_labels = labels[order]
    start = np.r_[0, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, n]))
    offset = rng.integers(0, folds, int(labels.max()) + 1)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = (np.arange(n) - first + offset[sorted_labels]) % folds
    return fold


def candidate_classes(labels: np.ndarray, neighbours: np.ndarray | None, n_classes: int, n_negatives: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(N, M) candidate classes: the given label first, then neighbours' labels, then sampled
    classes; repeats (and padding) are -1. Column 0 is always the given label."""
    cols = [labels[:, None]]
    if neighbours is not None:
        cols.append(np.where(neighbours >= 0, labels[np.maximum(neighbours, 0)], -1))
    if n_negatives:
        cols.append(rng.integers(0, n_classes, (len(labels), n_negatives)))
    return _dedupe_rows(np.concatenate(cols, axis=1).astype(np.int64))


def _dedupe_rows(cand: np.ndarray) -> np.ndarray:
    order = np.argsort(cand, axis=1, kind="stable")  # stable: the earliest column of a value survives
    vals = np.take_along_axis(cand, order, axis=1)
    repeat = np.zeros_like(cand, dtype=bool)
    repeat[:, 1:] = vals[:, 1:] == vals[:, :-1]
    out = cand.copy()
    np.put_along_axis(out, order, np.where(repeat, -1, vals), axis=1)
    return out


def _torch_device(device) -> str:
    """torch's device for a resolved :class:`~facecluster.device.Device` (or a request string):
    CUDA only when the device is a GPU and torch itself can use it."""
    from .device import Device, resolve_device, torch_cuda_available

    device = device if isinstance(device, Device) else resolve_device(device)
    return "cuda" if device.kind == "cuda" and torch_cuda_available() else "cpu"


class _Head:
    """Cosine classifier: class weights (and an optional adapter) on one device."""

    def __init__(self, x, labels, train, n_classes: int, adapter: bool, device: str):
        import torch

        d = x.shape[1]
        sums = torch.zeros(n_classes, d, device=device)
        sums.index_add_(0, labels[train], x[train])
        self.present = torch.zeros(n_classes, dtype=torch.bool, device=device)
        self.present[labels[train]] = True
        self.weight = torch.nn.Parameter(sums / sums.norm(dim=1, keepdim=True).clamp_min(_EPS))
        self.adapter = torch.nn.Parameter(torch.eye(d, device=device)) if adapter else None

    def parameters(self):
        return [p for p in (self.weight, self.adapter) if p is not None]

    def features(self, xb):
        import torch.nn.functional as F

        z = xb if self.adapter is None else xb @ self.adapter
        return F.normalize(z, dim=1, eps=_EPS)

    def cosines(self, xb, classes=None):
        """(B, C) against all classes, or (B, M) against per-row candidate ``classes`` (numpy, -1 = none)."""
        import torch
        import torch.nn.functional as F

        z = self.features(xb)
        if classes is None:
            w = F.normalize(self.weight, dim=1, eps=_EPS)
            return z @ w.T, self.present[None, :].expand(len(xb), -1)
        # one matmul against the classes this batch mentions, then a gather: far cheaper on a
        # CPU than a (B, M, D) gather, whose backward is a scatter-add of B·M·D values
        safe = np.maximum(classes, 0)
        used, where = np.unique(safe, return_inverse=True)
        used_t = torch.as_tensor(used, device=z.device)
        where_t = torch.as_tensor(where.reshape(safe.shape), device=z.device)
        # a sparse gradient: only the rows this batch mentions are touched by the optimiser
        w = F.normalize(F.embedding(used_t, self.weight, sparse=True), dim=1, eps=_EPS)
        cos = (z @ w.T).gather(1, where_t)
        valid = torch.as_tensor(classes >= 0, device=z.device) & self.present[used_t][where_t]
        return cos, valid


def camsoftmax_confidence(x: np.ndarray, labels: np.ndarray, n_classes: int | None = None,
                          neighbours: np.ndarray | None = None, config: CamSoftmaxConfig | None = None, *,
                          device="auto", seed: int | np.random.Generator = 0) -> Confidence:
    """Cross-fitted cam-softmax confidence in every sample's label.

    Parameters
    ----------
    x : (N, D) float32 unit embeddings (the processed ones the kNN graph was built on)
    labels : (N,) int label ids in [0, n_classes)
    neighbours : (N, k) kNN indices (-1 = none); their labels become each sample's candidate
        classes. Needed for the candidate softmax (many identities).
    config : CamSoftmaxConfig
    device : a resolved :class:`~facecluster.device.Device` or "auto" / "cpu" / "cuda"
    seed : an int or a numpy Generator; every random choice (folds, batch order, sampled
        negatives, the temperature's row sample) is drawn from it, and torch's own generator
        is seeded from it (torch's global state is left alone)
    """
    import torch

    config = config or CamSoftmaxConfig()
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    n_classes = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    small = n_classes <= config.full_max_classes and n * n_classes <= FULL_MAX_CELLS
    full = small or neighbours is None
    if full:
        why = "at most full_max_classes identities" if small else "no kNN graph given"
        mode = f"full softmax over all {n_classes} identities ({why})"
    else:
        why = (f"{n_classes} identities > full_max_classes" if n_classes > config.full_max_classes
               else f"N x identities > {FULL_MAX_CELLS:,} held-out logits")
        mode = (f"candidate softmax: own label + labels of {neighbours.shape[1]} neighbours + "
                f"{config.n_negatives} sampled identities ({why})")
    device = _torch_device(device)
    rng = np.random.default_rng(seed)
    folds = stratified_folds(labels, config.folds, rng)
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
    yt = torch.as_tensor(labels, device=device)
    score_cand = None if full else candidate_classes(labels, neighbours, n_classes, config.n_negatives, rng)
    width = n_classes if full else score_cand.shape[1]
    logits = np.full((n, width), -np.inf, dtype=np.float32)
    scorable = np.zeros(n, dtype=bool)
    c_trace, losses = [], []
    steps_per_fold = config.epochs * math.ceil(n * (config.folds - 1) / config.folds / config.batch_size)
    for f in range(config.folds):
        held = np.flatnonzero(folds == f)
        train = np.flatnonzero(folds != f)
        head = _Head(xt, yt, torch.as_tensor(train, device=device), n_classes, config.adapter, device)
        schedule = CamSchedule(config.schedule, c_min=config.c_min, total_steps=steps_per_fold, ramp=config.ramp,
                               quantile=config.quantile, momentum=config.momentum)
        fold_losses = _train(head, xt, yt, train, neighbours, score_cand is not None, schedule, config, rng, device)
        losses.append(fold_losses)
        c_trace.append(schedule.history[-1] if schedule.history else HALF_PI)
        with torch.no_grad():
            for lo in range(0, len(held), 2048):
                rows = held[lo:lo + 2048]
                cos, valid = head.cosines(xt[rows], None if full else score_cand[rows])
                z = (config.scale * cos).masked_fill(~valid, float("-inf"))
                logits[rows] = z.cpu().numpy()
                own_col = yt[rows] if full else torch.zeros(len(rows), dtype=torch.int64, device=device)
                scorable[rows] = valid.gather(1, own_col[:, None])[:, 0].cpu().numpy()
    own = labels if full else np.zeros(n, dtype=np.int64)
    temperature = _fit_temperature(logits[scorable], own[scorable], rng)
    from scipy.special import softmax

    prob = softmax(logits / temperature, axis=1)
    cls = np.arange(n_classes)[None, :] if full else score_cand
    p_given = prob[np.arange(n), own]
    top_col = prob.argmax(axis=1)
    p_top = prob[np.arange(n), top_col]
    top = np.take_along_axis(np.broadcast_to(cls, prob.shape), top_col[:, None], axis=1)[:, 0]
    masked = prob.copy()
    masked[np.arange(n), own] = -1.0
    margin = p_given - masked.max(axis=1)
    nan = ~scorable
    p_given, p_top, margin = (np.where(nan, np.nan, v).astype(np.float32) for v in (p_given, p_top, margin))
    top = np.where(nan, -1, top).astype(np.int64)
    stats = {"config": asdict(config), "mode": mode, "device": device, "temperature": round(float(temperature), 4),
             "unscorable": int(nan.sum()), "steps_per_fold": steps_per_fold,
             "final_c_per_fold": [round(c, 4) for c in c_trace],
             "final_c_degrees": round(math.degrees(float(np.mean(c_trace))), 2),
             "loss_first_last": [[round(fl[0], 4), round(fl[-1], 4)] if fl else [] for fl in losses]}
    return Confidence(p_given, top, p_top, margin, stats)


def _train(head, xt, yt, train, neighbours, candidates: bool, schedule, config, rng, device) -> list[float]:
    import torch

    if config.epochs == 0:
        return []
    if candidates:
        # class weights get sparse gradients (the batch's classes only): SparseAdam updates those
        # rows alone, where dense Adam would sweep all N_classes x D moments every step
        opts = [torch.optim.SparseAdam([head.weight], lr=config.lr)]
        if head.adapter is not None:
            opts.append(torch.optim.Adam([head.adapter], lr=config.lr))
    else:
        opts = [torch.optim.Adam(head.parameters(), lr=config.lr)]
    nb_labels = None
    labels_np = yt.cpu().numpy()
    if candidates:
        nb = neighbours[train]
        nb_labels = np.where(nb >= 0, labels_np[np.maximum(nb, 0)], -1)
    losses = []
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    for _ in range(config.epochs):
        perm = torch.randperm(len(train), generator=gen).numpy()
        total, count = 0.0, 0
        for lo in range(0, len(train), config.batch_size):
            pos = perm[lo:lo + config.batch_size]
            rows = train[pos]
            xb, yb = xt[rows], yt[rows]
            if candidates:
                # sampled negatives are shared by the batch: every row gets the same ones, so
                # the batch's class vocabulary (and the matmul) stays small
                neg = np.broadcast_to(rng.integers(0, len(head.present), config.n_negatives), (len(rows), config.n_negatives))
                cand = _dedupe_rows(np.concatenate([labels_np[rows][:, None], nb_labels[pos], neg], axis=1))
                cos, valid = head.cosines(xb, cand)
                target = torch.zeros(len(rows), dtype=torch.int64, device=device)
            else:
                cos, valid = head.cosines(xb)
                target = yb
            loss = cam_softmax_loss(cos, target, schedule.c, config.scale, valid)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            schedule.step(cos.detach().gather(1, target[:, None])[:, 0].cpu().numpy())
            total += loss.item() * len(rows)
            count += len(rows)
        losses.append(total / max(count, 1))
    return losses


def _fit_temperature(logits: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                     max_rows: int = 200_000) -> float:
    """The T minimising the held-out negative log-likelihood of the given labels (mostly right)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    if not len(logits):
        return 1.0
    if len(logits) > max_rows:
        pick = rng.choice(len(logits), max_rows, replace=False)
        logits, target = logits[pick], target[pick]
    z = logits.astype(np.float64)
    own = z[np.arange(len(z)), target]

    def nll(log_t):
        t = math.exp(log_t)
        return float(np.mean(logsumexp(z / t, axis=1) - own / t))

    res = minimize_scalar(nll, bounds=(math.log(0.02), math.log(50.0)), method="bounded")
    return float(math.exp(res.x))
