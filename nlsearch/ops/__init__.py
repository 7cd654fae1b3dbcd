"""Pure tensor functions (no ``nn.Module``): the memory rules of Nested Learning and attention.

Every fast op has a naive twin with the same signature. Layout ``(B, H, T, D)``; per-token scalars
``(B, H, T)``.
"""
from nlsearch.ops.attention import causal_attention, causal_attention_naive
from nlsearch.ops.conv import causal_conv, causal_conv_naive
from nlsearch.ops.linear import linear_memory, linear_memory_naive
from nlsearch.ops.mlp import mlp_forward, mlp_memory, mlp_memory_naive
from nlsearch.ops.rule import PRESETS, MemoryRule, apply_memory, preset
from nlsearch.ops.ssm import selective_scan, selective_scan_naive
from nlsearch.ops.state import MemoryState, zeros_linear_state

__all__ = [
    "MemoryRule", "MemoryState", "PRESETS", "apply_memory", "causal_attention", "causal_attention_naive",
    "causal_conv", "causal_conv_naive",
    "linear_memory", "linear_memory_naive", "mlp_forward", "mlp_memory", "mlp_memory_naive", "preset",
    "selective_scan", "selective_scan_naive", "zeros_linear_state",
]
