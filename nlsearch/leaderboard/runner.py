"""Training runs for the leaderboard: one ``Job`` = (model config, task, seed, lr factor) under a budget.

A job trains with ``nlsearch.train.train`` into the run layout of ``run-suite``
(``<runs>/<task>@v/<model>-<sha12>/<budget>@v-seed<seed>``), so a killed one resumes and a finished
one is reused, but only through :func:`nlsearch.train.record.finished_record`: its record must be this
job's run (config, task, budget, seed, precision) and its metrics files must match the digests in its
record. A folder that fails the check is set aside (renamed ``<folder>.rejected-<n>``, nothing deleted)
and the job retrains; the result's ``note`` says why. Jobs run one after another, in ``workers`` spawned
processes, or as Ray tasks on the cluster at ``address``. A job never raises: a run whose loss diverged
is ``failed`` (a training outcome, ranked as the worst), and any other exception (a bug, a lost worker,
out of memory) is an ``error``, which is no outcome at all: the scorer refuses to rank it
(:func:`nlsearch.leaderboard.scoring.score_model`) and the next call trains that run again. Jobs carry
only plain data (a config mapping, names, paths), so they cross process boundaries; a worker resolves
the config's plugin mixer itself, from the entry points installed where it runs.
"""
from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from nlsearch.cluster import check_address
from nlsearch.leaderboard.plugins import resolve_plugins
from nlsearch.runtime import interrupted

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
    device: str = "auto"               # "cuda:<i>" when the runner places jobs on GPUs

    def label(self) -> str:
        return f"{self.model.get('name') or 'model'} on {self.task} seed {self.seed} lr x{self.lr_factor:g}"


@dataclass(frozen=True)
class JobResult:
    job: Job
    status: str                        # completed | failed: <reason> (diverged) | error: <exception>
    reused: bool
    record: Optional[Dict[str, Any]]   # the RunRecord as JSON data
    run_dir: Optional[str]
    note: str = ""                     # e.g. why a finished run found there was not reused


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
    from nlsearch.train import NonFiniteLossError, default_run_dir, plan_run, train
    from nlsearch.train.record import finished_record

    run_dir, note = None, ""
    try:
        resolve_plugins(job.model, job.model.get("name") or "model")
        cfg = scale_lr(job.model, job.lr_factor)
        tasks_dir = Path(job.tasks_dir) if job.tasks_dir else None
        plan = plan_run(cfg, job.task, job.budget, job.seed, job.device, job.threads, tasks_dir)
        run_dir = default_run_dir(job.runs_dir, plan)
        try:
            record = finished_record(run_dir, plan.identity())
        except ValueError as err:
            aside = set_aside(run_dir)
            note = f"not reused ({' '.join(str(err).split())[:300]}); set aside as {aside.name}, retrained"
            record = None
        if record is not None:
            return JobResult(job, "completed", True, record.model_dump(mode="json"), str(run_dir))
        result = train(plan.cfg, plan.task, plan.budget, job.seed, run_dir=run_dir, resume=True,
                       device=job.device, threads=job.threads, tasks_dir=tasks_dir)
    except Exception as err:                      # noqa: BLE001 - reported in the result, never raised
        if interrupted():                         # Ctrl-C that a library turned into another error
            raise KeyboardInterrupt from err
        outcome = "failed" if isinstance(err, NonFiniteLossError) else "error"
        return JobResult(job, f"{outcome}: {_reason(err)}", False, None, str(run_dir) if run_dir else None, note)
    if result.record is None:
        return JobResult(job, f"failed: run ended {result.status} at step {result.steps}", False, None,
                         str(run_dir), note)
    return JobResult(job, "completed", False, result.record.model_dump(mode="json"), str(run_dir), note)


def lost(job: Job, err: BaseException) -> JobResult:
    """The result of a job whose worker died before it could answer (a killed process, a lost Ray node):
    an error, never a training outcome."""
    return JobResult(job, f"error: worker lost ({_reason(err)})", False, None, None)


def _reason(err: BaseException) -> str:
    """An exception as one line of at most 300 characters, its type first."""
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def set_aside(run_dir: Path) -> Path:
    """Renames a run folder that must not be reused to ``<name>.rejected-<n>`` (the first free n)."""
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.rejected-{n}")).exists():
        n += 1
    run_dir.rename(aside)
    return aside


def _threads_each(workers: int, budget_threads: Optional[int]) -> int:
    total = budget_threads or os.cpu_count() or 1
    return max(1, total // workers)


def _on_ray(jobs: Sequence[Job], address: str, gpus_per_job: float = 0.0, fn: Optional[Callable] = None,
            on_done: Optional[Callable[[Any], Any]] = None) -> List[Any]:
    """Each job as a Ray task on the cluster at ``address``, asking for ``gpus_per_job`` GPUs where the
    cluster has any (Ray then sets the task's ``CUDA_VISIBLE_DEVICES``) and one CPU otherwise; results in
    the jobs' order, ``on_done`` called with each as it finishes."""
    import ray

    if not ray.is_initialized():
        check_address(address)
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    has_gpus = ray.cluster_resources().get("GPU", 0.0) > 0
    options = {"num_cpus": 1, "num_gpus": gpus_per_job} if gpus_per_job and has_gpus else {"num_cpus": 1}
    remote = ray.remote(fn or run_job).options(**options)
    refs = [remote.remote(job) for job in jobs]
    index = {ref: i for i, ref in enumerate(refs)}
    out: List[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                out[index[done[0]]] = ray.get(done[0])
            except Exception as err:              # noqa: BLE001 - the task's worker or node died
                out[index[done[0]]] = lost(jobs[index[done[0]]], err)
            if on_done is not None:
                on_done(out[index[done[0]]])
    except BaseException:                         # Ctrl-C: the cluster stops this command's tasks too
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return out


def place(jobs: Sequence[Job], gpus_per_job: float, visible_gpus: int) -> List[Job]:
    """The device of every job: ``cpu`` on a CPU track (``gpus_per_job == 0``: float32 on the CPU even
    where GPUs exist), else the visible GPUs in turn (``cuda:0``, ``cuda:1``, ...), else ``auto``."""
    if not gpus_per_job:
        return [replace(job, device="cpu") for job in jobs]
    if visible_gpus <= 0:
        return list(jobs)
    return [replace(job, device=f"cuda:{i % visible_gpus}") for i, job in enumerate(jobs)]


def run_jobs(jobs: Sequence[Job], workers: int = 1, address: Optional[str] = None, log: Optional[Log] = None,
             budget_threads: Optional[int] = None, gpus_per_job: float = 0.0,
             on_result: Optional[Callable[[JobResult], Any]] = None) -> List[JobResult]:
    """Runs ``jobs``; returns their results in the same order, logging each and passing it to
    ``on_result`` as it finishes (a reproduction rewrites its report then). ``workers > 1``: that many
    spawned processes, each with ``budget_threads // workers`` CPU threads (at least 1), spread over the
    visible GPUs on a GPU track; ``address``: Ray, asking for ``gpus_per_job`` GPUs per job."""
    log = log or (lambda _msg: None)

    def finished(result: JobResult) -> None:
        _log_result(log, result)
        if on_result is not None:
            on_result(result)

    if not jobs:
        return []
    if address:
        if not gpus_per_job:
            jobs = [replace(job, device="cpu") for job in jobs]
        return _on_ray(jobs, address, gpus_per_job, on_done=finished)
    if workers <= 1:
        results = []
        for job in place(jobs, gpus_per_job, _visible_gpus()):
            results.append(run_job(job))
            finished(results[-1])
        return results
    each = _threads_each(workers, budget_threads)
    jobs = [replace(job, threads=job.threads or each) for job in place(jobs, gpus_per_job, _visible_gpus())]
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_ignore_sigint) as pool:
        index = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
        out: List[Optional[JobResult]] = [None] * len(jobs)
        try:
            for future in futures.as_completed(index):
                try:
                    out[index[future]] = future.result()
                except Exception as err:          # noqa: BLE001 - its worker process died (killed, OOM)
                    out[index[future]] = lost(jobs[index[future]], err)
                finished(out[index[future]])
        except BaseException:                     # Ctrl-C (or any end of this process): stop every job now
            _stop(pool)
            raise
    return [r for r in out if r is not None]


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent (the terminal sends it to them too): an interrupted worker would
    take the next queued job, which the executor has already handed over."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(pool: futures.ProcessPoolExecutor) -> None:
    """Cancels the queued jobs and ends the running ones at once, as a kill would (a run resumes from its
    last checkpoint); waits for the workers to be gone."""
    terminate = getattr(pool, "terminate_workers", None)                # Python 3.14
    if terminate is not None:
        terminate()
    else:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _log_result(log: Log, result: JobResult) -> None:
    log(f"{result.job.label()}: {result.status}{' (reused)' if result.reused else ''}"
        f"{f' [{result.note}]' if result.note else ''}")
