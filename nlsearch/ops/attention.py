"""Causal softmax attention: the non-parametric, every-token memory (and the speed yardstick)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Fast path: ``scaled_dot_product_attention`` (flash / memory-efficient kernels where present)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def causal_attention_naive(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Reference: the full score matrix with an explicit causal mask."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.mT) * scale                                                # (B, H, T, T)
    t = q.shape[-2]
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
