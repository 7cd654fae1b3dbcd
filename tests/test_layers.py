"""The memory layer and the backbone (the mixer contract lives in test_mixers.py)."""
import pytest
import torch

from nlsearch.layers import MemoryLayerConfig
from nlsearch.models import ModelConfig
from nlsearch.ops import preset


def test_fast_and_naive_layers_agree():
    cfg = MemoryLayerConfig(rule=preset("titans-lmm"), n_heads=2)
    fast = cfg.build(16).double()
    naive = cfg.model_copy(update={"impl": "naive"}).build(16).double()
    naive.load_state_dict(fast.state_dict())
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    torch.testing.assert_close(fast(x)[0], naive(x)[0], atol=1e-10, rtol=1e-10)


def _recall_batch(gen, batch=32, pairs=4, vocab=16):
    """Toy associative recall: k1 v1 ... kn vn, then a key; the target is its value."""
    keys = torch.stack([torch.randperm(vocab // 2, generator=gen)[:pairs] for _ in range(batch)])
    vals = torch.randint(vocab // 2, vocab, (batch, pairs), generator=gen)
    pick = torch.randint(0, pairs, (batch,), generator=gen)
    seq = torch.stack([keys, vals], dim=-1).flatten(1)
    query = keys.gather(1, pick[:, None])
    return torch.cat([seq, query], 1), vals.gather(1, pick[:, None]).squeeze(1)


@pytest.mark.parametrize("name", ["deltanet", "titans-lmm"])
def test_smoke_training_loss_falls(name):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=16, d_model=32, n_layers=2,
                         mixer=MemoryLayerConfig(rule=preset(name), n_heads=2))
    model = cfg.build()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        tokens, target = _recall_batch(gen)
        logits, _ = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, -1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.6 * first, (first, last)


@pytest.mark.parametrize("mixer", [{"kind": "attention", "n_heads": 2}, {"kind": "mamba"},
                                   {"rule": {"objective": "dot"}}])
def test_backbone_builds_every_mixer_kind_and_carries_state(mixer):
    cfg = ModelConfig.model_validate({"d_model": 16, "n_layers": 2, "mixer": mixer})
    model = cfg.build().double()
    tokens = torch.randint(0, 256, (2, 23))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :9])
    rest, _ = model(tokens[:, 9:], state)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=1e-10, rtol=1e-10)
