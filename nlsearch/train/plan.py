"""Everything a run needs, resolved and validated before anything is written: the model config (with
the task's vocabulary), the task, the budget, lengths, data, device and the run directory.

Vocabulary rule: a config that does not set ``vocab_size`` takes the task's (``task.vocab_size``;
presets leave it unset); a config that sets it must cover the task's vocabulary, else ValueError.
The record's config (and its sha256) is the one trained, with the vocabulary filled in.

Compiled layer steps (:func:`choose_compile`, per run and session): the training steps compile the
layers' sequential step (``nlsearch.runtime.step_function``) when ``NLSEARCH_COMPILE=1``, never when
``NLSEARCH_COMPILE=0``, and otherwise when (a) inductor can compile for the device (CUDA, or a C++
compiler for the CPU), (b) the config is a preset (with the task's vocabulary) that ``nlsearch bench
models --compile`` timed on this device type at its width and depth, with a layer step to compile,
and (c) the steps left to train save more than compiling costs. The saving is the table's eager less
compiled core-seconds per training token (interpolated in the length, as the dry-run estimate does),
times the run's training tokens (steps x batch x mean train length), over the run's threads; the cost
is the table's compile seconds once per distinct train length (each length is a new shape). The choice
and its reason go into the run's record and every session; it is not part of the run's identity (a
compiled and an eager run compute the same numbers up to float rounding).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import pandas as pd

import torch

from nlsearch.budgets import Budget, KindBudget, load_budget, run_lengths, task_kind
from nlsearch.config import config_hash, parse_config
from nlsearch.eval.forward import pick_device, precision
from nlsearch.eval.scores import check_metrics
from nlsearch.io import check_writable_folder
from nlsearch.models import ModelConfig, load_model_config
from nlsearch.models import list_presets
from nlsearch.runtime import compile_setting, cpp_compiler
from nlsearch.tasks import Task, load_task
from nlsearch.train.record import RECORD

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class RunPlan:
    cfg: ModelConfig
    task: Task
    budget: Budget
    seed: int
    device: torch.device
    threads: Optional[int]
    train_lengths: Tuple[int, ...]
    eval_lengths: Tuple[int, ...]

    @property
    def kind(self) -> str:
        return task_kind(self.task)

    @property
    def kb(self) -> KindBudget:
        return self.budget.for_kind(self.kind)

    @property
    def n_phases(self) -> int:
        return len(self.task.phase_names())

    @property
    def total_steps(self) -> int:
        return self.kb.steps * self.n_phases

    @property
    def precision(self) -> str:
        return precision(self.device)

    def identity(self) -> Dict[str, Any]:
        """What a checkpoint must match to be resumed, and a finished run to be reused, by this plan:
        config, task, budget (by their hashes), seed and precision (a bf16 GPU run never stands in
        for the fp32 CPU run of the same config)."""
        return {"config_sha256": config_hash(self.cfg), "task": self.task.ref, "task_sha256": self.task.spec.sha256(),
                "budget": self.budget.ref, "budget_sha256": self.budget.sha256(), "seed": self.seed,
                "precision": self.precision}


def with_task_vocab(cfg: ModelConfig, task: Task) -> ModelConfig:
    """Returns ``cfg`` with ``vocab_size`` = the task's when the config leaves it unset; raises
    ValueError when a set ``vocab_size`` is smaller than the task's vocabulary."""
    if "vocab_size" not in cfg.model_fields_set:
        data = cfg.model_dump(mode="json")
        data["vocab_size"] = task.vocab_size
        return parse_config(ModelConfig, data, f"{cfg.name or 'model'} with the vocabulary of {task.ref}")
    if cfg.vocab_size < task.vocab_size:
        raise ValueError(f"model {cfg.name or ''} has vocab_size={cfg.vocab_size}, task {task.ref} needs "
                         f"{task.vocab_size}: a model's vocabulary must cover its task's (a config without "
                         f"vocab_size takes the task's)")
    return cfg


def resolve_task(task: Union[str, Path, Task], tasks_dir: Optional[Path] = None) -> Task:
    return task if isinstance(task, Task) else load_task(task, tasks_dir)


def check_data(plan: RunPlan) -> None:
    """Draws one sequence per phase and split at the shortest length, so a missing or empty data file
    fails here, before any directory exists."""
    for phase in range(plan.n_phases):
        plan.task.batch(1, min(plan.train_lengths), 0, "train", phase)
        plan.task.batch(1, min(plan.eval_lengths), 0, "eval", phase)


def plan_run(model_config: Union[str, Path, Dict[str, Any], ModelConfig], task: Union[str, Path, Task],
             budget: Union[str, Path, Budget], seed: int, device: Optional[str] = None,
             threads: Optional[int] = None, tasks_dir: Optional[Path] = None) -> RunPlan:
    """Resolves and validates a run; raises ValueError / KeyError / FileNotFoundError naming the bad
    input (config, task, budget, length, metric, data file, device, seed)."""
    check_seed(seed)
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    task = resolve_task(task, tasks_dir)
    budget = load_budget(budget)
    cfg = with_task_vocab(load_model_config(model_config), task)
    check_metrics(task)
    train_lengths, eval_lengths = run_lengths(budget, task)
    plan = RunPlan(cfg, task, budget, seed, pick_device(device), threads or budget.threads,
                   train_lengths, eval_lengths)
    check_data(plan)
    check_fits(plan)
    return plan


BYTES_PER_PARAM = 16                   # float32 weights, their gradients and AdamW's two moments


def training_bytes(plan: RunPlan) -> int:
    """A floor on the memory a training step needs: every parameter x :data:`BYTES_PER_PARAM` (counted
    on the meta device, nothing allocated) plus the logits, their softmax and gradient (3 x float32)
    at the budget's batch and longest train length. Activations come on top."""
    from nlsearch.models.describe import meta_model

    params = sum(p.numel() for p in meta_model(plan.cfg).parameters())
    logits = plan.kb.batch_size * max(plan.train_lengths) * plan.cfg.vocab_size * 4 * 3
    return params * BYTES_PER_PARAM + logits


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory a run on ``device`` can still take: free GPU memory, or the kernel's MemAvailable;
    None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(plan: RunPlan) -> None:
    """Raises ValueError, before anything is allocated, when :func:`training_bytes` exceeds what the
    device has available."""
    have = available_bytes(plan.device)
    if have is None:
        return
    need = training_bytes(plan)
    if need > have:
        raise ValueError(f"model {plan.cfg.name or '(unnamed)'} cannot train here: it needs at least "
                         f"{need / 2 ** 30:,.1f} GiB (parameters x {BYTES_PER_PARAM} bytes for weights, gradients "
                         f"and AdamW's moments, plus the logits at batch x length) and {plan.device} has "
                         f"{have / 2 ** 30:,.1f} GiB available")


MAX_SEED = 2 ** 63 - 1            # records and tables keep seeds as int64


def check_seed(seed: Any, what: str = "seed") -> None:
    """Raises ValueError unless ``seed`` is an integer in [0, 2**63 - 1]."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{what} must be an integer in [0, 2**63 - 1], got {seed!r}")


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Raises ValueError when ``run_dir`` cannot be written, or holds a run and ``resume`` is False
    (never mix two runs)."""
    check_writable_folder(run_dir, "run directory")
    if resume or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} is a file")
    if (run_dir / RECORD).exists() or (run_dir / CHECKPOINTS).exists():
        raise ValueError(f"run directory {run_dir} already holds a run; resume it or choose another directory")


def default_run_dir(out: Union[str, Path], plan: RunPlan) -> Path:
    """Returns ``out/<task>@<v>/<model>-<sha12>/<budget>@<v>-seed<seed>``."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", plan.cfg.name or "model")
    model = f"{label}-{config_hash(plan.cfg)[:12]}"
    return Path(out) / plan.task.ref / model / f"{plan.budget.ref}-seed{plan.seed}"


COMPILE_TABLES = Path(__file__).resolve().parents[2] / "results" / "bench"
"""Where ``nlsearch bench models --compile`` writes ``models-compile-<device type>.parquet``."""


@dataclass(frozen=True)
class CompileChoice:
    """Whether a run's training steps compile the layers' steps, and why (one short line)."""

    on: bool
    reason: str

    @property
    def setting(self) -> str:
        return "on" if self.on else "off"


def compile_table(device: torch.device) -> Optional[pd.DataFrame]:
    """The compile timings measured for ``device``'s type, or None where there are none."""
    path = COMPILE_TABLES / f"models-compile-{device.type}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def measured_preset(plan: RunPlan) -> Optional[str]:
    """The preset ``plan`` trains (its config is the preset's, with the task's vocabulary), or None."""
    name = plan.cfg.name
    if name not in list_presets():
        return None
    preset = with_task_vocab(load_model_config(name), plan.task)
    return name if config_hash(preset) == config_hash(plan.cfg) else None


def _per_token(rows: pd.DataFrame, seconds: pd.Series) -> np.ndarray:
    threads = rows["threads"].astype(float) if "threads" in rows else 1.0
    return (seconds * threads / (rows["B"] * rows["T"])).to_numpy(dtype=float)


def choose_compile(plan: RunPlan, steps: int, table: Optional[pd.DataFrame] = None) -> CompileChoice:
    """Whether the ``steps`` training steps ``plan`` has left compile the layers' steps (module doc);
    ``table``: the compile timings (default :func:`compile_table`). Raises ValueError on an unreadable
    ``NLSEARCH_COMPILE``."""
    forced = compile_setting()
    if forced is not None:
        return CompileChoice(forced, f"NLSEARCH_COMPILE={int(forced)}")
    if plan.device.type != "cuda" and cpp_compiler() is None:
        return CompileChoice(False, "no C++ compiler for inductor")
    preset = measured_preset(plan)
    if preset is None:
        return CompileChoice(False, f"{plan.cfg.name or 'the config'} is not a preset: no compile timing")
    table = compile_table(plan.device) if table is None else table
    need = {"compiled_seconds", "compile_seconds", "step_functions"}
    rows = pd.DataFrame() if table is None or not need <= set(table.columns) else table[
        (table.preset == preset) & (table.device == plan.device.type) & (table.d_model == plan.cfg.d_model)
        & (table.n_layers == plan.cfg.n_layers)].sort_values("T")
    if rows.empty:
        return CompileChoice(False, f"{preset}: no compile timing on {plan.device.type} "
                                    f"(nlsearch bench models --compile)")
    if not (rows.step_functions > 0).any():
        return CompileChoice(False, f"{preset} has no layer step to compile")
    rows = rows[(rows.step_functions > 0) & rows.compiled_seconds.notna()]
    lengths = plan.train_lengths
    mean = sum(lengths) / len(lengths)
    ts = rows["T"].to_numpy(dtype=float)
    saving = float(np.interp(mean, ts, _per_token(rows, rows.seconds - rows.compiled_seconds)))
    threads = plan.threads or torch.get_num_threads()
    per_step = saving * plan.kb.batch_size * mean / threads
    cost = float(np.interp(mean, ts, rows.compile_seconds.to_numpy(dtype=float))) * len(set(lengths))
    saved = per_step * steps
    why = f"{preset}: {steps} steps x {per_step:.2f} s saved = {saved:.0f} s {{}} {cost:.0f} s to compile"
    return CompileChoice(True, why.format(">")) if saved > cost else CompileChoice(False, why.format("<="))
