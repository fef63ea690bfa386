"""The real-set protocol (bench/real_protocol.py, issue 13) pinned: figures that must not slip."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import pytest

from facecluster.bench import bench_set, run_bench

from .conftest import REAL

PROTOCOL = Path(__file__).resolve().parents[1] / "bench" / "real_protocol.py"


def _protocol():
    spec = importlib.util.spec_from_file_location("real_protocol", PROTOCOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scores(folder: Path, long_tail: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        manifest, embeddings, left_out = _protocol().base_set(folder, Path(tmp))
        noisy = bench_set(manifest=manifest, embeddings=embeddings, long_tail=long_tail, seed=0)
    assert left_out["failed_detections"] == 165 and left_out["natural_split_merged"] == 24
    assert left_out["rejected_by_every_face_model"] == 71
    return run_bench(noisy, peers=[], seed=0)[0].scores


# measured 2026-12-05 (sixteenth session, seed 0; five seeds in docs/real-protocol.json), on the base
# set less the documented mixed identities, several-face photos, rows every face model rejects and
# the photos every face model puts within half the median neighbour distance: floors a little under.
# *_reviewed: once a person who knows the truth has decided the review list (bench.clean_scores)
FLOORS = {
    ("celeba_wild_dlib", False): dict(noise_found_f1=0.975, near_duplicate_f1=0.99, kept_label_precision=0.998,
                                      clean_rows_lost_share=0.007, merge_p=0.9, merge_r=0.8,
                                      kept_label_precision_reviewed=0.998),
    # seventeenth session (nearest-photos test): 0.942, merge P 1.0, 0.2% lost, 0.996 reviewed
    ("celeba_wild_dlib", True): dict(noise_found_f1=0.935, near_duplicate_f1=0.98, kept_label_precision=0.97,
                                     clean_rows_lost_share=0.006, merge_p=0.9, kept_label_precision_reviewed=0.993),
    ("celeba_wild_omz_facereid0095", True): dict(noise_found_f1=0.94, near_duplicate_f1=0.98,
                                                 kept_label_precision=0.975, clean_rows_lost_share=0.009,
                                                 merge_p=0.9, kept_label_precision_reviewed=0.99),
    ("celeba_wild_omz_facereid0095", False): dict(noise_found_f1=0.99, near_duplicate_f1=0.98,
                                                  kept_label_precision=0.998, clean_rows_lost_share=0.002,
                                                  merge_p=0.9, merge_r=0.9, kept_label_precision_reviewed=0.998),
}


@pytest.mark.slow
@pytest.mark.parametrize("name, long_tail", list(FLOORS), ids=[f"{n[12:]}-{'lt' if lt else 'plain'}" for n, lt in FLOORS])
def test_real_protocol_figures_hold(name, long_tail):
    folder = REAL.parent / name
    if not (folder / "manifest.csv").is_file():
        pytest.skip(f"real face embeddings ({folder}) are not in this checkout: research-only data, in CI only")
    scores = _scores(folder, long_tail)
    floor = FLOORS[(name, long_tail)]
    for key, bound in floor.items():
        if key == "clean_rows_lost_share":
            assert scores[key] <= bound, (key, scores[key])
        else:
            assert scores[key] >= bound, (key, scores[key])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["celeba_wild_dlib", "celeba_wild_omz_facereid0095"])
def test_copies_are_found_in_long_tailed_real_sets_over_five_noise_draws(name):
    """In a long-tailed set most rows' 10th neighbour is a stranger; the relative law fitted
    over every row was wide enough to miss 9 and 15 of 90 copies (dlib, OMZ, seeds 0-4).
    Fitted where the reference is the row's own person, it finds them all, and the groups
    hold (almost) no row outside an injected pair."""
    from facecluster.faceset import prepare_embeddings
    from facecluster.knn import build_knn_graph
    from facecluster.votes import near_duplicate_groups

    folder = REAL.parent / name
    if not (folder / "manifest.csv").is_file():
        pytest.skip(f"real face embeddings ({folder}) are not in this checkout: research-only data, in CI only")
    found = injected = stray = 0
    with tempfile.TemporaryDirectory() as tmp:
        manifest, embeddings, _ = _protocol().base_set(folder, Path(tmp))
        for seed in range(5):
            noisy = bench_set(manifest=manifest, embeddings=embeddings, long_tail=True, seed=seed)
            unit, _, _ = prepare_embeddings(noisy.embeddings)
            group = near_duplicate_groups(build_knn_graph(unit, k=30, device="cpu")).group
            copies = (noisy.truth["issue"] == "near_duplicate").to_numpy().nonzero()[0]
            sources = noisy.truth["duplicate_of"].to_numpy().astype(int)[copies]
            found += int(((group[copies] >= 0) & (group[copies] == group[sources])).sum())
            injected += len(copies)
            in_pair = np.zeros(len(group), dtype=bool)
            in_pair[copies] = in_pair[sources] = True
            stray += int(((group >= 0) & ~in_pair).sum())
    assert found >= injected - 2, (found, injected)
    assert stray <= 4, stray


def test_the_faces_ceiling_splits_off_exactly_the_rows_no_clustering_can_place():
    import sys

    sys.path.insert(0, str(PROTOCOL.parent))
    try:
        spec = importlib.util.spec_from_file_location("cluster_real", PROTOCOL.parent / "cluster_real.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(PROTOCOL.parent))
    truth = np.array([0, 0, 0, 0, 1, 1, 1])
    row = module.ceiling_row("toy", truth, np.array([False, False, False, True, False, False, False]))
    # 9 true pairs, the split-off row loses 3 of them, no false pair: P 1, R 6/9
    assert row["pairwise_f"] == pytest.approx(2 * (6 / 9) / (1 + 6 / 9), abs=1e-4)
    assert row["setting"] == "1 rows split off" and row["oracle"]


def test_the_rows_no_clustering_of_the_faces_can_place_on_the_real_sets():
    import pandas as pd

    folder = REAL
    if not (folder / "manifest.csv").is_file():
        pytest.skip(f"real face embeddings ({folder}) are not in this checkout: research-only data, in CI only")
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    unseen = _protocol().unseen_by_the_faces(folder, manifest)
    # the 165 failed detections and the rows both face models place with another identity
    assert unseen.sum() == 331
