"""Build the bundled example: face-like embeddings with known, injected label noise.

    python examples/make_example.py            # rewrites examples/faces.{csv,npy} + faces_truth.csv

3,000 clean samples of 200 identities (long-tailed sizes, 128-d, zero-centred like an
ArcFace-style model; see facecluster.synth for the geometry), then 5% label flips, 2% open-set
images, 1% of identities split under a second name and 2% near-duplicates appended. Seeded:
two runs write identical files. The truth file lists each row's injected issue, its true label
("" for open-set people, who have none) and, for near-duplicates, the row they copy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from facecluster.synth import inject_noise, label_names, make_faces

HERE = Path(__file__).resolve().parent


def build(n_samples: int = 3000, n_identities: int = 200, dim: int = 128, seed: int = 7):
    x, y = make_faces(n_samples, n_identities, dim, seed=seed)
    noisy = inject_noise(x, y, flip=0.05, open_set=0.02, split=0.01, duplicates=0.02, seed=seed)
    names = label_names(noisy.labels)
    n = len(names)
    manifest = pd.DataFrame({
        "path": [f"images/{lab}/{i:06d}.jpg" for i, lab in enumerate(names)],
        "label": names,
        "source": "synthetic",
    })
    true = noisy.truth["true_label"].to_numpy()
    truth = pd.DataFrame({
        "path": manifest["path"],
        "issue": noisy.truth["issue"],
        "true_label": np.where(true >= 0, label_names(np.maximum(true, 0)), ""),
        "duplicate_of": noisy.truth["duplicate_of"],
        "split_of": np.where(noisy.truth["split_of"] >= 0, label_names(np.maximum(noisy.truth["split_of"], 0)), ""),
    })
    merges = pd.DataFrame({"label": label_names(noisy.merge_pairs[:, 0]) if len(noisy.merge_pairs) else [],
                           "true_label": label_names(noisy.merge_pairs[:, 1]) if len(noisy.merge_pairs) else []})
    assert len(truth) == n
    return manifest, noisy.embeddings.astype(np.float32), truth, merges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    manifest, emb, truth, merges = build()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(args.out / "faces.csv", index=False)
    np.save(args.out / "faces.npy", emb)
    truth.to_csv(args.out / "faces_truth.csv", index=False)
    merges.to_csv(args.out / "faces_merges.csv", index=False)
    counts = truth["issue"].replace("", "clean").value_counts().to_dict()
    print(f"wrote {len(manifest)} rows to {args.out}: {counts}")


if __name__ == "__main__":
    main()
