"""Model configs: presets, YAML round trip and hash, strict errors with key paths, looped depth."""
import pytest
import torch
import yaml

from nlsearch.config import ConfigError, canonical_json, config_hash, load_config, parse_config, to_yaml
from nlsearch.models import ModelConfig, build_model, list_presets, load_model_config


@pytest.mark.parametrize("name", list_presets())
def test_preset_round_trips_to_the_same_hash(name, tmp_path):
    cfg = load_model_config(name)
    path = tmp_path / "copy.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(ModelConfig, path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert canonical_json(parse_config(ModelConfig, yaml.safe_load(to_yaml(cfg)))) == canonical_json(cfg)


def test_hash_ignores_unhashed_fields_only():
    base = load_model_config("deltanet")
    renamed = base.model_copy(update={"name": "another label"})
    naive = base.model_copy(update={"mixer": base.mixer.model_copy(update={"impl": "naive"})})
    wider = base.model_copy(update={"d_model": 64})
    assert config_hash(renamed) == config_hash(base) == config_hash(naive)
    assert config_hash(wider) != config_hash(base)


def test_a_field_added_later_is_hashed_only_away_from_its_default():
    """``retention_init`` came after runs were recorded under memory configs' hashes: at its default
    (None) it is not part of the canonical form, so those hashes (and the runs they name) hold."""
    base = load_model_config("gated-deltanet")
    same = base.model_copy(update={"mixer": base.mixer.model_copy(update={"retention_init": None})})
    spread = base.model_copy(update={"mixer": base.mixer.model_copy(update={"retention_init": (0.9, 0.999)})})
    assert "retention_init" not in canonical_json(base) and config_hash(same) == config_hash(base)
    assert '"retention_init":[0.9,0.999]' in canonical_json(spread) and config_hash(spread) != config_hash(base)
    selfmod = parse_config(ModelConfig, {"mixer": {"kind": "selfmod"}})
    assert "v_norm" not in canonical_json(selfmod)
    assert '"v_norm":true' in canonical_json(load_model_config("hope"))


def test_retention_init_spreads_the_heads_initial_retention():
    cfg = parse_config(ModelConfig, {"mixer": {"kind": "memory", "n_heads": 4, "rule": "gated-deltanet",
                                               "retention_init": [0.9, 0.999]}})
    bias = build_model(cfg).blocks[0].mixer.gates.bias.view(2, 4)
    alpha = torch.sigmoid(bias[1]).double()
    forget = 10.0 ** torch.tensor([-1.0, -5 / 3, -7 / 3, -3.0], dtype=torch.float64)   # even in log(1 - α)
    torch.testing.assert_close(alpha, 1 - forget, atol=1e-6, rtol=0)
    assert torch.sigmoid(bias[0]).eq(0.5).all()                               # η untouched
    with pytest.raises(ConfigError, match="retention_init"):
        parse_config(ModelConfig, {"mixer": {"kind": "memory", "retention_init": [0.99, 0.9]}})
    with pytest.raises(ConfigError, match="retention_init needs a rule with decay"):
        parse_config(ModelConfig, {"mixer": {"kind": "memory", "rule": "deltanet", "retention_init": [0.9, 0.99]}})


def test_rule_by_preset_name_equals_spelled_out_rule():
    by_name = parse_config(ModelConfig, {"mixer": {"kind": "memory", "rule": "titans-lmm"}})
    spelled = parse_config(ModelConfig, {"mixer": {"kind": "memory", "rule": {
        "memory": "mlp", "objective": "l2", "optimizer": "momentum", "decay": True, "chunk": 16}}})
    assert config_hash(by_name) == config_hash(spelled)


@pytest.mark.parametrize("data,path", [
    ({"d_modle": 64}, "d_modle"),
    ({"mixer": {"kind": "attention", "n_head": 4}}, "mixer.n_head"),
    ({"mixer": {"kind": "memory", "rule": {"chunk": 0}}}, "mixer.rule.chunk"),
    ({"mixer": {"kind": "lstm"}}, "unknown mixer kind 'lstm'"),
    ({"loops": 0}, "loops"),
    ({"d_model": 100, "mixer": {"kind": "attention", "n_heads": 3}}, "mixer.n_heads=3 does not divide"),
    ({"optimizer": {"kind": "sgd"}}, "unknown optimizer kind 'sgd'"),
])
def test_bad_configs_fail_with_the_key_path(data, path, monkeypatch):
    allocated = []
    monkeypatch.setattr(torch.nn.Module, "__init__", lambda self, *a, **k: allocated.append(self))
    with pytest.raises(ConfigError, match=path):
        parse_config(ModelConfig, data, "space.yaml")
    assert allocated == []


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("d_model: 64\nmixer: {kind: memory, rule: {objective: l3}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml(.|\n)*mixer\.rule\.objective"):
        load_model_config(bad)
    with pytest.raises(KeyError, match="unknown model preset 'hopee'"):
        load_model_config("hopee")
    with pytest.raises(FileNotFoundError):
        load_model_config(tmp_path / "missing.yaml")


def test_looped_depth_shares_weights_and_carries_state():
    flat = build_model({"d_model": 16, "n_layers": 1, "mixer": {"n_heads": 2}})
    looped = build_model({"d_model": 16, "n_layers": 1, "loops": 3, "loop_inject": True,
                          "mixer": {"n_heads": 2}})
    assert sum(p.numel() for p in flat.parameters()) == sum(p.numel() for p in looped.parameters())
    assert looped.state_size() == 3 * flat.state_size()
    looped = looped.double()
    tokens = torch.randint(0, 256, (2, 19))
    whole, state = looped(tokens)
    assert len(state) == 3
    a, st = looped(tokens[:, :7])
    b, _ = looped(tokens[:, 7:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, atol=1e-10, rtol=1e-10)
