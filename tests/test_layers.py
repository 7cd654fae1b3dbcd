"""The memory layer and the minimal backbone: pieces, state size, and a smoke training run."""
import pytest
import torch

from nlsearch.layers import MemoryLayerConfig
from nlsearch.models import BackboneConfig
from nlsearch.ops import PRESETS, preset


def _tensors(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in _tensors(s)]
    return []


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_layer_pieces_equal_whole(name):
    layer = MemoryLayerConfig(rule=preset(name), n_heads=2).build(16).double()
    x = torch.randn(2, 29, 16, dtype=torch.float64)
    y, st = layer(x)
    ys, s = [], None
    for a, b in [(0, 5), (5, 6), (6, 29)]:
        y_, s = layer(x[:, a:b], s)
        ys.append(y_)
    torch.testing.assert_close(torch.cat(ys, 1), y, atol=1e-10, rtol=1e-10)
    carried = sum(t[0].numel() for t in _tensors(s))
    assert carried <= layer.state_size()
    if preset(name).chunk == 1:
        assert carried == layer.state_size()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_layer_is_causal(name):
    layer = MemoryLayerConfig(rule=preset(name), n_heads=2).build(16).double()
    x = torch.randn(1, 40, 16, dtype=torch.float64)
    y1, _ = layer(x)
    x2 = x.clone()
    x2[:, 25] += 1.0
    y2, _ = layer(x2)
    torch.testing.assert_close(y1[:, :25], y2[:, :25], atol=0, rtol=0)
    assert not torch.allclose(y1[:, 25:], y2[:, 25:])


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
    cfg = BackboneConfig(vocab_size=16, d_model=32, n_layers=2,
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
