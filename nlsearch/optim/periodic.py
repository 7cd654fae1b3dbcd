"""The outer clock of CMS (``clock: steps``): parameters of period C step once every C optimizer calls
with the SUM of their gradients over the window.

Any ``torch.optim.Optimizer`` is wrapped, unchanged: on a call where a period's window is still open,
its parameters' gradients are held aside (their ``.grad`` is ``None`` while the inner optimizer
steps, which every built-in optimizer reads as "skip this parameter": no update, no weight decay,
no moment or step-count change) and put back afterwards, so ``backward`` keeps adding to them.
Gradients are summed, never averaged and never dropped; a period-C parameter's gradient is zeroed
only by the :meth:`PeriodicOptimizer.zero_grad` that follows its step. Use the wrapper's
``zero_grad`` (never ``model.zero_grad()``, which would drop open windows); gradient clipping, if
any, sees the accumulated sums.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch import nn


def parameter_periods(model: nn.Module) -> Dict[int, List[nn.Parameter]]:
    """{period: trainable parameters}: from every submodule's ``param_groups_by_period()``; every
    other parameter has period 1."""
    period: Dict[int, int] = {}
    for module in model.modules():
        groups = getattr(module, "param_groups_by_period", None)
        if groups is None:
            continue
        for c, params in groups().items():
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise ValueError(f"{type(module).__name__} reports period {c!r}; periods are positive ints")
            for p in params:
                if period.get(id(p), c) != c:
                    raise ValueError(f"a parameter of {type(module).__name__} has periods {period[id(p)]} and {c}")
                period[id(p)] = c
    out: Dict[int, List[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            out.setdefault(period.get(id(p), 1), []).append(p)
    return out


class PeriodicOptimizer:
    """``PeriodicOptimizer(factory, model)``: ``factory(model)`` builds the inner optimizer (e.g.
    ``AdamWConfig().build``); call ``n`` (from 0) steps the parameters of period C iff
    ``n % C == C - 1``; period-1 parameters step on every call."""

    def __init__(self, optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer], model: nn.Module):
        self.inner = optimizer_factory(model)
        self.periods = parameter_periods(model)
        self.step_count = 0

    @property
    def param_groups(self) -> List[dict]:
        return self.inner.param_groups

    def due(self, period: int) -> bool:
        """Whether the window of ``period`` closes on the next :meth:`step`."""
        return self.step_count % period == period - 1

    def step(self, closure: Optional[Callable[[], float]] = None) -> None:
        if closure is not None:
            raise ValueError("PeriodicOptimizer takes no closure: a closure's backward would write "
                             "into the gradients of windows still open")
        held = [(p, p.grad) for c, params in self.periods.items() if not self.due(c) for p in params]
        for p, _ in held:
            p.grad = None
        try:
            self.inner.step()
        finally:
            for p, g in held:
                p.grad = g
        self.step_count += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the windows that have closed (a new window starts at the next
        ``backward``); open windows keep their running sums."""
        for c, params in self.periods.items():
            if self.step_count % c:
                continue
            for p in params:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.step_count = int(state["step_count"])
