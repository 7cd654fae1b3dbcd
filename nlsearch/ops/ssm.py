"""Selective state-space scan (Mamba-1): a linear memory with a ``dot`` write and a data-dependent
diagonal decay. Per channel ``d`` and state ``n``:

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t        y_t = C_t h_t + D x_t

Layout (channels last, not the ``(B, H, T, D)`` of the memory ops, because ``B_t`` and ``C_t`` are
shared by every channel): x, delta ``(B, T, Dch)``; A ``(Dch, N)``; B, C ``(B, T, N)``; D ``(Dch,)``
or ``None`` (no skip); state h ``(B, Dch, N)``. A must be negative (and Δ ≥ 0) so that the decay lies in
(0, 1]; this is not checked, because checking values would synchronise with the device.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

NAMES = ("x", "delta", "A", "B", "C", "D", "h0")


def _check_tensor(name: str, t: Tensor, shape: Tuple[int, ...], like: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype != like.dtype:
        raise ValueError(f"{name} has dtype {t.dtype} but x has dtype {like.dtype}; pass one dtype")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but x is on {like.device}")


def check_scan_inputs(x, delta, A, B, C, D, h0) -> Tuple[int, int, int, int]:
    """Check the layout above; return ``(B, T, Dch, N)``."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (B, T, Dch), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    b, t, dch = x.shape
    if not isinstance(A, Tensor) or A.dim() != 2:
        shape = tuple(A.shape) if isinstance(A, Tensor) else type(A).__name__
        raise ValueError(f"A must have shape (Dch, N) = ({dch}, N), got {shape}")
    n = A.shape[1]
    expected = dict(x=(b, t, dch), delta=(b, t, dch), A=(dch, n), B=(b, t, n), C=(b, t, n), D=(dch,),
                    h0=(b, dch, n))
    for name, value in zip(NAMES, (x, delta, A, B, C, D, h0)):
        if value is not None or name not in ("D", "h0"):
            _check_tensor(name, value, expected[name], x)
    return b, t, dch, n


def selective_scan_naive(
    x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
    h0: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Reference: a per-token loop over the recurrence. Returns ``(y (B, T, Dch), h_T (B, Dch, N))``."""
    b, _, dch, n = check_scan_inputs(x, delta, A, B, C, D, h0)
    h = x.new_zeros(b, dch, n) if h0 is None else h0
    ys = []
    for xt, dt, bt, ct in zip(x.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1)):
        h = torch.exp(dt[..., None] * A) * h + (dt * xt)[..., None] * bt[:, None, :]   # (B, Dch, N)
        ys.append(torch.einsum("bdn,bn->bd", h, ct))
    y = torch.stack(ys, dim=1) if ys else torch.zeros_like(x)
    return (y if D is None else y + D * x), h


def selective_scan(
    x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
    h0: Optional[Tensor] = None, *, chunk: int = 64,
) -> Tuple[Tensor, Tensor]:
    """Chunked form of :func:`selective_scan_naive` (same signature plus ``chunk``, same results), one
    autograd node with a hand-written backward.

    The sequence is cut into ``n_c`` chunks of ``L = min(chunk, T)`` tokens (the last one padded with
    Δ = 0, x = 0: decay 1 and no write, so the state passes through); every step below runs over all
    chunks at once, so a call takes ``2L + n_c`` sequential steps instead of ``T``:

    1. each chunk's end state from zero, ``L`` steps of ``h ← exp(Δ_l A) ⊙ h + Δ_l x_l B_l``;
    2. the chunk-start states ``H_{c+1} = exp((Σ_l Δ_l) A) ⊙ H_c + h^{local}_{end,c}`` (``n_c`` steps: A
       is constant in time, so a chunk's decay is ``exp`` of its summed Δ times A);
    3. the scan again from the chunk starts, reading ``y_l = C_l h_l`` as it goes.

    Only the inputs and the chunk-start states are kept for the backward. It recomputes the states,
    runs the adjoint ``g_t = exp(Δ_{t+1} A) ⊙ g_{t+1} + C_t ⊗ ∂y_t`` backwards the same way (from zero
    in every chunk, the chunk carries, then again with them) and reads every gradient off ``h_t`` and
    ``g_t`` as it goes: with ``w_t = g_t ⊙ (h_t − u_t)`` (``= g_t ⊙ exp(Δ_t A) h_{t−1}``, ``u_t = Δ_t
    x_t B_t``), ``∂Δ_t = Σ_n w_t A + x_t Σ_n g_t B_t``, ``∂A = Σ_t w_t Δ_t``, ``∂x_t = Δ_t Σ_n g_t
    B_t``, ``∂B_t = Σ_d g_t Δ_t x_t``, ``∂C_t = Σ_d ∂y_t h_t``, ``∂h_0 = exp(Δ_1 A) ⊙ g_1``. Every
    step works on one ``(B, n_c, Dch, N)`` slab; no ``(T, Dch, N)`` tensor is formed but the states in
    the backward. Every exponent is a non-positive Δ·A (Δ ≥ 0, A < 0), so nothing overflows.
    ``chunk`` is a compute setting only. Not differentiable twice.
    """
    b, t, dch, n = check_scan_inputs(x, delta, A, B, C, D, h0)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r} must be a positive integer")
    if t == 0:
        return torch.zeros_like(x), (x.new_zeros(b, dch, n) if h0 is None else h0)
    length = min(chunk, t)
    n_c = -(-t // length)
    pad = n_c * length - t
    xp, dp, bp, cp = (F.pad(z, (0, 0, 0, pad)).unflatten(1, (n_c, length)) for z in (x, delta, B, C))
    start = x.new_zeros(b, dch, n) if h0 is None else h0
    y, h_end = _ChunkedScan.apply(xp, dp, A, bp, cp, start)                  # (B, n_c, L, Dch), (B, Dch, N)
    y = y.flatten(1, 2)[:, :t]                                                # (B, T, Dch)
    return (y if D is None else y + D * x), h_end


def _token_major(z: Tensor) -> Tensor:
    """(B, n_c, L, ·) -> (L, B, n_c, ·), contiguous: every step of the scans reads one slab."""
    return z.permute(2, 0, 1, 3).contiguous()


def _carry(first: Tensor, decay: Tensor, addend: Tensor, reverse: bool = False) -> Tensor:
    """``X_{c+1} = decay_c ⊙ X_c + addend_c`` from ``X_0 = first`` (``reverse``: ``X_c = decay_c ⊙
    X_{c+1} + addend_c`` from ``X_{n_c} = first``); every ``X`` as ``(B, n_c + 1, Dch, N)``."""
    n_c = decay.shape[1]
    seq = first.new_empty(first.shape[0], n_c + 1, *first.shape[1:])
    seq[:, -1 if reverse else 0] = first
    for c in (reversed(range(n_c)) if reverse else range(n_c)):
        src, dst = (c + 1, c) if reverse else (c, c + 1)
        torch.addcmul(addend[:, c], decay[:, c], seq[:, src], out=seq[:, dst])
    return seq


def _decay(d_l: Tensor, A: Tensor) -> Tensor:
    """exp(Δ_l A) for one slab: Δ_l (B, n_c, Dch) -> (B, n_c, Dch, N)."""
    return torch.mul(d_l[..., None], A).exp_()


def _scan_slabs(h: Tensor, d: Tensor, A: Tensor, xd: Tensor, bt: Tensor, out: Optional[Tensor] = None,
                ct: Optional[Tensor] = None, y: Optional[Tensor] = None) -> Tensor:
    """``h ← exp(Δ_l A) ⊙ h + (Δx)_l ⊗ B_l`` for l = 0..L−1 over all chunks at once, in place on the
    slab ``h`` (B, n_c, Dch, N). ``out`` (L, B, n_c, Dch, N): keep every state; ``ct``, ``y``: read
    ``y_l = h_l C_l`` into ``y`` (L, B, n_c, Dch)."""
    for i in range(d.shape[0]):
        if out is not None:
            h = torch.mul(h, _decay(d[i], A), out=out[i])
        else:
            h.mul_(_decay(d[i], A))
        h.addcmul_(xd[i, ..., None], bt[i, ..., None, :])
        if y is not None:
            torch.matmul(h, ct[i, ..., None], out=y[i, ..., None])
    return h


class _ChunkedScan(torch.autograd.Function):
    """x, Δ ``(B, n_c, L, Dch)``, A ``(Dch, N)``, B, C ``(B, n_c, L, N)``, start ``(B, Dch, N)``.

    Inside, every per-token tensor is token-major, ``(L, B, n_c, ·)``, so each of the ``L`` sequential
    steps reads and writes one contiguous slab."""

    @staticmethod
    def forward(ctx, xp, dp, A, bp, cp, start):
        ctx.set_materialize_grads(False)
        x, d, bt, ct = (_token_major(z) for z in (xp, dp, bp, cp))
        xd = d * x                                                            # Δx, (L, B, n_c, Dch)
        slab = (*x.shape[1:], A.shape[1])
        h_end = _scan_slabs(x.new_zeros(slab), d, A, xd, bt)                  # 1. local chunk ends
        chunk_decay = torch.exp(d.sum(0)[..., None] * A)                      # (B, n_c, Dch, N)
        starts = _carry(start, chunk_decay, h_end)                            # 2. (B, n_c + 1, Dch, N)
        y = x.new_empty(x.shape)
        _scan_slabs(starts[:, :-1].clone(), d, A, xd, bt, ct=ct, y=y)         # 3. y_t = h_t C_t
        ctx.save_for_backward(x, d, A, bt, ct, starts)
        return y.permute(1, 2, 0, 3), starts[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_end):
        x, d, A, bt, ct, starts = ctx.saved_tensors
        length = x.shape[0]
        dy = torch.zeros_like(x) if dy is None else _token_major(dy)
        xd = d * x
        states = x.new_empty(length, *starts[:, 1:].shape)                    # h_t, (L, B, n_c, Dch, N)
        _scan_slabs(starts[:, :-1], d, A, xd, bt, out=states)
        g = torch.zeros_like(states[0])
        for i in reversed(range(length)):                                     # the adjoint from zero
            if i < length - 1:
                g.mul_(_decay(d[i + 1], A))
            g.addcmul_(dy[i, ..., None], ct[i, ..., None, :])
        chunk_decay = torch.exp(d.sum(0)[..., None] * A)
        last = torch.zeros_like(starts[:, 0]) if dh_end is None else dh_end
        carries = _carry(last, chunk_decay, _decay(d[0], A).mul_(g), reverse=True)   # G_c = ∂L/∂H_c
        g = carries[:, 1:].clone()
        gb, d_b, d_delta = torch.empty_like(x), torch.empty_like(bt), torch.empty_like(x)
        wd = torch.zeros_like(g)                                              # Σ_l w_l Δ_l, for ∂A
        for i in reversed(range(length)):
            if i < length - 1:
                g.mul_(_decay(d[i + 1], A))
            g.addcmul_(dy[i, ..., None], ct[i, ..., None, :])
            torch.matmul(g, bt[i, ..., None], out=gb[i, ..., None])
            torch.matmul(xd[i, ..., None, :], g, out=d_b[i, ..., None, :])
            w = torch.addcmul(states[i], xd[i, ..., None], bt[i, ..., None, :], value=-1.0).mul_(g)
            wd.addcmul_(w, d[i, ..., None])
            torch.sum(w.mul_(A), -1, out=d_delta[i])                          # Σ_n w A
        d_c = (dy[..., None, :] @ states).squeeze(-2)                         # Σ_d ∂y h, (L, B, n_c, N)
        d_delta.addcmul_(x, gb)
        d_a = wd.sum((0, 1))
        back = lambda z: z.permute(1, 2, 0, 3)                                # noqa: E731 - to (B, n_c, L, ·)
        return back(gb.mul_(d)), back(d_delta), d_a, back(d_b), back(d_c), carries[:, 0]
