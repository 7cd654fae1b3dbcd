"""The state an associative memory carries from one piece of a sequence to the next."""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor


class MemoryState(NamedTuple):
    """Fast weights of a memory, per sequence and head.

    weights:  the memory ``M_t``, one tensor per layer, each ``(B, H, d_out, d_in)``; a linear memory
              has one layer ``(B, H, Dv, Dk)`` and is read as ``y = M q``.
    momentum: ``S_t`` of the momentum optimizer (same shapes as ``weights``), ``None`` for plain GD.
    anchor:   with mini-batch updates (chunk C > 1) the weights at the start of the unfinished
              mini-batch, where its remaining gradients are taken; ``None`` when ``offset == 0``.
    anchor_decay: ``(B, H)`` decay accumulated since the anchor (the ``before_step`` decay order reads
              the gradient at the decayed anchor); ``None`` when ``offset == 0``.
    offset:   tokens of the unfinished mini-batch already consumed (``0 <= offset < C``).
    """

    weights: Tuple[Tensor, ...]
    momentum: Optional[Tuple[Tensor, ...]] = None
    anchor: Optional[Tuple[Tensor, ...]] = None
    anchor_decay: Optional[Tensor] = None
    offset: int = 0


def zeros_linear_state(
    batch: int, heads: int, d_k: int, d_v: int, *, momentum: bool, dtype: torch.dtype, device
) -> MemoryState:
    """An empty linear memory (and momentum), the usual start of a sequence."""
    m = torch.zeros(batch, heads, d_v, d_k, dtype=dtype, device=device)
    return MemoryState(weights=(m,), momentum=(torch.zeros_like(m),) if momentum else None)
