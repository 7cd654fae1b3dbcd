"""One ``nn.Module`` per mixer/block: ``forward(x, state=None) -> (y, state)`` and
``state_size(seq_len=None)`` (numbers carried per sequence, so memory cost compares across mixers)."""
from nlsearch.layers.attention import AttentionLayer, AttentionLayerConfig, KVCache
from nlsearch.layers.mamba import MambaLayer, MambaLayerConfig, MambaState
from nlsearch.layers.memory import LayerState, MemoryLayer, MemoryLayerConfig
from nlsearch.layers.mlp import SwiGLU, SwiGLUConfig

__all__ = [
    "AttentionLayer", "AttentionLayerConfig", "KVCache", "LayerState", "MambaLayer", "MambaLayerConfig",
    "MambaState", "MemoryLayer", "MemoryLayerConfig", "SwiGLU", "SwiGLUConfig",
]
