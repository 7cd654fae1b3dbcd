"""``nlsearch leaderboard render``: ``leaderboard/README.md`` and ``leaderboard/index.html``.

The page is static (no server, no network, no external script): one section per protocol version and
budget track with a table that sorts when a header is clicked (a few lines of inline JavaScript) and
the four plots of ``plots.py`` inlined as SVG. The README shows the same tables and links the same
plots, written as ``plots/<protocol>_<budget>_<plot>.svg``. Every string that comes from an entry
(names, authors) is escaped: an entry is data, and cannot inject markup or script into the page.
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import List, Optional, Tuple, Union

import pandas as pd

from nlsearch.display import markdown_table
from nlsearch.io import write_text
from nlsearch.leaderboard.plots import PLOTS, TITLES, plot_svgs
from nlsearch.leaderboard.protocol import Protocol, load_protocol
from nlsearch.leaderboard.store import DEFAULT_ROOT, Store
from nlsearch.leaderboard.table import display, mean_std, ranked, task_headers

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
.table-wrap { overflow-x: auto; max-width: 100%; }
table.leaderboard th { cursor: pointer; background: #f3f3f3; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
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
    for r in table.to_dict("records"):
        cells = [(str(r["rank"]), _number(r["rank"])), (r["name"], r["name"]), (r["kind"], r["kind"]),
                 (str(r["nesting_depth"]), _number(r["nesting_depth"])), (f"{r['params']:,}", _number(r["params"])),
                 (f"{r['state_size']:,}", _number(r["state_size"]))]
        for task in tasks:
            cells.append((mean_std(r[f"{task}.mean"], r[f"{task}.std"]), _number(r[f"{task}.mean"])))
        speed = r["tokens_per_s"]
        cells.append(("-" if math.isnan(speed) else f"{speed:,.0f}", _number(speed)))
        row = "".join(f"<td data-sort=\"{html.escape(k)}\">{html.escape(t)}</td>" for t, k in cells)
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


def render(root: Union[str, Path] = DEFAULT_ROOT, protocol: Union[Protocol, str, Path, None] = None
           ) -> Tuple[Path, Path]:
    """Writes ``root/README.md``, ``root/index.html`` and ``root/plots/*.svg``; returns the two pages."""
    root = Path(root)
    protocol = protocol if isinstance(protocol, Protocol) or protocol is None else load_protocol(protocol)
    index = Store(root).index()
    md = [README_HEAD]
    page = [f"<h1>nlsearch leaderboard</h1><p>{len(index.id.unique())} entries. Click a column header to sort."
            f" Ranks: per task by the mean over seeds; overall by the mean task rank.</p>"]
    if index.empty:
        md.append("No entries yet.\n")
        page.append("<p>No entries yet.</p>")
    for ref, budget in tracks(index, protocol):
        rows = index[(index.protocol == ref) & (index.budget == budget)]
        svgs = plot_svgs(rows)
        shown = display(index, ref, budget)
        shown["name"] = [_escape_md(n) for n in shown["name"]]
        md += [f"## {ref}, budget {budget}", "", markdown_table(shown), ""]
        page += [f"<section><h2>{html.escape(ref)}, budget {html.escape(budget)}</h2>", html_table(index, ref, budget),
                 "<div class=\"plots\">"]
        for plot in PLOTS:
            name = _plot_name(ref, budget, plot)
            write_text(svgs[plot], root / "plots" / name)
            md.append(f"![{TITLES[plot]}](plots/{name})")
            page.append(f"<figure class=\"plot\" data-plot=\"{plot}\">{svgs[plot]}</figure>")
        md.append("")
        page.append("</div></section>")
    readme = write_text("\n".join(md) + "\n", root / "README.md")
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>nlsearch leaderboard</title>"
           f"<link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head><body>\n" + "\n".join(page)
           + f"\n<script>{SCRIPT}</script></body></html>\n")
    return readme, write_text(doc, root / "index.html")


README_HEAD = """# leaderboard

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
± sample std over seeds (↑ higher / ↓ lower is better), training tokens/s (the median over the runs,
each measured by wall clock where it ran: a guide to cost, not a benchmark; `nlsearch bench models` is.
Newer runs' records also hold tokens per CPU-second, which a paused or shared machine does not slow).
"""
