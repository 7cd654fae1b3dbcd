"""The mixed-precision policy of the memory ops (docs/architecture.md, "The memory-rule grid").

Projections and MLPs may run under autocast (bfloat16 on a GPU); every memory op and scan computes
in float32 whatever its caller's dtype: half-precision inputs are cast up at the op boundary,
autocast is off inside (so no matmul of the decay coefficients, the triangular solve or the state
recurrence drops back to bfloat16), the output is cast back to the dtype of ``q`` and the returned
state stays in float32, across chunks and calls. float64 inputs stay float64 (the tests' reference
precision). Every RMSNorm normalises in float32 too (``nlsearch.layers.norm``).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
from torch import Tensor

from nlsearch.ops.state import MemoryState

HALF = (torch.float16, torch.bfloat16)


def up(x):
    """``x`` in float32 if it is a half-precision tensor, else ``x`` itself."""
    return x.float() if isinstance(x, Tensor) and x.dtype in HALF else x


def up_state(state: Optional[MemoryState]) -> Optional[MemoryState]:
    if not isinstance(state, MemoryState):
        return state
    tup = lambda xs: None if xs is None else tuple(up(x) for x in xs)  # noqa: E731
    return MemoryState(tup(state.weights), tup(state.momentum), tup(state.anchor), up(state.anchor_decay),
                       state.offset)


def autocast_off(like) -> contextlib.AbstractContextManager:
    """A context with autocast disabled on ``like``'s device (a no-op context when it is not on)."""
    device = like.device.type if isinstance(like, Tensor) else "cpu"
    if torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def float32_boundary(op):
    """Wrap a memory op ``op(q, k, v, eta, log_alpha, theta, state, **kw) -> (y, state)`` in the policy."""

    @functools.wraps(op)
    def wrapped(q, k, v, eta, log_alpha=None, theta=None, state=None, **kw):
        out_dtype = q.dtype if isinstance(q, Tensor) else None
        args = [up(x) for x in (q, k, v, eta, log_alpha, theta)]
        with autocast_off(q):
            y, new_state = op(*args, up_state(state), **kw)
        if out_dtype is not None and y.dtype != out_dtype:
            y = y.to(out_dtype)
        return y, new_state

    return wrapped
