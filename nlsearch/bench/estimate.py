"""What a batch of runs costs before it starts (``run-suite --dry-run``, ``reproduce --dry-run``).

Each run's training tokens (steps x batch x mean train length, per phase) times its preset's measured
core-seconds per training token at that length (``results/bench/models-cpu.parquet`` from ``nlsearch
bench models``: seconds x threads / (B x T), linear in T between the measured lengths, the nearest one
outside them). Evaluation is not counted (a few percent of a run at the ``cpu`` budget); a preset the
table lacks is reported without an estimate. Finished runs (found and checked as the real command
would) cost nothing, an interrupted one only the steps after its checkpoint.

The table's steps are timed with two threads, the runs queued side by side with one each, which spends
fewer core-seconds per token (0.68-0.97 of the table's, by preset, in the cpu reproduction). Finished
runs say what they spent (their record's ``tokens_per_cpu_s``), so the estimate is scaled by
:func:`calibration`: per preset, the median of measured over tabled core-seconds per token of its
finished runs; a preset with none takes the median over every finished run; with none at all, 1.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "results" / "bench" / "models-cpu.parquet"


@dataclass(frozen=True)
class PlannedRun:
    model: str                  # the label shown (a preset's name looks up its timing)
    preset: Optional[str]       # the timing table's key; None: no estimate
    tokens: int                 # training tokens
    length: float               # mean training length
    finished: bool
    measured: Optional[float] = None    # a finished run's core-seconds per training token (its record's)

    @classmethod
    def of(cls, model: str, preset: Optional[str], plan, finished: bool,
           run_dir: Optional[Path] = None, record=None) -> "PlannedRun":
        """From a :class:`~nlsearch.train.plan.RunPlan`: its steps (every phase) x batch x mean length;
        an unfinished run's steps after the checkpoint in ``run_dir`` it would resume from. ``record``:
        a finished run's outcome (a ``RunRecord`` gives its measured speed; a failure or None, none)."""
        lengths = plan.train_lengths
        mean = sum(lengths) / len(lengths)
        steps = plan.total_steps - (0 if finished else min(checkpointed_steps(run_dir), plan.total_steps))
        speed = getattr(record, "tokens_per_cpu_s", None) if finished else None
        return cls(model, preset, int(steps * plan.kb.batch_size * mean), mean, finished,
                   1.0 / speed if speed else None)


def checkpointed_steps(run_dir: Optional[Path]) -> int:
    """The step of the checkpoint ``run_dir``'s ``latest`` pointer names (0 without one): what a run
    resumed there has done already (the checkpoint itself is checked when the run resumes)."""
    if run_dir is None:
        return 0
    try:
        found = re.fullmatch(r"step-(\d+)", (Path(run_dir) / "checkpoints" / "latest").read_text().strip())
    except (OSError, ValueError):
        return 0
    return int(found.group(1)) if found else 0


def load_timing(path: Optional[Path] = None) -> Optional[pd.DataFrame]:
    """The bench table, or None where there is none."""
    path = Path(path) if path is not None else DEFAULT_TABLE
    return pd.read_parquet(path) if path.is_file() else None


def _threads(row: pd.Series) -> float:
    if "threads" in row and not pd.isna(row["threads"]):
        return float(row["threads"])
    found = re.search(r"(\d+) threads?", str(row.get("hardware", "")))
    return float(found.group(1)) if found else 1.0


def core_seconds_per_token(table: Optional[pd.DataFrame], preset: Optional[str], length: float) -> float:
    """Measured core-seconds per training token of ``preset`` at ``length`` (NaN when unmeasured)."""
    if table is None or preset is None:
        return math.nan
    rows = table[table.preset == preset].sort_values("T")
    if rows.empty:
        return math.nan
    per_token = [r.seconds * _threads(r) / (r.B * r["T"]) for _, r in rows.iterrows()]
    return float(np.interp(length, rows["T"].to_numpy(dtype=float), per_token))


@dataclass(frozen=True)
class Calibration:
    """Measured over tabled core-seconds per token of finished runs: per preset (median, runs) and over
    every run (module docstring)."""

    per_preset: Dict[str, Tuple[float, int]]
    overall: Tuple[float, int] = (1.0, 0)

    def factor(self, preset: Optional[str]) -> float:
        """The scale of ``preset``'s estimates: its own, else every preset's, else 1."""
        return self.per_preset.get(preset, self.overall)[0] if preset is not None else self.overall[0]

    def runs(self, preset: Optional[str]) -> int:
        """How many of ``preset``'s own finished runs measured its factor (0: it is every preset's)."""
        return self.per_preset.get(preset, (1.0, 0))[1] if preset is not None else 0


def calibration(runs: Sequence[PlannedRun], table: Optional[pd.DataFrame]) -> Calibration:
    """The :class:`Calibration` of ``runs``' finished ones that measured their speed."""
    ratios: Dict[str, list] = {}
    for run in runs:
        if run.finished and run.measured is not None and run.preset is not None:
            tabled = core_seconds_per_token(table, run.preset, run.length)
            if tabled > 0:
                ratios.setdefault(run.preset, []).append(run.measured / tabled)
    every = [r for values in ratios.values() for r in values]
    return Calibration({preset: (float(np.median(values)), len(values)) for preset, values in ratios.items()},
                       (float(np.median(every)), len(every)) if every else (1.0, 0))


def seconds_left(plan, preset: Optional[str], table: Optional[pd.DataFrame], run_dir: Optional[Path] = None,
                 threads: int = 1, scale: float = 1.0) -> float:
    """Estimated wall-clock seconds a run still needs: its training tokens after the checkpoint
    ``run_dir`` would resume from (the whole run without one) times the preset's measured core-seconds
    per token times ``scale`` (its ``Calibration.factor``), shared by ``threads``; NaN when the preset is unmeasured."""
    run = PlannedRun.of(preset or "", preset, plan, False, run_dir)
    return run.tokens * core_seconds_per_token(table, preset, run.length) * scale / max(threads, 1)


def estimate(runs: Sequence[PlannedRun], table: Optional[pd.DataFrame]) -> pd.DataFrame:
    """One row per model: runs, finished, to run, core-hours left and the longest run left in
    core-hours (NaN without a timing), scaled by ``calibration`` (the factor used, and how many finished
    runs of the preset measured it: 0 where it is every preset's)."""
    rows = {}
    calibrated = calibration(runs, table)
    for run in runs:
        row = rows.setdefault(run.model, {"model": run.model, "runs": 0, "finished": 0, "to_run": 0,
                                          "core_hours": 0.0, "longest_run_h": 0.0,
                                          "calibration": calibrated.factor(run.preset),
                                          "calibrated_by": calibrated.runs(run.preset)})
        row["runs"] += 1
        if run.finished:
            row["finished"] += 1
            continue
        row["to_run"] += 1
        hours = run.tokens * core_seconds_per_token(table, run.preset, run.length) * row["calibration"] / 3600
        row["core_hours"] += hours
        row["longest_run_h"] = max(row["longest_run_h"], hours) if hours == hours else math.nan
    return pd.DataFrame(list(rows.values()), columns=["model", "runs", "finished", "to_run", "core_hours",
                                                      "longest_run_h", "calibration", "calibrated_by"])


def summary_line(frame: pd.DataFrame, workers: Optional[int] = None) -> str:
    """The totals; with ``workers`` (one-thread runs side by side, as ``reproduce --workers N`` queues
    them), the wall-clock hours too: the core-hours shared out, but never under the longest run left."""
    known = frame[~frame.core_hours.isna()]
    missing = frame[frame.core_hours.isna() & (frame.to_run > 0)]
    core, longest = known.core_hours.sum(), known.longest_run_h.max() if len(known) else 0.0
    text = (f"{int(frame.runs.sum())} runs, {int(frame.finished.sum())} finished, {int(frame.to_run.sum())} to run: "
            f"about {core:.1f} core-hours")
    if "calibrated_by" in frame and frame.calibrated_by.sum() > 0:
        text += " (the bench table's step times scaled by the finished runs' measured speed)"
    if workers is not None and core > 0:
        text += (f"; with {workers} worker{'s' if workers > 1 else ''} about {max(core / workers, longest):.1f} hours "
                 f"(no number of workers ends before the longest run left: {longest:.2f} h)")
    if len(missing):
        text += f" (no timing for {', '.join(missing.model)}: run nlsearch bench models)"
    return text


def print_estimate(console, runs: Sequence[PlannedRun], command: str, table: Optional[pd.DataFrame] = None,
                   workers: Optional[int] = None) -> None:
    """The dry run's table (per model) and its summary line, on a rich console."""
    from nlsearch.display import rich_table

    frame = estimate(runs, load_timing() if table is None else table)
    console.print(rich_table(frame, f"{command} --dry-run: runs and estimated core-hours left", floatfmt="{:.2f}"))
    console.print(summary_line(frame, workers))
