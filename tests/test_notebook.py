"""The worked example notebook runs top to bottom, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "worked_example.ipynb"


@pytest.mark.slow
def test_worked_example_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "flips relabelled" in text and "rows kept for retraining" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot cell drew a figure"
    # the notebook writes into a temporary folder, never beside the inputs
    assert not (NOTEBOOK.parent / "cleaned").exists()
