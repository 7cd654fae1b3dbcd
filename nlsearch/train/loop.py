"""``train(model_config, task, budget, seed, reporter, run_dir, resume) -> RunResult``: a pure function.

Determinism: the weights are initialised from ``derive_seed("init", seed)`` and every later draw of
torch's global generator (none today; dropout-like layers later) comes from ``derive_seed("train",
seed)``, both inside ``torch.random.fork_rng`` so the caller's generator is untouched. The batch of
step s is ``task.batch(batch_size, train_lengths[s % n], derive_seed("train", seed, s), "train",
phase)``: a pure function of the step, so resuming needs no data-loader state. Same inputs on the same
machine give bitwise the same metrics on CPU (float32; bf16 autocast is used on CUDA only).

A continual task trains phase by phase (``steps`` each, the lr schedule restarting every phase); the
untrained model is scored on every phase (FWT's baseline) and, after each phase, the model is scored on
every phase: row i of the GEM matrix R.

Compiled layer steps: each session chooses (``nlsearch.train.plan.choose_compile``, from the steps it
has left) whether its training steps compile the layers' sequential step; the choice and its reason
are logged once, and kept in the session and the record. Evaluation always runs eager (no-grad, other
lengths: other shapes to compile), also under ``NLSEARCH_COMPILE=1``.

The outer optimizer is ``model_config.optimizer.build(model)``. When a module reports parameters of
period C > 1 (``param_groups_by_period()``, the CMS ``steps`` clock) it is wrapped in
``PeriodicOptimizer``, which steps those every C training steps with their gradients summed over the
window. The lr schedule applies to every group; gradient clipping applies to what is about to be
applied (a window's sum once, when it closes); checkpoints save the open windows' sums.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from filelock import FileLock, Timeout

from nlsearch.display import progress_bar
from nlsearch.eval.evaluate import continual_rows, evaluate, phase_scores
from nlsearch.eval.forward import autocast
from nlsearch.eval.scores import MetricRow
from nlsearch.optim.periodic import PeriodicOptimizer, parameter_periods
from nlsearch.tasks.batch import IGNORE, TaskBatch, derive_seed
from nlsearch.train.checkpoint import load_checkpoint, read_trainer, restore_rng, resume_point, save_checkpoint
from nlsearch.train.divergence import divergence_site, nonfinite_gradients
from nlsearch.train.plan import CompileChoice, RunPlan, check_run_dir, choose_compile, plan_run
from nlsearch.train.record import RunRecord, build_record, one_line, session_info, write_failure, write_run
from nlsearch.runtime import compile_setting, compiled_steps, tune_process

Reporter = Callable[[int, Dict[str, float]], bool]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; ``step`` (0-based) and ``loss`` say when, ``where``
    (:func:`nlsearch.train.divergence.divergence_site`, when known) in which module."""

    def __init__(self, step: int, loss: float, where: str = ""):
        super().__init__(self.describe(step, loss) + (f" ({where})" if where else ""))
        self.step, self.loss, self.where = step, loss, where

    @staticmethod
    def describe(step: int, loss: float) -> str:
        return f"non-finite training loss {loss} at step {step}"


class NonFiniteGradientError(NonFiniteLossError):
    """The loss was finite but its gradient was not (clipping would then make every updated weight NaN
    and the next step's loss NaN): the same outcome, caught a step earlier, before any weight moves."""

    @staticmethod
    def describe(step: int, loss: float) -> str:
        return f"non-finite gradient at step {step} (loss {loss:.4g})"


@dataclass
class TrainerState:
    step: int = 0                                   # optimizer steps done
    losses: List[float] = field(default_factory=list)
    history: List[Dict[str, Any]] = field(default_factory=list)
    r_rows: List[List[float]] = field(default_factory=list)     # GEM R, one row per finished phase
    baseline: Optional[List[float]] = None                      # untrained scores per phase
    train_tokens: int = 0
    train_time: float = 0.0                         # seconds in forward, backward and optimizer steps
    train_cpu_time: Optional[float] = 0.0           # this process's CPU seconds in them (None: a part of the
                                                    # run was trained by code that did not count them)
    wall_time: float = 0.0                          # seconds of earlier sessions of this run
    sessions: List[Dict[str, Any]] = field(default_factory=list)   # record.session_info of each start/resume


@dataclass(frozen=True)
class RunResult:
    status: str                                     # completed | stopped (reporter) | interrupted
    steps: int
    metrics: Dict[str, float]                       # final rows, or the last report when not completed
    higher_is_better: Dict[str, bool]
    rows: Tuple[MetricRow, ...]
    losses: Tuple[float, ...]
    history: Tuple[Dict[str, Any], ...]
    record: Optional[RunRecord]
    run_dir: Optional[Path]


def build_optimizer(model: torch.nn.Module, plan: RunPlan):
    """The configured outer optimizer, wrapped in ``PeriodicOptimizer`` when some parameter has a
    period > 1 (the CMS ``steps`` clock)."""
    if set(parameter_periods(model)) <= {1}:
        return plan.cfg.optimizer.build(model)
    return PeriodicOptimizer(plan.cfg.optimizer.build, model)


def clip_gradients(model: torch.nn.Module, optimizer, max_norm: float) -> torch.Tensor:
    """Clips the global norm of the gradients about to be applied: every parameter's, or with a
    ``PeriodicOptimizer`` those of the windows that close on this step (each window's sum is clipped
    once, when it is used); returns that norm before clipping, as a 0-d tensor on the gradients'
    device (read it when it is needed: reading it waits for the device)."""
    if isinstance(optimizer, PeriodicOptimizer):
        params = [p for c, group in optimizer.periods.items() if optimizer.due(c) for p in group]
    else:
        params = [p for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: TaskBatch,
               device: torch.device, grad_clip: float, step: int) -> float:
    """One optimizer step on ``batch`` (B, T); returns the loss (mean NLL at scored positions).

    The loss and the gradient norm are read back together, once, after the backward pass (one
    host-device sync a step); a non-finite one stops the step before the optimizer moves, so the
    weights that produced it are still there to be looked at."""
    x, y = batch.inputs.to(device), batch.targets.to(device)
    with autocast(device):
        logits, _ = model(x)                                                    # (B, T, V)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = clip_gradients(model, optimizer, grad_clip)
    value, norm_value = torch.stack([loss.detach().float(), norm.float().to(loss.device)]).tolist()
    if not math.isfinite(value):                  # the weights that did it are still there: look where
        raise NonFiniteLossError(step, value, divergence_site(model, x))
    if not math.isfinite(norm_value):                        # the step would write NaN into every
        raise NonFiniteGradientError(step, value, nonfinite_gradients(model))   # weight: stop before
    optimizer.step()
    return value


@contextlib.contextmanager
def _threads(n: Optional[int]) -> Iterator[None]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


RUN_LOCK = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Optional[Path], resume: bool) -> Iterator[None]:
    """Holds ``<run_dir>/.lock`` (an OS file lock, gone with its process however it dies) while a run
    trains there: a second process training the same folder is refused, naming it, instead of both
    writing checkpoints into it. The folder is checked again once the lock is held."""
    if run_dir is None:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / RUN_LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(f"run directory {run_dir} is being trained by another process (it holds "
                         f"{run_dir / RUN_LOCK}): wait for it, or write to another directory") from None
    try:
        check_run_dir(run_dir, resume)
        yield
    finally:
        lock.release()


def _rng_devices(device: torch.device) -> List[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _report(plan: RunPlan, model: torch.nn.Module, state: TrainerState, phase: int) -> Dict[str, float]:
    """Intermediate metrics: recent train loss and the eval metrics at the first eval length (the
    current phase only, for a continual task)."""
    recent = state.losses[-plan.budget.eval_interval:]
    res = evaluate(model, plan.task, plan.budget, lengths=plan.eval_lengths[:1], phases=[phase], device=plan.device)
    keep = {r.name: r.value for r in res.rows if r.group is None or r.group.startswith("phase=")}
    return {"train_loss": sum(recent) / len(recent), **keep}


def _start(plan: RunPlan, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_dir: Optional[Path],
           resume: bool) -> TrainerState:
    folder, notes = resume_point(run_dir) if (run_dir is not None and resume) else (None, [])
    if notes:                                     # a bad pointer or a corrupt checkpoint: said, never silent
        warnings.warn(f"{run_dir}: {'; '.join(notes)}", stacklevel=3)
    if folder is None:
        torch.manual_seed(derive_seed("train", plan.seed))
        state = TrainerState(sessions=[session_info(plan.device, 0)])
        if plan.n_phases > 1:
            state.baseline = phase_scores(model, plan.task, plan.budget, plan.budget.eval_seed,
                                          plan.eval_lengths[0], device=plan.device)
        return state
    identity = read_trainer(folder)["identity"]
    if identity != plan.identity():
        raise ValueError(f"checkpoint {folder} belongs to another run: {identity} != {plan.identity()}")
    trainer, rng = load_checkpoint(folder, model, optimizer, plan.device)
    restore_rng(rng, plan.device)
    state = TrainerState(**{"train_cpu_time": None, **trainer["state"]})   # older checkpoints: not counted
    state.sessions.append(session_info(plan.device, state.step))
    return state


def _save(plan: RunPlan, run_dir: Path, model, optimizer, state: TrainerState, wall: float) -> None:
    trainer = {"identity": plan.identity(), "state": {**asdict(state), "wall_time": wall},
               "budget": plan.budget.model_dump(mode="json"), "task_path": str(plan.task.path.resolve())}
    save_checkpoint(run_dir, state.step, model, optimizer, trainer, plan.device)


def _cpu_time(state: TrainerState) -> Optional[float]:
    """The training steps' CPU seconds when every session ran on one device with one thread count
    (else a CPU-time throughput would mix machines: None)."""
    where = {(s.get("device"), s.get("threads"), s.get("hardware")) for s in state.sessions}
    return state.train_cpu_time if len(where) <= 1 else None


def _finish(plan: RunPlan, model, state: TrainerState, run_dir: Optional[Path], wall: float,
            compile: CompileChoice) -> RunResult:
    if plan.n_phases > 1:
        rows = tuple(continual_rows(plan.task, state.r_rows, state.baseline, plan.eval_lengths[0]))
    else:
        rows = evaluate(model, plan.task, plan.budget, lengths=plan.eval_lengths, device=plan.device).rows
    record = build_record(status="completed", plan=plan, model=model, rows=rows, steps=state.step,
                          train_tokens=state.train_tokens, train_time=state.train_time, wall_time=wall,
                          sessions=state.sessions, compile=compile, train_cpu_time=_cpu_time(state))
    if run_dir is not None:
        write_run(run_dir, record, rows, state.history)
    return RunResult("completed", state.step, {r.name: r.value for r in rows},
                     {r.name: r.higher_is_better for r in rows}, rows, tuple(state.losses), tuple(state.history),
                     record, run_dir)


def _partial(status: str, state: TrainerState, run_dir: Optional[Path]) -> RunResult:
    last = state.history[-1] if state.history else {}
    metrics = {k: v for k, v in last.items() if k not in ("step", "lr")}
    return RunResult(status, state.step, metrics, {}, (), tuple(state.losses), tuple(state.history), None, run_dir)


def _direction(name: str, plan: RunPlan) -> bool:
    base = name.split("@")[0].split("[")[0]
    declared = {m.name: m.higher_is_better for m in plan.task.spec.metrics}
    return declared.get(base, base not in ("train_loss", "bits_per_byte"))


def _after_step(plan: RunPlan, model, state: TrainerState, reporter: Optional[Reporter], lr: float) -> bool:
    """Phase-end scores, intermediate report; returns True when the reporter asks to stop."""
    done, per_phase = state.step, plan.kb.steps
    if plan.n_phases > 1 and done % per_phase == 0:
        state.r_rows.append(phase_scores(model, plan.task, plan.budget, plan.budget.eval_seed,
                                         plan.eval_lengths[0], device=plan.device))
    if done % plan.budget.eval_interval or done == plan.total_steps:
        return False
    metrics = _report(plan, model, state, min((done - 1) // per_phase, plan.n_phases - 1))
    state.history.append({"step": done, "lr": lr, **metrics})
    return bool(reporter(done, metrics)) if reporter is not None else False


def _loop(plan: RunPlan, model, optimizer, state: TrainerState, base_lrs: List[float], reporter, run_dir,
          stop_after: Optional[int], progress: bool, t0: float, compile: CompileChoice) -> RunResult:
    kb, budget, total = plan.kb, plan.budget, plan.total_steps
    with progress_bar(total, state.step, plan.task.ref, progress) as advance:
        while state.step < total:
            if stop_after is not None and state.step >= stop_after:
                return _partial("interrupted", state, run_dir)
            step = state.step
            phase, local = divmod(step, kb.steps)
            lr_factor = budget.lr_factor(local, kb.steps)
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * lr_factor
            length = plan.train_lengths[step % len(plan.train_lengths)]
            batch = plan.task.batch(kb.batch_size, length, derive_seed("train", plan.seed, step), "train", phase)
            start, cpu_start = time.perf_counter(), time.process_time()
            with compiled_steps(compile.on):
                loss = train_step(model, optimizer, batch, plan.device, budget.grad_clip, step)
            if plan.device.type == "cuda":
                torch.cuda.synchronize(plan.device)
            state.train_time += time.perf_counter() - start
            if state.train_cpu_time is not None:
                state.train_cpu_time += time.process_time() - cpu_start
            state.train_tokens += batch.inputs.numel()
            state.losses.append(loss)
            state.step += 1
            advance(f"loss {loss:.3f}")
            stop = _after_step(plan, model, state, reporter, base_lrs[0] * lr_factor) and state.step < total
            interval = budget.checkpoint_interval
            if run_dir is not None and (stop or state.step == total or (interval and state.step % interval == 0)):
                _save(plan, run_dir, model, optimizer, state, state.wall_time + time.perf_counter() - t0)
            if stop:
                return _partial("stopped", state, run_dir)
    return _finish(plan, model, state, run_dir, state.wall_time + time.perf_counter() - t0, compile)


def train(model_config, task, budget, seed: int = 0, reporter: Optional[Reporter] = None,
          run_dir: Optional[Path] = None, resume: bool = False, *, device: Optional[str] = None,
          threads: Optional[int] = None, stop_after: Optional[int] = None, progress: bool = False,
          tasks_dir: Optional[Path] = None, log: Optional[Callable[[str], Any]] = None) -> RunResult:
    """Trains ``model_config`` (preset name, YAML path, mapping or ModelConfig) on ``task`` (``name[@v]``,
    spec path or Task) under ``budget`` (name, YAML path or Budget) and evaluates it.

    ``reporter(step, metrics) -> bool`` is called every ``budget.eval_interval`` steps; True stops
    the run (status ``stopped``, a checkpoint is kept). ``run_dir``: where checkpoints and, for a
    completed run, the record go (None: nothing is written). ``resume``: continue from the last
    checkpoint in ``run_dir`` (a fresh start when there is none). ``device``: ``auto`` (default),
    ``cpu``, ``cuda``; ``threads`` overrides ``budget.threads``. ``stop_after``: end after this many
    steps as if killed (status ``interrupted``; no extra checkpoint, no record). Every input is
    validated before anything is written; raises NonFiniteLossError when the loss is NaN or infinite.
    ``log(str)``: told once whether the training steps compile the layers' steps, and why.
    """
    tune_process()                            # first: before anything makes the thread pool
    plan = plan_run(model_config, task, budget, seed, device, threads, tasks_dir)
    compile_setting()                         # an unreadable NLSEARCH_COMPILE fails here, before any write
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        check_run_dir(run_dir, resume)
    t0 = time.perf_counter()
    with run_lock(run_dir, resume), _threads(plan.threads), torch.random.fork_rng(devices=_rng_devices(plan.device)), \
            compiled_steps(False):            # evaluation eager; training steps as chosen (in _loop)
        torch.manual_seed(derive_seed("init", plan.seed))
        model = plan.cfg.build().to(plan.device)
        optimizer = build_optimizer(model, plan)
        base_lrs = [group["lr"] for group in optimizer.param_groups]
        state = _start(plan, model, optimizer, run_dir, resume)
        compile = choose_compile(plan, plan.total_steps - state.step)
        state.sessions[-1].update(compiled_steps=compile.setting, compile_reason=compile.reason)
        if log is not None:
            log(f"compiled layer steps {compile.setting}: {compile.reason}")
        model.train()
        try:
            result = _loop(plan, model, optimizer, state, base_lrs, reporter, run_dir, stop_after, progress, t0,
                           compile)
        except NonFiniteLossError as err:     # an outcome: kept, so the run is not trained to it again
            if run_dir is not None:
                write_failure(run_dir, plan, err.step, f"failed: {one_line(err)}")
            raise
    if result.status == "completed":
        return result
    directions = {name: _direction(name, plan) for name in result.metrics}
    return RunResult(result.status, result.steps, result.metrics, directions, (), result.losses, result.history,
                     None, run_dir)
