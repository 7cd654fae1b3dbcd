"""``nlsearch leaderboard render``: ``leaderboard/README.md`` and ``leaderboard/index.html``.

The page is static (no server, no network, no external script): one section per protocol version and
budget track with a table that sorts when a header is clicked (a few lines of inline JavaScript), the
published claims as the reproduction judged them on that track (from its ``report.json``, when one is
given or found at ``results/reproduce/report.json`` beside the leaderboard folder) and the four plots
of ``plots.py`` inlined as SVG. The README shows the same tables and links the same plots, written as
``plots/<protocol>_<budget>_<plot>.svg``. Every string that comes from an entry (names, authors) or a
report is escaped: they are data, and cannot inject markup or script into the page.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from urllib.parse import quote
from typing import Dict, List, Literal, Optional, Tuple, Union

import pandas as pd
from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError

from nlsearch.display import markdown_table
from nlsearch.io import write_text
from nlsearch.leaderboard.claims import OUTCOMES, tally
from nlsearch.leaderboard.plots import PLOTS, TITLES, plot_svgs
from nlsearch.leaderboard.protocol import Protocol, load_protocol
from nlsearch.leaderboard.store import DEFAULT_ROOT, Store
from nlsearch.leaderboard.table import LEAD_ALPHA, claim_numbers, display, ranked, task_cells, task_headers

SCRIPT = """
document.querySelectorAll("table.leaderboard").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var numeric = th.dataset.type === "number";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return ascending ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.leaderboard { border-collapse: collapse; font-size: 0.9em; }
table.leaderboard th, table.leaderboard td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
table.leaderboard td { white-space: nowrap; }
table.leaderboard td .seeds { display: block; font-size: 0.8em; color: #666; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table.leaderboard th { cursor: pointer; background: #f3f3f3; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
table.claims { border-collapse: collapse; font-size: 0.85em; max-width: 100%; }
table.claims th, table.claims td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }
table.claims th { text-align: left; background: #f3f3f3; }
table.claims td.numbers { white-space: nowrap; font-size: 0.95em; }
table.claims details { max-width: 40em; }
table.claims summary { white-space: nowrap; }
.verdict-reproduced { color: #1a7f37; } .verdict-not-reproduced { color: #b42318; }
.verdict-unresolved { color: #9a6700; }
.verdict-not-testable, .verdict-pending { color: #666; }
.plots figure { margin: 0; }
"""


def tracks(index: pd.DataFrame, protocol: Optional[Protocol]) -> List[Tuple[str, str]]:
    """Every (protocol, budget) present, the current protocol's default track first."""
    found = list(dict.fromkeys(zip(index.protocol, index.budget)))
    if protocol is not None:
        first = (protocol.ref, protocol.load_budget().ref)
        found.sort(key=lambda t: (t != first, t[0] != protocol.ref))
    return found


def _number(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


def html_table(index: pd.DataFrame, protocol: str, budget: str) -> str:
    table = ranked(index, protocol, budget)
    tasks = list(dict.fromkeys(index[(index.protocol == protocol) & (index.budget == budget)].task))
    heads = [("rank", "number"), ("name", "text"), ("kind", "text"), ("depth", "number"), ("params", "number"),
             ("state", "number")] + [(h, "number") for h in task_headers(index, tasks)] + [("tokens/s", "number")]
    parts = ["<div class=\"table-wrap\"><table class=\"leaderboard\">", "<thead><tr>"]
    parts += [f"<th data-type=\"{kind}\" scope=\"col\">{_breakable(h)}</th>" for h, kind in heads]
    parts.append("</tr></thead><tbody>")
    shown = {task: task_cells(table, task) for task in tasks}
    for i, r in enumerate(table.to_dict("records")):
        cells = [(str(r["rank"]), _number(r["rank"])), (r["name"], r["name"]), (r["kind"], r["kind"]),
                 (str(r["nesting_depth"]), _number(r["nesting_depth"])), (f"{r['params']:,}", _number(r["params"])),
                 (f"{r['state_size']:,}", _number(r["state_size"]))]
        cells = [(html.escape(t), k) for t, k in cells]
        for task in tasks:
            value, note = shown[task][i]                    # the note on a line of its own: columns stay narrow
            note = f"<span class=\"seeds\">{html.escape(note)}</span>" if note else ""
            cells.append((html.escape(value) + note, _number(r[f"{task}.mean"])))
        speed = r["tokens_per_s"]
        cells.append(("-" if math.isnan(speed) else f"{speed:,.0f}", _number(speed)))
        row = "".join(f"<td data-sort=\"{html.escape(k)}\">{t}</td>" for t, k in cells)
        parts.append(f"<tr>{row}</tr>")
    parts.append("</tbody></table></div>")
    return "\n".join(parts)


def _breakable(header: str) -> str:
    """A column header, escaped, that may wrap after ``_`` and ``@`` (long task names stack into a
    narrow column instead of widening the table past the window; the cells themselves never wrap)."""
    return re.sub(r"([_@])", r"\1<wbr>", html.escape(header))


def _plot_name(protocol: str, budget: str, plot: str) -> str:
    return f"{protocol}_{budget}_{plot}.svg".replace("@", "v")


_MD_SPECIAL = re.compile(r"([\\`*_\[\]()#!|~])")


def _escape_md(text: str) -> str:
    """Plain text in a Markdown table cell: one line, HTML escaped, Markdown syntax backslash-escaped
    (no heading, link, image or emphasis can come out of an entry's name)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(" ".join(str(text).split()), quote=False))


REPORT = Path("results/reproduce/report.json")    # beside the leaderboard folder: root.parent / REPORT


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ReportedClaim(_Loose):
    claim: str
    source: str
    outcome: Literal[OUTCOMES]
    reason: str
    numbers: Dict[str, Tuple[Optional[float], Optional[float], int]] = {}    # key: (mean, std, n)


class RunCell(_Loose):
    done: NonNegativeInt
    needed: NonNegativeInt


class ClaimsReport(_Loose):
    """What the page takes from a reproduction's ``report.json``: its track and its verdicts."""

    protocol: str
    budget: str
    written: Optional[str] = None
    commit: Optional[str] = None
    runs: Optional[Dict[str, Dict[str, RunCell]]] = None                  # model: task: its runs
    seed_runs: Optional[List[RunCell]] = None          # runs beyond the protocol's seeds, for claims
    claims: List[ReportedClaim]

    def runs_done(self) -> Optional[Tuple[int, int]]:
        """(runs finished, runs needed) over every cell, the claims' extra seeds included."""
        if not self.runs:
            return None
        cells = [c for tasks in self.runs.values() for c in tasks.values()] + list(self.seed_runs or ())
        return sum(c.done for c in cells), sum(c.needed for c in cells)

    def tally(self) -> str:
        return tally([c.outcome for c in self.claims])


def load_report(path: Union[str, Path]) -> ClaimsReport:
    """A reproduction's ``report.json``; a file that is not one is refused, naming the file and the key."""
    path = Path(path)
    try:
        return ClaimsReport.model_validate(json.loads(path.read_text()))
    except OSError as err:
        raise ValueError(f"{path}: cannot read the reproduction report ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise ValueError(f"{path}: not a reproduction report: {where}: {first['msg']}") from None


def _report_link(report: Path, root: Path) -> str:
    """The human report (``report.md`` beside ``report.json``) as a relative URL from the page: a path,
    percent-encoded, so no report path can become another scheme's link or end a Markdown link."""
    return quote(Path(os.path.relpath(report.with_suffix(".md"), root)).as_posix())


def _report_facts(report: ClaimsReport) -> str:
    """When and from what the report was written, as far as it says: "written …, commit …, N of M runs"."""
    done = report.runs_done()
    parts = [f"written {report.written}" if report.written else "", f"commit {report.commit}" if report.commit else "",
             f"{done[0]} of {done[1]} runs finished" if done else ""]
    return ", ".join(p for p in parts if p)


def claims_markdown(report: ClaimsReport, link: str) -> List[str]:
    facts = _report_facts(report)
    facts = f" ({_escape_md(facts)})" if facts else ""
    lines = ["### Published claims", "",
             f"{report.tally()}; judged by `nlsearch reproduce` on this track. Its [report]({link}) gives each "
             f"verdict's reason, the pairs compared and the source's setting beside ours{facts}.",
             "",
             "| claim | source | verdict | numbers (mean ± std over seeds, n) |", "|---|---|---|---|"]
    for c in report.claims:
        numbers = "<br>".join(_escape_md(x) for x in claim_numbers(c.numbers)) or "-"
        lines.append(f"| {_escape_md(c.claim)} | {_escape_md(c.source)} | **{c.outcome}** | {numbers} |")
    return lines + [""]


def claims_html(report: ClaimsReport, link: str) -> str:
    facts = _report_facts(report)
    facts = f", {html.escape(facts)}" if facts else ""
    parts = ["<h3>Published claims</h3>",
             f"<p>{html.escape(report.tally())}; judged by <code>nlsearch reproduce</code> on this track (report: "
             f"<a href=\"{html.escape(link)}\">{html.escape(link)}</a>{facts}). "
             "Open a verdict for its reason.</p>",
             "<div class=\"table-wrap\"><table class=\"claims\"><thead><tr><th scope=\"col\">claim</th>"
             "<th scope=\"col\">source</th><th scope=\"col\">verdict</th>"
             "<th scope=\"col\">numbers (mean ± std over seeds, n)</th></tr></thead><tbody>"]
    for c in report.claims:
        numbers = "<br>".join(html.escape(x) for x in claim_numbers(c.numbers)) or "-"
        css = "verdict-" + c.outcome.replace(" ", "-")
        parts.append(f"<tr><td>{html.escape(c.claim)}</td><td>{html.escape(c.source)}</td>"
                     f"<td><details><summary class=\"{css}\"><b>{html.escape(c.outcome)}</b></summary>"
                     f"{html.escape(c.reason)}</details></td><td class=\"numbers\">{numbers}</td></tr>")
    parts.append("</tbody></table></div>")
    return "\n".join(parts)


def render(root: Union[str, Path] = DEFAULT_ROOT, protocol: Union[Protocol, str, Path, None] = None,
           report: Union[str, Path, None] = None) -> Tuple[Path, Path]:
    """Writes ``root/README.md``, ``root/index.html`` and ``root/plots/*.svg``; returns the two pages.
    ``report``: a reproduction's ``report.json`` whose claims the page shows on its track (None: the one
    at ``root/../results/reproduce/report.json`` if there is one). Read before anything is written."""
    root = Path(root)
    protocol = protocol if isinstance(protocol, Protocol) or protocol is None else load_protocol(protocol)
    if report is None and (root.parent / REPORT).is_file():
        report = root.parent / REPORT
    claims = None if report is None else load_report(report)
    index = Store(root).index()
    md = [README_HEAD]
    page = [f"<h1>nlsearch leaderboard</h1><p>{len(index.id.unique())} entries. Click a column header to sort."
            f" Ranks: per task by the mean over seeds; overall by the mean task rank. Under a task's mean:"
            f" <i>best</i>, or <i>≈ best</i> where the seeds cannot tell it from the best (Welch's t-test,"
            f" p ≥ {LEAD_ALPHA}, not adjusted for the entries compared).</p>"]
    if index.empty:
        md.append("No entries yet.\n")
        page.append("<p>No entries yet.</p>")
    shown_tracks = tracks(index, protocol)
    if claims is not None and (claims.protocol, claims.budget) not in shown_tracks:
        shown_tracks.append((claims.protocol, claims.budget))         # its claims, before its first entry
    for ref, budget in shown_tracks:
        rows = index[(index.protocol == ref) & (index.budget == budget)]
        heading = f"{ref}, budget {budget}"
        page.append(f"<section><h2>{html.escape(heading)}</h2>")
        md += [f"## {heading}", ""]
        if len(rows):
            shown = display(index, ref, budget)
            shown["name"] = [_escape_md(n) for n in shown["name"]]
            md += [markdown_table(shown), ""]
            page.append(html_table(index, ref, budget))
        else:
            md += ["No entries on this track yet.", ""]
            page.append("<p>No entries on this track yet.</p>")
        if claims is not None and (claims.protocol, claims.budget) == (ref, budget):
            link = _report_link(Path(report), root)
            md += claims_markdown(claims, link)
            page.append(claims_html(claims, link))
        if len(rows):
            svgs = plot_svgs(rows)
            page.append("<div class=\"plots\">")
            for plot in PLOTS:
                name = _plot_name(ref, budget, plot)
                write_text(svgs[plot], root / "plots" / name)
                md.append(f"![{TITLES[plot]}](plots/{name})")
                page.append(f"<figure class=\"plot\" data-plot=\"{plot}\">{svgs[plot]}</figure>")
            md.append("")
            page.append("</div>")
        page.append("</section>")
    readme = write_text("\n".join(md) + "\n", root / "README.md")
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>nlsearch leaderboard</title>"
           f"<link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head><body>\n" + "\n".join(page)
           + f"\n<script>{SCRIPT}</script></body></html>\n")
    return readme, write_text(doc, root / "index.html")


README_HEAD = f"""# leaderboard

Every number here was produced by nlsearch itself under the protocol in [PROTOCOL.md](PROTOCOL.md)
(machine-readable: [protocol.yaml](protocol.yaml)); a submitter's own numbers are only accepted after
the leaderboard re-ran seeds of its choosing and found them within tolerance. One file per entry in
`entries/<protocol>/<budget>/`, indexed into `index.parquet`. This page is generated by
`nlsearch leaderboard render` (also `index.html`: sortable table and plots, no server needed).

```bash
.venv/bin/nlsearch submit my_model.yaml --name my-model --author "A. Person"  # [--budget cpu] [--results FILE]
.venv/bin/nlsearch leaderboard [--task recall_small] [--sort params]          # print the table
.venv/bin/nlsearch leaderboard render                         # README.md, index.html, plots/
.venv/bin/nlsearch reproduce --budget cpu --workers 2         # baselines + results/reproduce/report.md
```

Columns: rank (mean of the per-task ranks), nesting depth (levels of the nesting profile), parameters,
state size (numbers carried per sequence at the longest eval length), each task's ranked metric as mean
± sample std over seeds (↑ higher / ↓ lower is better; "(2 of 3 seeds)": two of the three seeds completed,
the other failed, e.g. diverged, and is left out of the mean: the entry's file says why; "best": ranked
first on the task; "≈ best": within seed noise of it, Welch's t-test on the two means p ≥ {LEAD_ALPHA},
not adjusted for the entries compared, so an unmarked entry is behind the best beyond its seeds'
spread), training tokens/s (the median over the runs, each measured by wall clock where it ran: a
guide to cost, not a benchmark; `nlsearch bench models` is. Newer runs' records also hold tokens per
CPU-second, which a paused or shared machine does not slow).
"""
