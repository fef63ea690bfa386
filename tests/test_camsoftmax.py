"""The cam-softmax loss exactly as specified, its schedules, and the cross-fitted confidence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from facecluster import build_knn_graph
from facecluster.camsoftmax import (
    HALF_PI,
    CamSchedule,
    CamSoftmaxConfig,
    cam_exponent,
    cam_softmax_loss,
    cam_transform,
    camsoftmax_confidence,
    candidate_classes,
    stratified_folds,
)
from facecluster.faceset import prepare_embeddings
from facecluster.synth import inject_noise, make_faces


def test_exponent_values_from_the_reference():
    assert cam_exponent(HALF_PI) == pytest.approx(1.0)
    assert cam_exponent(math.pi / 4) == pytest.approx(4.38, abs=0.01)
    assert cam_exponent(math.radians(68.8)) == pytest.approx(1.8, abs=0.01)


def test_f_is_the_identity_at_half_pi():
    x = torch.linspace(-1, 1, 201, dtype=torch.float64)
    assert torch.allclose(cam_transform(x, HALF_PI)[1:], x[1:], atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(c=st.floats(math.pi / 8, HALF_PI))
def test_f_maps_minus_one_one_onto_itself_monotonically_and_zero_at_cos_c(c):
    x = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    y = cam_transform(x, c)
    assert (torch.diff(y) >= 0).all()
    assert y[0].item() == pytest.approx(-1.0, abs=1e-5) and y[-1].item() == pytest.approx(1.0)
    assert ((y >= -1) & (y <= 1)).all()
    assert cam_transform(torch.tensor([math.cos(c)], dtype=torch.float64), c).item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("c", [HALF_PI, 1.2, math.pi / 4])
def test_loss_is_cross_entropy_on_the_transformed_scaled_logits(c):
    gen = torch.Generator().manual_seed(0)
    cos = torch.rand(8, 6, generator=gen, dtype=torch.float64) * 2 - 1
    target = torch.randint(0, 6, (8,), generator=gen)
    p = cam_exponent(c)
    manual = cos.clone()
    for i, t in enumerate(target.tolist()):
        manual[i, t] = 2 * ((cos[i, t] + 1) / 2) ** p - 1
    expected = F.cross_entropy(20.0 * manual, target)
    assert cam_softmax_loss(cos, target, c, 20.0).item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("c", [HALF_PI, math.pi / 4])
def test_gradients_are_finite_at_plus_and_minus_one(c):
    cos = torch.tensor([[1.0, -1.0, 0.3], [-1.0, 1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 0])  # targets sit at cos = -1
    cam_softmax_loss(cos, target, c).backward()
    assert torch.isfinite(cos.grad).all()
    cos2 = torch.tensor([[1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    cam_softmax_loss(cos2, torch.tensor([0]), c).backward()
    assert torch.isfinite(cos2.grad).all()


def test_candidate_softmax_equals_full_softmax_when_candidates_are_all_classes():
    gen = torch.Generator().manual_seed(1)
    n_classes = 7
    cos = torch.rand(5, n_classes, generator=gen, dtype=torch.float64) * 2 - 1
    target = torch.tensor([3, 0, 6, 2, 2])
    full = cam_softmax_loss(cos, target, 1.0)
    # candidates: the target first, then every other class, in a per-row shuffled order
    cand = []
    for t in target.tolist():
        rest = [j for j in torch.randperm(n_classes, generator=gen).tolist() if j != t]
        cand.append([t] + rest)
    cand = torch.tensor(cand)
    cand_loss = cam_softmax_loss(cos.gather(1, cand), torch.zeros(5, dtype=torch.int64), 1.0)
    assert cand_loss.item() == pytest.approx(full.item(), rel=1e-12)
    # padding columns (repeats) carry no mass
    padded = torch.cat([cos.gather(1, cand), torch.full((5, 3), 0.9, dtype=torch.float64)], dim=1)
    valid = torch.cat([torch.ones(5, n_classes, dtype=torch.bool), torch.zeros(5, 3, dtype=torch.bool)], dim=1)
    assert cam_softmax_loss(padded, torch.zeros(5, dtype=torch.int64), 1.0, valid=valid).item() == \
        pytest.approx(full.item(), rel=1e-12)


def _small_heads(seed=0, n=60, d=8, n_classes=6, folds=3):
    from facecluster.camsoftmax import _FoldHeads, closed_form_heads, stratified_folds

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.arange(n) % n_classes
    labels[-1] = n_classes - 1
    fold = stratified_folds(labels, folds, 0)
    heads = _FoldHeads(*closed_form_heads(x, labels, fold, folds, n_classes), False, "cpu")
    return heads, torch.as_tensor(x), labels, fold


def test_candidate_step_gradient_is_autograds_through_the_gathered_weights():
    """The hand-made chain rule of the candidate step (valid entries only, one sparse product)
    equals autograd through the plain formulation: gather each candidate's class weight,
    normalise, cosine, cam-softmax loss; padding (-1) and repeated candidates carry nothing."""
    from facecluster.camsoftmax import CamSoftmaxConfig, _candidate_step

    heads, x, labels, fold = _small_heads()
    config = CamSoftmaxConfig()
    rows = np.arange(0, 60, 3)
    others = torch.as_tensor([[h for h in range(3) if h != f] for f in range(3)])
    hb = others[torch.as_tensor(fold[rows])]
    cand = torch.as_tensor(np.c_[labels[rows], (labels[rows] + 1) % 6, np.full(len(rows), -1), (labels[rows] + 3) % 6])
    loss, grad, target_cos, touched = _candidate_step(heads, x[rows], hb, cand, 1.1, config)

    leaf = heads.weight.clone().requires_grad_()
    flat = hb[:, :, None] * heads.n_classes + cand.clamp_min(0)[:, None, :]
    w = torch.nn.functional.normalize(leaf[flat], dim=3, eps=1e-6)
    cos = torch.einsum("bhmd,bd->bhm", w, x[rows])
    valid = (cand >= 0)[:, None, :] & heads.present.view(-1)[flat]
    ref = cam_softmax_loss(cos.reshape(-1, 4), torch.zeros(cos.shape[0] * 2, dtype=torch.int64), 1.1, config.scale,
                           valid.reshape(-1, 4))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(grad, leaf.grad[touched], atol=1e-5)
    assert (leaf.grad.abs().sum(dim=1) > 0).sum() == len(touched), "only rows with a valid entry are touched"
    assert np.allclose(target_cos, cos[:, :, 0].reshape(-1).detach().numpy(), atol=1e-6)


def test_sampled_scoring_cosines_are_the_gathered_ones():
    heads, x, labels, fold = _small_heads(seed=2)
    cand = torch.as_tensor(np.c_[labels, (labels + 2) % 6, np.full(len(labels), -1), labels])
    head = torch.as_tensor(fold)
    unit = torch.nn.functional.normalize(heads.weight, dim=1, eps=1e-6)
    cos, valid = heads.sampled_cosines(x, head, cand, unit)
    ref, ref_valid = heads.cosines(x, head[:, None], cand)
    assert torch.equal(valid, ref_valid[:, 0])
    assert torch.allclose(cos[valid], ref[:, 0][valid], atol=1e-6) and (cos[~valid] == 0).all()


def test_fused_adam_is_the_same_update_as_the_plain_one(monkeypatch):
    if not hasattr(torch, "_fused_adam_"):
        pytest.skip(f"torch {torch.__version__} has no fused Adam kernel: the plain update is the only one")
    heads, *_ = _small_heads(seed=1)
    other, *_ = _small_heads(seed=1)
    rows = torch.arange(len(heads.weight))  # every row: the dense path
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(heads.weight.shape, generator=gen) for _ in range(3)]
    for g in grads:
        heads.adam(rows, g, 0.01)
    monkeypatch.delattr(torch, "_fused_adam_", raising=False)
    for g in grads:
        other.adam(rows, g, 0.01)
    assert torch.allclose(heads.weight, other.weight, atol=1e-6)
    assert torch.allclose(heads.m, other.m) and torch.allclose(heads.v, other.v)


def test_schedules():
    ref = CamSchedule("reference")
    for _ in range(100):
        ref.step()
    assert ref.c == pytest.approx(HALF_PI - 100 * 1e-4)
    lin = CamSchedule("linear", total_steps=1000, ramp=0.2)
    for _ in range(200):
        lin.step()
    assert lin.c == pytest.approx(math.pi / 4)
    lin.step()
    assert lin.c == pytest.approx(math.pi / 4), "clamped at c_min"
    ada = CamSchedule("adaptive", momentum=0.0)
    ada.step(np.cos(np.linspace(0.2, 1.0, 101)))  # angles 0.2 .. 1.0 rad; the 0.9 quantile is 0.92
    assert ada.c == pytest.approx(0.92, abs=1e-6)
    ada.step(np.full(10, -1.0))  # every target at 180 degrees: clamped to pi/2
    assert ada.c == pytest.approx(HALF_PI)
    ada.step(np.ones(10))  # every target on its weight: clamped to c_min
    assert ada.c == pytest.approx(math.pi / 4)
    fixed = CamSchedule("fixed")
    fixed.step(np.ones(10))
    assert fixed.c == HALF_PI
    with pytest.raises(ValueError):
        CamSchedule("cosine")


def test_folds_are_stratified_and_candidates_start_with_the_label():
    labels = np.repeat(np.arange(40), np.arange(1, 41))
    folds = stratified_folds(labels, 5, seed=0)
    for lab in range(40):
        counts = np.bincount(folds[labels == lab], minlength=5)
        assert counts.max() - counts.min() <= 1
    nb = np.random.default_rng(0).integers(-1, len(labels), (len(labels), 6))
    cand = candidate_classes(labels, nb, 40, 8, np.random.default_rng(0))
    assert (cand[:, 0] == labels).all()
    for row in cand:
        kept = row[row >= 0]
        assert len(kept) == len(set(kept.tolist()))


@pytest.fixture(scope="module")
def noisy_small():
    x, y = make_faces(1500, 100, 64, seed=5)
    noisy = inject_noise(x, y, seed=5)
    unit, _, _ = prepare_embeddings(noisy.embeddings)
    graph = build_knn_graph(unit, k=15, device="cpu")
    return noisy, unit, graph


@pytest.mark.parametrize("epochs", [0, 3])
@pytest.mark.parametrize("full_max", [0, 10_000])
def test_confidence_finds_injected_noise_out_of_sample(noisy_small, full_max, epochs):
    from sklearn.metrics import roc_auc_score

    noisy, unit, graph = noisy_small
    config = CamSoftmaxConfig(epochs=epochs, full_max_classes=full_max)
    conf = camsoftmax_confidence(unit, noisy.labels, None, graph.indices, config, seed=0)
    assert ("candidate" in conf.stats["mode"]) == (full_max == 0)
    issue = noisy.truth["issue"].to_numpy()
    judged = np.isin(issue, ["", "flip", "open_set"]) & np.isfinite(conf.p_given)
    auroc = roc_auc_score(np.isin(issue, ["flip", "open_set"])[judged], 1 - conf.p_given[judged])
    assert auroc > 0.95
    ok = np.isfinite(conf.p_given)
    assert ((conf.p_given[ok] >= 0) & (conf.p_given[ok] <= 1)).all() and (conf.p_top[ok] >= conf.p_given[ok] - 1e-6).all()
    assert ((conf.margin[ok] >= -1) & (conf.margin[ok] <= 1)).all()
    flips = (issue == "flip") & ok
    assert np.mean(conf.top[flips] == noisy.truth["true_label"].to_numpy()[flips]) > 0.9
    # a label's only image cannot be scored by a head that never saw the label; folds are
    # stratified, so every other label has an image in each training split
    sizes = np.bincount(noisy.labels)
    assert (sizes == 1).any() and ((~ok) == (sizes[noisy.labels] == 1)).all()
    assert conf.stats["unscorable"] == int((~ok).sum())


def test_confidence_is_deterministic_on_cpu(noisy_small):
    noisy, unit, graph = noisy_small
    config = CamSoftmaxConfig(epochs=1, folds=2)
    a = camsoftmax_confidence(unit, noisy.labels, None, graph.indices, config, device="cpu", seed=3)
    b = camsoftmax_confidence(unit, noisy.labels, None, graph.indices, config, device="cpu", seed=3)
    np.testing.assert_array_equal(a.p_given, b.p_given)
    np.testing.assert_array_equal(a.top, b.top)


def test_config_is_validated():
    with pytest.raises(ValueError):
        CamSoftmaxConfig(schedule="step")
    with pytest.raises(ValueError):
        CamSoftmaxConfig(folds=1)


def test_adapter_option_trains_and_scores(noisy_small):
    from sklearn.metrics import roc_auc_score

    noisy, unit, graph = noisy_small
    conf = camsoftmax_confidence(unit, noisy.labels, None, graph.indices,
                                 CamSoftmaxConfig(epochs=2, folds=3, adapter=True), seed=1)
    issue = noisy.truth["issue"].to_numpy()
    judged = np.isin(issue, ["", "flip", "open_set"]) & np.isfinite(conf.p_given)
    assert roc_auc_score(np.isin(issue, ["flip", "open_set"])[judged], 1 - conf.p_given[judged]) > 0.95
    assert conf.stats["config"]["adapter"] is True


@given(st.integers(0, 10_000), st.integers(2, 5))
@settings(max_examples=25, deadline=None)
def test_closed_form_heads_are_each_folds_held_out_class_centroids(seed, folds):
    from facecluster.camsoftmax import closed_form_heads, fold_heads

    rng = np.random.default_rng(seed)
    n, d, n_classes = 40, 5, 7
    x = rng.standard_normal((n, d)).astype(np.float32)
    labels = rng.integers(0, n_classes, n)
    fold = stratified_folds(labels, folds, seed)
    weight, present = closed_form_heads(x, labels, fold, folds, n_classes)
    for f in range(folds):
        for c in range(n_classes):
            seen = (labels == c) & (fold != f)
            assert present[f, c] == seen.any()
            if seen.any():
                centroid = x[seen].sum(axis=0)
                np.testing.assert_allclose(weight[f * n_classes + c], centroid / np.linalg.norm(centroid), atol=1e-5)
    # one fold at a time (the default scoring's memory): the same heads, bit for bit
    for f, head, seen_f in fold_heads(x, labels, fold, folds, n_classes):
        np.testing.assert_array_equal(head, weight[f * n_classes:(f + 1) * n_classes])
        np.testing.assert_array_equal(seen_f, present[f])


@pytest.mark.parametrize("full_max", [0, 10_000])
def test_closed_form_scoring_equals_the_torch_heads_untrained(noisy_small, full_max):
    """The default (epochs = 0) scores with numpy and a compiled kernel; the same heads scored
    by the torch path (no training step taken) give the same held-out logits."""
    from facecluster.camsoftmax import (
        _closed_form_logits,
        _score_rows,
        _trained_logits,
        closed_form_heads,
    )
    from facecluster.progress import NullProgress

    noisy, unit, graph = noisy_small
    labels = noisy.labels
    n_classes = int(labels.max()) + 1
    config = CamSoftmaxConfig(epochs=0, full_max_classes=full_max)
    rng = np.random.default_rng(0)
    fold = stratified_folds(labels, config.folds, rng)
    full = full_max > 0
    cand = None if full else candidate_classes(labels, graph.indices, n_classes, config.n_negatives, rng)
    weight, present = closed_form_heads(unit, labels, fold, config.folds, n_classes)
    ours, ok = _closed_form_logits(unit, labels, fold, config.folds, n_classes, cand, config.scale, lambda n=1: None)
    # scored fold by fold here; all heads at once and every row in one call, as on a cluster
    at_once = _score_rows(unit, labels, fold, cand, weight, present, config.scale)
    np.testing.assert_array_equal(ours, at_once[0])
    np.testing.assert_array_equal(ok, at_once[1])
    theirs, ok_t, *_ = _trained_logits(unit, labels, fold, weight.copy(), present, graph.indices, cand, full, config,
                                       rng, "cpu", NullProgress())
    np.testing.assert_array_equal(ok, ok_t)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    finite = np.isfinite(ours)
    np.testing.assert_allclose(ours[finite], theirs[finite], atol=1e-4)


def test_the_default_closed_form_never_loads_torch(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from facecluster.camsoftmax import camsoftmax_confidence\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((300, 16)).astype(np.float32)\n"
        "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
        "conf = camsoftmax_confidence(x, np.arange(300) % 20, seed=0)\n"
        "assert np.isfinite(conf.p_given).all()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_closed_form_logits_fold_by_fold_equal_the_blockwise_scoring_bit_for_bit():
    # the local path scores fold by fold; a cluster (and the code before it) scores blocks of
    # rows with every head at hand. A matrix product's last bits depend on how many rows it
    # is given, so both must hand it the same rows: here a fold whose second block holds one row
    from facecluster.camsoftmax import (
        _SCORE_CHUNK,
        _closed_form_logits,
        _score_rows,
        closed_form_heads,
    )

    rng = np.random.default_rng(0)
    n, n_classes, d = _SCORE_CHUNK + 2, 3, 64
    x = rng.standard_normal((n, d)).astype(np.float32)
    labels = np.arange(n) % n_classes
    folds = rng.integers(0, 2, n)
    folds[-2:] = [1, 0]
    weight, present = closed_form_heads(x, labels, folds, 2, n_classes)
    calls = []
    ours, ok = _closed_form_logits(x, labels, folds, 2, n_classes, None, 20.0, calls.append)
    blocks = [_score_rows(x[lo:lo + _SCORE_CHUNK], labels[lo:lo + _SCORE_CHUNK], folds[lo:lo + _SCORE_CHUNK], None,
                          weight, present, 20.0) for lo in range(0, n, _SCORE_CHUNK)]
    np.testing.assert_array_equal(ours, np.concatenate([b[0] for b in blocks]))
    np.testing.assert_array_equal(ok, np.concatenate([b[1] for b in blocks]))
    assert len(calls) == 4  # two folds in each of two blocks
