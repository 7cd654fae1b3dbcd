"""MLP associative memory (per head ``M(x) = x + W_d σ(… σ(W_1 x))``): naive reference and chunk form.

The update equations are those of :mod:`nlsearch.ops.linear` with ``G_t = ∇_W ℓ(M̃; k_t, v_t)`` taken
through the MLP: the Titans rule (l2, momentum, decay) and the TTT-MLP mini-batch rule (l2, GD) are
points of this grid. Gradients of a mini-batch are all read at its start weights, so the fast form
computes a whole mini-batch at once; ``chunk=1`` is exact per-token learning but sequential.
Retention enters as ``log_alpha = log α_t ∈ [-inf, 0]`` (as in :mod:`nlsearch.ops.linear`).
Only ``decay_order="with_step"`` exists here: reading gradients at decayed weights would give each
token of a mini-batch its own weights.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from nlsearch.ops.blocks import BlockCoefficients, block_coefficients, log_or_none, plan_segments
from nlsearch.ops.mlp_chunk import ACTIVATION_DERIVS, ChunkSpec, mlp_chunk
from nlsearch.ops.precision import float32_boundary
from nlsearch.ops.state import MemoryState
from nlsearch.ops.validate import OBJECTIVES, READS, check_choice, check_chunk, check_inputs, check_state
from nlsearch.runtime import step_function


ACTIVATIONS: Dict[str, Callable[[Tensor], Tensor]] = {name: fns[0] for name, fns in ACTIVATION_DERIVS.items()}


def _prepare(q, k, v, eta, log_alpha, theta, state, objective, chunk, read, activation, residual, read_from):
    if isinstance(read_from, bool) or not isinstance(read_from, int) or read_from < 0:
        raise ValueError(f"read_from={read_from!r} must be a non-negative integer (the first head read)")
    if read_from:                   # q holds the read heads only: everything else is checked against k
        b, h, _, dk, dv = check_inputs(k, k, v, eta, log_alpha, theta)
        if read_from >= h:
            raise ValueError(f"read_from={read_from} must be below the number of heads H={h}")
        if not isinstance(q, Tensor) or q.dim() != 4 or q.shape[1] != h - read_from:
            shape = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
            raise ValueError(f"with read_from={read_from}, q must have H - read_from = {h - read_from} "
                             f"heads, got shape {shape}")
        check_inputs(q, k[:, read_from:], v[:, read_from:], eta[:, read_from:], None, None)
    else:
        b, h, _, dk, dv = check_inputs(q, k, v, eta, log_alpha, theta)
    check_choice("objective", objective, OBJECTIVES)
    check_choice("read", read, READS)
    check_choice("activation", activation, ACTIVATIONS)
    check_chunk(chunk)
    if state is None:
        raise ValueError("an MLP memory needs state (its initial weights, (B, H, out, in) per layer)")
    check_state(state, b, h, dk, dv, momentum=theta is not None, chunk=chunk, dtype=q.dtype)
    if residual and dk != dv:
        raise ValueError(f"residual=True needs key dim == value dim, got {dk} and {dv}")


def mlp_forward(weights: Sequence[Tensor], x: Tensor, activation: str, residual: bool) -> Tensor:
    """Evaluate the memory on inputs ``x (B, H, ..., D)`` with per-head weights ``(B, H, out, in)``."""
    act = ACTIVATIONS[activation]
    h = x.reshape(x.shape[0] * x.shape[1], math.prod(x.shape[2:-1]), x.shape[-1])  # (B·H, N, D), N may be 0
    for i, w in enumerate(weights):
        h = torch.bmm(h, w.reshape(-1, *w.shape[-2:]).mT)                     # flat: no reshapes in matmul
        if i < len(weights) - 1:
            h = act(h)
    h = h.view(*x.shape[:-1], h.shape[-1])
    return h + x if residual else h


@float32_boundary
def mlp_memory_naive(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, log_alpha: Optional[Tensor] = None,
    theta: Optional[Tensor] = None, state: Optional[MemoryState] = None, *, objective: str = "l2",
    chunk: int = 1, read: str = "after_write", activation: str = "silu", residual: bool = True,
    read_from: int = 0,
) -> Tuple[Tensor, MemoryState]:
    """Reference: per-token loop, gradients by ``torch.func.grad`` of the inner loss."""
    _prepare(q, k, v, eta, log_alpha, theta, state, objective, chunk, read, activation, residual, read_from)

    def inner_loss(weights, kt, vt):
        out = mlp_forward(weights, kt, activation, residual)
        return 0.5 * ((out - vt) ** 2).sum() if objective == "l2" else -(out * vt).sum()

    grad_fn = torch.func.grad(inner_loss)
    m = tuple(state.weights)
    s = tuple(state.momentum) if theta is not None else None
    anchor = state.anchor if state.offset else None
    anchor_decay = state.anchor_decay if state.offset else None
    offset, ys = state.offset, []
    for t in range(q.shape[2]):
        if offset == 0:
            anchor, anchor_decay = m, torch.ones_like(eta[:, :, t])
        a = torch.ones_like(eta[:, :, t]) if log_alpha is None else log_alpha[:, :, t].exp()
        anchor_decay = anchor_decay * a
        grads = grad_fn(anchor, k[:, :, t], v[:, :, t])
        steps = tuple(-eta[:, :, t, None, None] * g for g in grads)
        if s is not None:
            s = tuple(theta[:, :, t, None, None] * si + st for si, st in zip(s, steps))
            steps = s
        m_prev = m
        m = tuple(a[..., None, None] * mi + st for mi, st in zip(m, steps))
        read_m = m if read == "after_write" else m_prev
        ys.append(mlp_forward([w[:, read_from:] for w in read_m], q[:, :, t], activation, residual))
        offset = (offset + 1) % chunk
    y = torch.stack(ys, dim=2) if ys else q.new_zeros(*q.shape[:-1], v.shape[-1])
    return y, MemoryState(m, s, anchor if offset else None, anchor_decay if offset else None, offset)


@float32_boundary
def mlp_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, log_alpha: Optional[Tensor] = None,
    theta: Optional[Tensor] = None, state: Optional[MemoryState] = None, *, objective: str = "l2",
    chunk: int = 1, read: str = "after_write", activation: str = "silu", residual: bool = True,
    read_from: int = 0,
) -> Tuple[Tensor, MemoryState]:
    """Chunk form of :func:`mlp_memory_naive`: one sequential step per mini-batch of ``chunk`` tokens.

    Per mini-batch: one forward/backward of the MLP at the anchor weights for all its tokens; the
    per-token weights ``M_t`` are never built: each layer's read ``M_t a_t`` is an attention-like
    product over the mini-batch's gradients (outer products ``δ_s x_sᵀ``).
    The step is one autograd node with a hand-written backward (:mod:`nlsearch.ops.mlp_chunk`).

    ``read_from``: heads before it are written but not read (memories kept only for their state, as
    the self-modifying layer's projection memories); ``q`` then has ``H − read_from`` heads, and so
    has ``y``.
    """
    _prepare(q, k, v, eta, log_alpha, theta, state, objective, chunk, read, activation, residual, read_from)
    seg = plan_segments(q.shape[2], state.offset, chunk, chunk)
    lengths = ([seg.prefix] if seg.prefix else []) + [chunk] * seg.n_blocks + ([seg.tail] if seg.tail else [])
    coefs = _chunk_coefficients(log_alpha, log_or_none(theta), eta, seg)
    chunk_fn = _ChunkStep(objective, read == "after_write", activation, residual, read_from, log_alpha is not None)
    pieces = [x.split(lengths, dim=2) for x in (q, k, v)]      # split once: one concat in backward
    ys, step = [], step_function(_ChunkStep.__call__)
    for qc, kc, vc, co in zip(*pieces, coefs):
        y, state = step(chunk_fn, qc, kc, vc, co, state, chunk)
        ys.append(y)
    return (torch.cat(ys, dim=2) if ys else q.new_zeros(*q.shape[:-1], v.shape[-1])), state


def _chunk_coefficients(la: Tensor, lt: Optional[Tensor], eta: Tensor, seg) -> List[BlockCoefficients]:
    """Coefficients of every segment (prefix, full chunks batched together, tail), in order."""
    sizes = [seg.prefix, seg.n_blocks * seg.block, seg.tail]
    parts = [x.split(sizes, dim=2) if x is not None else [None] * 3 for x in (la, lt, eta)]
    out: List[BlockCoefficients] = []
    for i, (a, t, e) in enumerate(zip(*parts)):
        if sizes[i] == 0:
            continue
        if i != 1:
            out.append(block_coefficients(a, t, e))
            continue
        split = [None if x is None else x.unflatten(2, (seg.n_blocks, seg.block)) for x in (a, t, e)]
        co = block_coefficients(*split)                                       # (B, H, N, C, ...)
        unbound = co.map(lambda x: x.unbind(2))                               # one backward concat
        out.extend(unbound.map(lambda xs, n=n: xs[n]) for n in range(seg.n_blocks))
    return out


class _ChunkStep:
    """One mini-batch (or part of one): its coefficients, then :func:`mlp_chunk` (gradients at the
    anchor, reads and state update in closed form, with a hand-written backward)."""

    def __init__(self, objective: str, after_write: bool, activation: str, residual: bool, read_from: int = 0,
                 decay: bool = False):
        self.objective, self.after_write, self.activation, self.residual = objective, after_write, activation, residual
        self.read_from, self.decay = read_from, decay

    def __call__(self, q, k, v, co: BlockCoefficients, state: MemoryState, chunk: int):
        weights, mom = state.weights, state.momentum if co.b is not None else None
        r, length = self.read_from, q.shape[2]
        rco = co if r == 0 else co.map(lambda x: x[:, r:])                    # heads r: are read
        rows = rco.read_rows(self.after_write)
        c = rco.weights(rows) * rco.eta[..., None, :]                          # c_{t,s}, (B, Hr, L, L)
        g = rco.log_gamma[..., rows].exp() if self.decay else None
        g_end = co.log_gamma[..., -1].exp() if self.decay else None
        b = b_end = e = theta_end = None
        if mom is not None:
            b, b_end, e, theta_end = rco.b[..., rows], co.b[..., -1], co.e, co.theta_end
        spec = ChunkSpec(len(weights), self.objective, self.activation, self.residual, r,
                         has_anchor=bool(state.offset), momentum=mom is not None)
        y, new_w, new_s = mlp_chunk(spec, q, k, v, c, co.row(length), g, g_end, b, b_end, e, theta_end,
                                    weights, state.anchor if state.offset else None, mom)
        anchor = state.anchor if state.offset else weights
        offset = state.offset + length
        if offset >= chunk:
            return y, MemoryState(new_w, new_s)
        decay = co.log_gamma[..., -1].exp() * (state.anchor_decay if state.offset else 1.0)
        return y, MemoryState(new_w, new_s, tuple(anchor), decay, offset)
