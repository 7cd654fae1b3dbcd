"""``nlsearch bench search``: throughput and efficiency of the search itself, at equal wall time.

Each arm runs the same space in a fresh folder and reports finished trials, trials per hour
(finished trials over the span from the first trial's start to the last one's end: Ray's start-up is
left out, the tail is in) and the best objective value found:

- ``workers``: random sampling, no pruning, the same first ``trials`` candidates (a seeded random
  sampler draws the same configs in the same order whatever the workers) with 1 worker (in
  process) and with N Ray workers: the trials/hour ratio is the executor's scaling on equal work
  (floor: ≥ 1.6× with 2 workers on 2 cores). Counting trials finished in a fixed time instead would
  compare different candidate mixes (a CMS level at period 1 costs several plain trials);
- ``sampler``: TPE with the space's pruner vs random sampling without pruning, N workers each, for
  ``minutes`` of asking (running trials then finish): equal wall time.

Trials use the ``bench`` budget below: MQAR at T=128 for 60 steps with a report every 20 (a trial
takes seconds, so an arm of a few minutes holds tens of trials). Run it on a quiet machine.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pandas as pd
import torch

from nlsearch.budgets import BUDGETS
from nlsearch.provenance import provenance
from nlsearch.search.run import run_search
from nlsearch.search.space import SearchSpace, load_space

DEFAULT_SPACE = "search_spaces/nesting_depth.yaml"


def bench_budget() -> Dict[str, Any]:
    data = BUDGETS["smoke"].model_dump(mode="json")
    data.update(name="bench-search", version=1, eval_interval=20, checkpoint_interval=0, threads=1)
    data["recall"] = {"steps": 60, "batch_size": 8, "train_lengths": [128], "eval_lengths": [128], "eval_size": 32}
    return data


def arm_space(space: SearchSpace, label: str, sampler: str, pruner: Optional[Dict[str, Any]],
              minutes: Optional[float], budget: Optional[Dict[str, Any]], trials: int = 10_000) -> SearchSpace:
    """The space for one arm: ``trials`` trials, asking for ``minutes`` (None: until they are done)."""
    update = {"name": f"bench-{label}", "trials": trials, "timeout_minutes": minutes,
              "sampler": space.sampler.model_copy(update={"kind": sampler})}
    if budget is not None:
        update["budget"] = budget
    if pruner is not None:
        update["pruner"] = space.pruner.model_copy(update=pruner)
    return space.model_copy(update=update)


def run_arm(space: SearchSpace, label: str, workers: int, log: Callable[[str], Any]) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nlsearch-bench-") as tmp:
        start = time.monotonic()
        study, frame, _ = run_search(space, out=Path(tmp) / space.name, workers=workers, log=lambda m: None,
                                     plots=False)
        wall = time.monotonic() - start
        trials = study.get_trials()                  # read before the folder (and its journal) goes
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    span = (max(ends) - min(starts)).total_seconds() if ends else math.nan   # Ray's start-up left out
    done = frame[frame.state.isin(["COMPLETE", "PRUNED", "FAIL"])]
    complete = frame[frame.state == "COMPLETE"]
    col = f"objective:{space.objectives[0].metric}"
    best = (complete[col].max() if space.objectives[0].direction == "maximize" else complete[col].min()) \
        if len(complete) else math.nan
    row = {"arm": label, "workers": workers, "sampler": space.sampler.kind, "pruner": space.pruner.kind,
           "minutes": space.timeout_minutes, "wall_s": wall, "trial_span_s": span, "finished": len(done),
           "complete": len(complete),
           "pruned": int((frame.state == "PRUNED").sum()), "failed": int((frame.state == "FAIL").sum()),
           "trials_per_hour": 3600 * len(done) / span, "best": best, "metric": space.objectives[0].metric,
           "direction": space.objectives[0].direction}
    log(f"{label}: {row['finished']} trials in {wall:.0f} s ({row['trials_per_hour']:.0f}/h), best {best:.4g}")
    return row


def run_search_bench(space_file: str = DEFAULT_SPACE, minutes: float = 3.0, workers: int = 2,
                     budget: Optional[str] = None, trials: int = 12,
                     log: Callable[[str], Any] = print) -> pd.DataFrame:
    space = load_space(space_file)
    trial_budget = bench_budget() if budget is None else budget
    none = {"kind": "none"}
    arms: List[Dict[str, Any]] = [
        run_arm(arm_space(space, "random-1w", "random", none, None, trial_budget, trials),
                f"random, {trials} trials, 1 worker", 1, log),
        run_arm(arm_space(space, f"random-{workers}w", "random", none, None, trial_budget, trials),
                f"random, {trials} trials, {workers} workers", workers, log),
        run_arm(arm_space(space, f"random-{workers}w-timed", "random", none, minutes, trial_budget),
                f"random, {minutes:g} min, {workers} workers", workers, log),
        run_arm(arm_space(space, f"tpe-{workers}w-timed", "tpe", None, minutes, trial_budget),
                f"tpe + {space.pruner.kind} pruning, {minutes:g} min, {workers} workers", workers, log),
    ]
    frame = pd.DataFrame(arms)
    for key, value in provenance(torch.device("cpu")).items():
        frame[key] = value
    frame["space"] = space.name
    return frame


def search_floor_checks(frame: pd.DataFrame) -> pd.DataFrame:
    one, many, timed, tpe = (frame.iloc[i] for i in range(4))
    ratio = many.trials_per_hour / one.trials_per_hour
    better = (tpe.best >= timed.best) if tpe.direction == "maximize" else (tpe.best <= timed.best)
    return pd.DataFrame([
        {"check": f"trials/hour, {int(many.workers)} workers / 1 worker", "value": ratio, "floor": ">= 1.6",
         "ok": bool(ratio >= 1.6)},
        {"check": "TPE+pruning best vs random best (equal wall time)", "value": tpe.best - timed.best,
         "floor": "report", "ok": bool(better)},
    ])
