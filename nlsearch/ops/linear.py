"""Linear (matrix) associative memory ``y = M q``: naive per-token reference and the chunkwise form.

One step per token (``chunk=1``) or per mini-batch of ``chunk`` tokens, gradients taken at the weights
of the mini-batch start (the *anchor*):

    G_t = ∇ℓ(M̃_t; k_t, v_t)      l2: (M̃ k − v) kᵀ      dot: −v kᵀ
    S_t = θ_t S_{t-1} − η_t G_t   (momentum; plain GD: S_t = −η_t G_t)
    M_t = α_t M_{t-1} + S_t

Retention enters as ``log_alpha = log α_t ∈ [-inf, 0]`` (``-inf``: a full reset of the memory at
that token); the layers produce it directly (``logsigmoid`` of a gate, ``Δ_t a`` for Mamba-2).
Momentum ``theta = θ_t ∈ (0, 1]`` enters as the factor itself.

``decay_order`` names where the gradient is read: ``with_step`` at the anchor itself (decay acts like
weight decay: ``M(αI − ηkkᵀ) + ηvkᵀ`` per token), ``before_step`` at the anchor decayed up to t
(Gated DeltaNet: ``αM(I − ηkkᵀ) + ηvkᵀ``). No normalisation of q or k happens here.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from nlsearch.ops.blocks import BlockCoefficients, aligned_block, block_coefficients, log_or_none, plan_segments
from nlsearch.ops.precision import float32_boundary
from nlsearch.ops.scan import block_scan
from nlsearch.ops.state import MemoryState, zeros_linear_state
from nlsearch.ops.validate import DECAY_ORDERS, OBJECTIVES, READS, check_choice, check_chunk, check_inputs, check_state


DEFAULT_BLOCK = 32          # tokens per block of the fast form (a compute setting; results never depend on it)


def _prepare(q, k, v, eta, log_alpha, theta, state, objective, decay_order, chunk, read):
    b, h, _, dk, dv = check_inputs(q, k, v, eta, log_alpha, theta)
    check_choice("objective", objective, OBJECTIVES)
    check_choice("decay_order", decay_order, DECAY_ORDERS)
    check_choice("read", read, READS)
    check_chunk(chunk)
    if state is None:
        state = zeros_linear_state(b, h, dk, dv, momentum=theta is not None, dtype=q.dtype, device=q.device)
    check_state(state, b, h, dk, dv, momentum=theta is not None, chunk=chunk, dtype=q.dtype)
    if len(state.weights) != 1:
        raise ValueError(f"a linear memory has one weight matrix; state.weights has {len(state.weights)}")
    return state


@float32_boundary
def linear_memory_naive(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, log_alpha: Optional[Tensor] = None,
    theta: Optional[Tensor] = None, state: Optional[MemoryState] = None, *, objective: str = "l2",
    decay_order: str = "with_step", chunk: int = 1, read: str = "after_write",
) -> Tuple[Tensor, MemoryState]:
    """Reference: a per-token loop over the update equations above."""
    state = _prepare(q, k, v, eta, log_alpha, theta, state, objective, decay_order, chunk, read)
    m = state.weights[0]                                        # (B, H, Dv, Dk)
    s = state.momentum[0] if theta is not None else None
    anchor = state.anchor[0] if state.offset else None
    anchor_decay = state.anchor_decay if state.offset else None
    offset = state.offset
    ys = []
    for t in range(q.shape[2]):
        if offset == 0:
            anchor, anchor_decay = m, torch.ones_like(eta[:, :, t])
        a = torch.ones_like(eta[:, :, t]) if log_alpha is None else log_alpha[:, :, t].exp()
        anchor_decay = anchor_decay * a
        grad_point = anchor_decay[..., None, None] * anchor if decay_order == "before_step" else anchor
        kt, vt = k[:, :, t], v[:, :, t]
        if objective == "l2":
            err = torch.einsum("bhvk,bhk->bhv", grad_point, kt) - vt
        else:
            err = -vt
        step = -eta[:, :, t, None, None] * torch.einsum("bhv,bhk->bhvk", err, kt)
        if s is not None:
            s = theta[:, :, t, None, None] * s + step
            step = s
        m_prev = m
        m = a[..., None, None] * m + step
        read_m = m if read == "after_write" else m_prev
        ys.append(torch.einsum("bhvk,bhk->bhv", read_m, q[:, :, t]))
        offset = (offset + 1) % chunk
    y = torch.stack(ys, dim=2) if ys else v.new_zeros(v.shape)
    return y, MemoryState(
        weights=(m,), momentum=None if s is None else (s,),
        anchor=(anchor,) if offset else None, anchor_decay=anchor_decay if offset else None, offset=offset,
    )


@float32_boundary
def linear_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, log_alpha: Optional[Tensor] = None,
    theta: Optional[Tensor] = None, state: Optional[MemoryState] = None, *, objective: str = "l2",
    decay_order: str = "with_step", chunk: int = 1, read: str = "after_write", block: int = DEFAULT_BLOCK,
) -> Tuple[Tensor, MemoryState]:
    """Chunkwise-parallel form of :func:`linear_memory_naive` (same signature, same results).

    Tokens are processed in blocks of about ``block`` tokens (a multiple of ``chunk``; a compute
    setting that never changes the result). Inside a block the l2 rule's dependence of each gradient
    on earlier writes is a unit lower-triangular system solved at once (the WY/UT transform); only a
    matrix product per block runs sequentially.
    """
    state = _prepare(q, k, v, eta, log_alpha, theta, state, objective, decay_order, chunk, read)
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block={block!r} must be a positive integer")
    seg = plan_segments(q.shape[2], state.offset, chunk, aligned_block(chunk, block))
    la, lt = log_alpha, log_or_none(theta)
    run = _Runner(objective, decay_order, chunk, read == "after_write")
    sizes = [seg.prefix, seg.block * seg.n_blocks, seg.tail]
    inputs = (q, k, v, eta, la, lt)
    if sizes.count(0) == 2:                 # one segment: no split, and no concatenation either way
        return run(*inputs, n_blocks=seg.n_blocks if sizes[1] else 1, state=state)
    parts = [x.split(sizes, dim=2) if x is not None else [None] * 3 for x in inputs]
    ys = []
    for length, n, cut in zip(sizes, (1, seg.n_blocks, 1), zip(*parts)):
        if length:
            y, state = run(*cut, n_blocks=n, state=state)
            ys.append(y)
    return (torch.cat(ys, dim=2) if ys else v.new_zeros(v.shape)), state


def _split(x: Optional[Tensor], n: int) -> Optional[Tensor]:
    """(B, H, n*L, ...) -> (B, H, n, L, ...)"""
    return None if x is None else x.reshape(x.shape[0], x.shape[1], n, x.shape[2] // n, *x.shape[3:])


class _Runner:
    """Processes ``n_blocks`` equal blocks that start on a mini-batch boundary, or (when the state has
    an open mini-batch) one prefix block whose gradients are all read at the state's anchor.

    It builds the terms of :func:`nlsearch.ops.scan.block_scan` on the state ``Z = M`` (or
    ``[M | S]`` with momentum): in-block system ``T`` and state term ``W0`` (:meth:`_system`), read
    scores ``A_{t,s} = c_{t,s} (q_t·k_s)`` and ``Qz = [γ ⊙ q | b ⊙ q]``, write keys
    ``Kz = [c_L ⊙ k | e ⊙ k]`` and the state's own transition ``P`` (:meth:`_transition`)."""

    def __init__(self, objective: str, decay_order: str, chunk: int, after_write: bool):
        self.objective, self.before_step = objective, decay_order == "before_step"
        self.chunk, self.after_write = chunk, after_write

    def __call__(self, q, k, v, eta, la, lt, *, n_blocks: int, state: MemoryState):
        q, k, v, eta, la, lt = (_split(x, n_blocks) for x in (q, k, v, eta, la, lt))  # (B, H, N, L, .)
        co = block_coefficients(la, lt, eta)
        momentum = lt is not None
        z0 = torch.cat([state.weights[0], state.momentum[0]], dim=-1) if momentum else state.weights[0]
        ke = k * eta[..., None]                                             # η ⊙ k, shared by the products
        if state.offset:
            v, t_w, w0 = self._prefix(k, v, co, state), None, None
        else:
            t_w, w0 = self._system(k, co)
        rows = co.read_rows(self.after_write)
        gamma, b = co.gamma_b(rows)
        qz = q if la is None else gamma[..., None] * q
        kz = ke if co.ratio is None else k * co.row(k.shape[-2])[..., None]  # c_L = η without decay
        if momentum:
            qz, kz = torch.cat([qz, b[..., None] * q], -1), torch.cat([kz, k * co.e[..., None]], -1)
        y, z_all, u = block_scan(q, k, ke, co.weights(rows), t_w, w0, v, kz, qz, self._transition(co, la, k), z0)
        dk = k.shape[-1]
        # after the last block, and at its start: copies, so a carried state does not hold every block's
        z_end, z_last = (z_all[:, :, i].clone() for i in (-1, -2))
        m_end, s_end = z_end[..., :dk], (z_end[..., dk:] if momentum else None)
        last_s = z_last[..., dk:] if momentum else None
        return y.flatten(2, 3), self._next_state(state, m_end, s_end, z_last[..., :dk], last_s, u, k, co)

    def _system(self, k, co: BlockCoefficients):
        """The l2 rule's in-block dependence ``(I + T) U = V − W0 Zᵀ`` as the coefficients ``Tw`` of
        ``T = (K Keᵀ) ⊙ Tw`` and ``W0``; ``(None, None)`` for dot.

        Token s reads its gradient at the weights of row g(s) = C·floor((s−1)/C) of the block; with
        ``before_step`` scaled by ρ_s = γ_s/γ_g(s). T_{s,r} = ρ_s c_{g(s),r} (k_s·k_r), strictly lower
        (``Tw = None`` when the whole block is one mini-batch); W0 = [ρ γ_g ⊙ k | ρ b_g ⊙ k]."""
        if self.objective == "dot":
            return None, None
        length = k.shape[3]
        if self.chunk == 1:
            g = slice(0, length)                                              # g(s) = s − 1: a view
        else:
            g = torch.arange(length, device=k.device) // self.chunk * self.chunk
        lg = co.log_gamma
        decays = self.before_step and co.log_alpha is not None
        rho = co.decay_in_minibatch(self.chunk) if decays else None           # γ_s/γ_g(s)
        if co.ratio is None:                                                  # γ ≡ 1, no momentum
            w0 = k
        else:
            w0 = (lg[..., g].exp() if rho is None else rho * lg[..., g].exp())[..., None] * k
        if co.b is not None:
            w0 = torch.cat([w0, (co.b[..., g] if rho is None else rho * co.b[..., g])[..., None] * k], -1)
        t_w = None
        if self.chunk < length:
            t_w = co.weights(g)                                               # (L, L) or (B, H, N, L, L)
            if rho is not None:
                t_w = rho[..., None] * t_w
        return t_w, w0

    @staticmethod
    def _transition(co: BlockCoefficients, la: Optional[Tensor], k: Tensor) -> Optional[Tensor]:
        """The state's own map across a block: identity (``None``), γ_L, or with momentum
        ``[[γ_L I, 0], [b_L I, Θ_L I]]`` acting on ``Z = [M | S]`` from the right."""
        gamma_end = None if la is None else co.log_gamma[..., -1].exp()[..., None, None]
        if co.b is None:
            return gamma_end
        eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
        theta_end = co.theta_end[..., None, None]
        mm = eye * (torch.ones_like(theta_end) if gamma_end is None else gamma_end)
        top = torch.cat([mm, torch.zeros_like(mm)], -1)
        bottom = torch.cat([co.b[..., -1, None, None] * eye, theta_end * eye], -1)
        return torch.cat([top, bottom], -2)

    def _prefix(self, k, v, co, state: MemoryState) -> Tensor:
        """Tokens finishing the open mini-batch: every gradient is read at the stored anchor, so the
        written values are known: ``u = v − ρ anchor k``."""
        if self.objective == "dot":
            return v
        ones = torch.ones_like(co.log_gamma[..., 1:])
        rho = state.anchor_decay[..., None, None] * co.log_gamma[..., 1:].exp() if self.before_step else ones
        return v - rho[..., None] * (k @ state.anchor[0][:, :, None].mT)

    def _next_state(self, state, m, s, m0, s0, u, k, co) -> MemoryState:
        """The state after the last block; an unfinished mini-batch keeps its anchor."""
        length = k.shape[3]
        if state.offset:
            offset = state.offset + length
            if offset < self.chunk:
                decay = state.anchor_decay * co.log_gamma[:, :, 0, -1].exp()
                return MemoryState((m,), _opt(s), state.anchor, decay, offset)
            return MemoryState((m,), _opt(s))
        open_tokens = length % self.chunk
        if open_tokens == 0:
            return MemoryState((m,), _opt(s))
        g = length - open_tokens
        last = co.map(lambda x: x[:, :, -1])
        lg = last.log_gamma
        cg = last.row(g)[..., None]
        anchor = lg[..., g].exp()[..., None, None] * m0 + (u[:, :, -1] * cg).mT @ k[:, :, -1]
        if s0 is not None:
            anchor = anchor + co.b[:, :, -1, g, None, None] * s0
        return MemoryState((m,), _opt(s), (anchor,), last.decay_over_last(open_tokens), open_tokens)


def _opt(s: Optional[Tensor]) -> Optional[Tuple[Tensor]]:
    return None if s is None else (s,)
