"""MemoryLayer against a per-token reference written from its documented equations (not its code):
projections, causal depthwise conv + SiLU, q/k L2 norm, gates η = eta_scale·σ/chunk and α = σ, the
Gated DeltaNet / DeltaNet update, per-head RMS norm and the output projection."""
import pytest
import torch

from nlsearch.layers import MemoryLayerConfig
from nlsearch.ops import preset
from memory_layer_inputs import layer_inputs

F64 = torch.float64


def _reference(layer, x):
    b, t, _ = x.shape
    h, dh = layer.h, layer.dh
    q, k, v, g, _ = layer_inputs(layer, x)
    eta = layer.eta_scale * g[:, :, 0] / layer.rule.chunk
    alpha = g[:, :, 1] if layer.rule.decay else torch.ones_like(eta)
    m = x.new_zeros(b, h, dh, dh)
    eye = torch.eye(dh, dtype=x.dtype)
    ys = []
    for s in range(t):
        kk = k[:, s, :, :, None] @ k[:, s, :, None, :]                          # k kᵀ (B, H, D, D)
        e, a = eta[:, s, :, None, None], alpha[:, s, :, None, None]
        m = a * m @ (eye - e * kk) + e * (v[:, s, :, :, None] @ k[:, s, :, None, :])
        ys.append((m @ q[:, s, :, :, None])[..., 0])                              # (B, H, D)
    y = torch.stack(ys, dim=1)                                                    # (B, T, H, D)
    y = y / torch.sqrt(y.square().mean(-1, keepdim=True) + torch.finfo(F64).eps)
    return y.reshape(b, t, h * dh) @ layer.out.weight.T


@pytest.mark.parametrize("name", ["deltanet", "gated-deltanet"])
def test_layer_matches_reference(name):
    torch.manual_seed(0)
    layer = MemoryLayerConfig(rule=preset(name), n_heads=2, conv_size=4).build(8).double()
    x = torch.randn(2, 37, 8, dtype=F64)
    y, _ = layer(x)
    torch.testing.assert_close(y, _reference(layer, x), atol=1e-10, rtol=1e-10)
