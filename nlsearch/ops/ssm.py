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
    """Chunked form of :func:`selective_scan_naive` (same signature plus ``chunk``, same results).

    The sequence is cut into ``n_c`` chunks of ``L = min(chunk, T)`` tokens (the last one padded with
    Δ = 0, x = 0: decay 1 and no write, so the state passes through). Every exponent is a sum of
    non-positive terms Δ·A, so nothing overflows, and no ``L × L`` matrix is formed (A varies per
    channel and state, so a masked ``exp(S_t − S_s)`` matrix would cost ``L`` times the memory of the
    states themselves):

    1. local states from zero at every chunk start, one step per position, all chunks at once;
    2. the chunk-start states, one step per chunk: ``H_{c+1} = exp(S_L^c) ⊙ H_c + h_L^{c,local}``;
    3. ``h_t = h_t^{local} + exp(S_t) ⊙ H_c`` with ``S_t`` the cumulative sum of Δ·A since the chunk
       start, and ``y_t = C_t h_t + D x_t``.

    ``L + n_c`` sequential steps instead of ``T``; ``chunk`` is a compute setting only.
    """
    b, t, dch, n = check_scan_inputs(x, delta, A, B, C, D, h0)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r} must be a positive integer")
    if t == 0:
        return torch.zeros_like(x), (x.new_zeros(b, dch, n) if h0 is None else h0)
    length = min(chunk, t)
    n_c = -(-t // length)
    pad = n_c * length - t
    xp, dp, bp, cp = (F.pad(z, (0, 0, 0, pad)) for z in (x, delta, B, C))    # (B, n_c·L, .)
    log_a = (dp[..., None] * A).view(b, n_c, length, dch, n)                  # (B, n_c, L, Dch, N) ≤ 0
    u = ((dp * xp)[..., None] * bp[:, :, None, :]).view(b, n_c, length, dch, n)
    h_local = _local_states(log_a.exp(), u)                                   # (B, n_c, L, Dch, N)
    decay = log_a.cumsum(dim=2).exp()                                         # exp(S_t), in (0, 1]
    starts = [x.new_zeros(b, dch, n) if h0 is None else h0]
    for d_c, e_c in zip(decay[:, :, -1].unbind(1), h_local[:, :, -1].unbind(1)):
        starts.append(d_c * starts[-1] + e_c)                                 # (B, Dch, N)
    h_start = torch.stack(starts[:-1], dim=1)                                 # (B, n_c, Dch, N)
    h = h_local + decay * h_start[:, :, None]                                 # (B, n_c, L, Dch, N)
    y = torch.einsum("bcldn,bcln->bcld", h, cp.view(b, n_c, length, n))
    y = y.reshape(b, n_c * length, dch)[:, :t]                                # (B, T, Dch)
    return (y if D is None else y + D * x), starts[-1]


def _local_states(a: Tensor, u: Tensor) -> Tensor:
    """h_l = a_l ⊙ h_{l-1} + u_l from h_{-1} = 0 along dim 2, every chunk at once."""
    a_l, u_l = a.unbind(2), u.unbind(2)
    hs = [u_l[0]]                                                             # (B, n_c, Dch, N) each
    for a_i, u_i in zip(a_l[1:], u_l[1:]):
        hs.append(a_i * hs[-1] + u_i)
    return torch.stack(hs, dim=2)
