"""Muon for the hidden weight matrices, AdamW for everything else, stepped as ONE optimizer.

Which parameter goes where (by module type, not by name or shape alone):

- Muon: the ``weight`` of every ``nn.Linear`` except the LM's output ``head``: the maps between hidden
  states (projections, MLPs), all 2-D by construction.
- AdamW: everything else: every ``nn.Embedding`` parameter, the ``head`` (with tied embeddings the head
  IS the embedding's weight, one tensor, listed once), norms, biases, convolution kernels (3-D), the
  memory layer's initial fast weights (3-D), and 2-D parameters outside ``nn.Linear`` (Mamba's ``A_log``
  is a table of per-channel decays, not a map between hidden states). Weight decay there follows
  ``adamw.decay_groups``: matrices (dim >= 2) decay; 1-D tensors and marked tables (``A_log``, gate
  biases) do not.

Muon's momentum is an EMA of gradients that Newton–Schulz orthogonalises before the update
(``torch.optim.Muon``, torch >= 2.9)."""
from __future__ import annotations

from typing import Iterable, List, Tuple

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat
from torch import nn
from typing_extensions import Annotated, Literal

from nlsearch.config import Strict
from nlsearch.optim.adamw import closure_loss
from nlsearch.nesting import Level
from nlsearch.registry import OPTIMIZERS

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


def split_params(model: nn.Module) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
    """(hidden, rest) in ``model.parameters()`` order: hidden = ``nn.Linear`` weights other than the
    ``head`` and other than any tensor an ``nn.Embedding`` owns (tied heads); rest = all others."""
    head = getattr(model, "head", None)
    excluded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) or m is head
                for p in m.parameters()}
    hidden = {id(m.weight) for m in model.modules()
              if isinstance(m, nn.Linear) and id(m.weight) not in excluded}
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) in hidden], [p for p in params if id(p) not in hidden]


class MuonAdamW(torch.optim.Optimizer):
    """Two torch optimizers behind one ``Optimizer``: Muon's param groups first, then AdamW's. The
    groups and the per-parameter state are the inner optimizers' own objects (shared, not copied), so
    ``state_dict``/``load_state_dict``, ``zero_grad`` and LR schedulers treat this as one optimizer."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self._muon, self._adamw = muon, adamw
        self._n_muon = len(muon.param_groups)
        super().__init__(muon.param_groups + adamw.param_groups, defaults={})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state (again after a load replaced them)."""
        self._muon.param_groups = self.param_groups[: self._n_muon]
        self._adamw.param_groups = self.param_groups[self._n_muon:]
        self._muon.state = self._adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        self._muon.step()
        self._adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()


def _muon_class() -> type:
    muon = getattr(torch.optim, "Muon", None)
    if muon is None:
        raise RuntimeError(f"optimizer kind 'muon' needs torch.optim.Muon (torch >= 2.9); "
                           f"this is torch {torch.__version__}")
    return muon


@OPTIMIZERS.register("muon")
class MuonConfig(Strict):
    kind: Literal["muon"] = "muon"
    lr: PositiveFloat = 0.02                 # Muon's, for the hidden matrices
    adamw_lr: PositiveFloat = 3e-3           # AdamW's, for everything else
    weight_decay: NonNegativeFloat = 0.1     # decoupled, both parts (AdamW: matrices only)
    momentum: Beta = 0.95
    nesterov: bool = True
    ns_steps: int = Field(5, ge=1, lt=100)   # Newton–Schulz iterations (torch allows < 100)
    adjust_lr: Literal["original", "match_rms_adamw"] = "original"   # torch's ``adjust_lr_fn``
    betas: Tuple[Beta, Beta] = (0.9, 0.95)   # AdamW's

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        hidden, rest = split_params(model)
        muon = _muon_class()(hidden, lr=self.lr, weight_decay=self.weight_decay, momentum=self.momentum,
                             nesterov=self.nesterov, ns_steps=self.ns_steps, adjust_lr_fn=self.adjust_lr)
        groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": self.weight_decay},
                  {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
        adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.adamw_lr, betas=self.betas)
        return MuonAdamW(muon, adamw)

    def levels(self) -> Iterable[Level]:
        return [
            Level("Muon momentum", f"EMA of hidden-matrix gradients (μ={self.momentum}"
                  f"{', nesterov' if self.nesterov else ''}), orthogonalised by {self.ns_steps} "
                  "Newton–Schulz steps", "steps", 1, "ema of gradients", "moments", stage=1),
            Level("AdamW moments", f"EMAs of the other gradients (embeddings, head, norms, biases; "
                  f"β1={self.betas[0]}) and their squares (β2={self.betas[1]})", "steps", 1,
                  "ema of gradients", "moments", stage=2),
        ]
