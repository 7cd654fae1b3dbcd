"""Display helpers every command shares (terminal tables, saved figures), below the packages that use
them: ``bench``, ``search``, ``leaderboard`` and the CLI import from here, never from each other."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nlsearch.io import atomic_write

# C0 and C1 controls but tab and newline (an ESC starts a terminal command), and the bidirectional
# overrides that make text read differently from what it is
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: Any) -> str:
    """``text`` with every control character shown as ``�``: user data never commands the terminal."""
    return _CONTROL.sub("\ufffd", str(text))


def safe(text: Any) -> str:
    """User data for a rich markup string: controls replaced (:func:`clean`), brackets escaped."""
    return escape(clean(text))


def rich_table(df: pd.DataFrame, title: str, floatfmt: str = "{:.3g}") -> Table:
    """A frame as a terminal table; floats formatted with ``floatfmt``; every cell and the title are
    plain text (no markup read from data, controls replaced)."""
    table = Table(title=Text(clean(title)))
    for col in df.columns:
        table.add_column(Text(clean(col)))
    for _, row in df.iterrows():
        table.add_row(*[Text(clean(floatfmt.format(x) if isinstance(x, float) else x)) for x in row])
    return table


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically."""
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A GitHub-flavoured Markdown table of ``df`` (floats formatted with ``floatfmt``)."""
    cells = [[floatfmt.format(x) if isinstance(x, float) else str(x) for x in row]
             for row in df.itertuples(index=False)]
    header = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


@contextlib.contextmanager
def progress_bar(total: int, done: int, label: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr (rich; the project's one progress library) from ``done`` of ``total``;
    yields ``advance(note)``, one step done with a short note (the loss). Disabled: a no-op."""
    if not enabled:
        yield lambda note="": None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(clean(label), total=total, completed=done, note="")
        yield lambda note="": progress.update(task, advance=1, note=clean(note))
