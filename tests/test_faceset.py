"""Loading and validation: every class of bad input is refused with file, row and column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from facecluster import InputError, load_faceset
from facecluster.faceset import centring_decision, prepare_embeddings
from facecluster.synth import make_faces

from .conftest import write_set


def _good(tmp_path, n=30, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    labels = [f"p{i % 5}" for i in range(n)]
    return write_set(tmp_path, x, labels), x


def _raises(manifest, embeddings=None, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        load_faceset(manifest, embeddings, **kw)
    return info.value


def test_loads_csv_with_sibling_npy_and_keeps_columns_verbatim(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    path = write_set(tmp_path, x, ["007", "007", "a,b", "ünï"], extra={"note": ["", "x", " y ", "NaN"]})
    fs = load_faceset(path)
    assert list(fs.manifest.columns) == ["path", "label", "note"]
    assert fs.manifest["label"].tolist() == ["007", "007", "a,b", "ünï"]
    assert fs.manifest["note"].tolist() == ["", "x", " y ", "NaN"]
    assert fs.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fs.embeddings, axis=1), 1.0, rtol=1e-5)
    assert fs.label_names[fs.labels].tolist() == ["007", "007", "a,b", "ünï"]


def test_reads_parquet_manifest_and_npz_and_parquet_embeddings(tmp_path):
    path, x = _good(tmp_path)
    frame = pd.read_csv(path, dtype=str)
    frame.to_parquet(tmp_path / "m.parquet")
    np.savez(tmp_path / "e.npz", embeddings=x)
    pd.DataFrame({"embedding": list(x)}).to_parquet(tmp_path / "e_list.parquet")
    pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).to_parquet(tmp_path / "e_cols.parquet")
    ref = load_faceset(path, centre=False).embeddings
    for emb in ("e.npz", "e_list.parquet", "e_cols.parquet"):
        fs = load_faceset(tmp_path / "m.parquet", tmp_path / emb, centre=False)
        np.testing.assert_allclose(fs.embeddings, ref, rtol=1e-6)


def test_missing_column_names_column_and_alternatives(tmp_path):
    path, _ = _good(tmp_path)
    err = _raises(path, label_col="identity")
    assert err.column == "identity" and "--label-col" in str(err) and str(path) in str(err)


def test_duplicate_column_is_refused(tmp_path):
    path, _ = _good(tmp_path)
    text = path.read_text().splitlines()
    text[0] = "path,label,label"
    path.write_text("\n".join(line + ",x" if i else line for i, line in enumerate(text)) + "\n")
    err = _raises(path)
    assert "duplicate column" in str(err) and err.column == "label"


def test_empty_label_names_first_row(tmp_path):
    path, _ = _good(tmp_path)
    frame = pd.read_csv(path, dtype=str)
    frame.loc[6, "label"] = "  "
    frame.loc[9, "label"] = ""
    frame.to_csv(path, index=False)
    err = _raises(path)
    assert (err.row, err.column) == (7, "label") and "empty label" in str(err)


def test_row_count_mismatch(tmp_path):
    path, x = _good(tmp_path)
    np.save(path.with_suffix(".npy"), x[:-2])
    err = _raises(path)
    assert "28 embedding rows" in str(err) and "30 rows" in str(err)


@pytest.mark.parametrize("bad,expect", [(np.nan, "non-finite"), (np.inf, "non-finite"), (-np.inf, "non-finite")])
def test_non_finite_value_names_row_and_dimension(tmp_path, bad, expect):
    path, x = _good(tmp_path)
    x[12, 5] = bad
    np.save(path.with_suffix(".npy"), x)
    err = _raises(path)
    assert (err.row, err.column) == (13, 5) and expect in str(err)


def test_all_zero_vector(tmp_path):
    path, x = _good(tmp_path)
    x[3] = 0
    np.save(path.with_suffix(".npy"), x)
    err = _raises(path)
    assert err.row == 4 and "all-zero" in str(err)


def test_non_numeric_array(tmp_path):
    path, _ = _good(tmp_path)
    np.save(path.with_suffix(".npy"), np.array([["a", "b"]] * 30))
    assert "numeric" in str(_raises(path))


@pytest.mark.parametrize("shape", [(30,), (30, 4, 4)])
def test_wrong_rank(tmp_path, shape):
    path, _ = _good(tmp_path)
    np.save(path.with_suffix(".npy"), np.ones(shape, dtype=np.float32))
    assert "2-D" in str(_raises(path))


def test_truncated_npy(tmp_path):
    path, _ = _good(tmp_path)
    npy = path.with_suffix(".npy")
    npy.write_bytes(npy.read_bytes()[:-100])
    err = _raises(path)
    assert str(npy) in str(err) and "truncated or corrupt" in str(err)


def test_unreadable_files(tmp_path):
    path, _ = _good(tmp_path)
    assert "not found" in str(_raises(tmp_path / "nope.csv"))
    assert "not found" in str(_raises(path, tmp_path / "nope.npy"))
    path.write_bytes(b"\xff\xfe\x00garbage\x00\x81")
    assert "UTF-8" in str(_raises(path))


def test_ragged_row_is_refused(tmp_path):
    path, _ = _good(tmp_path)
    lines = path.read_text().splitlines()
    lines[5] = lines[5].split(",")[0]
    path.write_text("\n".join(lines) + "\n")
    err = _raises(path)
    assert err.row == 5 and "fields" in str(err)


def test_header_only_manifest(tmp_path):
    path, _ = _good(tmp_path)
    path.write_text("path,label\n")
    assert "no data rows" in str(_raises(path))


def test_npz_with_several_unnamed_arrays(tmp_path):
    path, x = _good(tmp_path)
    np.savez(tmp_path / "e.npz", a=x, b=x)
    assert "expected one" in str(_raises(path, tmp_path / "e.npz"))


def test_centring_is_decided_from_the_data():
    x, _ = make_faces(800, 50, 128, seed=1)
    assert not centring_decision(x)["centre"]
    x_off, _ = make_faces(800, 50, 128, offset=2.2, seed=1)
    decision = centring_decision(x_off)
    assert decision["centre"] and decision["random_pair_mean"] > 0.7
    unit, centred, _ = prepare_embeddings(x_off)
    assert centred
    # centring restores the usual picture: random pairs near cosine 0
    assert abs(centring_decision(unit)["random_pair_mean"]) < 0.05


def test_real_dlib_embeddings_are_centred_automatically(real_set):
    fs = load_faceset(real_set / "manifest.csv", real_set / "embeddings.npy")
    assert fs.centred and fs.n_samples == 4979 and fs.n_labels == 227
