"""The memory budget: estimated from the set's shape, refused up front, reported beside the truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from facecluster import InputError, clean
from facecluster.memory import GIB, estimate_clean_memory, parse_size

runner = CliRunner()


@pytest.mark.parametrize("text, expected", [("6G", 6 * GIB), ("6GiB", 6 * GIB), ("6gb", 6 * 10**9), ("512M", 512 * 2**20),
                                            ("1.5g", int(1.5 * GIB)), ("1000", 1000), (" 2 GiB ", 2 * GIB)])
def test_sizes_are_read_as_a_person_writes_them(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "6x", "G", "-1G", "0", "six gigs"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


@given(n=st.integers(2, 10**8), dim=st.sampled_from([64, 128, 256, 512]), k=st.integers(1, 100))
def test_the_estimate_grows_with_the_set_and_holds_the_embeddings_and_graph(n, dim, k):
    est = estimate_clean_memory(n, dim, k)
    more = estimate_clean_memory(n * 2, dim, k)
    assert more.total > est.total
    kk = min(k, n - 1)
    assert est.total >= n * dim * 4 + n * kk * 8
    assert estimate_clean_memory(n, dim, k, stages=()).total <= est.total
    assert "GiB" in est.summary()


def test_a_run_over_its_budget_is_refused_before_anything_is_written(small_set, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="over the memory budget of 0.010 GiB") as info:
        clean(small_set, out_dir=out, memory_budget=int(0.01 * GIB))
    assert "embeddings" in str(info.value) or "runtime" in str(info.value)
    assert not out.exists()


def test_the_cli_refuses_with_exit_2_and_reports_the_estimate_beside_the_peak(small_set, tmp_path):
    refused = runner.invoke(app, ["clean", str(small_set), "--out", str(tmp_path / "no"), "-q", "--memory-budget", "10M"])
    assert refused.exit_code == 2 and "memory budget" in refused.output
    assert not (tmp_path / "no").exists()
    bad = runner.invoke(app, ["clean", str(small_set), "--out", str(tmp_path / "no"), "-q", "--memory-budget", "lots"])
    assert bad.exit_code == 2 and "memory size" in bad.output
    ok = runner.invoke(app, ["clean", str(small_set), "--out", str(tmp_path / "yes"), "-q", "--memory-budget", "8G"])
    assert ok.exit_code == 0, ok.output
    memory = json.loads((tmp_path / "yes" / "report.json").read_text())["memory"]
    assert memory["budget_bytes"] == 8 * GIB
    assert memory["estimate"]["total_bytes"] > memory["estimate"]["embeddings_bytes"] > 0
    assert memory["peak_rss_bytes"] > 0
    # the peak so far at the end of each stage, in run order: a high-water mark never falls,
    # and the last mark is the run's peak before the report
    marks = memory["peak_rss_bytes_after"]
    assert list(marks)[:2] == ["load", "knn"] and list(marks)[-2:] == ["findings", "relabel"]
    assert {"calibration", "knn_votes", "hierarchical", "correlation", "camsoftmax"} <= set(marks)
    values = list(marks.values())
    assert all(0 < a <= b for a, b in zip(values, values[1:])) and values[-1] <= memory["peak_rss_bytes"]


def test_an_array_input_is_checked_from_its_shape(tmp_path):
    import pandas as pd

    x = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    frame = pd.DataFrame({"path": [f"{i}.jpg" for i in range(50)], "label": [f"p{i % 5}" for i in range(50)]})
    with pytest.raises(InputError, match="memory budget"):
        clean(frame, x, memory_budget=1000)


def test_a_npy_set_is_refused_before_its_embeddings_are_read(small_set, monkeypatch):
    import facecluster.pipeline as pipeline

    def never(*args, **kwargs):
        raise AssertionError("the embeddings were read before the budget was checked")

    monkeypatch.setattr(pipeline, "load_faceset", never)
    with pytest.raises(InputError, match="memory budget"):
        clean(small_set, memory_budget=10 * 2**20)


def test_the_refusal_follows_the_sets_own_estimate(small_set):
    x = np.load(small_set.with_suffix(".npy"), mmap_mode="r")
    need = estimate_clean_memory(x.shape[0], x.shape[1], 30).total
    with pytest.raises(InputError, match="memory budget"):
        clean(small_set, memory_budget=need - 1)
    assert len(clean(small_set, memory_budget=need).audit) == x.shape[0]


@pytest.mark.parametrize("layout", ["list", "fixed", "columns"])
def test_parquet_embeddings_over_the_budget_are_refused_before_they_are_read(small_set, tmp_path, monkeypatch, layout):
    # reading them whole (the table, a pandas copy and the stacked matrix) took more than the
    # run's estimate before the budget was checked
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.load(small_set.with_suffix(".npy"))
    table = {"list": lambda: pa.table({"e": pa.array(list(x), type=pa.list_(pa.float32()))}),
             "fixed": lambda: pa.table({"e": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])}),
             "columns": lambda: pa.table({f"d{i}": x[:, i] for i in range(x.shape[1])})}[layout]()
    pq.write_table(table, tmp_path / "e.parquet")

    def unread(path):
        raise AssertionError("the Parquet embeddings were read before the budget was checked")

    monkeypatch.setattr("facecluster.faceset._read_parquet_embeddings", unread)
    with pytest.raises(InputError, match="over the memory budget") as info:
        clean(small_set, tmp_path / "e.parquet", memory_budget=int(0.01 * GIB))
    assert str(info.value).startswith(str(tmp_path / "e.parquet"))
