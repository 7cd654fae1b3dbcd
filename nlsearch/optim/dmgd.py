"""DMGD, Deep Momentum Gradient Descent (Nested Learning): momentum replaced by a small memory of gradients.

Per parameter tensor, elementwise (any shape; every coordinate is one row of ``x``)::

    x_t = [g_t, m_{t-1}]                           # features per coordinate, (N, 2)
    m_t = f_φ(x_t) = x_t · a + relu(x_t W1ᵀ) · w2  # the memory's read, (N,)
    W  <- W - lr · m_t                             # (decoupled weight decay on matrices, if set)

``φ = (a, W1, w2)`` is one tiny memory per tensor, shared by its coordinates: ``a`` (2,) the linear
path, ``W1`` (width, 2) and ``w2`` (width,) the hidden ReLU path (``memory: linear`` has none: the
single unit ``a``). It is its own level of the nesting, trained by one inner GD step per outer step,
BEFORE the read, on how well its previous read ``f_φ(x_{t-1})`` anticipated the gradient that came::

    dot: L = -⟨f_φ(x_{t-1}), g_t⟩ / Σ‖x_{t-1}‖²        (the one-step hypergradient of the outer loss)
    l2:  L = ½‖f_φ(x_{t-1}) - g_t‖² / Σ‖x_{t-1}‖²     (delta rule: regress the coming gradient)
    φ <- φ0 + ρ (φ - φ0) - inner_lr · ∇_φ L            (ρ = retention toward the initial memory)

The normaliser makes the step scale-free (NLMS): scaling every gradient by c leaves φ's updates alone
(f is positively homogeneous). Initialisation is fixed, not random: ``a = (1, β)``, ``w2 = 0`` and the
rows of ``W1`` evenly spaced on the unit circle, so ``f_φ0(x) = g + β m``: heavy-ball momentum.

The special case, exact: with ``inner_lr = 0`` (fixed coefficients) the memory stays at φ0 and DMGD is
``torch.optim.SGD(lr, momentum=β)`` (dampening 0, no nesterov). With learning on, the ``dot`` memory is
the NL paper's momentum-as-associative-memory view made deep; ``l2`` is its delta-rule variant.

State per tensor: ``momentum`` m_{t-1} (shape of W), ``features`` x_{t-1} (N, 2), and φ: 3 N numbers in
all plus ``3 width + 2``."""
from __future__ import annotations

import math
from typing import Dict, Iterable

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn
from typing_extensions import Annotated, Literal

from nlsearch.config import Strict
from nlsearch.optim.adamw import closure_loss, decay_groups
from nlsearch.nesting import Level
from nlsearch.registry import OPTIMIZERS

MEMORY_KEYS = ("a", "w_in", "w_out")


def memory_init(width: int, momentum: float, like: Tensor) -> Dict[str, Tensor]:
    """φ0: the linear path is heavy-ball momentum, the hidden path starts silent."""
    angles = torch.linspace(0.0, 2 * math.pi, width + 1, dtype=like.dtype, device=like.device)[:-1]
    return {"a": like.new_tensor([1.0, momentum]),
            "w_in": torch.stack([angles.cos(), angles.sin()], dim=-1),      # (width, 2)
            "w_out": like.new_zeros(width)}                                  # (width,)


def memory_read(phi: Dict[str, Tensor], x: Tensor):
    """x (N, 2) -> (f (N,), hidden activations (N, width))."""
    h = torch.relu(x @ phi["w_in"].T)
    return x @ phi["a"] + h @ phi["w_out"], h


def memory_grads(phi: Dict[str, Tensor], x: Tensor, g: Tensor, objective: str) -> Dict[str, Tensor]:
    """∇_φ of the inner objective (module docstring) at features x (N, 2) against gradient g (N,),
    by hand (the optimizer steps under no_grad). Zero when x is all zeros (the first step)."""
    f, h = memory_read(phi, x)
    norm = x.pow(2).sum()
    scale = torch.where(norm > 0, 1.0 / norm, torch.zeros_like(norm))
    r = (f - g if objective == "l2" else -g) * scale                        # dL/df, (N,)
    dh = torch.outer(r, phi["w_out"]) * (h > 0)                             # dL/d(pre-activation), (N, width)
    return {"a": x.T @ r, "w_in": dh.T @ x, "w_out": h.T @ r}


class DMGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, width: int = 4, objective: str = "dot",
                 inner_lr: float = 0.01, retention: float = 0.99, weight_decay: float = 0.0):
        if objective not in ("dot", "l2"):
            raise ValueError(f"objective must be 'dot' or 'l2', got {objective!r}")
        defaults = dict(lr=lr, momentum=momentum, width=width, objective=objective, inner_lr=inner_lr,
                        retention=retention, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self._phi0_cache: Dict[tuple, Dict[str, Tensor]] = {}

    def _phi0(self, group: dict, like: Tensor) -> Dict[str, Tensor]:
        """φ0 for this group's width and β, built once per dtype and device (read only)."""
        key = (group["width"], group["momentum"], like.dtype, like.device)
        if key not in self._phi0_cache:
            self._phi0_cache[key] = memory_init(group["width"], group["momentum"], like)
        return self._phi0_cache[key]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _state(self, p: Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            state["momentum"] = torch.zeros_like(p)
            state["features"] = p.new_zeros(p.numel(), 2)
            state.update({k: v.clone() for k, v in self._phi0(group, p).items()})
        return state

    def _write(self, state: dict, g: Tensor, group: dict) -> None:
        """The inner level: one retained GD step on the objective at the previous features."""
        phi = {k: state[k] for k in MEMORY_KEYS}
        grads = memory_grads(phi, state["features"], g, group["objective"])
        phi0 = self._phi0(group, g)
        for k in MEMORY_KEYS:
            phi[k].sub_(phi0[k]).mul_(group["retention"]).add_(phi0[k]).sub_(grads[k], alpha=group["inner_lr"])

    def _update(self, p: Tensor, group: dict) -> None:
        state = self._state(p, group)
        g = p.grad.reshape(-1)                                                  # (N,)
        self._write(state, g, group)
        x = torch.stack([g, state["momentum"].reshape(-1)], dim=-1)             # (N, 2)
        m, _ = memory_read({k: state[k] for k in MEMORY_KEYS}, x)
        state["momentum"].copy_(m.view_as(p))
        state["features"].copy_(x)
        p.mul_(1.0 - group["lr"] * group["weight_decay"])
        p.add_(state["momentum"], alpha=-group["lr"])


@OPTIMIZERS.register("dmgd")
class DMGDConfig(Strict):
    kind: Literal["dmgd"] = "dmgd"
    lr: PositiveFloat = 0.02
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9    # β of the initial memory g + β m
    memory: Literal["linear", "mlp"] = "mlp"
    width: PositiveInt = 4                                       # hidden ReLU units (mlp only)
    objective: Literal["dot", "l2"] = "dot"
    inner_lr: NonNegativeFloat = 0.01                            # 0: fixed memory, exactly SGD momentum
    retention: Annotated[float, Field(gt=0.0, le=1.0)] = 0.99    # ρ: pull of φ back toward φ0
    weight_decay: NonNegativeFloat = 0.0                         # decoupled, matrices only

    def hidden_width(self) -> int:
        return self.width if self.memory == "mlp" else 0

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        return DMGD(decay_groups(model, self.weight_decay), lr=self.lr, momentum=self.momentum,
                    width=self.hidden_width(), objective=self.objective, inner_lr=self.inner_lr,
                    retention=self.retention)

    def levels(self) -> Iterable[Level]:
        shape = f"mlp (width {self.width})" if self.memory == "mlp" else "linear"
        return [Level("DMGD memory", f"{shape} memory [g, m_prev] -> m per coordinate, initialised as "
                      f"momentum β={self.momentum}; one inner GD step per outer step (lr {self.inner_lr}, "
                      f"retention {self.retention})", "steps", 1, self.objective, self.memory, stage=1)]
