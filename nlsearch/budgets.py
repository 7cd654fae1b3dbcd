"""Training budgets: named, frozen, versioned profiles that fix how long and how large a run is.

A budget fixes, per task kind (``lm``, ``recall``, ``longctx``, ``continual``), the number of steps
(per phase for a continual task), the batch size, the train lengths, the eval set size and the eval
lengths; and for every kind the learning-rate schedule (linear warmup, then cosine decay to
``min_lr_ratio`` times the optimizer's lr), gradient clipping, the eval and checkpoint intervals, how
evaluation splits long sequences, and the CPU thread count. ``train_lengths`` / ``eval_lengths`` of
``None`` take the task spec's own lengths (the protocol a leaderboard run uses). A change to a profile
is a new ``version``; every version ever shipped stays in ``FROZEN`` and loads as ``name@version``
(records name ``cpu@1``, never a moving target), and a bare name means the highest version.

- ``smoke``: seconds, for tests and for trying a config end to end;
- ``cpu``: minutes per run at one thread, so that a search can run one trial per core;
- ``gpu``: a real run on one accelerator, at the task specs' lengths (long context up to 16k).

Calibration of ``cpu@2`` (one core of a 2-core machine, one thread, the d_model 128 / 2-layer
presets, seed 0; times are whole runs with their evaluations; table in ``results/suite-cpu/``).
``cpu@1`` replaced every recall task's lengths by 256 / 512, so ``recall_small`` (a T=128 task)
trained at twice its length and was never scored at T=128, with 4,000 training sequences in all;
``cpu@2`` uses the specs' own lengths for recall, lm and continual.

- recall: 400 steps x 32 sequences (12,800 sequences, 1.6M tokens): 2.3-3.1 minutes. On
  ``recall_small`` the memory presets with their 4-tap short convolution cross from the 1/8 plateau
  between steps 200 and 400 (deltanet 0.85, linear-attention 0.88); the Transformer stays on it
  (0.12): softmax attention without a token shift must first form an induction head
  (previous-token head + matching head), which in our runs had not happened after 1,000 steps x 32
  (8 minutes) at T=128 nor 1,500 x 32 at T=64, at lr 1e-3 or 3e-3 (1e-2 stays at the uniform
  prediction). A hand-written GPT (learned positions, LayerNorm, GELU) plateaus the same way, and
  the delta rule learns the same batches, so this is the task's known emergence plateau, not the
  data, mask or loss. The ``cpu`` budget therefore ranks mixers by how fast they learn recall and
  does not reach the Transformer's asymptote; ``gpu`` (4,000 x 64) is the budget for that. On
  ``recall_small_overwrite`` both memories are still mid-transition at 400 steps (deltanet 0.18,
  linear-attention 0.24); at 1,200 steps the delta rule wins (0.93 vs 0.79). Fewer than 400 steps
  leave even the easy variant mid-transition (0.2 at step 200), so trials could not tell "slow" from
  "unable"; more would put a trial far past the 1-2 minutes a search trial should take.
- lm: the spec's lengths (train 512, eval 512 and 1024), 300 steps x 8 (1.2M bytes), 1.8-2.4 minutes:
  Transformer 3.39, deltanet 2.91, linear-attention 3.22 bits per byte, against 4.03 for the bigram
  fitted on the same bytes.
- continual: the spec's lengths, 100 steps x 16 per phase (four phases of ``continual_recall``: 1.1-1.6
  minutes), enough to learn each phase's table to 1.0 and to show forgetting (Transformer BWT -0.83).
- longctx: as ``cpu@1``: 200 steps x 8 at T=512. Every preset stayed at chance on
  ``longctx_needle`` (answer-digit accuracy at 1k: Transformer 0.12, deltanet 0.09; no exact
  match), so ``cpu@3`` recalibrates it.

``cpu@3`` is ``cpu@2`` with long-context training at 1,000 steps x 8 at T=512 (4.1M bytes; deltanet
7.5 minutes at one thread, evaluated at 1k only in the probe). On ``longctx_needle`` the answer-digit
accuracy at 1k after 200 / 400 / 600 / 800 / 1,000 steps: deltanet 0.09, 0.26, 0.31, 0.51, 0.51 (exact
match 0.03); Transformer 0.08, 0.18, 0.16, 0.20, 0.25 (exact match 0). Chance is 0.1: the task now
separates models, though no model retrieves whole needles at this budget. Recall, lm and continual
are unchanged from ``cpu@2``.

Claim tasks at ``cpu@3`` (the reproduction, ``results/reproduce/report.md``): on ``zoology_mqar_t512``
(Zoology's 64-pair cell at T=512 with an 8,192-token vocabulary, trained as recall: 400 steps x 32)
neither DeltaNet (accuracy 0.0005 ± 0.0003, seeds 0-2) nor linear attention (0.0013 ± 0.0008) reaches
1/64 = 0.016, what guessing one of the 64 values in the context would score: neither has begun to
recall at this budget, so which one is ahead says nothing about the delta rule.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple, Union

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from nlsearch.config import Strict, added, canonical_json, is_file_ref, load_config

Kind = Literal["lm", "recall", "longctx", "continual"]
KINDS: Tuple[str, ...] = ("lm", "recall", "longctx", "continual")
GENERATOR_KIND: Dict[str, str] = {
    "lm_bytes": "lm",
    "mqar": "recall",
    "needle": "longctx",
    "babi": "longctx",
    "continual_recall": "continual",
    "continual_text": "continual",
    "drift_recall": "continual",
}


class KindBudget(Strict):
    steps: PositiveInt                                     # optimizer steps (per phase when continual)
    batch_size: PositiveInt                                # sequences per step
    train_lengths: Optional[Tuple[PositiveInt, ...]] = Field(None, min_length=1)  # step s: [s % n]
    eval_lengths: Optional[Tuple[PositiveInt, ...]] = Field(None, min_length=1)
    eval_size: PositiveInt = 64                            # eval sequences per length (and per phase)


class Budget(Strict):
    name: str
    version: PositiveInt
    description: str = ""
    lm: KindBudget
    recall: KindBudget
    longctx: KindBudget
    continual: KindBudget
    warmup: float = Field(0.05, ge=0.0, lt=1.0)           # fraction of (phase) steps with a linear ramp
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)      # the cosine ends at lr * min_lr_ratio
    grad_clip: PositiveFloat = 1.0                         # max global gradient norm
    eval_interval: PositiveInt = 100                       # steps between intermediate evals (reporter)
    checkpoint_interval: NonNegativeInt = 0                # steps between checkpoints; 0 = end only
    eval_batch: PositiveInt = 16                           # eval sequences per forward pass
    eval_piece: Optional[PositiveInt] = None               # tokens per forward; state carried between
    eval_seed: int = 0                                     # the eval set is the same for every run
    threads: Optional[PositiveInt] = None                  # torch.set_num_threads on CPU; None: as is
    gpus_per_run: Optional[float] = added(None, "GPUs one leaderboard run asks for (a fraction shares one); "
                                          "None: 0 for a profile that fixes its CPU threads, else 1")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def sha256(self) -> str:
        return hashlib.sha256(canonical_json(self).encode()).hexdigest()

    def gpu_share(self) -> float:
        """GPUs per leaderboard run. 0 is a CPU track: its runs train on the CPU in float32 even on a
        machine with GPUs, so their numbers stay those of the track (a run's precision is part of its
        identity)."""
        if self.gpus_per_run is not None:
            return self.gpus_per_run
        return 0.0 if self.threads is not None else 1.0

    def for_kind(self, kind: str) -> KindBudget:
        if kind not in KINDS:
            raise ValueError(f"unknown task kind {kind!r}; known: {list(KINDS)}")
        return getattr(self, kind)

    def trains_like(self, other: "Budget", kind: str) -> bool:
        """True when a run of a ``kind`` task is the same under both budgets: the same per-kind
        budget and the same shared settings (schedule, clipping, eval, threads); names, versions,
        descriptions and the other kinds do not count (``cpu@3`` only changed long context, so a
        ``cpu@2`` recall run is a ``cpu@3`` recall run)."""
        own = [k for k in KINDS if k != kind] + ["name", "version", "description"]
        return (self.model_dump(mode="json", exclude=set(own)) ==
                other.model_dump(mode="json", exclude=set(own)))

    def lr_factor(self, step: int, steps: int) -> float:
        """Returns the lr multiplier for 0-based ``step`` of ``steps``: a linear warmup over
        ``ceil(warmup * steps)`` steps, then a half cosine from 1 to ``min_lr_ratio``."""
        warm = math.ceil(self.warmup * steps)
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(steps - warm - 1, 1)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


_SMOKE_1 = Budget(
    name="smoke", version=1, description="seconds: tests and end-to-end checks",
    lm=KindBudget(steps=20, batch_size=4, train_lengths=(256,), eval_lengths=(256,), eval_size=8),
    recall=KindBudget(steps=20, batch_size=4, train_lengths=(256,), eval_lengths=(256,), eval_size=8),
    longctx=KindBudget(steps=10, batch_size=4, train_lengths=(512,), eval_lengths=(512, 1024), eval_size=8),
    continual=KindBudget(steps=10, batch_size=8, train_lengths=(128,), eval_lengths=(128,), eval_size=16),
    warmup=0.1, eval_interval=10, checkpoint_interval=10, eval_batch=8, eval_piece=512, threads=1)

_CPU_1 = Budget(
    name="cpu", version=1, description="minutes per run on a 2-core CPU",
    lm=KindBudget(steps=300, batch_size=8, train_lengths=(512,), eval_lengths=(512, 1024), eval_size=32),
    recall=KindBudget(steps=250, batch_size=16, train_lengths=(256,), eval_lengths=(256, 512), eval_size=128),
    longctx=KindBudget(steps=200, batch_size=8, train_lengths=(512,), eval_lengths=(1024, 2048, 4096),
                       eval_size=32),
    continual=KindBudget(steps=100, batch_size=16, eval_size=64),
    warmup=0.05, eval_interval=100, checkpoint_interval=100, eval_batch=16, eval_piece=1024, threads=2)

_CPU_2 = Budget(
    name="cpu", version=2, description="1-3 minutes per run at ONE thread (d_model 128, 2 layers)",
    lm=KindBudget(steps=300, batch_size=8, eval_size=32),
    recall=KindBudget(steps=400, batch_size=32, eval_size=256),
    longctx=KindBudget(steps=200, batch_size=8, train_lengths=(512,), eval_lengths=(1024, 2048, 4096),
                       eval_size=32),
    continual=KindBudget(steps=100, batch_size=16, eval_size=64),
    warmup=0.05, eval_interval=100, checkpoint_interval=100, eval_batch=16, eval_piece=1024, threads=1)

_CPU_3 = _CPU_2.model_copy(update=dict(
    version=3, description="1-8 minutes per run at ONE thread (d_model 128, 2 layers); long context 1,000 steps",
    longctx=_CPU_2.longctx.model_copy(update=dict(steps=1000))))

_GPU_1 = Budget(
    name="gpu", version=1, description="a real run on one GPU at the task specs' lengths (up to 16k)",
    lm=KindBudget(steps=5000, batch_size=32, eval_size=256),
    recall=KindBudget(steps=4000, batch_size=64, eval_size=1024),
    longctx=KindBudget(steps=3000, batch_size=16, eval_size=128),
    continual=KindBudget(steps=1000, batch_size=64, eval_size=512),
    warmup=0.02, eval_interval=500, checkpoint_interval=500, eval_batch=16, eval_piece=4096)

FROZEN: Dict[Tuple[str, int], Budget] = {
    (b.name, b.version): b for b in (_SMOKE_1, _CPU_1, _CPU_2, _CPU_3, _GPU_1)}
"""Every profile ever shipped, by (name, version): a record's ``cpu@1`` stays loadable after ``cpu@2``."""

BUDGETS: Dict[str, Budget] = {name: FROZEN[(name, max(v for n, v in FROZEN if n == name))]
                              for name in dict.fromkeys(n for n, _ in FROZEN)}
"""The current (highest) version of each profile, what a bare name (``cpu``) means."""


def list_budgets() -> Tuple[str, ...]:
    return tuple(BUDGETS)


def load_budget(spec: Union[str, Path, Budget]) -> Budget:
    """Returns a budget: a profile name (``smoke``, ``cpu``, ``gpu``: its current version), a frozen
    ``name@version`` (any version ever shipped), a strict YAML file, or a Budget (returned as is)."""
    if isinstance(spec, Budget):
        return spec
    text = str(spec)
    if is_file_ref(text):
        return load_config(Budget, Path(text))
    name, _, version = text.partition("@")
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {text!r}; known: {list(BUDGETS)} (or a budget YAML file)")
    if not version:
        return BUDGETS[name]
    versions = sorted(v for n, v in FROZEN if n == name)
    if not version.isdigit() or int(version) not in versions:
        raise ValueError(f"budget {name!r} has no version {version!r}; versions: {versions}")
    return FROZEN[(name, int(version))]


def task_kind(task) -> str:
    """Returns the kind (``lm``, ``recall``, ``longctx``, ``continual``) of a Task by its generator."""
    name = task.spec.generator.name
    if name not in GENERATOR_KIND:
        raise ValueError(f"task {task.ref}: generator {name!r} has no task kind; known: {sorted(GENERATOR_KIND)}")
    return GENERATOR_KIND[name]


def run_lengths(budget: Budget, task) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Returns (train lengths, eval lengths) of ``task`` under ``budget``; raises ValueError naming the
    task, budget and length when one is shorter than the task needs."""
    kb = budget.for_kind(task_kind(task))
    train = kb.train_lengths or tuple(task.spec.lengths.train)
    evals = kb.eval_lengths or tuple(task.spec.lengths.eval)
    for what, lengths in (("train length", train), ("eval length", evals)):
        for length in lengths:
            if length < task.min_length:
                raise ValueError(f"budget {budget.ref}: {what} {length} is shorter than task {task.ref} needs "
                                 f"(at least {task.min_length} tokens)")
    return train, evals
