"""One trial, as a worker runs it: ``run_trial(job, report) -> TrialOutcome``. Pure and picklable.

A trial trains its model config on every task of the space with every seed (``nlsearch.train``),
each run in ``<job.run_dir>/<task>/seed<seed>``. The runs of the pruning task with the first seed
send their intermediate metric through ``report(step, value) -> prune?``; a True answer stops the
run (status ``pruned``). The worker never touches the study: it returns an outcome, and the driver
tells Optuna. A run whose ``record.json`` exists is reused; a run with checkpoints resumes (a trial
re-queued after a crash continues where it stopped).

A confirmation job may name ``trained_in``, the run folder of the search trial that trained the same
config with the same seed under ``trained_budget`` (the selection twin of its budget, which differs
only in the eval set): its final checkpoint is then evaluated on the job's eval set instead of being
trained again (the training is the same, batch for batch), except for continual tasks, whose
forgetting needs the training run. A source run that is not that run is not used: the job trains.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from nlsearch.budgets import Budget
from nlsearch.runtime import interrupted
from nlsearch.search.space import task_label
from nlsearch.train.loop import NonFiniteLossError, train
from nlsearch.train.plan import RECORD, plan_run
from nlsearch.train.record import RunRecord, finished_record

Report = Callable[[int, float], bool]


@dataclass(frozen=True)
class TrialJob:
    number: int                          # the Optuna trial number
    config: Dict                         # ModelConfig as JSON-able mapping
    tasks: List[str]
    budget: Dict                         # Budget as JSON-able mapping
    seeds: List[int]
    run_dir: str
    prune_task: Optional[str] = None     # the task (as listed) whose first-seed run reports
    prune_metric: Optional[str] = None
    threads: Optional[int] = None
    device: str = "auto"
    tasks_dir: Optional[str] = None
    trained_in: Optional[str] = None     # a search trial's run folder that trained this config (module doc)
    trained_budget: Optional[Dict] = None    # the budget it trained under


@dataclass
class TrialOutcome:
    number: int
    status: str                          # complete | pruned | failed
    metrics: Dict[str, float] = field(default_factory=dict)   # "<task>:<metric>" -> mean over seeds
    reason: str = ""
    pruned_at: Optional[int] = None
    tokens_per_s: Optional[float] = None
    wall_s: float = 0.0
    hardware: str = ""
    pid: int = 0
    dropped: List[str] = field(default_factory=list)           # "<task>:<metric> seed <s>": non-finite, not in the mean
    trained_in: Optional[str] = None     # set when every run was a source trial's checkpoint, evaluated


TRAINING_ONLY = ("name", "eval_seed")     # budget fields that do not change what training computes


def _evaluated(job: TrialJob, task: str, seed: int, budget: Budget, tasks_dir: Optional[Path]) -> Optional[RunRecord]:
    """The record of the source trial's checkpoint evaluated under ``budget`` (written beside that run,
    under ``evals/``), or None when there is no source, it trained differently, or the task is continual."""
    from nlsearch.budgets import task_kind
    from nlsearch.train.reevaluate import evaluate_checkpoint

    if job.trained_in is None or job.trained_budget is None:
        return None
    trained = Budget.model_validate(job.trained_budget)
    if trained.model_dump(exclude=set(TRAINING_ONLY)) != budget.model_dump(exclude=set(TRAINING_ONLY)):
        return None
    source = Path(job.trained_in) / task_label(task) / f"seed{seed}"
    plan = plan_run(job.config, task, trained, seed, job.device, job.threads, tasks_dir)
    if task_kind(plan.task) == "continual" or not (source / RECORD).exists():
        return None
    try:
        finished_record(source, plan.identity())
    except ValueError:                       # not the run it must be: train instead
        return None
    record, _, _ = evaluate_checkpoint(source, plan.task, budget, job.device, tasks_dir)
    return record


def _run(job: TrialJob, task: str, seed: int, report: Optional[Report]) -> Optional[RunRecord]:
    """One training run (or the evaluation of the search trial's run of it: ``trained_in``); returns its
    record, or None when the reporter stopped it."""
    run_dir = Path(job.run_dir) / task_label(task) / f"seed{seed}"
    tasks_dir = Path(job.tasks_dir) if job.tasks_dir else None
    budget = Budget.model_validate(job.budget)
    evaluated = _evaluated(job, task, seed, budget, tasks_dir) if report is None else None
    if evaluated is not None:
        return evaluated
    if (run_dir / RECORD).exists():         # a finished run: reused only when it is this one (ValueError else)
        return finished_record(run_dir, plan_run(job.config, task, budget, seed, job.device, job.threads,
                                                 tasks_dir).identity())
    reporter = None
    if report is not None:
        def reporter(step: int, metrics: Dict[str, float]) -> bool:
            return bool(report(step, float(metrics[job.prune_metric])))
    result = train(job.config, task, budget, seed, reporter=reporter, run_dir=run_dir,
                   resume=True, device=job.device, threads=job.threads, tasks_dir=tasks_dir)
    return result.record if result.status == "completed" else None


def _mean(values: List[float]) -> float:
    """The mean of the finite values (NaN when there are none); the trial lists what it left out."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def run_trial(job: TrialJob, report: Optional[Report] = None) -> TrialOutcome:
    """Trains and scores one candidate. Returns ``failed`` (with the reason) for a diverged or broken
    run instead of raising; lets KeyboardInterrupt through."""
    start = time.perf_counter()
    out = TrialOutcome(job.number, "complete", pid=os.getpid())
    records: List[RunRecord] = []

    def tracked(step: int, value: float) -> bool:
        stop = bool(report(step, value))
        if stop:
            out.pruned_at = step
        return stop
    try:
        for task in job.tasks:
            per_seed: Dict[str, List[float]] = {}
            for i, seed in enumerate(job.seeds):
                reports = tracked if (report is not None and i == 0 and task_label(task) == job.prune_task) else None
                record = _run(job, task, seed, reports)
                if record is None:
                    out.status, out.reason = "pruned", f"pruned during {task} seed {seed}"
                    return out
                records.append(record)
                for name, value in record.metrics.items():
                    if "[" not in name:
                        per_seed.setdefault(name, []).append(value)
                        if value is None or not math.isfinite(value):
                            out.dropped.append(f"{task_label(task)}:{name} seed {seed}")
            out.metrics.update({f"{task_label(task)}:{k}": _mean(v) for k, v in per_seed.items()})
        if records and all(r.status == "evaluated" for r in records):
            out.trained_in = job.trained_in
    except NonFiniteLossError as err:
        out.status, out.reason = "failed", f"non-finite loss: {err}"
    except Exception as err:                                   # a broken trial must not end the search
        if interrupted():                   # Ctrl-C that a library turned into another error: a stop, not a failure
            raise KeyboardInterrupt from err
        out.status, out.reason = "failed", f"{type(err).__name__}: {err}"
    finally:
        out.wall_s = time.perf_counter() - start
        speeds = [r.tokens_per_s for r in records if r.tokens_per_s]
        out.tokens_per_s = _mean(speeds) if speeds else None
        out.hardware = records[0].hardware if records else ""
    return out
