"""The Mamba-2 (SSD) mixer against a per-token reference written from its equations (not the memory op):

    h_t = exp(Δ_t a_h) h_{t−1} + Δ_t x_t B_tᵀ,   y_t = h_t C_t + D_h x_t,   out = W_o RMSNorm(y ⊙ SiLU(z))

with [z, x, B, C, Δ] = W_in u, SiLU(causal depthwise conv) over [x, B, C], Δ = softplus(· + b_Δ),
a_h = −exp(A_log_h); plus the shared mixer contract."""
import pytest
import torch

from mixer_contract import MixerContract
from nlsearch.layers import Mamba2LayerConfig

F64 = torch.float64


class TestMamba2Layer(MixerContract):
    @pytest.fixture(autouse=True, params=[("fast", 4, 1), ("naive", 0, 1), ("fast", 4, 2)],
                    ids=["fast-conv4", "naive-noconv", "fast-2groups"])
    def _setting(self, request):
        self.impl, self.conv, self.groups = request.param

    def make_mixer(self, d_model):
        return Mamba2LayerConfig(head_dim=8, d_state=4, n_groups=self.groups, conv_size=self.conv,
                                 impl=self.impl).build(d_model)


def _reference(layer, u, h0=None):
    """Outputs and final state (B, H, P, N), per token, from the equations above."""
    b, t, _ = u.shape
    inner, hh, p, n, g = layer.inner, layer.h, layer.p, layer.n, layer.g
    proj = u @ layer.in_proj.weight.T
    z, xbc, dt = proj[..., :inner], proj[..., inner:2 * inner + 2 * g * n], proj[..., 2 * inner + 2 * g * n:]
    kernel = layer.cfg.conv_size
    w = layer.conv.conv.weight[:, 0, :]                                           # (C, K)
    padded = torch.cat([xbc.new_zeros(b, kernel - 1, xbc.shape[-1]), xbc], dim=1)
    conv = torch.stack([(padded[:, s:s + kernel] * w.T).sum(1) for s in range(t)], dim=1)
    xbc = conv * torch.sigmoid(conv)
    x = xbc[..., :inner].reshape(b, t, hh, p)
    bb = xbc[..., inner:inner + g * n].reshape(b, t, g, n)
    cc = xbc[..., inner + g * n:].reshape(b, t, g, n)
    delta = torch.log1p(torch.exp(dt + layer.dt_bias))                            # softplus, (B, T, H)
    a = -torch.exp(layer.A_log)                                                   # (H,)
    group = torch.arange(hh) // (hh // g)
    h = torch.zeros(b, hh, p, n, dtype=u.dtype) if h0 is None else h0
    ys = []
    for s in range(t):
        decay = torch.exp(delta[:, s] * a)[..., None, None]                      # (B, H, 1, 1)
        write = delta[:, s, :, None, None] * x[:, s, :, :, None] * bb[:, s, group, None, :]
        h = decay * h + write                                                     # (B, H, P, N)
        ys.append((h @ cc[:, s, group, :, None])[..., 0] + layer.D[:, None] * x[:, s])   # (B, H, P)
    y = torch.stack(ys, dim=1).reshape(b, t, inner)
    gated = y * z * torch.sigmoid(z)
    normed = gated / torch.sqrt(gated.square().mean(-1, keepdim=True) + torch.finfo(F64).eps) * layer.norm.weight
    return normed @ layer.out_proj.weight.T, h


@pytest.mark.parametrize("groups", [1, 2])
def test_layer_matches_the_ssd_equations_with_gradients(groups):
    torch.manual_seed(0)
    layer = Mamba2LayerConfig(head_dim=4, d_state=3, n_groups=groups).build(8).double()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
    u = torch.randn(2, 37, 8, dtype=F64, requires_grad=True)
    y, state = layer(u)
    y_ref, h_ref = _reference(layer, u)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(state.memory.weights[0], h_ref, atol=1e-10, rtol=1e-10)
    w = torch.linspace(-1, 1, y.numel(), dtype=F64).view_as(y)
    leaves = [u] + list(layer.parameters())
    got = torch.autograd.grad((y * w).sum() + state.memory.weights[0].sum(), leaves)
    want = torch.autograd.grad((y_ref * w).sum() + h_ref.sum(), leaves)
    for (name, _), a, b in zip([("u", None)] + list(layer.named_parameters()), got, want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=lambda m: f"d{name}: {m}")


def test_decay_reaches_zero_without_breaking():
    """A head whose Δ·a is far below float32's exp range (a full reset every token) stays finite."""
    torch.manual_seed(0)
    layer = Mamba2LayerConfig(head_dim=4, d_state=3).build(8)
    with torch.no_grad():
        layer.A_log[0] = 12.0                                                    # a = -1.6e5: α = exp(Δa) = 0
    u = torch.randn(2, 40, 8, requires_grad=True)
    y, _ = layer(u)
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(u.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="head_dim=24 does not divide"):
        Mamba2LayerConfig(head_dim=24).build(16)
    with pytest.raises(ValueError, match="n_groups=3 does not divide"):
        Mamba2LayerConfig(head_dim=8, n_groups=3).build(16)
