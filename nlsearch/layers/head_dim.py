"""How many heads of which width: shared by every multi-head mixer and its config check."""
from __future__ import annotations

from typing import Optional


def head_dim(d_model: int, n_heads: int, explicit: Optional[int], path: str = "mixer") -> int:
    """``explicit`` if given, else ``d_model // n_heads``, which must then divide exactly."""
    if explicit is not None:
        return explicit
    if d_model % n_heads:
        raise ValueError(f"{path}.n_heads={n_heads} does not divide d_model={d_model}")
    return d_model // n_heads
