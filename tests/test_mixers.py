"""Every mixer under the shared contract, plus the checks particular to each."""
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from mixer_contract import MixerContract
from nlsearch.layers import MemoryLayerConfig
from nlsearch.layers.attention import AttentionLayerConfig
from nlsearch.layers.mamba import MambaLayerConfig
from nlsearch.ops import PRESETS, preset


class TestMemoryLayer(MixerContract):
    @pytest.fixture(autouse=True, params=sorted(PRESETS))
    def _preset(self, request):
        self.rule = preset(request.param)

    def make_mixer(self, d_model):
        return MemoryLayerConfig(rule=self.rule, n_heads=2).build(d_model)

    def expected_state_size(self, mixer, seq_len):
        """state_size(seq_len) counts the anchor of a mini-batch left open (seq_len % chunk != 0)."""
        return mixer.state_size(seq_len), True


class TestMambaLayer(MixerContract):
    @pytest.fixture(autouse=True, params=[(8, 4), (64, 0)], ids=["chunk8-conv4", "chunk64-noconv"])
    def _setting(self, request):
        self.chunk, self.conv = request.param

    def make_mixer(self, d_model):
        return MambaLayerConfig(d_state=4, chunk=self.chunk, conv_size=self.conv).build(d_model)


class TestAttentionLayer(MixerContract):
    @pytest.fixture(autouse=True, params=[None, 1, 6], ids=["full", "window1", "window6"])
    def _window(self, request):
        self.window = request.param

    def make_mixer(self, d_model):
        return AttentionLayerConfig(n_heads=2, window=self.window).build(d_model)

    def mixes_over_time(self, mixer):
        return self.window != 1

    def expected_state_size(self, mixer, seq_len):
        return mixer.state_size(seq_len), True


def _rope_complex(x, offset, base):
    """RoPE as a complex rotation of the pairs (x_i, x_{i + Dh/2}): an independent reference."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half], x[..., half:])
    freq = base ** (-2 * torch.arange(half, dtype=x.dtype) / x.shape[-1])
    pos = torch.arange(offset, offset + x.shape[-2], dtype=x.dtype)
    z = z * torch.polar(torch.ones_like(pos[:, None] * freq), pos[:, None] * freq)
    return torch.cat([z.real, z.imag], dim=-1)


def _attention_naive(layer, x, window):
    """Explicit softmax over masked scores, per query, from the layer's own projections."""
    b, t, _ = x.shape
    h, dh = layer.h, layer.dh
    q, k, v = layer.qkv(x).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)
    q, k = _rope_complex(q, 0, layer.cfg.rope_base), _rope_complex(k, 0, layer.cfg.rope_base)
    ys = []
    for i in range(t):
        lo = 0 if window is None else max(0, i - window + 1)
        scores = (k[:, :, lo:i + 1] @ q[:, :, i, :, None]).squeeze(-1) / math.sqrt(dh)   # (B, H, S)
        ys.append((scores.softmax(-1)[..., None] * v[:, :, lo:i + 1]).sum(2))
    y = torch.stack(ys, dim=2).transpose(1, 2).reshape(b, t, h * dh)
    return layer.out(y)


@pytest.mark.parametrize("window", [None, 1, 4, 100])
def test_attention_matches_naive_reference(window):
    torch.manual_seed(0)
    layer = AttentionLayerConfig(n_heads=2, window=window, rope_base=50.0).build(16).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    y_ref = _attention_naive(layer, x, window)
    torch.testing.assert_close(layer(x)[0], y_ref, atol=1e-10, rtol=1e-10)
    y1, cache = layer(x[:, :10])
    y2, _ = layer(x[:, 10:], cache)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_ref, atol=1e-10, rtol=1e-10)


def test_rope_scores_depend_on_relative_position_only():
    from nlsearch.layers.attention import rotary
    q, k = torch.randn(2, 1, 1, 8, dtype=torch.float64).unbind(0)
    score = lambda m, n: (rotary(q, m, 100.0) * rotary(k, n, 100.0)).sum()  # noqa: E731
    torch.testing.assert_close(score(3, 1), score(12, 10))
    torch.testing.assert_close(rotary(q, 0, 100.0), q)


def test_attention_cache_and_state_size():
    layer = AttentionLayerConfig(n_heads=2, window=6).build(16)
    _, cache = layer(torch.randn(1, 9, 16))
    assert cache.k.shape == (1, 2, 5, 8) and cache.offset == 9
    assert layer.state_size() == 2 * 16 * 5 and layer.state_size(3) == 2 * 16 * 3
    full = AttentionLayerConfig(n_heads=2).build(16)
    assert full.state_size(100) == 2 * 16 * 100
    with pytest.raises(ValueError, match="pass seq_len"):
        full.state_size()


def test_attention_config_errors():
    with pytest.raises(ValidationError, match="windw"):
        AttentionLayerConfig(windw=4)
    with pytest.raises(ValidationError, match="window"):
        AttentionLayerConfig(window=0)
    with pytest.raises(ValueError, match="head_dim=5 must be even"):
        AttentionLayerConfig(n_heads=2, head_dim=5).build(16)
    with pytest.raises(ValueError, match="n_heads=3 does not divide"):
        AttentionLayerConfig(n_heads=3).build(16)


def test_mamba_initialisation():
    layer = MambaLayerConfig(d_state=5, dt_min=1e-3, dt_max=1e-1).build(32)
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    torch.testing.assert_close(-layer.A_log.exp(), -torch.arange(1.0, 6.0).repeat(64, 1))
    assert layer.rank == 2 and layer.state_size() == 64 * 5 + 64 * 3


def test_mamba_naive_and_fast_agree():
    cfg = MambaLayerConfig(d_state=4, chunk=8)
    fast = cfg.build(16).double()
    naive = cfg.model_copy(update={"impl": "naive"}).build(16).double()
    naive.load_state_dict(fast.state_dict())
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    torch.testing.assert_close(fast(x)[0], naive(x)[0], atol=1e-10, rtol=1e-10)


def test_mamba_config_errors():
    with pytest.raises(ValidationError, match="dt_min"):
        MambaLayerConfig(dt_min=0.1, dt_max=0.01)
    with pytest.raises(ValidationError, match="d_stat"):
        MambaLayerConfig(d_stat=4)
    with pytest.raises(ValidationError, match="impl"):
        MambaLayerConfig(impl="cuda")


def test_mamba_scans_half_inputs_in_float32():
    layer = MambaLayerConfig(d_state=4, chunk=8).build(16).to(torch.bfloat16)
    x = torch.randn(2, 20, 16, dtype=torch.bfloat16)
    y, state = layer(x)
    y2, _ = layer(x, state)
    assert y.dtype == y2.dtype == torch.bfloat16 and state.ssm.dtype == torch.float32
    assert torch.isfinite(y2).all()


def _titans_exact(mixer, seq_len):
    """The memory's state_size(seq_len) counts the anchor of an open mini-batch (see TestMemoryLayer)."""
    return mixer.state_size(seq_len), True


class TestTitansMAG(MixerContract):
    @pytest.fixture(autouse=True, params=["normalized", "linear"])
    def _gate(self, request):
        self.gate = request.param

    def make_mixer(self, d_model):
        from nlsearch.layers import TitansMAGConfig
        return TitansMAGConfig(memory=MemoryLayerConfig(rule="titans-lmm", n_heads=2), n_heads=2, window=6,
                               n_persistent=3, gate=self.gate).build(d_model)

    def expected_state_size(self, mixer, seq_len):
        return _titans_exact(mixer, seq_len)


class TestTitansMAL(MixerContract):
    @pytest.fixture(autouse=True, params=["residual", "compose"])
    def _inner(self, request):
        self.inner = request.param

    def make_mixer(self, d_model):
        from nlsearch.layers import TitansMALConfig
        return TitansMALConfig(memory=MemoryLayerConfig(rule="titans-lmm", n_heads=2), n_heads=2, window=6,
                               n_persistent=3, inner=self.inner).build(d_model)

    def expected_state_size(self, mixer, seq_len):
        return _titans_exact(mixer, seq_len)


class TestTitansMAC(MixerContract):
    """Any cut works (the state keeps the open segment's start weights and keys/values), so the
    default cuts, inside and across segments, stay."""

    @pytest.fixture(autouse=True, params=[(8, "titans-lmm"), (5, "deltanet")], ids=["seg8-lmm", "seg5-deltanet"])
    def _setting(self, request):
        self.segment, self.rule = request.param

    def make_mixer(self, d_model):
        from nlsearch.layers import TitansMACConfig
        return TitansMACConfig(memory=MemoryLayerConfig(rule=self.rule, n_heads=2), n_heads=2,
                               segment=self.segment, n_persistent=3).build(d_model)

    def expected_state_size(self, mixer, seq_len):
        return _titans_exact(mixer, seq_len)


SELFMOD_SETTINGS = {
    "chunk1-paper": dict(chunk=1, conv_size=4),
    "chunk4-before-value-linear-split": dict(chunk=4, conv_size=0, read="before_write", memory_target="value",
                                             gates="linear", head_input="split"),
}


class TestSelfModLayer(MixerContract):
    @pytest.fixture(autouse=True, params=sorted(SELFMOD_SETTINGS))
    def _setting(self, request):
        self.setting = SELFMOD_SETTINGS[request.param]

    def make_mixer(self, d_model):
        from nlsearch.layers import SelfModConfig
        return SelfModConfig(n_heads=2, **self.setting).build(d_model)

    def expected_state_size(self, mixer, seq_len):
        """state_size(seq_len) counts the anchor of a chunk left open (seq_len % chunk != 0)."""
        return mixer.state_size(seq_len), True


CMS_SETTINGS = {
    "tokens-1-4-6": dict(clock="tokens", periods=[1, 4, 6]),
    "tokens-3-8-before": dict(clock="tokens", periods=[3, 8], read="before_write"),
    "steps-1-3": dict(clock="steps", periods=[1, 3], ratio=2.0),
}


class TestCMS(MixerContract):
    """CMS is a channel mixer with the mixer interface; clock tokens carries its fast weights."""

    @pytest.fixture(autouse=True, params=sorted(CMS_SETTINGS))
    def _setting(self, request):
        self.setting = CMS_SETTINGS[request.param]

    def make_mixer(self, d_model):
        from nlsearch.layers import CMSConfig
        return CMSConfig(n_heads=2, **self.setting).build(d_model)

    def mixes_over_time(self, mixer):
        return mixer.cfg.clock == "tokens"

    def expected_state_size(self, mixer, seq_len):
        """Each block's anchor is carried only while its window is open (seq_len % period != 0)."""
        return mixer.state_size(seq_len), True
