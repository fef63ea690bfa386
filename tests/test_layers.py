"""The shape DESIGN.md draws: stages are siblings, and no module reaches into another's privates."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facecluster"
STAGES = {"votes", "hierarchical", "correlation", "camsoftmax"}


def _imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported facecluster module, names taken from it) for every import in ``module``,
    top-level or inside a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                out.append((node.module or "", [a.name for a in node.names]))
            elif node.module and node.module.startswith("facecluster"):
                out.append((node.module.split(".", 1)[1] if "." in node.module else "", [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name.split(".", 1)[1], []) for a in node.names if a.name.startswith("facecluster."))
    return out


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_stage_imports_another_stage(stage):
    others = {module for module, _ in _imports(stage)} & (STAGES - {stage})
    assert not others, f"{stage} imports the stage(s) {sorted(others)}: stages are siblings"


@pytest.mark.parametrize("module", _modules())
def test_no_module_imports_another_modules_private_name(module):
    private = [(src, name) for src, names in _imports(module) for name in names
               if name.startswith("_") and not name.endswith("__")]
    assert not private, f"{module} imports private names {private}"


def test_findings_only_combines_and_the_pipeline_runs_the_stages():
    # findings reads the stages' result types, never runs a stage
    ran = {name for _, names in _imports("findings") for name in names if name.endswith("_stage")}
    assert not ran
    run = {name for _, names in _imports("pipeline") for name in names}
    assert {"vote_stage", "hierarchical_stage", "correlation_stage", "fit_calibration"} <= run


def test_the_import_checker_sees_a_violation(tmp_path, monkeypatch):
    # the checker itself must be able to fail: a fake stage importing a sibling's private name
    fake = tmp_path / "facecluster"
    fake.mkdir()
    (fake / "votes.py").write_text("from .hierarchical import _contract\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _imports("votes") == [("hierarchical", ["_contract"])]



def test_import_facecluster_loads_nothing_heavy():
    """``import facecluster`` defers every module (PEP 562): a fresh interpreter that imports
    it has loaded neither numpy nor scikit-learn, torch or numba; the names still resolve."""
    import subprocess

    code = ("import sys, facecluster as fc; heavy = [m for m in ('numpy', 'sklearn', 'torch', 'numba', 'pandas') "
            "if m in sys.modules]; assert not heavy, heavy; assert fc.InputError.__module__ == 'facecluster.errors'; "
            "assert set(fc.__all__) <= set(dir(fc))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
