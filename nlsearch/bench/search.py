"""``nlsearch bench search``: throughput and efficiency of the search itself, at equal wall time.

Each arm runs the same space in a fresh folder and reports finished trials, trials per hour
(finished trials over the span from the first trial's start to the last one's end: Ray's start-up is
left out, the tail is in) and the best objective value found:

- ``workers``: random sampling, no pruning, the same first ``trials`` candidates (a seeded random
  sampler draws the same configs in the same order whatever the workers) with 1 worker (in
  process) and with N Ray workers: the trials/hour ratio is the executor's scaling on equal work
  (floor: ≥ 1.6× with 2 workers on 2 cores). Counting trials finished in a fixed time instead would
  compare different candidate mixes (a CMS level at period 1 costs several plain trials);
- ``sampler``, once per sampler seed: the space's sampler with its pruner vs random sampling without
  pruning, N workers each, for ``minutes`` of asking (running trials then finish): equal wall time.
  The floor: the space's sampler and pruner find a better best than random, on the mean over seeds.
- ``pruner agreement``: from the random arms' full learning curves, how often the space's median
  pruner, replayed on them in trial order, would have stopped a trial that then ended in the worse
  half of its arm (its early decision agreeing with the final ranking).

The default space is ``search_spaces/sampler_bench.yaml`` (byte-level LM, width and learning rate
searched), on the ``bench`` budget below: 120 steps at T=128 with the held-out loss read every 30, so
every trial learns, a trial takes seconds and an arm of a few minutes holds tens of trials. Run it on
a quiet machine.
"""
from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch

from nlsearch.budgets import BUDGETS
from nlsearch.provenance import provenance
from nlsearch.search.run import run_search
from nlsearch.search.space import SearchSpace, load_space

DEFAULT_SPACE = "search_spaces/sampler_bench.yaml"
SAMPLER_SEEDS = (0, 1, 2)


def bench_budget() -> Dict[str, Any]:
    data = BUDGETS["smoke"].model_dump(mode="json")
    data.update(name="bench-search", version=2, eval_interval=30, checkpoint_interval=0, threads=1)
    short = {"batch_size": 8, "train_lengths": [128], "eval_lengths": [128]}
    data["recall"] = {"steps": 60, "eval_size": 32, **short}
    data["lm"] = {"steps": 120, "eval_size": 16, **short}
    return data


def arm_space(space: SearchSpace, label: str, sampler: str, pruner: Optional[Dict[str, Any]],
              minutes: Optional[float], budget: Optional[Dict[str, Any]], trials: int = 10_000,
              seed: Optional[int] = None) -> SearchSpace:
    """The space for one arm: ``trials`` trials, asking for ``minutes`` (None: until they are done),
    the sampler seeded with ``seed`` (None: the space's)."""
    update = {"name": f"bench-{label}", "trials": trials, "timeout_minutes": minutes,
              "sampler": space.sampler.model_copy(update={"kind": sampler}),
              "seed": space.seed if seed is None else seed}
    if budget is not None:
        update["budget"] = budget
    if pruner is not None:
        update["pruner"] = space.pruner.model_copy(update=pruner)
    return space.model_copy(update=update)


def run_arm(space: SearchSpace, label: str, workers: int, log: Callable[[str], Any],
            agreement_of: Optional[SearchSpace] = None) -> Dict[str, Any]:
    """One arm, in a temporary folder (no confirmation stage); ``agreement_of``: the space whose median
    pruner is replayed on this arm's curves (:func:`pruner_agreement`)."""
    with tempfile.TemporaryDirectory(prefix="nlsearch-bench-") as tmp:
        start = time.monotonic()
        study, frame, _ = run_search(space, out=Path(tmp) / space.name, workers=workers, log=lambda m: None,
                                     plots=False, confirm=False)
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
    maximize = space.objectives[0].direction == "maximize"
    agree = pruner_agreement(trials, agreement_of, maximize) if agreement_of is not None else (math.nan, 0)
    row = {"arm": label, "workers": workers, "sampler": space.sampler.kind, "pruner": space.pruner.kind,
           "sampler_seed": space.seed, "pruner_agreement": agree[0], "would_prune": agree[1],
           "minutes": space.timeout_minutes, "wall_s": wall, "trial_span_s": span, "finished": len(done),
           "complete": len(complete),
           "pruned": int((frame.state == "PRUNED").sum()), "failed": int((frame.state == "FAIL").sum()),
           "trials_per_hour": 3600 * len(done) / span, "best": best, "metric": space.objectives[0].metric,
           "direction": space.objectives[0].direction}
    log(f"{label}: {row['finished']} trials in {wall:.0f} s ({row['trials_per_hour']:.0f}/h), best {best:.4g}")
    return row


def pruner_agreement(trials: List[Any], space: SearchSpace, maximize: bool) -> Tuple[float, int]:
    """(fraction, count) of the trials the space's median pruner would have stopped, replayed on
    unpruned curves in trial order (a trial is compared, at each reported step past ``n_warmup_steps``,
    with the median of the earlier finished trials' values at that step, once ``n_startup_trials`` have
    finished), that ended in the worse half of all finished trials; NaN when it would stop none."""
    spec = space.pruner
    done = sorted((t for t in trials if t.state.name == "COMPLETE" and t.intermediate_values and t.values),
                  key=lambda t: t.number)
    if spec.kind != "median" or len(done) < 2:
        return math.nan, 0
    finals = sorted(t.values[0] for t in done)
    median_final = statistics.median(finals)
    worse = (lambda a, b: a < b) if maximize else (lambda a, b: a > b)
    stopped, agreed = 0, 0
    for i, trial in enumerate(done):
        earlier = done[:i]
        if len(earlier) < spec.n_startup_trials:
            continue
        for step, value in sorted(trial.intermediate_values.items()):
            seen = [t.intermediate_values[step] for t in earlier if step in t.intermediate_values]
            if step < spec.n_warmup_steps or not seen:
                continue
            if worse(value, statistics.median(seen)):
                stopped += 1
                agreed += worse(trial.values[0], median_final)
                break
    return (agreed / stopped if stopped else math.nan), stopped


def run_search_bench(space_file: str = DEFAULT_SPACE, minutes: float = 3.0, workers: int = 2,
                     budget: Optional[str] = None, trials: int = 12, seeds: Sequence[int] = SAMPLER_SEEDS,
                     log: Callable[[str], Any] = print) -> pd.DataFrame:
    """The scaling arms (``trials`` > 0), then per sampler seed the random and the space's own sampler
    arm at equal wall time; one row per arm with the machine's provenance."""
    space = load_space(space_file)
    trial_budget = bench_budget() if budget is None else budget
    none = {"kind": "none"}
    arms: List[Dict[str, Any]] = []
    if trials > 0:
        arms += [run_arm(arm_space(space, "random-1w", "random", none, None, trial_budget, trials),
                         f"random, {trials} trials, 1 worker", 1, log),
                 run_arm(arm_space(space, f"random-{workers}w", "random", none, None, trial_budget, trials),
                         f"random, {trials} trials, {workers} workers", workers, log)]
    for seed in seeds:
        arms += [run_arm(arm_space(space, f"random-{workers}w-timed-s{seed}", "random", none, minutes, trial_budget,
                                   seed=seed),
                         f"random, {minutes:g} min, {workers} workers, seed {seed}", workers, log, agreement_of=space),
                 run_arm(arm_space(space, f"{space.sampler.kind}-{workers}w-timed-s{seed}", space.sampler.kind, None,
                                   minutes, trial_budget, seed=seed),
                         f"{space.sampler.kind} + {space.pruner.kind} pruning, {minutes:g} min, {workers} workers, "
                         f"seed {seed}", workers, log)]
    frame = pd.DataFrame(arms)
    for key, value in provenance(torch.device("cpu")).items():
        frame[key] = value
    frame["space"] = space.name
    return frame


def search_floor_checks(frame: pd.DataFrame) -> pd.DataFrame:
    """Scaling (when its arms ran), and the space's sampler against random per seed and on the mean."""
    rows = []
    scaling = frame[frame.minutes.isna()]
    if len(scaling) == 2:
        one, many = scaling.iloc[0], scaling.iloc[1]
        ratio = many.trials_per_hour / one.trials_per_hour
        rows.append({"check": f"trials/hour, {int(many.workers)} workers / 1 worker", "value": ratio,
                     "floor": ">= 1.6", "ok": bool(ratio >= 1.6)})
    timed = frame[frame.minutes.notna()]
    random_arms, own = timed[timed.pruner == "none"], timed[timed.pruner != "none"]
    if len(random_arms) and len(own):
        sign = 1.0 if timed.direction.iloc[0] == "maximize" else -1.0
        best = {(arm.pruner != "none", arm.sampler_seed): arm.best for arm in timed.itertuples()}
        gains = [sign * (best[(True, s)] - best[(False, s)])
                 for s in sorted(set(own.sampler_seed) & set(random_arms.sampler_seed))]
        rows.append({"check": f"{own.sampler.iloc[0]}+{own.pruner.iloc[0]} best minus random best, mean over "
                              f"{len(gains)} sampler seeds (better = positive)", "value": statistics.fmean(gains),
                     "floor": "> 0", "ok": bool(statistics.fmean(gains) > 0)})
        rows.append({"check": "sampler seeds on which it found the better best", "value": sum(g > 0 for g in gains),
                     "floor": f"report (of {len(gains)})", "ok": True})
        agree = random_arms.pruner_agreement.dropna()
        if len(agree):
            rows.append({"check": "median pruner replayed on the random arms: stopped trials that ended in the "
                                  "worse half", "value": float((agree * random_arms.would_prune[agree.index]).sum()
                                                              / random_arms.would_prune[agree.index].sum()),
                         "floor": f"report ({int(random_arms.would_prune.sum())} stops)", "ok": True})
    return pd.DataFrame(rows)
