"""One ``nn.Module`` per mixer/block: ``forward(x, state=None) -> (y, state)`` and
``state_size(seq_len=None)`` (numbers carried per sequence, so memory cost compares across mixers)."""
from nlsearch.layers.attention import AttentionLayer, AttentionLayerConfig, KVCache
from nlsearch.layers.cms import CMS, CMSConfig
from nlsearch.layers.mamba import MambaLayer, MambaLayerConfig, MambaState
from nlsearch.layers.mamba2 import Mamba2Layer, Mamba2LayerConfig, Mamba2State
from nlsearch.layers.memory import LayerState, MemoryLayer, MemoryLayerConfig
from nlsearch.layers.mlp import SwiGLU, SwiGLUConfig
from nlsearch.layers.selfmod import SelfModConfig, SelfModLayer
from nlsearch.layers.titans import (
    TitansMAC, TitansMACConfig, TitansMAG, TitansMAGConfig, TitansMAL, TitansMALConfig,
)

__all__ = [
    "AttentionLayer", "AttentionLayerConfig", "CMS", "CMSConfig", "KVCache", "LayerState", "Mamba2Layer",
    "Mamba2LayerConfig", "Mamba2State", "MambaLayer",
    "MambaLayerConfig", "MambaState", "MemoryLayer", "MemoryLayerConfig", "SelfModConfig", "SelfModLayer",
    "SwiGLU", "SwiGLUConfig", "TitansMAC", "TitansMACConfig", "TitansMAG", "TitansMAGConfig", "TitansMAL",
    "TitansMALConfig",
]
