"""Block machinery shared by the fast (chunk-parallel) memory forms.

Inside a block of L tokens whose gradients are all known in closed form, the memory with decay
``alpha`` and momentum ``theta`` unrolls to

    S_t = Θ_t S_0 − Σ_{s≤t} (Θ_t/Θ_s) η_s G_s
    M_t = γ_t M_0 + b_t S_0 − Σ_{s≤t} c_{t,s} G_s

with ``γ_t = Π_{r≤t} α_r``, ``Θ_t = Π_{r≤t} θ_r``, ``b_t = Σ_{r≤t} (γ_t/γ_r) Θ_r`` and
``c_{t,s} = η_s Σ_{r=s..t} (γ_t/γ_r)(Θ_r/Θ_s)``. Without momentum ``b = 0`` and
``c_{t,s} = η_s γ_t/γ_s``. Rows are indexed ``t = 0..L`` (row 0 is the block start, all zero), so
``read=before_write`` simply uses rows ``0..L-1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class BlockCoefficients:
    """``c_{t,s} = η_s R_{t,s}``, stored as ``R`` (``None`` when γ ≡ 1 and there is no momentum:
    then ``R`` is the causal mask and ``c`` is never built; η is folded into a matrix operand)."""

    log_gamma: Tensor            # (..., L+1)  log γ_t, t = 0..L
    ratio: Optional[Tensor]      # (..., L+1, L)  R_{t,s}, zero for s > t; None: the mask [s ≤ t]
    eta: Tensor                  # (..., L)
    b: Optional[Tensor] = None   # (..., L+1), momentum only
    e: Optional[Tensor] = None   # (..., L)  η_s Θ_L/Θ_s, momentum only
    theta_end: Optional[Tensor] = None  # (...)   Θ_L, momentum only

    def read_rows(self, after_write: bool) -> slice:
        """Rows of the weights each token reads: M_t (after the write) or M_{t-1}."""
        return slice(1, None) if after_write else slice(0, -1)

    def gamma_b(self, rows: slice) -> "tuple[Tensor, Optional[Tensor]]":
        return self.log_gamma[..., rows].exp(), None if self.b is None else self.b[..., rows]

    def weights(self, rows) -> Tensor:
        """``c_{t,s} / η_s`` for the rows ``t`` selected by ``rows``: ``R[rows]``, or without decay and
        momentum the causal mask itself as an ``(len(rows), L)`` float matrix."""
        if self.ratio is not None:
            return self.ratio[..., rows, :]
        length = self.eta.shape[-1]
        return torch.ones(length + 1, length, dtype=self.eta.dtype, device=self.eta.device).tril(-1)[rows]

    def row(self, t: int) -> Tensor:
        """``c_{t,:}`` as ``(..., L)``."""
        if self.ratio is not None:
            return self.ratio[..., t, :] * self.eta
        keep = torch.arange(self.eta.shape[-1], device=self.eta.device) < t
        return self.eta * keep

    def map(self, fn) -> "BlockCoefficients":
        """Apply ``fn`` to every tensor field (e.g. select one block of a batch of blocks)."""
        return BlockCoefficients(*(None if x is None else fn(x) for x in
                                   (self.log_gamma, self.ratio, self.eta, self.b, self.e, self.theta_end)))


def _ratio_matrix(log_cum_rows: Tensor, log_cum_cols: Tensor, diagonal: int) -> Tensor:
    """``exp(rows_i − cols_j)`` where ``j − i <= diagonal`` (a lower triangle), else exactly 0.

    Masking happens before ``exp`` so the unused upper triangle can never overflow."""
    diff = log_cum_rows[..., :, None] - log_cum_cols[..., None, :]
    n_rows, n_cols = diff.shape[-2:]
    keep = torch.ones(n_rows, n_cols, dtype=torch.bool, device=diff.device).tril(diagonal)
    return diff.masked_fill(~keep, float("-inf")).exp()


def block_coefficients(log_alpha: Optional[Tensor], log_theta: Optional[Tensor], eta: Tensor) -> BlockCoefficients:
    """Coefficients of one block (or a batch of blocks): inputs ``(..., L)``; ``None`` = factor 1."""
    length = eta.shape[-1]
    if log_alpha is None:                                                   # γ ≡ 1
        log_gamma = torch.zeros_like(eta[..., :1]).expand(*eta.shape[:-1], length + 1)
        gamma_ratio = None
    else:
        zero = torch.zeros_like(log_alpha[..., :1])
        log_gamma = torch.cat([zero, log_alpha.cumsum(-1)], dim=-1)            # (..., L+1)
        gamma_ratio = _ratio_matrix(log_gamma, log_gamma[..., 1:], diagonal=-1)  # (..., L+1, L): s ≤ t
    if log_theta is None:
        return BlockCoefficients(log_gamma, gamma_ratio, eta)
    if gamma_ratio is None:
        gamma_ratio = torch.ones(length + 1, length, dtype=eta.dtype, device=eta.device).tril(-1)
    log_big_theta = log_theta.cumsum(-1)                                    # (..., L)
    theta_ratio = _ratio_matrix(log_big_theta, log_big_theta, diagonal=0)   # (..., L, L): s ≤ r
    ratio = gamma_ratio @ theta_ratio
    b = (gamma_ratio @ log_big_theta.exp()[..., None]).squeeze(-1)
    e = theta_ratio[..., -1, :] * eta
    return BlockCoefficients(log_gamma, ratio, eta, b, e, log_big_theta[..., -1].exp())


def log_or_none(x: Optional[Tensor]) -> Optional[Tensor]:
    """log of a per-token factor in (0, 1]; ``None`` stands for the factor 1."""
    return None if x is None else x.log()


@dataclass
class Segments:
    """How a sequence of T tokens is cut: a prefix that finishes the mini-batch the state left open,
    ``n_blocks`` full blocks of ``block`` tokens, and a shorter tail."""

    prefix: int
    n_blocks: int
    block: int
    tail: int


def plan_segments(t: int, offset: int, chunk: int, block: int) -> Segments:
    prefix = min(chunk - offset, t) if offset else 0
    n_blocks, tail = divmod(t - prefix, block)
    return Segments(prefix, n_blocks, block, tail)


def aligned_block(chunk: int, target: int = 64) -> int:
    """Block length for the fast forms: a multiple of the mini-batch ``chunk`` near ``target``."""
    return chunk * max(1, round(target / chunk))
