"""Short causal depthwise convolution followed by SiLU, on ``(B, T, C)`` inputs.

    y_t = silu(Σ_{k<K} w_k ⊙ x_{t+k})    over ``x`` = [the previous K−1 inputs (state); this call's T inputs]

``w`` is ``(K, C)`` (tap k of channel c; tap K−1 meets the newest input), so ``x`` holds ``T + K − 1`` rows
and ``y`` ``T``. The fast form runs the K taps as fused multiply-adds in the time-major layout the layers
use and writes the backward by hand (``∂x`` the same taps shifted the other way, ``∂w_k`` one reduction
per tap); ``nn.Conv1d``'s depthwise kernel, the naive twin, needs channel-major copies and its backward
was most of the convolution's time on a CPU (``nlsearch bench ops``). Runs in the dtype of ``x``
(``w`` is cast to it; autocast is not consulted: a bfloat16 ``x`` from an autocast projection gives a
bfloat16 convolution, a float32 ``x`` a float32 one); ``∂w`` comes back in ``w``'s dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def _check(x: Tensor, w: Tensor) -> None:
    if x.dim() != 3 or w.dim() != 2 or x.shape[-1] != w.shape[-1]:
        raise ValueError(f"causal_conv needs x (B, T + K - 1, C) and w (K, C), got {tuple(x.shape)} and "
                         f"{tuple(w.shape)}")
    if x.shape[1] < w.shape[0] - 1:
        raise ValueError(f"x has {x.shape[1]} rows, fewer than the K - 1 = {w.shape[0] - 1} of the state")


def causal_conv_naive(x: Tensor, w: Tensor) -> Tensor:
    """Reference: ``F.conv1d`` with one group per channel, in the channel-major layout."""
    _check(x, w)
    weight = w.to(x.dtype).t().unsqueeze(1)                                     # (C, 1, K)
    return F.silu(F.conv1d(x.transpose(1, 2), weight, groups=x.shape[-1])).transpose(1, 2)


def causal_conv(x: Tensor, w: Tensor) -> Tensor:
    """Fast form of :func:`causal_conv_naive`: one autograd node, time-major, taps as fused products."""
    _check(x, w)
    return _CausalConv.apply(x, w)


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        taps, t = w.shape[0], x.shape[1] - w.shape[0] + 1
        wx = w.to(x.dtype)
        pre = x[:, :t] * wx[0]
        for k in range(1, taps):
            pre.addcmul_(x[:, k:k + t], wx[k])
        ctx.save_for_backward(x, wx, pre)
        ctx.w_dtype = w.dtype
        return F.silu(pre)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, wx, pre = ctx.saved_tensors
        taps, t = wx.shape[0], pre.shape[1]
        g = torch.ops.aten.silu_backward(dy, pre)                                # ∂ before the SiLU
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = x.new_zeros(x.shape)
            for k in range(taps):
                dx[:, k:k + t].addcmul_(g, wx[k])
        if ctx.needs_input_grad[1]:
            dw = torch.stack([(g * x[:, k:k + t]).sum((0, 1)) for k in range(taps)]).to(ctx.w_dtype)
        return dx, dw
