"""The result record of a run (docs/architecture.md, "From a config to a number") and its files.

A run directory holds, once the run completed (``record.json`` is written last, so its presence
marks a finished run):

- ``record.json``: a ``RunRecord`` (format 1), with the sha256 of the two Parquet files (``files``);
- ``metrics.parquet``: one row per metric row (name, metric, length, group, value,
  higher_is_better) with the run's identity columns (config_sha256, model, task, budget, seed);
- ``history.parquet``: one row per intermediate evaluation (step, train_loss, lr, metrics);
- ``checkpoints/``: see ``nlsearch.train.checkpoint``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from nlsearch.config import canonical_json, config_hash
from nlsearch.eval.scores import MetricRow
from nlsearch.io import write_parquet, write_text
from nlsearch.provenance import code_commit, provenance

FORMAT = 1
RECORD = "record.json"                  # written last in a run directory: the run completed


@dataclass(frozen=True)
class TrainingChange:
    """A change to what training computes for configs holding any of ``kinds`` (a mixer's or channel
    mixer's ``kind``; ``*``: every config). A record written before it (``training_version`` below
    ``version``) is not reused for such a config, however well its identity matches."""

    version: int
    kinds: Tuple[str, ...]
    what: str

    def affects(self, config: Dict[str, Any]) -> bool:
        return "*" in self.kinds or bool(set(self.kinds) & set(_kinds(config)))


# Every change to what training computes, oldest first; a record stores the newest version it knew.
# Changes that alter only float rounding (a faster form of the same equations) are not listed.
TRAINING_CHANGES: Tuple[TrainingChange, ...] = (
    TrainingChange(1, ("mamba", "selfmod"), "Mamba's A_log and the self-modifying layer's gate biases are no "
                                            "longer weight-decayed (commit 9c31f4a)"),
)
TRAINING_VERSION = max(c.version for c in TRAINING_CHANGES)


def _kinds(config: Any) -> List[str]:
    """Every ``kind`` in a config mapping, at any depth."""
    if isinstance(config, dict):
        own = [config["kind"]] if isinstance(config.get("kind"), str) else []
        return own + [k for v in config.values() for k in _kinds(v)]
    if isinstance(config, list):
        return [k for v in config for k in _kinds(v)]
    return []


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = FORMAT
    status: Literal["completed", "evaluated"]
    created: str                            # UTC, ISO 8601
    model: Optional[str]                    # the config's label (not hashed)
    config: Dict[str, Any]                  # the canonical JSON of the trained config, parsed
    config_sha256: str
    task: str                               # name@version
    task_sha256: str
    task_kind: str
    budget: str                             # name@version
    budget_sha256: str
    seed: int                               # training seed
    eval_seed: int
    steps: int
    train_lengths: List[int]
    eval_lengths: List[int]
    headline: List[str]                     # the task spec's metrics, names into ``metrics``
    metrics: Dict[str, Optional[float]]     # every metric row by name (None for NaN)
    higher_is_better: Dict[str, bool]
    params: int
    state_size: int                         # numbers carried per sequence at state_size_length
    state_size_length: int
    train_tokens: int
    tokens_per_s: Optional[float]           # training throughput (forward, backward, step)
    wall_time_s: float
    device: str
    threads: int
    hardware: str
    cpu_count: str
    torch: str
    nlsearch: str
    git_commit: str
    python: str
    # added later (absent from older records): the speed settings of the last session, every session
    # of a resumed run (where and with what code each part of the training ran), and for an
    # ``evaluated`` record the run it re-evaluates (its own task and budget; ``train_lengths`` are its)
    allocator: Optional[str] = None
    compiled_steps: Optional[str] = None
    sessions: List[Dict[str, Any]] = []
    trained_as: Optional[Dict[str, Any]] = None
    # added with reuse checks: the precision trained in (older records: all fp32 CPU runs) and the sha256
    # of every file written beside the record (older records have none and are never reused)
    precision: str = "fp32"
    files: Dict[str, str] = {}
    # added with the list of training changes: the newest change the code that trained it knew (older
    # records: 0, before every listed change)
    training_version: int = 0
    # added with the automatic choice of compiled layer steps: why the last session compiled its training
    # steps or not (``compiled_steps``; nlsearch.train.plan.choose_compile); older records: None
    compile_reason: Optional[str] = None
    # added with CPU-time throughput: training tokens per CPU-second of the process on a CPU run (with one
    # thread, its speed while it had a core: pauses and a shared core do not count); older records: None
    tokens_per_cpu_s: Optional[float] = None


def session_info(device: torch.device, from_step: int, compile: Any = None) -> Dict[str, Any]:
    """Where a training session (a start or a resume) runs, for the record's ``sessions``: the
    machine, and the Ray node when it runs in a Ray worker (several nodes may share one hostname).
    ``compile``: the session's :class:`~nlsearch.train.plan.CompileChoice` (None: the environment's)."""
    prov = provenance(device)
    info = {"from_step": from_step, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "threads": torch.get_num_threads(),
            **{k: prov[k] for k in ("hardware", "torch", "git_commit", "allocator", "compiled_steps", "denormals")}}
    if compile is not None:
        info.update(compiled_steps=compile.setting, compile_reason=compile.reason)
    node = _ray_node()
    if node:
        info["ray_node"] = node
    return info


def _ray_node() -> Optional[str]:
    """The Ray node id of this process when it is a Ray worker, else None."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:                                  # noqa: BLE001 - provenance never fails a run
        return None


def _number(x: float) -> Optional[float]:
    return None if math.isnan(x) else float(x)


def build_record(*, status: str, plan, model: torch.nn.Module, rows: Sequence[MetricRow], steps: int,
                 train_tokens: int, train_time: float, wall_time: float,
                 sessions: Sequence[Dict[str, Any]] = (), trained_as: Optional[Dict[str, Any]] = None,
                 compile: Any = None, train_cpu_time: Optional[float] = None) -> RunRecord:
    """Returns the record of ``model`` trained (or evaluated) under ``plan`` with ``rows``; ``compile``:
    the last session's :class:`~nlsearch.train.plan.CompileChoice` (None: the environment's setting);
    ``train_cpu_time``: the training steps' CPU seconds (None: not counted for the whole run), read as
    throughput only for a CPU run (on a GPU the process's CPU time is not the work)."""
    prov = provenance(plan.device)
    longest = max(plan.eval_lengths)
    return RunRecord(
        status=status, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=plan.cfg.name, config=json.loads(canonical_json(plan.cfg)), config_sha256=config_hash(plan.cfg),
        task=plan.task.ref, task_sha256=plan.task.spec.sha256(), task_kind=plan.kind,
        budget=plan.budget.ref, budget_sha256=plan.budget.sha256(), seed=plan.seed,
        eval_seed=plan.budget.eval_seed, steps=steps,
        train_lengths=list(trained_as["train_lengths"] if trained_as else plan.train_lengths),
        eval_lengths=list(plan.eval_lengths),
        headline=[r.name for r in rows if r.length is None and r.group is None],
        metrics={r.name: _number(r.value) for r in rows}, higher_is_better={r.name: r.higher_is_better for r in rows},
        params=sum(p.numel() for p in model.parameters()), state_size=int(model.state_size(longest)),
        state_size_length=longest, train_tokens=train_tokens,
        tokens_per_s=train_tokens / train_time if train_time > 0 else None, wall_time_s=wall_time,
        tokens_per_cpu_s=(train_tokens / train_cpu_time if plan.device.type == "cpu" and train_cpu_time
                          else None),
        device=str(plan.device), threads=torch.get_num_threads(), hardware=prov["hardware"],
        cpu_count=prov["cpu_count"], torch=prov["torch"], nlsearch=prov["nlsearch"],
        git_commit=prov["git_commit"], python=prov["python"], allocator=prov["allocator"],
        compiled_steps=compile.setting if compile is not None else prov["compiled_steps"],
        compile_reason=compile.reason if compile is not None else None, sessions=list(sessions),
        trained_as=trained_as, precision=plan.precision, training_version=TRAINING_VERSION)


def metrics_frame(record: RunRecord, rows: Sequence[MetricRow]) -> pd.DataFrame:
    """One row per metric row, with the run's identity columns."""
    frame = pd.DataFrame({
        "name": [r.name for r in rows], "metric": [r.metric for r in rows],
        "length": pd.array([r.length for r in rows], dtype="Int64"),
        "group": pd.array([r.group for r in rows], dtype="string"),
        "value": [float(r.value) for r in rows], "higher_is_better": [r.higher_is_better for r in rows]})
    for col in ("config_sha256", "model", "task", "budget", "seed", "status"):
        frame[col] = getattr(record, col)
    return frame


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_run(folder: Path, record: RunRecord, rows: Sequence[MetricRow],
              history: Sequence[Dict[str, Any]] = ()) -> Path:
    """Writes ``metrics.parquet``, ``history.parquet`` (when there is history) and then
    ``record.json`` holding their sha256, each atomically; returns the record's path."""
    folder = Path(folder)
    written = [write_parquet(metrics_frame(record, rows), folder / "metrics.parquet")]
    if history:
        written.append(write_parquet(pd.DataFrame(list(history)), folder / "history.parquet"))
    record = record.model_copy(update={"files": {p.name: file_sha256(p) for p in written}})
    return write_text(record.model_dump_json(indent=2) + "\n", folder / RECORD)


def check_files(run_dir: Path, record: RunRecord) -> None:
    """Raises ValueError unless every file the record lists is in ``run_dir`` with the sha256 the
    record holds (a record without digests, written before they existed, cannot be checked)."""
    if not record.files:
        raise ValueError(f"{Path(run_dir) / RECORD} holds no digests of its metrics files (written before "
                         f"nlsearch recorded them), so its numbers cannot be checked")
    for name, digest in record.files.items():
        path = Path(run_dir) / name
        if not path.is_file():
            raise ValueError(f"{path} is missing (its record lists it)")
        if file_sha256(path) != digest:
            raise ValueError(f"{path} does not match the sha256 its record holds (edited or replaced)")


def read_record(path: Path) -> RunRecord:
    """Returns the record in ``path`` (a record.json or the folder holding one)."""
    path = Path(path)
    path = path / RECORD if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no record at {path}")
    try:
        return RunRecord.model_validate_json(path.read_text())
    except ValidationError as err:
        raise ValueError(f"{path}: not a valid run record: {err}") from None


FAILURE = "failure.json"                # written when a run's loss diverged: a training outcome to keep


class Failure(BaseModel):
    """A run whose training loss went NaN or infinite: an outcome (ranked worst), kept in its folder
    so that it survives a fresh clone and is not trained again to the same step. Carries the run's
    identity and training version, and is reused under the same rules as a record."""

    model_config = ConfigDict(extra="forbid")
    format: int = 1
    status: str                                # "failed: ..." as the runner reports it
    step: int
    config: Dict[str, Any]
    config_sha256: str
    task: str
    task_sha256: str
    budget: str
    budget_sha256: str
    seed: int
    precision: str
    training_version: int
    git_commit: str
    created: str


def one_line(err: BaseException) -> str:
    """An exception as one line of at most 300 characters, its type first (a run's status)."""
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def write_failure(run_dir: Path, plan, step: int, status: str) -> Path:
    """Keeps a diverged run's outcome in ``run_dir`` (:class:`Failure`); its checkpoints stay as they are."""
    failure = Failure(status=status, step=step, config=plan.cfg.model_dump(mode="json"), **plan.identity(),
                      training_version=TRAINING_VERSION, git_commit=code_commit(),
                      created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_text(failure.model_dump_json(indent=1) + "\n", Path(run_dir) / FAILURE)
    return Path(run_dir) / FAILURE


def finished_failure(run_dir: Path, identity: Dict[str, Any]) -> Optional[Failure]:
    """The kept failure in ``run_dir`` when it is the run ``identity`` describes, None when there is
    none; ValueError (as :func:`finished_record`) when it is another run's or predates a listed change
    to what training computes for its model."""
    path = Path(run_dir) / FAILURE
    if not path.is_file():
        return None
    try:
        failure = Failure.model_validate_json(path.read_bytes())
    except ValidationError as err:
        raise ValueError(f"{path}: not a failure record ({err.error_count()} problem(s))") from None
    _check_is(failure, run_dir, identity, "a failed run")
    return failure


def _check_is(kept: Any, run_dir: Path, identity: Dict[str, Any], what: str, ignore: Sequence[str] = ()) -> None:
    """ValueError when ``kept`` (a record or a failure) is not the run ``identity`` describes, or was
    trained before a listed change to what training computes for its model (``TRAINING_CHANGES``)."""
    differ = [key for key, value in identity.items() if key not in ignore and getattr(kept, key) != value]
    if differ:
        shown = ", ".join(f"{key} {getattr(kept, key)!r} there, {identity[key]!r} here" for key in differ)
        raise ValueError(f"run directory {run_dir} holds {what} of something else ({shown}): "
                         f"remove it, or write to another directory")
    stale = [c for c in TRAINING_CHANGES if c.version > kept.training_version and c.affects(kept.config)]
    if stale:
        raise ValueError(f"run directory {run_dir} holds a run trained before a change to what training computes "
                         f"for this model (change {stale[0].version}: {stale[0].what}): it is not reused")


def finished_record(run_dir: Path, identity: Dict[str, Any], ignore: Sequence[str] = ()) -> Optional[RunRecord]:
    """The finished run in ``run_dir`` when it is the run ``identity`` describes (a run plan's
    :meth:`~nlsearch.train.plan.RunPlan.identity`, fields in ``ignore`` left out) and its metrics
    files match the digests in its record; None when the folder holds no record. Raises ValueError
    naming what differs when it holds another run (an edited budget or task file under the same
    name@version, another study's trial folder, another precision), a run trained before a listed
    change to what training computes for its model (``TRAINING_CHANGES``), or files that do not match:
    its numbers are never reused for this one. This is the one gate every reuse goes through."""
    if not (Path(run_dir) / RECORD).is_file():
        return None
    record = read_record(run_dir)
    _check_is(record, run_dir, identity, "a finished run", ignore)
    check_files(run_dir, record)
    return record


def finished_outcome(run_dir: Path, identity: Dict[str, Any]) -> Optional[Union[RunRecord, Failure]]:
    """The finished outcome kept in ``run_dir`` for the run ``identity``: its record when it completed,
    else its :class:`Failure` when it diverged, else None; ``ValueError`` (as both checks raise) when the
    folder holds something that may not be reused."""
    return finished_record(run_dir, identity) or finished_failure(run_dir, identity)
