"""CMS (the channel mixer of HOPE) on both clocks, and the outer clock PeriodicOptimizer.

The mixer contract (pieces = whole, causality, state size, ...) runs in test_mixers.py."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlsearch.config import ConfigError, parse_config
from nlsearch.layers import CMSConfig, SwiGLUConfig
from nlsearch.models import ModelConfig, build_model, load_model_config
from nlsearch.models.describe import nesting_levels
from nlsearch.optim.periodic import PeriodicOptimizer, parameter_periods

F64 = torch.float64


def test_steps_clock_with_one_block_is_exactly_the_swiglu_ffn():
    """k = 1, clock steps, periods [1]: the output IS SwiGLU(x) (the backbone adds x), bit for bit."""
    cms = CMSConfig(clock="steps", periods=[1], ratio=2.0).build(16)
    ffn = SwiGLUConfig(ratio=2.0).build(16)
    ffn.load_state_dict({k.removeprefix("blocks.0."): v for k, v in cms.state_dict().items()})
    x = torch.randn(2, 9, 16)
    (y, state), (y_ffn, _) = cms(x), ffn(x)
    assert torch.equal(y, y_ffn) and state is None and cms.state_size() == 0
    assert [p is q for p, q in zip(cms.param_groups_by_period()[1], cms.parameters())] == [True, True]


def test_model_with_cms_of_one_block_equals_the_swiglu_model():
    base = {"vocab_size": 32, "d_model": 16, "n_layers": 2, "mixer": {"kind": "attention", "n_heads": 2}}
    torch.manual_seed(0)
    plain = build_model({**base, "mlp": {"kind": "swiglu", "ratio": 4.0}})
    cms = build_model({**base, "mlp": {"kind": "cms", "clock": "steps", "periods": [1], "ratio": 4.0}})
    cms.load_state_dict({k.replace(".mlp.", ".mlp.blocks.0."): v for k, v in plain.state_dict().items()})
    tokens = torch.randint(0, 32, (2, 13))
    assert torch.equal(plain(tokens)[0], cms(tokens)[0])


def _block_loss(ws, k, v):
    """½‖M(k) − v‖² of the residual MLP memory M(k) = k + W2 silu(W1 k), per head (summed)."""
    hidden = F.silu((ws[0] @ k[..., None]))
    return 0.5 * ((k + (ws[1] @ hidden)[..., 0] - v) ** 2).sum()


def test_tokens_clock_takes_one_step_per_window_with_the_summed_gradients():
    """Fast weights after each window = start weights − Σ_window η_s ∇ℓ_s(start weights): no token of
    a window is dropped, and gradients are read only at the window's start (the anchor)."""
    torch.manual_seed(0)
    cms = CMSConfig(clock="tokens", periods=[4], n_heads=2).build(8).double()
    x = torch.randn(2, 8, 8, dtype=F64)
    block = cms.blocks[0]
    q, k, v = block.qkv(x).view(2, 8, 3, 2, 4).permute(2, 0, 3, 1, 4)          # 3 x (B, H, T, Dh)
    k = F.normalize(k, dim=-1)
    eta = 0.1 * torch.sigmoid(block.gates(x)).permute(0, 2, 1) / 4               # η = eta_scale σ(·) / C
    ws, after = [w.expand(2, -1, -1, -1) for w in block.init_weights], []
    for start in (0, 4):
        grads = [torch.func.grad(_block_loss)(ws, k[:, :, s], v[:, :, s]) for s in range(start, start + 4)]
        ws = [w - sum(eta[:, :, start + j, None, None] * g[i] for j, g in enumerate(grads))
              for i, w in enumerate(ws)]
        after.append(ws)
    _, state = cms(x)
    for got, want in zip(state[0].memory.weights, after[1]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    _, mid = cms(x[:, :6])                                       # two tokens into the second window
    assert mid[0].memory.offset == 2
    for got, want in zip(mid[0].memory.anchor, after[0]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("read", ["after_write", "before_write"])
def test_tokens_clock_no_token_sees_a_later_token_of_its_window(read):
    torch.manual_seed(0)
    cms = CMSConfig(clock="tokens", periods=[2, 8], n_heads=2, read=read).build(8).double()
    x = torch.randn(1, 16, 8, dtype=F64)
    x2 = x.clone()
    x2[:, 5] += 1.0                                              # inside the first 8-token window
    y1, y2 = cms(x)[0], cms(x2)[0]
    assert torch.equal(y1[:, :5], y2[:, :5])
    assert not torch.allclose(y1[:, 5], y2[:, 5])


def test_carry_state_off_restarts_every_call_from_the_meta_learned_weights():
    torch.manual_seed(0)
    cfg = CMSConfig(clock="tokens", periods=[1, 4], n_heads=2)
    carried, fresh = cfg.build(8).double(), cfg.model_copy(update={"carry_state": False}).build(8).double()
    fresh.load_state_dict(carried.state_dict())
    x = torch.randn(2, 10, 8, dtype=F64)
    y, state = fresh(x)
    assert state is None and fresh.state_size() == 0 and carried.state_size() > 0
    assert torch.equal(fresh(x[:, 5:])[0], carried(x[:, 5:])[0])
    _, carried_state = carried(x[:, :5])
    assert not torch.allclose(carried(x[:, 5:], carried_state)[0], fresh(x[:, 5:])[0])
    with pytest.raises(ValueError, match="carries no state"):
        fresh(x, state=carried_state)
    assert torch.equal(y, carried(x)[0])


def test_levels_one_per_block_on_its_clock():
    rows = [(lv.name, lv.clock, lv.period, lv.objective, lv.memory)
            for lv in CMSConfig(clock="tokens", periods=[1, 16, 64]).levels()]
    assert rows == [("CMS-1", "tokens", 1, "l2", "mlp"), ("CMS-2", "tokens", 16, "l2", "mlp"),
                    ("CMS-3", "tokens", 64, "l2", "mlp")]
    steps = CMSConfig(clock="steps", periods=[1, 8]).levels()
    assert [(lv.clock, lv.period) for lv in steps] == [("steps", 1), ("steps", 8)]
    profile = [(lv.name, lv.period) for lv in nesting_levels(load_model_config("cms"))]
    assert profile == [("attention", 1), ("CMS-1", 16), ("CMS-2", 64), ("weights", 1), ("AdamW moments", 1)]


@pytest.mark.parametrize("periods", [[0], [-2], [], [4, 0]])
def test_bad_periods_name_mlp_periods(periods, monkeypatch):
    allocated = []
    monkeypatch.setattr(torch.nn.Module, "__init__", lambda self, *a, **k: allocated.append(self))
    with pytest.raises(ConfigError, match="mlp.periods"):
        parse_config(ModelConfig, {"mlp": {"kind": "cms", "periods": periods}}, "space.yaml")
    assert allocated == []


def test_heads_must_tile_the_width():
    with pytest.raises(ConfigError, match="mlp.n_heads=3 does not divide d_model=16"):
        parse_config(ModelConfig, {"d_model": 16, "mlp": {"kind": "cms", "clock": "tokens", "n_heads": 3}})
    with pytest.raises(ConfigError, match="mlp.clokc"):
        parse_config(ModelConfig, {"mlp": {"kind": "cms", "clokc": "steps"}})


class _Net(nn.Module):
    """A period-1 linear map in front of a steps-clock CMS with periods (1, 3)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 6)
        self.cms = CMSConfig(clock="steps", periods=[1, 3], ratio=1.0).build(6)

    def forward(self, x):
        return self.cms(self.inp(x))[0]


def _params_by_period(net):
    groups = parameter_periods(net)
    assert sorted(groups) == [1, 3]
    assert {id(p) for p in groups[3]} == {id(p) for p in [*net.cms.blocks[1].parameters(),
                                                          *net.cms.norms[1].parameters()]}
    return groups


def test_periodic_sgd_moves_a_slow_parameter_by_exactly_the_sum_of_its_window():
    torch.manual_seed(0)
    net = _Net().double()
    groups = _params_by_period(net)
    opt = PeriodicOptimizer(lambda m: torch.optim.SGD(m.parameters(), lr=1.0), net)
    window_start = [p.detach().clone() for p in groups[3]]
    window_sum = [torch.zeros_like(p) for p in groups[3]]
    for step in range(6):
        fast_before = [p.detach().clone() for p in groups[1]]
        opt.zero_grad()
        loss = (net(torch.randn(3, 5, 6, dtype=F64)) * torch.randn(3, 5, 6, dtype=F64)).mean()
        g_fast = torch.autograd.grad(loss, groups[1], retain_graph=True)
        g_slow = torch.autograd.grad(loss, groups[3], retain_graph=True)
        loss.backward()
        opt.step()
        window_sum = [s + g for s, g in zip(window_sum, g_slow)]
        for p, p0, g in zip(groups[1], fast_before, g_fast):
            torch.testing.assert_close(p.detach(), p0 - g, atol=1e-12, rtol=1e-12)
        closes = step % 3 == 2
        for p, p0, s in zip(groups[3], window_start, window_sum):
            torch.testing.assert_close(p.detach(), p0 - s if closes else p0, atol=1e-12, rtol=1e-12)
            if not closes:
                torch.testing.assert_close(p.grad, s, atol=1e-12, rtol=1e-12)   # summed, held
        if closes:
            window_start = [p.detach().clone() for p in groups[3]]
            window_sum = [torch.zeros_like(p) for p in groups[3]]
    opt.zero_grad()
    assert all(p.grad is None for p in groups[3])


def test_periodic_adamw_steps_slow_parameters_once_per_window():
    torch.manual_seed(0)
    net = _Net()
    groups = _params_by_period(net)
    opt = PeriodicOptimizer(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2), net)
    for step in range(7):
        before = [p.detach().clone() for p in groups[3]]
        opt.zero_grad()
        net(torch.randn(3, 5, 6)).square().sum().backward()
        opt.step()
        moved = any(not torch.equal(p, b) for p, b in zip(groups[3], before))
        assert moved == (step % 3 == 2), step
    assert all(int(opt.inner.state[p]["step"]) == 2 for p in groups[3])
    assert all(int(opt.inner.state[p]["step"]) == 7 for p in groups[1])
    assert opt.state_dict()["step_count"] == 7
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)


def test_tokens_clock_and_other_models_train_every_parameter_every_step():
    model = build_model({"d_model": 16, "n_layers": 1, "mixer": {"n_heads": 2},
                         "mlp": {"kind": "cms", "clock": "tokens", "periods": [4, 8], "n_heads": 2}})
    assert list(parameter_periods(model)) == [1]


def test_tokens_clock_block_may_be_a_linear_dot_memory():
    """memory: [linear], objective: [dot] makes the block a linear memory with the dot objective:
    ∇_M(−⟨M k, v⟩) = −v kᵀ, so after the sequence M = M_0 + Σ_t η_t v_t k_tᵀ (written from the rule)."""
    torch.manual_seed(0)
    cfg = CMSConfig(clock="tokens", periods=[4], n_heads=2, memory=["linear"], objective=["dot"])
    cms = cfg.build(8).double()
    x = torch.randn(2, 8, 8, dtype=F64)
    block = cms.blocks[0]
    _, k, v = block.qkv(x).view(2, 8, 3, 2, 4).permute(2, 0, 3, 1, 4)          # (B, H, T, Dh)
    k = F.normalize(k, dim=-1)
    eta = 0.1 * torch.sigmoid(block.gates(x)).permute(0, 2, 1) / 4               # (B, H, T)
    _, state = cms(x)
    (m_final,) = state[0].memory.weights
    m0 = torch.zeros_like(m_final) if not len(block.init_weights) else block.init_weights[0].expand_as(m_final)
    want = m0 + torch.einsum("bht,bhtv,bhtk->bhvk", eta, v, k)
    torch.testing.assert_close(m_final, want, atol=1e-12, rtol=1e-12)
    assert [lv.objective for lv in cfg.levels()] == ["dot"] and [lv.memory for lv in cfg.levels()] == ["linear"]
    default = CMSConfig(clock="tokens", periods=[4, 16], n_heads=2)
    explicit = default.model_copy(update={"memory": ("mlp", "mlp"), "objective": ("l2", "l2")})
    torch.manual_seed(1)
    a = default.build(8)
    torch.manual_seed(1)
    b = explicit.build(8)
    assert torch.equal(a(x.float())[0], b(x.float())[0])


def test_per_block_lists_must_match_the_periods():
    with pytest.raises(ConfigError, match="memory has 1 entries but periods has 2"):
        parse_config(CMSConfig, {"clock": "tokens", "periods": [4, 16], "memory": ["linear"]})
    with pytest.raises(ConfigError, match="clock: tokens only"):
        parse_config(CMSConfig, {"clock": "steps", "periods": [4], "objective": ["dot"]})
