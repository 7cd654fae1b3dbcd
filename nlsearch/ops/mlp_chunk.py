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



def _silu_second(u: Tensor, z: Tensor) -> Tensor:
    """``u ⊙ σ''(z)``, ``σ'' = s (1 − s) (2 + z (1 − 2s))``, ``s = sigmoid(z)``."""
    sig = torch.sigmoid(z)
    return torch.rsub(sig, 1, alpha=2).mul_(z).add_(2).mul_(torch.addcmul(sig, sig, sig, value=-1)).mul_(u)


def _gelu_second(u: Tensor, z: Tensor) -> Tensor:
    """``u ⊙ σ''(z)``, ``σ'' = φ(z) (2 − z²)``, φ the standard normal density."""
    zz = z * z
    return torch.exp(zz * -0.5).mul_(1 / math.sqrt(2 * math.pi)).mul_(torch.rsub(zz, 2)).mul_(u)


ACTIVATION_DERIVS = {
    "silu": (F.silu, torch.ops.aten.silu_backward, _silu_second),
    "gelu": (F.gelu, torch.ops.aten.gelu_backward, _gelu_second),
}
"""name: (σ, ``(u, z) -> u ⊙ σ'(z)``, ``(u, z) -> u ⊙ σ''(z)``); the first-order one is ATen's fused backward."""


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



def _flat(x: Tensor) -> Tensor:
    """``(B, H, a, b)`` -> ``(B·H, a, b)``: the layout every product below runs in (a view when it can be)."""
    return x.reshape(-1, *x.shape[-2:])


def _col(x: Optional[Tensor], length: Optional[int] = None) -> Optional[Tensor]:
    """A per-token ``(B, H, L)`` (``length`` given) or per-head ``(B, H)`` factor as a ``(B·H, L or 1, 1)``
    column that scales the rows of a flat operand."""
    if x is None:
        return None
    return x.reshape(-1, length, 1) if length is not None else x.reshape(-1, 1, 1)


def _heads(x: Tensor, batch: int, r: int) -> Tensor:
    """Heads ``r..`` of a flat ``(B·H, ·, ·)`` tensor, flat and contiguous: one copy here rather than one
    inside every product that reads them."""
    return x if r == 0 else x.unflatten(0, (batch, -1))[:, r:].flatten(0, 1)


def _add_mm(acc: Optional[Tensor], a: Tensor, b: Tensor, alpha: float = 1.0) -> Tensor:
    """``acc + alpha (a @ b)`` in place (``acc=None``: the product alone), one fused op either way."""
    if acc is None:
        return torch.baddbmm(a.new_zeros(()), a, b, beta=0.0, alpha=alpha) if alpha != 1.0 else torch.bmm(a, b)
    return acc.baddbmm_(a, b, alpha=alpha)


def _add_mm_heads(acc: Optional[Tensor], a: Tensor, b: Tensor, alpha: float, batch: int, r: int,
                  like: Tensor) -> Tensor:
    """:func:`_add_mm` for a product that covers heads ``r..`` of ``acc`` only (``acc=None``: zeros
    shaped like ``like`` elsewhere)."""
    if r == 0:
        return _add_mm(acc, a, b, alpha)
    if acc is None:
        acc = torch.zeros_like(like)
    part = _add_mm(None, a, b, alpha)
    acc.unflatten(0, (batch, -1))[:, r:].add_(part.unflatten(0, (batch, -1)))
    return acc


def _outer_sum(acc: Optional[Tensor], pairs: Sequence[Tuple[Tensor, Tensor]], like: Tensor) -> Tensor:
    """``acc + Σ leftᵀ right`` over (left ``(B·H, L, o)``, right ``(B·H, L, i)``) pairs, one fused product
    each (joining the pairs along the token axis first costs more in copies than it saves); ``acc=None``:
    zero, no pairs either: zeros like ``like``."""
    for left, right in pairs:
        acc = _add_mm(acc, left.mT, right)
    return acc if acc is not None else torch.zeros_like(like)


def _vecdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ over the last dim of a ⊙ b."""
    return torch.linalg.vecdot(a, b)


def _frob(a: Tensor, b: Tensor) -> Tensor:
    """Σ over the last two dims of a ⊙ b, per (flat) batch and head."""
    return torch.linalg.vecdot(a.flatten(-2), b.flatten(-2))


def _plus(acc: Optional[Tensor], x: Tensor) -> Tensor:
    """``acc + x`` (in place; ``acc=None``: ``x``)."""
    return x if acc is None else acc.add_(x)


def _scaled(w: Tensor, scale: Optional[Tensor]) -> Tensor:
    """A fresh ``scale ⊙ w`` (``scale`` a ``(B·H, 1, 1)`` column; ``None``: a contiguous copy of ``w``)."""
    return w * scale if scale is not None else w.clone(memory_format=torch.contiguous_format)


class _MLPChunk(torch.autograd.Function):
    """Every product runs on flat ``(B·H, ·, ·)`` operands (one ``bmm``/``baddbmm`` each, no reshapes
    inside ``matmul``); the read heads' slices of X, Δ, W, S are copied once and saved; σ'(·) products
    are ATen's fused activation backward; accumulators start as their first term, not as zeros."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, spec: ChunkSpec, q, k, v, c, c_end, g, g_end, b, b_end, e, theta_end, *tensors):
        ctx.set_materialize_grads(False)
        n, r, batch, length = spec.depth, spec.read_from, k.shape[0], k.shape[2]
        act, vjp, _ = ACTIVATION_DERIVS[spec.activation]
        weights = [_flat(w) for w in tensors[:n]]
        anchor = [_flat(a) for a in tensors[n:2 * n]] if spec.has_anchor else weights
        mom = [_flat(s) for s in tensors[-n:]] if spec.momentum else None
        q3, k3, v3, c3 = _flat(q), _flat(k), _flat(v), _flat(c)
        g3, b3, c_end3, e3 = _col(g, length), _col(b, length), _col(c_end, length), _col(e, length)
        g_end3, b_end3, theta_end3 = _col(g_end), _col(b_end), _col(theta_end)
        # gradients at the anchor: X_i, Z_i (i < n), Δ_i, T_i
        xs, zs = [k3], []
        h = k3
        for i, a in enumerate(anchor):
            z = torch.bmm(h, a.mT)
            if i < n - 1:
                zs.append(z)
                h = act(z)
                xs.append(h)
            else:
                h = z
        if spec.objective == "l2":
            delta = h.add_(k3) if spec.residual else h
            delta = delta.sub_(v3)
        else:
            delta = -v3
        deltas: List[Tensor] = [delta]
        ts: List[Tensor] = []
        for i in range(n - 1, 0, -1):
            t = torch.bmm(deltas[0], anchor[i])
            ts.insert(0, t)
            deltas.insert(0, vjp(t, zs[i - 1]))
        # reads of heads r..
        x_r, d_r, w_r = ([_heads(x, batch, r) for x in xs_] for xs_ in (xs, deltas, weights))
        s_r = [_heads(s, batch, r) for s in mom] if mom is not None else []
        hs, pres, hws, hss, raw, ps = [q3], [], [], [], [], []
        h = q3
        for i in range(n):
            raw.append(torch.bmm(h, x_r[i].mT))                                 # H Xᵀ
            ps.append(raw[-1] * c3)
            z = torch.bmm(h, w_r[i].mT)
            if g3 is not None:
                hws.append(z)
                z = z * g3
            if mom is not None:
                hss.append(torch.bmm(h, s_r[i].mT))
                z = z.addcmul_(hss[-1], b3)
            z = z.baddbmm_(ps[-1], d_r[i], alpha=-1.0)
            if i < n - 1:
                pres.append(z)
                h = act(z)
                hs.append(h)
            else:
                h = z
        y = h.add_(q3) if spec.residual else h
        # the state at the end of the mini-batch: W' = γ_L W (+ b_L S) − (Δ ⊙ c_L)ᵀ X, S' = Θ_L S − (Δ ⊙ e)ᵀ X
        new_w, new_s, dcs, des = [], [], [], []
        for i, w in enumerate(weights):
            nw = _scaled(w, g_end3)
            dcs.append(deltas[i] * c_end3)
            if mom is not None:
                nw.addcmul_(mom[i], b_end3)
                des.append(deltas[i] * e3)
                new_s.append(_scaled(mom[i], theta_end3).baddbmm_(des[-1].mT, xs[i], alpha=-1.0))
            new_w.append(nw.baddbmm_(dcs[-1].mT, xs[i], alpha=-1.0))
        ctx.spec, ctx.batch = spec, batch
        ctx.shapes = [None if x is None else x.shape for x in (q, k, v, c, c_end, g, g_end, b, b_end, e, theta_end,
                                                                *tensors)]
        lists = (xs, zs, deltas, ts, hs, pres, hws, hss, raw, ps, x_r, d_r, w_r, s_r, dcs, des)
        ctx.n_lists = tuple(len(x) for x in lists)
        ctx.save_for_backward(c3, g3, g_end3, b3, b_end3, e3, theta_end3, c_end3, *weights,
                              *(anchor if spec.has_anchor else ()), *(mom or ()), *(x for xs_ in lists for x in xs_))
        return (y.view(*q.shape[:-1], y.shape[-1]), *(x.view(w.shape) for x, w in zip(new_w + new_s, tensors[:n] * 2)))

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy, *dstate):
        spec: ChunkSpec = ctx.spec
        n, r, batch = spec.depth, spec.read_from, ctx.batch
        saved = list(ctx.saved_tensors)
        c, g, g_end, b, b_end, e, theta_end, c_end = saved[:8]
        rest = saved[8:]
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
        xs, zs, deltas, ts, hs, pres, hws, hss, raw, ps, x_r, d_r, w_r, s_r, dcs, des = lists
        need = ctx.needs_input_grad
        _, vjp, second = ACTIVATION_DERIVS[spec.activation]
        d_new_w = [None if d is None else _flat(d) for d in dstate[:n]]
        d_new_s = [None if d is None else _flat(d) for d in dstate[n:]] if spec.momentum else [None] * n

        # ∂ of the weights, anchor and momentum: sums of outer products over the block's tokens, gathered
        # as (left, right) pairs (leftᵀ right) and summed in one product per layer at the end
        w_pairs: List[List[Tuple[Tensor, Tensor]]] = [[] for _ in range(n)]
        a_pairs = [[] for _ in range(n)] if spec.has_anchor else w_pairs
        s_pairs: List[List[Tuple[Tensor, Tensor]]] = [[] for _ in range(n)]
        d_w: List[Optional[Tensor]] = [None if dw is None else _scaled(dw, g_end) for dw in d_new_w]
        d_s: List[Optional[Tensor]] = [None] * n
        if mom is not None:
            for i in range(n):
                for grad, coef in ((d_new_w[i], b_end), (d_new_s[i], theta_end)):
                    if grad is not None:
                        d_s[i] = grad * coef if d_s[i] is None else d_s[i].addcmul_(grad, coef)
        d_delta: List[Optional[Tensor]] = [None] * n
        d_x: List[Optional[Tensor]] = [None] * n

        # the end-of-block state (∂W, ∂S of its own terms are in d_w, d_s already)
        d_c_end = d_e = d_g_end = d_b_end = d_theta_end = None
        for i in range(n):
            for grad, coef, scaled, slot in ((d_new_w[i], c_end, dcs, 0), (d_new_s[i], e, des, 1)):
                if grad is None:
                    continue
                m = torch.bmm(xs[i], grad.mT)                                  # (L, out)
                d_delta[i] = (torch.mul(m, coef).neg_() if d_delta[i] is None
                              else d_delta[i].addcmul_(m, coef, value=-1.0))
                if need[5 + 5 * slot]:                                         # c_end, e
                    term = _vecdot(deltas[i], m).neg_()
                    if slot == 0:
                        d_c_end = _plus(d_c_end, term)
                    else:
                        d_e = _plus(d_e, term)
                d_x[i] = _add_mm(d_x[i], scaled[i], grad, alpha=-1.0)
            if d_new_w[i] is not None:
                if g_end is not None and need[7]:
                    d_g_end = _plus(d_g_end, _frob(weights[i], d_new_w[i]))
                if b_end is not None and need[9]:
                    d_b_end = _plus(d_b_end, _frob(mom[i], d_new_w[i]))
            if d_new_s[i] is not None and theta_end is not None and need[11]:
                d_theta_end = _plus(d_theta_end, _frob(mom[i], d_new_s[i]))

        # reads, layer n down to 1
        d_q = d_c = d_g = d_b = None
        if dy is not None:
            dy = _flat(dy)
            d_r_pre = dy
            for i in reversed(range(n)):
                h = hs[i]
                g_dr = d_r_pre * g if g is not None else d_r_pre
                if r == 0:
                    w_pairs[i].append((g_dr, h))
                else:
                    d_w[i] = _add_mm_heads(d_w[i], g_dr.mT, h, 1.0, batch, r, weights[i])
                if g is not None and need[6]:
                    d_g = _plus(d_g, _vecdot(d_r_pre, hws[i]))
                d_h = torch.bmm(g_dr, w_r[i])
                if mom is not None:
                    b_dr = d_r_pre * b
                    if r == 0:
                        s_pairs[i].append((b_dr, h))
                    else:
                        d_s[i] = _add_mm_heads(d_s[i], b_dr.mT, h, 1.0, batch, r, mom[i])
                    d_h = d_h.baddbmm_(b_dr, s_r[i])
                    if need[8]:
                        d_b = _plus(d_b, _vecdot(d_r_pre, hss[i]))
                d_p = torch.bmm(d_r_pre, d_r[i].mT)                           # −∂P
                d_delta[i] = _add_mm_heads(d_delta[i], ps[i].mT, d_r_pre, -1.0, batch, r, deltas[i])
                if need[4]:
                    d_c = (torch.mul(d_p, raw[i]).neg_() if d_c is None
                           else d_c.addcmul_(d_p, raw[i], value=-1.0))
                d_p.mul_(c)                                                   # −∂(H Xᵀ)
                d_h = d_h.baddbmm_(d_p, x_r[i], alpha=-1.0)
                d_x[i] = _add_mm_heads(d_x[i], d_p.mT, h, -1.0, batch, r, xs[i])
                if i > 0:
                    d_r_pre = vjp(d_h, pres[i - 1])
                else:
                    d_q = d_h.add_(dy) if spec.residual else d_h
        d_delta = [torch.zeros_like(x) if d is None else d for d, x in zip(d_delta, deltas)]
        d_x = [torch.zeros_like(x) if d is None else d for d, x in zip(d_x, xs)]

        # Δ_{i} = (Δ_{i+1} A_{i+1}) ⊙ σ'(Z_i), from the first layer up: ∂T_i = ∂Δ_i ⊙ σ'(Z_i), and the
        # σ'' part of ∂Z_i, ∂Δ_i ⊙ T_i ⊙ σ''(Z_i)
        d_z: List[Tensor] = []
        for i in range(n - 1):
            d_z.append(second(d_delta[i] * ts[i], zs[i]))
            d_t = vjp(d_delta[i], zs[i])
            d_delta[i + 1].baddbmm_(d_t, anchor[i + 1].mT)
            a_pairs[i + 1].append((deltas[i + 1], d_t))
        d_v = -d_delta[-1]
        # O = Z_n (+ K) and the forward chain down to K
        dz = d_delta[-1] if spec.objective == "l2" else None
        if dz is not None and spec.residual:
            d_x[0] += dz
        for i in reversed(range(n)):
            if dz is not None:
                a_pairs[i].append((dz, xs[i]))
                d_x[i].baddbmm_(dz, anchor[i])
            if i > 0:
                dz = vjp(d_x[i], zs[i - 1]).add_(d_z[i - 1])
        d_a = [_outer_sum(None, pairs, a) for pairs, a in zip(a_pairs, anchor)] if spec.has_anchor else None
        d_w = [_outer_sum(d, pairs, w) for d, pairs, w in zip(d_w, w_pairs, weights)]
        if mom is not None:
            d_s = [_outer_sum(d, pairs, s) for d, pairs, s in zip(d_s, s_pairs, mom)]
        grads = (d_q, d_x[0], d_v, d_c, d_c_end, d_g, d_g_end, d_b, d_b_end, d_e, d_theta_end,
                 *d_w, *(d_a or ()), *(d_s if mom is not None else ()))
        return (None, *(None if d is None else d.view(shape) for d, shape in zip(grads, ctx.shapes)))
