"""Score a cleaning run of the bundled example against its injected ground truth.

    facecluster clean examples/faces.csv --out out
    python examples/score_example.py out

Prints precision / recall / F1 per issue type (all findings, and only those the policy acted
on), relabel accuracy, kept-label precision and the clean rows lost.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from facecluster.metrics import cleaning_scores

HERE = Path(__file__).resolve().parent


def score(out_dir: Path) -> dict:
    audit = pd.read_csv(out_dir / "audit.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(HERE / "faces_truth.csv", dtype=str, keep_default_na=False)
    if audit.path.tolist() != truth.path.tolist():
        raise SystemExit(f"{out_dir / 'audit.csv'} is not a run of examples/faces.csv")
    identities = pd.read_csv(out_dir / "identities.csv", dtype=str, keep_default_na=False)
    true_merges = pd.read_csv(HERE / "faces_merges.csv", dtype=str)
    return cleaning_scores(audit, truth.true_label.to_numpy(), truth, identities,
                           list(zip(true_merges.label, true_merges.true_label)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    print(json.dumps(_rounded(score(parser.parse_args().out_dir)), indent=2))


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


if __name__ == "__main__":
    main()
