"""Re-evaluation of a saved model: ``evaluate_checkpoint(run_dir)`` rebuilds the model from its last
checkpoint and evaluates it on the run's task (or another one) under the run's budget (or another).

The record (status ``evaluated``) goes to ``<run_dir>/evals/<task>@<v>-<budget>@<v>/``; its ``steps``,
``train_tokens``, ``tokens_per_s``, ``train_lengths`` and ``sessions`` are the checkpoint's training
figures, ``trained_as`` names the task and budget it was trained under (``task`` and ``budget`` are the
evaluation's), ``wall_time_s`` is the evaluation's. A multi-phase task gets each phase's score and
ACC (BWT and FWT need the training run).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from nlsearch.budgets import Budget, run_lengths
from nlsearch.config import load_config
from nlsearch.eval.evaluate import EvalResult, evaluate
from nlsearch.models import ModelConfig
from nlsearch.tasks import Task, load_task
from nlsearch.tasks.batch import derive_seed
from nlsearch.train.checkpoint import latest_checkpoint, load_weights, read_trainer
from nlsearch.train.plan import plan_run
from nlsearch.train.record import RunRecord, build_record, write_run


def _run_task(trainer: dict, tasks_dir: Optional[Path]) -> Task:
    """The run's own task: its spec file when it is still there and unchanged, else its name@version."""
    path, identity = trainer.get("task_path"), trainer["identity"]
    if path and Path(path).is_file():
        task = load_task(path)
        if task.spec.sha256() == identity["task_sha256"]:
            return task
    task = load_task(identity["task"], tasks_dir)
    if task.spec.sha256() != identity["task_sha256"]:
        raise ValueError(f"task {task.ref} changed since the run (spec sha256 differs); pass --task explicitly")
    return task


def _train_lengths(budget: Budget, trainer: dict, tasks_dir: Optional[Path]) -> list:
    """The lengths the checkpoint was trained at (its own task under its own budget)."""
    try:
        task = _run_task(trainer, tasks_dir)
    except (ValueError, FileNotFoundError):         # the run's task is gone or changed: the lengths are unknown
        return []
    return list(run_lengths(budget, task)[0])


def _out_dir(folder: Path, task_ref: str, budget_ref: str) -> Path:
    run_dir = folder.parent.parent if folder.parent.name == "checkpoints" else folder
    return run_dir / "evals" / f"{task_ref}-{budget_ref}"


def evaluate_checkpoint(path: Union[str, Path], task: Union[str, Path, Task, None] = None,
                        budget: Union[str, Path, Budget, None] = None, device: Optional[str] = None,
                        tasks_dir: Optional[Path] = None, write: bool = True) -> Tuple[RunRecord, EvalResult, Path]:
    """Returns (record, eval result, output folder) of the model saved in ``path`` (a run directory
    or a checkpoint folder); writes the record there when ``write``. Validates before writing."""
    folder = latest_checkpoint(Path(path))
    if folder is None:
        raise FileNotFoundError(f"no checkpoint in {path} (expected checkpoints/latest or model.safetensors)")
    trainer = read_trainer(folder)
    cfg = load_config(ModelConfig, folder / "model.yaml")
    task = _run_task(trainer, tasks_dir) if task is None else task
    budget = Budget.model_validate(trainer["budget"]) if budget is None else budget
    plan = plan_run(cfg, task, budget, trainer["identity"]["seed"], device, tasks_dir=tasks_dir)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("init", plan.seed))
        model = plan.cfg.build().to(plan.device)
    load_weights(folder, model, plan.device)
    result = evaluate(model, plan.task, plan.budget, lengths=plan.eval_lengths, device=plan.device)
    state, identity = trainer["state"], trainer["identity"]
    trained_budget = Budget.model_validate(trainer["budget"])
    trained_as = {"task": identity["task"], "task_sha256": identity["task_sha256"],
                  "budget": identity["budget"], "budget_sha256": identity["budget_sha256"],
                  "train_lengths": _train_lengths(trained_budget, trainer, tasks_dir)}
    record = build_record(status="evaluated", plan=plan, model=model, rows=result.rows, steps=state["step"],
                          train_tokens=state["train_tokens"], train_time=state["train_time"],
                          wall_time=time.perf_counter() - t0, sessions=state.get("sessions", ()),
                          trained_as=trained_as)
    out = _out_dir(folder, plan.task.ref, plan.budget.ref)
    if write:
        write_run(out, record, result.rows)
    return record, result, out
