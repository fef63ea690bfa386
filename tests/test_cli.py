"""The ``facecluster`` command: exit codes, messages, what is written and printed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from facecluster.synth import make_faces

from .conftest import EXAMPLES, write_set

runner = CliRunner()


@pytest.mark.slow
def test_clean_writes_outputs_and_prints_a_summary(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["clean", str(EXAMPLES / "faces.csv"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for word in ("rows", "identities", "mislabeled", "near_duplicate", "relabel", "dedupe", "time"):
        assert word in result.stdout
    assert {p.name for p in out.iterdir()} >= {"cleaned.csv", "audit.csv", "identities.csv", "report.json"}


@pytest.mark.slow
def test_dry_run_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["clean", str(EXAMPLES / "faces.csv"), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0 and "dry run" in result.stdout
    assert not out.exists()


@pytest.mark.slow
def test_quiet_prints_nothing_on_stdout(tmp_path):
    result = runner.invoke(app, ["clean", str(EXAMPLES / "faces.csv"), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0 and result.stdout.strip() == ""


@pytest.mark.slow
def test_bad_input_exits_2_with_one_clear_line_and_no_output(tmp_path, small_set):
    x = np.load(small_set.with_suffix(".npy"))
    x[41, 3] = np.inf
    np.save(small_set.with_suffix(".npy"), x)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "cli.main", "clean", str(small_set), "--out", str(out), "-q"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "faces.npy, row 42, column 3: non-finite value" in " ".join(proc.stderr.split())
    assert not out.exists()


def test_named_columns_and_explicit_embeddings(tmp_path, small_set):
    text = small_set.read_text().replace("path,label", "file,person", 1)
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    args = ["clean", str(manifest), "--embeddings", str(small_set.with_suffix(".npy")), "--path-col", "file",
            "--label-col", "person", "--out", str(tmp_path / "o"), "-q", "--device", "cpu", "--k", "15"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    missing = runner.invoke(app, ["clean", str(manifest), "--embeddings", str(small_set.with_suffix(".npy")), "-q"])
    assert missing.exit_code == 2 and "missing column 'path'" in missing.output


def test_a_manifest_column_the_output_would_overwrite_is_refused(tmp_path):
    """A previous audit.csv fed back in holds fc_label: its values would be overwritten in the
    audit and then dropped from cleaned.csv. Exit 2 naming the column, nothing written."""
    x, labels = make_faces(60, 6, 16, seed=0)
    manifest = write_set(tmp_path, x, labels, extra={"fc_label": [f"orig{i}" for i in range(60)]})
    out = tmp_path / "out"
    result = runner.invoke(app, ["clean", str(manifest), "--out", str(out), "-q", "--device", "cpu"])
    assert result.exit_code == 2 and "column 'fc_label'" in result.output and "one facecluster writes" in result.output
    assert not out.exists()
    clusters = runner.invoke(app, ["cluster", str(write_set(tmp_path / "c", x, labels, extra={"fc_cluster": 1})),
                                   "--out", str(tmp_path / "cout"), "-q", "--device", "cpu"])
    assert clusters.exit_code == 2 and "column 'fc_cluster'" in clusters.output


def test_invalid_option_is_a_usage_error():
    result = runner.invoke(app, ["clean", str(EXAMPLES / "faces.csv"), "--k", "0"])
    assert result.exit_code == 2


def test_a_bad_cluster_option_value_is_one_line_and_exit_2(small_set):
    result = CliRunner().invoke(app, ["cluster", str(small_set), "--method", "finch", "--level", "-1", "-q"])
    assert result.exit_code == 2 and result.output.strip() == "error: level must be a whole number >= 0, got -1"
    result = CliRunner().invoke(app, ["cluster", str(small_set), "--smooth", "maybe", "-q"])
    assert result.exit_code == 2 and result.output.strip() == "error: --smooth must be auto, yes or no, got 'maybe'"
    result = CliRunner().invoke(app, ["cluster", str(small_set), "--method", "average", "--smooth", "no", "-q"])
    assert result.exit_code == 2 and "smooth applies to method 'correlation' only" in result.output
    result = CliRunner().invoke(app, ["cluster", str(small_set), "--attach", "often", "-q"])
    assert result.exit_code == 2 and result.output.strip() == "error: --attach must be auto, yes or no, got 'often'"
    result = CliRunner().invoke(app, ["cluster", str(small_set), "--method", "finch", "--attach", "yes", "-q"])
    assert result.exit_code == 2 and "attach applies to method 'correlation' only" in result.output


def test_cluster_attach_no_leaves_the_single_rows_alone(tmp_path):
    """Unlabelled faces whose clustering leaves single rows: by default some join a cluster
    (the summary says how many), with --attach no none does."""

    x, _ = make_faces(3000, 150, 64, seed=0)
    faces = write_set(tmp_path / "in", x, ["x"] * len(x))
    stages, printed = {}, {}
    for choice in ("auto", "no"):
        out = tmp_path / choice
        result = CliRunner().invoke(app, ["cluster", str(faces), "--attach", choice, "--out", str(out)])
        assert result.exit_code == 0, result.output
        stages[choice] = json.loads((out / "report.json").read_text())["stages"]["clustering"]
        printed[choice] = result.output
    att, det = stages["auto"]["attach_singletons"], stages["auto"]["detach_strays"]["detached"]
    assert "attach_singletons" not in stages["no"] and "detach_strays" not in stages["no"]
    assert att["single_rows"] == stages["no"]["singletons"] + det  # strays leave before the rejoin
    assert att["attached"] > 0 and stages["auto"]["n_clusters"] == stages["no"]["n_clusters"] + det - att["attached"]
    assert f"{att['attached']} of {att['single_rows']}" in printed["auto"] and "single rows joined" not in printed["no"]


def test_cluster_smooth_yes_values_the_edges_with_smoothed_faces(small_set, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["cluster", str(small_set), "--smooth", "yes", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    stage = json.loads((out / "report.json").read_text())["stages"]["clustering"]
    assert stage["smoothing"] == {"applied": True, "neighbours": 1, "why": "asked"}


def test_an_error_naming_brackets_prints_them_as_written(tmp_path, small_set):
    # rich read "[/x]" in the user's text as a closing tag: a MarkupError traceback, exit 1;
    # "[b]" vanished as a style
    for name in ("[/x]", "who[b]"):
        result = runner.invoke(app, ["clean", str(small_set), "--label-col", name, "--out", str(tmp_path / "o"), "-q"])
        assert result.exit_code == 2, result.output
        assert f"{name!r}" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_a_gpu_asked_for_and_absent_is_said_on_the_console(small_set, tmp_path, monkeypatch):
    from facecluster.device import Device

    monkeypatch.setattr("facecluster.device.resolve_device",
                        lambda requested="auto": Device("cpu", "faiss-cpu", "cuda requested but no GPU found; using cpu"))
    result = runner.invoke(app, ["cluster", str(small_set), "--out", str(tmp_path / "o"), "--device", "cuda", "-q"])
    assert result.exit_code == 0, result.output
    assert "note: cuda requested but no GPU found; using cpu" in result.output


def test_a_finch_level_past_the_coarsest_is_reported_as_such(small_set, tmp_path):
    result = runner.invoke(app, ["cluster", str(small_set), "--out", str(tmp_path / "o"), "--method", "finch",
                                 "--level", "99", "-q"])
    assert result.exit_code == 0, result.output
    stage = json.loads((tmp_path / "o" / "report.json").read_text())["stages"]["clustering"]
    assert stage["level"] == len(stage["clusters_per_level"]) - 1
    assert stage["level_source"].startswith("user asked for level 99: the coarsest of this set's")


def test_the_dask_install_hint_survives_the_help_markup():
    result = runner.invoke(app, ["clean", "--help"], env={"COLUMNS": "400"})
    assert "facecluster[dask]" in result.output


def test_version():
    from facecluster import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"facecluster {__version__}"


def test_a_system_refusal_mid_run_is_one_line_exit_1(small_set, tmp_path, monkeypatch):
    # a disk that fills up while the outputs are written was a traceback
    import facecluster

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "o" / "audit.csv"))

    monkeypatch.setattr(facecluster, "clean", full)
    result = runner.invoke(app, ["clean", str(small_set), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'o' / 'audit.csv'}: No space left on device; nothing was written"]


def test_a_peak_over_the_budget_is_said(capsys):
    from cli.main import _warn_over_budget

    _warn_over_budget({"memory": {"budget_bytes": 2**30, "peak_rss_bytes": 2**30 + 2**27,
                                  "estimate": {"total_bytes": 2**30 - 2**20}}})
    assert "went over the --memory-budget of 1.000 GiB" in " ".join(capsys.readouterr().err.split())
    _warn_over_budget({"memory": {"budget_bytes": 2**31, "peak_rss_bytes": 2**30, "estimate": {"total_bytes": 1}}})
    assert capsys.readouterr().err == ""


def test_a_refusal_after_loading_is_still_one_line(small_set, tmp_path):
    # an .npz is read before its budget check: the "load and validate" bar stayed above the error
    np.savez(tmp_path / "e.npz", embeddings=np.load(small_set.with_suffix(".npy")))
    result = runner.invoke(app, ["clean", str(small_set), "--embeddings", str(tmp_path / "e.npz"),
                                 "--out", str(tmp_path / "o"), "--memory-budget", "10M"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "memory budget" in lines[0], result.output
