"""Print a benchmark's table and floor checks, and save both (Parquet + Markdown) atomically."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pandas as pd
from rich.console import Console
from nlsearch.display import markdown_table, rich_table

from nlsearch.io import write_parquet, write_text


def report(console: Console, df: pd.DataFrame, floors: pd.DataFrame, shown: List[str], title: str,
           out: Path, stem: str) -> Path:
    """Show ``df[shown]`` and ``floors``; write ``<out>/<stem>.parquet`` (all columns) and ``.md``."""
    view = df[shown]
    console.print(rich_table(view, title))
    console.print(rich_table(floors, "floors (ratios from this run)"))
    table_path = write_parquet(df, Path(out) / f"{stem}.parquet")
    allocator = f", {df['allocator'].iloc[0]} allocator" if "allocator" in df else ""
    if "compiled_steps" in df and df["compiled_steps"].iloc[0] == "on":
        allocator += ", compiled layer steps (NLSEARCH_COMPILE=1)"
    if "denormals" in df:
        allocator += f", subnormals {df['denormals'].iloc[0]}"
    commits = list(dict.fromkeys(map(str, df["git_commit"])))
    runs = df["run"].nunique() if "run" in df else 1
    head = (f"# nlsearch {title} ({df['hardware'].iloc[0]}, torch {df['torch'].iloc[0]}{allocator}, "
            f"commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}"
            + (f"; rows from {runs} runs, see the `run` column of the Parquet table" if runs > 1 else "") + ")")
    md_path = write_text("\n\n".join([head, markdown_table(view), "## Floors", markdown_table(floors)]) + "\n",
                         Path(out) / f"{stem}.md")
    console.print(f"saved {table_path} and {md_path}")
    return table_path
