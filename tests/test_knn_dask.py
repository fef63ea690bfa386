"""The kNN graph on Dask: a real LocalCluster (2 worker processes) gives the local exact graph
and the local run's outputs, also when a worker is killed mid-build."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import facecluster as fc
import facecluster.knn_dask as knn_dask
from facecluster.knn import build_knn_graph
from facecluster.synth import inject_noise, label_names, make_faces

from .conftest import write_set

distributed = pytest.importorskip("distributed", reason="dask.distributed not installed (the test extra has it)")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_graph_on_dask_equals_the_local_exact_graph(client, monkeypatch, tmp_path):
    x, _ = make_faces(3000, 150, 48, offset=1.5, seed=3)
    x = _unit(x)
    x[2000:2010] = x[:10]  # exact copies: ties for the k-th place are decided by row number on both sides
    monkeypatch.setattr(knn_dask, "BLOCK_ROWS", 700)  # 5 blocks, 25 block pairs, merged in a tree
    local = build_knn_graph(x, k=20, device="cpu", method="exact")
    on_dask = build_knn_graph(x, k=20, device="cpu", dask=client, scratch=tmp_path)
    np.testing.assert_array_equal(on_dask.indices, local.indices)
    np.testing.assert_array_equal(on_dask.sims.view(np.int32), local.sims.view(np.int32))
    assert on_dask.info["dask_workers"] == 2 and on_dask.info["dask_blocks"] == 5
    assert on_dask.info["fingerprint"] == local.info["fingerprint"], "one cache serves both"
    assert not list(tmp_path.glob(".tmp-dask-*")), "the scratch copy is removed"
    with pytest.raises(ValueError, match="not distributed"):
        build_knn_graph(x, k=20, device="cpu", method="hnsw", dask=client)


def test_clean_on_dask_writes_the_local_run_outputs(client, monkeypatch, tmp_path):
    x, y = make_faces(1500, 100, 32, seed=8)
    noisy = inject_noise(x, y, seed=8)
    manifest = write_set(tmp_path / "in", noisy.embeddings, label_names(noisy.labels))
    monkeypatch.setattr(knn_dask, "BLOCK_ROWS", 400)
    fc.clean(manifest, out_dir=tmp_path / "local")
    fc.clean(manifest, out_dir=tmp_path / "dask", dask=client)
    for name in ("cleaned.csv", "audit.csv", "identities.csv", "review.html"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "dask" / name).read_bytes(), name
    # the cached graph: the same arrays (its info says how each was built)
    with np.load(tmp_path / "local" / "knn_graph.npz") as a, np.load(tmp_path / "dask" / "knn_graph.npz") as b:
        for key in ("indices", "sims"):
            np.testing.assert_array_equal(a[key], b[key])
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("local", "dask"))
    for report in (a, b):
        for key in ("timings", "memory", "outputs"):
            report.pop(key)
        report["stages"].pop("knn")
    assert a == b
    assert not list((tmp_path / "dask").glob(".tmp-dask-*"))


def test_the_ivf_graph_on_dask_reaches_the_recall_target(client, monkeypatch, tmp_path):
    """Above the exact size the graph on Dask is IVF: flat lists searched exactly bucket by
    bucket, nprobe read off the lists of the sampled queries' exact neighbours, then refined
    here. Its recall of the edges that matter, on queries independent of the tuning ones,
    reaches the target; the probed lists alone already hold the seed target."""
    x, _ = make_faces(6000, 400, 64, seed=4)
    x = _unit(x)
    monkeypatch.setattr(knn_dask, "BLOCK_ROWS", 1500)  # 4 query blocks
    graph = build_knn_graph(x, k=20, device="cpu", dask=client, scratch=tmp_path, exact_max=1000, nlist=120)
    info = graph.info
    assert info["method"] == "ivf" and info["backend"] == "faiss-cpu on dask" and info["dask_buckets"] >= 3
    assert info["seed_recall"] >= info["seed_target"] or info["nprobe"] == 120 // 8
    assert info["tuned_recall"] >= 0.999 and info["edges_that_matter_recall"] >= 0.995
    assert 1 <= info["nprobe"] < 120, "fewer lists scanned than there are"
    local = build_knn_graph(x, k=20, device="cpu", method="exact")
    hit = (graph.indices[:, :, None] == local.indices[:, None, :]).any(axis=2).mean()
    assert hit >= 0.98, hit
    # valued as the exact graph values them: every listed similarity is the exact one
    rows = np.repeat(np.arange(len(x)), 20)
    got = graph.indices.ravel()
    np.testing.assert_allclose(graph.sims.ravel(), np.einsum("ij,ij->i", x[rows], x[got]), atol=1e-5)
    assert not list(tmp_path.glob(".tmp-dask-*"))


def test_a_worker_killed_mid_build_is_replaced_and_the_graph_is_the_same(client, monkeypatch, tmp_path):
    x = _unit(np.random.default_rng(5).standard_normal((12_000, 64)))
    monkeypatch.setattr(knn_dask, "BLOCK_ROWS", 600)  # 20 blocks: 400 block-pair searches
    local = build_knn_graph(x, k=15, device="cpu", method="exact")
    pids = client.run(os.getpid)
    result = {}

    def build():
        result["graph"] = build_knn_graph(x, k=15, device="cpu", dask=client, scratch=tmp_path)

    thread = threading.Thread(target=build)
    thread.start()
    done = lambda: client.run_on_scheduler(  # noqa: E731
        lambda dask_scheduler: sum(t.state == "memory" for t in dask_scheduler.tasks.values()))
    deadline = time.monotonic() + 60
    while done() < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim_address, victim_pid = next(iter(pids.items()))
    assert thread.is_alive(), "the build was still running when the worker was killed"
    os.kill(victim_pid, 9)  # the worker process dies mid-build; its nanny starts another
    thread.join(timeout=300)
    assert not thread.is_alive()
    np.testing.assert_array_equal(result["graph"].indices, local.indices)
    np.testing.assert_array_equal(result["graph"].sims, local.sims)
    client.wait_for_workers(2, timeout=60)
    assert victim_pid not in client.run(os.getpid).values(), "the killed worker was replaced"


@pytest.mark.parametrize("spec, extra", [("local:0", []), ("local:two", []), ("somewhere:8786", []),
                                         ("http://127.0.0.1:8787", []),  # the dashboard's address
                                         ("local:2", ["--knn", "hnsw"]), ("tcp://127.0.0.1:1", ["--dry-run"])])
def test_a_bad_dask_address_is_refused_before_any_work(small_set, tmp_path, spec, extra):
    from typer.testing import CliRunner

    from cli.main import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["clean", str(small_set), "--out", str(out), "--dask", spec, "-q", *extra])
    assert result.exit_code == 2 and "--dask" in result.output
    assert not out.exists()


def test_an_unreachable_scheduler_is_refused_in_one_line(small_set, tmp_path):
    # it was a full traceback and exit 1
    import dask
    from typer.testing import CliRunner

    from cli.main import app

    out = tmp_path / "out"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = CliRunner().invoke(app, ["clean", str(small_set), "--out", str(out), "--dask", "tcp://127.0.0.1:1",
                                          "-q"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --dask: cannot reach the Dask scheduler at tcp://127.0.0.1:1")
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_clean_from_the_command_line_on_a_local_cluster(small_set, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["clean", str(small_set), "--out", str(tmp_path / "out"), "--dask", "local:2", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stages"]["knn"]["backend"] == "faiss-cpu on dask" and report["stages"]["knn"]["dask_workers"] == 2


def test_graph_from_a_dask_array_never_gathered(client):
    import dask.array as da

    from facecluster.knn import rescore

    x = _unit(np.random.default_rng(11).standard_normal((2500, 24)))
    local = build_knn_graph(x, k=12, device="cpu", method="exact")
    # row chunks of unequal size, the columns split too: the blocks are the array's own chunks
    source = da.from_array(x, chunks=((900, 900, 700), (12, 12)))
    indices, _, info = knn_dask.knn_graph_dask(source, 12, client)
    assert info["dask_blocks"] == 3
    np.testing.assert_array_equal(rescore(x, indices)[0], local.indices)
    # chunks of unknown size (a filtered array, a Parquet frame's to_dask_array()) are measured first
    unknown = source[source[:, 0] > -2]
    assert np.isnan(unknown.chunks[0][0])
    indices, _, _ = knn_dask.knn_graph_dask(unknown, 12, client)
    np.testing.assert_array_equal(rescore(x, indices)[0], local.indices)


def test_graph_from_parquet_files_read_by_the_workers(client, tmp_path):
    """Embeddings kept as Parquet files (one column a dimension, written in parts): the
    workers read the parts, whose row counts are unknown until read; the exact graph equals
    the local one, and the IVF graph from the same files finds every edge that matters here."""
    import pandas as pd

    from facecluster.knn import rescore

    dd = pytest.importorskip("dask.dataframe", reason="dask.dataframe not installed")
    x = _unit(np.random.default_rng(13).standard_normal((2400, 16)))
    frame = pd.DataFrame(x, columns=[f"e{i}" for i in range(16)])
    dd.from_pandas(frame, npartitions=3).to_parquet(tmp_path / "embeddings")
    source = dd.read_parquet(tmp_path / "embeddings").to_dask_array()
    assert np.isnan(source.chunks[0][0])
    local = build_knn_graph(x, k=10, device="cpu", method="exact")
    indices, _, info = knn_dask.knn_graph_dask(source, 10, client)
    assert info["dask_blocks"] == 3
    np.testing.assert_array_equal(rescore(x, indices)[0], local.indices)
    ivf, _, info = knn_dask.ivf_graph_dask(source, 10, client, nlist=24, recall_queries=300)
    assert info["dask_blocks"] == 3 and info["edges_that_matter_recall"] >= 0.98
    assert (ivf[:, :, None] == local.indices[:, None, :]).any(axis=2).mean() >= 0.9


def test_the_ivf_graph_from_a_dask_array_reaches_its_seed_target_without_the_matrix_here(client, tmp_path):
    """IVF on Dask from a dask array: the training and tuning samples are read from the
    array's chunks and the samples' exact neighbours searched on the cluster, so nothing but
    samples comes here. The graph is the one the same search gives from a .npy with the
    vectors at hand; every similarity is exact; its recall of the edges that matter, on
    queries drawn apart from the tuning ones, is reported and reaches the seed target."""
    import dask.array as da

    x, _ = make_faces(6000, 400, 64, seed=4)
    x = _unit(x)
    source = da.from_array(x, chunks=((1500, 1500, 1500, 1500), (32, 32)))
    indices, sims, info = knn_dask.ivf_graph_dask(source, 20, client, nlist=120, bucket_rows=1500, seed_target=0.99)
    assert info["dask_blocks"] == 4 and info["dask_buckets"] >= 3 and 1 <= info["nprobe"] <= 120 // 8
    assert info["seed_recall"] >= 0.99 or info["nprobe"] == 120 // 8
    assert info["n_queries"] == 1000 and info["edges_that_matter_recall"] >= 0.98
    assert info["scan_share"] < 1.0
    found = indices >= 0
    rows = np.broadcast_to(np.arange(len(x))[:, None], indices.shape)[found]
    np.testing.assert_allclose(sims[found], np.einsum("ij,ij->i", x[rows], x[indices[found]]), atol=1e-5)
    path = tmp_path / "x.npy"
    np.save(path, x)
    here, _, _ = knn_dask.ivf_graph_dask(path, 20, client, x=x, nlist=120, bucket_rows=1500, block_rows=1500,
                                         seed_target=0.99)
    np.testing.assert_array_equal(here, indices)


def test_the_vote_stage_on_dask_equals_the_local_stage(client, monkeypatch):
    """The kNN votes and the near-duplicate cuts run block by block on the workers (four
    blocks here), the fits, label cores and label pairs here: every array the stage returns
    equals the local stage's, copies and wrong labels included."""
    import dataclasses

    import facecluster.blocks as blocks
    from facecluster.calibration import fit_calibration
    from facecluster.votes import vote_stage

    x, y = make_faces(3000, 300, 32, seed=21)
    noisy = inject_noise(x, y, seed=21, duplicates=0.03)
    x = _unit(noisy.embeddings)
    graph = build_knn_graph(x, k=20, device="cpu", method="exact")
    calibration = fit_calibration(graph, noisy.labels)
    local_dups, local_votes = vote_stage(graph, noisy.labels, calibration)
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 800)
    dups, votes = vote_stage(graph, noisy.labels, calibration, client=client)
    assert local_dups.stats["n_groups"] > 10 and dups.stats == local_dups.stats
    for field in ("group", "score", "partner"):
        np.testing.assert_array_equal(getattr(dups, field), getattr(local_dups, field))
    for field in dataclasses.fields(votes):
        got, want = getattr(votes, field.name), getattr(local_votes, field.name)
        if field.name == "pairs":
            for part in ("a", "b", "score", "cross_share_a", "cross_share_b"):
                np.testing.assert_array_equal(getattr(got, part), getattr(want, part))
        else:
            np.testing.assert_array_equal(got, want)
    assert (votes.best_other >= 0).any() and votes.core.any()


def test_camsoftmax_scoring_on_dask_equals_the_local_scoring(client, monkeypatch):
    import facecluster.camsoftmax as camsoftmax
    from facecluster.camsoftmax import CamSoftmaxConfig, camsoftmax_confidence

    monkeypatch.setattr(camsoftmax, "_SCORE_CHUNK", 500)  # 6 chunks, scored on both workers
    x, y = make_faces(3000, 400, 32, seed=12)
    noisy = inject_noise(x, y, seed=12)
    x = _unit(noisy.embeddings)
    graph = build_knn_graph(x, k=20, device="cpu", method="exact")
    config = CamSoftmaxConfig(full_max_classes=50)  # the candidate softmax: the compiled kernel's path
    local = camsoftmax_confidence(x, noisy.labels, None, graph.indices, config, device="cpu", seed=3)
    remote = camsoftmax_confidence(x, noisy.labels, None, graph.indices, config, device="cpu", seed=3, client=client)
    for field in ("p_given", "top", "p_top", "margin"):
        np.testing.assert_array_equal(getattr(remote, field), getattr(local, field))


def test_the_scratch_folder_made_for_the_workers_goes_with_a_failed_run(tmp_path, monkeypatch):
    # an interrupted --dask run left an empty --out behind; a full disk was a traceback
    from facecluster.errors import InputError
    from facecluster.knn_dask import _scratch_copy

    out = tmp_path / "new" / "out"
    with pytest.raises(KeyboardInterrupt):
        with _scratch_copy(np.ones((4, 3), np.float32), out) as name:
            assert Path(name).exists()
            raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(InputError, match="No space left on device"):
        with _scratch_copy(np.ones((4, 3), np.float32), out):
            pass
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "mine"
    kept.mkdir()
    with pytest.raises(InputError):
        with _scratch_copy(np.ones((4, 3), np.float32), kept):
            pass
    assert kept.is_dir() and not any(kept.iterdir()), "a folder that was there stays, and holds nothing"
