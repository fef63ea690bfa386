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

from facecluster.metrics import issue_scores

HERE = Path(__file__).resolve().parent


def score(out_dir: Path) -> dict:
    audit = pd.read_csv(out_dir / "audit.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(HERE / "faces_truth.csv", dtype=str, keep_default_na=False)
    if audit.path.tolist() != truth.path.tolist():
        raise SystemExit(f"{out_dir / 'audit.csv'} is not a run of examples/faces.csv")
    relabel = audit.fc_action == "relabel"
    kept = audit.fc_action.isin(["keep", "relabel", "merge"])
    merges = pd.read_csv(out_dir / "identities.csv", dtype=str)
    true_merges = pd.read_csv(HERE / "faces_merges.csv", dtype=str)
    found = {frozenset(p) for p in zip(merges.label, merges.merged_into)}
    wanted = {frozenset(p) for p in zip(true_merges.label, true_merges.true_label)}
    return {
        "found": issue_scores(audit.fc_issue, truth),
        "acted_on": issue_scores(audit.fc_issue, truth, acted=audit.fc_action != "keep"),
        "merge_suggestions": {"found": len(found & wanted), "true": len(wanted), "false": len(found - wanted)},
        "relabel_accuracy": round(float((audit.fc_label[relabel] == truth.true_label[relabel]).mean()), 4),
        "kept_label_precision": round(float((audit.fc_label[kept] == truth.true_label[kept]).mean()), 4),
        "clean_rows_lost": int(((~kept) & (truth.issue == "")).sum()),
        "rows_kept": int(kept.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    print(json.dumps(score(parser.parse_args().out_dir), indent=2))


if __name__ == "__main__":
    main()
