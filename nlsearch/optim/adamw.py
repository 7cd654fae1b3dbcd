"""AdamW: its moments are an exponential moving-average memory of gradients (and their squares)."""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Tuple

import torch
from pydantic import PositiveFloat
from typing_extensions import Literal

from nlsearch.config import Strict
from nlsearch.nesting import Level
from nlsearch.registry import OPTIMIZERS


def no_weight_decay(param: torch.nn.Parameter) -> torch.nn.Parameter:
    """Marks a parameter that is not a weight matrix although it has 2+ dims (a table of per-channel
    decays, gate biases per head): :func:`decay_groups` leaves it undecayed. Returns it."""
    param._no_weight_decay = True
    return param


def _decays(p: torch.Tensor) -> bool:
    return p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)


def decay_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    """Weight decay on matrices (dim >= 2, not marked :func:`no_weight_decay`) only; norms, biases,
    gains and marked tables keep theirs at 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if _decays(p)], "weight_decay": weight_decay},
            {"params": [p for p in params if not _decays(p)], "weight_decay": 0.0}]


def closure_loss(closure: Optional[Callable[[], float]]) -> Optional[float]:
    """``torch.optim``'s closure convention: re-evaluate the loss (with gradients on) when one is given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


@OPTIMIZERS.register("adamw")
class AdamWConfig(Strict):
    kind: Literal["adamw"] = "adamw"
    lr: PositiveFloat = 3e-3
    weight_decay: float = 0.1
    betas: Tuple[float, float] = (0.9, 0.95)

    def build(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(decay_groups(model, self.weight_decay), lr=self.lr, betas=self.betas)

    def levels(self) -> Iterable[Level]:
        return [Level("AdamW moments", f"EMAs of gradients (β1={self.betas[0]}) and their squares "
                      f"(β2={self.betas[1]})", "steps", 1, "ema of gradients", "moments", stage=1)]
