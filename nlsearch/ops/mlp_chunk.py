"""One mini-batch step of an MLP memory, with a hand-written backward.

Per head, for a mini-batch of L tokens whose gradients are all taken at the anchor weights ``A_i``
(layers ``i = 1..n``, ``X_0 = K``):

    Z_i = X_{i-1} A_iᵀ,  X_i = σ(Z_i) (i < n),  O = Z_n (+ K with the residual)
    Δ_n = O − V (l2) or −V (dot),  Δ_{i-1} = T_{i-1} ⊙ σ'(Z_{i-1}),  T_{i-1} = Δ_i A_i
                                             the gradient of layer i at token s is Δ_i,s X_{i-1,s}ᵀ
    reads, H_0 = Q:  R_i = g ⊙ (H_{i-1} W_iᵀ) + b ⊙ (H_{i-1} S_iᵀ) − (C ⊙ (H_{i-1} X_{i-1}ᵀ)) Δ_i,
                     H_i = σ(R_i) (i < n),  Y = R_n (+ Q)
    new state:       W_i' = γ_L W_i + b_L S_i − (Δ_i ⊙ c_L)ᵀ X_{i-1},  S_i' = Θ_L S_i − (Δ_i ⊙ e)ᵀ X_{i-1}

``W`` are the current weights (the anchor itself unless the mini-batch was left open by an earlier
piece), ``S`` the momentum, ``C = c_{t,s}`` the read rows' coefficients, ``g``/``b`` their γ_t, b_t and
``c_L``, ``γ_L``, ``b_L``, ``e``, ``Θ_L`` the end-of-block ones (:mod:`nlsearch.ops.blocks`).

Autograd through these lines keeps about ten nodes per layer and a copy of every broadcast factor;
the backward written here runs the chain rule of the lines above in reverse with one fused product
per term, including the second-order part (Δ depends on the anchor through σ'(Z), so ∂Z picks up a
σ'' term). ``read_from = r``: heads before r are written but not read; Q, Y, C, g and b then cover
heads r.. only. Not differentiable twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from nlsearch.ops.scan import _acc


def _silu_derivs(z: Tensor, second: bool) -> Tuple[Tensor, Optional[Tensor]]:
    sig = torch.sigmoid(z)
    one_minus = 1 - sig
    d1 = sig * (1 + z * one_minus)
    d2 = sig * one_minus * (2 + z * (1 - 2 * sig)) if second else None
    return d1, d2


def _gelu_derivs(z: Tensor, second: bool) -> Tuple[Tensor, Optional[Tensor]]:
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    d1 = 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * pdf
    return d1, (pdf * (2 - z * z) if second else None)


ACTIVATION_DERIVS = {"silu": (F.silu, _silu_derivs), "gelu": (F.gelu, _gelu_derivs)}


@dataclass(frozen=True)
class ChunkSpec:
    """What a call computes (everything that is not a tensor)."""

    depth: int
    objective: str            # "l2" or "dot"
    activation: str           # a key of ACTIVATION_DERIVS
    residual: bool
    read_from: int
    has_anchor: bool          # anchor weights given apart from the current weights
    momentum: bool


def mlp_chunk(spec: ChunkSpec, q: Tensor, k: Tensor, v: Tensor, c: Tensor, c_end: Tensor,
              g: Optional[Tensor], g_end: Optional[Tensor], b: Optional[Tensor], b_end: Optional[Tensor],
              e: Optional[Tensor], theta_end: Optional[Tensor], weights: Sequence[Tensor],
              anchor: Optional[Sequence[Tensor]], momentum: Optional[Sequence[Tensor]]):
    """Returns ``(Y, W' per layer, S' per layer or None)``.

    Shapes (``Hr = H − read_from``): q ``(B, Hr, L, D)``, k ``(B, H, L, D)``, v ``(B, H, L, Dout)``,
    c ``(B, Hr, L, L)``, g and b ``(B, Hr, L)`` (``None``: g ≡ 1, no momentum), c_end and e
    ``(B, H, L)``, g_end, b_end, theta_end ``(B, H)`` (``g_end=None``: γ_L = 1), weights, anchor and
    momentum ``(B, H, out, in)`` per layer."""
    tensors = list(weights) + list(anchor or ()) + list(momentum or ())
    out = _MLPChunk.apply(spec, q, k, v, c, c_end, g, g_end, b, b_end, e, theta_end, *tensors)
    n = spec.depth
    return out[0], out[1:1 + n], (out[1 + n:] if spec.momentum else None)


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ over the last dim of a ⊙ b."""
    return (a * b).sum(-1)


def _frob(a: Tensor, b: Tensor) -> Tensor:
    """Σ over the last two dims of a ⊙ b, per batch and head."""
    return torch.linalg.vecdot(a.flatten(-2), b.flatten(-2))


def _scaled(w: Tensor, scale: Optional[Tensor]) -> Tensor:
    """A fresh ``scale ⊙ w`` (``scale`` per batch and head; ``None``: a contiguous copy of ``w``)."""
    return w * scale[..., None, None] if scale is not None else w.clone(memory_format=torch.contiguous_format)


def _mm_into(acc: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0) -> Tensor:
    """``acc += alpha · (a @ b)`` in place, batched over the leading dims (fused when ``acc`` is contiguous)."""
    return _acc(acc, a, b, alpha=alpha) if acc.is_contiguous() else acc.add_(a @ b, alpha=alpha)


def _outer_sum(acc: Optional[Tensor], pairs: Sequence[Tuple[Tensor, Tensor]], like: Optional[Tensor] = None) -> Tensor:
    """``acc + Σ leftᵀ right`` over (left ``(B, H, L, o)``, right ``(B, H, L, i)``) pairs, in one product
    (the pairs are joined along the token axis); ``acc=None``: a fresh tensor shaped like ``like``."""
    if not pairs:
        return acc if acc is not None else torch.zeros(like.shape, dtype=like.dtype, device=like.device)
    left = pairs[0][0] if len(pairs) == 1 else torch.cat([p[0] for p in pairs], dim=-2)
    right = pairs[0][1] if len(pairs) == 1 else torch.cat([p[1] for p in pairs], dim=-2)
    if acc is None:
        return left.mT @ right
    return _mm_into(acc, left.mT, right)


class _MLPChunk(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, spec: ChunkSpec, q, k, v, c, c_end, g, g_end, b, b_end, e, theta_end, *tensors):
        ctx.set_materialize_grads(False)
        n, r = spec.depth, spec.read_from
        weights = tensors[:n]
        anchor = tensors[n:2 * n] if spec.has_anchor else weights
        mom = tensors[-n:] if spec.momentum else None
        act, derivs = ACTIVATION_DERIVS[spec.activation]
        # gradients at the anchor: X_i, Z_i (i < n), Δ_i, T_i
        xs, zs, sps = [k], [], []
        h = k
        for i, a in enumerate(anchor):
            z = h @ a.mT
            if i < n - 1:
                zs.append(z)
                sps.append(derivs(z, False)[0])
                h = act(z)
                xs.append(h)
            else:
                h = z
        if spec.objective == "l2":
            delta = h.add_(k) if spec.residual else h
            delta = delta.sub_(v)
        else:
            delta = -v
        deltas: List[Tensor] = [delta]
        ts: List[Tensor] = []
        for i in range(n - 1, 0, -1):
            t = deltas[0] @ anchor[i]
            ts.insert(0, t)
            deltas.insert(0, t * sps[i - 1])
        # reads of heads r..
        hs, pres, hws, hss, raw = [q], [], [], [], []
        h = q
        for i, w in enumerate(weights):
            x_r, d_r = xs[i][:, r:], deltas[i][:, r:]
            raw.append(h @ x_r.mT)                                              # H Xᵀ
            p = raw[-1] * c
            z = h @ w[:, r:].mT
            if g is not None:
                hws.append(z)
                z = z * g[..., None]
            if mom is not None:
                hs_mom = h @ mom[i][:, r:].mT
                hss.append(hs_mom)
                z = z.addcmul_(hs_mom, b[..., None])
            z = z.sub_(p @ d_r)
            if i < n - 1:
                pres.append(z)
                h = act(z)
                hs.append(h)
            else:
                h = z
        y = h.add_(q) if spec.residual else h
        # the state at the end of the mini-batch: W' = γ_L W (+ b_L S) − (Δ ⊙ c_L)ᵀ X, S' = Θ_L S − (Δ ⊙ e)ᵀ X
        new_w, new_s = [], []
        for i, w in enumerate(weights):
            nw = _scaled(w, g_end)
            if mom is not None:
                nw.addcmul_(mom[i], b_end[..., None, None])
                new_s.append(_mm_into(_scaled(mom[i], theta_end), (deltas[i] * e[..., None]).mT, xs[i], alpha=-1.0))
            new_w.append(_mm_into(nw, (deltas[i] * c_end[..., None]).mT, xs[i], alpha=-1.0))
        ctx.spec = spec
        ctx.n_lists = (len(xs), len(zs), len(deltas), len(ts), len(hs), len(pres), len(hws), len(hss), len(raw))
        ctx.save_for_backward(q, c, c_end, g, g_end, b, b_end, e, theta_end, *weights,
                              *(anchor if spec.has_anchor else ()), *(mom or ()),
                              *xs, *zs, *deltas, *ts, *hs, *pres, *hws, *hss, *raw)
        return (y, *new_w, *new_s)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy, *dstate):
        spec: ChunkSpec = ctx.spec
        n, r = spec.depth, spec.read_from
        saved = list(ctx.saved_tensors)
        q, c, c_end, g, g_end, b, b_end, e, theta_end = saved[:9]
        rest = saved[9:]
        weights, rest = rest[:n], rest[n:]
        if spec.has_anchor:
            anchor, rest = rest[:n], rest[n:]
        else:
            anchor = weights
        mom = None
        if spec.momentum:
            mom, rest = rest[:n], rest[n:]
        lists = []
        for size in ctx.n_lists:
            lists.append(rest[:size])
            rest = rest[size:]
        xs, zs, deltas, ts, hs, pres, hws, hss, raw = lists
        need = ctx.needs_input_grad
        derivs = ACTIVATION_DERIVS[spec.activation][1]
        d_new_w = dstate[:n]
        d_new_s = dstate[n:] if spec.momentum else (None,) * n

        # ∂ of the weights, anchor and momentum: sums of outer products over the block's tokens, gathered
        # as (left, right) pairs (leftᵀ right) and summed in one product per layer at the end
        w_pairs: List[List[Tuple[Tensor, Tensor]]] = [[] for _ in range(n)]
        a_pairs = [[] for _ in range(n)] if spec.has_anchor else w_pairs
        s_pairs: List[List[Tuple[Tensor, Tensor]]] = [[] for _ in range(n)]
        d_w = [_scaled(dw, g_end) if dw is not None else torch.zeros(w.shape, dtype=w.dtype, device=w.device)
               for dw, w in zip(d_new_w, weights)]
        d_s = None
        if mom is not None:
            d_s = [torch.zeros(s.shape, dtype=s.dtype, device=s.device) for s in mom]
            for i in range(n):
                if d_new_w[i] is not None:
                    d_s[i].addcmul_(d_new_w[i], b_end[..., None, None])
                if d_new_s[i] is not None:
                    d_s[i].addcmul_(d_new_s[i], theta_end[..., None, None])
        d_delta = [torch.zeros_like(d) for d in deltas]
        d_x = [torch.zeros_like(x) for x in xs]
        d_c = torch.zeros_like(c) if need[4] else None
        d_g = torch.zeros_like(g) if g is not None and need[6] else None
        d_b = torch.zeros_like(b) if b is not None and need[8] else None

        # reads, layer n down to 1
        d_q = None
        if dy is not None:
            d_q = dy.clone() if spec.residual else torch.zeros_like(q)
            d_r_pre = dy
            for i in reversed(range(n)):
                h, w_r, x_r, dl_r = hs[i], weights[i][:, r:], xs[i][:, r:], deltas[i][:, r:]
                g_dr = d_r_pre * g[..., None] if g is not None else d_r_pre
                if r == 0:
                    w_pairs[i].append((g_dr, h))
                else:
                    d_w[i][:, r:] += g_dr.mT @ h
                if d_g is not None:
                    d_g += _rowdot(d_r_pre, hws[i])
                d_h = g_dr @ w_r
                if mom is not None:
                    b_dr = d_r_pre * b[..., None]
                    if r == 0:
                        s_pairs[i].append((b_dr, h))
                    else:
                        d_s[i][:, r:] += b_dr.mT @ h
                    d_h = d_h.add_(b_dr @ mom[i][:, r:])
                    if d_b is not None:
                        d_b += _rowdot(d_r_pre, hss[i])
                scores = raw[i]                                               # H Xᵀ
                d_p = d_r_pre @ dl_r.mT                                       # −∂P
                _mm_into(d_delta[i][:, r:], (scores * c).mT, d_r_pre, alpha=-1.0)
                if d_c is not None:
                    d_c.addcmul_(d_p, scores, value=-1.0)
                d_p.mul_(c)                                                   # −∂(H Xᵀ)
                d_h = _mm_into(d_h, d_p, x_r, alpha=-1.0)
                _mm_into(d_x[i][:, r:], d_p.mT, h, alpha=-1.0)
                if i > 0:
                    d_r_pre = d_h.mul_(derivs(pres[i - 1], False)[0])
                else:
                    d_q += d_h

        # the end-of-block state (∂W, ∂S of its own terms are in d_w, d_s already)
        d_c_end = torch.zeros_like(c_end) if need[5] else None
        d_g_end = torch.zeros_like(g_end) if g_end is not None and need[7] else None
        d_b_end = torch.zeros_like(b_end) if b_end is not None and need[9] else None
        d_e = torch.zeros_like(e) if e is not None and need[10] else None
        d_theta_end = torch.zeros_like(theta_end) if theta_end is not None and need[11] else None
        for i in range(n):
            for grad, coef, d_coef in ((d_new_w[i], c_end, d_c_end), (d_new_s[i], e, d_e)):
                if grad is None:
                    continue
                m = xs[i] @ grad.mT                                            # (L, out)
                d_delta[i].addcmul_(m, coef[..., None], value=-1.0)
                if d_coef is not None:
                    d_coef -= _rowdot(deltas[i], m)
                _mm_into(d_x[i], deltas[i] * coef[..., None], grad, alpha=-1.0)
            if d_new_w[i] is not None:
                if d_g_end is not None:
                    d_g_end += _frob(weights[i], d_new_w[i])
                if d_b_end is not None:
                    d_b_end += _frob(mom[i], d_new_w[i])
            if d_new_s[i] is not None and d_theta_end is not None:
                d_theta_end += _frob(mom[i], d_new_s[i])

        # Δ_{i} = (Δ_{i+1} A_{i+1}) ⊙ σ'(Z_i), from the first layer up
        # (σ'(Z_i) is taken once here and reused by the forward chain below)
        d_z: List[Optional[Tensor]] = [None] * n
        sps: List[Tensor] = []
        for i in range(n - 1):
            sp, spp = derivs(zs[i], True)
            sps.append(sp)
            d_z[i] = d_delta[i] * ts[i] * spp
            d_t = d_delta[i] * sp
            _mm_into(d_delta[i + 1], d_t, anchor[i + 1].mT)
            a_pairs[i + 1].append((deltas[i + 1], d_t))
        d_v = -d_delta[-1]
        # O = Z_n (+ K) and the forward chain down to K
        dz = d_delta[-1] if spec.objective == "l2" else None
        if dz is not None and spec.residual:
            d_x[0] += dz
        for i in reversed(range(n)):
            if dz is not None:
                a_pairs[i].append((dz, xs[i]))
                _mm_into(d_x[i], dz, anchor[i])
            if i > 0:
                dz = (d_x[i] * sps[i - 1]).add_(d_z[i - 1])
        d_a = [_outer_sum(None, pairs, a) for pairs, a in zip(a_pairs, anchor)] if spec.has_anchor else None
        for i in range(n):
            _outer_sum(d_w[i], w_pairs[i])
            if d_s is not None:
                _outer_sum(d_s[i], s_pairs[i])
        return (None, d_q, d_x[0], d_v, d_c, d_c_end, d_g, d_g_end, d_b, d_b_end, d_e, d_theta_end,
                *d_w, *(d_a or ()), *(d_s or ()))
