"""Continuum Memory System (CMS), a channel mixer: a chain of MLP blocks on k update clocks.

``y = MLP^(f_k)(… MLP^(f_1)(x))`` with residual blocks ``h_ℓ = h_{ℓ-1} + f_ℓ(norm_ℓ(h_{ℓ-1}))``, where
``norm_1`` is the identity (the backbone already normalised ``x``) and ``norm_ℓ`` an RMSNorm for ℓ ≥ 2.
As a channel mixer the module returns ``h_k − x``, accumulated as the sum of the blocks' outputs
(never as a subtraction), because the backbone adds ``x`` back: with k = 1 the output is ``f_1(x)``
bit for bit. Block ℓ is updated every ``periods[ℓ]`` = C_ℓ ticks of one of two named clocks
(README.md, "Models"), always with the SUM of the updates over its window (no step's gradient is dropped):

``clock: tokens`` (in context). ``f_ℓ`` is an in-context memory (by default an MLP memory; the
per-block ``memory``/``objective`` lists pick linear and/or ``dot`` instead, so a search can vary the
rule of every level): a :class:`MemoryLayer` whose
rule is the MLP, l2, gd mini-batch rule with ``chunk = C_ℓ``: its fast weights (per head, residual,
depth 2, starting at meta-learned parameters) take one step per window of C_ℓ tokens, the sum of
the window's gradients, all taken at the window's start weights. Local objective (TTT style):
``ℓ(M; x_t) = ½‖M(k_t) − v_t‖²`` with ``k_t = normalize(W_k x_t)``, ``v_t = W_v x_t``; the block
reads ``f_ℓ(x)_t = W_o rms(M_t(q_t))`` at ``q_t = normalize(W_q x_t)``, where ``M_t`` holds the open
window's updates of tokens ≤ t only (``read: after_write``; ``before_write``: tokens < t), so no
token sees a later token of its window. ``η_t = eta_scale · σ(w_η · x_t) / C_ℓ``: the window's step
is the SUM of its η_t-weighted gradients, so eta_scale bounds the mean gradient's step
(:meth:`MemoryLayer._step_size`). With ``carry_state`` the fast weights persist across calls
(segments) and are returned as the state; without it every call starts from the meta-learned weights
and returns ``None``.

``clock: steps`` (outer training). ``f_ℓ`` is a SwiGLU whose parameters get an optimizer step every
C_ℓ training steps with the sum of their gradients over the window: :meth:`CMS.param_groups_by_period`
lists them and :class:`nlsearch.optim.periodic.PeriodicOptimizer` keeps the clock. k = 1 with
``periods: [1]`` is exactly the SwiGLU FFN (same weights, same outputs; no state).
"""
from __future__ import annotations

from typing import Dict, List, Literal, Optional, Tuple

from pydantic import PositiveFloat, PositiveInt, field_validator, model_validator
from torch import Tensor, nn

from nlsearch.config import Strict, unhashed
from nlsearch.layers.memory import LayerState, MemoryLayer, MemoryLayerConfig
from nlsearch.layers.mlp import SwiGLU
from nlsearch.layers.norm import RMSNorm
from nlsearch.ops import MemoryRule
from nlsearch.nesting import Level
from nlsearch.registry import CHANNEL_MIXERS

CMSState = Tuple[LayerState, ...]      # one memory layer state per block (clock: tokens)


@CHANNEL_MIXERS.register("cms")
class CMSConfig(Strict):
    kind: Literal["cms"] = "cms"
    periods: Tuple[int, ...] = (1, 16, 64)     # C_ℓ per block, fastest block first
    clock: Literal["tokens", "steps"] = "steps"
    ratio: PositiveFloat = 4.0                 # steps: SwiGLU hidden width = ratio * d_model
    n_heads: PositiveInt = 4                   # tokens: heads of each block's memory
    expansion: PositiveInt = 2                 # tokens: memory hidden width = expansion * head dim
    activation: Literal["silu", "gelu"] = "silu"
    eta_scale: PositiveFloat = 0.1             # tokens: η_t = eta_scale * sigmoid(·)
    read: Literal["after_write", "before_write"] = "after_write"
    carry_state: bool = True                   # tokens: fast weights persist across calls
    memory: Tuple[Literal["mlp", "linear"], ...] = ()   # tokens: per block; () = "mlp" for every block
    objective: Tuple[Literal["l2", "dot"], ...] = ()    # tokens: per block; () = "l2" for every block
    impl: Literal["fast", "naive"] = unhashed("fast", "chunkwise or per-token form; same results")

    @field_validator("periods", mode="before")
    @classmethod
    def _positive_periods(cls, value):
        if isinstance(value, (list, tuple)) and (
                not value or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in value)):
            raise ValueError(f"periods must be a non-empty list of positive integers (block ℓ updates "
                             f"every periods[ℓ] tokens or steps), got {list(value)}")
        return value

    @model_validator(mode="after")
    def _per_block(self) -> "CMSConfig":
        for name in ("memory", "objective"):
            given = getattr(self, name)
            if given and len(given) != len(self.periods):
                raise ValueError(f"{name} has {len(given)} entries but periods has {len(self.periods)}: give "
                                 f"one per block, or none for the default")
            if given and self.clock == "steps":
                raise ValueError(f"{name} applies to clock: tokens only (clock: steps blocks are SwiGLU MLPs)")
        return self

    def block_rule(self, index: int) -> Tuple[str, str]:
        """(memory, objective) of block ``index`` (clock: tokens)."""
        return ((self.memory[index] if self.memory else "mlp"),
                (self.objective[index] if self.objective else "l2"))

    def build(self, d_model: int) -> "CMS":
        return CMS(d_model, self)

    def check(self, d_model: int, path: str = "mlp") -> None:
        """Fail before any tensor exists when the memory heads cannot tile the width."""
        if self.clock == "tokens" and d_model % self.n_heads:
            raise ValueError(f"{path}.n_heads={self.n_heads} does not divide d_model={d_model}")

    def memory_config(self, period: int, memory: str = "mlp", objective: str = "l2") -> MemoryLayerConfig:
        """The in-context block of period C (clock: tokens): by default an MLP l2 memory, one step per
        C tokens; ``memory``/``objective`` pick another point of the rule grid for this block."""
        rule = MemoryRule(memory=memory, objective=objective, optimizer="gd", chunk=period, read=self.read,
                          mlp_expansion=self.expansion, activation=self.activation)
        return MemoryLayerConfig(rule=rule, n_heads=self.n_heads, conv_size=0, qk_norm=True,
                                 eta_scale=self.eta_scale, impl=self.impl)

    def levels(self) -> List[Level]:
        if self.clock == "tokens":
            rules = [self.block_rule(i) for i in range(len(self.periods))]
            return [Level(f"CMS-{i + 1}", f"{m.upper() if m == 'mlp' else m} fast weights, one step per {c} "
                          f"tokens (sum of the window's {o} gradients)", "tokens", c, o, m)
                    for i, (c, (m, o)) in enumerate(zip(self.periods, rules))]
        return [Level(f"CMS-{i + 1}", f"MLP block parameters, one optimizer step per {c} steps (sum of "
                      "the window's gradients)", "steps", c, "LM loss (next token)", "mlp")
                for i, c in enumerate(self.periods)]


class CMS(nn.Module):
    def __init__(self, d_model: int, cfg: CMSConfig):
        super().__init__()
        cfg.check(d_model, path="cms")
        self.cfg = cfg
        if cfg.clock == "tokens":
            blocks = [MemoryLayer(d_model, cfg.memory_config(c, *cfg.block_rule(i)))
                      for i, c in enumerate(cfg.periods)]
        else:
            blocks = [SwiGLU(d_model, max(1, int(cfg.ratio * d_model))) for _ in cfg.periods]
        self.blocks = nn.ModuleList(blocks)
        self.norms = nn.ModuleList(nn.Identity() if i == 0 else RMSNorm(d_model)
                                   for i in range(len(cfg.periods)))

    @property
    def carries_state(self) -> bool:
        return self.cfg.clock == "tokens" and self.cfg.carry_state

    def forward(self, x: Tensor, state: Optional[CMSState] = None) -> Tuple[Tensor, Optional[CMSState]]:
        """x (B, T, d) -> (Σ_ℓ f_ℓ(norm_ℓ(h_{ℓ-1})) (B, T, d), state or None)."""
        if state is not None and not self.carries_state:
            raise ValueError("this CMS carries no state between calls (clock: steps or carry_state: "
                             "false); pass state=None")
        states = state if state is not None else (None,) * len(self.blocks)
        if len(states) != len(self.blocks):
            raise ValueError(f"state has {len(states)} entries; this CMS has {len(self.blocks)} blocks")
        h, out, new = x, None, []
        for block, norm, s in zip(self.blocks, self.norms, states):
            y, s = block(norm(h), s)
            out = y if out is None else out + y
            h = h + y
            new.append(s)
        return out, (tuple(new) if self.carries_state else None)

    def param_groups_by_period(self) -> Dict[int, List[nn.Parameter]]:
        """{period: parameters} for the outer optimizer's clock (:mod:`nlsearch.optim.periodic`).

        ``clock: steps``: block ℓ (and its norm) steps every C_ℓ outer steps. ``clock: tokens``: the
        periods count tokens, so every parameter (meta-learned initial weights included) is
        trained every outer step."""
        if self.cfg.clock == "tokens":
            return {1: list(self.parameters())}
        groups: Dict[int, List[nn.Parameter]] = {}
        for c, block, norm in zip(self.cfg.periods, self.blocks, self.norms):
            groups.setdefault(c, []).extend(list(block.parameters()) + list(norm.parameters()))
        return groups

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Numbers carried per sequence: each block's fast weights and, for a window left open, its
        anchor (what :meth:`MemoryLayer.state_size` counts); 0 when nothing is carried."""
        if not self.carries_state:
            return 0
        return sum(block.state_size(seq_len) for block in self.blocks)
