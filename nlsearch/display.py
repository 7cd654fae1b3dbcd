"""Display helpers every command shares (terminal tables, saved figures), below the packages that use
them: ``bench``, ``search``, ``leaderboard`` and the CLI import from here, never from each other."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.table import Table

from nlsearch.io import atomic_write


def rich_table(df: pd.DataFrame, title: str, floatfmt: str = "{:.3g}") -> Table:
    """A frame as a terminal table; floats formatted with ``floatfmt``."""
    table = Table(title=title)
    for col in df.columns:
        table.add_column(str(col))
    for _, row in df.iterrows():
        table.add_row(*[floatfmt.format(x) if isinstance(x, float) else str(x) for x in row])
    return table


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically."""
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
