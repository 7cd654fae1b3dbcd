"""A Mamba-2 (SSD, Dao & Gu 2024, "Transformers are SSMs") mixer, built on the linear memory's fast form.

Per head h (head width P, state width N, B and C shared by the heads of a group):

    h_t = exp(Δ_t a_h) h_{t−1} + Δ_t x_t B_tᵀ        y_t = h_t C_t + D_h x_t

which is a point of the memory-rule grid (docs/architecture.md): a linear memory with the ``dot``
objective, log-retention ``log α_t = Δ_t a_h`` (handed to the op directly, never as a log of an
``exp``), step size ``η_t = Δ_t``, key ``B_t``, query ``C_t`` and value ``x_t``. Around it, as in the
paper's block: one input projection to ``[z, x, B, C, Δ]``, a short causal convolution (SiLU) over
``[x, B, C]``, ``Δ = softplus(W_Δ u + b_Δ)``, a gate ``y ← RMSNorm(y ⊙ SiLU(z))`` and the output
projection. Initialisation as in Mamba-2: ``a_h = −exp(A_log_h)`` with ``A_log`` = log of a draw in
[1, 16], ``D = 1``, ``b_Δ`` the inverse softplus of Δ drawn log-uniformly in [dt_min, dt_max].
"""
from __future__ import annotations

import math
from typing import List, Literal, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn

from nlsearch.config import Strict, unhashed
from nlsearch.layers.conv import ShortConv
from nlsearch.layers.mamba import check_dt_and_conv
from nlsearch.layers.norm import RMSNorm
from nlsearch.ops import MemoryState, linear_memory, linear_memory_naive
from nlsearch.ops.linear import DEFAULT_BLOCK
from nlsearch.ops.precision import up
from nlsearch.optim.adamw import no_weight_decay
from nlsearch.nesting import Level
from nlsearch.registry import MIXERS


@MIXERS.register("mamba2")
class Mamba2LayerConfig(Strict):
    kind: Literal["mamba2"] = "mamba2"
    expand: PositiveInt = 2                  # inner width = expand * d_model
    head_dim: PositiveInt = 32               # P; heads = inner width / P
    d_state: PositiveInt = 32                # N
    n_groups: PositiveInt = 1                # B and C are shared by the heads of a group
    conv_size: int = 4                       # 0 or 1: no short convolution
    dt_min: PositiveFloat = 1e-3
    dt_max: PositiveFloat = 1e-1
    impl: Literal["fast", "naive"] = unhashed("fast", "chunkwise or per-token form; same results")

    @model_validator(mode="after")
    def _consistent(self) -> "Mamba2LayerConfig":
        return check_dt_and_conv(self)

    def check(self, d_model: int, path: str = "mixer") -> None:
        inner = self.expand * d_model
        if inner % self.head_dim:
            raise ValueError(f"{path}.head_dim={self.head_dim} does not divide the inner width "
                             f"expand * d_model = {inner}")
        if (inner // self.head_dim) % self.n_groups:
            raise ValueError(f"{path}.n_groups={self.n_groups} does not divide the {inner // self.head_dim} heads")

    def build(self, d_model: int) -> "Mamba2Layer":
        return Mamba2Layer(d_model, self)

    def levels(self) -> List[Level]:
        return [Level("ssd memory", f"linear fast weights per head (P={self.head_dim}, N={self.d_state}), dot "
                      "write with step Δ_t, log-retention log α_t = Δ_t a_h (one scalar decay per head)",
                      "tokens", 1, "dot", "linear")]


class Mamba2State(NamedTuple):
    memory: MemoryState        # weights (B, H, P, N)
    conv: Optional[Tensor]     # (B, inner + 2 G N, conv_size − 1)


class Mamba2Layer(nn.Module):
    def __init__(self, d_model: int, cfg: Mamba2LayerConfig):
        super().__init__()
        cfg.check(d_model, path="mamba2")
        self.cfg = cfg
        inner = cfg.expand * d_model
        self.inner, self.p, self.n, self.g = inner, cfg.head_dim, cfg.d_state, cfg.n_groups
        self.h = inner // cfg.head_dim
        conv_width = inner + 2 * self.g * self.n
        self.in_proj = nn.Linear(d_model, inner + conv_width + self.h, bias=False)   # z, [x, B, C], Δ
        self.conv = ShortConv(conv_width, cfg.conv_size) if cfg.conv_size > 1 else None
        self.A_log = no_weight_decay(nn.Parameter(torch.empty(self.h).uniform_(1, 16).log()))
        self.D = no_weight_decay(nn.Parameter(torch.ones(self.h)))
        lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
        dt = torch.exp(lo + (hi - lo) * torch.rand(self.h))
        self.dt_bias = no_weight_decay(nn.Parameter(dt + torch.log(-torch.expm1(-dt))))  # softplus(b) = dt
        self.norm = RMSNorm(inner)
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    def initial_state(self, batch: int, like: Tensor) -> Mamba2State:
        weights = like.new_zeros(batch, self.h, self.p, self.n, dtype=up(like.new_empty(())).dtype)
        return Mamba2State(MemoryState((weights,)), None)

    def forward(self, u: Tensor, state: Optional[Mamba2State] = None) -> Tuple[Tensor, Mamba2State]:
        """u (B, T, d_model) -> (y (B, T, d_model), state)."""
        b, t, _ = u.shape
        if state is None:
            state = self.initial_state(b, u)
        z, xbc, dt = self.in_proj(u).split([self.inner, self.inner + 2 * self.g * self.n, self.h], dim=-1)
        conv_state = None
        if self.conv is not None:
            xbc, conv_state = self.conv(xbc, state.conv)
        else:
            xbc = F.silu(xbc)
        x, bb, cc = xbc.split([self.inner, self.g * self.n, self.g * self.n], dim=-1)
        x = x.view(b, t, self.h, self.p).transpose(1, 2)                           # (B, H, T, P)
        per_group = self.h // self.g
        k, q = (m.view(b, t, self.g, self.n).transpose(1, 2).repeat_interleave(per_group, dim=1)
                for m in (bb, cc))                                                 # (B, H, T, N)
        delta = F.softplus(up(dt) + self.dt_bias).transpose(1, 2)                  # (B, H, T), float32
        log_alpha = delta * -torch.exp(self.A_log)[:, None]                        # Δ_t a_h ≤ 0
        op = linear_memory if self.cfg.impl == "fast" else linear_memory_naive
        y, mem = op(q, k, x, delta, log_alpha, None, state.memory, objective="dot")
        y = y + self.D[:, None, None].to(y.dtype) * x                              # (B, H, T, P)
        y = y.transpose(1, 2).reshape(b, t, self.inner)
        return self.out_proj(self.norm(y * F.silu(z))), Mamba2State(mem, conv_state)

    def flops_per_token(self, seq_len: int) -> float:
        """The memory's write and read (~3 passes over its H·P·N state) and the chunked form's
        intra-block products (blocks of ``DEFAULT_BLOCK`` tokens)."""
        block = min(seq_len, DEFAULT_BLOCK)
        return 2.0 * 3 * self.h * self.p * self.n + 2.0 * 3 * block * self.h * (self.p + self.n)

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Numbers carried per sequence: the memory (H × P × N) and the convolution's last inputs."""
        return self.h * self.p * self.n + (self.conv.state_size() if self.conv else 0)
