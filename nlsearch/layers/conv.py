"""Short causal depthwise convolution with a carried state (the last ``size - 1`` inputs)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ShortConv(nn.Module):
    def __init__(self, channels: int, size: int):
        super().__init__()
        self.size = size
        self.conv = nn.Conv1d(channels, channels, size, groups=channels, bias=False)

    def forward(self, x: Tensor, state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """x (B, T, C) -> (y (B, T, C), state (B, C, size-1)): SiLU(conv) over [state, x]."""
        xt = x.transpose(1, 2)                                                   # (B, C, T)
        if state is None:
            state = xt.new_zeros(xt.shape[0], xt.shape[1], self.size - 1)
        full = torch.cat([state, xt], dim=-1)                                    # (B, C, size-1+T)
        y = F.silu(self.conv(full)).transpose(1, 2)
        return y, full[..., full.shape[-1] - (self.size - 1):].clone()     # not a view of all of x

    def state_size(self) -> int:
        return self.conv.in_channels * (self.size - 1)
