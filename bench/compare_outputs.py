"""Compare two folders of facecluster outputs, run by run: what a code change did to the decisions.

    python bench/compare_outputs.py BEFORE AFTER [-v]

BEFORE and AFTER each hold one sub-folder per run (the same names in both): a ``clean`` output
folder (audit.csv, identities.csv, report.json) or a ``cluster`` one (clusters.csv). For a
clean run it prints how many rows changed in each fc_ column, the review count before and
after, and whether the merge suggestions are the same; ``-v`` adds a table of issue/action
before against after for the rows whose decision changed. For a cluster run, whether the
partitions are identical, else their adjusted Rand index and cluster counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from sklearn.metrics import adjusted_rand_score

FC_COLUMNS = ("fc_action", "fc_issue", "fc_label", "fc_score", "fc_reason")


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def compare_clean(a: Path, b: Path, verbose: bool) -> str:
    x, y = _read(a / "audit.csv"), _read(b / "audit.csv")
    parts = [f"{c} {int((x[c] != y[c]).sum())}" for c in FC_COLUMNS]
    review = [json.loads((d / "report.json").read_text())["counts"]["issues"]["review"] for d in (a, b)]
    parts.append(f"review {review[0]} -> {review[1]}")
    same = _read(a / "identities.csv").equals(_read(b / "identities.csv"))
    parts.append("merges same" if same else "merges differ")
    line = ", ".join(parts)
    changed = (x.fc_issue != y.fc_issue) | (x.fc_action != y.fc_action)
    if verbose and changed.any():
        table = pd.crosstab((x.fc_issue + "/" + x.fc_action)[changed], (y.fc_issue + "/" + y.fc_action)[changed],
                            rownames=["before"], colnames=["after"])
        line += "\n" + table.to_string()
    return line


def compare_cluster(a: Path, b: Path) -> str:
    x, y = _read(a / "clusters.csv").fc_cluster, _read(b / "clusters.csv").fc_cluster
    if (x == y).all():
        return "identical"
    return f"ARI {adjusted_rand_score(x, y):.4f}, clusters {x.nunique()} -> {y.nunique()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    for run in sorted(p.name for p in args.after.iterdir() if p.is_dir()):
        a, b = args.before / run, args.after / run
        if not a.is_dir():
            print(f"{run}: only in {args.after}")
        elif (b / "audit.csv").is_file():
            print(f"{run}: {compare_clean(a, b, args.verbose)}")
        elif (b / "clusters.csv").is_file():
            print(f"{run}: {compare_cluster(a, b)}")


if __name__ == "__main__":
    main()
