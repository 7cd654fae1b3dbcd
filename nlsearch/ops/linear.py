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

from typing import Optional, Tuple

import torch
from torch import Tensor

from nlsearch.ops.blocks import (BlockCoefficients, UnitLowerInverse, aligned_block, block_coefficients,
                                 log_or_none, plan_segments)
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
    la, lt = log_or_none(alpha), log_or_none(theta)
    run = _Runner(objective, decay_order, chunk, read == "after_write")
    sizes = [seg.prefix, seg.block * seg.n_blocks, seg.tail]
    parts = [x.split(sizes, dim=2) if x is not None else [None] * 3 for x in (q, k, v, eta, la, lt)]
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

    With ``u_s = uv_s − W_M[s] M_0ᵀ − W_S[s] S_0ᵀ`` (the written values, :meth:`_transform`), the state
    ``Z = [M | S]`` moves across a block by one affine map ``Z' = Z P + Q`` whose ``P`` and ``Q`` are
    built for all blocks at once; only ``Z ← Z P_n + Q_n`` runs sequentially."""

    def __init__(self, objective: str, decay_order: str, chunk: int, after_write: bool):
        self.objective, self.before_step = objective, decay_order == "before_step"
        self.chunk, self.after_write = chunk, after_write

    def __call__(self, q, k, v, eta, la, lt, *, n_blocks: int, state: MemoryState):
        q, k, v, eta, la, lt = (_split(x, n_blocks) for x in (q, k, v, eta, la, lt))  # (B, H, N, L, .)
        co = block_coefficients(la, lt, eta)
        m0 = state.weights[0]
        z0 = m0 if lt is None else torch.cat([m0, state.momentum[0]], dim=-1)     # (B, H, Dv, Dk | 2Dk)
        if state.offset:
            uv, wm, ws = self._prefix(k, v, co, state), None, None
        else:
            uv, wm, ws = self._transform(k, v, co)
        p, qq = _transitions(uv, wm, ws, k, co)
        zs = [z0]
        for p_n, q_n in zip(p.unbind(2), qq.unbind(2)):                     # the only sequential part
            zs.append(torch.baddbmm(q_n.flatten(0, 1), zs[-1].flatten(0, 1), p_n.flatten(0, 1)).view_as(q_n))
        z_start = torch.stack(zs[:-1], dim=2)                                # (B, H, N, Dv, Dk | 2Dk)
        dk = k.shape[-1]
        ms, ss = z_start[..., :dk], (z_start[..., dk:] if lt is not None else None)
        u = uv
        if wm is not None:
            u = u - wm @ ms.mT
            if ws is not None:
                u = u - ws @ ss.mT
        y = self._read(q, k, u, ms, ss, co)
        z_end = zs[-1]
        m_end, s_end = z_end[..., :dk], (z_end[..., dk:] if lt is not None else None)
        last_s = None if ss is None else ss[:, :, -1]
        return y.flatten(2, 3), self._next_state(state, m_end, s_end, ms[:, :, -1], last_s, u, k, co)

    def _transform(self, k, v, co: BlockCoefficients):
        """Solve (I + T) U = V − W_M M_0ᵀ − W_S S_0ᵀ up to the state terms: returns (Uv, W_M, W_S).

        Token s reads its gradient at the weights of row g(s) = C·floor((s−1)/C) of the block; with
        ``before_step`` scaled by ρ_s = γ_s/γ_g(s). T_{s,r} = ρ_s c_{g(s),r} (k_s·k_r), strictly lower."""
        if self.objective == "dot":
            return v, None, None
        length = k.shape[3]
        if self.chunk == 1:
            g = slice(0, length)                                              # g(s) = s − 1: a view
        else:
            g = torch.arange(length, device=k.device) // self.chunk * self.chunk
        lg = co.log_gamma
        rho = (lg[..., 1:] - lg[..., g]).exp() if self.before_step else None
        scale = lg[..., g].exp() if rho is None else rho * lg[..., g].exp()
        wm = scale[..., None] * k                                             # (B, H, N, L, Dk)
        ws = None
        if co.b is not None:
            ws = (co.b[..., g] if rho is None else rho * co.b[..., g])[..., None] * k
        rhs = [v, wm] + ([] if ws is None else [ws])
        if self.chunk < length:
            tri = co.scores(k, k, g)                                          # (B, H, N, L, L)
            if rho is not None:
                tri = rho[..., None] * tri
            sol = UnitLowerInverse.apply(tri) @ torch.cat(rhs, -1)
            rhs = list(sol.split([x.shape[-1] for x in rhs], dim=-1))
        return rhs[0], rhs[1], (rhs[2] if ws is not None else None)

    def _prefix(self, k, v, co, state: MemoryState) -> Tensor:
        """Tokens finishing the open mini-batch: every gradient is read at the stored anchor."""
        if self.objective == "dot":
            return v
        ones = torch.ones_like(co.log_gamma[..., 1:])
        rho = state.anchor_decay[..., None, None] * co.log_gamma[..., 1:].exp() if self.before_step else ones
        return v - rho[..., None] * (k @ state.anchor[0][:, :, None].mT)

    def _read(self, q, k, u, ms, ss, co: BlockCoefficients) -> Tensor:
        """y_t = γ_t M_0 q_t + b_t S_0 q_t + Σ_{s≤t} c_{t,s} (k_s·q_t) u_s, all blocks at once."""
        rows = co.read_rows(self.after_write)
        gamma, b = co.gamma_b(rows)
        y = gamma[..., None] * (q @ ms.mT) + co.scores(q, k, rows) @ u
        if ss is not None:
            y = y + b[..., None] * (q @ ss.mT)
        return y

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
        lg = co.log_gamma[:, :, -1]
        cg = co.map(lambda x: x[:, :, -1]).row(g)[..., None]
        anchor = lg[..., g].exp()[..., None, None] * m0 + (u[:, :, -1] * cg).mT @ k[:, :, -1]
        if s0 is not None:
            anchor = anchor + co.b[:, :, -1, g, None, None] * s0
        return MemoryState((m,), _opt(s), (anchor,), (lg[..., -1] - lg[..., g]).exp(), open_tokens)


def _transitions(uv: Tensor, wm: Optional[Tensor], ws: Optional[Tensor], k: Tensor, co: BlockCoefficients):
    """P, Q of ``Z' = Z P + Q`` per block, from M_L = γ_L M_0 + b_L S_0 + uᵀ(c_L ⊙ k) and
    S_L = Θ_L S_0 + uᵀ(e ⊙ k) with u = uv − W_M M_0ᵀ − W_S S_0ᵀ.  Shapes (B, H, N, ., .)."""
    dk = k.shape[-1]
    eye = torch.eye(dk, dtype=k.dtype, device=k.device)
    kc = k * co.row(k.shape[-2])[..., None]                                   # (B, H, N, L, Dk)
    gamma_end = co.log_gamma[..., -1].exp()[..., None, None]
    p_mm = gamma_end * eye
    if wm is not None:
        p_mm = p_mm - wm.mT @ kc
    if co.b is None:
        return p_mm, uv.mT @ kc
    ke = k * co.e[..., None]
    p_ms = torch.zeros_like(p_mm) if wm is None else -(wm.mT @ ke)
    p_sm = co.b[..., -1, None, None] * eye
    p_ss = co.theta_end[..., None, None] * eye
    if ws is not None:
        p_sm, p_ss = p_sm - ws.mT @ kc, p_ss - ws.mT @ ke
    p = torch.cat([torch.cat([p_mm, p_ms], -1), torch.cat([p_sm, p_ss], -1)], -2)   # (B, H, N, 2Dk, 2Dk)
    return p, torch.cat([uv.mT @ kc, uv.mT @ ke], -1)


def _opt(s: Optional[Tensor]) -> Optional[Tuple[Tensor]]:
    return None if s is None else (s,)
