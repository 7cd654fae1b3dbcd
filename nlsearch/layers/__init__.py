"""One ``nn.Module`` per mixer/block: ``forward(x, state=None) -> (y, state)`` and ``state_size()``."""
from nlsearch.layers.memory import LayerState, MemoryLayer, MemoryLayerConfig
from nlsearch.layers.mlp import SwiGLU

__all__ = ["LayerState", "MemoryLayer", "MemoryLayerConfig", "SwiGLU"]
