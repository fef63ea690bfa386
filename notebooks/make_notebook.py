"""Writes worked_example.ipynb from the cells below (run it after editing them; the tests execute the notebook)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell("""# Cleaning a face dataset with facecluster

A worked example, top to bottom: load a labelled face set (a manifest of image paths and
identity labels, plus one embedding per row), let `facecluster.clean` find the wrong labels,
outliers, near-duplicates and duplicate identities, look at the evidence, and write the cleaned
manifest for retraining.

The set is the bundled example (`examples/faces.csv` + `examples/faces.npy`: 3,060 synthetic
512-d embeddings of 200 identities with injected noise, made by `examples/make_example.py`),
so the findings can be checked against the truth it was made with. To use your own set, point
`MANIFEST` and `EMBEDDINGS` at it."""),
    new_code_cell("""from pathlib import Path
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import facecluster as fc

EXAMPLES = Path("..") / "examples"
MANIFEST, EMBEDDINGS = EXAMPLES / "faces.csv", EXAMPLES / "faces.npy"
manifest = pd.read_csv(MANIFEST, dtype=str)
print(len(manifest), "rows,", manifest.label.nunique(), "labels")
manifest.head()"""),
    new_markdown_cell("""## Run the cleaner

One call builds the kNN graph (FAISS), runs the three stages (hierarchical clustering,
correlation clustering, cam-softmax confidence) and pools their evidence. `policy` says how
sure the pooled evidence must be before a row is acted on; `conservative` (the default)
relabels only at three-to-one odds."""),
    new_code_cell("""result = fc.clean(MANIFEST, EMBEDDINGS, policy="conservative", seed=0)
pd.Series(result.report["counts"]["issues"]).to_frame("rows")"""),
    new_code_cell("""pd.Series(result.report["counts"]["actions"]).to_frame("rows")"""),
    new_markdown_cell("""## Inspect the findings

Every input row is in the audit, in input order, with what was decided and why."""),
    new_code_cell("""audit = result.audit
flagged = audit[audit.fc_issue != ""].sort_values("fc_score", ascending=False)
pd.set_option("display.max_colwidth", 200)
flagged[["path", "label", "fc_issue", "fc_action", "fc_label", "fc_score", "fc_reason"]].head(10)"""),
    new_code_cell("""# one person filed under two names: merge suggestions with their evidence
result.identities"""),
    new_code_cell("""# identities with the lowest purity (share of their images with no finding)
ids = pd.DataFrame(result.report["identities"])
ids.sort_values("purity").head(8)"""),
    new_markdown_cell("""## Plot the evidence

Scores per issue, and the similarity of kNN edges between same-label and different-label
faces (the calibration the thresholds come from: no fixed cosine is used anywhere)."""),
    new_code_cell("""fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for issue, rows in audit[audit.fc_issue != ""].groupby("fc_issue"):
    axes[0].hist(rows.fc_score, bins=np.linspace(0, 1, 21), alpha=0.6, label=f"{issue} ({len(rows)})")
axes[0].set_xlabel("pooled score"); axes[0].legend()
graph, labels = result.graph, result.faceset.labels
rows = np.repeat(np.arange(graph.n_samples), graph.k)
same = labels[rows] == labels[graph.indices.ravel()]
axes[1].hist(graph.sims.ravel()[same], bins=60, alpha=0.6, density=True, label="same label")
axes[1].hist(graph.sims.ravel()[~same], bins=60, alpha=0.6, density=True, label="different label")
axes[1].set_xlabel("cosine similarity of kNN edges"); axes[1].legend()
plt.show()"""),
    new_markdown_cell("""## Check against the truth

The example was made with known noise (`examples/faces_truth.csv`), so we can see how many
of the injected flips were relabelled to the right identity, and how many clean rows were
touched."""),
    new_code_cell("""truth = pd.read_csv(EXAMPLES / "faces_truth.csv", dtype=str, keep_default_na=False)
relabelled = audit.fc_action == "relabel"
flips = truth.issue == "flip"
print(f"flips relabelled: {int((relabelled & flips).sum())} of {int(flips.sum())}")
print(f"relabels to the true identity: {(audit.fc_label[relabelled] == truth.true_label[relabelled]).mean():.3f}")
print(f"clean rows acted on: {int(((audit.fc_action != 'keep') & (truth.issue == '')).sum())} of {int((truth.issue == '').sum())}")"""),
    new_markdown_cell("""## Write the cleaned manifest

`cleaned.csv` (the rows to retrain on, with cleaned labels), `audit.csv`, `identities.csv`,
`report.json` and `report.html` are written together or not at all. The input files are never
modified."""),
    new_code_cell("""out = Path(tempfile.mkdtemp()) / "cleaned"
written = result.write(out)
print([p.name for p in written])
cleaned = pd.read_csv(out / "cleaned.csv", dtype=str)
print(len(cleaned), "rows kept for retraining")
cleaned.head()"""),
]


def main() -> None:
    nb = new_notebook(cells=CELLS, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                             "language": "python"}})
    path = Path(__file__).with_name("worked_example.ipynb")
    nbformat.write(nb, path)
    print(path)


if __name__ == "__main__":
    main()
