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


def test_an_unset_vocab_size_stays_unset_through_yaml_and_a_set_one_is_kept(tmp_path):
    from nlsearch.train.plan import with_task_vocab
    from nlsearch.tasks import load_task

    preset = load_model_config("deltanet")                       # presets leave vocab_size to the task
    assert "vocab_size" not in to_yaml(preset)
    again = parse_config(ModelConfig, yaml.safe_load(to_yaml(preset)))
    assert "vocab_size" not in again.model_fields_set and config_hash(again) == config_hash(preset)
    assert with_task_vocab(again, load_task("recall")).vocab_size == 8192       # still takes the task's
    pinned = parse_config(ModelConfig, {**yaml.safe_load(to_yaml(preset)), "vocab_size": 300})
    assert "vocab_size: 300" in to_yaml(pinned)
    assert parse_config(ModelConfig, yaml.safe_load(to_yaml(pinned))).vocab_size == 300


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


@pytest.mark.parametrize("name", ["transformer", "hope"])
def test_remat_gives_the_same_gradients_and_keeps_less(name):
    """Activation checkpointing (``remat``) recomputes each block in the backward: same loss and
    gradients, fewer bytes kept by autograd between forward and backward, same config hash."""
    from nlsearch.bench.timing import SavedBytes
    base = load_model_config(name).model_copy(update={"d_model": 32, "n_layers": 2})
    tokens = torch.randint(0, 256, (2, 65), generator=torch.Generator().manual_seed(0))
    results = []
    for remat in (False, True):
        cfg = base.model_copy(update={"remat": remat})
        torch.manual_seed(0)
        model = build_model(cfg).double()
        saved = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            logits, _ = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((loss, grads, saved.total, config_hash(cfg)))
    (loss0, grads0, saved0, hash0), (loss1, grads1, saved1, hash1) = results
    torch.testing.assert_close(loss1, loss0, atol=1e-12, rtol=1e-12)
    for g0, g1 in zip(grads0, grads1):
        torch.testing.assert_close(g1, g0, atol=1e-10, rtol=1e-10)
    assert saved1 < saved0 / 2, (saved1, saved0)
    assert hash1 == hash0
