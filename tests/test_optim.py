"""Outer optimizers: each builds from a ModelConfig and trains; Muon's partition of the parameters; a
checkpoint round trip continues bit for bit; DMGD with a fixed memory IS SGD with momentum; bad values
fail with the key path."""
import copy
import io
import re

import pytest
import torch
import torch.nn.functional as F

from nlsearch.config import ConfigError
from nlsearch.models import load_model_config
from nlsearch.models.describe import nesting_levels
from nlsearch.optim.dmgd import MEMORY_KEYS, memory_grads, memory_init, memory_read

TINY = {"vocab_size": 16, "d_model": 16, "n_layers": 1}
OPTIMIZERS = {
    "adamw": {"kind": "adamw", "lr": 1e-2},
    "muon": {"kind": "muon", "lr": 0.02, "adamw_lr": 1e-2},
    "dmgd-dot": {"kind": "dmgd", "lr": 0.05, "objective": "dot"},
    "dmgd-l2": {"kind": "dmgd", "lr": 0.05, "objective": "l2", "memory": "linear"},
}


def _config(optimizer: dict, **extra):
    return load_model_config({**TINY, "optimizer": optimizer, **extra})


def _tokens() -> torch.Tensor:
    """Counting mod 16 from random starts (next token = token + 1): (8, 17)."""
    start = torch.randint(0, 16, (8, 1), generator=torch.Generator().manual_seed(1))
    return (start + torch.arange(17)) % 16


def _loss(model, tokens):
    logits, _ = model(tokens[:, :-1])                                         # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def _train(model, opt, tokens, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(model, tokens)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_builds_from_model_config_and_trains(name):
    cfg = _config(OPTIMIZERS[name])
    model = cfg.build()
    opt = cfg.optimizer.build(model)
    assert isinstance(opt, torch.optim.Optimizer)
    losses = _train(model, opt, _tokens(), 50)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses[::10]


MUON_WEIGHTS = {
    "memory": {"mixer.qkv", "mixer.gates", "mixer.out"},
    "attention": {"mixer.qkv", "mixer.out"},
    "mamba": {"mixer.in_proj", "mixer.x_proj", "mixer.dt_proj", "mixer.out_proj"},
}


def _names(model, groups):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for g in groups for p in g["params"]}


@pytest.mark.parametrize("mixer", MUON_WEIGHTS)
@pytest.mark.parametrize("tie", [True, False])
def test_muon_takes_the_hidden_matrices_adamw_the_rest(mixer, tie):
    cfg = _config({"kind": "muon"}, mixer={"kind": mixer}, tie_embeddings=tie)
    model = cfg.build()
    opt = cfg.optimizer.build(model)
    muon = _names(model, [g for g in opt.param_groups if "ns_steps" in g])
    adamw = _names(model, [g for g in opt.param_groups if "ns_steps" not in g])
    expected = {f"blocks.0.{m}.weight" for m in MUON_WEIGHTS[mixer] | {"mlp.gate_up", "mlp.down"}}
    assert muon == expected
    assert adamw == {n for n, _ in model.named_parameters()} - expected
    assert {"embed.weight", "norm.weight", "blocks.0.norm1.weight"} <= adamw
    assert tie or "head.weight" in adamw
    _train(model, opt, _tokens(), 1)
    hidden = model.blocks[0].mlp.down.weight
    assert set(opt.state[hidden]) == {"momentum_buffer"}
    assert set(opt.state[model.embed.weight]) == {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(name):
    cfg, tokens = _config(OPTIMIZERS[name]), _tokens()
    model = cfg.build()
    opt = cfg.optimizer.build(model)
    _train(model, opt, tokens, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    fresh = cfg.build()
    fresh.load_state_dict(saved["model"])
    fresh_opt = cfg.optimizer.build(fresh)
    fresh_opt.load_state_dict(saved["optimizer"])
    assert _train(model, opt, tokens, 2) == _train(fresh, fresh_opt, tokens, 2)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_fixed_dot_memory_is_sgd_with_momentum(memory):
    """The special case: inner_lr 0 keeps φ at φ0, whose read is g + β m: heavy-ball momentum."""
    cfg = _config({"kind": "dmgd", "memory": memory, "objective": "dot", "inner_lr": 0.0, "lr": 0.05,
                   "momentum": 0.9})
    model = cfg.build().double()
    twin = copy.deepcopy(model)
    dmgd = cfg.optimizer.build(model)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    tokens = _tokens()
    losses = []
    for _ in range(6):
        losses.append(_train(model, dmgd, tokens, 1) + _train(twin, sgd, tokens, 1))
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(dmgd.state[a]["momentum"], sgd.state[b]["momentum_buffer"],
                                       rtol=1e-12, atol=1e-14)
    assert losses[-1][0] < losses[0][0]


@pytest.mark.parametrize("objective", ["dot", "l2"])
def test_memory_gradients_match_autograd(objective):
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(37, 2, generator=gen, dtype=torch.float64), torch.randn(37, generator=gen, dtype=torch.float64)
    phi = {k: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
           for k, v in memory_init(5, 0.9, x).items()}
    leaves = {k: v.clone().requires_grad_() for k, v in phi.items()}
    f, _ = memory_read(leaves, x)
    inner = 0.5 * (f - g).pow(2).sum() if objective == "l2" else -(f * g).sum()
    (inner / x.pow(2).sum()).backward()
    by_hand = memory_grads(phi, x, g, objective)
    for k in MEMORY_KEYS:
        torch.testing.assert_close(by_hand[k], leaves[k].grad)


def test_learning_memory_moves_and_objectives_differ():
    memories = {}
    for objective in ("dot", "l2"):
        cfg = _config({"kind": "dmgd", "objective": objective, "inner_lr": 0.1})
        model = cfg.build()
        opt = cfg.optimizer.build(model)
        _train(model, opt, _tokens(), 4)
        p = model.blocks[0].mlp.down.weight
        memories[objective] = torch.cat([opt.state[p][k].flatten() for k in MEMORY_KEYS])
    phi0 = torch.cat([v.flatten() for v in memory_init(4, 0.9, p).values()])
    assert not torch.allclose(memories["dot"], phi0) and not torch.allclose(memories["l2"], phi0)
    assert not torch.allclose(memories["dot"], memories["l2"])


def test_levels_join_the_nesting_profile():
    names = [lv.name for lv in nesting_levels(_config({"kind": "muon"}))]
    assert names[-3:] == ["weights", "Muon momentum", "AdamW moments"]
    level = nesting_levels(_config({"kind": "dmgd", "objective": "l2"}))[-1]
    assert (level.name, level.clock, level.period, level.objective, level.memory) == \
        ("DMGD memory", "steps", 1, "l2", "mlp")


@pytest.mark.parametrize("optimizer,path", [
    ({"kind": "muon", "lr": -0.1}, "optimizer.lr"),
    ({"kind": "muon", "adamw_lr": 0}, "optimizer.adamw_lr"),
    ({"kind": "muon", "ns_steps": 0}, "optimizer.ns_steps"),
    ({"kind": "muon", "momentum": 1.5}, "optimizer.momentum"),
    ({"kind": "muon", "weight_decay": -1}, "optimizer.weight_decay"),
    ({"kind": "dmgd", "lr": -1}, "optimizer.lr"),
    ({"kind": "dmgd", "objective": "l3"}, "optimizer.objective"),
    ({"kind": "dmgd", "memory": "transformer"}, "optimizer.memory"),
    ({"kind": "dmgd", "inner_lr": -0.1}, "optimizer.inner_lr"),
    ({"kind": "dmgd", "retention": 0}, "optimizer.retention"),
    ({"kind": "dmgd", "lrr": 0.1}, "optimizer.lrr"),
])
def test_bad_values_fail_with_the_key_path(optimizer, path):
    with pytest.raises(ConfigError, match=re.escape(path)):
        load_model_config({**TINY, "optimizer": optimizer})


@pytest.mark.parametrize("preset, table, matrix", [("mamba", "A_log", "blocks.0.mixer.out_proj.weight"),
                                                   ("hope", "gate_bias", "blocks.0.mixer.out.weight")])
def test_decay_tables_and_gate_biases_are_not_decayed(preset, table, matrix):
    from nlsearch.optim.adamw import decay_groups

    model = load_model_config(preset).build()
    decayed, kept = decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    assert {names[id(p)].split(".")[-1] for p in kept["params"] if p.dim() >= 2} == {table}
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert matrix in {names[id(p)] for p in decayed["params"]}                     # matrices still decay
