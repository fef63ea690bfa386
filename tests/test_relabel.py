"""Policy rules of facecluster.relabel: thresholds, merges, the audit and cleaned tables, output writing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facecluster.errors import InputError
from facecluster.findings import ISSUES, Findings
from facecluster.relabel import (
    ACTIONS,
    AUDIT_COLUMNS,
    POLICIES,
    Policy,
    action_counts,
    check_output_dir,
    cleaned_manifest,
    decide_actions,
    get_policy,
    write_outputs,
)

NAMES = np.array(["ann", "bob", "cat", "dan"], dtype=object)
CODES = np.array([0, 0, 0, 1, 1, 2, 2, 3])
N = len(CODES)


def _manifest(codes=CODES) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(len(codes))],
                         "label": NAMES[codes], "camera": [f"cam{i % 3}" for i in range(len(codes))]})


def _findings(issue=None, score=None, suggested=None, merges=None, n=N) -> Findings:
    """The one place that builds Findings; fields the policy does not read get neutral defaults."""
    issue = np.array(issue if issue is not None else [""] * n, dtype=object)
    n = len(issue)
    zeros = np.zeros(n, dtype=np.float32)
    extra = {} if merges is None else {"merges": pd.DataFrame(merges, columns=["label", "merged_into", "score", "evidence"])}
    return Findings(issue=issue, score=np.asarray(score if score is not None else zeros, dtype=np.float32),
                    mislabel_score=zeros, outlier_score=zeros.copy(),
                    suggested=np.asarray(suggested if suggested is not None else np.full(n, -1), dtype=np.int64),
                    keep_of_group=np.full(n, -1, dtype=np.int64), review=np.zeros(n, dtype=bool),
                    reason=np.array([f"{i} evidence" if i else "" for i in issue], dtype=object), **extra)


def _one(issue: str, score: float, row: int = 0, suggested: int = -1, merges=None) -> Findings:
    issues, scores, sugg = [""] * N, np.zeros(N, np.float32), np.full(N, -1)
    issues[row], scores[row], sugg[row] = issue, score, suggested
    return _findings(issues, scores, sugg, merges)


def _audit(findings: Findings, policy="conservative", codes=CODES) -> pd.DataFrame:
    return decide_actions(_manifest(codes), codes, NAMES, "label", findings, policy)


RULES = [("mislabeled", "relabel_min", "relabel", "cat"), ("outlier", "drop_min", "drop", ""),
         ("near_duplicate", "dedupe_min", "dedupe", "")]


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize(("issue", "attr", "action", "label"), RULES)
def test_finding_at_threshold_is_acted_on_and_just_below_is_kept(name, issue, attr, action, label):
    threshold = np.float32(getattr(POLICIES[name], attr))
    at = _audit(_one(issue, threshold, suggested=2), name).iloc[0]
    assert (at.fc_action, at.fc_label, at.fc_reason) == (action, label, f"{issue} evidence")
    below = _audit(_one(issue, np.nextafter(threshold, np.float32(0)), suggested=2), name).iloc[0]
    if issue == "mislabeled":  # a label the evidence says is wrong is not kept: quarantined
        assert (below.fc_action, below.fc_label) == ("drop", "")
        assert below.fc_reason == (f"{issue} evidence [quarantined: label looks wrong, the right one is below the "
                                   f"{name} threshold]")
    else:
        assert (below.fc_action, below.fc_label) == ("keep", "ann")
        assert below.fc_reason == f"{issue} evidence [kept: below {name} threshold]"


def test_a_policy_without_quarantine_keeps_an_uncertain_mislabel():
    keep = Policy("keep-all", relabel_min=0.75, drop_min=0.6, dedupe_min=0.5, merge_min=None, quarantine=False)
    row = _audit(_one("mislabeled", 0.6, suggested=2), keep).iloc[0]
    assert (row.fc_action, row.fc_label) == ("keep", "ann") and row.fc_reason.endswith("[kept: below keep-all threshold]")


def test_relabel_writes_suggested_name_and_leaves_other_rows_untouched():
    audit = _audit(_one("mislabeled", 0.9, row=3, suggested=3))
    assert list(audit.fc_action) == ["keep"] * 3 + ["relabel"] + ["keep"] * 4
    assert list(audit.fc_label) == ["ann", "ann", "ann", "dan", "bob", "cat", "cat", "dan"]
    others = audit.drop(index=3)
    assert (others.fc_issue == "").all() and (others.fc_reason == "").all() and (others.fc_score == 0).all()


def test_decide_actions_does_not_modify_the_findings():
    findings = _one("outlier", 0.3)
    _audit(findings)
    assert list(findings.reason) == ["outlier evidence"] + [""] * (N - 1)


def test_conservative_only_suggests_merges():
    findings = _one("duplicate_identity", 0.99, row=4, merges=[("bob", "ann", 0.99, "strong")])
    audit = _audit(findings, "conservative")
    assert set(audit.fc_action) == {"keep"} and list(audit.fc_label) == list(NAMES[CODES])
    assert audit.fc_reason[4] == "duplicate_identity evidence [kept: below conservative threshold]"


@pytest.mark.parametrize(("name", "merge_score", "applied"), [
    ("balanced", 0.75, True), ("balanced", 0.74, False), ("aggressive", 0.5, True), ("aggressive", 0.49, False)])
def test_merge_applies_to_every_row_of_the_label_from_merge_min(name, merge_score, applied):
    findings = _one("duplicate_identity", 0.9, row=4, merges=[("bob", "ann", merge_score, "evidence")])
    audit = _audit(findings, name)
    bob = audit.iloc[[3, 4]]
    if applied:
        assert list(bob.fc_action) == ["merge", "merge"] and list(bob.fc_label) == ["ann", "ann"]
        assert audit.fc_reason[3] == "label bob merged into ann"
        assert audit.fc_reason[4] == "duplicate_identity evidence"
    else:
        assert list(bob.fc_action) == ["keep", "keep"] and list(bob.fc_label) == ["bob", "bob"]
        assert audit.fc_reason[4].endswith(f"[kept: below {name} threshold]")
    assert (audit.drop(index=[3, 4]).fc_action == "keep").all()


def test_merge_reason_is_appended_to_an_existing_reason():
    findings = _one("outlier", 0.1, row=3, merges=[("bob", "ann", 0.9, "evidence")])
    assert _audit(findings, "balanced").fc_reason[3] == "outlier evidence; label bob merged into ann"


def test_relabel_onto_a_merged_label_goes_to_the_canonical_label():
    findings = _one("mislabeled", 0.95, row=6, suggested=1, merges=[("bob", "ann", 0.8, "evidence")])
    row = _audit(findings, "balanced").iloc[6]
    assert (row.fc_action, row.fc_label) == ("relabel", "ann")


def test_audit_keeps_input_columns_verbatim_then_fc_columns_in_row_order():
    manifest = _manifest()[["camera", "path", "label"]]
    scores = np.array([0.123456, 0, 0, 0.987654, 0, 0, 0, 0.00004])
    findings = _findings(["outlier", "", "", "mislabeled", "", "", "", "near_duplicate"], scores,
                         [-1, -1, -1, 2, -1, -1, -1, -1])
    audit = decide_actions(manifest, CODES, NAMES, "label", findings, "balanced")
    assert list(audit.columns) == ["camera", "path", "label", *AUDIT_COLUMNS]
    pd.testing.assert_frame_equal(audit[list(manifest.columns)], manifest)
    assert list(audit.fc_score) == [0.1235, 0, 0, 0.9877, 0, 0, 0, 0.0]


def _mixed_audit() -> pd.DataFrame:
    findings = _findings(["outlier", "mislabeled", "near_duplicate", "", "", "mislabeled", "", ""],
                         [0.9, 0.9, 0.9, 0, 0, 0.1, 0, 0], [-1, 3, -1, -1, -1, 0, -1, -1],
                         merges=[("bob", "ann", 0.9, "evidence")])
    return _audit(findings, "aggressive")


def test_cleaned_manifest_holds_kept_relabelled_and_merged_rows_with_cleaned_labels():
    cleaned = cleaned_manifest(_mixed_audit(), "label")
    manifest = _manifest()
    assert list(cleaned.columns) == list(manifest.columns)
    # row 5's mislabel finding is too weak to relabel: quarantined, not kept under its label
    assert list(cleaned.path) == [f"img/{i}.jpg" for i in (1, 3, 4, 6, 7)]
    assert list(cleaned.label) == ["dan", "ann", "ann", "cat", "dan"]
    assert list(cleaned.camera) == list(manifest.camera[[1, 3, 4, 6, 7]])
    pd.testing.assert_index_equal(cleaned.index, pd.RangeIndex(5))


def test_action_counts_counts_every_action_including_zeros():
    assert action_counts(_mixed_audit()) == {"keep": 2, "relabel": 1, "drop": 2, "merge": 2, "dedupe": 1}
    assert action_counts(_audit(_findings())) == {"keep": N, "relabel": 0, "drop": 0, "merge": 0, "dedupe": 0}


def test_get_policy_rejects_unknown_names_listing_the_choices():
    with pytest.raises(ValueError, match="conservative, balanced, aggressive.*'strict'"):
        get_policy("strict")
    custom = Policy("mine", 0.1, 0.2, 0.3, None)
    assert get_policy(custom) is custom and get_policy("balanced") is POLICIES["balanced"]


def test_custom_policy_thresholds_and_name_are_used():
    strict = Policy("strict", relabel_min=0.95, drop_min=0.99, dedupe_min=0.9, merge_min=0.9)
    quarantined = _audit(_one("mislabeled", 0.94, suggested=2), strict).iloc[0]
    assert quarantined.fc_action == "drop" and quarantined.fc_reason.endswith("below the strict threshold]")
    kept = _audit(_one("outlier", 0.98), strict).iloc[0]
    assert kept.fc_action == "keep" and kept.fc_reason.endswith("[kept: below strict threshold]")
    assert _audit(_one("mislabeled", 0.96, suggested=2), strict).fc_action[0] == "relabel"
    merged = _audit(_one("", 0, merges=[("bob", "ann", 0.9, "e")]), strict)
    assert list(merged.fc_action[3:5]) == ["merge", "merge"]


def test_check_output_dir_refuses_to_overwrite_an_input(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="would be overwritten"):
        check_output_dir(out, [tmp_path / "faces.csv", tmp_path / "out" / ".." / "out" / "audit.csv"])
    assert check_output_dir(out, [tmp_path / "faces.csv", None, out / "faces.npy"]) == out


def test_check_output_dir_refuses_an_existing_file(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("x\n")
    with pytest.raises(InputError, match="not a folder"):
        check_output_dir(out, [])


class _Broken:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def to_csv(self, *args, **kwargs):
        raise self.exc


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_write_outputs_writes_nothing_when_a_file_fails(tmp_path, exc):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cleaned.csv").write_text("old\n")
    tables = {"cleaned.csv": _manifest(), "audit.csv": _Broken(exc)}
    with pytest.raises(type(exc)):
        write_outputs(out, tables, {"n": 1}, {"report.html": "<html></html>"})
    assert sorted(p.name for p in out.iterdir()) == ["cleaned.csv"]
    assert (out / "cleaned.csv").read_text() == "old\n"


def test_write_outputs_writes_every_file_on_success(tmp_path):
    out = tmp_path / "new" / "out"
    audit = _mixed_audit()
    report = {"counts": action_counts(audit), "n": np.int64(8), "rate": np.float32(0.5), "v": np.arange(2)}
    paths = write_outputs(out, {"cleaned.csv": cleaned_manifest(audit, "label"), "audit.csv": audit},
                          report, {"report.html": "<html></html>"})
    names = ["cleaned.csv", "audit.csv", "report.html", "report.json"]  # report.json last: it seals the set
    assert paths == [out / n for n in names] and sorted(p.name for p in out.iterdir()) == sorted(names)
    written = json.loads((out / "report.json").read_text())
    listed = written.pop("outputs")
    assert written == {**report, "n": 8, "rate": 0.5, "v": [0, 1]}
    assert sorted(listed) == ["audit.csv", "cleaned.csv", "report.html"]
    assert listed["audit.csv"]["bytes"] == (out / "audit.csv").stat().st_size
    assert len(pd.read_csv(out / "audit.csv")) == N


def test_a_suggestion_merged_into_the_rows_own_label_leaves_the_label_standing():
    """Row 0 (ann) looks like bob, and the policy merges bob into ann: the evidence names the
    label the row already has, so it is neither relabelled to its own label nor quarantined.
    Found by fuzzing ``clean`` with the aggressive policy on two tight labels."""
    codes = np.array([0, 1])
    findings = _findings(["mislabeled", ""], [0.9, 0.0], [1, -1], merges=[("bob", "ann", 0.9, "evidence")], n=2)
    audit = _audit(findings, "aggressive", codes)
    assert audit.fc_action.tolist() == ["keep", "merge"] and audit.fc_label.tolist() == ["ann", "ann"]
    assert audit.fc_reason[0].endswith("bob merged with its label: the label stands")
    # under a policy that only suggests merges, the row is relabelled to bob as before
    assert _audit(findings, "conservative", codes).fc_label.tolist() == ["bob", "bob"]


@st.composite
def _cases(draw):
    n = draw(st.integers(1, 12))
    codes = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    issue = draw(st.lists(st.sampled_from(["", *ISSUES]), min_size=n, max_size=n))
    score = draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n))
    suggested = [draw(st.integers(0, 3)) if i == "mislabeled" else -1 for i in issue]
    merge = draw(st.none() | st.floats(0, 1))
    merges = None if merge is None else [("bob", "ann", merge, "evidence")]
    return codes, _findings(issue, score, suggested, merges), draw(st.sampled_from(list(POLICIES)))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(_cases())
def test_audit_and_cleaned_manifest_invariants_for_any_findings(case):
    codes, findings, name = case
    audit = _audit(findings, name, codes)
    action = audit.fc_action.to_numpy()
    assert len(audit) == len(codes) and set(action) <= set(ACTIONS)
    gone = np.isin(action, ["drop", "dedupe"])
    assert (audit.fc_label[gone] == "").all() and (audit.fc_label[~gone] != "").all()
    # the label a row would get (its suggestion, or its own label, through the applied merges)
    policy = POLICIES[name]
    merges = findings.merges
    canonical = ({"bob": "ann"} if policy.merge_min is not None and len(merges) and merges.score.iloc[0] >= policy.merge_min
                 else {})
    names = np.asarray(NAMES, dtype=object)
    own = np.array([canonical.get(v, v) for v in names[codes]], dtype=object)
    told = np.array([canonical.get(names[s], names[s]) if s >= 0 else "" for s in findings.suggested], dtype=object)
    settled = (findings.issue == "mislabeled") & (told == own)
    relabel = (findings.issue == "mislabeled") & (findings.score >= policy.relabel_min) & ~settled
    np.testing.assert_array_equal(action == "relabel", relabel)
    # a relabel changes the label; a row whose suggestion the merges made its own label is not
    # relabelled, quarantined or called below threshold: its label stands
    assert (audit.fc_label[action == "relabel"] != audit.label[action == "relabel"]).all()
    assert (action[settled] == np.where(own[settled] != names[codes][settled], "merge", "keep")).all()
    assert not audit.fc_reason[settled].str.contains(r"\[kept: below|\[quarantined").any()
    assert audit.fc_reason[settled].str.contains("merged with its label: the label stands").all()
    kept = np.isin(action, ["keep", "relabel", "merge"])
    assert list(cleaned_manifest(audit, "label").path) == list(audit.path[kept])
