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
import heapq
import itertools
import multiprocessing
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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


def place(jobs: Sequence[Job], gpus_per_job: float, visible_gpus: int) -> List[Job]:
    """The device of every job: ``cpu`` on a CPU track (``gpus_per_job == 0``: float32 on the CPU even
    where GPUs exist), else the visible GPUs in turn (``cuda:0``, ``cuda:1``, ...), else ``auto``."""
    return [_place(job, gpus_per_job, visible_gpus, i) for i, job in enumerate(jobs)]


def _place(job: Job, gpus_per_job: float, visible_gpus: int, i: int) -> Job:
    if not gpus_per_job:
        return replace(job, device="cpu")
    return job if visible_gpus <= 0 else replace(job, device=f"cuda:{i % visible_gpus}")


Priority = Any                            # any orderable value: lower starts first
Follow = Callable[[Priority, JobResult], Sequence[Tuple[Priority, Job]]]


def run_dynamic(starts: Sequence[Tuple[Priority, Job]], follow: Optional[Follow] = None, workers: int = 1,
                address: Optional[str] = None, log: Optional[Log] = None, budget_threads: Optional[int] = None,
                gpus_per_job: float = 0.0, on_result: Optional[Callable[[JobResult], Any]] = None) -> None:
    """Runs jobs as they become known: ``starts`` at once, then the jobs ``follow`` returns for each
    finished one, called with that job's priority and its result (a task whose lr sweep is complete
    queues its seeds), until none waits or runs.

    Waiting jobs start lowest priority first (ties: in the order given), as many at a time as there is
    room for: one in this process (``workers <= 1``), ``workers`` spawned processes with
    ``budget_threads // workers`` CPU threads each, or, with ``address``, as many Ray tasks as the
    cluster has CPUs (GPUs / ``gpus_per_job`` on a GPU track): a queue kept here, not in the executor,
    so a job queued later with a lower priority still goes first. Each result is logged and handed to
    ``on_result``, then to ``follow``. A worker that dies gives its job an ``error`` result
    (:func:`lost`); Ctrl-C (any exception) stops every running job at once and starts no other."""
    log = log or (lambda _msg: None)

    def done(priority: Priority, result: JobResult) -> Sequence[Tuple[Priority, Job]]:
        _log_result(log, result)
        if on_result is not None:
            on_result(result)
        return follow(priority, result) if follow is not None else ()

    if starts:
        _drive(_backend(workers, address, budget_threads, gpus_per_job), starts, done)


def run_jobs(jobs: Sequence[Job], workers: int = 1, address: Optional[str] = None, log: Optional[Log] = None,
             budget_threads: Optional[int] = None, gpus_per_job: float = 0.0,
             on_result: Optional[Callable[[JobResult], Any]] = None) -> List[JobResult]:
    """Runs ``jobs`` as :func:`run_dynamic` does, in the order given; returns their results in that
    order, logging each and passing it to ``on_result`` as it finishes (a reproduction rewrites its
    report then)."""
    log = log or (lambda _msg: None)
    out: List[Optional[JobResult]] = [None] * len(jobs)

    def done(i: int, result: JobResult) -> Sequence[Tuple[Priority, Job]]:
        out[i] = result
        _log_result(log, result)
        if on_result is not None:
            on_result(result)
        return ()

    if jobs:
        _drive(_backend(workers, address, budget_threads, gpus_per_job), list(enumerate(jobs)), done)
    return [r for r in out if r is not None]


def _on_ray(jobs: Sequence[Job], address: str, gpus_per_job: float = 0.0, fn: Optional[Callable] = None,
            on_done: Optional[Callable[[Any], Any]] = None) -> List[Any]:
    """Each job as a Ray task on the cluster at ``address``, running ``fn`` (default :func:`run_job`);
    what each returns, in the jobs' order, ``on_done`` called with each as it finishes."""
    out: List[Any] = [None] * len(jobs)

    def done(i: int, result: Any) -> Sequence[Tuple[Priority, Job]]:
        out[i] = result
        if on_done is not None:
            on_done(result)
        return ()

    _drive(_Ray(address, gpus_per_job, fn), list(enumerate(jobs)), done)
    return out


def _drive(backend: "_Backend", starts: Sequence[Tuple[Priority, Job]],
           done: Callable[[Priority, Any], Sequence[Tuple[Priority, Job]]]) -> None:
    """The loop of :func:`run_dynamic`: start waiting jobs while ``backend`` has room, wait for one to
    finish, queue what ``done`` returns for it."""
    waiting: List[Tuple[Priority, int, Job]] = []
    order = itertools.count()
    for priority, job in starts:
        heapq.heappush(waiting, (priority, next(order), job))
    priorities: Dict[Any, Priority] = {}
    with backend:
        while waiting or backend.running:
            while waiting and len(backend.running) < backend.capacity:
                priority, _, job = heapq.heappop(waiting)
                priorities[backend.start(job)] = priority
            handle, result = backend.wait()
            for priority, job in done(priorities.pop(handle), result):
                heapq.heappush(waiting, (priority, next(order), job))


class _Backend:
    """Where jobs run: ``start`` a job (placed on its device) and get a handle, ``wait`` for one of those
    running to finish; leaving the ``with`` block by an exception stops every running job."""

    capacity = 1

    def __init__(self, gpus_per_job: float = 0.0):
        self.running: Dict[Any, Job] = {}              # handle -> job, in start order
        self.gpus_per_job, self.visible, self.started = gpus_per_job, _visible_gpus(), 0

    def placed(self, job: Job) -> Job:
        self.started += 1
        return _place(job, self.gpus_per_job, self.visible, self.started - 1)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


class _Serial(_Backend):
    """One job at a time, in this process, when it is waited for."""

    def start(self, job: Job) -> Any:
        handle = self.started
        self.running[handle] = self.placed(job)
        return handle

    def wait(self) -> Tuple[Any, JobResult]:
        handle = next(iter(self.running))
        return handle, run_job(self.running.pop(handle))


class _Pool(_Backend):
    """``workers`` spawned processes that ignore Ctrl-C (the parent stops them), ``threads`` CPU threads each."""

    def __init__(self, workers: int, threads: int, gpus_per_job: float):
        super().__init__(gpus_per_job)
        self.capacity, self.threads = workers, threads
        self.pool = futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_ignore_sigint)

    def __enter__(self):
        self.pool.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:              # Ctrl-C (or any end of this process): stop every job now
            _stop(self.pool)
            return False
        return bool(self.pool.__exit__(None, None, None))

    def start(self, job: Job) -> Any:
        job = self.placed(job)
        job = replace(job, threads=job.threads or self.threads)
        try:
            future = self.pool.submit(run_job, job)
        except futures.BrokenExecutor as err:     # an earlier worker died and took the pool with it
            future = futures.Future()
            future.set_exception(err)
        self.running[future] = job
        return future

    def wait(self) -> Tuple[Any, JobResult]:
        finished, _ = futures.wait(list(self.running), return_when=futures.FIRST_COMPLETED)
        future = next(f for f in self.running if f in finished)        # the earliest started of those done
        job = self.running.pop(future)
        try:
            return future, future.result()
        except Exception as err:                  # noqa: BLE001 - its worker process died (killed, OOM)
            return future, lost(job, err)


class _Ray(_Backend):
    """Ray tasks on the cluster at ``address`` asking for ``gpus_per_job`` GPUs where the cluster has
    any (Ray then sets the task's ``CUDA_VISIBLE_DEVICES``) and one CPU otherwise; as many at once as
    the cluster holds. ``fn``: what a task runs instead of :func:`run_job`."""

    def __init__(self, address: str, gpus_per_job: float = 0.0, fn: Optional[Callable] = None):
        import ray

        super().__init__(gpus_per_job)
        if not ray.is_initialized():
            check_address(address)
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0) if gpus_per_job else 0.0
        options = {"num_cpus": 1, "num_gpus": gpus_per_job} if gpus else {"num_cpus": 1}
        self.remote = ray.remote(fn or run_job).options(**options)
        self.capacity = max(1, int(gpus / gpus_per_job) if gpus else int(resources.get("CPU", 1)))

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:                  # Ctrl-C: the cluster stops this command's tasks too
            import ray

            for ref in list(self.running):
                ray.cancel(ref, force=True)
        return False

    def start(self, job: Job) -> Any:
        job = job if self.gpus_per_job else replace(job, device="cpu")
        ref = self.remote.remote(job)
        self.running[ref] = job
        return ref

    def wait(self) -> Tuple[Any, Any]:
        import ray

        done, _ = ray.wait(list(self.running), num_returns=1)
        job = self.running.pop(done[0])
        try:
            return done[0], ray.get(done[0])
        except Exception as err:                  # noqa: BLE001 - the task's worker or node died
            return done[0], lost(job, err)


def _backend(workers: int, address: Optional[str], budget_threads: Optional[int], gpus_per_job: float) -> _Backend:
    if address:
        return _Ray(address, gpus_per_job)
    if workers <= 1:
        return _Serial(gpus_per_job)
    return _Pool(workers, _threads_each(workers, budget_threads), gpus_per_job)


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
