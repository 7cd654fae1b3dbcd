"""Argument checks shared by every memory op: errors name the argument and what is wrong."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from nlsearch.ops.state import MemoryState

OBJECTIVES = ("dot", "l2")
DECAY_ORDERS = ("with_step", "before_step")
READS = ("after_write", "before_write")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def check_chunk(chunk) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r} must be a positive integer (tokens per mini-batch update)")


def _check_float(name: str, t: Tensor, dtype: torch.dtype) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but q has dtype {dtype}; pass one dtype")


def check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    log_alpha: Optional[Tensor],
    theta: Optional[Tensor],
) -> tuple[int, int, int, int, int]:
    """Check the ``(B, H, T, D)`` layout; return ``(B, H, T, Dk, Dv)``."""
    if not isinstance(q, Tensor) or q.dim() != 4:
        shape = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
        raise ValueError(f"q must have shape (B, H, T, Dk), got {shape}")
    dtype = q.dtype
    _check_float("q", q, dtype)
    b, h, t, dk = q.shape
    for name, x in (("k", k), ("v", v)):
        _check_float(name, x, dtype)
        if x.dim() != 4 or x.shape[:3] != (b, h, t):
            raise ValueError(f"{name} must have shape ({b}, {h}, {t}, D) like q, got {tuple(x.shape)}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if k.shape[-1] != dk:
        raise ValueError(f"k has key dim {k.shape[-1]} but q has {dk}; they must match")
    for name, x in (("eta", eta), ("log_alpha", log_alpha), ("theta", theta)):
        if x is None:
            if name == "eta":
                raise ValueError("eta (per-token learning rate, shape (B, H, T)) is required")
            continue
        _check_float(name, x, dtype)
        if tuple(x.shape) != (b, h, t):
            raise ValueError(f"{name} must have shape (B, H, T) = {(b, h, t)}, got {tuple(x.shape)}")
    return b, h, t, dk, v.shape[-1]


def check_state(state: MemoryState, b: int, h: int, dk: int, dv: int, *, momentum: bool,
                chunk: int, dtype: torch.dtype) -> None:
    if not isinstance(state, MemoryState):
        raise TypeError(f"state must be a MemoryState, got {type(state).__name__}")
    ws = state.weights
    if len(ws) == 0:
        raise ValueError("state.weights is empty")
    for i, w in enumerate(ws):
        _check_float(f"state.weights[{i}]", w, dtype)
        if w.dim() != 4 or w.shape[:2] != (b, h):
            raise ValueError(f"state.weights[{i}] must have shape ({b}, {h}, out, in), got {tuple(w.shape)}")
    if ws[0].shape[-1] != dk:
        raise ValueError(f"state.weights[0] reads inputs of dim {ws[0].shape[-1]} but keys have dim {dk}")
    if ws[-1].shape[-2] != dv:
        raise ValueError(f"state.weights[-1] writes dim {ws[-1].shape[-2]} but values have dim {dv}")
    for i in range(1, len(ws)):
        if ws[i].shape[-1] != ws[i - 1].shape[-2]:
            raise ValueError(f"state.weights[{i}] input dim {ws[i].shape[-1]} != previous output "
                             f"dim {ws[i - 1].shape[-2]}")
    if momentum and state.momentum is None:
        raise ValueError("theta was given (momentum optimizer) but state.momentum is None")
    if not 0 <= state.offset < chunk:
        raise ValueError(f"state.offset={state.offset} must lie in [0, chunk={chunk})")
    if state.offset and (state.anchor is None or state.anchor_decay is None):
        raise ValueError(f"state.offset={state.offset} > 0 needs state.anchor and state.anchor_decay")
