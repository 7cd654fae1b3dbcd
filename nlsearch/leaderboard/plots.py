"""The leaderboard's four plots, as SVG text (matplotlib, deterministic output):

- ``state``: recall accuracy vs state size (numbers carried per sequence, log scale);
- ``length``: long-context accuracy vs evaluation length, one line per entry;
- ``continual``: continual-learning ACC vs BWT (forgetting), one point per entry;
- ``depth``: nesting depth vs LM quality (bits per byte, lower is better).

A plot whose task kind the protocol lacks says so inside the figure instead of being left out, so the
page always has the same four figures.
"""
from __future__ import annotations

import io
import json
import math
from typing import Callable, Dict

import pandas as pd

PLOTS = ("state", "length", "continual", "depth")
TITLES = {"state": "recall accuracy vs state size", "length": "long-context accuracy vs length",
          "continual": "continual learning: ACC vs BWT", "depth": "nesting depth vs LM quality"}


def _literal(text: str) -> str:
    """``text`` shown as it is in a legend (matplotlib reads ``$...$`` as math)."""
    return text.replace("$", r"\$")


def _figure():
    """A ``Figure`` of its own (no pyplot state, no backend switched)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    return fig, fig.subplots()


def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    fig.tight_layout()
    with matplotlib.rc_context({"svg.hashsalt": "nlsearch-leaderboard"}):      # deterministic ids, locally
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} task in this protocol", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _label(ax, x: float, y: float, name: str) -> None:
    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, parse_math=False)


def _state(ax, rows: pd.DataFrame) -> None:
    sub = rows[(rows.task_kind == "recall") & rows["mean"].notna()]
    if sub.empty:
        return _empty(ax, "recall")
    for task, group in sub.groupby("task", sort=False):
        ax.scatter(group.state_size, group["mean"], label=task)
    for name, group in sub.groupby("name", sort=False):      # once, at its best task: its points share x
        top = group.loc[group["mean"].idxmax()]
        _label(ax, top.state_size, top["mean"], name)
    ax.set_xscale("log")
    ax.set_xlabel("state size (numbers per sequence, longest eval length)")
    ax.set_ylabel("accuracy (mean over seeds)")
    ax.legend(fontsize=7)


def _length(ax, rows: pd.DataFrame) -> None:
    sub = rows[rows.task_kind == "longctx"]
    lines = 0
    for r in sub.itertuples():
        points = {int(k): v for k, v in json.loads(r.per_length).items() if v is not None and not math.isnan(v)}
        if points:
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker="o", label=_literal(f"{r.name} ({r.task.split('@')[0]})"))
            lines += 1
    if not lines:
        return _empty(ax, "long-context")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel(f"{sub.metric.iloc[0]} (mean over seeds)")
    ax.legend(fontsize=7)


def _continual(ax, rows: pd.DataFrame) -> None:
    sub = rows[rows.task_kind == "continual"]
    points = []
    for r in sub.itertuples():
        extra = json.loads(r.extra)
        acc, bwt = extra.get("acc"), extra.get("bwt")
        if acc is not None and bwt is not None and not (math.isnan(acc) or math.isnan(bwt)):
            points.append((bwt, acc, r.name))
    if not points:
        return _empty(ax, "continual (acc, bwt)")
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    for bwt, acc, name in points:
        _label(ax, bwt, acc, name)
    ax.axvline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("BWT (backward transfer; negative = forgetting)")
    ax.set_ylabel("ACC (mean accuracy after the last phase)")


def _integer_x(ax, values: pd.Series) -> None:
    """Whole-number x ticks (a count: no depth 2.85), one unit either side of the values, so a board
    whose entries share one depth shows that depth and its neighbours."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(int(values.min()) - 1, int(values.max()) + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _depth(ax, rows: pd.DataFrame) -> None:
    sub = rows[(rows.task_kind == "lm") & rows["mean"].notna()]
    if sub.empty:
        return _empty(ax, "language-modeling")
    ax.scatter(sub.nesting_depth, sub["mean"])
    for r in sub.itertuples():
        _label(ax, r.nesting_depth, r.mean, r.name)
    _integer_x(ax, sub.nesting_depth)
    ax.set_xlabel("nesting depth (levels)")
    ax.set_ylabel(f"{sub.metric.iloc[0]} (mean over seeds; lower is better)")


DRAW: Dict[str, Callable] = {"state": _state, "length": _length, "continual": _continual, "depth": _depth}


def plot_svgs(rows: pd.DataFrame) -> Dict[str, str]:
    """The four plots of one track's index rows, as SVG documents keyed by ``PLOTS``."""
    out = {}
    for name in PLOTS:
        fig, ax = _figure()
        DRAW[name](ax, rows)
        ax.set_title(TITLES[name])
        out[name] = _svg(fig)
    return out
