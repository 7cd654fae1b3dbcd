"""Linear (matrix) associative memory ``y = M q``: naive per-token reference and the chunkwise form.

One step per token (``chunk=1``) or per mini-batch of ``chunk`` tokens, gradients taken at the weights
of the mini-batch start (the *anchor*):

    G_t = ∇ℓ(M̃_t; k_t, v_t)      l2: (M̃ k − v) kᵀ      dot: −v kᵀ
    S_t = θ_t S_{t-1} − η_t G_t   (momentum; plain GD: S_t = −η_t G_t)
    M_t = α_t M_{t-1} + S_t

``decay_order`` names where the gradient is read: ``with_step`` at the anchor itself (decay acts like
weight decay: ``M(αI − ηkkᵀ) + ηvkᵀ`` per token), ``before_step`` at the anchor decayed up to t
(Gated DeltaNet: ``αM(I − ηkkᵀ) + ηvkᵀ``). No normalisation of q or k happens here.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from nlsearch.ops.blocks import BlockCoefficients, aligned_block, block_coefficients, log_or_zeros, plan_segments
from nlsearch.ops.state import MemoryState, zeros_linear_state
from nlsearch.ops.validate import DECAY_ORDERS, OBJECTIVES, READS, check_choice, check_chunk, check_inputs, check_state


def _prepare(q, k, v, eta, alpha, theta, state, objective, decay_order, chunk, read):
    b, h, _, dk, dv = check_inputs(q, k, v, eta, alpha, theta)
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


def linear_memory_naive(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, alpha: Optional[Tensor] = None,
    theta: Optional[Tensor] = None, state: Optional[MemoryState] = None, *, objective: str = "l2",
    decay_order: str = "with_step", chunk: int = 1, read: str = "after_write",
) -> Tuple[Tensor, MemoryState]:
    """Reference: a per-token loop over the update equations above."""
    state = _prepare(q, k, v, eta, alpha, theta, state, objective, decay_order, chunk, read)
    m = state.weights[0]                                        # (B, H, Dv, Dk)
    s = state.momentum[0] if theta is not None else None
    anchor = state.anchor[0] if state.offset else None
    anchor_decay = state.anchor_decay if state.offset else None
    offset = state.offset
    ys = []
    for t in range(q.shape[2]):
        if offset == 0:
            anchor, anchor_decay = m, torch.ones_like(eta[:, :, t])
        a = torch.ones_like(eta[:, :, t]) if alpha is None else alpha[:, :, t]
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


def linear_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, alpha: Optional[Tensor] = None,
    theta: Optional[Tensor] = None, state: Optional[MemoryState] = None, *, objective: str = "l2",
    decay_order: str = "with_step", chunk: int = 1, read: str = "after_write", block: int = 64,
) -> Tuple[Tensor, MemoryState]:
    """Chunkwise-parallel form of :func:`linear_memory_naive` (same signature, same results).

    Tokens are processed in blocks of about ``block`` tokens (a multiple of ``chunk``; a compute
    setting that never changes the result). Inside a block the l2 rule's dependence of each gradient
    on earlier writes is a unit lower-triangular system solved at once (the WY/UT transform); only a
    matrix product per block runs sequentially.
    """
    state = _prepare(q, k, v, eta, alpha, theta, state, objective, decay_order, chunk, read)
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block={block!r} must be a positive integer")
    seg = plan_segments(q.shape[2], state.offset, chunk, aligned_block(chunk, block))
    la, lt = log_or_zeros(alpha, eta), None if theta is None else theta.log()
    run = _Runner(objective, decay_order, chunk, read == "after_write")
    ys, pos = [], 0
    for length, n in ((seg.prefix, 1), (seg.block * seg.n_blocks, seg.n_blocks), (seg.tail, 1)):
        if length == 0:
            continue
        sl = slice(pos, pos + length)
        cut = [None if x is None else x[:, :, sl] for x in (q, k, v, eta, la, lt)]
        y, state = run(*cut, n_blocks=n, state=state)
        ys.append(y)
        pos += length
    return (torch.cat(ys, dim=2) if ys else v.new_zeros(v.shape)), state


def _split(x: Optional[Tensor], n: int) -> Optional[Tensor]:
    """(B, H, n*L, ...) -> (B, H, n, L, ...)"""
    return None if x is None else x.reshape(x.shape[0], x.shape[1], n, x.shape[2] // n, *x.shape[3:])


class _Runner:
    """Processes ``n_blocks`` equal blocks that start on a mini-batch boundary, or (when the state has
    an open mini-batch) one prefix block whose gradients are all read at the state's anchor."""

    def __init__(self, objective: str, decay_order: str, chunk: int, after_write: bool):
        self.objective, self.before_step = objective, decay_order == "before_step"
        self.chunk, self.after_write = chunk, after_write

    def __call__(self, q, k, v, eta, la, lt, *, n_blocks: int, state: MemoryState):
        q, k, v, eta, la, lt = (_split(x, n_blocks) for x in (q, k, v, eta, la, lt))  # (B, H, N, L, .)
        length = q.shape[3]
        co = block_coefficients(la, lt, eta)
        m = state.weights[0]
        s = state.momentum[0] if lt is not None else None
        if state.offset:
            u_all, ms, ss, m, s = self._prefix(k, v, co, state, m, s)
        else:
            u_all, ms, ss, m_end = None, [], [], None
            uv, wm, ws = self._transform(k, v, co)
            us = []
            for n in range(n_blocks):
                ms.append(m)
                ss.append(s)
                u = uv[:, :, n]
                if wm is not None:
                    u = u - wm[:, :, n] @ m.mT
                    if ws is not None:
                        u = u - ws[:, :, n] @ s.mT
                us.append(u)
                m, s = self._advance(m, s, u, k[:, :, n], co, n)
            u_all = torch.stack(us, dim=2)                                    # (B, H, N, L, Dv)
        y = self._read(q, k, u_all, torch.stack(ms, 2), None if s is None else torch.stack(ss, 2), co)
        return y.flatten(2, 3), self._next_state(state, m, s, ms[-1], ss[-1], u_all, k, co, length)

    def _grad_rows(self, length: int, device) -> Tensor:
        """Index of each token's anchor row inside an aligned block: C*floor((s-1)/C), s = 1..L."""
        return torch.arange(length, device=device) // self.chunk * self.chunk

    def _transform(self, k, v, co: BlockCoefficients):
        """Solve (I + T) U = V − W_M M_0ᵀ − W_S S_0ᵀ up to the state terms: returns (Uv, W_M, W_S)."""
        if self.objective == "dot":
            return v, None, None
        g = self._grad_rows(k.shape[3], k.device)
        lg = co.log_gamma
        rho = (lg[..., 1:] - lg[..., g]).exp() if self.before_step else torch.ones_like(lg[..., 1:])
        wm = (rho * lg[..., g].exp())[..., None] * k                           # (B, H, N, L, Dk)
        ws = None if co.b is None else (rho * co.b[..., g])[..., None] * k
        rhs = [v, wm] + ([] if ws is None else [ws])
        if self.chunk < k.shape[3]:
            tri = rho[..., None] * co.c[..., g, :] * (k @ k.mT)                # (B, H, N, L, L) strictly lower
            sol = torch.linalg.solve_triangular(tri, torch.cat(rhs, -1), upper=False, unitriangular=True)
            rhs = list(sol.split([x.shape[-1] for x in rhs], dim=-1))
        return rhs[0], rhs[1], (rhs[2] if ws is not None else None)

    def _prefix(self, k, v, co, state: MemoryState, m, s):
        """Tokens finishing the open mini-batch: every gradient is read at the stored anchor."""
        u = v[:, :, 0]
        if self.objective == "l2":
            rho = state.anchor_decay[..., None] * co.log_gamma[:, :, 0, 1:].exp() if self.before_step \
                else torch.ones_like(co.log_gamma[:, :, 0, 1:])
            u = u - rho[..., None] * (k[:, :, 0] @ state.anchor[0].mT)
        m_next, s_next = self._advance(m, s, u, k[:, :, 0], co, 0)
        return u[:, :, None], [m], [s], m_next, s_next

    @staticmethod
    def _advance(m, s, u, k, co: BlockCoefficients, n: int):
        """State after a block: M_L = γ_L M_0 + b_L S_0 + Σ_s c_{L,s} u_s k_sᵀ (and S_L likewise)."""
        gamma_end = co.log_gamma[:, :, n, -1].exp()[..., None, None]
        m_next = gamma_end * m + (u * co.c[:, :, n, -1, :, None]).mT @ k
        if s is None:
            return m_next, None
        m_next = m_next + co.b[:, :, n, -1, None, None] * s
        s_next = co.theta_end[:, :, n, None, None] * s + (u * co.e[:, :, n, :, None]).mT @ k
        return m_next, s_next

    def _read(self, q, k, u, ms, ss, co: BlockCoefficients) -> Tensor:
        """y_t = γ_t M_0 q_t + b_t S_0 q_t + Σ_{s≤t} c_{t,s} (k_s·q_t) u_s, all blocks at once."""
        gamma, c, b = co.rows(self.after_write)
        y = gamma[..., None] * (q @ ms.mT) + (c * (q @ k.mT)) @ u
        if ss is not None:
            y = y + b[..., None] * (q @ ss.mT)
        return y

    def _next_state(self, state, m, s, m0, s0, u, k, co, length) -> MemoryState:
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
        lg = co.log_gamma[:, :, -1]
        cg = co.c[:, :, -1, g, :, None]
        anchor = lg[..., g].exp()[..., None, None] * m0 + (u[:, :, -1] * cg).mT @ k[:, :, -1]
        if s0 is not None:
            anchor = anchor + co.b[:, :, -1, g, None, None] * s0
        return MemoryState((m,), _opt(s), (anchor,), (lg[..., -1] - lg[..., g]).exp(), open_tokens)


def _opt(s: Optional[Tensor]) -> Optional[Tuple[Tensor]]:
    return None if s is None else (s,)
