"""Shared fixtures: small face sets written to disk, and the real dlib set when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facecluster.synth import inject_noise, label_names, make_faces

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
REAL = REPO.parent / "shared" / "data" / "celeba_wild_dlib"


def write_set(folder: Path, x: np.ndarray, labels, *, stem: str = "faces", extra: dict | None = None) -> Path:
    """Write ``<stem>.csv`` (path,label + extra columns) and the sibling ``<stem>.npy``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = np.asarray(labels).astype(str)
    frame = pd.DataFrame({"path": [f"img/{i:05d}.jpg" for i in range(len(names))], "label": names})
    for key, values in (extra or {}).items():
        frame[key] = values
    path = folder / f"{stem}.csv"
    frame.to_csv(path, index=False)
    np.save(folder / f"{stem}.npy", np.asarray(x, dtype=np.float32))
    return path


def write_images(manifest: Path, seed: int = 0) -> None:
    """A small random image file for every path of ``manifest`` (relative to its folder)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for rel in pd.read_csv(manifest, dtype=str).path:
        target = manifest.parent / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(target)


def cleaned_with_images(root: Path, seed: int):
    """A 900-row noisy set whose paths are image files on disk, cleaned once into root/out
    (hierarchical and correlation stages). Returns (manifest, out, result)."""
    import facecluster as fc

    x, y = make_faces(900, 60, 64, seed=seed)
    noisy = inject_noise(x, y, seed=seed)
    manifest = write_set(root / "in", noisy.embeddings, label_names(noisy.labels))
    write_images(manifest)
    result = fc.clean(manifest, out_dir=root / "out", stages=("hierarchical", "correlation"))
    return manifest, root / "out", result


@pytest.fixture
def small_set(tmp_path) -> Path:
    """600 clean rows of 40 identities, 64-d, written as faces.csv + faces.npy."""
    x, y = make_faces(600, 40, 64, seed=3)
    return write_set(tmp_path / "in", x, label_names(y))


@pytest.fixture(scope="session")
def noisy_sets():
    """Centred and offset (dlib-like) noisy sets with ground truth, keyed by 'centred'/'offset'."""
    out = {}
    for name, offset in (("centred", 0.0), ("offset", 2.2)):
        x, y = make_faces(2500, 160, 128, offset=offset, seed=11)
        out[name] = inject_noise(x, y, seed=11)
    return out


@pytest.fixture(scope="session")
def real_set() -> Path:
    if not (REAL / "manifest.csv").is_file():
        pytest.skip("real face embeddings (../shared/data/celeba_wild_dlib) are not in this checkout: "
                    "they are research-only data available in CI, not shipped with the repo")
    return REAL
