"""Training runs for the leaderboard: one ``Job`` = (model config, task, seed, lr factor) under a budget.

A job trains with ``nlsearch.train.train`` into the run layout of ``run-suite``
(``<runs>/<task>@v/<model>-<sha12>/<budget>@v-seed<seed>``), so a killed one resumes and a finished
one is reused, but only through :func:`nlsearch.train.record.finished_record`: its record must be this
job's run (config, task, budget, seed, precision) and its metrics files must match the digests in its
record. A run that diverged is kept as such (``failure.json``, :func:`~nlsearch.train.record.
finished_failure`) and reused under the same rules, so it is not trained to the same step again. A
folder that fails the check is set aside (renamed ``<folder>.rejected-<n>``, nothing deleted) and the
job retrains; the result's ``note`` says why. Jobs run one after another, in ``workers`` spawned
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
from nlsearch.runtime import interrupted, reclaim_sigterm
from nlsearch.train.record import one_line

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
    from nlsearch.train.record import RunRecord, finished_outcome

    run_dir, note = None, ""
    try:
        resolve_plugins(job.model, job.model.get("name") or "model")
        cfg = scale_lr(job.model, job.lr_factor)
        tasks_dir = Path(job.tasks_dir) if job.tasks_dir else None
        plan = plan_run(cfg, job.task, job.budget, job.seed, job.device, job.threads, tasks_dir)
        run_dir = default_run_dir(job.runs_dir, plan)
        try:
            kept = finished_outcome(run_dir, plan.identity())
            record, failure = (kept, None) if isinstance(kept, RunRecord) else (None, kept)
        except ValueError as err:
            aside = set_aside(run_dir)
            note = f"not reused ({' '.join(str(err).split())[:300]}); set aside as {aside.name}, retrained"
            record = failure = None
        if record is not None:
            return JobResult(job, "completed", True, record.model_dump(mode="json"), str(run_dir))
        if failure is not None:                   # it diverged at this step before: the same outcome
            return JobResult(job, failure.status, True, None, str(run_dir))
        result = train(plan.cfg, plan.task, plan.budget, job.seed, run_dir=run_dir, resume=True,
                       device=job.device, threads=job.threads, tasks_dir=tasks_dir)
    except Exception as err:                      # noqa: BLE001 - reported in the result, never raised
        if interrupted():                         # Ctrl-C that a library turned into another error
            raise KeyboardInterrupt from err
        outcome = "failed" if isinstance(err, NonFiniteLossError) else "error"
        return JobResult(job, f"{outcome}: {one_line(err)}", False, None, str(run_dir) if run_dir else None, note)
    if result.record is None:
        return JobResult(job, f"failed: run ended {result.status} at step {result.steps}", False, None,
                         str(run_dir), note)
    return JobResult(job, "completed", False, result.record.model_dump(mode="json"), str(run_dir), note)


def lost(job: Job, err: BaseException) -> JobResult:
    """The result of a job whose worker died before it could answer (a killed process, a lost Ray node):
    an error, never a training outcome."""
    return JobResult(job, f"error: worker lost ({one_line(err)})", False, None, None)


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


def _place(job: Job, gpus_per_job: float, visible_gpus: int, busy: Sequence[str] = ()) -> Job:
    """A job on its device: ``cpu`` on a CPU track (``gpus_per_job == 0``: float32 on the CPU even where
    GPUs exist), else the visible GPU running fewest of ``busy`` (the devices of the jobs running; ties:
    the lowest index), else ``auto``."""
    if not gpus_per_job:
        return replace(job, device="cpu")
    if visible_gpus <= 0:
        return job
    load = [sum(d == f"cuda:{i}" for d in busy) for i in range(visible_gpus)]
    return replace(job, device=f"cuda:{load.index(min(load))}")


Priority = Any                            # any orderable value: lower starts first
Follow = Callable[[Priority, JobResult], Sequence[Tuple[Priority, Job]]]


def run_dynamic(starts: Sequence[Tuple[Priority, Job]], follow: Optional[Follow] = None, workers: int = 1,
                address: Optional[str] = None, log: Optional[Log] = None, budget_threads: Optional[int] = None,
                gpus_per_job: float = 0.0, on_result: Optional[Callable[[JobResult], Any]] = None,
                log_reused: bool = True, fits: Optional[Callable[[Job], bool]] = None) -> List[Job]:
    """Runs jobs as they become known: ``starts`` at once, then the jobs ``follow`` returns for each
    finished one, called with that job's priority and its result (a task whose lr sweep is complete
    queues its seeds), until none waits or runs.

    Waiting jobs start lowest priority first (ties: in the order given), as many at a time as there is
    room for: one in this process (``workers <= 1``), ``workers`` spawned processes with
    ``budget_threads // workers`` CPU threads each, or, with ``address``, Ray tasks (:class:`_Ray`): a
    queue kept here, not in the executor, so a job queued later with a lower priority still goes
    first. ``follow`` should be quick: a freed worker gets its next job after it, before the result is
    logged and handed to ``on_result`` (which may be slow: a report). A worker that dies gives its
    job an ``error`` result (:func:`lost`); Ctrl-C (any exception) stops every running job at once and
    starts no other. ``log_reused=False``: finished runs found and reused are not logged one by one.
    ``fits``: asked of each job as its turn comes (a deadline); one it refuses is not started and the
    next in line is asked. Returns the jobs refused (their follow-ups were never queued)."""
    log = log or (lambda _msg: None)

    def after(_priority: Priority, result: JobResult) -> None:
        if log_reused or not result.reused:
            _log_result(log, result)
        if on_result is not None:
            on_result(result)

    refused: List[Job] = []
    if starts:
        _drive(_backend(workers, address, budget_threads, gpus_per_job), starts, follow or (lambda _p, _r: ()),
               after, fits, refused)
    return refused


def run_jobs(jobs: Sequence[Job], workers: int = 1, address: Optional[str] = None, log: Optional[Log] = None,
             budget_threads: Optional[int] = None, gpus_per_job: float = 0.0,
             on_result: Optional[Callable[[JobResult], Any]] = None) -> List[JobResult]:
    """Runs ``jobs`` as :func:`run_dynamic` does, in the order given; returns their results in that
    order, logging each and passing it to ``on_result`` as it finishes."""
    out: List[Optional[JobResult]] = [None] * len(jobs)

    def keep(i: int, result: JobResult) -> Sequence[Tuple[Priority, Job]]:
        out[i] = result
        return ()

    run_dynamic(list(enumerate(jobs)), keep, workers, address, log, budget_threads, gpus_per_job, on_result)
    return [r for r in out if r is not None]


def _drive(backend: "_Backend", starts: Sequence[Tuple[Priority, Job]], follow: Follow,
           after: Callable[[Priority, Any], Any], fits: Optional[Callable[[Job], bool]] = None,
           refused: Optional[List[Job]] = None) -> None:
    """The loop of :func:`run_dynamic`: start waiting jobs while ``backend`` has room (those ``fits``
    refuses go to ``refused``), wait for one to finish, queue what ``follow`` returns for it, fill the
    freed room, then ``after`` (the slow part)."""
    waiting: List[Tuple[Priority, int, Job]] = []
    order = itertools.count()
    priorities: Dict[Any, Priority] = {}

    def push(items: Sequence[Tuple[Priority, Job]]) -> None:
        for priority, job in items:
            heapq.heappush(waiting, (priority, next(order), job))

    def fill() -> None:
        room = backend.capacity - len(backend.running)
        while waiting and room > 0:
            priority, _, job = heapq.heappop(waiting)
            if fits is not None and not fits(job):
                if refused is not None:
                    refused.append(job)
                continue
            priorities[backend.start(job)] = priority
            room -= 1

    push(starts)
    with backend:
        while waiting or backend.running:
            fill()
            if not backend.running:                    # every waiting job refused
                break
            handle, result = backend.wait()
            priority = priorities.pop(handle)
            push(follow(priority, result))
            fill()
            after(priority, result)


class _Backend:
    """Where jobs run: ``start`` a job (placed on its device) and get a handle, ``wait`` for one of those
    running to finish; leaving the ``with`` block by an exception stops every running job."""

    capacity = 1

    def __init__(self, gpus_per_job: float = 0.0):
        self.running: Dict[Any, Job] = {}              # handle -> job, in start order
        self.gpus_per_job, self.visible, self.started = gpus_per_job, _visible_gpus(), 0

    def placed(self, job: Job) -> Job:
        """``job`` on the least busy GPU of a GPU track (the CPU on a CPU track)."""
        self.started += 1
        return _place(job, self.gpus_per_job, self.visible, [j.device for j in self.running.values()])

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
    """``workers`` spawned processes that ignore Ctrl-C (the parent stops them), ``threads`` CPU threads
    each. A worker that dies breaks the executor (its running jobs come back as :func:`lost` errors);
    the next job gets a new one, so the runs still queued, other models' too, go on."""

    def __init__(self, workers: int, threads: int, gpus_per_job: float):
        super().__init__(gpus_per_job)
        self.capacity, self.threads = workers, threads
        self.pool = self._new()

    def _new(self) -> futures.ProcessPoolExecutor:
        return futures.ProcessPoolExecutor(max_workers=self.capacity, initializer=_ignore_sigint,
                                           mp_context=multiprocessing.get_context("spawn"))

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
        except futures.BrokenExecutor:            # a worker died and took the executor with it
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new().__enter__()
            future = self.pool.submit(run_job, job)
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
    any (Ray then sets the task's ``CUDA_VISIBLE_DEVICES``) and one CPU otherwise. Up to twice as many
    at once as the cluster holds now (read again whenever a task finishes, so a cluster that grows gets
    more; the surplus waits in Ray's queue, which an autoscaler reads as demand). ``fn``: what a task runs
    instead of :func:`run_job`."""

    def __init__(self, address: str, gpus_per_job: float = 0.0, fn: Optional[Callable] = None):
        import ray

        super().__init__(gpus_per_job)
        if not ray.is_initialized():
            check_address(address)
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            reclaim_sigterm()                         # Ray's own SIGTERM handler would exit without clean-up
        self.gpus = bool(gpus_per_job) and ray.cluster_resources().get("GPU", 0.0) > 0
        options = {"num_cpus": 1, "num_gpus": gpus_per_job} if self.gpus else {"num_cpus": 1}
        self.remote = ray.remote(fn or run_job).options(**options)

    @property
    def capacity(self) -> int:
        import ray

        resources = ray.cluster_resources()
        held = resources.get("GPU", 0.0) / self.gpus_per_job if self.gpus else resources.get("CPU", 1.0)
        return 2 * max(1, int(held))

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
