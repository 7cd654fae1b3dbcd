"""The one generic backbone: embedding -> N x (pre-norm mixer, pre-norm MLP) -> norm -> head."""
from __future__ import annotations

from typing import Annotated, Any, List, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Discriminator, PositiveInt, Tag
from torch import Tensor, nn

from nlsearch.layers import AttentionLayerConfig, MambaLayerConfig, MemoryLayerConfig, SwiGLU


def _mixer_kind(value) -> Optional[str]:
    """A mixer config's ``kind``; a mapping without one is a memory mixer (the default)."""
    return value.get("kind", "memory") if isinstance(value, dict) else getattr(value, "kind", None)


MixerConfig = Annotated[
    Union[Annotated[MemoryLayerConfig, Tag("memory")], Annotated[MambaLayerConfig, Tag("mamba")],
          Annotated[AttentionLayerConfig, Tag("attention")]],
    Discriminator(_mixer_kind),
]


class BackboneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: PositiveInt = 256
    d_model: PositiveInt = 128
    n_layers: PositiveInt = 2
    mlp_ratio: float = 4.0
    mixer: MixerConfig = MemoryLayerConfig()
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

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Numbers carried per sequence after ``seq_len`` tokens (needed where a mixer's state grows
        with the length, as attention's KV cache does)."""
        return sum(b.mixer.state_size(seq_len) for b in self.blocks)
