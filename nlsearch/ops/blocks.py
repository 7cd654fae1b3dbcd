"""Block machinery shared by the fast (chunk-parallel) memory forms.

Inside a block of L tokens whose gradients are all known in closed form, the memory with decay
``alpha`` and momentum ``theta`` unrolls to

    S_t = Θ_t S_0 − Σ_{s≤t} (Θ_t/Θ_s) η_s G_s
    M_t = γ_t M_0 + b_t S_0 − Σ_{s≤t} c_{t,s} G_s

with ``γ_t = Π_{r≤t} α_r``, ``Θ_t = Π_{r≤t} θ_r``, ``b_t = Σ_{r≤t} (γ_t/γ_r) Θ_r`` and
``c_{t,s} = η_s Σ_{r=s..t} (γ_t/γ_r)(Θ_r/Θ_s)``. Without momentum ``b = 0`` and
``c_{t,s} = η_s γ_t/γ_s``. Rows are indexed ``t = 0..L`` (row 0 is the block start, all zero), so
``read=before_write`` simply uses rows ``0..L-1``.

Decay enters as ``log α ≤ 0`` (``-inf``: a full reset) and ``log θ``. Every factor is ``exp`` of a
*segment sum* ``Σ_{s<r≤t} log α_r`` taken directly over the segment (:func:`decay_matrix`), masked to
``-inf`` where the segment is empty before the ``exp``: no factor exceeds 1, no ``exp(+cumsum)``
meets an ``exp(-cumsum)``, and no segment's sum is the difference of two large cumulative sums (in
float32 that difference loses the digits of a short segment after one strongly decaying token).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


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
    log_alpha: Optional[Tensor] = None  # (..., L)  the block's log-retention; None: γ ≡ 1

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
                                   (self.log_gamma, self.ratio, self.eta, self.b, self.e, self.theta_end,
                                    self.log_alpha)))

    def decay_in_minibatch(self, chunk: int) -> Tensor:
        """``γ_s/γ_g(s)`` for every token ``s = 1..L``, ``g(s)`` the start of its mini-batch of ``chunk``
        tokens (counted from the block start): ``exp`` of the log-retention summed within the
        mini-batch up to ``s``, ``(..., L)``."""
        la, length = self.log_alpha, self.log_alpha.shape[-1]
        if chunk == 1:
            return la.exp()
        pad = -length % chunk
        grouped = F.pad(la, (0, pad)).unflatten(-1, (-1, chunk)).cumsum(-1)
        return grouped.flatten(-2)[..., :length].exp()

    def decay_over_last(self, n: int) -> Tensor:
        """``γ_L/γ_{L−n}``: ``exp`` of the last ``n`` tokens' log-retention summed, ``(...)``."""
        if self.log_alpha is None:
            return torch.ones_like(self.log_gamma[..., 0])
        return self.log_alpha[..., self.log_alpha.shape[-1] - n:].sum(-1).exp()


def decay_matrix(log_x: Tensor) -> Tensor:
    """``R[..., t, s−1] = exp(Σ_{s<r≤t} x_r)`` for ``0 ≤ t ≤ L``, ``1 ≤ s ≤ L`` (``x_r = log_x[..., r−1]``,
    entries in ``[-inf, 0]``): 1 on the diagonal ``s = t``, exactly 0 above it. ``(..., L+1, L)``.

    Each exponent is the sum over its own segment, a cumulative sum down a column masked to the
    segment before it is summed, so it is as exact as the segment is short, never positive, and no two
    ``-inf`` ever meet in a subtraction. One autograd node: the backward is the sum of ``∂R ⊙ R`` over
    every segment that holds ``x_r`` (a prefix sum along ``s``, then over ``t ≥ r`` as the column's
    total less its prefix: gradients, not exponents, are subtracted)."""
    return _DecayMatrix.apply(log_x)


class _DecayMatrix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_x):
        length = log_x.shape[-1]
        col = F.pad(log_x, (1, 0))[..., :, None].expand(*log_x.shape[:-1], length + 1, length)  # x_t
        # x_t lies in the segment (s, t'] of column j = s − 1 when t ≥ j + 2: keep that triangle, sum it
        # down the column, exp, and zero the empty segments (j ≥ t; their sums are 0 there, exp 1)
        r = col.tril(-2).cumsum_(-2).exp_().tril_(-1)
        ctx.save_for_backward(r)
        return r

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        length = r.shape[-1]
        g = (grad * r).cumsum_(-1)                    # P[t, j] = Σ_{j' ≤ j} ∂R ⊙ R
        # Σ over t' ≥ t, summed from the end: a total minus a prefix would cancel most of its digits
        # in float32 when the late rows carry little (small retention)
        after = g.flip(-2).cumsum_(-2).flip(-2)
        cols = torch.arange(length - 1, device=r.device)                   # x_r, r = 2..L: t ≥ r, j ≤ r − 2
        d = after[..., cols + 2, cols]
        return F.pad(d, (1, 0))                                             # x_1 is in no segment of R


def block_coefficients(log_alpha: Optional[Tensor], log_theta: Optional[Tensor], eta: Tensor) -> BlockCoefficients:
    """Coefficients of one block (or a batch of blocks): inputs ``(..., L)``, log-factors in
    ``[-inf, 0]``; ``None`` = factor 1."""
    length = eta.shape[-1]
    if log_alpha is None:                                                   # γ ≡ 1
        log_gamma = torch.zeros_like(eta[..., :1]).expand(*eta.shape[:-1], length + 1)
        gamma_ratio = None
    else:
        log_gamma = F.pad(log_alpha.cumsum(-1), (1, 0))                    # (..., L+1), from the start
        gamma_ratio = decay_matrix(log_alpha)                               # (..., L+1, L): 0 for s > t
    if log_theta is None:
        return BlockCoefficients(log_gamma, gamma_ratio, eta, log_alpha=log_alpha)
    if gamma_ratio is None:
        gamma_ratio = torch.ones(length + 1, length, dtype=eta.dtype, device=eta.device).tril(-1)
    theta_ratio = decay_matrix(log_theta)[..., 1:, :]                       # (..., L, L): Θ_r/Θ_s, s ≤ r
    big_theta = log_theta.cumsum(-1).exp()                                  # (..., L): Θ_r
    ratio = gamma_ratio @ theta_ratio
    b = (gamma_ratio @ big_theta[..., None]).squeeze(-1)
    e = theta_ratio[..., -1, :] * eta
    return BlockCoefficients(log_gamma, ratio, eta, b, e, big_theta[..., -1], log_alpha)


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
