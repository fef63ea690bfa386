"""Loading and validation: every class of bad input is refused with file, row and column."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from facecluster import InputError, load_faceset
from facecluster.faceset import (
    _normalise_checked,
    centring_decision,
    prepare_embeddings,
)
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


def _frame(n=6, **cols):
    frame = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(n)], "label": [f"p{i % 2}" for i in range(n)]})
    for key, values in cols.items():
        frame[key] = values
    return frame, np.random.default_rng(0).standard_normal((n, 8))


@pytest.mark.parametrize("missing", [np.nan, None, pd.NA])
def test_missing_label_in_a_dataframe_names_row_and_column(missing):
    frame, x = _frame()
    frame["label"] = frame["label"].astype(object)
    frame.loc[3, "label"] = missing
    frame.loc[5, "label"] = missing
    err = _raises(frame, x)
    assert (err.row, err.column) == (4, "label") and "empty label" in str(err)
    assert "row 4" in str(err) and "column 'label'" in str(err) and "2 row(s)" in str(err)


def test_nan_in_a_numeric_label_column_of_a_dataframe_names_row_and_column():
    frame, x = _frame(label=[1, 2, np.nan, 1, 2, 1])
    err = _raises(frame, x)
    assert (err.row, err.column) == (3, "label") and "empty label" in str(err)


def test_numeric_labels_in_a_dataframe_stay_valid():
    frame, x = _frame(label=[7, 8, 7, 9, 8, 7])
    fs = load_faceset(frame, x, centre=False)
    assert fs.label_names.tolist() == ["7", "8", "9"]
    assert fs.label_names[fs.labels].tolist() == ["7", "8", "7", "9", "8", "7"]


@pytest.mark.parametrize("missing", [np.nan, None, "", "  "])
def test_missing_path_in_a_dataframe_names_row_and_column(missing):
    frame, x = _frame()
    frame["path"] = frame["path"].astype(object)
    frame.loc[1, "path"] = missing
    err = _raises(frame, x)
    assert (err.row, err.column) == (2, "path") and "empty path" in str(err)


def test_dataframe_row_numbers_are_positions_whatever_the_index():
    frame, x = _frame()
    frame.index = [100, 50, 7, 3, 2, 1]
    frame["label"] = frame["label"].astype(object)
    frame.loc[7, "label"] = np.nan  # third data row
    err = _raises(frame, x)
    assert (err.row, err.column) == (3, "label")


def test_missing_values_in_other_dataframe_columns_read_as_empty_text_like_a_file():
    frame, x = _frame(note=["a", np.nan, None, "", "b", "c"])
    fs = load_faceset(frame, x, centre=False)
    assert fs.manifest["note"].tolist() == ["a", "", "", "", "b", "c"]


def test_empty_path_cell_in_a_csv_names_row_and_column(tmp_path):
    path, _ = _good(tmp_path)
    frame = pd.read_csv(path, dtype=str)
    frame.loc[4, "path"] = ""
    frame.to_csv(path, index=False)
    err = _raises(path)
    assert (err.row, err.column) == (5, "path") and "empty path" in str(err)


def test_null_label_and_path_in_a_parquet_manifest_name_row_and_column(tmp_path):
    path, x = _good(tmp_path)
    frame = pd.read_csv(path, dtype=str).astype(object)
    frame.loc[8, "label"] = None
    frame.to_parquet(tmp_path / "m.parquet")
    err = _raises(tmp_path / "m.parquet", x)
    assert (err.row, err.column) == (9, "label") and "empty label" in str(err)
    frame.loc[8, "label"] = "p0"
    frame.loc[2, "path"] = None
    frame.to_parquet(tmp_path / "m.parquet")
    err = _raises(tmp_path / "m.parquet", x)
    assert (err.row, err.column) == (3, "path") and "empty path" in str(err)


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


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300, 1e-300])
def test_extreme_scale_rows_normalise_to_the_unscaled_unit_vector(scale):
    x = np.random.default_rng(4).standard_normal((40, 128))
    ref = prepare_embeddings(x, centre=False)[0]
    scaled = x.copy()
    scaled[[5, 17]] *= scale
    unit, centred, _ = prepare_embeddings(scaled, centre=False)
    assert unit.dtype == np.float32 and not centred
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    assert np.allclose(unit, ref, atol=1e-6)
    expected = x[5] / np.linalg.norm(x[5])
    assert np.allclose(unit[5], expected, atol=1e-6)


def test_extreme_scale_rows_load_and_centre_like_the_unscaled_set(tmp_path):
    path, x = _good(tmp_path, n=60, d=32)
    x = x.astype(np.float64) + 3.0  # a shared offset, so "auto" centres
    np.save(path.with_suffix(".npy"), x)
    ref = load_faceset(path)
    big_small = x.copy()
    big_small[7] *= 1e200
    big_small[21] *= 1e-200
    np.save(path.with_suffix(".npy"), big_small)
    fs = load_faceset(path)  # neither row is refused as all-zero or non-finite
    assert fs.centred == ref.centred and fs.centred
    # the vectors every later stage sees are the unscaled set's: nothing to flag
    assert np.allclose(fs.embeddings, ref.embeddings, atol=1e-6)


def test_chunked_normalisation_of_a_memmap_matches_and_locates_rows(tmp_path):
    base = np.random.default_rng(3).standard_normal((50, 16))
    x = base.copy()
    x[9] *= 1e200
    x[33] *= 1e-200
    np.save(tmp_path / "e.npy", x)
    mm = np.load(tmp_path / "e.npy", mmap_mode="r")
    small_chunks = _normalise_checked(tmp_path / "e.npy", mm, chunk_bytes=8 * 16 * 7)  # 7 rows a chunk
    assert np.array_equal(small_chunks, _normalise_checked(tmp_path / "e.npy", mm))
    assert np.allclose(small_chunks, base / np.linalg.norm(base, axis=1, keepdims=True), atol=1e-6)
    x[40] = 0
    np.save(tmp_path / "z.npy", x)
    with pytest.raises(InputError) as info:
        _normalise_checked(tmp_path / "z.npy", np.load(tmp_path / "z.npy", mmap_mode="r"), chunk_bytes=8 * 16 * 7)
    assert info.value.row == 41 and "all-zero" in str(info.value)


def test_input_float64_array_is_not_modified_by_normalisation():
    x = np.random.default_rng(2).standard_normal((10, 16)) * 1e200
    before = x.copy()
    prepare_embeddings(x, centre=False)
    assert np.array_equal(x, before)


def test_all_zero_row_among_extreme_rows_still_raises():
    x = np.random.default_rng(1).standard_normal((10, 16))
    x[2] *= 1e-300
    x[6] = 0.0
    with pytest.raises(InputError) as info:
        prepare_embeddings(x, centre=False)
    assert info.value.row == 7 and "all-zero" in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_among_extreme_rows_still_raises(bad):
    x = np.random.default_rng(1).standard_normal((10, 16)) * 1e200
    x[4, 9] = bad
    with pytest.raises(InputError) as info:
        prepare_embeddings(x, centre=False)
    assert (info.value.row, info.value.column) == (5, 9) and "non-finite" in str(info.value)


def test_all_zero_row_exits_2_from_the_cli_with_one_line(tmp_path):
    path, x = _good(tmp_path / "in")
    x[11] = 0
    np.save(path.with_suffix(".npy"), x)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["clean", str(path), "--out", str(out), "-q", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "row 12" in result.output and "all-zero" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_identical_vectors_hint_names_the_real_centre_option():
    x = np.tile(np.random.default_rng(0).standard_normal(16), (20, 1))
    with pytest.raises(InputError) as info:
        prepare_embeddings(x, centre=True)
    assert "--centre no" in str(info.value) and "--no-centre" not in str(info.value)
    unit, centred, _ = prepare_embeddings(x, centre=False)
    assert not centred and np.allclose(unit, unit[0])
    # asked of no one ("auto"), centring that would empty a row is not done, and said why
    auto, centred, stats = prepare_embeddings(x)
    assert not centred and not stats["centre"] and np.array_equal(auto, unit)
    assert stats["not_centred_because"] == "row 1 equals the set's mean direction"


def test_a_set_of_one_repeated_face_runs_end_to_end(tmp_path):
    """Every row the same vector: both commands run (nothing to tell apart), no error."""
    x = np.tile(np.random.default_rng(1).standard_normal(16), (25, 1)).astype(np.float32)
    path = tmp_path / "same.csv"
    pd.DataFrame({"path": [f"{i}.jpg" for i in range(25)], "label": [f"p{i % 3}" for i in range(25)]}).to_csv(path, index=False)
    np.save(tmp_path / "same.npy", x)
    for command in ("clean", "cluster"):
        result = CliRunner().invoke(app, [command, str(path), "--out", str(tmp_path / command), "-q"])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / command / "report.json").read_text())
        assert report["stages"]["embeddings"]["centred"] is False
        assert "mean direction" in report["stages"]["embeddings"]["not_centred_because"]


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
    # a bad byte far into the file is named by its byte and row, not a parser chunk's offset
    good = "path,label\n" + "".join(f"img/{i}.jpg,id{i}\n" for i in range(5000))
    path.write_bytes(good.encode() + b"img/x.jpg,caf\xe9\n")
    err = _raises(path)
    assert err.row == 5001 and f"at byte {len(good.encode()) + 13}" in str(err)
    # ... in a small file too (the header's reader meets it first)
    path.write_bytes(b"path,label\na.jpg,x\nb.jpg,caf\xe9\n")
    assert _raises(path).row == 2


def test_ragged_row_is_refused(tmp_path):
    path, _ = _good(tmp_path)
    lines = path.read_text().splitlines()
    lines[5] = lines[5].split(",")[0]
    path.write_text("\n".join(lines) + "\n")
    err = _raises(path)
    assert err.row == 5 and "fields" in str(err)
    # a blank line is no row (the table skips it), so it does not shift the number
    path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")
    assert _raises(path).row == 5
    # ... nor does a line of spaces
    path.write_text("\n".join(lines[:2] + ["   "] + lines[2:]) + "\n")
    assert _raises(path).row == 5
    # a row with a field too many is named by its row too (not the parser's file line)
    lines[5] = lines[5] + ",x,y"
    path.write_text("\n".join(lines) + "\n")
    err = _raises(path)
    assert err.row == 5 and "found 3" in str(err)


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


def test_a_label_longer_than_csvs_field_limit_is_read_verbatim(tmp_path):
    """csv's reader refuses fields over 131,072 characters by default (an uncaught error
    before); the manifest reads such a label as it is."""
    path, x = _good(tmp_path)
    lines = path.read_text().splitlines()
    long = "n" * 200_000
    lines[3] = lines[3].split(",")[0] + "," + long
    path.write_text("\n".join(lines) + "\n")
    assert load_faceset(path).manifest["label"].iloc[2] == long


def test_object_arrays_of_numbers_are_numbers_and_text_is_refused():
    """An in-memory object array of floats (a list of lists, a pandas object column) is read
    as numbers; text is not taken for numbers; a value no number can be made of raises
    numpy's TypeError, as scikit-learn's inputs do."""
    from facecluster.faceset import prepare_embeddings

    x = np.random.default_rng(0).standard_normal((12, 4))
    unit, _, _ = prepare_embeddings(x.astype(object), centre=False)
    np.testing.assert_allclose(unit, prepare_embeddings(x, centre=False)[0])
    with pytest.raises(InputError, match="numeric"):
        prepare_embeddings(x.astype(str).astype(object), centre=False)
    bad = x.astype(object)
    bad[0, 0] = {"a": 1}
    with pytest.raises(TypeError, match="argument must be"):
        prepare_embeddings(bad, centre=False)


def test_tsv_fields_keep_their_quote_characters(tmp_path):
    """TSV has no quoting: a quote in a path or label is part of it (it had been read by CSV's
    rules, and `"weird" name.jpg` became `weird name.jpg`)."""
    from facecluster.faceset import read_manifest

    path = tmp_path / "m.tsv"
    path.write_text('path\tlabel\n"weird" name.jpg\tA\nb.jpg\t"B"\n', encoding="utf-8")
    assert read_manifest(path).to_dict("records") == [{"path": '"weird" name.jpg', "label": "A"},
                                                     {"path": "b.jpg", "label": '"B"'}]


def test_a_parquet_embedding_column_of_other_objects_is_refused_by_row_and_column(tmp_path):
    """A one-column Parquet file whose values are neither lists nor numbers (decimals, dates,
    booleans with nulls all read as objects) had raised a TypeError; now exit 2 material."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    from facecluster.faceset import read_embeddings

    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"emb": pa.array([decimal.Decimal("1.5")] * 4, type=pa.decimal128(5, 2))}), path)
    with pytest.raises(InputError) as err:
        read_embeddings(path)
    assert err.value.row == 1 and err.value.column == "emb" and "Decimal" in str(err.value)


def test_parquet_list_columns_are_kept_whole_as_json(tmp_path):
    """A list column of a Parquet manifest reaches the outputs as JSON text with every item
    (numpy's text shortened a long list to `[0 1 2 ... 1499]`)."""
    import json

    import pandas as pd

    from facecluster.faceset import read_manifest

    frame = pd.DataFrame({"path": ["a", "b"], "label": ["x", "y"], "vec": [list(range(1500)), [1, 2]]})
    frame.to_parquet(tmp_path / "m.parquet")
    read = read_manifest(tmp_path / "m.parquet")
    assert json.loads(read["vec"].iloc[0]) == list(range(1500)) and json.loads(read["vec"].iloc[1]) == [1, 2]


def test_a_parquet_manifest_with_a_duplicate_column_name_is_refused_by_name(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facecluster.faceset import read_manifest

    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["x"]), pa.array(["y"])], names=["path", "label", "label"])
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(InputError, match="duplicate column name 'label'") as err:
        read_manifest(tmp_path / "m.parquet")
    assert err.value.column == "label"
