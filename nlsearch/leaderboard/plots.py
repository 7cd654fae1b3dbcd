"""The leaderboard's four plots, as SVG text (matplotlib, deterministic output):

- ``state``: recall accuracy vs state size (numbers carried per sequence, log scale), a panel per task;
- ``length``: long-context accuracy vs evaluation length, one line per entry (legend best first);
- ``continual``: continual-learning ACC vs BWT (forgetting), one point per entry;
- ``depth``: nesting depth vs LM quality (bits per byte, lower is better).

A plot whose task kind the protocol lacks says so inside the figure instead of being left out, so the
page always has the same four figures.
"""
from __future__ import annotations

import io
import json
import math
from typing import Callable, Dict, List

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


# where a point's name may go, in points from the point: rings further and further out, each tried
# right, left (level with the point), right-above, right-below, left-above, left-below (ring 0 touches
# the marker; the others get a line)
_OFFSETS = [offset for ring in range(8) for offset in
            [(side * (6 + 6 * ring), -2.5) for side in (1, -1)]
            + [(side * (4 + 6 * ring), dy) for side in (1, -1) for dy in (3 + 11 * ring, -10 - 11 * ring)]]
_NEAR = 6                                             # |dx| up to this: beside the marker, no line


def _text_box(annotation, renderer):
    """Where an annotation's text is drawn (its line to the point left out), in pixels."""
    from matplotlib.text import Text

    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def _labels(ax, points) -> None:
    """Names ``points`` ((x, y, name) in data coordinates) beside their markers, each put at the first
    of ``_OFFSETS`` where it stays inside the axes, overlaps no name placed before it nor any marker,
    and, beside its marker (no line), no other entry's marker is nearer to it than its own (it would
    read as that one's); where no place is all three, the one that breaks them least. Entries
    with nearly equal numbers (two memories of one state size) stay readable. Call once the axes'
    limits and scales are set; the limits are then frozen so the names stay where they were placed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    if not points:
        return
    fig = ax.figure
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)                          # text extents need a renderer (no pyplot state)
    fig.tight_layout()
    ax.margins(0.12)                                  # room for names beside the outermost markers
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    legend = ax.get_legend()
    placed = [legend.get_window_extent(renderer)] if legend is not None else []
    r = 3.5 * fig.dpi / 72                            # a marker's half-width (default size), in pixels
    markers = [tuple(m) for c in ax.collections for m in ax.transData.transform(c.get_offsets())]
    placed += [Bbox([[px - r, py - r], [px + r, py + r]]) for px, py in markers]   # a name covers no marker
    for group in sorted(_coincident(ax, points, r), key=lambda g: (-g[0][1], g[0][0])):   # top first
        x, y, name = group[0][0], group[0][1], "\n".join(p[2] for p in group)
        own = [tuple(ax.transData.transform(p[:2])) for p in group]
        others = [m for m in markers if min(math.dist(m, o) for o in own) > 0.5]
        best = None                                   # (cost, offset): the place breaking the rules least
        for offset in _OFFSETS:
            text = _annotate(ax, name, x, y, offset)
            box = _text_box(text, renderer)
            text.remove()
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            mine = min(_distance(box, o) for o in own)
            misread = abs(offset[0]) <= _NEAR and any(_distance(box, m) < mine for m in others)  # no line
            cost = (0.0 if inside else math.inf) + sum(_overlap(box, other) for other in placed) + _MISREAD * misread
            if best is None or cost < best[0]:
                best = (cost, offset)
            if cost == 0.0:
                break
        text = _annotate(ax, name, x, y, best[1])
        placed.append(_text_box(text, renderer))


_MISREAD = 10000.0    # a lineless name nearer another's marker than its own: worse than most overprint


def _distance(box, point) -> float:
    """From a box to a point, in pixels (0 inside it)."""
    x, y = point
    return math.hypot(max(box.x0 - x, 0.0, x - box.x1), max(box.y0 - y, 0.0, y - box.y1))


def _annotate(ax, name: str, x: float, y: float, offset):
    """``name`` at ``offset`` points from (x, y): beside its marker, or further out with a thin line."""
    dx, dy = offset
    near = abs(dx) <= _NEAR
    return ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, parse_math=False,
                       ha="left" if dx >= 0 else "right", annotation_clip=False,
                       arrowprops=None if near else {"arrowstyle": "-", "lw": 0.4, "color": "grey",
                                                     "shrinkA": 0, "shrinkB": 3})


def _overlap(a, b) -> float:
    """The area two boxes share, in square pixels (0 when apart)."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def _coincident(ax, points, radius: float) -> List[list]:
    """``points`` grouped where their markers overlap on screen, each group highest first (its label,
    one name a line, goes at the highest): one label tied to the markers they share instead of names
    stacked nearby. Markers overlap when their centres are within ``radius`` pixels,
    directly or through a chain of such neighbours (entries with one state size and nearly one score)."""
    pixels = [ax.transData.transform((x, y)) for x, y, _ in points]
    root = list(range(len(points)))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for i in range(len(points)):
        for j in range(i):
            if math.hypot(pixels[i][0] - pixels[j][0], pixels[i][1] - pixels[j][1]) <= radius:
                root[find(i)] = find(j)
    groups: dict = {}
    for i in sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0])):
        groups.setdefault(find(i), []).append(points[i])
    return list(groups.values())


def _state(ax, rows: pd.DataFrame) -> None:
    """One panel per recall task, side by side on one state-size axis, every model named in each: a
    model's state size is one x for all its tasks, so markers of several tasks in one panel could not
    be told apart where models share a state size. Each panel scales its own accuracies (a task whose
    models all stay under 0.2 is not squeezed into a fifth of its height by one that reaches 1)."""
    sub = rows[(rows.task_kind == "recall") & rows["mean"].notna()]
    if sub.empty:
        return _empty(ax, "recall")
    groups = list(sub.groupby("task", sort=False))    # (task, its rows), in the index's order
    tasks = [task for task, _ in groups]
    fig = ax.figure
    if len(tasks) > 1:                                # the one axes becomes a row of panels, one title above
        title = ax.get_title()
        ax.remove()
        width, height = fig.get_size_inches()
        fig.set_size_inches(width + 3.5 * (len(tasks) - 1), height)
        panels = list(fig.subplots(1, len(tasks), sharex=True))
        fig.suptitle(title)
    else:
        panels = [ax]
    for panel, (task, group) in zip(panels, groups):
        panel.scatter(group.state_size, group["mean"])
        panel.set_xscale("log")
        panel.set_xlabel("state size (numbers per sequence, longest eval length)", fontsize=8)
        if len(tasks) > 1:
            panel.set_title(task, fontsize=9)
        else:
            panel.set_title(f"{panel.get_title()} ({task})")
    panels[0].set_ylabel("accuracy (mean over seeds)")
    fig.tight_layout()                                # every panel's frame fixed before any name is placed
    for panel, (_, group) in zip(panels, groups):
        _labels(panel, [(r.state_size, r.mean, r.name) for r in group.itertuples()])


def _length(ax, rows: pd.DataFrame) -> None:
    from matplotlib import colormaps

    sub = rows[rows.task_kind == "longctx"]
    several = sub.task.nunique() > 1                  # one long-context task: the legend need not name it
    colors, markers = colormaps["tab20"].colors, "os^Dv<>p"
    curves = []
    for r in sub.itertuples():
        points = {int(k): v for k, v in json.loads(r.per_length).items() if v is not None and not math.isnan(v)}
        if points:
            name = f"{r.name} ({r.task.split('@')[0]})" if several else r.name
            curves.append((name, points))
    curves.sort(key=lambda c: (-sum(c[1].values()) / len(c[1]), c[0]))    # the legend top-down, best first
    for i, (name, points) in enumerate(curves):
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker=markers[i % len(markers)], markersize=5,
                color=colors[(2 * i) % 20 + (i // 10) % 2], label=_literal(name))   # 20 distinct
    lines = len(curves)
    if not lines:
        return _empty(ax, "long-context")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel(f"{sub.metric.iloc[0]} (mean over seeds)")
    if lines <= 5:
        ax.legend(fontsize=7)
    else:                                             # many entries: beside the axes, not over the lines
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  ncol=1 + lines // 16)


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
    if ax.get_xlim()[0] <= 0.0 <= ax.get_xlim()[1]:   # no forgetting, where the points reach it: an axis
        ax.axvline(0.0, color="grey", lw=0.5)          # stretched to 0 would crowd the rest into a corner
    ax.set_xlabel("BWT (backward transfer; negative = forgetting)")
    ax.set_ylabel("ACC (mean accuracy after the last phase)")
    _labels(ax, points)


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
    _integer_x(ax, sub.nesting_depth)
    ax.set_xlabel("nesting depth (levels)")
    ax.set_ylabel(f"{sub.metric.iloc[0]} (mean over seeds; lower is better)")
    _labels(ax, [(r.nesting_depth, r.mean, r.name) for r in sub.itertuples()])


DRAW: Dict[str, Callable] = {"state": _state, "length": _length, "continual": _continual, "depth": _depth}


def plot_svgs(rows: pd.DataFrame) -> Dict[str, str]:
    """The four plots of one track's index rows, as SVG documents keyed by ``PLOTS``."""
    out = {}
    for name in PLOTS:
        fig, ax = _figure()
        ax.set_title(TITLES[name])                # before the names are placed: the layout they are placed in
        DRAW[name](ax, rows)
        out[name] = _svg(fig)
    return out
