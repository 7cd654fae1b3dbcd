"""The search driver: Optuna asks, an executor runs, Optuna is told (``run_search``).

Optuna is the single source of truth and the driver its only writer. For each free worker slot the
driver asks a trial, samples a candidate (define-by-run), checks the constraints before any training
(an infeasible candidate is told PRUNED with its constraint values, through Optuna's constraint API,
and never trained), and submits a job. Intermediate reports feed the pruner; outcomes are told back:
COMPLETE with the objective values, PRUNED, or FAIL with the reason in the trial's ``reason``
attribute. ``results/<study>/`` is rewritten after every finished trial (see ``results``).

Stopping: Ctrl-C cancels the running trials, re-queues them (their checkpoints are kept) and leaves a
study that the same command resumes. A crash (kill -9) leaves RUNNING trials that the next run
re-queues the same way.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import optuna
from optuna.trial import TrialState

from nlsearch.budgets import Budget, load_budget, run_lengths, task_kind
from nlsearch.config import config_hash, parse_config, portable_dump
from nlsearch.io import check_writable_folder
from nlsearch.search.sampling import Candidate, base_mapping, check_space, sample
from nlsearch.search.executors import Executor, InProcessExecutor
from nlsearch.search.space import SearchSpace, task_label
from nlsearch.search.study import (DUPLICATE_OF, HEARTBEAT_S, SURPLUS, WAITS_FOR, DriverLock, finished, open_study,
                                   recover, requeue, running, shared)
from nlsearch.search.trial import TrialJob, TrialOutcome
from nlsearch.runtime import interrupt_exit
from nlsearch.tasks import load_task
from nlsearch.tasks.batch import derive_seed

Log = Callable[[str], Any]


class Heartbeat:
    """A thread that records a heartbeat every ``HEARTBEAT_S`` for the trials this driver runs, so the
    other drivers of a shared study can tell them from the trials of a driver that died (a no-op for
    the journal: one driver owns it)."""

    def __init__(self, storage):
        self.storage, self.ids, self.lock, self.done = storage, set(), threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="nlsearch-heartbeat")
        if storage is not None:
            self.thread.start()

    def add(self, trial_id: int) -> None:
        if self.storage is not None:
            self.storage.record_heartbeat(trial_id)
            with self.lock:
                self.ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self.lock:
            self.ids.discard(trial_id)

    def _beat(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            with self.lock:
                ids = list(self.ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:                        # noqa: BLE001 - a lost beat is retried next time
                    pass

    def stop(self) -> None:
        self.done.set()


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the study was left consistent and resumable."""


@dataclass
class SearchState:
    """What the progress display shows."""

    durations: List[float] = field(default_factory=list)
    running: int = 0


class Driver:
    def __init__(self, space: SearchSpace, run_dir: Path, executor: Optional[Executor], storage: Optional[str] = None,
                 trials: Optional[int] = None, device: str = "auto", tasks_dir: Optional[Path] = None,
                 log: Log = print, on_change: Optional[Callable[["Driver"], None]] = None, confirm: bool = True):
        self.space, self.run_dir, self.executor, self.confirm = space, Path(run_dir), executor, confirm
        if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
            raise ValueError(f"trials must be a positive integer (finished trials wanted), got {trials!r}")
        self.trials = trials if trials is not None else space.trials
        self.repeats = 0                      # candidates in a row that an earlier trial already trained
        self.device, self.tasks_dir, self.log, self.on_change = device, tasks_dir, log, on_change
        self.report_budget = resolve_budget(space)             # the confirmation stage's: the report eval set
        self.budget = selection_budget(self.report_budget)
        self.tasks = [_named(lambda t=t: load_task(t, tasks_dir), space, f"tasks.{i}")
                      for i, t in enumerate(space.tasks)]
        self._check_metrics()
        first = self.space.objectives[0]
        self.prune_task = first.task if first.task is not None and not space.multi_objective else None
        self.prune_metric = first.name if self.prune_task else None
        self.max_steps = max(self.budget.for_kind(task_kind(t)).steps for t in self.tasks)
        self.seq_len = run_lengths(self.budget, self.tasks[0])[0][0]
        check_space(space, self.seq_len)
        self.storage = _check_storage(storage)
        check_writable_folder(self.run_dir, "search results folder (--out)")
        self.pending: Dict[int, optuna.Trial] = {}
        self.waiting: Dict[int, optuna.Trial] = {}    # duplicates of a trial still training (``waits_for``)
        self.shared = self.storage is not None         # a database: other drivers may share the study
        self.heartbeat = Heartbeat(None)
        self.state = SearchState()

    def _check_metrics(self) -> None:
        by_name = {task_label(t): task for t, task in zip(self.space.tasks, self.tasks)}
        for i, obj in enumerate(self.space.objectives):
            if obj.task is None:
                continue
            names = [m.name for m in by_name[obj.task].spec.metrics]
            if obj.name not in names:
                raise ValueError(f"{self.space.source or self.space.name}: objectives.{i}.metric {obj.metric!r}: "
                                 f"task {obj.task} reports {names}")

    # --- asking -------------------------------------------------------------------------------

    def _constraints(self, trial: optuna.Trial, cand: Candidate) -> List[str]:
        broken = []
        for key, bound in self.space.constraints.items():
            value = cand.facts[key]
            excess = max((bound.min - value) if bound.min is not None else -math.inf,
                         (value - bound.max) if bound.max is not None else -math.inf)
            trial.set_constraint(key, excess)
            if excess > 0:
                broken.append(f"{key}={value:,.0f} outside [{bound.min}, {bound.max}]")
        return broken

    def _surplus(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """With several drivers on one study: whether ``trial`` was asked beyond the trials wanted (the
        later-numbered of two drivers asking for the last slot); it is then told FAIL, flagged, and not
        counted. Decided by trial number, so exactly one driver gets each slot."""
        if not self.shared:
            return False
        ahead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number <= trial.number]
        if finished(study) + len(ahead) <= self.trials:
            return False
        trial.set_user_attr(SURPLUS, True)
        trial.set_user_attr("reason", "asked beyond the trials wanted: another driver took the last one")
        study.tell(trial, state=TrialState.FAIL)
        return True

    def _reuse_identical(self, study: optuna.Study, trial: optuna.Trial, sha: str) -> bool:
        """A candidate whose config an earlier trial trained (same tasks, budget and seeds) trains
        nothing and does not count towards ``trials``: it gets that trial's values, flagged
        ``duplicate_of``; when that trial is still training, it waits for it (flagged ``waits_for``,
        resolved by :meth:`_resolve_waiting`) instead of training the same run a second time. After
        :data:`REPEAT_LIMIT` such candidates in a row the search stops asking (the sampler keeps
        proposing what it has)."""
        originals = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                     if t.user_attrs.get("config_sha256") == sha and t.number != trial.number
                     and DUPLICATE_OF not in t.user_attrs and WAITS_FOR not in t.user_attrs]
        done = [t for t in originals if t.state == TrialState.COMPLETE]
        if done:
            self._take_result(study, trial, min(done, key=lambda t: t.number))
        elif originals:
            original = min(originals, key=lambda t: t.number)
            trial.set_user_attr(WAITS_FOR, original.number)
            self.waiting[trial.number] = trial
            self.heartbeat.add(trial._trial_id)
            self.log(f"trial {trial.number}: the config of trial {original.number}, which is training: "
                     f"it takes that result when it ends (not trained)")
        else:
            return False
        self.repeats += 1
        return True

    def _take_result(self, study: optuna.Study, trial: optuna.Trial, original) -> None:
        for key in ("metrics", "wall_s", "tokens_per_s", "hardware", "run_dir"):
            if key in original.user_attrs:
                trial.set_user_attr(key, original.user_attrs[key])
        trial.set_user_attr(DUPLICATE_OF, original.number)
        trial.set_user_attr("reason", f"the config of trial {original.number}: its result reused, not trained")
        study.tell(trial, original.values)
        self.log(f"trial {trial.number}: the config of trial {original.number}, its result reused (not trained)")

    def _resolve_waiting(self, study: optuna.Study) -> bool:
        """Waiting duplicates whose original has finished: its values when it completed; otherwise a
        FAIL flagged ``duplicate_of`` (not counted) that names what became of the original. Returns
        whether any was resolved."""
        if not self.waiting:
            return False
        trials, resolved = study.get_trials(deepcopy=False), False
        for number, trial in list(self.waiting.items()):
            original = trials[trial.user_attrs[WAITS_FOR]]
            if original.state == TrialState.RUNNING:
                continue
            resolved = True
            del self.waiting[number]
            self.heartbeat.discard(trial._trial_id)
            if original.state == TrialState.COMPLETE:
                self._take_result(study, trial, original)
                continue
            trial.set_user_attr(DUPLICATE_OF, original.number)
            trial.set_user_attr("reason", f"the config of trial {original.number}, which ended "
                                          f"{original.state.name}: not trained")
            study.tell(trial, state=TrialState.FAIL)
            self.log(f"trial {number}: {trial.user_attrs['reason']}")
        return resolved

    def _ask(self, study: optuna.Study) -> None:
        trial = study.ask()
        if self._surplus(study, trial):
            return
        retry_dir = trial.user_attrs.get("run_dir")
        if retry_dir and not Path(retry_dir).parent.is_dir():
            trial.set_user_attr("reason", f"the run folder {retry_dir} of trial {trial.user_attrs.get('retry_of')} is "
                                          f"not visible from this machine: drivers that share a study must share "
                                          f"its results folder (--out on a network folder)")
            study.tell(trial, state=TrialState.FAIL)
            self.log(f"trial {trial.number} failed: {trial.user_attrs['reason']}")
            return
        try:
            cand = sample(self.space, trial, self.seq_len)
        except ValueError as err:
            trial.set_user_attr("reason", f"config: {err}")
            study.tell(trial, state=TrialState.FAIL)
            self.log(f"trial {trial.number} failed: {err}")
            return
        for key, value in {"config": json.dumps(portable_dump(cand.config), sort_keys=True),
                           "config_sha256": config_hash(cand.config),
                           **cand.facts}.items():
            trial.set_user_attr(key, value)
        broken = self._constraints(trial, cand)
        if broken:
            trial.set_user_attr("reason", "infeasible (not trained): " + "; ".join(broken))
            study.tell(trial, state=TrialState.PRUNED)
            return
        if self._reuse_identical(study, trial, trial.user_attrs["config_sha256"]):
            return
        self.repeats = 0
        run_dir = retry_dir or str((self.run_dir / "trials" / f"{trial.number:04d}").resolve())
        trial.set_user_attr("run_dir", run_dir)
        self.pending[trial.number] = trial
        self.heartbeat.add(trial._trial_id)
        self.executor.submit(TrialJob(
            number=trial.number, config=cand.config.model_dump(mode="json"), tasks=list(self.space.tasks),
            budget=self.budget.model_dump(mode="json"), seeds=list(self.space.seeds), run_dir=run_dir,
            prune_task=self.prune_task, prune_metric=self.prune_metric, threads=self.executor.threads(),
            device=self.device, tasks_dir=str(self.tasks_dir) if self.tasks_dir else None))

    # --- telling ------------------------------------------------------------------------------

    def on_report(self, number: int, step: int, value: float) -> bool:
        trial = self.pending.get(number)
        if trial is None or not math.isfinite(value):
            return False
        trial.report(value, step)
        return trial.should_prune()

    def _values(self, outcome: TrialOutcome, trial: optuna.Trial) -> Optional[List[float]]:
        values = []
        for obj in self.space.objectives:
            if obj.task is not None:
                value = outcome.metrics.get(f"{obj.task}:{obj.name}")
            elif obj.metric == "tokens_per_s":
                value = outcome.tokens_per_s
            else:
                value = trial.user_attrs.get(obj.metric)
            if value is None or not math.isfinite(value):
                return None
            values.append(float(value))
        return values

    def _tell(self, study: optuna.Study, outcome: TrialOutcome) -> None:
        trial = self.pending.pop(outcome.number)
        self.heartbeat.discard(trial._trial_id)
        attrs = {"metrics": outcome.metrics, "tokens_per_s": outcome.tokens_per_s, "wall_s": outcome.wall_s,
                 "hardware": outcome.hardware, "reason": outcome.reason, "pruned_at": outcome.pruned_at,
                 "dropped": outcome.dropped}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self.state.durations.append(outcome.wall_s)
        if outcome.status == "complete":
            values = self._values(outcome, trial)
            if values is None:
                trial.set_user_attr("reason", f"an objective is missing or not finite: {outcome.metrics}")
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, values)
        elif outcome.status == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            self.log(f"trial {outcome.number} failed: {outcome.reason}")
            study.tell(trial, state=TrialState.FAIL)

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> optuna.Study:
        """Opens (or resumes) the study and runs it; with a database storage without the folder lock
        (other drivers may share the study) and with a heartbeat for this driver's running trials."""
        owner = contextlib.nullcontext() if self.shared else DriverLock(self.run_dir)
        with owner:
            study = open_study(self.space, self.run_dir, self.storage, self.max_steps, self.measures())
            stale = recover(study)
            if stale:
                self.log(f"resuming {self.space.name}: {stale} interrupted trial(s) re-queued")
            self.heartbeat = Heartbeat(study._storage if shared(study) else None)
            self.executor.start(self.on_report)
            try:
                self._loop(study)
                if self.confirm and any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
                    self._confirm_once(study)
            except KeyboardInterrupt:
                how = interrupt_exit()[0]
                for number in self.executor.cancel_all():
                    if number in self.pending:
                        trial = self.pending.pop(number)
                        self.heartbeat.discard(trial._trial_id)
                        requeue(study, number, f"interrupted: {how} while trial {number} ran")
                for number, trial in list(self.waiting.items()):
                    del self.waiting[number]
                    self.heartbeat.discard(trial._trial_id)
                    requeue(study, number, f"interrupted: {how} while trial {number} waited for another")
                raise SearchInterrupted() from None
            finally:
                self.heartbeat.stop()
                self.executor.shutdown()
                self._changed(study)
        return study

    def _confirm_once(self, study: optuna.Study) -> None:
        """The confirmation stage, by one driver of a shared study at a time (the others skip it)."""
        if not self.shared:
            return self._confirm(study)
        from filelock import FileLock, Timeout

        lock = FileLock(self.run_dir / "confirm.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            self.log("confirmation: another driver of this study is running it")
            return None
        try:
            self._confirm(study)
        finally:
            lock.release()
        return None

    def _loop(self, study: optuna.Study) -> None:
        deadline = (time.monotonic() + 60 * self.space.timeout_minutes) if self.space.timeout_minutes else None
        checked, stop_asking = time.monotonic(), False
        while True:
            asking = not stop_asking and (deadline is None or time.monotonic() < deadline)
            while asking and len(self.pending) < self.executor.slots and \
                    finished(study) + running(study) < self.trials:
                if self.repeats >= REPEAT_LIMIT:
                    self.log(f"the sampler proposed {self.repeats} already-trained configs in a row: "
                             f"stopped asking ({finished(study)} of {self.trials} trials)")
                    stop_asking = True
                    break
                self._ask(study)
                self._changed(study)
            if self.shared and time.monotonic() - checked > HEARTBEAT_S:     # other drivers' dead trials
                checked = time.monotonic()
                stale = recover(study)
                if stale:
                    self.log(f"{stale} trial(s) of a driver that stopped beating re-queued")
                    continue
            if self._resolve_waiting(study):
                self._changed(study)
                continue                                   # a slot may have come free for asking
            if not self.pending:
                others = self.shared and running(study) and (deadline is None or time.monotonic() < deadline)
                if self.waiting or others:
                    time.sleep(1.0)                        # another driver's trials may still end or be re-queued
                    continue
                return
            for outcome in self.executor.wait(timeout=0.5):
                self._tell(study, outcome)
                self._changed(study)

    def _job(self, number: int, config: Dict[str, Any], seeds: List[int], run_dir: str,
             budget: Dict[str, Any], trained_in: Optional[str] = None) -> TrialJob:
        """A job; ``trained_in``: a search trial's run folder that trained this config under the
        selection budget (a confirmation evaluates its checkpoints instead of training again)."""
        return TrialJob(number=number, config=config, tasks=list(self.space.tasks), budget=budget, seeds=seeds,
                        run_dir=run_dir, threads=self.executor.threads(), device=self.device,
                        tasks_dir=str(self.tasks_dir) if self.tasks_dir else None, trained_in=trained_in,
                        trained_budget=self.budget.model_dump(mode="json") if trained_in else None)

    def _run_all(self, jobs: List[TrialJob]) -> List[TrialOutcome]:
        """Runs ``jobs`` on the executor, as many at once as it has slots; returns every outcome."""
        waiting, running, outcomes = list(jobs), set(), []
        while waiting or running:
            while waiting and len(running) < self.executor.slots:
                job = waiting.pop(0)
                self.executor.submit(job)
                running.add(job.number)
            for outcome in self.executor.wait(timeout=0.5):
                running.discard(outcome.number)
                outcomes.append(outcome)
                self.state.durations.append(outcome.wall_s)
        return outcomes

    def _confirm(self, study: optuna.Study) -> None:
        from nlsearch.search.confirm import run_confirmation, select_finalists

        finalists = select_finalists(study, self.space)
        runs = len(finalists) * (len(self.space.confirm.seeds) + len(self.space.confirm.lr_factors) - 1)
        self.log(f"confirmation: {len(finalists)} finalists (trials {[f.number for f in finalists]}) x "
                 f"{len(self.space.confirm.seeds)} seeds on the report eval set: {runs} runs")
        frame = run_confirmation(self.space, study, self.run_dir, self.report_budget.model_dump(mode="json"),
                                 self._run_all, self._job)
        failed = frame[frame.status != "complete"] if not frame.empty else frame
        for row in failed.itertuples():
            self.log(f"confirmation run of trial {row.trial} seed {row.seed} {row.status}: {row.reason}")

    def measures(self) -> Dict[str, Any]:
        """What the space's names resolve to: a resumed study must measure the same (see ``open_study``)."""
        base = json.dumps(base_mapping(self.space), sort_keys=True, separators=(",", ":"))
        return {"budget": self.budget.ref, "budget_sha256": self.budget.sha256(),
                "tasks": {t.ref: t.spec.sha256() for t in self.tasks},
                "base_sha256": hashlib.sha256(base.encode()).hexdigest()}

    def _changed(self, study: optuna.Study) -> None:
        self.state.running = len(self.pending)
        if self.on_change is not None:
            self.on_change(self, study)


def _check_storage(url: Optional[str]) -> Optional[str]:
    """An Optuna storage URL whose database driver is installed and whose server answers (a file
    database: whose folder exists), checked before anything is written; ValueError naming the URL
    (password hidden) otherwise."""
    if url is None:
        return None
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as err:                     # noqa: BLE001 - any parse error is the URL's
        raise ValueError(f"--storage {url!r} is not a usable database URL: {type(err).__name__}: {err}") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        parsed.get_dialect()
    except Exception as err:                     # noqa: BLE001 - an unknown dialect or a missing driver
        raise ValueError(f"--storage {shown!r} is not a usable database URL: {type(err).__name__}: {err}") from None
    if parsed.get_backend_name() == "sqlite":
        folder = Path(parsed.database or ".").parent
        if parsed.database not in (None, "", ":memory:") and not folder.is_dir():
            raise ValueError(f"--storage {shown}: the database's folder {folder} does not exist")
        return url
    args = {"connect_timeout": STORAGE_TIMEOUT_S} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
    try:
        with create_engine(parsed, connect_args=args).connect():
            pass
    except Exception as err:                     # noqa: BLE001 - the server's or the driver's answer
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--storage {shown}: cannot connect: {first}") from None
    return url


STORAGE_TIMEOUT_S = 10
REPEAT_LIMIT = 20         # already-trained candidates in a row after which a search stops asking


def _named(load: Callable[[], Any], space: SearchSpace, key: str) -> Any:
    """``load()``, its ValueError or FileNotFoundError prefixed with the space file and the key."""
    try:
        return load()
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"{space.source or space.name}: {key}: {err}") from None


def selection_budget(budget: Budget) -> Budget:
    """The budget a search trains and scores its trials under: ``budget`` evaluated on another eval set
    (``eval_seed`` derived from its own; name ``<name>-select``). A search picks its best on these
    sequences, so the numbers it reports are not also those of the eval set that suites and the
    leaderboard score on (for ``lm`` tasks the windows differ but come from the same validation text)."""
    return budget.model_copy(update={"name": f"{budget.name}-select",
                                     "eval_seed": derive_seed("search-select", budget.eval_seed)})


def resolve_budget(space: SearchSpace) -> Budget:
    """The space's budget: a profile name, a budget file, or an inline mapping (a full Budget)."""
    if isinstance(space.budget, str):
        return _named(lambda: load_budget(space.budget), space, "budget")
    return parse_config(Budget, space.budget, f"{space.source or space.name}: budget")


def auto_workers(space: SearchSpace, device: str = "auto") -> int:
    """Trials at once that this machine holds: one per ``gpus_per_trial`` of its GPUs when it has any
    (and ``device`` allows them), else one per ``cpus_per_trial`` of the cores this process may use."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return max(1, int(torch.cuda.device_count() / space.resources.gpus_per_trial))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // space.resources.cpus_per_trial)


def default_executor(workers: int, address: Optional[str], space: SearchSpace, device: str = "auto") -> Executor:
    """In process for one local worker (torch threads as the budget says); Ray for ``workers`` > 1 or a
    cluster ``address`` (threads = ``resources.cpus_per_trial``)."""
    if workers <= 1 and not address:
        return InProcessExecutor()            # the budget's thread count: one trial may use the machine
    from nlsearch.search.executors import RayExecutor
    return RayExecutor(workers=workers, address=address, resources=space.resources, use_gpus=device != "cpu")

