"""The block scan of the linear memories, with a hand-written backward.

Every linear rule (any objective, decay, decay order, momentum, mini-batch, read order) reduces, per
block of L tokens, to the same computation on a state ``Z`` of shape ``(Dv, Dz)`` (``Z = M``, or
``Z = [M | S]`` with momentum; :mod:`nlsearch.ops.linear` derives the terms):

    A        = (Q Keᵀ) ⊙ Aw             read scores, Ke = η ⊙ K, Aw the causal coefficients c_{t,s}
    T        = (K Keᵀ) ⊙ Tw             the l2 rule's in-block dependence, Tw strictly lower
    [Uv | W] = (I + T)⁻¹ [V | W0]
    U_n      = Uv_n − W_n Z_nᵀ          the values actually written, given the state at block start
    Y_n      = Qz_n Z_nᵀ + A_n U_n      reads: the state's part plus the block's own writes
    Z_{n+1}  = Z_n P_n + U_nᵀ Kz_n      P_n the state's own transition (identity, γ_L I, or the
                                        momentum block matrix)

Only the last line runs sequentially. Autograd over these lines would keep every intermediate and
differentiate (I + T)⁻¹ generically (two L×L×L products per block). The backward written here runs
one sequential product per block, the adjoint ``G_n = E_n + G_{n+1} (P_n − WᵀKz)ᵀ``, and otherwise
only L×L×D products. It reads ``∂V = (I + T)⁻ᵀ ∂U``, ``∂W0 = −∂V Z`` and ``∂T = −∂V Uᵀ`` (strictly
lower) off the solved system ``(I + T) U = V − W0 Zᵀ``. It sums the gradients of shared operands
(``Qz = Q``, ``W0 = K``, ``Kz = Ke`` in the rules without decay) inside fused products. It is not
differentiable twice (no double backward).

Shapes: blocks are ``(B, H, N, L, ·)``, per-block matrices ``(B, H, N, ·, ·)``, the state
``(B, H, Dv, Dz)``. ``Aw`` and ``Tw`` are ``(L, L)`` masks or ``(B, H, N, L, L)`` coefficients.
``Tw = None``: nothing in a block depends on an earlier write of the block (the dot objective, or one
mini-batch per block); ``W0 = None`` as well: nothing depends on the state, ``U = V``. ``P`` is
``None`` for the identity, ``(B, H, N, 1, 1)`` for a multiple of it, or a full ``(B, H, N, Dz, Dz)``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def block_scan(q: Tensor, k: Tensor, ke: Tensor, a_w: Tensor, t_w: Optional[Tensor], w0: Optional[Tensor],
               v: Tensor, kz: Tensor, qz: Tensor, p: Optional[Tensor], z0: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns ``Y (B, H, N, L, Dv)``, the states at every block boundary ``(B, H, N+1, Dv, Dz)`` and
    the written values ``U (B, H, N, L, Dv)``."""
    if t_w is not None and w0 is None:
        raise ValueError("block_scan: an in-block system T needs its state term W0")
    return _BlockScan.apply(q, k, ke, a_w, t_w, w0, v, kz, qz, p, z0)


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, *x.shape[-2:])


def _addmm(c: Optional[Tensor], a: Tensor, b: Tensor, beta: float = 1.0, alpha: float = 1.0) -> Tensor:
    """``beta c + alpha (a @ b)`` over leading batch dims in one fused product; ``c=None``: ``a @ b``."""
    shape = (*a.shape[:-1], b.shape[-1])
    if c is None:
        if alpha == 1.0:
            return torch.bmm(_flat(a), _flat(b)).view(shape)
        c, beta = a.new_empty(shape), 0.0                                  # beta = 0: c is not read
    return torch.baddbmm(_flat(c.expand(shape)), _flat(a), _flat(b), beta=beta, alpha=alpha).view(shape)


def _acc(c: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0) -> Tensor:
    """``c += alpha (a @ b)`` in place on a contiguous ``c`` this module owns (no copy of ``c``)."""
    assert c.is_contiguous(), "_acc needs a contiguous accumulator (a reshape would copy it)"
    _flat(c).baddbmm_(_flat(a), _flat(b), alpha=alpha)
    return c


def _recurrence(first: Tensor, addend: Tensor, trans: Optional[Tensor], p: Optional[Tensor], *,
                reverse: bool = False) -> Tensor:
    """The sequential part, forward and adjoint: ``X_0 = first, X_{n+1} = X_n M_n + addend_n`` (or, with
    ``reverse``, ``X_N = first, X_n = X_{n+1} M_nᵀ + addend_n``), where ``M_n`` is ``trans_n`` if given,
    else the scalar ``p_n`` if given, else the identity. ``addend`` is ``(B, H, N, ·, ·)``; returns every
    ``X_n`` as ``(N+1, B, H, ·, ·)`` (contiguous per n, so each step writes in place)."""
    n_blocks = addend.shape[2]
    seq = first.new_empty(n_blocks + 1, *first.shape)
    seq[-1 if reverse else 0] = first
    for n in (reversed(range(n_blocks)) if reverse else range(n_blocks)):
        src, dst = (seq[n + 1], seq[n]) if reverse else (seq[n], seq[n + 1])
        if trans is not None:
            m = _flat(trans[:, :, n])
            torch.baddbmm(_flat(addend[:, :, n]), _flat(src), m.mT if reverse else m, out=_flat(dst))
        elif p is not None:
            torch.addcmul(addend[:, :, n], src, p[:, :, n], out=dst)
        else:
            torch.add(src, addend[:, :, n], out=dst)
    return seq


def unit_lower_inverse(tri: Tensor) -> Tensor:
    """``(I + T)⁻¹`` for strictly lower-triangular ``T`` (its diagonal and upper part are not read).

    Formed once, then applied by matrix products: on CPU a batched triangular solve costs about as
    much per small matrix whether its right-hand side is the identity or the values, and the
    backward needs ``(I + T)⁻ᵀ`` too."""
    n = tri.shape[-1]
    work = tri if tri.dtype in (torch.float32, torch.float64) else tri.float()   # no half-precision solve
    eye = torch.eye(n, dtype=work.dtype, device=work.device).expand_as(work)
    return torch.linalg.solve_triangular(work, eye, upper=False, unitriangular=True).to(tri.dtype)


class _BlockScan(torch.autograd.Function):
    """Under CUDA autocast the scan runs in float32 (its inputs are cast, autocast is off inside): the
    state recurrence and the triangular solve are not safe in bfloat16. The caller casts back."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, q, k, ke, a_w, t_w, w0, v, kz, qz, p, z0):
        ctx.set_materialize_grads(False)
        ctx.shared = (qz is q, w0 is k, kz is ke)
        a = _addmm(None, q, ke.mT).mul_(a_w)
        inv = None
        uv, w = v, w0
        if t_w is not None:
            inv = unit_lower_inverse(_addmm(None, k, ke.mT).mul_(t_w))
            uv, w = _addmm(None, inv, v), _addmm(None, inv, w0)
        trans = None                                                        # P − WᵀKz when not a scalar
        if w is not None:
            eye = torch.eye(kz.shape[-1], dtype=kz.dtype, device=kz.device)
            trans = _addmm(eye if p is None else p * eye if p.shape[-1] == 1 else p, w.mT, kz, alpha=-1.0)
        elif p is not None and p.shape[-1] != 1:
            trans = p                                                       # else p is None or a scalar
        inject = uv.mT @ kz                                                 # UvᵀKz, (B, H, N, Dv, Dz)
        z_all = _recurrence(z0, inject, trans, p).permute(1, 2, 0, 3, 4)    # (B, H, N+1, Dv, Dz)
        z_start = z_all[:, :, :-1].contiguous()
        if w is None:
            u = uv
        else:                                        # uv is this function's own product unless T is absent
            u = _acc(uv, w, z_start.mT, alpha=-1.0) if inv is not None else _addmm(uv, w, z_start.mT, alpha=-1.0)
        y = _acc(_addmm(None, a, u), qz, z_start.mT)
        ctx.save_for_backward(q, k, ke, a_w, t_w, a, inv, kz, qz, p, w, trans, z_start, u)
        return y, z_all, u

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy, dz_all, du_out):
        q, k, ke, a_w, t_w, a, inv, kz, qz, p, w, trans, z_start, u = ctx.saved_tensors
        qz_is_q, w0_is_k, kz_is_ke = ctx.shared
        need = ctx.needs_input_grad
        if dy is None:
            dy = torch.zeros_like(u)
        base_du = _addmm(None, a.mT, dy)                                    # ∂U except through Z_{n+1}
        if du_out is not None:
            base_du += du_out
        e = _addmm(None, dy.mT, qz)                                         # (B, H, N, Dv, Dz)
        if dz_all is not None:
            e += dz_all[:, :, :-1]
        if w is not None:
            e = _acc(e, base_du.mT, w, alpha=-1.0)
        g_end = e.new_zeros(*e.shape[:2], *e.shape[3:]) if dz_all is None else dz_all[:, :, -1]
        g_seq = _recurrence(g_end, e, trans, p, reverse=True)              # G_n = ∂Z_n, (N+1, B, H, Dv, Dz)
        g_next = g_seq[1:].permute(1, 2, 0, 3, 4).contiguous()              # (B, H, N, Dv, Dz)
        du = _acc(base_du, kz, g_next.mT)
        d_kz = _addmm(None, u, g_next)
        d_qz = _addmm(None, dy, z_start)
        d_p = None
        if need[9]:
            d_p = z_start.mT @ g_next
            if p.shape[-1] == 1:
                d_p = d_p.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
        d_a = _addmm(None, dy, u.mT)                                        # ∂A, then ∂(Q Keᵀ) in place
        d_a_w = _addmm(None, q, ke.mT).mul_(d_a) if need[3] else None
        d_a.mul_(a_w)
        d_q = _acc(d_qz, d_a, ke) if qz_is_q else _addmm(None, d_a, ke)
        d_ke = _acc(d_kz, d_a.mT, q) if kz_is_ke else _addmm(None, d_a.mT, q)
        d_k = d_t_w = d_w0 = None
        d_v = du
        if w is not None:
            # U = (I + T)⁻¹ (V − W0 Zᵀ): ∂V = (I + T)⁻ᵀ ∂U, ∂W0 = −∂V Z, ∂T = −∂V Uᵀ
            if inv is not None:
                d_v = _addmm(None, inv.mT, du)
            d_w0 = _addmm(None, d_v, z_start, alpha=-1.0)
            if inv is not None:
                d_tri = _addmm(None, d_v, u.mT, alpha=-1.0)
                d_t_w = _addmm(None, k, ke.mT).mul_(d_tri).tril_(-1) if need[4] else None   # T's read part
                d_tri.mul_(t_w)
                d_k = _acc(d_w0, d_tri, ke) if w0_is_k else _addmm(None, d_tri, ke)
                d_ke = _acc(d_ke, d_tri.mT, k)
            elif w0_is_k:
                d_k = d_w0
        return (d_q, d_k, d_ke, d_a_w, d_t_w, None if w0_is_k else d_w0, d_v,
                None if kz_is_ke else d_kz, None if qz_is_q else d_qz, d_p, g_seq[0].clone())   # not the buffer
