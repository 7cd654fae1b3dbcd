"""The one generic backbone: embedding -> N x (pre-norm mixer, pre-norm MLP) -> norm -> head."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import Tensor, nn

from nlsearch.layers import MemoryLayerConfig, SwiGLU


class BackboneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: PositiveInt = 256
    d_model: PositiveInt = 128
    n_layers: PositiveInt = 2
    mlp_ratio: float = 4.0
    mixer: MemoryLayerConfig = MemoryLayerConfig()
    tie_embeddings: bool = True

    def build(self) -> "LM":
        return LM(self)


class Block(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model)
        self.mixer = cfg.mixer.build(cfg.d_model)
        self.norm2 = nn.RMSNorm(cfg.d_model)
        self.mlp = SwiGLU(cfg.d_model, int(cfg.mlp_ratio * cfg.d_model))

    def forward(self, x: Tensor, state: Any = None) -> Tuple[Tensor, Any]:
        y, state = self.mixer(self.norm1(x), state)
        x = x + y
        return x + self.mlp(self.norm2(x)), state


class LM(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: Tensor, state: Optional[List[Any]] = None) -> Tuple[Tensor, List[Any]]:
        """tokens (B, T) -> (logits (B, T, vocab), per-block states)."""
        x = self.embed(tokens)
        states = state if state is not None else [None] * len(self.blocks)
        new_states = []
        for block, st in zip(self.blocks, states):
            x, st = block(x, st)
            new_states.append(st)
        return self.head(self.norm(x)), new_states

    def state_size(self) -> int:
        return sum(b.mixer.state_size() for b in self.blocks)
