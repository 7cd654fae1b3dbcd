"""The channel mixer of every block: a SwiGLU MLP (a CMS chain of length one, updated only by training)."""
from __future__ import annotations

from typing import List, Literal

import torch.nn.functional as F
from pydantic import PositiveFloat
from torch import Tensor, nn

from nlsearch.config import Strict
from nlsearch.nesting import Level
from nlsearch.registry import CHANNEL_MIXERS


@CHANNEL_MIXERS.register("swiglu")
class SwiGLUConfig(Strict):
    kind: Literal["swiglu"] = "swiglu"
    ratio: PositiveFloat = 4.0           # hidden width = ratio * d_model

    def build(self, d_model: int) -> "SwiGLU":
        return SwiGLU(d_model, max(1, int(self.ratio * d_model)))

    def levels(self) -> List[Level]:
        return []                        # its weights are the "weights" level


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor, state=None):
        """x (B, T, d) -> (y, state): a channel mixer keeps the mixer interface (state unused)."""
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up), state

    def state_size(self, seq_len=None) -> int:
        return 0
