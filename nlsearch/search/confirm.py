"""The confirmation stage of a search, and its verdict.

A search ranks single runs on the selection eval set, so its ranking mixes the candidates' merit with
seed noise and with the luck of the selection set. After the search phase the driver retrains the
finalists:

- the ``confirm.top_k`` best complete trials, and the best trial of every value of the space's
  ``question`` (a parameter, e.g. ``strategy``, or a derived quantity, e.g. ``nesting_depth``);
- every finalist with every seed of ``confirm.seeds``, on the budget's report eval set (the budget
  itself, not the search's ``-select`` twin), the same budget otherwise; a seed the search trial
  itself trained (at the finalist's own learning rate) is not trained again: the trial's final
  checkpoint is evaluated on the report eval set (``trained_in`` in the table); with several
  ``confirm.lr_factors`` the finalist's learning rate is re-tuned first (each factor on the first
  seed, the best by the first objective kept for the other seeds, as the leaderboard's sweep does).

The runs are ordinary trial runs under ``<results>/confirm/<trial>/``: a finished run is reused (its
record checked against the run it must be), an interrupted one resumes from its checkpoint, and they
go through the search's executor (in process or on Ray). ``confirmation.parquet`` has one row per
finalist, lr factor and seed.

The verdict compares the values of the question: each value is represented by its best finalist (by
mean over the confirmation seeds); the winner is the best value, and its difference to the runner-up
and to the space's ``reference`` value is tested with Welch's t-test (two-sided, level
``confirm.alpha``). "No difference resolved at this budget" is the answer when the test does not
reject equality.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pandas as pd

from nlsearch.search.space import SearchSpace
from nlsearch.stats import Welch, welch
from nlsearch.search.trial import TrialJob, TrialOutcome

CONFIRMATION = "confirmation.parquet"


# --- finalists -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finalist:
    number: int                # the search trial
    value: Any                 # its value of the question (None without one)
    config: Dict[str, Any]
    why: str
    run_dir: Optional[str] = None          # the search trial's runs (its seeds' training is reused)


def question_value(space: SearchSpace, trial) -> Any:
    """A trial's value of the space's question: the sampled parameter, or the derived fact."""
    q = space.question
    if q is None:
        return None
    if q in trial.params:
        return trial.params[q]
    if q in space.params:                              # a conditional parameter this trial did not sample
        return None
    value = trial.user_attrs.get(q)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def select_finalists(study, space: SearchSpace) -> List[Finalist]:
    """The top ``confirm.top_k`` complete trials, then the best of every other question value, in
    that order (each trial once)."""
    from nlsearch.search.results import best_trials

    ranked = best_trials(study, space)
    chosen: Dict[int, Finalist] = {}
    for t in ranked[:space.confirm.top_k]:
        chosen[t.number] = Finalist(t.number, question_value(space, t), json.loads(t.user_attrs["config"]),
                                    f"top {space.confirm.top_k}", t.user_attrs.get("run_dir"))
    if space.question is not None:
        seen = {f.value for f in chosen.values()}
        for t in ranked:
            value = question_value(space, t)
            if value is not None and value not in seen:
                seen.add(value)
                chosen[t.number] = Finalist(t.number, value, json.loads(t.user_attrs["config"]),
                                            f"best of {space.question}={value}", t.user_attrs.get("run_dir"))
    return list(chosen.values())


def _with_lr(config: Dict[str, Any], factor: float) -> Dict[str, Any]:
    if factor == 1.0:
        return config
    opt = dict(config.get("optimizer") or {})
    if "lr" not in opt:
        raise ValueError(f"confirm.lr_factors re-tunes optimizer.lr, which this config does not set: {opt}")
    return {**config, "optimizer": {**opt, "lr": opt["lr"] * factor}}


# --- the stage -------------------------------------------------------------------------------

Submit = Callable[[List[TrialJob]], List[TrialOutcome]]


def run_confirmation(space: SearchSpace, study, out: Path, budget: Dict[str, Any], submit: Submit,
                     make_job: Callable[..., TrialJob]) -> pd.DataFrame:
    """Retrains the finalists (module docstring) through ``submit`` (runs jobs, returns their outcomes,
    in any order); writes and returns the confirmation table. ``make_job(number, config, seeds,
    run_dir, budget, trained_in)`` builds a job the executor can run; ``trained_in`` is the search
    trial's run folder where it trained this config with this seed (its checkpoint is evaluated on the
    report eval set instead of training again: ``trial.TrialJob``)."""
    finalists = select_finalists(study, space)
    seeds, factors = list(space.confirm.seeds), list(space.confirm.lr_factors)
    first = space.objectives[0]
    sign = 1.0 if first.direction == "maximize" else -1.0
    rows: List[Dict[str, Any]] = []

    def run(stage: List[Tuple[Finalist, float, int]]) -> None:
        jobs = {}
        for i, (f, factor, seed) in enumerate(stage):
            number = -(1 + len(rows) + i)                  # never an Optuna trial's number
            run_dir = out / "confirm" / f"{f.number:04d}"
            if factor != 1.0:                              # the finalist's own lr keeps the plain folder
                run_dir = run_dir / f"lr{factor:g}"        # (its runs are reused when a sweep is added later)
            reuse = f.run_dir if factor == 1.0 and seed in space.seeds else None    # the trial trained it
            job = make_job(number, _with_lr(f.config, factor), [seed], str(run_dir), budget, reuse)
            jobs[number] = (f, factor, seed, job)
        outcomes = submit([j[3] for j in jobs.values()])
        for o in outcomes:
            f, factor, seed, job = jobs[o.number]
            value = o.metrics.get(first.metric) if first.task is not None else o.tokens_per_s
            rows.append({"trial": f.number, "question": "" if f.value is None else str(f.value), "why": f.why,
                         "lr_factor": factor, "seed": seed, "status": o.status, "reason": o.reason,
                         "trained_in": o.trained_in or "",
                         "value": math.nan if value is None else float(value),
                         **{f"m:{k}": v for k, v in o.metrics.items()}, "run_dir": job.run_dir})

    chosen = {f.number: 1.0 for f in finalists}
    if len(factors) > 1:
        run([(f, factor, seeds[0]) for f in finalists for factor in factors])
        for f in finalists:
            tried = [r for r in rows if r["trial"] == f.number and r["status"] == "complete"]
            if tried:
                chosen[f.number] = max(tried, key=lambda r: (sign * r["value"], -abs(math.log(r["lr_factor"]))))[
                    "lr_factor"]
        rest = [(f, chosen[f.number], s) for f in finalists for s in seeds[1:]]
    else:
        rest = [(f, 1.0, s) for f in finalists for s in seeds]
    run(rest)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["chosen"] = [chosen[t] == lr for t, lr in zip(frame.trial, frame.lr_factor)]
        frame = frame.sort_values(["trial", "lr_factor", "seed"]).reset_index(drop=True)
        from nlsearch.io import write_parquet
        write_parquet(frame, out / CONFIRMATION)
    return frame


# --- the verdict -----------------------------------------------------------------------------

@dataclass
class Verdict:
    text: str                                    # the paragraph summary.md opens with
    per_value: pd.DataFrame                      # question value -> trial, mean, std, n, values
    tests: Dict[str, Welch]                      # "runner-up" / "reference" -> the winner against it


def _fmt(x: float) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.4g}"


def verdict(space: SearchSpace, frame: pd.DataFrame) -> Verdict:
    """The answer of a confirmed search (module docstring), from its confirmation table."""
    first = space.objectives[0]
    sign = 1.0 if first.direction == "maximize" else -1.0
    alpha = space.confirm.alpha
    used = frame[frame.chosen & (frame.status == "complete")] if not frame.empty else frame
    if used.empty:
        return Verdict("No confirmation run completed, so the search gives no answer yet.", pd.DataFrame(), {})
    per_trial = used.groupby(["question", "trial"])["value"].agg(list).reset_index()
    per_trial["mean"] = per_trial["value"].map(statistics.fmean)
    per_trial["std"] = per_trial["value"].map(lambda v: statistics.stdev(v) if len(v) > 1 else math.nan)
    per_trial["n"] = per_trial["value"].map(len)
    per_trial["score"] = sign * per_trial["mean"]
    best = per_trial.sort_values("score", ascending=False).groupby("question", sort=False).head(1)
    per_value = best.sort_values("score", ascending=False).reset_index(drop=True)
    what = space.question or "candidate"
    label = (lambda v: f"{what}={v}") if space.question else (lambda v: f"trial {v}")
    if not space.question:                     # no question: the finalists themselves are compared
        per_value = per_trial.sort_values("score", ascending=False).reset_index(drop=True)
        per_value["question"] = per_value["trial"].astype(str)
    top = per_value.iloc[0]
    head = (f"{label(top.question)} wins on {first.metric} ({first.direction}): {_fmt(top['mean'])} ± "
            f"{_fmt(top['std'])} over {top.n} seeds (trial {top.trial}, retrained on the report eval set).")
    tests: Dict[str, Welch] = {}
    sentences = [head]
    runner_up = per_value.iloc[1] if len(per_value) > 1 else None
    others = [("runner-up", runner_up)]
    is_ref = runner_up is not None and space.reference is not None and str(space.reference) == runner_up.question
    if is_ref:
        others = [("runner-up (the reference)", runner_up)]
    elif space.reference is not None and str(space.reference) != top.question:
        ref = per_value[per_value.question == str(space.reference)]
        others.append(("reference", ref.iloc[0] if len(ref) else None))
    for role, row in others:
        if row is None:
            sentences.append(f"There is no {role} to compare with" + (
                f" (no finalist has {what}={space.reference})." if role == "reference" else "."))
            continue
        w = welch(list(top.value), list(row.value))
        tests[role.split(" ")[0]] = w
        resolved = not math.isnan(w.p) and w.p < alpha
        sentences.append(
            f"Against the {role} {label(row.question)} ({_fmt(row['mean'])} ± {_fmt(row['std'])}, n={row.n}) the "
            f"difference is {_fmt(w.diff)}; Welch's t = {_fmt(w.t)}, df = {_fmt(w.df)}, p = {_fmt(w.p)}: "
            + ("beyond seed noise at α = " if resolved else "no difference resolved at this budget (α = ")
            + f"{alpha:g}" + ("." if resolved else ")."))
    return Verdict(" ".join(sentences), per_value, tests)


def confirmation_table(result: Verdict) -> pd.DataFrame:
    """The per-value table summary.md shows."""
    if result.per_value.empty:
        return result.per_value
    table = result.per_value[["question", "trial", "mean", "std", "n"]].copy()
    table["seeds"] = result.per_value["value"].map(lambda v: ", ".join(f"{x:.4g}" for x in v))
    return table


def load_confirmation(out: Path) -> Optional[pd.DataFrame]:
    path = Path(out) / CONFIRMATION
    return pd.read_parquet(path) if path.exists() else None
