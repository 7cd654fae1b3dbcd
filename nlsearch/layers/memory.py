"""A memory mixer: projections of ``x`` into ``q, k, v, η, α, θ``, then one memory rule from ``ops``.

Normalisation the layer applies (the ops apply none): q and k are L2-normalised per head when
``qk_norm`` is on; η = ``eta_scale`` · sigmoid(·), retention α = sigmoid(·) handed to the rule as
log α = logsigmoid(·) (exact down to α = 0), θ = sigmoid(·); gates are computed in float32; the
memory read is RMS-normalised per head before the output projection. Gate biases start at η = 0.5,
θ ≈ 0.95 and α ≈ 0.95 for every head, or, with ``retention_init: [low, high]``, α spread over the heads
from ``low`` to ``high`` (a decay rule only; no preset uses it: for gated-deltanet on recall_small at
cpu@2, [0.9, 0.999] scored 0.044 against 0.065 with 0.95 everywhere).
"""
from __future__ import annotations

import math
from typing import List, Literal, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from pydantic import PositiveInt, field_validator, model_validator
from torch import Tensor, nn

from nlsearch.layers.head_dim import head_dim
from nlsearch.config import Strict, added, unhashed
from nlsearch.layers.conv import ShortConv
from nlsearch.nesting import Level
from nlsearch.ops import PRESETS, MemoryRule, MemoryState, apply_memory, mlp_forward, preset
from nlsearch.ops.blocks import aligned_block
from nlsearch.ops.linear import DEFAULT_BLOCK
from nlsearch.ops.precision import autocast_off, up
from nlsearch.registry import MIXERS


@MIXERS.register("memory")
class MemoryLayerConfig(Strict):
    kind: Literal["memory"] = "memory"
    rule: MemoryRule = preset("deltanet")    # or a preset's name, e.g. ``rule: titans-lmm``
    n_heads: PositiveInt = 4
    head_dim: Optional[PositiveInt] = None   # default d_model // n_heads
    conv_size: int = 4                       # 0 or 1: no short convolution
    qk_norm: bool = True
    eta_scale: Optional[float] = None        # default 1 for linear memories, 0.1 for MLP memories
    retention_init: Optional[Tuple[float, float]] = added(None, "initial retention per head (decay rules)")
    impl: Literal["fast", "naive"] = unhashed("fast", "chunkwise or per-token form; same results")

    @field_validator("retention_init")
    @classmethod
    def _retention_range(cls, value):
        if value is not None and not 0.0 < value[0] <= value[1] < 1.0:
            raise ValueError(f"retention_init must be (low, high) with 0 < low <= high < 1, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _retention_needs_decay(self) -> "MemoryLayerConfig":
        if self.retention_init is not None and not self.rule.decay:
            raise ValueError("retention_init needs a rule with decay: true (there is no retention to initialise)")
        return self

    @field_validator("rule", mode="before")
    @classmethod
    def _rule_by_name(cls, value):
        if isinstance(value, str):
            if value not in PRESETS:
                raise ValueError(f"unknown memory preset {value!r}; known: {sorted(PRESETS)}")
            return PRESETS[value]
        return value

    def build(self, d_model: int) -> "MemoryLayer":
        return MemoryLayer(d_model, self)

    def check(self, d_model: int, path: str = "mixer") -> None:
        """Fail before any tensor exists when the heads cannot tile the width."""
        head_dim(d_model, self.n_heads, self.head_dim, path)

    def levels(self) -> List[Level]:
        r = self.rule
        named = next((n for n, p in PRESETS.items() if p == r), "custom rule")
        what = f"{r.memory} fast weights ({named}), gd" if r.optimizer == "gd" else \
            f"{r.memory} fast weights ({named}), momentum"
        if r.decay:
            what += f", log-retention log α_t = logsigmoid(w_α·x_t) ({r.decay_order})"
        out = [Level(f"memory ({named})", what, "tokens", r.chunk, r.objective, r.memory)]
        if r.optimizer == "momentum":
            out.append(Level("memory momentum", "inner momentum S_t of the memory's gradients", "tokens",
                             r.chunk, "ema of gradients", "momentum", stage=1))
        return out


def retention_logits(low: float, high: float, heads: int) -> Tensor:
    """Gate biases whose σ gives each head its initial retention α_h, spread from ``low`` to ``high``
    evenly in log(1 − α) (half-lives from a few tokens to hundreds, as Mamba and Gated DeltaNet
    initialise their decays): α = σ(bias) at a zero input."""
    forget = torch.logspace(math.log10(1 - low), math.log10(1 - high), heads, dtype=torch.float64)
    return torch.log((1 - forget) / forget).float()


class LayerState(NamedTuple):
    memory: MemoryState
    conv: Optional[Tensor]


def open_block(chunk: int, seq_len: Optional[int]) -> bool:
    """Whether a mini-batch of ``chunk`` tokens is open (its anchor carried) after ``seq_len`` tokens;
    ``seq_len=None``: whether one can be."""
    return chunk > 1 and (seq_len is None or seq_len % chunk != 0)


class MemoryLayer(nn.Module):
    def __init__(self, d_model: int, cfg: MemoryLayerConfig):
        super().__init__()
        h = cfg.n_heads
        dh = head_dim(d_model, h, cfg.head_dim)
        self.cfg, self.rule, self.h, self.dh = cfg, cfg.rule, h, dh
        self.qkv = nn.Linear(d_model, 3 * h * dh, bias=False)
        self.conv = ShortConv(3 * h * dh, cfg.conv_size) if cfg.conv_size > 1 else None
        gates = 1 + int(self.rule.decay) + int(self.rule.optimizer == "momentum")
        self.gates = nn.Linear(d_model, gates * h)
        self.out = nn.Linear(h * dh, d_model, bias=False)
        self.eta_scale = cfg.eta_scale if cfg.eta_scale is not None else (1.0 if self.rule.memory == "linear" else 0.1)
        self.init_weights = nn.ParameterList()
        if self.rule.memory == "mlp":
            dims = [dh] + [dh * self.rule.mlp_expansion] * (self.rule.mlp_depth - 1) + [dh]
            for d_in, d_out in zip(dims[:-1], dims[1:]):
                self.init_weights.append(nn.Parameter(torch.randn(h, d_out, d_in) * d_in ** -0.5))
        with torch.no_grad():
            bias = self.gates.bias.view(gates, h)
            bias[0].fill_(0.0)
            bias[1:].fill_(3.0)       # retention and momentum start near 0.95
            if self.rule.decay and cfg.retention_init is not None:
                bias[1].copy_(retention_logits(*cfg.retention_init, h))

    def _step_size(self, gate: Tensor, theta: Optional[Tensor]) -> Tensor:
        """η_t = eta_scale · σ(·), divided by the mini-batch size (the op SUMS a window's gradients,
        so this makes one window's step the mean gradient's), and by (1 − θ_t)⁻¹ with momentum
        (momentum as an average of steps, not a sum: a window without feedback then moves at most
        about as far as plain GD would)."""
        eta = self.eta_scale * gate / self.rule.chunk
        return eta if theta is None else eta * (1 - theta)

    def initial_state(self, batch: int, like: Tensor) -> LayerState:
        """Fresh fast weights, in float32 at least (the precision policy, :mod:`nlsearch.ops.precision`)."""
        dtype = up(like.new_empty(())).dtype
        if self.rule.memory == "linear":
            weights = (like.new_zeros(batch, self.h, self.dh, self.dh, dtype=dtype),)
        else:
            weights = tuple(w.to(dtype).expand(batch, *w.shape) for w in self.init_weights)
        momentum = tuple(torch.zeros_like(w) for w in weights) if self.rule.optimizer == "momentum" else None
        return LayerState(MemoryState(weights, momentum), None)

    def forward(self, x: Tensor, state: Optional[LayerState] = None) -> Tuple[Tensor, LayerState]:
        """x (B, T, d_model) -> (y (B, T, d_model), state)."""
        b, t, _ = x.shape
        if state is None:
            state = self.initial_state(b, x)
        qkv = self.qkv(x)
        conv_state = None
        if self.conv is not None:
            qkv, conv_state = self.conv(qkv, state.conv)
        q, k, v = qkv.view(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)     # 3 x (B, H, T, Dh)
        if self.cfg.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        pre = up(self.gates(x)).view(b, t, -1, self.h).permute(2, 0, 3, 1)     # (G, B, H, T), float32
        gates = torch.sigmoid(pre)
        log_alpha = F.logsigmoid(pre[1]) if self.rule.decay else None
        theta = gates[-1] if self.rule.optimizer == "momentum" else None
        eta = self._step_size(gates[0], theta)
        y, mem = apply_memory(self.rule, q, k, v, eta, log_alpha, theta, state.memory, impl=self.cfg.impl)
        return self._project_out(y), LayerState(mem, conv_state)

    def _project_out(self, y: Tensor) -> Tensor:
        """Memory reads y (B, H, T, Dh) -> RMS-normalised per head, merged, projected: (B, T, d_model)."""
        b, _, t, _ = y.shape
        return self.out(F.rms_norm(up(y), (self.dh,)).transpose(1, 2).reshape(b, t, self.h * self.dh))

    def read(self, x: Tensor, weights: Tuple[Tensor, ...]) -> Tensor:
        """``M(q)`` at fixed fast ``weights`` (no write): x (B, T, d_model) -> (B, T, d_model).

        Queries use the layer's W_Q (and q-normalisation) without the short convolution, whose state
        follows the stream the memory is written from."""
        b, t, _ = x.shape
        hd = self.h * self.dh
        q = F.linear(x, self.qkv.weight[:hd]).view(b, t, self.h, self.dh).transpose(1, 2)   # (B, H, T, Dh)
        if self.cfg.qk_norm:
            q = F.normalize(q, dim=-1)
        with autocast_off(q):                                   # a memory read: float32, as the ops
            q = up(q)
            if self.rule.memory == "linear":
                y = q @ weights[0].mT                                           # M q, M (B, H, Dv, Dk)
            else:
                y = mlp_forward(weights, q, self.rule.activation, residual=True)
        return self._project_out(y)

    def flops_per_token(self, seq_len: int) -> float:
        """Memory work per token beyond the projections: a write and a read of the fast weights
        (about 3 matmul passes over them), plus the fast form's intra-block products (blocks of
        ``DEFAULT_BLOCK`` tokens for a linear memory, one mini-batch for an MLP memory)."""
        fast = sum(w[0].numel() for w in self.initial_state(1, self.qkv.weight).memory.weights)
        block = aligned_block(self.rule.chunk, DEFAULT_BLOCK) if self.rule.memory == "linear" else self.rule.chunk
        return 2.0 * 3 * fast + 2.0 * 3 * min(seq_len, block) * 2 * self.h * self.dh

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Numbers carried per sequence after ``seq_len`` tokens (None: the most it ever holds): memory
        weights, momentum, the open mini-batch's anchor and its decay (while ``seq_len % chunk``
        leaves one open) and the convolution's last inputs."""
        per_copy = sum(w[0].numel() for w in self.initial_state(1, self.qkv.weight).memory.weights)
        anchor = int(open_block(self.rule.chunk, seq_len))
        copies = 1 + int(self.rule.optimizer == "momentum") + anchor
        return per_copy * copies + anchor * self.h + (self.conv.state_size() if self.conv else 0)
