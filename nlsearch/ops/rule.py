"""A memory rule: one point of the Nested Learning grid, and the named presets that are known models."""
from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator
from torch import Tensor

from nlsearch.ops.linear import linear_memory, linear_memory_naive
from nlsearch.ops.mlp import mlp_memory, mlp_memory_naive
from nlsearch.ops.state import MemoryState


class MemoryRule(BaseModel):
    """What a memory level writes and how (docs/architecture.md, "The memory-rule grid").

    memory:      ``linear`` (a matrix per head) or ``mlp`` (``mlp_depth`` layers, residual).
    objective:   inner loss ``dot`` (−⟨M(k), v⟩) or ``l2`` (½‖M(k) − v‖²).
    optimizer:   inner update ``gd`` or ``momentum`` (needs ``theta``).
    decay:       data-dependent retention α_t in [0, 1], passed as ``log_alpha`` in [-inf, 0]
    decay_order: ``with_step`` (gradient at M_{t-1}, decay as weight decay) or ``before_step``
                 (Gated DeltaNet: gradient at α_t M_{t-1}); linear memories only.
    chunk:       tokens per inner update (mini-batch); gradients at the mini-batch's start weights.
    read:        ``after_write`` (y_t = M_t(q_t)) or ``before_write`` (y_t = M_{t-1}(q_t)).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory: Literal["linear", "mlp"] = "linear"
    objective: Literal["dot", "l2"] = "l2"
    optimizer: Literal["gd", "momentum"] = "gd"
    decay: bool = False
    decay_order: Literal["with_step", "before_step"] = "with_step"
    chunk: PositiveInt = 1
    read: Literal["after_write", "before_write"] = "after_write"
    mlp_depth: int = 2
    mlp_expansion: PositiveInt = 2
    activation: Literal["silu", "gelu"] = "silu"

    @model_validator(mode="after")
    def _consistent(self) -> "MemoryRule":
        if self.memory == "mlp" and self.decay_order != "with_step":
            raise ValueError("decay_order='before_step' is defined for linear memories only")
        if self.memory == "mlp" and self.mlp_depth < 2:
            raise ValueError(f"mlp_depth={self.mlp_depth}: an mlp memory has depth >= 2")
        return self


PRESETS: Dict[str, MemoryRule] = {
    "linear-attention": MemoryRule(objective="dot"),
    "deltanet": MemoryRule(objective="l2"),
    "gated-deltanet": MemoryRule(objective="l2", decay=True, decay_order="before_step"),
    "ttt-linear": MemoryRule(objective="l2", chunk=16),
    "ttt-mlp": MemoryRule(memory="mlp", objective="l2", chunk=16, activation="gelu"),
    "titans-lmm": MemoryRule(memory="mlp", objective="l2", optimizer="momentum", decay=True, chunk=16),
}


def preset(name: str) -> MemoryRule:
    if name not in PRESETS:
        raise KeyError(f"unknown memory preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


def apply_memory(
    rule: MemoryRule, q: Tensor, k: Tensor, v: Tensor, eta: Tensor, log_alpha: Optional[Tensor] = None,
    theta: Optional[Tensor] = None, state: Optional[MemoryState] = None, *, impl: str = "fast",
) -> Tuple[Tensor, MemoryState]:
    """Run ``rule`` on ``(B, H, T, D)`` inputs; ``impl`` is ``fast`` or ``naive`` (same results)."""
    if not isinstance(rule, MemoryRule):
        raise TypeError(f"rule must be a MemoryRule, got {type(rule).__name__}")
    if impl not in ("fast", "naive"):
        raise ValueError(f"impl={impl!r} is not one of ['fast', 'naive']")
    if rule.decay != (log_alpha is not None):
        raise ValueError(f"rule.decay={rule.decay} but log_alpha was {'not ' if log_alpha is None else ''}given")
    if (rule.optimizer == "momentum") != (theta is not None):
        raise ValueError(f"rule.optimizer={rule.optimizer!r} but theta was "
                         f"{'not ' if theta is None else ''}given")
    kw = dict(objective=rule.objective, chunk=rule.chunk, read=rule.read)
    if rule.memory == "linear":
        fn = linear_memory if impl == "fast" else linear_memory_naive
        return fn(q, k, v, eta, log_alpha, theta, state, decay_order=rule.decay_order, **kw)
    fn = mlp_memory if impl == "fast" else mlp_memory_naive
    return fn(q, k, v, eta, log_alpha, theta, state, activation=rule.activation, residual=True, **kw)
