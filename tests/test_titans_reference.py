"""Titans MAG and MAL against references written from its equations (paper §4.2 with the documented gate):
a = W_o^attn softmax over [persistent keys (no position), RoPE keys of the last W tokens] ;
m = the memory layer's output (MemoryLayer has its own reference test) ;
y = W_o (RMSNorm_a(a) ⊙ σ(RMSNorm_m(m)))."""
import torch

import pytest

from nlsearch.layers import MemoryLayerConfig, TitansMAGConfig, TitansMALConfig
from nlsearch.ops import preset

F64 = torch.float64


def _rope(x, base):
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half], x[..., half:])
    freq = base ** (-2 * torch.arange(half, dtype=x.dtype) / x.shape[-1])
    pos = torch.arange(x.shape[-2], dtype=x.dtype)
    z = z * torch.polar(torch.ones_like(pos[:, None] * freq), pos[:, None] * freq)
    return torch.cat([z.real, z.imag], dim=-1)


def _rms(x, weight):
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + torch.finfo(x.dtype).eps) * weight


def _attention(attn, x, window):
    b, t, _ = x.shape
    h, dh = attn.h, attn.dh
    q, k, v = (x @ attn.qkv.weight.T).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)   # (B, H, T, Dh)
    _, kp, vp = (attn.persistent @ attn.qkv.weight.T).view(-1, 3, h, dh).permute(1, 2, 0, 3)  # (H, P, Dh)
    qr, kr = _rope(q, attn.rope_base), _rope(k, attn.rope_base)
    out = torch.zeros(b, h, t, dh, dtype=x.dtype)
    for i in range(t):
        lo = max(0, i - window + 1)
        scores = torch.cat([q[:, :, i:i + 1] @ kp.mT, qr[:, :, i:i + 1] @ kr[:, :, lo:i + 1].mT], dim=-1)
        w = (scores * dh ** -0.5).softmax(-1)
        values = torch.cat([vp.expand(b, -1, -1, -1), v[:, :, lo:i + 1]], dim=2)
        out[:, :, i] = (w @ values)[:, :, 0]
    return out.transpose(1, 2).reshape(b, t, h * dh) @ attn.out.weight.T


def test_mag_matches_reference():
    torch.manual_seed(0)
    cfg = TitansMAGConfig(memory=MemoryLayerConfig(rule=preset("titans-lmm"), n_heads=2), n_heads=2, window=6,
                          n_persistent=3, gate="normalized")
    mag = cfg.build(16).double()
    x = torch.randn(2, 23, 16, dtype=F64)
    a = _attention(mag.attn, x, 6)
    m = mag.memory(x)[0]
    g = mag.gate
    want = (_rms(a, g.norm_y.weight) * torch.sigmoid(_rms(m, g.norm_m.weight))) @ g.out.weight.T
    torch.testing.assert_close(mag(x)[0], want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("inner", ["compose", "residual"])
def test_mal_matches_reference(inner):
    """MAL: attention on the memory's output (compose: a = Attn(m); residual: m + Attn(RMSNorm(x + m)))."""
    torch.manual_seed(0)
    cfg = TitansMALConfig(memory=MemoryLayerConfig(rule=preset("titans-lmm"), n_heads=2), n_heads=2, window=5,
                          n_persistent=2, inner=inner)
    mal = cfg.build(16).double()
    x = torch.randn(2, 19, 16, dtype=F64)
    m = mal.memory(x)[0]
    want = _attention(mal.attn, m, 5) if inner == "compose" else \
        m + _attention(mal.attn, _rms(x + m, mal.norm.weight), 5)
    torch.testing.assert_close(mal(x)[0], want, atol=1e-10, rtol=1e-10)
