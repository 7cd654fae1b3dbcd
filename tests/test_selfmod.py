"""Self-modifying Titans against a per-token reference written from the paper's equations, and HOPE.

The reference below is a literal loop over tokens (plain torch, the memories' gradients by the chain
rule, nothing from ``nlsearch`` but the layer's parameters): at chunk 1 it is the exact recurrence
of NL Eqs. 83–93; at chunk C it reads every right-hand-side memory at its chunk-start weights. The
mixer contract (pieces = whole across chunk boundaries, causality, ...) runs in test_mixers.py."""
import pytest
import torch
import torch.nn.functional as F

from nlsearch.config import ConfigError, parse_config
from nlsearch.layers import SelfModConfig
from nlsearch.models import ModelConfig, build_model, load_model_config
from nlsearch.models.describe import nesting_levels

F64 = torch.float64
NAMES = ("k", "v", "eta", "alpha", "memory")
READINGS = {
    "paper-defaults": dict(read="after_write", memory_target="self", gates="mean", head_input="project"),
    "before-value-linear-split": dict(read="before_write", memory_target="value", gates="linear",
                                      head_input="split"),
    "after-value-linear-project": dict(read="after_write", memory_target="value", gates="linear",
                                       head_input="project", qk_norm=False),
    "before-self-mean-split": dict(read="before_write", memory_target="self", gates="mean", head_input="split"),
    "paper-defaults-v-norm": dict(read="after_write", memory_target="self", gates="mean", head_input="project",
                                  v_norm=True),
}


def matvec(m, x):
    """Per head: m (B, H, out, in), x (B, H, in) -> (B, H, out)."""
    return (m @ x[..., None])[..., 0]


def outer(a, b):
    return a[..., :, None] * b[..., None, :]


def silu_grad(z):
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def memory(ws, a):
    """M(a) = a + W2 silu(W1 a), per head."""
    return a + matvec(ws[1], F.silu(matvec(ws[0], a)))


def l2_gradient(ws, k, target):
    """∇_W ½‖M_W(k) − target‖² with the target held fixed, by the chain rule: (∂W1, ∂W2)."""
    z = matvec(ws[0], k)
    delta = memory(ws, k) - target                                             # (B, H, D)
    return outer(matvec(ws[1].mT, delta) * silu_grad(z), k), outer(delta, F.silu(z))


def gate(layer, s, row, cfg):
    z = s.mean(-1) if cfg.gates == "mean" else (s * layer.gate_w[row]).sum(-1)
    return z + layer.gate_bias[row]                                            # (B, H)


def reference(layer, x, cfg):
    """Eqs. 83–93 token by token; returns the layer's output and every memory's final weights."""
    b, t, d = x.shape
    h = cfg.n_heads
    dh = d // h
    z = x @ layer.inp.weight.T
    u, q = (x, z) if cfg.head_input == "split" else z.split(h * dh, dim=-1)
    u, q = u.view(b, t, h, dh), q.view(b, t, h, dh)
    q = F.normalize(q, dim=-1) if cfg.qk_norm else q
    weights = {n: (layer.w1[i].expand(b, -1, -1, -1), layer.w2[i].expand(b, -1, -1, -1))
               for i, n in enumerate(NAMES)}
    ys = []
    for s in range(t):
        if s % cfg.chunk == 0:
            anchor = dict(weights)                                   # the chunk-start memories
        k = memory(anchor["k"], u[:, s])
        k = F.normalize(k, dim=-1) if cfg.qk_norm else k
        v = memory(anchor["v"], u[:, s])
        v = F.normalize(v, dim=-1) if cfg.v_norm else v
        eta = cfg.eta_scale * torch.sigmoid(gate(layer, memory(anchor["eta"], u[:, s]), 0, cfg)) / cfg.chunk
        alpha = torch.sigmoid(gate(layer, memory(anchor["alpha"], u[:, s]), 1, cfg))
        before = weights["memory"]
        for n in NAMES:
            target = v if n == "memory" and cfg.memory_target == "value" else memory(anchor[n], v)
            grads = l2_gradient(anchor[n], k, target)
            weights[n] = tuple(alpha[..., None, None] * w - eta[..., None, None] * g
                               for w, g in zip(weights[n], grads))
        ys.append(memory(weights["memory"] if cfg.read == "after_write" else before, q[:, s]))
    y = F.rms_norm(torch.stack(ys, dim=1), (dh,)).reshape(b, t, h * dh)    # (B, T, d)
    return y @ layer.out.weight.T, weights


def _layer(chunk, reading, d=8, impl="fast"):
    torch.manual_seed(0)
    cfg = SelfModConfig(n_heads=2, chunk=chunk, conv_size=0, expansion=2, eta_scale=0.3, impl=impl,
                        **READINGS[reading])
    layer = cfg.build(d).double()
    with torch.no_grad():
        layer.gate_bias[1].fill_(2.0)                   # retention about 0.88: decay matters
    return cfg, layer


@pytest.mark.parametrize("reading", sorted(READINGS))
@pytest.mark.parametrize("chunk", [1, 4])
def test_matches_the_per_token_reference(chunk, reading):
    cfg, layer = _layer(chunk, reading)
    x = torch.randn(2, 11, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    y, state = layer(x)
    y_ref, w_ref = reference(layer, x, cfg)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    for i, w in enumerate(state.memory.weights):                             # (B, 5H, out, in)
        stacked = torch.stack([w_ref[n][i] for n in NAMES], dim=1).flatten(1, 2)
        torch.testing.assert_close(w, stacked, atol=1e-10, rtol=1e-10)
    assert state.memory.offset == 11 % chunk


@pytest.mark.parametrize("reading", ["paper-defaults", "before-value-linear-split"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_gradients_match_the_reference(chunk, reading):
    cfg, layer = _layer(chunk, reading)
    x = torch.randn(2, 7, 8, dtype=F64, generator=torch.Generator().manual_seed(4))
    r = torch.randn(2, 7, 8, dtype=F64, generator=torch.Generator().manual_seed(5))
    params = list(layer.parameters())
    got = torch.autograd.grad((layer(x)[0] * r).sum(), params)
    want = torch.autograd.grad((reference(layer, x, cfg)[0] * r).sum(), params)
    for p, g, w in zip(layer.named_parameters(), got, want):
        torch.testing.assert_close(g, w, atol=1e-9, rtol=1e-8, msg=lambda m, n=p[0]: f"{n}: {m}")


def test_fast_and_naive_op_agree_and_chunk_matters():
    _, fast = _layer(4, "paper-defaults")
    _, naive = _layer(4, "paper-defaults", impl="naive")
    _, per_token = _layer(1, "paper-defaults")
    x = torch.randn(2, 10, 8, dtype=F64)
    torch.testing.assert_close(fast(x)[0], naive(x)[0], atol=1e-10, rtol=1e-10)
    assert not torch.allclose(fast(x)[0], per_token(x)[0])


def test_config_errors_and_levels():
    with pytest.raises(ConfigError, match="mixer.n_heads=3 does not divide d_model=16"):
        parse_config(ModelConfig, {"d_model": 16, "mixer": {"kind": "selfmod", "n_heads": 3}})
    with pytest.raises(ConfigError, match="head_input='split' needs n_heads"):
        parse_config(ModelConfig, {"d_model": 16, "mixer": {"kind": "selfmod", "n_heads": 2, "head_dim": 4,
                                                            "head_input": "split"}})
    with pytest.raises(ConfigError, match="mixer.memory_target"):
        parse_config(ModelConfig, {"mixer": {"kind": "selfmod", "memory_target": "values"}})
    profile = [(lv.name, lv.clock, lv.period) for lv in nesting_levels(load_model_config("hope"))]
    assert profile == [("self-modifying memory", "tokens", 16), ("CMS-1", "tokens", 16),
                       ("self-modifying projections", "tokens", 16), ("CMS-2", "tokens", 64),
                       ("weights", "steps", 1), ("AdamW moments", "steps", 1)]


def test_hope_model_carries_every_state_across_pieces():
    cfg = load_model_config("hope").model_copy(update={"d_model": 16, "vocab_size": 32, "n_layers": 1})
    cfg = ModelConfig.model_validate({**cfg.model_dump(), "mixer": {**cfg.mixer.model_dump(), "n_heads": 2,
                                                                     "chunk": 4},
                                      "mlp": {**cfg.mlp.model_dump(), "n_heads": 2, "periods": [3, 8]}})
    model = build_model(cfg).double()
    tokens = torch.randint(0, 32, (2, 19))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :6])
    rest, _ = model(tokens[:, 6:], state)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=1e-10, rtol=1e-10)
    assert model.state_size(19) > 0


@pytest.mark.parametrize("eta_scale, scale", [(1.0, 3.0), (0.1, 10.0)])
def test_v_norm_keeps_self_generated_targets_from_blowing_the_memories_up(eta_scale, scale):
    """Long retention (α ≈ 0.9975) and large inputs: unnormalised values feed the memories' own
    targets and the fast weights blow up within 256 tokens; normalised ones keep them bounded."""
    x = torch.randn(2, 256, 128, generator=torch.Generator().manual_seed(0)) * scale
    largest = {}
    for v_norm in (False, True):
        torch.manual_seed(0)
        layer = SelfModConfig(n_heads=4, chunk=16, conv_size=0, eta_scale=eta_scale, v_norm=v_norm).build(128)
        with torch.no_grad():
            layer.gate_bias[0].fill_(3.0)
            layer.gate_bias[1].fill_(6.0)
            start = max(layer.w1.abs().max().item(), layer.w2.abs().max().item())
            y, state = layer(x)
        largest[v_norm] = max(w.abs().max().item() for w in state.memory.weights)
        if v_norm:
            assert torch.isfinite(y).all() and largest[True] <= 2 * start
    assert not largest[False] < 1e3                     # NaN or huge without the normalisation
