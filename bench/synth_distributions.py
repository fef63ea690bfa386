"""Same-identity and different-identity cosine quantiles: the generator against real faces.

    python bench/synth_distributions.py [--real ../shared/data/celeba_wild_dlib]

Prints a markdown table of cosine quantiles (5/25/50/75/95%) for same-identity and
different-identity pairs of: make_faces at its defaults (512-d, centred: the ArcFace-like
target), make_faces with offset=2.2 at 128-d (the dlib-like target), the same with
effective_dim=12 (dlib's wider different-identity spread), and, when the research
data is present, the real dlib embeddings raw-normalised and centred, all in one run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facecluster.faceset import load_faceset
from facecluster.synth import make_faces

QS = (0.05, 0.25, 0.5, 0.75, 0.95)


def quantiles(x: np.ndarray, y: np.ndarray, n_pairs: int = 400_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(y), (2, n_pairs))
    # same-identity pairs are rare among random pairs: draw them within identities too
    order = np.argsort(y, kind="stable")
    sizes = np.bincount(y)
    starts = np.r_[0, np.cumsum(sizes)]
    pick = rng.choice(len(y), size=n_pairs)
    lab = y[pick]
    partner = order[starts[lab] + rng.integers(0, 1 << 30, size=n_pairs) % sizes[lab]]
    same_ok = (partner != pick) & (sizes[lab] > 1)
    same = np.einsum("ij,ij->i", x[pick[same_ok]], x[partner[same_ok]])
    diff_ok = y[a] != y[b]
    diff = np.einsum("ij,ij->i", x[a[diff_ok]], x[b[diff_ok]])
    return np.quantile(same, QS), np.quantile(diff, QS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/celeba_wild_dlib")
    args = parser.parse_args()
    sets = {
        "synth, 512-d, centred (defaults)": make_faces(20000, 1300, 512, seed=0),
        "synth, 128-d, offset=2.2": make_faces(20000, 1300, 128, offset=2.2, seed=0),
        "synth, 128-d, offset=2.2, effective_dim=12": make_faces(20000, 1300, 128, offset=2.2, effective_dim=12,
                                                                 seed=0),
    }
    if (args.real / "manifest.csv").is_file():
        raw = load_faceset(args.real / "manifest.csv", args.real / "embeddings.npy", centre=False)
        cen = load_faceset(args.real / "manifest.csv", args.real / "embeddings.npy", centre=True)
        sets["real dlib CelebA, normalised"] = (raw.embeddings, raw.labels)
        sets["real dlib CelebA, centred"] = (cen.embeddings, cen.labels)
    head = " | ".join(f"q{int(q * 100)}" for q in QS)
    print(f"| set | pairs | {head} |")
    print("| --- | --- | " + " | ".join("---" for _ in QS) + " |")
    for name, (x, y) in sets.items():
        same, diff = quantiles(x, y)
        print(f"| {name} | same | " + " | ".join(f"{v:.3f}" for v in same) + " |")
        print(f"| {name} | different | " + " | ".join(f"{v:.3f}" for v in diff) + " |")


if __name__ == "__main__":
    main()
