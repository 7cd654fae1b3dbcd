"""The one generic backbone: embedding -> R loops x N blocks (pre-norm mixer, pre-norm MLP) -> norm -> head.

Every architecture is a :class:`ModelConfig`: a mixer kind (attention, memory, mamba, ...), a channel
mixer kind (swiglu, cms, ...), depth, loops over a shared stack, and the outer optimizer."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from pydantic import PositiveInt, model_validator
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import nlsearch.layers  # noqa: F401  (registers the built-in mixers)
import nlsearch.optim  # noqa: F401  (registers the built-in optimizers)
from nlsearch.config import Strict, from_context, unhashed
from nlsearch.layers import MemoryLayerConfig, SwiGLUConfig
from nlsearch.layers.norm import RMSNorm
from nlsearch.optim import AdamWConfig
from nlsearch.registry import CHANNEL_MIXERS, MIXERS, OPTIMIZERS, config_field


class ModelConfig(Strict):
    name: Optional[str] = unhashed(None, "a label (the preset's name); not part of the model")
    vocab_size: PositiveInt = from_context(256, "unset: the task's vocabulary (256 bytes where there is no task)")
    d_model: PositiveInt = 128
    n_layers: PositiveInt = 2
    loops: PositiveInt = 1               # the stack of n_layers blocks is applied this many times
    loop_inject: bool = False            # add the token embedding again before every further loop
    mixer: config_field(MIXERS, "memory") = MemoryLayerConfig()
    mlp: config_field(CHANNEL_MIXERS, "swiglu") = SwiGLUConfig()
    optimizer: config_field(OPTIMIZERS, "adamw") = AdamWConfig()
    tie_embeddings: bool = True
    remat: bool = unhashed(False, "activation checkpointing: keep only each block's input for the backward "
                                  "and recompute the block there (less memory, one more forward per step)")

    @model_validator(mode="after")
    def _fits(self) -> "ModelConfig":
        for part in ("mixer", "mlp"):
            check = getattr(getattr(self, part), "check", None)
            if check is not None:
                check(self.d_model, path=part)
        return self

    def build(self) -> "LM":
        return LM(self)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model)
        self.mixer = cfg.mixer.build(cfg.d_model)
        self.norm2 = RMSNorm(cfg.d_model)
        self.mlp = cfg.mlp.build(cfg.d_model)

    def forward(self, x: Tensor, state: Any = None) -> Tuple[Tensor, Any]:
        mixer_state, mlp_state = state if state is not None else (None, None)
        y, mixer_state = self.mixer(self.norm1(x), mixer_state)
        x = x + y
        y, mlp_state = self.mlp(self.norm2(x), mlp_state)
        return x + y, (mixer_state, mlp_state)

    def state_size(self, seq_len: Optional[int] = None) -> int:
        return self.mixer.state_size(seq_len) + self.mlp.state_size(seq_len)


class LM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: Tensor, state: Optional[List[Any]] = None) -> Tuple[Tensor, List[Any]]:
        """tokens (B, T) -> (logits (B, T, vocab), one state per block application)."""
        emb = self.embed(tokens)                                                 # (B, T, d)
        n_apply = self.cfg.loops * len(self.blocks)
        states = state if state is not None else [None] * n_apply
        if len(states) != n_apply:
            raise ValueError(f"state has {len(states)} entries; this model applies {n_apply} blocks")
        x, new_states = emb, []
        for r in range(self.cfg.loops):
            if r and self.cfg.loop_inject:
                x = x + emb
            for i, block in enumerate(self.blocks):
                if self.cfg.remat and torch.is_grad_enabled():
                    x, st = checkpoint(block, x, states[r * len(self.blocks) + i], use_reentrant=False)
                else:
                    x, st = block(x, states[r * len(self.blocks) + i])
                new_states.append(st)
        return self.head(self.norm(x)), new_states

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Numbers carried per sequence after ``seq_len`` tokens (needed where a mixer's state grows
        with the length, as attention's KV cache does)."""
        return self.cfg.loops * sum(b.state_size(seq_len) for b in self.blocks)
