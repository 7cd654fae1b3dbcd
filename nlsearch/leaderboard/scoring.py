"""Score one model under a protocol: the learning-rate sweep, then every seed, per task.

Fairness rule (issue "Leaderboard and baseline reproduction"): every model, baseline or submission,
goes through these rules (:class:`Scoring`, which :func:`score_model` and ``reproduce`` run) with the
same budget and the same lr sweep. The sweep trains each lr factor on the protocol's first seed; per
task, the factor with the best ranked metric (a failed run counts as the worst; ties go to the factor
closest to 1, then to the first in the protocol's order) is then trained on the remaining seeds, and
the sweep run of that factor is the first seed's result. Selection uses the same eval set the score
is reported on (the tasks have no third split); it biases every model alike.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from nlsearch.budgets import Budget, task_kind
from nlsearch.config import is_file_ref
from nlsearch.leaderboard.entry import RunInfo, SeedResult, TaskResult
from nlsearch.leaderboard.protocol import Protocol, ProtocolTask
from nlsearch.leaderboard.runner import Job, JobResult, Log, run_dynamic
from nlsearch.leaderboard.store import LeaderboardError
from nlsearch.train.record import Failure

RUN_FIELDS = tuple(RunInfo.model_fields)


def _budget_arg(protocol: Protocol, budget: Budget) -> str:
    """A budget argument a worker process can load: the profile reference or the track's YAML path."""
    for allowed in protocol.budgets:
        if protocol.load_budget(allowed).ref == budget.ref and is_file_ref(allowed):
            return str(protocol.source.parent / allowed)
    return budget.ref


def seed_result(result: JobResult, source: str = "measured") -> SeedResult:
    """The entry's view of a finished job: headline and per-length metrics, and the run's provenance."""
    record = result.record
    if result.status != "completed" or record is None:
        return SeedResult(seed=result.job.seed, status=result.status, source=source,
                          lr_factor=result.job.lr_factor, metrics={})
    run = {k: record[k] for k in RUN_FIELDS if k in record}
    run.update(run_dir=result.run_dir or "", reused=result.reused)
    metrics = {k: v for k, v in record["metrics"].items() if "[" not in k}
    return SeedResult(seed=result.job.seed, status="completed", source=source, lr_factor=result.job.lr_factor,
                      metrics=metrics, run=RunInfo(**run))


def ranked_value(seed: SeedResult, metric: str, higher_is_better: bool) -> float:
    """The seed's ranked metric as a number where larger is better; -inf when missing or failed."""
    value = seed.metrics.get(metric) if seed.status == "completed" else None
    if value is None or not math.isfinite(value):
        return -math.inf
    return value if higher_is_better else -value


def _directions(rule: ProtocolTask, results: Sequence[JobResult], tasks_dir: Optional[Path]) -> Tuple[str, Dict]:
    """(task kind, metric name -> higher is better) from a finished run, else from the task spec."""
    from nlsearch.tasks import load_task

    for result in results:
        if result.record is not None:
            hib = {k: v for k, v in result.record["higher_is_better"].items() if "[" not in k}
            return result.record["task_kind"], hib
    task = load_task(rule.task, tasks_dir)
    return task_kind(task), {m.name: m.higher_is_better for m in task.spec.metrics}


def _pick(rule: ProtocolTask, sweep: Mapping[float, SeedResult], hib: bool) -> float:
    return max(sweep, key=lambda f: (ranked_value(sweep[f], rule.metric, hib), -abs(math.log(f))))


def check_metric(rule: ProtocolTask, directions: Mapping[str, bool]) -> bool:
    if rule.metric not in directions:
        raise ValueError(f"protocol task {rule.task}: metric {rule.metric!r} is not one the task reports "
                         f"({sorted(directions)})")
    return directions[rule.metric]


def check_tasks(protocol: Protocol) -> None:
    """Every protocol task exists and declares its ranked metric: checked before the first run."""
    from nlsearch.tasks import load_task

    for rule in protocol.tasks + protocol.claim_tasks:
        task = load_task(rule.task, protocol.resolve_tasks_dir())
        check_metric(rule, {m.name: m.higher_is_better for m in task.spec.metrics})


def score_model(model: Dict[str, Any], protocol: Protocol, budget: Budget, runs_dir: Path, *,
                seeds: Optional[Sequence[int]] = None, lr_factors: Optional[Mapping[str, float]] = None,
                workers: int = 1, address: Optional[str] = None, log: Optional[Log] = None,
                tasks: Optional[Sequence[ProtocolTask]] = None,
                on_result: Optional[Callable[[JobResult], Any]] = None) -> Dict[str, TaskResult]:
    """Trains and evaluates ``model`` (a config mapping) on the tasks ranked on ``budget``'s track (or on ``tasks``: the
    claim tasks a reproduction scores, by the same rules); returns the task results by task ref.
    ``seeds``: a subset of the protocol's (verification of a result file); ``lr_factors``: a fixed
    factor per task instead of the sweep (a claimed, verified choice); ``on_result``: called with every
    run as it finishes. Raises :class:`RunError` when a run ended in an error."""
    scoring = Scoring(model, protocol, budget, runs_dir, seeds=seeds, lr_factors=lr_factors, tasks=tasks)
    run_dynamic([(0, job) for job in scoring.start()], lambda _p, result: [(0, j) for j in scoring.take(result)],
                workers, address, log, budget.threads, budget.gpu_share(), on_result)
    return scoring.result()


class Scoring:
    """The runs that score one model, queued as they become known: every task's sweep (each lr factor on
    the first seed) at once, and a task's other seeds as soon as its own sweep is complete (at the
    factor it chose), so no task waits for another's sweep and a runner can fill its workers with the
    next model's runs (:func:`nlsearch.leaderboard.runner.run_dynamic`). A run that ends in an error
    (not a diverged loss) stops the queueing: no lr is picked from it, :meth:`result` raises
    :class:`RunError` once the runs already started are back, and the next call trains it again."""

    def __init__(self, model: Dict[str, Any], protocol: Protocol, budget: Budget, runs_dir: Path, *,
                 seeds: Optional[Sequence[int]] = None, lr_factors: Optional[Mapping[str, float]] = None,
                 tasks: Optional[Sequence[ProtocolTask]] = None):
        self.model, self.protocol = model, protocol
        self.seeds = list(protocol.seeds if seeds is None else seeds)
        self.rules = tuple(protocol.ranked(budget) if tasks is None else tasks)
        self.tasks_dir = protocol.resolve_tasks_dir()
        check_tasks(protocol)
        self.common = dict(budget=_budget_arg(protocol, budget), runs_dir=str(runs_dir),
                           tasks_dir=str(self.tasks_dir) if self.tasks_dir else None)
        self.sweep_seed, self.factors = protocol.seeds[0], tuple(dict.fromkeys(protocol.lr_sweep.factors))
        sweeping = lr_factors is None and len(self.factors) > 1 and self.sweep_seed in self.seeds
        self.sweeps: Dict[str, Dict[float, JobResult]] = {r.task: {} for r in self.rules} if sweeping else {}
        self.chosen: Dict[str, float] = {} if sweeping else {
            r.task: float(lr_factors[r.task]) if lr_factors is not None else
            (self.factors[0] if len(self.factors) == 1 else 1.0) for r in self.rules}
        self.results: List[JobResult] = []               # every run but the sweeps'
        self.errors: List[JobResult] = []
        self.out, self.started = 0, False                # runs queued and not back yet; start() called

    def _queue(self, jobs: List[Job]) -> List[Job]:
        self.out += len(jobs)
        return jobs

    def start(self) -> List[Job]:
        """The runs to queue first: every sweep run, and the seeds of tasks that have no sweep."""
        self.started = True
        sweep = [Job(self.model, task, self.sweep_seed, f, **self.common) for task in self.sweeps for f in self.factors]
        return self._queue(sweep + [job for task in self.chosen for job in self._seeds(task)])

    def _seeds(self, task: str) -> List[Job]:
        return [Job(self.model, task, s, self.chosen[task], **self.common) for s in self.seeds
                if not (task in self.sweeps and s == self.sweep_seed)]

    def take(self, result: JobResult) -> List[Job]:
        """Records a finished run of this model; returns the runs it makes ready (a task's seeds)."""
        self.out -= 1
        job = result.job
        if result.status.startswith("error:"):
            self.errors.append(result)
        if job.task in self.sweeps and job.seed == self.sweep_seed and job.task not in self.chosen:
            self.sweeps[job.task][job.lr_factor] = result
        else:
            self.results.append(result)
        if self.errors or job.task in self.chosen or len(self.sweeps.get(job.task, ())) < len(self.factors):
            return []
        rule = next(r for r in self.rules if r.task == job.task)
        done = self.sweeps[job.task] = {f: self.sweeps[job.task][f] for f in self.factors}   # factor order: ties
        hib = check_metric(rule, _directions(rule, list(done.values()), self.tasks_dir)[1])
        self.chosen[job.task] = _pick(rule, {f: seed_result(j) for f, j in done.items()}, hib)
        return self._queue(self._seeds(job.task))

    @property
    def done(self) -> bool:
        """Started, and no run of this model is waiting or running."""
        return self.started and self.out == 0

    def result(self) -> Dict[str, TaskResult]:
        """The task results by task ref, once :attr:`done`; :class:`RunError` when a run raised."""
        check_no_errors(self.errors)
        return {rule.task: _task_result(rule, self.chosen[rule.task], self.sweeps.get(rule.task, {}), self.results,
                                        self.seeds, self.tasks_dir) for rule in self.rules}


class RunError(LeaderboardError):
    """Runs that raised (not a diverged loss): the model cannot be scored from them. Not bad input:
    the command exits with 1. ``runs``: the runs and their errors, as one line."""

    exit_code = 1

    def __init__(self, message: str, runs: str = ""):
        super().__init__(message)
        self.runs = runs


def check_no_errors(results: Sequence[JobResult]) -> None:
    """Raises :class:`RunError` naming every run that ended in an error rather than a training outcome;
    the runs that finished are kept and reused by the next call."""
    errors = [r for r in results if r.status.startswith("error:")]
    if errors:
        listed = "; ".join(f"{r.job.label()}: {r.status[len('error: '):]}" for r in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise RunError(f"{len(errors)} run(s) raised an error, which is no training outcome, so nothing is "
                       f"scored from them: {listed}{more}. Finished runs are kept; run the command again "
                       f"to train the rest", runs=f"{listed}{more}")


def _task_result(rule: ProtocolTask, factor: float, sweep: Mapping[float, JobResult], results: List[JobResult],
                 seeds: Sequence[int], tasks_dir: Optional[Path]) -> TaskResult:
    mine = [r for r in results if r.job.task == rule.task]
    if factor in sweep:
        mine.append(sweep[factor])
    mine.sort(key=lambda r: list(seeds).index(r.job.seed))
    kind, directions = _directions(rule, mine + list(sweep.values()), tasks_dir)
    hib = check_metric(rule, directions)
    sweep_values = {f"{f:g}": _finite(seed_result(j).metrics.get(rule.metric)) for f, j in sweep.items()}
    return TaskResult(task=rule.task, kind=kind, metric=rule.metric, higher_is_better=hib, directions=directions,
                      lr_factor=factor, sweep=sweep_values, seeds=tuple(seed_result(r) for r in mine))


def _finite(x: Optional[float]) -> Optional[float]:
    return x if x is not None and math.isfinite(x) else None


_PLANS: Dict[Tuple, Any] = {}
"""Run plans by (model, lr factor, task, budget hash, seed, device, tasks folder): a reproduction reads
its runs folder after every run (the report), ~650 plans, and plans do not change while it runs."""


def finished_runs(model: Dict[str, Any], protocol: Protocol, budget: Budget, runs_dir: Path,
                  tasks: Optional[Sequence[ProtocolTask]] = None,
                  seeds: Optional[Sequence[int]] = None) -> Dict[Tuple[str, int, float], Any]:
    """Every run :func:`score_model` may train for ``model`` ((task, seed, lr factor): every factor on
    every seed, the protocol's or ``seeds``), mapped to its ``RunPlan`` and its outcome where one passes
    the reuse check (a ``RunRecord``, or the ``Failure`` of a run that diverged; else None):
    ``(plan, outcome)``. Reads the runs folder; trains nothing."""
    from nlsearch.train import default_run_dir
    from nlsearch.train.record import finished_outcome

    tasks_dir = protocol.resolve_tasks_dir()
    out: Dict[Tuple[str, int, float], Any] = {}
    for rule in protocol.ranked(budget) if tasks is None else tasks:
        for seed in protocol.seeds if seeds is None else seeds:
            for factor in protocol.lr_sweep.factors:
                plan = cached_plan(model, factor, rule.task, budget, seed, tasks_dir)
                run_dir = default_run_dir(runs_dir, plan)
                try:
                    record = finished_outcome(run_dir, plan.identity())
                except ValueError:
                    record = None
                out[(rule.task, seed, factor)] = (plan, record)
    return out


def cached_plan(model: Dict[str, Any], factor: float, task: str, budget: Budget, seed: int, tasks_dir: Path):
    """The ``RunPlan`` of ``model`` at lr x``factor`` on ``task``/``seed``, where the runner puts it
    (``runner._place``), from ``_PLANS`` once built (validating a run builds its model: ~15 ms)."""
    from nlsearch.leaderboard.runner import scale_lr
    from nlsearch.train import plan_run

    device = "cpu" if not budget.gpu_share() else "auto"
    key = (json.dumps(model, sort_keys=True, default=str), factor, task, budget.sha256(), seed, device,
           str(tasks_dir))
    if key not in _PLANS:
        _PLANS[key] = plan_run(scale_lr(model, factor), task, budget, seed, device, None, tasks_dir)
    return _PLANS[key]


def partial_results(model: Dict[str, Any], protocol: Protocol, budget: Budget, runs_dir: Path,
                    tasks: Optional[Sequence[ProtocolTask]] = None, seeds: Optional[Sequence[int]] = None
                    ) -> Dict[str, Tuple[int, int, Optional[TaskResult]]]:
    """Per task: (runs finished, runs the protocol needs, the result so far or None). The result exists
    once the sweep has finished (the factor is then chosen as :func:`score_model` chooses it) and holds
    the seeds finished at that factor, so a report can show a mean over the seeds done so far.
    ``seeds``: the protocol's and more (a claim that reads more seeds than the protocol ranks with)."""
    seeds = tuple(protocol.seeds if seeds is None else seeds)
    runs = finished_runs(model, protocol, budget, runs_dir, tasks, seeds)
    factors, first = tuple(protocol.lr_sweep.factors), protocol.seeds[0]
    sweeping = len(factors) > 1

    def finished(task: str, seed: int, factor: float) -> Optional[JobResult]:
        record = runs[(task, seed, factor)][1]
        job = Job(model, task, seed, factor, budget.ref, str(runs_dir))
        if isinstance(record, Failure):
            return JobResult(job, record.status, True, None, None)
        return None if record is None else JobResult(job, "completed", True, record.model_dump(mode="json"), None)

    out: Dict[str, Tuple[int, int, Optional[TaskResult]]] = {}
    for rule in protocol.ranked(budget) if tasks is None else tasks:
        sweep = {f: r for f in factors if (r := finished(rule.task, first, f)) is not None} if sweeping else {}
        needed = len(seeds) + (len(factors) - 1 if sweeping else 0)
        if sweeping and len(sweep) < len(factors):
            out[rule.task] = (len(sweep), needed, None)
            continue
        hib = check_metric(rule, _directions(rule, list(sweep.values()), protocol.resolve_tasks_dir())[1])
        factor = _pick(rule, {f: seed_result(j) for f, j in sweep.items()}, hib) if sweeping else factors[0]
        rest = [r for s in seeds
                if not (sweeping and s == first) and (r := finished(rule.task, s, factor)) is not None]
        so_far = _task_result(rule, factor, sweep, rest, seeds, protocol.resolve_tasks_dir())
        out[rule.task] = (len(sweep) + len(rest), needed, so_far)
    return out


def planned_runs(model: Dict[str, Any], label: str, preset: Optional[str], protocol: Protocol, budget: Budget,
                 runs_dir: Path, tasks: Optional[Sequence[ProtocolTask]] = None,
                 seeds: Optional[Sequence[int]] = None) -> list:
    """The runs :func:`score_model` would train for ``model`` (on the protocol's seeds or ``seeds``),
    each marked finished when a run that passes the reuse check is there: the sweep's (every factor on
    the first seed) and the other seeds' (at the factor the sweep will choose: finished when a run of
    any factor is there)."""
    from nlsearch.bench.estimate import PlannedRun, checkpointed_steps
    from nlsearch.train import default_run_dir

    seeds = tuple(protocol.seeds if seeds is None else seeds)
    runs = finished_runs(model, protocol, budget, runs_dir, tasks, seeds)
    factors = tuple(protocol.lr_sweep.factors)
    out: List[PlannedRun] = []
    for rule in protocol.ranked(budget) if tasks is None else tasks:
        for seed in seeds:
            sweep = seed == protocol.seeds[0] and len(factors) > 1
            outcomes = [runs[(rule.task, seed, f)][1] for f in factors]
            plans = [runs[(rule.task, seed, f)][0] for f in factors]
            if sweep:
                out += [PlannedRun.of(label, preset, p, o is not None, default_run_dir(runs_dir, p), o)
                        for p, o in zip(plans, outcomes)]
            else:        # the factor may not be chosen yet: the run furthest along (or the last factor's)
                dirs = [default_run_dir(runs_dir, p) for p in plans]
                done = [i for i, o in enumerate(outcomes) if o is not None]
                ahead = done[0] if done else max(range(len(plans)), key=lambda i: (checkpointed_steps(dirs[i]), i))
                out.append(PlannedRun.of(label, preset, plans[ahead], bool(done), dirs[ahead], outcomes[ahead]))
    return out
