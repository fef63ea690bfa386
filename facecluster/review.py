"""review.html: the rows a person should look at, best decisions first, and decisions.csv.

The queue holds every finding no person has decided yet (``fc_source`` ≠ ``person``),
ordered by how much a decision is worth: closest to the policy's threshold for its issue first
(where the algorithm is least sure which way to act), then the larger identity first (more
images ride on it), then input order. A duplicate identity is one card for all its flagged
rows. The page is one self-contained file: the queue is embedded as JSON (every ``<``, ``>``
and ``&`` escaped, so manifest text can never close the script), rendered a page of cards at
a time by a small script that sets text with ``textContent`` only. Thumbnails are relative
links to the image files, made only for paths that resolve inside the image root (the
manifest's folder or ``--image-root``); the page reads nothing else. Decisions are kept in the
browser's localStorage and exported as decisions.csv (path, decision, label, note,
timestamp), which ``clean --decisions`` applies on every later run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from .relabel import get_policy
from .report import resolve_image_root

EXAMPLES_PER_LABEL = 4
# what accepting a finding means, per issue (the page's `a` key)
ACCEPT = {"mislabeled": "relabel", "outlier": "drop", "near_duplicate": "drop", "duplicate_identity": "merge",
          "review": "drop"}


def _thresholds(policy) -> dict:
    policy = get_policy(policy)
    return {"mislabeled": policy.relabel_min, "outlier": policy.drop_min, "near_duplicate": policy.dedupe_min,
            "duplicate_identity": policy.merge_min if policy.merge_min is not None else 0.5, "review": 0.5}


def review_queue(audit: pd.DataFrame, label_col: str, policy="conservative") -> pd.DataFrame:
    """The rows waiting for a person, in the order they are shown: one row per audit row,
    with ``row`` (0-based), ``margin`` (distance of the score from the policy's threshold for
    its issue) and ``label_size`` (rows carrying the given label)."""
    thresholds = _thresholds(policy)
    issue = audit["fc_issue"].astype(str)
    waiting = (issue != "") & (audit["fc_source"].astype(str) != "person")
    sizes = audit[label_col].astype(str).map(audit[label_col].astype(str).value_counts())
    queue = pd.DataFrame({"row": np.flatnonzero(waiting.to_numpy())})
    queue["issue"] = issue.to_numpy()[queue["row"]]
    score = audit["fc_score"].to_numpy(dtype=np.float64)[queue["row"]]
    queue["margin"] = np.abs(score - queue["issue"].map(thresholds).to_numpy(dtype=np.float64))
    queue["label_size"] = sizes.to_numpy()[queue["row"]]
    return queue.sort_values(["margin", "label_size", "row"], ascending=[True, False, True],
                             kind="stable").reset_index(drop=True)


class _Links:
    """Relative links from the page's folder to image files inside ``root``; "" for a path
    that resolves outside it (symlinks followed, nothing opened)."""

    def __init__(self, root: Path | None, page_dir: Path):
        self.root, self.page_dir = root, page_dir
        self.outside = 0

    def __call__(self, path: str) -> str:
        if self.root is None:
            return ""
        try:
            target = (self.root / path).resolve()
        except (OSError, RuntimeError, ValueError):
            self.outside += 1
            return ""
        if not target.is_relative_to(self.root):
            self.outside += 1
            return ""
        return quote(os.path.relpath(target, self.page_dir).replace(os.sep, "/"))


def _script_json(value) -> str:
    """JSON safe inside <script>: no character of it can end the element or open a comment."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def review_data(result, out_dir: str | Path | None = None, image_root: str | Path | None = None) -> dict:
    """What review.html shows, as plain values (the page embeds it as JSON)."""
    audit = result.audit
    fs = result.faceset
    path_col, label_col = fs.path_col, fs.label_col
    policy = result.report["parameters"]["policy"]
    policy_name = policy["name"] if isinstance(policy, dict) else str(policy)
    queue = review_queue(audit, label_col, policy)
    root = resolve_image_root(result, image_root)
    page_dir = Path(out_dir).resolve() if out_dir is not None else Path.cwd()
    link = _Links(root, page_dir)
    paths = audit[path_col].astype(str).to_numpy()
    given = audit[label_col].astype(str).to_numpy()
    names = np.asarray(fs.label_names).astype(str)
    suggested = result.findings.suggested
    # where the findings name no label (outliers, review), the kNN votes' best other label
    nearest_other = result.signals.agreement.best_other
    keep_of_group = result.findings.keep_of_group
    merges = dict(zip(result.identities["label"].astype(str), result.identities["merged_into"].astype(str))) \
        if len(result.identities) else {}

    cards, grouped = [], {}
    for row, issue, label_size in zip(queue["row"].to_numpy(), queue["issue"], queue["label_size"].to_numpy()):
        label = given[row]
        if issue == "duplicate_identity":  # one card per label: all its flagged rows decided together
            if label in grouped:
                cards[grouped[label]]["rows"].append(int(row))
                continue
            grouped[label] = len(cards)
        proposal, hint = "", ""
        if issue == "duplicate_identity":
            proposal = merges.get(label, "")
        elif suggested[row] >= 0:
            proposal = names[suggested[row]]
        elif nearest_other[row] >= 0:
            hint = names[nearest_other[row]]
        partner = int(keep_of_group[row]) if issue == "near_duplicate" and keep_of_group[row] >= 0 else -1
        cards.append({"rows": [int(row)], "issue": issue, "label": label, "proposal": proposal, "hint": hint,
                      "partner": partner, "score": float(audit["fc_score"].iat[row]),
                      "action": str(audit["fc_action"].iat[row]), "reason": str(audit["fc_reason"].iat[row]),
                      "size": int(label_size)})

    shown_labels = {c["label"] for c in cards} | {c[k] for c in cards for k in ("proposal", "hint") if c[k]}
    # examples of a label: its rows without a finding first, then the others, in input order
    examples: dict[str, list[int]] = {}
    if shown_labels:
        members = np.flatnonzero(pd.Series(given).isin(shown_labels).to_numpy())
        flagged = audit["fc_issue"].astype(str).to_numpy()[members] != ""
        members = members[np.lexsort((members, flagged))]
        for label, rows in pd.Series(members).groupby(given[members], sort=False):
            examples[str(label)] = [int(r) for r in rows.to_numpy()[:EXAMPLES_PER_LABEL + 1]]
    needed = sorted({r for c in cards for r in c["rows"]} | {c["partner"] for c in cards if c["partner"] >= 0}
                    | {r for rows in examples.values() for r in rows})
    images = {str(r): [paths[r], link(paths[r])] for r in needed}
    return {"manifest": str(fs.source.get("manifest", "")), "rows": int(len(audit)), "policy": policy_name,
            "queue_rows": int(len(queue)),
            "decided_by_person": int((audit["fc_source"] == "person").sum()),
            "image_root": str(root) if root is not None else "", "images_outside_root": link.outside,
            "accept": ACCEPT, "cards": cards, "examples": examples, "images": images}


def render_review(result, out_dir: str | Path | None = None, image_root: str | Path | None = None) -> str:
    """review.html as a string (see the module docstring)."""
    data = review_data(result, out_dir, image_root)
    return _PAGE.replace("/*DATA*/null", _script_json(data))


_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>facecluster review</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #f6f6f6; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ccc; padding: 8px 16px; z-index: 2; }
header h1 { font-size: 18px; margin: 0 0 4px; }
header .bar > * { margin-right: 10px; }
.keys { color: #555; font-size: 12px; }
main { padding: 12px 16px; max-width: 1200px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px; margin-bottom: 10px; }
.card.focus { outline: 3px solid #1f77b4; }
.card.decided { opacity: 0.55; }
.card .head { font-weight: 600; }
.card .issue { padding: 1px 6px; border-radius: 3px; color: #fff; }
.mislabeled { background: #d62728; } .outlier { background: #9467bd; } .near_duplicate { background: #1f77b4; }
.duplicate_identity { background: #ff7f0e; } .review { background: #7f7f7f; }
.strip { display: flex; align-items: center; gap: 6px; margin: 6px 0; flex-wrap: wrap; }
.strip .name { min-width: 160px; font-size: 12px; color: #444; }
.thumb { width: 96px; height: 96px; object-fit: cover; background: #eee; border: 1px solid #ccc; }
.thumb.main { width: 144px; height: 144px; }
.nothumb { width: 96px; height: 96px; display: inline-flex; align-items: center; justify-content: center;
  background: #eee; color: #888; font-size: 10px; border: 1px solid #ccc; overflow: hidden; word-break: break-all; }
.evidence { font-size: 12px; color: #444; }
.decision { font-weight: 600; color: #2a7; }
</style></head><body>
<header>
<h1>facecluster review</h1>
<div class=bar>
<span id=summary></span>
<label>issue <select id=issue></select></label>
<label>label <input id=label size=16 placeholder="filter by label"></label>
<label><input type=checkbox id=undecided checked> undecided only</label>
<button id=prev>&larr; page</button><span id=page></span><button id=next>page &rarr;</button>
<button id=export>Export decisions.csv</button>
<span id=decided></span>
</div>
<div class=keys>Keys: <b>j</b>/<b>k</b> next/previous card &middot; <b>a</b> accept the finding &middot;
<b>x</b> reject (keep as labelled) &middot; <b>r</b> relabel to&hellip; &middot; <b>d</b> drop &middot;
<b>m</b> merge label into&hellip; &middot; <b>s</b> skip &middot; <b>u</b> undo &middot; <b>n</b>/<b>p</b> next/previous page</div>
</header>
<main id=cards></main>
<script id=data type="application/json">/*DATA*/null</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const PAGE = 25;
const KEY = "facecluster-review:" + D.manifest + ":" + D.rows;
let decisions = Object.create(null);  // keyed by path: no prototype, so "__proto__" is a path like any
try { Object.assign(decisions, JSON.parse(localStorage.getItem(KEY) || "{}")); } catch (e) {}
let view = [], page = 0, focus = 0;
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function save() { try { localStorage.setItem(KEY, JSON.stringify(decisions)); } catch (e) {} }
function decisionOf(card) { return decisions[D.images[card.rows[0]][0]]; }
function thumb(row, main) {
  const img = D.images[row];
  if (img && img[1]) {
    const t = el("img", "thumb" + (main ? " main" : ""));
    t.alt = img[0]; t.title = img[0]; t.loading = "lazy"; t.src = img[1];
    t.onerror = () => t.replaceWith(el("span", "nothumb", img[0]));
    return t;
  }
  return el("span", "nothumb", img ? img[0] : String(row));
}
function strip(name, rows, first) {
  const s = el("div", "strip");
  s.appendChild(el("span", "name", name));
  if (first !== undefined) s.appendChild(thumb(first, true));
  for (const r of (rows || []).filter((r) => r !== first).slice(0, 4)) s.appendChild(thumb(r, false));
  return s;
}
function filterView() {
  const issue = $("issue").value, label = $("label").value.trim().toLowerCase(), undecided = $("undecided").checked;
  view = [];
  D.cards.forEach((c, i) => {
    if (issue && c.issue !== issue) return;
    if (label && !c.label.toLowerCase().includes(label) && !c.proposal.toLowerCase().includes(label)) return;
    if (undecided && decisionOf(c)) return;
    view.push(i);
  });
  page = Math.min(page, Math.max(0, Math.ceil(view.length / PAGE) - 1));
}
function render() {
  const box = $("cards");
  box.textContent = "";
  const pages = Math.max(1, Math.ceil(view.length / PAGE));
  $("page").textContent = " " + (page + 1) + " / " + pages + " ";
  const slice = view.slice(page * PAGE, page * PAGE + PAGE);
  focus = Math.min(focus, Math.max(0, slice.length - 1));
  slice.forEach((ci, j) => {
    const c = D.cards[ci];
    const card = el("div", "card" + (j === focus ? " focus" : "") + (decisionOf(c) ? " decided" : ""));
    card.dataset.card = ci;
    const head = el("div", "head");
    head.appendChild(el("span", "issue " + c.issue, c.issue));
    head.appendChild(document.createTextNode(" score " + c.score.toFixed(3) + " · algorithm: " + c.action +
      (c.rows.length > 1 ? " · " + c.rows.length + " rows" : "") + " · " + D.images[c.rows[0]][0]));
    card.appendChild(head);
    if (c.issue === "near_duplicate" && c.partner >= 0) {
      card.appendChild(strip("this copy (left) and the image kept (right)", [c.partner], c.rows[0]));
    } else if (c.issue === "duplicate_identity") {
      card.appendChild(strip("label " + c.label + " (" + c.size + " images)", (D.examples[c.label] || []).concat(c.rows).slice(0, 6)));
      if (c.proposal) card.appendChild(strip("label " + c.proposal, D.examples[c.proposal] || []));
    } else {
      card.appendChild(strip("given: " + c.label + " (" + c.size + " images)", D.examples[c.label] || [], c.rows[0]));
      if (c.proposal) card.appendChild(strip("suggested: " + c.proposal, D.examples[c.proposal] || []));
      else if (c.hint) card.appendChild(strip("nearest other label: " + c.hint, D.examples[c.hint] || []));
    }
    card.appendChild(el("div", "evidence", c.reason));
    const d = decisionOf(c);
    if (d) card.appendChild(el("div", "decision", "decided: " + d.decision + (d.label ? " → " + d.label : "")));
    card.addEventListener("click", () => { focus = j; render(); });
    box.appendChild(card);
  });
  if (!slice.length) box.appendChild(el("p", "", "Nothing to review under this filter."));
  const n = Object.keys(decisions).length;
  $("decided").textContent = n + " decision" + (n === 1 ? "" : "s");
  const f = box.querySelector(".card.focus");
  if (f && f.scrollIntoView) f.scrollIntoView({block: "nearest"});
}
function decide(decision, label) {
  const slice = view.slice(page * PAGE, page * PAGE + PAGE);
  if (!slice.length) return;
  const c = D.cards[slice[focus]];
  const note = c.issue + " " + c.score.toFixed(3);
  const stamp = new Date().toISOString();
  for (const r of c.rows) decisions[D.images[r][0]] = {decision: decision, label: label || "", note: note, timestamp: stamp};
  save();
  advance();
}
function advance() {
  const slice = view.slice(page * PAGE, page * PAGE + PAGE);
  if ($("undecided").checked) { filterView(); }
  else if (focus + 1 < slice.length) focus += 1;
  else if ((page + 1) * PAGE < view.length) { page += 1; focus = 0; }
  render();
}
function current() { const s = view.slice(page * PAGE, page * PAGE + PAGE); return s.length ? D.cards[s[focus]] : null; }
function accept() {
  const c = current(); if (!c) return;
  const what = D.accept[c.issue] || "drop";
  if (what === "relabel" || what === "merge") {
    if (c.proposal) decide(what, c.proposal); else decide("drop");
  } else decide(what);
}
function ask(what) {
  const c = current(); if (!c) return;
  const label = window.prompt(what + " " + D.images[c.rows[0]][0] + " to label:", c.proposal || c.hint || "");
  if (label && label.trim()) decide(what, label.trim());
}
function undo() {
  const c = current(); if (!c) return;
  for (const r of c.rows) delete decisions[D.images[r][0]];
  save(); render();
}
function csvCell(v) { v = String(v); return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
function exportCsv() {
  const lines = ["path,decision,label,note,timestamp"];
  for (const [path, d] of Object.entries(decisions))
    lines.push([path, d.decision, d.label, d.note, d.timestamp].map(csvCell).join(","));
  const blob = new Blob([lines.join("\n") + "\n"], {type: "text/csv"});
  const a = el("a"); a.href = URL.createObjectURL(blob); a.download = "decisions.csv";
  document.body.appendChild(a); a.click(); a.remove();
}
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
  const slice = view.slice(page * PAGE, page * PAGE + PAGE);
  const keys = {
    j: () => { if (focus + 1 < slice.length) focus += 1; else if ((page + 1) * PAGE < view.length) { page += 1; focus = 0; } render(); },
    k: () => { if (focus > 0) focus -= 1; else if (page > 0) { page -= 1; focus = PAGE - 1; } render(); },
    a: accept, x: () => decide("keep"), d: () => decide("drop"), r: () => ask("relabel"), m: () => ask("merge"),
    s: () => { if (focus + 1 < slice.length) focus += 1; else if ((page + 1) * PAGE < view.length) { page += 1; focus = 0; } render(); },
    u: undo,
    n: () => { if ((page + 1) * PAGE < view.length) { page += 1; focus = 0; render(); } },
    p: () => { if (page > 0) { page -= 1; focus = 0; render(); } },
  };
  keys.ArrowDown = keys.j; keys.ArrowUp = keys.k;
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
});
const counts = {};
for (const c of D.cards) counts[c.issue] = (counts[c.issue] || 0) + 1;
const sel = $("issue");
sel.appendChild(new Option("all (" + D.cards.length + ")", ""));
for (const [k, v] of Object.entries(counts)) sel.appendChild(new Option(k + " (" + v + ")", k));
$("summary").textContent = D.queue_rows + " rows waiting (" + D.cards.length + " cards) of " + D.rows +
  (D.decided_by_person ? " · " + D.decided_by_person + " decided in earlier runs" : "") + " · policy " + D.policy;
for (const id of ["issue", "label", "undecided"]) $(id).addEventListener("input", () => { page = 0; focus = 0; filterView(); render(); });
$("prev").onclick = () => { if (page > 0) { page -= 1; focus = 0; render(); } };
$("next").onclick = () => { if ((page + 1) * PAGE < view.length) { page += 1; focus = 0; render(); } };
$("export").onclick = exportCsv;
filterView(); render();
document.body.dataset.ready = "1";
</script>
</body></html>
"""
