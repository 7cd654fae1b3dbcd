"""A Mamba (selective SSM) mixer: the Mamba-1 block around :func:`nlsearch.ops.ssm.selective_scan`.

    [x, z] = W_in u;  x = SiLU(conv(x));  Δ = softplus(W_Δ (W_r x) + b_Δ);  B, C = W_B x, W_C x
    y = W_out (scan(x, Δ, A = −exp(A_log), B, C, D) ⊙ SiLU(z))

Initialisation as in Mamba: A_log = log(1..N) per channel (S4D-real), D = 1, and b_Δ the inverse
softplus of Δ drawn log-uniformly in [dt_min, dt_max]. One scan path on every device: the chunked
scan of :mod:`nlsearch.ops.ssm` (an optional ``mamba_ssm`` kernel path was removed: no machine the
project tests on can install it, so it was never tested).
"""
from __future__ import annotations

import math
from typing import Literal, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn

from nlsearch.config import Strict, unhashed
from nlsearch.layers.conv import ShortConv
from nlsearch.nesting import Level
from nlsearch.ops.precision import autocast_off
from nlsearch.ops.ssm import selective_scan, selective_scan_naive
from nlsearch.optim.adamw import no_weight_decay
from nlsearch.registry import MIXERS


@MIXERS.register("mamba")
class MambaLayerConfig(Strict):
    kind: Literal["mamba"] = "mamba"
    expand: PositiveInt = 2                  # inner channels = expand * d_model
    d_state: PositiveInt = 16                # N
    dt_rank: Optional[PositiveInt] = None    # low-rank Δ projection; default ceil(d_model / 16)
    conv_size: int = 4                       # 0 or 1: no short convolution
    dt_min: PositiveFloat = 1e-3
    dt_max: PositiveFloat = 1e-1
    chunk: PositiveInt = unhashed(64, "tokens per step of the chunked scan")
    impl: Literal["fast", "naive"] = unhashed("fast", "chunked or per-token scan; same results")

    @model_validator(mode="after")
    def _consistent(self) -> "MambaLayerConfig":
        return check_dt_and_conv(self)

    def build(self, d_model: int) -> "MambaLayer":
        return MambaLayer(d_model, self)

    def levels(self) -> "list[Level]":
        return [Level("selective ssm", f"diagonal state h_t (N={self.d_state}) with input-dependent decay",
                      "tokens", 1, "dot", "linear (diagonal)")]


def check_dt_and_conv(cfg):
    """The checks every SSM config shares: a Δ range with dt_min < dt_max, and conv_size >= 0."""
    if cfg.dt_min >= cfg.dt_max:
        raise ValueError(f"dt_min={cfg.dt_min} must be below dt_max={cfg.dt_max}")
    if cfg.conv_size < 0:
        raise ValueError(f"conv_size={cfg.conv_size} must be >= 0")
    return cfg


class MambaState(NamedTuple):
    ssm: Tensor              # (B, Dch, N)
    conv: Optional[Tensor]   # (B, Dch, conv_size - 1), None without a convolution


class MambaLayer(nn.Module):
    def __init__(self, d_model: int, cfg: MambaLayerConfig):
        super().__init__()
        self.cfg = cfg
        dch, n = cfg.expand * d_model, cfg.d_state
        rank = cfg.dt_rank or math.ceil(d_model / 16)
        self.dch, self.n, self.rank = dch, n, rank
        self.in_proj = nn.Linear(d_model, 2 * dch, bias=False)
        self.conv = ShortConv(dch, cfg.conv_size) if cfg.conv_size > 1 else None
        self.x_proj = nn.Linear(dch, rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(rank, dch)
        a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(dch, 1)
        self.A_log = no_weight_decay(nn.Parameter(a_log))            # a table of decays, not a weight matrix
        self.D = nn.Parameter(torch.ones(dch))
        self.out_proj = nn.Linear(dch, d_model, bias=False)
        self._init_dt()

    def _init_dt(self) -> None:
        cfg = self.cfg
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -self.rank ** -0.5, self.rank ** -0.5)
            lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
            dt = torch.exp(lo + (hi - lo) * torch.rand(self.dch))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))     # softplus(bias) = dt

    def forward(self, u: Tensor, state: Optional[MambaState] = None) -> Tuple[Tensor, MambaState]:
        """u (B, T, d_model) -> (y (B, T, d_model), state)."""
        x, z = self.in_proj(u).chunk(2, dim=-1)                             # (B, T, Dch) each
        conv_state = None
        if self.conv is not None:
            x, conv_state = self.conv(x, None if state is None else state.conv)
        else:
            x = F.silu(x)
        dt, b, c = self.x_proj(x).split([self.rank, self.n, self.n], dim=-1)
        delta = F.softplus(self.dt_proj(dt))                                # (B, T, Dch)
        y, h = self._scan(x, delta, b, c, None if state is None else state.ssm)
        return self.out_proj(y.to(z.dtype) * F.silu(z)), MambaState(h, conv_state)

    def _scan(self, x, delta, b, c, h0) -> Tuple[Tensor, Tensor]:
        """The scan runs in float32 at least (float64 stays float64), autocast off, every input in
        that one dtype; so does the carried state (:mod:`nlsearch.ops.precision`)."""
        work = torch.promote_types(x.dtype, torch.float32)
        with autocast_off(x):
            a = -torch.exp(self.A_log.to(work))                             # (Dch, N)
            d = self.D.to(work)
            x, delta, b, c = (t.to(work) for t in (x, delta, b, c))
            if self.cfg.impl == "naive":
                return selective_scan_naive(x, delta, a, b, c, d, h0)
            return selective_scan(x, delta, a, b, c, d, h0, chunk=self.cfg.chunk)

    def flops_per_token(self, seq_len: int) -> float:
        """The scan: decay, input and read of the (channels x state) h_t per token, ~6 FLOPs each."""
        return 6.0 * self.dch * self.n

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Numbers carried per sequence: the SSM state (Dch × N) and the convolution's last inputs."""
        return self.dch * self.n + (self.conv.state_size() if self.conv else 0)
