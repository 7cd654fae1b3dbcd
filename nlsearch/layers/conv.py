"""Short causal depthwise convolution with a carried state (the last ``size - 1`` inputs)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from nlsearch.ops.conv import causal_conv


class ShortConv(nn.Module):
    """``silu`` of a causal depthwise convolution over ``size`` inputs (:func:`nlsearch.ops.conv.causal_conv`);
    the weight is kept as ``nn.Conv1d``'s ``(C, 1, size)`` parameter."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.size = size
        self.conv = nn.Conv1d(channels, channels, size, groups=channels, bias=False)

    def forward(self, x: Tensor, state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """x (B, T, C) -> (y (B, T, C), state (B, C, size-1)): SiLU(conv) over [state, x]."""
        keep = self.size - 1
        past = x.new_zeros(x.shape[0], keep, x.shape[2]) if state is None else state.transpose(1, 2).to(x.dtype)
        full = torch.cat([past, x], dim=1)                                     # (B, size-1+T, C)
        y = causal_conv(full, self.conv.weight.view(-1, self.size).t())
        return y, full[:, full.shape[1] - keep:].transpose(1, 2).clone()      # not a view of all of x

    def state_size(self) -> int:
        return self.conv.in_channels * (self.size - 1)
