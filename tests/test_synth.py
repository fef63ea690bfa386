"""The noisy-set generator: shapes, geometry, and ground truth that matches what was injected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facecluster.synth import identity_sizes, inject_noise, make_faces


def test_make_faces_is_seeded_unit_norm_and_long_tailed():
    x, y = make_faces(5000, 400, 64, seed=1)
    x2, y2 = make_faces(5000, 400, 64, seed=1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert x.shape == (5000, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    sizes = np.bincount(y)
    assert len(sizes) == 400 and sizes.min() >= 1
    assert (sizes <= 5).mean() > 0.2 and sizes.max() > 5 * np.median(sizes)


@pytest.mark.parametrize("offset,same_range,diff_range", [
    (0.0, (0.45, 0.75), (-0.05, 0.05)),   # ArcFace-like: different people near 0
    (2.2, (0.88, 0.97), (0.78, 0.88)),    # dlib-like: all cosines compressed near 1
])
def test_cosine_geometry_matches_the_targeted_face_model(offset, same_range, diff_range):
    x, y = make_faces(4000, 200, 128, offset=offset, seed=2)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(y), (2, 200_000))
    cos = np.einsum("ij,ij->i", x[a], x[b])
    same, diff = cos[(y[a] == y[b]) & (a != b)], cos[y[a] != y[b]]
    assert same_range[0] < np.median(same) < same_range[1]
    assert diff_range[0] < np.median(diff) < diff_range[1]


def test_effective_dim_widens_the_different_identity_spread_like_real_dlib():
    iso, y = make_faces(4000, 300, 128, offset=2.2, seed=2)
    low, _ = make_faces(4000, 300, 128, offset=2.2, effective_dim=12, seed=2)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(y), (2, 100_000))
    diff = y[a] != y[b]
    spread = [np.std(np.einsum("ij,ij->i", x[a], x[b])[diff]) for x in (iso, low)]
    # real dlib CelebA: sd of different-identity cosines 0.039 (SOURCE.md); isotropic gives 0.017
    assert spread[0] < 0.02 and 0.025 < spread[1] < 0.05


def test_injected_counts_and_truth_are_consistent():
    x, y = make_faces(6000, 400, 64, seed=3)
    noisy = inject_noise(x, y, flip=0.05, open_set=0.02, split=0.02, duplicates=0.03, seed=3)
    t = noisy.truth
    n = len(y)
    assert len(noisy.labels) == len(t) == len(noisy.embeddings) == n + round(0.03 * n)
    counts = t.issue.value_counts()
    assert counts["flip"] == round(0.05 * n)
    assert counts["near_duplicate"] == round(0.03 * n)
    assert round(0.02 * n) <= counts["open_set"] <= round(0.02 * n) + 5  # whole identities, each <= 5 images
    assert len(noisy.merge_pairs) == round(0.02 * 400)
    orig = t.source_row.to_numpy() >= 0
    # true labels recoverable: clean rows keep theirs, flips lost it, open-set people have none
    clean = (t.issue == "").to_numpy()
    np.testing.assert_array_equal(noisy.labels[clean], y[t.source_row[clean]])
    flips = (t.issue == "flip").to_numpy()
    assert (noisy.labels[flips] != t.true_label[flips]).all()
    np.testing.assert_array_equal(t.true_label[flips], y[t.source_row[flips]])
    open_set = (t.issue == "open_set").to_numpy()
    assert (t.true_label[open_set] == -1).all()
    assert not np.isin(t.true_person[open_set], noisy.labels[~open_set & orig]).any(), "held-out people have no label"
    # splits: the new label's split rows are all one original identity, and the pair is recorded
    # (open-set images and flips may also be filed under the new name, like under any label)
    for new, old in noisy.merge_pairs:
        rows = (noisy.labels[:n] == new) & (t.issue[:n] == "split").to_numpy()
        assert rows.sum() >= 4
        assert (t.true_label[:n][rows] == old).all() and (t.split_of[:n][rows] == old).all()
    # near-duplicates: very close to their source, same label
    dup = np.flatnonzero(t.issue == "near_duplicate")
    src = t.duplicate_of.to_numpy()[dup]
    cos = np.einsum("ij,ij->i", noisy.embeddings[dup], noisy.embeddings[src])
    assert (cos > 0.99).all() and (noisy.labels[dup] == noisy.labels[src]).all()
    np.testing.assert_array_equal(t.true_person.to_numpy()[dup], t.true_person.to_numpy()[src])


def test_noise_lands_in_proportion_to_class_size():
    x, y = make_faces(20000, 1000, 32, seed=4)
    noisy = inject_noise(x, y, flip=0.1, open_set=0.0, split=0.0, duplicates=0.0, seed=4)
    flips = (noisy.truth.issue == "flip").to_numpy()
    sizes = np.bincount(y)
    big = sizes[noisy.labels[flips]]
    # the label a flipped row receives is drawn from rows, so it favours big classes
    assert np.median(big) > np.median(sizes)


def test_identity_sizes_sum_and_floor():
    sizes = identity_sizes(1000, 300, rng=np.random.default_rng(0))
    assert sizes.sum() == 1000 and sizes.min() == 1
    with pytest.raises(ValueError):
        identity_sizes(10, 20, rng=np.random.default_rng(0))


def test_web_mix_injects_the_real_set_protocol():
    from facecluster.synth import WEB_MIX

    x, y = make_faces(3000, 200, 32, seed=2)
    noisy = inject_noise(x, y, seed=2, **WEB_MIX)
    truth = noisy.truth
    n_ids = len(np.unique(y))
    # 8% of identities leave the label set whole; 8% of rows get another row's label
    held = np.unique(truth.true_person[truth.issue == "open_set"])
    assert len(held) == round(0.08 * n_ids)
    assert (truth.issue == "flip").sum() == pytest.approx(0.08 * 3000, abs=3)
    # splits of any size, including one-image parts
    part_sizes = np.bincount(noisy.labels)[noisy.merge_pairs[:, 0]]
    assert len(part_sizes) == round(0.03 * n_ids) and part_sizes.min() >= 1
    # copies sit well inside the genuine nearest-neighbour distance; a fifth carry another label
    copies = np.flatnonzero(truth.issue == "near_duplicate")
    src = truth.duplicate_of.to_numpy()[copies]
    d = np.linalg.norm(noisy.embeddings[copies] - noisy.embeddings[src], axis=1)
    from facecluster.synth import _median_nn_distance

    assert (d <= 0.26 * _median_nn_distance(x)).all()
    relabelled = (noisy.labels[copies] != noisy.labels[src]).mean()
    assert 0.05 < relabelled < 0.4


def test_long_tail_keeps_most_identities_small_and_a_few_whole():
    from facecluster.synth import long_tail

    x, y = make_faces(6000, 300, 16, seed=4)
    xl, yl, kept = long_tail(x, y, seed=4)
    sizes = np.bincount(yl)[np.unique(yl)]
    assert len(np.unique(yl)) == 300 and (sizes <= 3).mean() > 0.7
    assert sizes.max() == np.bincount(y).max(), "the largest identity is kept whole"
    np.testing.assert_array_equal(xl, x[kept])


@pytest.mark.slow
def test_fit_generator_recovers_the_geometry_of_a_set_it_made():
    from facecluster.synth import fit_generator, similarity_profile

    # a set with a heavy low tail (hard photos at five times the noise) and a narrow space
    x, y = make_faces(3000, 150, 64, spread=0.7, hard_fraction=0.2, hard_scale=5.0, effective_dim=15, seed=8)
    fit = fit_generator(x, y, seed=1)
    target, fitted = fit["target"], fit["fitted"]
    assert target == similarity_profile(x, y, seed=1)
    assert target["same_q05"] < 0.3, "the low tail is heavy"
    for key in ("same_q05", "same_q25", "same_median"):
        assert abs(fitted[key] - target[key]) < 0.06, key
    assert abs(fitted["different_sd"] - target["different_sd"]) < 0.03
    assert fit["settings"]["effective_dim"] is not None


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), flip=st.floats(0.05, 0.6))
def test_every_recorded_split_holds_its_person_under_both_names(seed, flip):
    """Flips may take every photo of a split's person out of one of its two names; that is
    then no longer one person under two names but a person under one (the name left is their
    true label), and it is not recorded as a merge to find."""
    x, y = make_faces(300, 60, 16, seed=seed % 7)
    noisy = inject_noise(x, y, flip=flip, open_set=0.0, split=0.3, min_split_size=2, split_any_size=True,
                         duplicates=0.05, seed=seed)
    t = noisy.truth
    person, true = t.true_person.to_numpy(), t.true_label.to_numpy()
    for new, old in noisy.merge_pairs:
        who = person[t.split_of.to_numpy() == old][0]
        for name in (new, old):
            assert ((noisy.labels == name) & (person == who)).any()
    # a split row is one filed under the new name while its person still has the old one
    split = (t.issue == "split").to_numpy()
    assert np.isin(true[split], noisy.merge_pairs[:, 1]).all()
    # a split row sits under another name than its true label, and so does a flip
    assert (noisy.labels[split] != true[split]).all()
    flips = (t.issue == "flip").to_numpy()
    assert (noisy.labels[flips] != true[flips]).all()
