"""Titans MAC / MAG / MAL: read/write order, the gate, persistent tokens, configs and presets.
(The shared mixer contract runs on them in test_mixers.py.)"""
import pytest
import torch

from nlsearch.config import ConfigError, parse_config
from nlsearch.layers import MemoryLayerConfig, TitansMACConfig, TitansMAGConfig, TitansMALConfig
from nlsearch.layers.attention import KVCache
from nlsearch.layers.titans_parts import OutputGate, prefix_attention, prefix_attention_naive
from nlsearch.models import ModelConfig, build_model, load_model_config
from nlsearch.ops import MemoryRule, preset

D = 16
MEM = MemoryLayerConfig(rule=preset("titans-lmm"), n_heads=2)


def _x(t, seed=1):
    return torch.randn(2, t, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _mac(**kw):
    torch.manual_seed(0)
    return TitansMACConfig(**{"memory": MEM, "n_heads": 2, "segment": 6, "n_persistent": 3, **kw}).build(D).double()


def _record(obj, name):
    """Wrap ``obj.name`` so its calls' (args, result) are kept in the returned list."""
    calls, fn = [], getattr(obj, name)

    def wrapped(*args):
        out = fn(*args)
        calls.append((args, out))
        return out
    setattr(obj, name, wrapped)
    return calls


def test_mac_retrieval_reads_the_memory_as_it_stood_before_the_segment():
    mac, x = _mac(), _x(18)
    _, after1 = mac(x[:, :6])
    _, after2 = mac(x[:, :12])
    calls = _record(mac, "retrieve")
    mac(x)
    assert len(calls) == 3
    initial = mac.memory.initial_state(2, x).memory.weights
    for (args, _), expected in zip(calls, [initial, after1.memory.memory.weights, after2.memory.memory.weights]):
        assert all(torch.equal(a, b) for a, b in zip(args[1], expected))
    assert not any(torch.equal(a, b) for a, b in zip(calls[1][0][1], after2.memory.memory.weights))


def test_mac_retrieval_inside_a_segment_ignores_the_segments_own_writes():
    """Cut inside a segment: the second piece still reads the segment-start weights, not the
    weights after the first piece's writes (which the state also carries)."""
    mac, x = _mac(), _x(6)
    _, st = mac(x[:, :4])
    calls = _record(mac, "retrieve")
    mac(x[:, 4:], st)
    used = calls[0][0][1]
    initial = mac.memory.initial_state(2, x).memory.weights
    assert all(torch.equal(a, b) for a, b in zip(used, initial))
    assert not any(torch.equal(a, b) for a, b in zip(used, st.memory.memory.weights))


def test_mac_writes_the_attention_output_and_gates_it_with_the_read_after_write():
    mac, x = _mac(memory=MEM.model_copy(update={"conv_size": 0})), _x(6)
    writes, gates = _record(mac.memory, "forward"), _record(mac.gate, "forward")
    y, _ = mac(x)
    (o, mem0), (m, _) = writes[0]
    (o_gate, m_gate), y_gate = gates[0]
    assert torch.equal(o_gate, o) and torch.equal(m_gate, m) and torch.equal(y_gate, y)
    _, after_first = mac.memory(o[:, :1], mem0)
    torch.testing.assert_close(mac.retrieve(o[:, :1], after_first.memory.weights), m[:, :1],
                               atol=1e-12, rtol=1e-12)


def test_mac_segments_talk_only_through_the_memory():
    mac, x = _mac(), _x(12)
    x2 = x.clone()
    x2[:, 2] += 1.0
    y1, _ = mac(x)
    y2, _ = mac(x2)
    assert not torch.allclose(y1[:, 6:], y2[:, 6:])
    still = MemoryRule(memory="mlp", optimizer="momentum", chunk=16)          # no decay, η = 0: M fixed
    frozen = _mac(memory=MemoryLayerConfig(rule=still, n_heads=2, conv_size=0, eta_scale=0.0))
    y1, _ = frozen(x)
    y2, _ = frozen(x2)
    torch.testing.assert_close(y1[:, 6:], y2[:, 6:], atol=1e-12, rtol=1e-12)


def test_mac_handles_empty_input():
    mac = _mac()
    y, st = mac(_x(0))
    assert y.shape == (2, 0, D) and st.offset == 0


@pytest.mark.parametrize("form", ["normalized", "linear"])
def test_gate_forms(form):
    torch.manual_seed(0)
    gate = OutputGate(D, form).double()
    with torch.no_grad():
        for p in gate.parameters():
            p.normal_()
    y, m = _x(5, 2), _x(5, 3)
    if form == "normalized":
        rms = lambda z, w: z * z.pow(2).mean(-1, keepdim=True).add(torch.finfo(z.dtype).eps).rsqrt() * w  # noqa: E731
        inner = rms(y, gate.norm_y.weight) * torch.sigmoid(rms(m, gate.norm_m.weight))
    else:
        inner = y * torch.sigmoid(m @ gate.gate.weight.T + gate.gate.bias)
    torch.testing.assert_close(gate(y, m), inner @ gate.out.weight.T, atol=1e-12, rtol=1e-12)


MIXER_CONFIGS = {
    "mac": lambda n: TitansMACConfig(memory=MEM, n_heads=2, segment=6, n_persistent=n),
    "mag": lambda n: TitansMAGConfig(memory=MEM, n_heads=2, window=4, n_persistent=n),
    "mal": lambda n: TitansMALConfig(memory=MEM, n_heads=2, window=4, n_persistent=n),
}


@pytest.mark.parametrize("variant", sorted(MIXER_CONFIGS))
def test_persistent_tokens_change_every_output(variant):
    torch.manual_seed(0)
    mixer = MIXER_CONFIGS[variant](3).build(D).double()
    x = _x(10)
    y1, _ = mixer(x)
    with torch.no_grad():
        mixer.attn.persistent[1] += 0.5
    y2, _ = mixer(x)
    assert (y1 - y2).abs().amax(dim=-1).min() > 0, "some token did not see the persistent tokens"
    bare = MIXER_CONFIGS[variant](0).build(D).double()
    assert bare.attn.persistent is None and bare(x)[0].shape == x.shape


def test_persistent_tokens_carry_no_position():
    """Window 1: the context is [P, the token itself]; both scores are position-free, so a token gives
    the same output at position 0 and at position 100."""
    torch.manual_seed(0)
    attn = TitansMAGConfig(memory=MEM, n_heads=2, window=1, n_persistent=3).build(D).double().attn
    x = _x(1)
    empty = torch.zeros(2, 2, 0, 8, dtype=torch.float64)
    y0, _ = attn(x)
    y100, _ = attn(x, KVCache(empty, empty, 100))
    torch.testing.assert_close(y0, y100, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("n_persistent", [0, 3])
def test_prefix_attention_matches_naive(n_persistent):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, q_rot, k, v = rnd(2, 2, 5, 4), rnd(2, 2, 5, 4), rnd(2, 2, 9, 4), rnd(2, 2, 9, 4)
    kp, vp = (rnd(2, n_persistent, 4), rnd(2, n_persistent, 4)) if n_persistent else (None, None)
    mask = torch.rand(5, 9, generator=g) < 0.6
    mask[:, 0] = True
    torch.testing.assert_close(prefix_attention(q, q_rot, k, v, kp, vp, mask),
                               prefix_attention_naive(q, q_rot, k, v, kp, vp, mask), atol=1e-12, rtol=1e-12)


def test_memory_mapping_without_rule_keeps_titans_lmm_and_rule_is_configurable():
    cfg = parse_config(ModelConfig, {"d_model": 16, "mixer": {"kind": "titans-mag", "n_heads": 2,
                                                               "memory": {"n_heads": 2}}})
    assert cfg.mixer.memory.rule == preset("titans-lmm") and cfg.mixer.memory.eta_scale is None
    cfg = parse_config(ModelConfig, {"d_model": 16, "mixer": {"kind": "titans-mac", "n_heads": 2,
                                                               "memory": {"n_heads": 2, "rule": "deltanet"}}})
    assert cfg.mixer.memory.rule == preset("deltanet") and cfg.mixer.memory.eta_scale is None
    assert cfg.build().blocks[0].mixer(torch.randn(1, 9, 16))[0].shape == (1, 9, 16)


@pytest.mark.parametrize("data,message", [
    ({"kind": "titans-mag", "n_heads": 3}, "mixer.n_heads=3 does not divide"),
    ({"kind": "titans-mal", "n_heads": 2, "head_dim": 5}, "head_dim=5 must be even"),
    ({"kind": "titans-mac", "memory": {"n_heads": 5}}, "mixer.memory.n_heads=5 does not divide"),
    ({"kind": "titans-mac", "segmnt": 8}, "segmnt"),
    ({"kind": "titans-mag", "gate": "tanh"}, "gate"),
])
def test_bad_titans_configs_fail_with_the_key_path(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(ModelConfig, {"d_model": 16, "mixer": data})


@pytest.mark.parametrize("name", ["titans-mac", "titans-mag", "titans-mal"])
def test_presets_build_run_and_report_levels(name):
    cfg = load_model_config(name)
    assert cfg.mixer.kind == name and cfg.mixer.memory.rule == preset("titans-lmm")
    names = [lv.name for lv in cfg.mixer.levels()]
    assert names == ["memory (titans-lmm)", "memory momentum", "attention", "persistent memory"]
    persistent = cfg.mixer.levels()[-1]
    assert (persistent.clock, persistent.period, persistent.memory) == ("steps", 1, "parameters")
    model = build_model(cfg)
    tokens = torch.randint(0, 256, (1, 70))
    logits, state = model(tokens)
    assert logits.shape == (1, 70, 256) and torch.isfinite(logits).all()
    assert model.state_size(70) > 0


def test_mac_state_size_counts_the_open_segment():
    mac = _mac()
    closed, open4 = mac.state_size(12), mac.state_size(16)
    weights = sum(w[0].numel() for w in mac.memory.initial_state(1, _x(1)).memory.weights)
    memory = {n: mac.memory.state_size(n) for n in (12, 16, None)}       # its own open mini-batch, if any
    assert closed == memory[12]
    assert open4 - memory[16] == weights + 2 * 2 * 4 * 16
    assert mac.state_size() - memory[None] == weights + 2 * 2 * 5 * 16


@pytest.mark.parametrize("name", ["titans-mac", "titans-mag", "titans-mal"])
def test_presets_stay_finite_at_initialisation_on_repetitive_text(name):
    """Regression: before the memory layer normalised its step size by the chunk (and momentum), these
    diverged at initialisation."""
    torch.manual_seed(0)
    model = build_model(name)
    tokens = torch.tensor(list(b"the quick brown fox jumps over the lazy dog.      " * 6))[None]   # (1, 300)
    with torch.no_grad():
        assert torch.isfinite(model(tokens)[0]).all()
