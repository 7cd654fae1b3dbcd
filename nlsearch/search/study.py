"""The Optuna study of a search: storage, sampler, pruner, and recovery after a crash.

Storage: by default an Optuna JournalStorage file ``<run dir>/study.journal`` (embedded, no server;
``optuna-dashboard <run dir>/study.journal`` reads it), which one driver at a time owns
(``driver.lock``, an OS file lock). A database URL (``postgresql://…``) is a study that any number of
drivers, on one machine or several, work on at once: each driver beats for its running trials
(Optuna's heartbeat: every :data:`HEARTBEAT_S` seconds), and only a trial whose driver stopped beating
for :data:`GRACE_S` seconds is taken for interrupted.

Recovery: a trial left RUNNING by a driver that died (kill -9, power cut) or was stopped (Ctrl-C) is
marked FAIL with the reason, flagged ``requeued``, and its parameters are enqueued again with
``retry_of`` and its run directory, so the new trial resumes the old one's checkpoints. With the
journal that is every RUNNING trial when the (only) driver starts; with a database, the trials
without a heartbeat, found by every driver as it runs. A journal whose last line was cut by a crash
is truncated to its last complete line first.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import optuna
from filelock import FileLock, Timeout
from optuna.trial import TrialState

from nlsearch.config import canonical_json, is_file_ref
from nlsearch.search.space import PrunerSpec, SamplerSpec, SearchSpace

JOURNAL = "study.journal"
REQUEUED = "requeued"                    # a FAIL that does not count: its parameters were asked again
SURPLUS = "surplus"                      # a FAIL that does not count: asked beyond the trials wanted
DUPLICATE_OF = "duplicate_of"            # a trial that does not count: the config of an earlier trial (its
                                         # result when that one completed, else FAIL)
WAITS_FOR = "waits_for"                  # a RUNNING duplicate waiting for the earlier trial still training
HEARTBEAT_S = int(os.environ.get("NLSEARCH_HEARTBEAT_S", 20))    # a driver's beat for its running trials
GRACE_S = int(os.environ.get("NLSEARCH_GRACE_S", 90))            # silence after which a trial is re-queued
# space fields that may change between runs of one study (asking for more trials, say)
MUTABLE = ("trials", "timeout_minutes", "description", "resources", "question", "reference", "confirm", "enqueue")


class DriverLock:
    """An exclusive OS lock (``filelock``: flock on POSIX, msvcrt on Windows) on ``<run dir>/driver.lock``:
    a second driver is refused at once, and the lock goes away with its process, however it dies."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "driver.lock"
        self.lock = FileLock(self.path, timeout=0)

    def __enter__(self) -> "DriverLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            raise ValueError(f"another search is running in {self.path.parent} (it holds {self.path}): a study in a "
                             f"journal file has one driver; for several, give every driver the same "
                             f"--storage postgresql+psycopg://...") from None
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def repair_journal(path: Path) -> None:
    """Drops a last line cut short by a crash (Optuna refuses to append after one); raises ValueError
    naming the file and line when another line is not a record; removes a journal lock left by a
    killed writer (safe: this process holds the driver lock)."""
    if path.exists():
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with open(path, "r+b") as f:
                f.truncate(end)
        for number, line in enumerate(data[:end].splitlines(), start=1):
            try:
                json.loads(line)
            except ValueError:
                raise ValueError(f"{path}: line {number} is not a journal record ({line[:60]!r}): the study "
                                 f"cannot be read; restore the file or start a new study with another --out") from None
    stale = Path(f"{path}.lock")
    if stale.is_symlink() or stale.exists():
        stale.unlink()


def make_storage(run_dir: Path, url: Optional[str]):
    """The journal file in ``run_dir``, or the database at ``url`` with heartbeats on."""
    if url:
        from optuna.storages import RDBStorage

        from sqlalchemy.exc import DBAPIError

        # the driver beats itself (ask/tell, not Study.optimize): Optuna's warning about that is moot
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        for attempt in range(5):
            try:
                return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
            except DBAPIError:            # drivers started together on a new database both create its tables:
                if attempt == 4:          # the loser's CREATE fails; by the retry the tables are there
                    raise
                time.sleep(0.5 * (attempt + 1))
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(run_dir) / JOURNAL
    repair_journal(path)
    return JournalStorage(JournalFileBackend(str(path)))


def make_sampler(spec: SamplerSpec, seed: int):
    if spec.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials, multivariate=True,
                                          group=True, constant_liar=True)


def make_pruner(spec: PrunerSpec, max_steps: int):
    if spec.kind == "none":
        return optuna.pruners.NopPruner()
    if spec.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_resource or "auto",
                                                      reduction_factor=spec.reduction_factor)
    return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource or 1, max_resource=max_steps,
                                          reduction_factor=spec.reduction_factor)


def space_identity(space: SearchSpace) -> str:
    """The canonical JSON of what a study measures (fields in MUTABLE left out)."""
    data = json.loads(canonical_json(space))
    for key in MUTABLE + ("source",):
        data.pop(key, None)
    # a file's place may change (the checkout moved); its content is in the study's ``measures``
    data["budget"] = Path(data["budget"]).name if is_file_ref(data["budget"]) else data["budget"]
    data["tasks"] = [Path(t).name if is_file_ref(t) else t for t in data["tasks"]]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _differing(stored: Dict[str, Any], now: Dict[str, Any]) -> str:
    keys = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
    return "; ".join(f"{k}: {stored.get(k)!r} then, {now.get(k)!r} now" for k in keys)[:600]


def open_study(space: SearchSpace, run_dir: Path, storage_url: Optional[str], max_steps: int,
               measures: Optional[Dict[str, Any]] = None) -> optuna.Study:
    """Creates the study, or loads it when it exists; refuses a space that changed what it measures:
    its own fields (but ``MUTABLE``) and, in ``measures``, what its names resolve to (the budget's and
    the tasks' sha256, the base config's), so an edited budget file or a new task version under the
    same name is not mixed into a study either. A study from before ``measures`` were kept gets them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=make_storage(run_dir, storage_url), study_name=space.name,
                                directions=space.directions, load_if_exists=True,
                                sampler=make_sampler(space.sampler, space.seed),
                                pruner=make_pruner(space.pruner, max_steps))
    refuse = (f"study {space.name!r} in {run_dir} was started with a different space (only "
              f"{', '.join(MUTABLE)} may change): use another --out (its trial folders are this study's), or "
              f"remove {run_dir}. What differs: ")
    identity = space_identity(space)
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", identity)
    elif stored != identity:
        raise ValueError(refuse + _differing(json.loads(stored), json.loads(identity)))
    if measures is not None:
        measures = json.loads(json.dumps(measures, sort_keys=True))
        known = study.user_attrs.get("measures")
        if known is None:
            study.set_user_attr("measures", measures)
        elif known != measures:
            raise ValueError(refuse + _differing(known, measures))
    done = len(study.get_trials(deepcopy=False))
    if done:            # a resumed study: a sampler seeded as at the start would draw the same candidates again
        study.sampler = make_sampler(space.sampler, space.seed + done)
    else:               # a new study: the space's own candidates first (its reference, say)
        for point in space.enqueue:
            study.enqueue_trial(dict(point), skip_if_exists=True)
    return study


def counts(trial) -> bool:
    """Whether a finished trial counts towards ``trials``: complete ones that trained (not a duplicate
    given an earlier trial's result), pruned ones, and failed ones that were neither re-queued, nor
    surplus, nor a duplicate of a trial that did not complete."""
    if trial.state == TrialState.COMPLETE:
        return DUPLICATE_OF not in trial.user_attrs
    uncounted = (REQUEUED, SURPLUS, DUPLICATE_OF)
    return trial.state == TrialState.PRUNED or (
        trial.state == TrialState.FAIL and not any(key in trial.user_attrs for key in uncounted))


def finished(study: optuna.Study) -> int:
    """Trials that count towards ``trials`` (:func:`counts`)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t))


def running(study: optuna.Study) -> int:
    """Trials RUNNING now, by any driver."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def requeue(study: optuna.Study, number: int, reason: str) -> bool:
    """Marks running trial ``number`` FAIL (``reason``, ``requeued``) and enqueues its parameters again;
    False (nothing done) when another driver finished or re-queued it first."""
    frozen = study.get_trials(deepcopy=False)[number]
    trial = optuna.trial.Trial(study, frozen._trial_id)
    try:
        trial.set_user_attr("reason", reason)
        trial.set_user_attr(REQUEUED, True)
        study.tell(number, state=TrialState.FAIL)
    except (RuntimeError, ValueError):           # UpdateFinishedTrialError: not RUNNING any more
        return False
    attrs = {"retry_of": number}
    if "run_dir" in frozen.user_attrs:
        attrs["run_dir"] = frozen.user_attrs["run_dir"]
    study.enqueue_trial(frozen.params, user_attrs=attrs, skip_if_exists=False)
    return True


def shared(study: optuna.Study) -> bool:
    """Whether several drivers may work on ``study`` (a database with heartbeats)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def recover(study: optuna.Study) -> int:
    """Re-queues the trials left RUNNING by drivers that are gone: with the journal (one driver) every
    RUNNING trial; with a shared database those whose driver has not beaten for ``GRACE_S``. Returns
    how many this call re-queued."""
    if shared(study):
        ids = study._storage._get_stale_trial_ids(study._study_id)
        stale = [study._storage.get_trial_number_from_id(i) for i in ids]
        why = f"its driver stopped beating (no heartbeat for {GRACE_S} s)"
    else:
        stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        why = "the driver stopped while it ran"
    return sum(requeue(study, n, f"interrupted: {why} (pid {os.getpid()} re-queued it)") for n in stale)
