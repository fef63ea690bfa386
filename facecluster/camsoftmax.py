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

The heads start at their closed form: class weights at the class centroids (unit-normalised) of
the rows each head is allowed to see. By default (``epochs = 0``) they are scored as they are,
with numpy and a compiled kernel, and torch is never loaded. With ``epochs > 0`` they are then
trained with the cam-softmax loss on the set's own (processed, unit) embeddings, optionally
through a learned linear adapter initialised at the identity.

Why the closed form is the default: on fixed face embeddings the trained head ranks wrong
labels no better than its start. Measured (AUROC of 1 − p(given label) on injected flips and
open-set images, docs/benchmarks.md): real dlib and OMZ protocol sets 0.9996 / 0.9999 / 0.9738 /
0.9799 at the closed form against 0.9993 / 0.9998 / 0.9678 / 0.9666 after 6 epochs; synthetic
13k × 5k 0.9941 against 0.9922; the real dlib set with its full softmax 0.9869 both (AP 0.916
against 0.919). Training costs 5–60× the closed form's time. The loss is where the paper's
robustness to wrong labels comes from when the features themselves are learned; on a head
over fixed embeddings the class centroids already are close to the best weights, and wrong
labels move a centroid by 1/n of their pull. Training stays one setting away.

Confidence is out-of-sample by cross-fitting: samples are split into folds stratified by
label, and each fold is scored by a head built (and trained) on the others. Probabilities
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
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from numba import njit

from .blocks import map_row_blocks

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
    epochs: int = 0  # the closed-form heads; > 0 trains them with the cam-softmax loss (see the module docstring)
    batch_size: int = 1024  # rows per step; each updates the F − 1 heads that do not score it
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
        for name in ("scale", "lr"):
            if not getattr(self, name) > 0:  # NaN too
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.n_negatives < 1 or self.full_max_classes < 0:  # 0 classes scored in full: always sampled
            raise ValueError(f"n_negatives must be at least 1 and full_max_classes at least 0, got {self.n_negatives} "
                             f"and {self.full_max_classes}")
        for name in ("ramp", "quantile", "momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")


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
    classes; repeats (and padding) are -1. Column 0 is always the given label.

    Filled in place, the repeats removed a block of rows at a time: at 1M rows × 47 columns
    the table is 376 MB, and whole-table temporaries would be several times that."""
    n = len(labels)
    n_nb = 0 if neighbours is None else neighbours.shape[1]
    cand = np.empty((n, 1 + n_nb + n_negatives), dtype=np.int64)
    cand[:, 0] = labels
    if n_negatives:
        cand[:, 1 + n_nb:] = rng.integers(0, n_classes, (n, n_negatives))
    for lo in range(0, n, _DEDUPE_ROWS):
        hi = min(n, lo + _DEDUPE_ROWS)
        if n_nb:
            nb = neighbours[lo:hi]
            cand[lo:hi, 1:1 + n_nb] = np.where(nb >= 0, labels[np.maximum(nb, 0)], -1)
        cand[lo:hi] = _dedupe_rows(cand[lo:hi])
    return cand


_DEDUPE_ROWS = 1 << 16


def _dedupe_rows(cand: np.ndarray) -> np.ndarray:
    order = np.argsort(cand, axis=1, kind="stable")  # stable: the earliest column of a value survives
    vals = np.take_along_axis(cand, order, axis=1)
    repeat = np.zeros_like(cand, dtype=bool)
    repeat[:, 1:] = vals[:, 1:] == vals[:, :-1]
    out = cand.copy()
    np.put_along_axis(out, order, np.where(repeat, -1, vals), axis=1)
    return out


def _valid_csr(valid, cols, values, n_cols: int):
    """A (rows × n_cols) CSR matrix with one entry per True of ``valid`` (rows, M), in
    row-major order: column ``cols``, value ``values`` (both of length valid.sum())."""
    import torch

    crow = torch.zeros(len(valid) + 1, dtype=torch.int64, device=valid.device)
    crow[1:] = torch.cumsum(valid.sum(dim=1), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, values, (len(valid), n_cols), check_invariants=False)


def _sampled_dots(valid, cols, z, w):
    """(rows, M) dot products <z_r, w_cols> at the True entries of ``valid`` (0 elsewhere),
    and the same values flat: only those products are computed (sampled_addmm), no gather."""
    import torch

    pattern = _valid_csr(valid, cols, torch.zeros(len(cols), device=z.device), len(w))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.sparse.sampled_addmm(pattern, z, w.T, beta=0.0).values()
    return torch.zeros(valid.shape, device=z.device).masked_scatter_(valid, flat), flat


def _torch_device(device) -> str:
    """torch's device for a resolved :class:`~facecluster.device.Device` (or a request string):
    CUDA only when the device is a GPU and torch itself can use it."""
    from .device import Device, resolve_device, torch_cuda_available

    device = device if isinstance(device, Device) else resolve_device(device)
    return "cuda" if device.kind == "cuda" and torch_cuda_available() else "cpu"


class _FoldHeads:
    """Every fold's cosine classifier in one tensor, trained together.

    weight : (F, C, D) class weights, head f's initialised at the centroids of its training
    rows (every row not in fold f); present : (F, C), whether head f saw the class. A row of
    fold f trains the other F − 1 heads and is scored by head f alone, so each head still
    never sees the rows it scores: cross-fitting as before, in one pass over the data instead
    of F. Adam runs by hand on the class-weight rows a step touches (lazy, as SparseAdam:
    moments of untouched rows are left as they are), so no optimiser module is loaded.
    """

    def __init__(self, weight: np.ndarray, present: np.ndarray, adapter: bool, device: str):
        import torch

        n_folds, n_classes = present.shape
        d = weight.shape[1]
        self.weight = torch.as_tensor(weight, device=device).contiguous()
        self.present = torch.as_tensor(present, device=device)
        self.n_folds, self.n_classes, self.dim = n_folds, n_classes, d
        self.adapter = torch.eye(d, device=device).repeat(n_folds, 1, 1) if adapter else None
        self.m = torch.zeros_like(self.weight)
        self.v = torch.zeros_like(self.weight)
        self.am = None if self.adapter is None else torch.zeros_like(self.adapter)
        self.av = None if self.adapter is None else torch.zeros_like(self.adapter)
        self.t = 0
        self._step = None  # the step count as a tensor, for torch's fused Adam

    def features(self, xb, heads, adapter=None):
        """(B, H, D) unit features of each row as each of its heads sees it."""
        import torch
        import torch.nn.functional as F

        if self.adapter is None:
            return F.normalize(xb, dim=1, eps=_EPS)[:, None, :].expand(-1, heads.shape[1], -1)
        a = self.adapter if adapter is None else adapter
        z = torch.einsum("bd,fde->bfe", xb, a)  # every head's view, then each row's heads
        return F.normalize(z.gather(1, heads[:, :, None].expand(-1, -1, self.dim)), dim=2, eps=_EPS)

    def cosines(self, xb, heads, classes, weight=None, adapter=None):
        """(B, H, M) cosines of each row, as seen by each of its ``heads`` (B, H), against its
        candidate ``classes`` (B, M; -1 = none), and which of them are valid. With ``weight``
        (the rows of self.weight listed by the returned index, as a leaf for autograd) the
        gradient flows there."""
        import torch
        import torch.nn.functional as F

        safe = classes.clamp_min(0)
        flat = heads[:, :, None] * self.n_classes + safe[:, None, :]  # (B, H, M) rows of weight
        if weight is None:
            w = self.weight[flat]
            index = None
        else:
            index, inverse = weight
            w = index[inverse]
        w = F.normalize(w, dim=3, eps=_EPS)
        z = self.features(xb, heads, adapter)
        cos = torch.einsum("bhmd,bhd->bhm", w, z)
        valid = (classes >= 0)[:, None, :] & self.present.view(-1)[flat]
        return cos, valid

    def sampled_cosines(self, xb, head, classes, unit_weight):
        """(B, M) cosines of each row, as its one ``head`` (B,) sees it, against its candidate
        ``classes`` (B, M; -1 = none), and which are valid; only the valid dot products are
        computed (``unit_weight``: the normalised class weights), no (B, M, D) gather. No
        adapter."""
        import torch.nn.functional as F

        flat = head[:, None] * self.n_classes + classes.clamp_min(0)
        valid = (classes >= 0) & self.present.view(-1)[flat]
        cos, _ = _sampled_dots(valid, flat[valid], F.normalize(xb, dim=1, eps=_EPS), unit_weight)
        return cos, valid

    def full_cosines(self, xb, heads, weight=None, adapter=None):
        """(B, H, C) cosines against every class, head by head (one matmul per fold)."""
        import torch
        import torch.nn.functional as F

        w = (self.weight if weight is None else weight).view(self.n_folds, self.n_classes, self.dim)
        w = F.normalize(w, dim=2, eps=_EPS)
        z = self.features(xb, heads, adapter)
        b, h = heads.shape
        flat_heads = heads.reshape(-1)
        zf = z.reshape(b * h, self.dim)
        order = torch.argsort(flat_heads, stable=True)
        sizes = torch.bincount(flat_heads, minlength=self.n_folds).tolist()
        pieces = [part @ w[f].T for f, part in enumerate(torch.split(zf[order], sizes)) if sizes[f]]
        cos = torch.empty(b * h, self.n_classes, device=xb.device, dtype=zf.dtype).index_copy(0, order, torch.cat(pieces))
        valid = self.present[heads]
        return cos.view(b, h, self.n_classes), valid

    def adam(self, rows, grad, lr: float, adapter_grad=None, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        """One Adam step on the weight ``rows`` (unique) given their gradient: lazy (the rows
        touched only, as SparseAdam) when few are touched, dense when most are."""
        import torch

        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        if 2 * len(rows) > len(self.weight):
            # most rows touched: plain Adam over the whole tensors, in place (the few untouched
            # rows get a zero gradient and coast on their moments, as in torch's Adam), beats
            # gathering and scattering the touched rows; torch's fused kernel does it in one
            # pass over memory where it has one (6x the separate in-place ops at 100k x 6.7k)
            full = torch.zeros_like(self.weight).index_copy_(0, rows, grad)
            fused = getattr(torch, "_fused_adam_", None)
            if fused is not None and self.weight.dtype == torch.float32:
                if self._step is None:
                    self._step = torch.zeros((), dtype=torch.float32, device=self.weight.device)
                self._step.fill_(float(self.t))
                fused([self.weight], [full], [self.m], [self.v], [], [self._step], lr=lr, beta1=b1, beta2=b2,
                      weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
            else:
                self.m.mul_(b1).add_(full, alpha=1 - b1)
                self.v.mul_(b2).addcmul_(full, full, value=1 - b2)
                denom = self.v.div(c2).sqrt_().add_(eps)
                self.weight.addcdiv_(self.m, denom, value=-lr / c1)
        else:
            m = self.m[rows].mul_(b1).add_(grad, alpha=1 - b1)
            v = self.v[rows].mul_(b2).addcmul_(grad, grad, value=1 - b2)
            self.m[rows], self.v[rows] = m, v
            self.weight[rows] -= lr * (m / c1) / ((v / c2).sqrt() + eps)
        if adapter_grad is not None:
            self.am.mul_(b1).add_(adapter_grad, alpha=1 - b1)
            self.av.mul_(b2).addcmul_(adapter_grad, adapter_grad, value=1 - b2)
            self.adapter -= lr * (self.am / c1) / ((self.av / c2).sqrt() + eps)


def camsoftmax_confidence(x: np.ndarray, labels: np.ndarray, n_classes: int | None = None,
                          neighbours: np.ndarray | None = None, config: CamSoftmaxConfig | None = None, *,
                          device="auto", seed: int | np.random.Generator = 0, progress=None,
                          client=None) -> Confidence:
    """Cross-fitted confidence in every sample's label, from cosine-classifier heads that start
    at their closed form (each fold's class centroids) and, with ``config.epochs`` > 0, are then
    trained with the cam-softmax loss.

    Parameters
    ----------
    x : (N, D) float32 unit embeddings (the processed ones the kNN graph was built on)
    labels : (N,) int label ids in [0, n_classes)
    neighbours : (N, k) kNN indices (-1 = none); their labels become each sample's candidate
        classes. Needed for the candidate softmax (many identities).
    config : CamSoftmaxConfig
    device : a resolved :class:`~facecluster.device.Device` or "auto" / "cpu" / "cuda"; training
        runs there (torch); the closed-form heads (epochs = 0) are scored with numpy and numba
        and never load torch
    seed : an int or a numpy Generator; every random choice (folds, batch order, sampled
        negatives, the temperature's row sample) is drawn from it, and torch's own generator
        is seeded from it (torch's global state is left alone)
    progress : a :class:`~facecluster.progress.Progress`; one bar over the training steps (or
        the scoring chunks)
    client : a ``dask.distributed.Client``: the closed-form heads' held-out scoring (the
        O(N·candidates·D) part) runs on its workers, chunk by chunk, with the same result
    """
    from .progress import NullProgress

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
    rng = np.random.default_rng(seed)
    folds = stratified_folds(labels, config.folds, rng)
    score_cand = None if full else candidate_classes(labels, neighbours, n_classes, config.n_negatives, rng)
    progress = progress or NullProgress()
    if config.epochs > 0:
        weight, present = closed_form_heads(x, labels, folds, config.folds, n_classes)
        logits, scorable, c_final, losses, device, steps = _trained_logits(
            x, labels, folds, weight, present, neighbours, score_cand, full, config, rng, device, progress)
        del weight, present  # the fold heads (folds x identities x D: 0.7 GB at 1M x 66k x 512) are done with
        training = (f"{config.folds} fold heads started at their class centroids and trained together with the "
                    f"cam-softmax loss, each row updating the {config.folds - 1} heads that do not score it")
    else:
        with progress.task(f"cam-softmax ({config.folds} closed-form fold heads)",
                           total=_score_chunks(folds, config.folds, client is None)) as adv:
            logits, scorable = _closed_form_logits(x, labels, folds, config.folds, n_classes, score_cand, config.scale,
                                                   adv, client)
        c_final, losses, device, steps = HALF_PI, [], "cpu", 0
        training = (f"none: {config.folds} closed-form fold heads, each the unit centroids of its training rows' "
                    "classes (set epochs > 0 to train them with the cam-softmax loss)")
    own = labels if full else np.zeros(n, dtype=np.int64)
    temperature = _fit_temperature(logits, own, rng, rows=np.flatnonzero(scorable))
    # the softmax of logits / T, in place (as scipy.special.softmax computes it, without its
    # three N x M temporaries: 0.2 GB each at 1M rows x 47 candidates)
    prob = logits
    del logits
    prob /= np.float32(temperature)
    prob -= prob.max(axis=1, keepdims=True)
    np.exp(prob, out=prob)
    prob /= prob.sum(axis=1, keepdims=True)
    cls = np.arange(n_classes)[None, :] if full else score_cand
    p_given = prob[np.arange(n), own]
    top_col = prob.argmax(axis=1)
    p_top = prob[np.arange(n), top_col]
    top = np.take_along_axis(np.broadcast_to(cls, prob.shape), top_col[:, None], axis=1)[:, 0]
    prob[np.arange(n), own] = -1.0  # in place (p_given is a copy): the best other label
    margin = p_given - prob.max(axis=1)
    del prob
    nan = ~scorable
    p_given, p_top, margin = (np.where(nan, np.nan, v).astype(np.float32) for v in (p_given, p_top, margin))
    top = np.where(nan, -1, top).astype(np.int64)
    stats = {"config": asdict(config), "mode": mode, "device": device, "temperature": round(float(temperature), 4),
             "unscorable": int(nan.sum()), "steps": steps, "training": training,
             "final_c": round(c_final, 4), "final_c_degrees": round(math.degrees(c_final), 2),
             "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)] if losses else []}
    return Confidence(p_given, top, p_top, margin, stats)


_SCORE_CHUNK = 8192


def _score_chunks(folds: np.ndarray, n_folds: int, by_fold: bool) -> int:
    """How many chunks :func:`_closed_form_logits` scores (its progress bar's total)."""
    if not by_fold:
        return -(-len(folds) // _SCORE_CHUNK)
    return int(sum(len(np.unique(folds[lo:lo + _SCORE_CHUNK])) for lo in range(0, len(folds), _SCORE_CHUNK)))


def closed_form_heads(x: np.ndarray, labels: np.ndarray, folds: np.ndarray, n_folds: int, n_classes: int):
    """Every fold's head at its closed form: (F·C, D) float32 unit centroids of each class over
    the rows not in that fold (head f never sees fold f), and (F, C) whether head f saw the
    class at all. One sparse product, no per-class loop."""
    from scipy import sparse

    n, d = x.shape
    key = folds * n_classes + labels
    member = sparse.csr_matrix((np.ones(n, dtype=np.float32), (key, np.arange(n))), shape=(n_folds * n_classes, n))
    train = np.asarray(member @ x, dtype=np.float32).reshape(n_folds, n_classes, d)
    # each head: all rows but its fold; in place, and normalised a fold at a time (at 1M rows ×
    # 66k identities × 512 the heads are 0.7 GB, and whole-array temporaries were 1.4 GB more)
    np.subtract(train.sum(axis=0, keepdims=True), train, out=train)
    counts = np.bincount(key, minlength=n_folds * n_classes).reshape(n_folds, n_classes)
    present = (counts.sum(axis=0, keepdims=True) - counts) > 0
    for f in range(n_folds):
        train[f] /= np.maximum(np.linalg.norm(train[f], axis=1, keepdims=True), _EPS)
    return train.reshape(n_folds * n_classes, d), present


def fold_heads(x: np.ndarray, labels: np.ndarray, folds: np.ndarray, n_folds: int, n_classes: int):
    """The heads of :func:`closed_form_heads` one fold at a time, equal to them bit for bit:
    yields (f, (C, D) float32 head, (C,) present). Holds three C×D arrays at once, not F of
    them (at 1M rows × 101k identities × 512: 0.6 GB against 1.0 GB and its temporaries)."""
    from scipy import sparse

    n, d = x.shape
    counts = np.bincount(folds * n_classes + labels, minlength=n_folds * n_classes).reshape(n_folds, n_classes)
    present = (counts.sum(axis=0, keepdims=True) - counts) > 0
    rows = [np.flatnonzero(folds == f) for f in range(n_folds)]

    def fold_sums(f):  # each class's sum over fold f, as the rows of closed_form_heads' product
        member = sparse.csr_matrix((np.ones(len(rows[f]), dtype=np.float32), (labels[rows[f]], rows[f])),
                                   shape=(n_classes, n))
        return np.asarray(member @ x, dtype=np.float32)

    total = fold_sums(0)
    for f in range(1, n_folds):  # in fold order, as the sum over the folds' axis adds them
        total += fold_sums(f)
    for f in range(n_folds):
        head = np.subtract(total, fold_sums(f))
        head /= np.maximum(np.linalg.norm(head, axis=1, keepdims=True), _EPS)
        yield f, head, present[f]


def _closed_form_logits(x, labels, folds, n_folds: int, n_classes: int, score_cand, scale: float, advance,
                        client=None):
    """Held-out logits scale·cos of every row against its own fold's closed-form head: all
    classes (``score_cand`` None: one matmul per fold and chunk) or its candidate classes
    (only those dot products, by a compiled kernel). Invalid entries are −inf.

    Here, the rows are scored fold by fold, each fold's head built when its turn comes
    (:func:`fold_heads`). With a Dask ``client`` the row chunks are scored on its workers,
    every head sent once to each (:func:`closed_form_heads`), by the same function: the logits
    are the local ones."""
    logits = np.full((len(x), n_classes if score_cand is None else score_cand.shape[1]), -np.inf, dtype=np.float32)
    scorable = np.zeros(len(x), dtype=bool)
    if client is not None:
        weight, present = closed_form_heads(x, labels, folds, n_folds, n_classes)
        cand = (None,) if score_cand is None else ()

        def consume(lo, hi, part):
            logits[lo:hi], scorable[lo:hi] = part

        per_row = (x, labels, folds) if score_cand is None else (x, labels, folds, score_cand)
        map_row_blocks(_score_rows, len(x), per_row, (*cand, weight, present, scale), client=client,
                       block_rows=_SCORE_CHUNK, advance=advance, consume=consume)
        return logits, scorable
    for f, head, present in fold_heads(x, labels, folds, n_folds, n_classes):
        # the same chunks of rows as the cluster's blocks, fold f's rows of each: a matrix
        # product's last bits depend on how many rows it is given
        for lo in range(0, len(x), _SCORE_CHUNK):
            at = lo + np.flatnonzero(folds[lo:lo + _SCORE_CHUNK] == f)
            if len(at):
                logits[at], scorable[at] = _score_rows(x[at], labels[at], np.zeros(len(at), dtype=np.int64),
                                                       None if score_cand is None else score_cand[at], head,
                                                       present[None, :], scale)
                advance(1)
    return logits, scorable


def _score_rows(z, labels, fold, cand, weight, present, scale: float):
    """One chunk of :func:`_closed_form_logits`: (logits, scorable) of rows ``z``."""
    n_classes = present.shape[1]
    z = np.asarray(z, dtype=np.float32)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), _EPS)
    if cand is None:
        valid = present[fold]
        cos = np.empty((len(z), n_classes), dtype=np.float32)
        for f in np.unique(fold):
            at = fold == f
            cos[at] = z[at] @ weight[f * n_classes:(f + 1) * n_classes].T
        scorable = valid[np.arange(len(z)), labels]
    else:
        flat = fold[:, None] * n_classes + np.maximum(cand, 0)
        valid = (cand >= 0) & present.reshape(-1)[flat]
        cos = np.zeros(cand.shape, dtype=np.float32)
        _sampled_row_dots(z, weight, flat, valid, cos)
        scorable = valid[:, 0]
    return np.where(valid, scale * cos, -np.inf).astype(np.float32), scorable


@njit(cache=True, nogil=True, fastmath=True)
def _sampled_row_dots(z, w, flat, valid, out):  # pragma: no cover - compiled
    """out[r, m] = <z[r], w[flat[r, m]]> where valid[r, m]: only the candidates' products."""
    for r in range(flat.shape[0]):
        for m in range(flat.shape[1]):
            if valid[r, m]:
                row = flat[r, m]
                s = np.float32(0.0)
                for j in range(z.shape[1]):
                    s += z[r, j] * w[row, j]
                out[r, m] = s


def _trained_logits(x, labels, folds, weight, present, neighbours, score_cand, full, config, rng, device, progress):
    """The closed-form heads trained with the cam-softmax loss (torch, on ``device``), then
    every row scored by its own fold's head: (logits, scorable, final c, losses per epoch,
    the torch device, steps)."""
    import torch

    n, n_classes = len(labels), present.shape[1]
    device = _torch_device(device)
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
    yt = torch.as_tensor(labels, device=device)
    width = n_classes if full else score_cand.shape[1]
    heads = _FoldHeads(weight, present, config.adapter, device)
    steps = config.epochs * math.ceil(n / config.batch_size)
    schedule = CamSchedule(config.schedule, c_min=config.c_min, total_steps=steps, ramp=config.ramp,
                           quantile=config.quantile, momentum=config.momentum)
    nb_labels = None if full else np.where(neighbours >= 0, labels[np.maximum(neighbours, 0)], -1)
    with progress.task(f"cam-softmax ({config.folds} fold heads)", total=max(steps, 1)) as advance:
        losses = _train_folds(heads, xt, yt, folds, nb_labels, schedule, config, rng, device, advance)
    logits = np.full((n, width), -np.inf, dtype=np.float32)
    scorable = np.zeros(n, dtype=bool)
    folds_t = torch.as_tensor(folds, device=device)
    with torch.no_grad():
        sampled = not full and heads.adapter is None
        unit_weight = torch.nn.functional.normalize(heads.weight, dim=1, eps=_EPS) if sampled else None
        chunk = 8192 if sampled else 2048
        for lo in range(0, n, chunk):
            rows = np.arange(lo, min(n, lo + chunk))
            own_heads = folds_t[rows][:, None]
            if full:
                cos, valid = heads.full_cosines(xt[rows], own_heads)
                cos, valid = cos[:, 0], valid[:, 0]
            elif sampled:
                cand_t = torch.as_tensor(score_cand[rows], device=device)
                cos, valid = heads.sampled_cosines(xt[rows], own_heads[:, 0], cand_t, unit_weight)
            else:
                cos, valid = heads.cosines(xt[rows], own_heads, torch.as_tensor(score_cand[rows], device=device))
                cos, valid = cos[:, 0], valid[:, 0]
            logits[rows] = (config.scale * cos).masked_fill(~valid, float("-inf")).cpu().numpy()
            own_col = yt[rows] if full else torch.zeros(len(rows), dtype=torch.int64, device=device)
            scorable[rows] = valid.gather(1, own_col[:, None])[:, 0].cpu().numpy()
    c_final = schedule.history[-1] if schedule.history else HALF_PI
    return logits, scorable, c_final, losses, device, steps


def _train_folds(heads: _FoldHeads, xt, yt, folds: np.ndarray, nb_labels, schedule, config, rng, device,
                 advance=lambda n=1: None) -> list[float]:
    """Every fold's head in one pass: a batch of rows, each updating the heads of the other
    folds; per epoch, the mean loss. ``nb_labels`` (N, k) are the neighbours' labels
    (candidate softmax) or None (full softmax)."""
    import torch

    if config.epochs == 0:
        return []
    n, f = len(folds), config.folds
    others = torch.as_tensor([[h for h in range(f) if h != g] for g in range(f)], device=device)
    folds_t = torch.as_tensor(folds, device=device)
    labels_np = yt.cpu().numpy()
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    losses = []
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen).numpy()
        total, count = 0.0, 0
        for lo in range(0, n, config.batch_size):
            rows = perm[lo:lo + config.batch_size]
            hb = others[folds_t[rows]]  # (B, F - 1): the heads this row trains
            xb = xt[rows]
            adapter = None if heads.adapter is None else heads.adapter.detach().requires_grad_()
            if nb_labels is None:
                weight = heads.weight.detach().requires_grad_()
                cos, valid = heads.full_cosines(xb, hb, weight=weight, adapter=adapter)
                target = yt[rows][:, None].expand(-1, hb.shape[1])
                touched = None
            else:
                # sampled negatives are shared by the batch, so its class vocabulary stays small
                neg = np.broadcast_to(rng.integers(0, heads.n_classes, config.n_negatives),
                                      (len(rows), config.n_negatives))
                cand = torch.as_tensor(_dedupe_rows(np.concatenate([labels_np[rows][:, None], nb_labels[rows], neg],
                                                                   axis=1)), device=device)
                target = torch.zeros(hb.shape, dtype=torch.int64, device=device)
                if adapter is None:
                    # the loss's gradient by autograd on the (B, H, M) cosines only, then the
                    # chain rule into the touched class rows by one sparse product: autograd's
                    # backward of the (B, H, M, D) gather was three quarters of the stage's time
                    loss, grad, target_cos, touched = _candidate_step(heads, xb, hb, cand, schedule.c, config)
                    heads.adam(touched, grad, config.lr)
                    schedule.step(target_cos)
                    total += loss * len(rows)
                    count += len(rows)
                    advance(1)
                    continue
                flat = hb[:, :, None] * heads.n_classes + cand.clamp_min(0)[:, None, :]
                touched, inverse = torch.unique(flat, return_inverse=True)
                weight = heads.weight[touched].detach().requires_grad_()
                cos, valid = heads.cosines(xb, hb, cand, weight=(weight, inverse), adapter=adapter)
            m = cos.shape[-1]
            loss = cam_softmax_loss(cos.reshape(-1, m), target.reshape(-1), schedule.c, config.scale, valid.reshape(-1, m))
            loss.backward()
            with torch.no_grad():
                rows_w = torch.arange(heads.weight.shape[0], device=device) if touched is None else touched
                heads.adam(rows_w, weight.grad, config.lr, None if adapter is None else adapter.grad)
            schedule.step(cos.detach().gather(2, target[:, :, None]).reshape(-1).cpu().numpy())
            total += loss.item() * len(rows)
            count += len(rows)
            advance(1)
        losses.append(total / max(count, 1))
    return losses


def _candidate_step(heads: _FoldHeads, xb, hb, cand, c: float, config):
    """One candidate-softmax step without an adapter: (loss, gradient of the touched class
    rows, the target cosines for the schedule, the touched rows), with autograd only on the
    (B·H, M) cosines.

    Only the valid (row, head, candidate) entries are computed: padding left by repeated
    candidates and classes a head never saw (half the entries on real sets) cost nothing.
    cos_e = <w_u / |w_u|, z_e> for entry e of class row u, so the gradient of row u is
    (Σ_e g_e z_e − (Σ_e g_e cos_e) · w_u / |w_u|) / |w_u|: one sparse (rows × entries)
    product with the features and one scalar index_add, instead of a backward through a
    (B, H, M, D) gather (three quarters of the stage's time before).
    """
    import torch

    b, h = hb.shape
    m = cand.shape[1]
    with torch.no_grad():
        flat = (hb[:, :, None] * heads.n_classes + cand.clamp_min(0)[:, None, :]).reshape(b * h, m)
        valid = (cand >= 0).repeat_interleave(h, dim=0) & heads.present.view(-1)[flat]
        touched, inv = torch.unique(flat[valid], return_inverse=True)
        w_rows = heads.weight[touched]
        norms = w_rows.norm(dim=1, keepdim=True).clamp_min(_EPS)
        wn_rows = w_rows / norms
        z = heads.features(xb, hb).reshape(b * h, -1)  # (B·H, D)
        # only the sampled (entry, class-row) dot products: no (B·H, M, D) gather
        cos, cos_valid = _sampled_dots(valid, inv, z, wn_rows)
    leaf = cos.requires_grad_()
    target = torch.zeros(b * h, dtype=torch.int64, device=z.device)  # column 0: the given label
    loss = cam_softmax_loss(leaf, target, c, config.scale, valid)
    loss.backward()
    with torch.no_grad():
        g = leaf.grad[valid]
        grad = _valid_csr(valid, inv, g, len(touched)).t() @ z
        along = torch.zeros(len(touched), device=z.device).index_add_(0, inv, g * cos_valid)
        grad = (grad - along[:, None] * wn_rows) / norms
        target_cos = cos.detach()[:, 0].cpu().numpy()
    return float(loss.item()), grad, target_cos, touched


def _fit_temperature(logits: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                     max_rows: int = 50_000, rows: np.ndarray | None = None) -> float:
    """The T minimising the held-out negative log-likelihood of the given labels (mostly right),
    on at most ``max_rows`` rows (a sample of that size pins one scalar to well under 1%) of
    ``rows`` (default: all; only the sampled rows are copied)."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(logits)) if rows is None else rows
    if not len(rows):
        return 1.0
    if len(rows) > max_rows:
        rows = rows[rng.choice(len(rows), max_rows, replace=False)]
    z = logits[rows].astype(np.float64)
    target = target[rows]
    top = z.max(axis=1, keepdims=True)
    shifted = z - top  # <= 0, -inf where invalid: exp gives 0
    own = shifted[np.arange(len(z)), target]

    def nll(log_t):  # mean of logsumexp(z / t) - z_own / t, with the max shifted out
        t = math.exp(log_t)
        return float(np.mean(np.log(np.exp(shifted / t).sum(axis=1)) - own / t))

    res = minimize_scalar(nll, bounds=(math.log(0.02), math.log(50.0)), method="bounded")
    return float(math.exp(res.x))
