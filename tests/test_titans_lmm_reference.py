"""The Titans long-term memory layer (MemoryLayer with the titans-lmm rule) and the MAG / MAL mixers built
on it, against a per-token reference written here from the equations, with no call into ``nlsearch.ops``:

    q, k, v = SiLU(causal depthwise conv(x W_qkv)), q and k L2-normalised per head
    η̂_t, α_t, θ_t = σ(x_t W_g + b_g)            (gate rows in that order, one per head)
    η_t = eta_scale · η̂_t / chunk · (1 − θ_t)    (step per mini-batch mean; momentum as an average)
    M(x) = x + W_2 SiLU(W_1 x)                     (per head, residual MLP memory)
    G_t = ∇_W ½‖M_A(k_t) − v_t‖²  at A = the weights at the start of t's mini-batch of ``chunk`` tokens
          (written out: r = M_A(k) − v, ∂W_2 = r SiLU(z)ᵀ, ∂W_1 = ((A_2ᵀ r) ⊙ SiLU'(z)) kᵀ, z = A_1 k)
    S_t = θ_t S_{t−1} − η_t G_t,   W_t = α_t W_{t−1} + S_t,   y_t = M_{W_t}(q_t)   (read after write)
    out = W_o · RMSNorm_per_head(y)

Compared in float64: outputs, the final state (weights, momentum, the open mini-batch's anchor and decay,
the convolution's last inputs), the output when the sequence is cut in two with the state carried, and the
gradients of every parameter and of x; for the fast and the naive form, at odd lengths that end inside a
mini-batch. MAG and MAL are checked with this memory reference in place of the library's memory.
"""
import pytest
import torch
import torch.nn.functional as F

from nlsearch.layers import MemoryLayerConfig, TitansMAGConfig, TitansMALConfig
from nlsearch.ops import MemoryRule, preset
from memory_layer_inputs import layer_inputs
from test_titans_reference import _attention, _rms

F64 = torch.float64
TOL = dict(atol=1e-10, rtol=1e-10)


def _silu_grad(z):
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _lmm_reference(layer, x):
    """Per-token Titans memory layer; returns (out (B, T, d), dict of the final state)."""
    b, t, _ = x.shape
    h, dh, chunk = layer.h, layer.dh, layer.rule.chunk
    q, k, v, g, conv_state = layer_inputs(layer, x)
    eta_hat, alpha, theta = g.unbind(2)                                            # (B, T, H) each
    eta = layer.eta_scale * eta_hat / chunk * (1 - theta)
    w1, w2 = (p.expand(b, *p.shape) for p in layer.init_weights)                   # (B, H, out, in)
    s1, s2 = torch.zeros_like(w1), torch.zeros_like(w2)
    ys = []
    for i in range(t):
        if i % chunk == 0:
            a1, a2, since = w1, w2, torch.ones(b, h, dtype=x.dtype)
        kt, vt, qt = k[:, i, :, :, None], v[:, i, :, :, None], q[:, i, :, :, None]   # (B, H, D, 1)
        zk = a1 @ kt
        r = kt + a2 @ F.silu(zk) - vt
        g2 = r @ F.silu(zk).mT
        g1 = ((a2.mT @ r) * _silu_grad(zk)) @ kt.mT
        e, th, al = (c[:, i, :, None, None] for c in (eta, theta, alpha))
        s1, s2 = th * s1 - e * g1, th * s2 - e * g2
        w1, w2 = al * w1 + s1, al * w2 + s2
        since = since * alpha[:, i]
        ys.append((qt + w2 @ F.silu(w1 @ qt))[..., 0])                              # (B, H, D)
    y = torch.stack(ys, dim=1)                                                       # (B, T, H, D)
    y = y / torch.sqrt(y.square().mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)
    out = y.reshape(b, t, h * dh) @ layer.out.weight.T
    state = dict(weights=(w1, w2), momentum=(s1, s2), conv=conv_state)
    if t % chunk:
        state.update(anchor=(a1, a2), anchor_decay=since)
    return out, state


def _layer(chunk, impl):
    rule = preset("titans-lmm") if chunk == 16 else \
        MemoryRule(memory="mlp", objective="l2", optimizer="momentum", decay=True, chunk=chunk)
    torch.manual_seed(0)
    layer = MemoryLayerConfig(rule=rule, n_heads=2, conv_size=4, impl=impl).build(8).double()
    with torch.no_grad():                       # gates away from their init, so θ, α, η vary per token and head
        layer.gates.weight.mul_(4)
        layer.gates.bias.copy_(torch.randn(layer.gates.bias.shape, dtype=F64))
    return layer


def _state_parts(st):
    mem = st.memory
    parts = dict(weights=mem.weights, momentum=mem.momentum, conv=st.conv)
    if mem.offset:
        parts.update(anchor=mem.anchor, anchor_decay=mem.anchor_decay)
    return parts


CASES = [(16, 37), (5, 23), (1, 11)]          # (chunk, length): 16 is the preset; every length ends mid-batch


@pytest.mark.parametrize("impl", ["fast", "naive"])
@pytest.mark.parametrize("chunk,t", CASES)
def test_lmm_layer_matches_reference(chunk, t, impl):
    layer = _layer(chunk, impl)
    x = torch.randn(2, t, 8, dtype=F64, generator=torch.Generator().manual_seed(chunk))
    y, st = layer(x)
    y_ref, st_ref = _lmm_reference(layer, x)
    torch.testing.assert_close(y, y_ref, **TOL)
    got = _state_parts(st)
    assert set(got) == set(st_ref)
    for name, want in st_ref.items():
        for a, b in zip(*(v if isinstance(v, tuple) else (v,) for v in (got[name], want))):
            torch.testing.assert_close(a, b, **TOL, msg=name)
    cut = t // 3 + 1                                                       # a cut inside a mini-batch
    y1, s1 = layer(x[:, :cut])
    y2, _ = layer(x[:, cut:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_ref, **TOL)


@pytest.mark.parametrize("impl", ["fast", "naive"])
@pytest.mark.parametrize("chunk,t", CASES[:2])
def test_lmm_layer_gradients_match_reference(chunk, t, impl):
    layer = _layer(chunk, impl)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, t, 8, dtype=F64, generator=gen, requires_grad=True)
    params = [x, *layer.parameters()]

    def grads(out, state):
        w1, w2 = state
        loss = (out * torch.randn(out.shape, dtype=F64, generator=torch.Generator().manual_seed(1))).sum() \
            + (w1 * w1.detach().sin()).sum() + (w2 * w2.detach().cos()).sum()
        return torch.autograd.grad(loss, params, allow_unused=True)

    y, st = layer(x)
    got = grads(y, st.memory.weights)
    y_ref, st_ref = _lmm_reference(layer, x)
    want = grads(y_ref, st_ref["weights"])
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    for name, a, b in zip(names, got, want):
        assert b is not None, name
        torch.testing.assert_close(a, b, **TOL, msg=name)


def test_mag_with_reference_memory():
    """MAG: y = W_o (RMSNorm(SW-Attn*(x)) ⊙ σ(RMSNorm(Mem(x)))) with Mem the reference above."""
    cfg = TitansMAGConfig(memory=MemoryLayerConfig(rule=preset("titans-lmm"), n_heads=2), n_heads=2, window=6,
                          n_persistent=3, gate="normalized")
    torch.manual_seed(0)
    mag = cfg.build(16).double()
    x = torch.randn(2, 21, 16, dtype=F64)
    m, _ = _lmm_reference(mag.memory, x)
    g = mag.gate
    want = (_rms(_attention(mag.attn, x, 6), g.norm_y.weight) * torch.sigmoid(_rms(m, g.norm_m.weight))) \
        @ g.out.weight.T
    torch.testing.assert_close(mag(x)[0], want, **TOL)


@pytest.mark.parametrize("inner", ["compose", "residual"])
def test_mal_with_reference_memory(inner):
    """MAL: compose: Attn(Mem(x)); residual: m + Attn(RMSNorm(x + m)), m = Mem(x) from the reference above."""
    cfg = TitansMALConfig(memory=MemoryLayerConfig(rule=preset("titans-lmm"), n_heads=2), n_heads=2, window=5,
                          n_persistent=2, inner=inner)
    torch.manual_seed(0)
    mal = cfg.build(16).double()
    x = torch.randn(2, 19, 16, dtype=F64)
    m, _ = _lmm_reference(mal.memory, x)
    want = _attention(mal.attn, m, 5) if inner == "compose" else \
        m + _attention(mal.attn, _rms(x + m, mal.norm.weight), 5)
    torch.testing.assert_close(mal(x)[0], want, **TOL)
