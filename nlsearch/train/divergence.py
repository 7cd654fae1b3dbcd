"""Where a diverged training step went non-finite: one diagnostic forward of the failing batch.

When the loss of a step is NaN or infinite, the optimizer has not yet taken that step, so the model
still holds the weights that produced it and its forward can be run again with every module watched.
Forward hooks fire as each module's forward returns, children before their parents, so the first
module whose output (any tensor in it: the output, a layer's carried state) holds a non-finite number
is where the numbers first broke, and the largest finite output before it shows what was growing.
Runs only on failure: one extra forward, no gradients. A finite loss with a non-finite gradient is
caught before the optimizer step (:func:`nonfinite_gradients` names the parameters), since clipping
would turn every updated weight into NaN and leave only "non-finite parameters" to report.
"""
from __future__ import annotations

import math
from typing import Any, List, Tuple

import torch

from nlsearch.eval.forward import autocast


def _scan(value: Any) -> Tuple[float, bool]:
    """(largest finite |x|, every x finite) over the floating-point tensors in ``value`` (tensors,
    tuples, lists, dicts, named tuples and dataclass-like objects, nested)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.numel() == 0:
            return 0.0, True
        finite = torch.isfinite(value)
        largest = value.detach().abs().masked_fill(~finite, 0).max().item()
        return float(largest), bool(finite.all())
    if isinstance(value, dict):
        parts = list(value.values())
    elif isinstance(value, (tuple, list)):
        parts = list(value)
    elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
        parts = list(vars(value).values())
    else:
        return 0.0, True
    scans = [_scan(v) for v in parts]
    return max([s[0] for s in scans] + [0.0]), all(s[1] for s in scans)


def divergence_site(model: torch.nn.Module, inputs: torch.Tensor) -> str:
    """A short phrase naming where the numbers broke: non-finite parameters (an earlier update broke
    them), else the first module whose output is non-finite and the largest finite output before it,
    else that every output was finite (the loss itself overflowed)."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        return f"non-finite parameters: {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}"
    seen: List[Tuple[str, float, bool]] = []
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: seen.append((name, *_scan(out))))
             for name, module in model.named_modules() if name]
    try:
        with torch.no_grad(), autocast(inputs.device):
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    for i, (name, _, finite) in enumerate(seen):
        if not finite:
            before = max(seen[:i], key=lambda s: s[1], default=None)
            grown = f"; largest output before it: {before[0]} {before[1]:.3g}" if before is not None else ""
            return f"first non-finite output: {name}{grown}"
    largest = max(seen, key=lambda s: s[1], default=("", 0.0, True))
    return (f"every module's output finite (largest {largest[0]} {largest[1]:.3g}): the loss itself overflowed"
            if largest[0] and not math.isinf(largest[1]) else "every module's output finite")


def nonfinite_gradients(model: torch.nn.Module) -> str:
    """The parameters whose gradient holds a non-finite number, in the model's order (first three)."""
    bad = [name for name, p in model.named_parameters()
           if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    total = sum(1 for _ in model.parameters())
    return (f"non-finite gradients: {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''} ({len(bad)} of {total} "
            f"parameters)") if bad else "non-finite gradient norm"
