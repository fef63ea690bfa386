"""From findings to actions and the output files: the policy, the audit, the cleaned manifest.

A :class:`Policy` says how strong a finding must be before anything is done about it; below
that, the finding is still written to the audit (action ``keep``) so a person can review it.
All files are written as one set by :mod:`facecluster.outputs`: staged in a temporary
folder inside the output folder and switched into place together, report.json last.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import is_flag, is_real
from .findings import Findings
from .outputs import OUTPUT_FILES, check_output_dir, write_set

__all__ = ["ACTIONS", "AUDIT_COLUMNS", "DECISIONS", "OUTPUT_FILES", "POLICIES", "Decisions", "Policy", "action_counts",
           "apply_decisions", "check_decisions", "check_output_dir", "cleaned_manifest", "decide_actions",
           "read_decisions", "write_outputs"]

ACTIONS = ("keep", "relabel", "drop", "merge", "dedupe")
# fc_source: "algorithm", or "person" where decisions.csv decided the row
AUDIT_COLUMNS = ("fc_action", "fc_label", "fc_issue", "fc_score", "fc_reason", "fc_source")
# fc_issue "review": the evidence cannot decide; never acted on, left for a person


@dataclass(frozen=True)
class Policy:
    """Minimum finding score (in [0, 1]) for each action; ``merge_min=None`` only suggests.

    Scores are probabilities pooled over the stages that ran (findings.find_issues): the
    mislabel score is the mean of the stages' probabilities that the suggested label is right,
    each stage that disagrees counting 0; the outlier score the mean of the kNN and cam-softmax
    probabilities that no labelled identity fits; the near-duplicate score is 0.5 exactly at
    the data-derived cut. So the thresholds are odds, not cosines: 0.75 is three to one.

    quarantine : a mislabeled finding the policy does not relabel (its suggested label is not
        certain enough) is dropped from the cleaned set rather than kept under a label the
        evidence says is wrong; ``False`` keeps it (action keep, reason "[kept: below …]")

    conservative (default): relabel at three to one, which with four stages needs at least
        three of them to agree; quarantine the other mislabeled findings; drop outliers at
        0.5, the default report floor, so every outlier found (more likely than not that no
        labelled identity fits); suggest merges without applying them. Conservative about labels: it
        never writes a label it is not sure of, and it does not keep one the evidence says is
        wrong. (Outliers were dropped at 0.6 until the eighth session; the findings between 0.5
        and 0.6 were 85% noise on dlib's plain real set and 100% on OMZ's, so keeping them
        kept labels the evidence called wrong: kept-label precision 0.994 → 0.998 for 0.1
        point more clean rows lost, docs/benchmarks.md.)
    balanced: relabel at 0.6, drop at 0.5 (more likely than not); apply merges scored 0.75.
    aggressive: act on any pooled majority (0.5); apply every merge suggestion from 0.5.
    """

    name: str
    relabel_min: float
    drop_min: float
    dedupe_min: float
    merge_min: float | None
    quarantine: bool = True

    def __post_init__(self):
        for name in ("relabel_min", "drop_min", "dedupe_min", "merge_min"):
            value = getattr(self, name)
            if value is None and name == "merge_min":
                continue
            if not is_real(value) or not 0.0 <= value <= 1.0:
                # a score is a probability: 2 would never act, -1 or NaN always or never
                raise ValueError(f"policy {self.name!r}: {name} must be a score in [0, 1], got {value!r}")
        if not is_flag(self.quarantine):  # bool("no") is True
            raise ValueError(f"policy {self.name!r}: quarantine must be True or False, got {self.quarantine!r}")


POLICIES = {
    "conservative": Policy("conservative", relabel_min=0.75, drop_min=0.5, dedupe_min=0.5, merge_min=None),
    "balanced": Policy("balanced", relabel_min=0.6, drop_min=0.5, dedupe_min=0.5, merge_min=0.75),
    "aggressive": Policy("aggressive", relabel_min=0.5, drop_min=0.5, dedupe_min=0.5, merge_min=0.5),
}


def get_policy(policy: str | Policy | dict) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, dict):  # a custom policy as report.json's parameters hold it
        return Policy(**policy)
    try:
        return POLICIES[policy]
    except KeyError:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}") from None


def decide_actions(manifest: pd.DataFrame, labels: np.ndarray, label_names: np.ndarray, label_col: str,
                   findings: Findings, policy: str | Policy = "conservative") -> pd.DataFrame:
    """The audit table: every input row, in input order, with the fc_* columns.

    Returns
    -------
    DataFrame
        The manifest's columns followed by fc_action, fc_label, fc_issue, fc_score, fc_reason.
    """
    policy = get_policy(policy)
    n = len(labels)
    issue = findings.issue
    score = findings.score
    given = label_names[labels].astype(object)
    final = given.copy()
    action = np.full(n, "keep", dtype=object)
    reason = findings.reason.copy()

    canonical = {}
    if policy.merge_min is not None and len(findings.merges):
        for row in findings.merges.itertuples(index=False):
            if row.score >= policy.merge_min:
                canonical[row.label] = row.merged_into
    if canonical:
        merged = np.array([lab in canonical for lab in given])
        final[merged] = [canonical[lab] for lab in given[merged]]
        action[merged] = "merge"
        for i in np.flatnonzero(merged & (issue != "duplicate_identity")):
            extra = f"label {given[i]} merged into {final[i]}"
            reason[i] = f"{reason[i]}; {extra}" if reason[i] else extra

    mislabeled = issue == "mislabeled"
    target = label_names[np.where(mislabeled, np.maximum(findings.suggested, 0), 0)].astype(object)
    target[mislabeled] = [canonical.get(t, t) for t in target[mislabeled]]
    # a row whose suggested label the applied merges make one with its own: its label (after
    # the merges) is the one the evidence names, so there is nothing to relabel or quarantine
    settled = mislabeled & (findings.suggested >= 0) & (target == final)
    for i in np.flatnonzero(settled):
        extra = f"{label_names[findings.suggested[i]]} merged with its label: the label stands"
        reason[i] = f"{reason[i]}; {extra}" if reason[i] else extra
    relabel = mislabeled & ~settled & (findings.suggested >= 0) & (score >= policy.relabel_min)
    final[relabel] = target[relabel]
    action[relabel] = "relabel"

    drop = (issue == "outlier") & (score >= policy.drop_min)
    quarantined = mislabeled & ~relabel & ~settled & policy.quarantine
    drop |= quarantined
    dedupe = (issue == "near_duplicate") & (score >= policy.dedupe_min)
    action[drop], action[dedupe] = "drop", "dedupe"
    final[drop | dedupe] = ""

    for i in np.flatnonzero(quarantined):
        reason[i] = f"{reason[i]} [quarantined: label looks wrong, the right one is below the {policy.name} threshold]"
    below = (issue != "") & (issue != "review") & (action == "keep") & ~settled
    for i in np.flatnonzero(below):
        reason[i] = f"{reason[i]} [kept: below {policy.name} threshold]"

    audit = manifest.copy()
    audit["fc_action"] = action
    audit["fc_label"] = final
    audit["fc_issue"] = issue
    audit["fc_score"] = np.round(score.astype(np.float64), 4)
    audit["fc_reason"] = reason
    audit["fc_source"] = "algorithm"
    return audit


# --------------------------------------------------------------------------- a person's decisions

DECISIONS = ("keep", "drop", "relabel", "merge")
DECISION_COLUMNS = ("path", "decision", "label", "note", "timestamp")


@dataclass(frozen=True)
class Decisions:
    """A person's decisions (review.html's export, or written by hand), one per path.

    table : path, decision (keep, drop, relabel, merge), label (the new label for relabel,
        the label merged into for merge; empty otherwise), note, timestamp; the last row for
        a path wins (``superseded`` counts the earlier ones)
    source : where they came from (a file's path, or a description), for error messages

    Built by hand (``Decisions(frame, "my pipeline")``) the table is checked and normalised
    as :func:`read_decisions` checks a file: ``path`` and ``decision`` required, ``label``
    required for relabel and merge, ``note`` and ``timestamp`` optional; bad rows raise
    :class:`~facecluster.errors.InputError` naming the row and column.
    """

    table: pd.DataFrame
    source: str
    superseded: int = 0

    def __post_init__(self):
        table, dropped = _checked_decisions(self.table, self.source)
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "superseded", self.superseded + dropped)


def _as_text(value) -> str:
    """A decisions cell as the text a file would hold: a missing value (None, NaN, pandas' NA)
    is empty; a whole float (a column of numbers with a gap reads as floats) is written as
    the whole number a manifest's text label is."""
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _checked_decisions(table: pd.DataFrame, source) -> tuple[pd.DataFrame, int]:
    """The decisions table checked (raises InputError naming ``source``, row and column),
    with the optional columns added, decision and label stripped, and one row per path (the
    last); returns it and how many earlier rows it dropped."""
    from .errors import InputError

    if not isinstance(table, pd.DataFrame):
        raise InputError(source, f"decisions must be a table (pandas DataFrame), got {type(table).__name__}")
    for column in ("path", "decision"):
        if column not in table.columns:
            raise InputError(source, f"missing column {column!r} (columns: {', '.join(map(str, table.columns))})")
    table = table.copy()
    for column in DECISION_COLUMNS:
        if column not in table.columns:
            table[column] = ""
        else:  # a hand-built table may hold None, NaN, NA or numbers: a missing value is empty text
            table[column] = pd.Series([_as_text(v) for v in table[column]], index=table.index, dtype=object)
    for i, (p, decision, label) in enumerate(zip(table["path"], table["decision"], table["label"]), start=1):
        if not p.strip():
            raise InputError(source, "empty path", row=i, column="path")
        decision = decision.strip()  # a hand-written " relabel " is the decision relabel
        if decision not in DECISIONS:
            raise InputError(source, f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}", row=i,
                             column="decision")
        if decision in ("relabel", "merge") and not label.strip():
            raise InputError(source, f"a {decision} decision needs the label to {'relabel' if decision == 'relabel' else 'merge into'}",
                             row=i, column="label")
    table = table[list(DECISION_COLUMNS)].copy()
    for column in ("decision", "label"):  # a hand-written " X " is the label X
        table[column] = table[column].str.strip()
    # paths stay verbatim (a manifest may hold " a.jpg"); apply_decisions matches a path
    # written with stray spaces by its stripped text where that names one manifest path
    last = table.drop_duplicates("path", keep="last")
    return last.reset_index(drop=True), len(table) - len(last)


def read_decisions(path: str | Path) -> Decisions:
    """Read decisions.csv: columns ``path`` and ``decision`` required, ``label`` required for
    relabel and merge, ``note`` and ``timestamp`` optional. Bad input raises
    :class:`~facecluster.errors.InputError` naming the file, row and column."""
    from .errors import InputError, not_utf8

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "decisions file not found") from None
    except UnicodeDecodeError as exc:
        raise not_utf8(path) from exc
    except pd.errors.EmptyDataError:
        raise InputError(path, "decisions file is empty: expected a header row path,decision,label,note,timestamp") from None
    except (pd.errors.ParserError, OSError) as exc:
        raise InputError(path, f"cannot read decisions: {exc}") from exc
    return Decisions(table, str(path))


def _decided_rows(decisions: Decisions, paths: pd.Series) -> tuple[pd.DataFrame, list, int]:
    """The decisions matched to manifest rows (column ``_row``; a path the manifest lists twice
    gives a row each), the paths not in the manifest, and the decisions superseded. A path is
    matched as written, else by its text without spaces around it where that names one
    manifest path (a later decision for the same row supersedes an earlier one)."""
    table = decisions.table.copy()
    superseded = int(decisions.superseded)
    known = table["path"].isin(paths)
    if not known.all():
        stripped = pd.Series(paths.to_numpy()).groupby(paths.str.strip().to_numpy()).unique()
        unique = {key: vals[0] for key, vals in stripped.items() if len(vals) == 1}
        table.loc[~known, "path"] = [unique.get(p.strip(), p) for p in table.loc[~known, "path"]]
        before = len(table)
        table = table.drop_duplicates("path", keep="last")
        superseded += before - len(table)
        known = table["path"].isin(paths)
    unknown = table.loc[~known, "path"].tolist()
    table = table[known].merge(pd.DataFrame({"path": paths.to_numpy(), "_row": np.arange(len(paths))}), on="path")
    return table, unknown, superseded


def _merge_targets(decisions: Decisions, table: pd.DataFrame, given: np.ndarray) -> list:
    """Each decision's label with merges chained (A into B, B into C: A's rows end in C, as
    the algorithm's merge groups do; a relabel into A ends in C too); a cycle (A into B, B
    into A) says two things at once and is refused. A merge into the row's own label moves
    nothing."""
    from .errors import InputError

    rows = table["_row"].to_numpy()
    into = {given[i]: label for i, decision, label in zip(rows, table["decision"], table["label"])
            if decision == "merge" and given[i] != label}

    def terminal(label: str) -> str:
        chain = [label]
        while label in into:
            label = into[label]
            if label in chain:
                raise InputError(decisions.source, "merge decisions form a cycle: "
                                 + " into ".join(chain + [label]) + "; keep one direction", column="label")
            chain.append(label)
        return label

    return [terminal(lab) if d in ("merge", "relabel") else lab for d, lab in zip(table["decision"], table["label"])]


def check_decisions(decisions: Decisions, manifest: pd.DataFrame, path_col: str, label_col: str) -> None:
    """What of a decisions file only the manifest can judge, checked before any work: merge
    decisions that form a cycle over the manifest's labels (:class:`~facecluster.errors.InputError`)."""
    paths = manifest[path_col].astype(str)
    table, _, _ = _decided_rows(decisions, paths)
    _merge_targets(decisions, table, manifest[label_col].astype(str).to_numpy(dtype=object))


def apply_decisions(audit: pd.DataFrame, decisions: Decisions, path_col: str, label_col: str) -> tuple[pd.DataFrame, dict]:
    """The audit with a person's decisions in place of the algorithm's, on the rows decided.

    keep: the given label, action keep; drop: action drop; relabel: the decision's label,
    action relabel; merge: the row's label merged into the decision's label, on every row the
    cleaned set carries under it (dropped and deduplicated rows stay out) that no decision of
    its own covers. A path listed twice in the manifest: the decision covers both rows. Each such row gets ``fc_source`` =
    ``person`` and the decision (and its note) at the head of ``fc_reason``; ``fc_issue`` and
    ``fc_score`` keep what the algorithm found. Paths not in the manifest are counted and
    listed in the summary, never silently dropped. Returns (audit, summary for report.json).
    """
    audit = audit.copy()
    paths = audit[path_col].astype(str)
    table, unknown, superseded = _decided_rows(decisions, paths)
    rows = table["_row"].to_numpy()

    action = audit["fc_action"].to_numpy(dtype=object).copy()
    final = audit["fc_label"].to_numpy(dtype=object).copy()
    reason = audit["fc_reason"].to_numpy(dtype=object).copy()
    source = audit["fc_source"].to_numpy(dtype=object).copy()
    given = audit[label_col].astype(str).to_numpy(dtype=object)
    decided = np.zeros(len(audit), dtype=bool)
    decided[rows] = True
    merged_rows = 0

    def mark(i: int, what: str, note: str) -> None:
        head = f"person: {what}" + (f" ({note})" if note else "")
        reason[i] = f"{head}; algorithm: {reason[i]}" if reason[i] else head
        source[i] = "person"

    table = table.assign(label=_merge_targets(decisions, table, given))
    for i, decision, label, note in zip(rows, table["decision"], table["label"], table["note"]):
        if decision == "keep":
            action[i], final[i] = "keep", given[i]
        elif decision == "drop":
            action[i], final[i] = "drop", ""
        elif decision == "relabel":  # into its own label (through a merge, say): kept as it is
            action[i], final[i] = ("relabel" if label != given[i] else "keep"), label
        elif decision == "merge":
            action[i], final[i] = "merge", label
        else:  # a Decisions checks its table when built; a table changed in place afterwards is not
            raise ValueError(f"{decisions.source}: unknown decision {decision!r}")
        mark(i, decision if decision in ("keep", "drop") else f"{decision} to {label}", note)
    # a merge decision moves every other row now carrying its label (the algorithm's labels
    # after its own relabels); rows the algorithm drops or deduplicates stay out
    merges = {given[i]: (label, paths.iloc[i], note) for i, decision, label, note
              in zip(rows, table["decision"], table["label"], table["note"]) if decision == "merge"}
    if merges:
        current = audit["fc_label"].astype(str).to_numpy(dtype=object)
        kept = np.isin(action, ("keep", "relabel", "merge"))
        others = np.flatnonzero(pd.Series(current).isin(merges).to_numpy() & kept & ~decided)
        for j in others:
            label, decided_on, note = merges[current[j]]
            action[j], final[j] = "merge", label
            mark(j, f"label {current[j]} merged into {label} (decided on {decided_on})", note)
        decided[others] = True
        merged_rows = len(others)

    audit["fc_action"], audit["fc_label"], audit["fc_reason"], audit["fc_source"] = action, final, reason, source
    summary = {"file": decisions.source, "decisions": int(len(decisions.table)), "applied": int(len(table)),
               "by_decision": {d: int((table["decision"] == d).sum()) for d in DECISIONS},
               "rows_by_person": int(decided.sum()), "rows_merged_with_a_decided_row": int(merged_rows),
               "superseded": superseded, "unknown_paths": len(unknown), "unknown_examples": unknown[:20]}
    return audit, summary


def cleaned_manifest(audit: pd.DataFrame, label_col: str) -> pd.DataFrame:
    """Rows to retrain on, the input's columns only, the label column holding the cleaned label."""
    kept = audit[audit["fc_action"].isin(["keep", "relabel", "merge"])]
    out = kept.drop(columns=list(AUDIT_COLUMNS)).copy()
    out[label_col] = kept["fc_label"]
    return out.reset_index(drop=True)


def action_counts(audit: pd.DataFrame) -> dict:
    counts = audit["fc_action"].value_counts()
    return {a: int(counts.get(a, 0)) for a in ACTIONS}


# --------------------------------------------------------------------------- writing


def write_outputs(out_dir: str | Path, tables: dict[str, pd.DataFrame], report: dict,
                  texts: dict[str, str] | None = None, writers: dict | None = None,
                  keep: tuple[str, ...] = ()) -> list[Path]:
    """Write every output as one set (:func:`facecluster.outputs.write_set`): staged in a
    temporary folder inside ``out_dir``, switched into place together, report.json last
    listing every other file with its SHA-256.

    ``tables`` become CSV files, ``report`` report.json, ``texts`` (name → content) text
    files, and ``writers`` (name → callable taking the staged path) any other file, such as
    the kNN graph cache. An exception (or Ctrl-C) while staging leaves the folder as it was.
    ``keep``: files a previous run listed that stay although this set does not rewrite them
    (the graph cache it reused).
    """
    files = {name: (lambda path, t=table: t.to_csv(path, index=False)) for name, table in tables.items()}
    files.update({name: (lambda path, t=text: path.write_text(t, encoding="utf-8")) for name, text in (texts or {}).items()})
    files.update(writers or {})
    return write_set(out_dir, files, report, _dump_report, keep=keep)


def _dump_report(report: dict, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
