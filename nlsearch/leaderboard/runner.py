"""Training runs for the leaderboard: one ``Job`` = (model config, task, seed, lr factor) under a budget.

A job trains with ``nlsearch.train.train`` into the run layout of ``run-suite``
(``<runs>/<task>@v/<model>-<sha12>/<budget>@v-seed<seed>``), so a finished run is reused (its
``record.json`` exists) and a killed one resumes. Jobs run one after another, in ``workers`` spawned
processes, or as Ray tasks on the cluster at ``address``. A job that raises becomes a failed result,
never the end of a submission. Jobs carry only plain data (a config mapping, names, paths), so they
cross process boundaries; a worker resolves the config's plugin mixer itself, from the entry points
installed where it runs.
"""
from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from nlsearch.leaderboard.plugins import resolve_plugins

Log = Callable[[str], Any]


@dataclass(frozen=True)
class Job:
    model: Dict[str, Any]              # a model config mapping (JSON-able)
    task: str                          # name@version
    seed: int
    lr_factor: float
    budget: str                        # a budget name or YAML path
    runs_dir: str
    tasks_dir: Optional[str] = None
    threads: Optional[int] = None

    def label(self) -> str:
        return f"{self.model.get('name') or 'model'} on {self.task} seed {self.seed} lr x{self.lr_factor:g}"


@dataclass(frozen=True)
class JobResult:
    job: Job
    status: str                        # completed | failed: <reason>
    reused: bool
    record: Optional[Dict[str, Any]]   # the RunRecord as JSON data
    run_dir: Optional[str]


def scale_lr(model: Dict[str, Any], factor: float) -> Dict[str, Any]:
    """The config mapping with every outer learning rate (``optimizer.lr``, ``optimizer.adamw_lr``)
    multiplied by ``factor``. The optimizer's defaults are filled in so a factor always applies; the
    other keys stay as given (an unset ``vocab_size`` must stay unset: it takes the task's)."""
    from nlsearch.models import load_model_config

    if factor == 1.0:
        return dict(model)
    opt = load_model_config(dict(model)).optimizer.model_dump(mode="json")
    for key in ("lr", "adamw_lr"):
        if key in opt:
            opt[key] = opt[key] * factor
    return {**model, "optimizer": opt}


def run_job(job: Job) -> JobResult:
    """Trains (or reuses) one run; never raises for a failing run: its status says why."""
    from nlsearch.train import default_run_dir, plan_run, read_record, train
    from nlsearch.train.plan import RECORD

    run_dir = None
    try:
        resolve_plugins(job.model, job.model.get("name") or "model")
        cfg = scale_lr(job.model, job.lr_factor)
        tasks_dir = Path(job.tasks_dir) if job.tasks_dir else None
        plan = plan_run(cfg, job.task, job.budget, job.seed, "auto", job.threads, tasks_dir)
        run_dir = default_run_dir(job.runs_dir, plan)
        if (run_dir / RECORD).is_file():
            return JobResult(job, "completed", True, read_record(run_dir).model_dump(mode="json"), str(run_dir))
        result = train(plan.cfg, plan.task, plan.budget, job.seed, run_dir=run_dir, resume=True,
                       threads=job.threads, tasks_dir=tasks_dir)
    except Exception as err:                      # noqa: BLE001 - a failed run is a result, not the end
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        return JobResult(job, f"failed: {reason}", False, None, str(run_dir) if run_dir else None)
    if result.record is None:
        return JobResult(job, f"failed: run ended {result.status} at step {result.steps}", False, None, str(run_dir))
    return JobResult(job, "completed", False, result.record.model_dump(mode="json"), str(run_dir))


def _threads_each(workers: int, budget_threads: Optional[int]) -> int:
    total = budget_threads or os.cpu_count() or 1
    return max(1, total // workers)


def _on_ray(jobs: Sequence[Job], address: str) -> List[JobResult]:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(run_job)
    return list(ray.get([remote.remote(job) for job in jobs]))


def run_jobs(jobs: Sequence[Job], workers: int = 1, address: Optional[str] = None, log: Optional[Log] = None,
             budget_threads: Optional[int] = None) -> List[JobResult]:
    """Runs ``jobs``; returns their results in the same order. ``workers > 1``: that many spawned
    processes, each with ``budget_threads // workers`` CPU threads (at least 1); ``address``: Ray."""
    log = log or (lambda _msg: None)
    if not jobs:
        return []
    if address:
        results = _on_ray(jobs, address)
    elif workers <= 1:
        results = []
        for job in jobs:
            results.append(run_job(job))
            log(f"{job.label()}: {results[-1].status}{' (reused)' if results[-1].reused else ''}")
        return results
    else:
        each = _threads_each(workers, budget_threads)
        jobs = [Job(**{**job.__dict__, "threads": job.threads or each}) for job in jobs]
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = list(pool.map(run_job, jobs))
    for result in results:
        log(f"{result.job.label()}: {result.status}{' (reused)' if result.reused else ''}")
    return results
