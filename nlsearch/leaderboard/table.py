"""The leaderboard table: ranks per task and overall, from the index (one row per entry and task).

Ranking (``ranking: mean_rank`` in the protocol): on each task, entries are ranked by the mean over
seeds of the task's ranked metric in its direction (1 = best; ties share the better rank; an entry
with no finite value on the task ranks last). The overall score is the mean of an entry's task ranks
and the overall rank orders entries by it (ties share the rank). Ranks only compare entries of the
same protocol version and budget track.

Seed noise: a rank orders means, however close. Each task column therefore also says which entries the
seeds cannot tell from the best: ``best`` on the entry ranked first, ``≈ best`` on every entry whose
mean is within seed noise of it (Welch's t-test on the two entries' mean, sample std and n, two-sided,
p ≥ ``LEAD_ALPHA``, not adjusted for the number of entries compared: an unmarked entry is behind the
best beyond its seeds' spread). An entry with fewer than two completed seeds cannot be tested and is
not marked; against a best with fewer, no entry is.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from nlsearch.stats import welch_summaries

LEAD_ALPHA = 0.05
ENTRY_COLUMNS = ("id", "name", "author", "kind", "nesting_depth", "params", "state_size", "tokens_per_s")


def column_label(task: str, metric: str, higher_is_better: bool) -> str:
    return f"{task} {metric} {'↑' if higher_is_better else '↓'}"


def ranked(index: pd.DataFrame, protocol: str, budget: str, tasks: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """One row per entry of (``protocol``, ``budget``): the entry columns, then per task ``<task>.mean``,
    ``<task>.std``, ``<task>.n`` (seeds completed), ``<task>.seeds`` (seeds run), ``<task>.rank``,
    ``<task>.p_best`` (Welch's p against the task's best entry: 1 for the best itself, NaN where it cannot
    be tested; module docstring); ``score`` (mean task rank) and ``rank``; sorted by rank."""
    sub = index[(index.protocol == protocol) & (index.budget == budget)]
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(sub.task))
    entries = sub.drop_duplicates("id").set_index("id")
    table = entries[[c for c in ENTRY_COLUMNS if c != "id"]].copy()
    ranks = []
    for task in tasks:
        rows = sub[sub.task == task].set_index("id")
        for stat in ("mean", "std", "n", "seeds"):
            table[f"{task}.{stat}"] = rows[stat].reindex(table.index)
        hib = bool(rows.higher_is_better.iloc[0]) if len(rows) else True
        rank = table[f"{task}.mean"].rank(method="min", ascending=not hib, na_option="bottom")
        table[f"{task}.rank"] = rank.astype("int64") if len(rank) else rank
        table[f"{task}.p_best"] = _p_best(table, task)
        ranks.append(table[f"{task}.rank"])
    table["score"] = pd.concat(ranks, axis=1).mean(axis=1) if ranks else math.nan
    table["rank"] = table["score"].rank(method="min").astype("int64") if len(table) else []
    table = table.reset_index().sort_values(["rank", "name"], kind="stable").reset_index(drop=True)
    return table


def _p_best(table: pd.DataFrame, task: str) -> List[float]:
    """Per entry, Welch's two-sided p of its mean against the task's best (the first-ranked entry with a
    finite mean; among several tied first, the largest p): 1.0 for a best entry, NaN where a test is
    impossible (no finite best, or fewer than two completed seeds on either side)."""
    stats = list(zip(table[f"{task}.mean"], table[f"{task}.std"], table[f"{task}.n"], table[f"{task}.rank"]))
    best = [(m, s, n) for m, s, n, r in stats if r == 1 and m == m]
    out = []
    for m, s, n, r in stats:
        if m != m or not best:
            out.append(math.nan)
        elif r == 1:
            out.append(1.0)
        else:
            ps = [welch_summaries((m, s, n), b).p for b in best]
            ps = [p for p in ps if p == p]
            out.append(max(ps) if ps else math.nan)
    return out


def task_headers(index: pd.DataFrame, tasks: Sequence[str]) -> List[str]:
    heads = []
    for task in tasks:
        rows = index[index.task == task]
        heads.append(column_label(task, rows.metric.iloc[0], bool(rows.higher_is_better.iloc[0]))
                     if len(rows) else task)
    return heads


def mean_std(mean: float, std: float, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    spread = "" if std is None or (isinstance(std, float) and math.isnan(std)) else f" ± {std:.{digits}f}"
    return f"{mean:.{digits}f}{spread}"


def lead_note(rank: int, p_best: float) -> str:
    """``best`` (ranked first), ``≈ best`` (within seed noise of it: p ≥ ``LEAD_ALPHA``) or ""."""
    if rank == 1 and p_best == p_best:
        return "best"
    return "≈ best" if p_best == p_best and p_best >= LEAD_ALPHA else ""


def task_cells(table: pd.DataFrame, task: str) -> List[Tuple[str, str]]:
    """A task's column of :func:`ranked`'s table as printed, per entry ``(mean ± std, note)``: the note
    holds ``k of m seeds`` where fewer of the entry's seeds completed than it ran (the protocol leaves a
    failed seed, e.g. one that diverged, out of the mean, and the reader should see that it did), and
    :func:`lead_note`, joined by "; "; "" when neither applies."""
    cells = []
    for m, s, n, k, r, p in zip(table[f"{task}.mean"], table[f"{task}.std"], table[f"{task}.n"],
                                table[f"{task}.seeds"], table[f"{task}.rank"], table[f"{task}.p_best"]):
        seeds = f"{int(n)} of {int(k)} seeds" if n == n and k == k and n < k and m == m else ""
        cells.append((mean_std(m, s), "; ".join(x for x in (seeds, lead_note(r, p)) if x)))
    return cells


def claim_numbers(numbers: Mapping[str, Sequence]) -> List[str]:
    """A verdict's numbers, one line per model and metric: ``<model task metric>: mean ± std (n=N)``
    (``numbers``: that key to ``(mean, std, n)``)."""
    return [f"{key}: {mean_std(m, s)} (n={n})" for key, (m, s, n) in numbers.items()]


def display(index: pd.DataFrame, protocol: str, budget: str, task: Optional[str] = None,
            sort: Optional[str] = None) -> pd.DataFrame:
    """The printed table: rank, name, nesting depth, params, state size, each task's mean ± std (or
    only ``task``'s, ranked by it: :func:`pick_task`), tokens/s. ``sort``: a displayed column name (or a
    task name) to order by instead of the rank, in that column's better direction."""
    all_tasks = list(dict.fromkeys(index[(index.protocol == protocol) & (index.budget == budget)].task))
    if task is not None:
        all_tasks = [pick_task(task, all_tasks, f"{protocol} {budget}")]
    table = ranked(index, protocol, budget, all_tasks)
    if task is not None:
        table["rank"] = table[f"{all_tasks[0]}.rank"]
        table = table.sort_values(["rank", "name"], kind="stable").reset_index(drop=True)
    heads = task_headers(index, all_tasks)
    out = pd.DataFrame({"rank": table["rank"], "name": table["name"], "kind": table["kind"],
                        "depth": table["nesting_depth"], "params": [f"{int(x):,}" for x in table["params"]],
                        "state": [f"{int(x):,}" for x in table["state_size"]]})
    for ref, head in zip(all_tasks, heads):
        out[head] = [f"{value} ({note})" if note else value for value, note in task_cells(table, ref)]
    out["tokens/s"] = [("-" if math.isnan(x) else f"{x:,.0f}") for x in table["tokens_per_s"]]
    return _sorted(out, table, sort, all_tasks, heads) if sort else out


def pick_task(task: str, tasks: Sequence[str], where: str) -> str:
    """The one task of ``tasks`` that ``task`` names: its ref (``name@v``), its name, or else a part of
    exactly one name (``overwrite``); ValueError naming the candidates otherwise."""
    exact = [t for t in tasks if task in (t, t.split("@")[0])]
    found = exact or [t for t in tasks if task in t.split("@")[0]]
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"task {task!r} is ambiguous on {where}: it names {found}")
    raise ValueError(f"no task {task!r} on {where}; tasks: {list(tasks)}")


def _sorted(out: pd.DataFrame, table: pd.DataFrame, sort: str, tasks: List[str], heads: List[str]) -> pd.DataFrame:
    numeric = {"rank": (table["rank"], True), "name": (table["name"], True), "depth": (table["nesting_depth"], True),
               "params": (table["params"], True), "state": (table["state_size"], True),
               "tokens/s": (table["tokens_per_s"], False)}
    for ref, head in zip(tasks, heads):
        rank = table[f"{ref}.rank"]
        for key in (ref, ref.split("@")[0], head):
            numeric[key] = (rank, True)
    if sort not in numeric:
        raise ValueError(f"cannot sort by {sort!r}; choose one of {sorted(numeric)}")
    key, ascending = numeric[sort]
    order = key.reset_index(drop=True).sort_values(ascending=ascending, kind="stable", na_position="last").index
    return out.iloc[order].reset_index(drop=True)
