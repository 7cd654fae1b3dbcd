"""The RMSNorm of every layer, under the mixed-precision policy (``nlsearch.ops.precision``)."""
from __future__ import annotations

from torch import Tensor, nn

from nlsearch.ops.precision import up


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` that normalises in float32: a half-precision input (a projection's output under
    autocast) is cast up first, so the reduction keeps float32's digits and input and weight (float32)
    match, which the fused kernel needs. Returns float32 (the next projection, under autocast, casts it
    down again). The same parameters and state dict as ``nn.RMSNorm``; a float32 input is untouched."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(up(x))
