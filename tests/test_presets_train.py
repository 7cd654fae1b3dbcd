"""Every model preset, at its own size, trains on a toy task with a finite, falling loss."""
import pytest
import torch
import torch.nn.functional as F

from nlsearch.models import list_presets, load_model_config


def _copy_batch(gen, batch=8, half=24, vocab=32):
    """Random tokens, then the same tokens again: the second half is predictable from the first."""
    first = torch.randint(1, vocab, (batch, half), generator=gen)
    seq = torch.cat([first, first], dim=1)
    targets = seq[:, 1:].clone()
    targets[:, : half - 1] = -100                                    # score only the copied half
    return seq[:, :-1], targets


@pytest.mark.parametrize("name", list_presets())
def test_preset_trains_with_falling_loss(name):
    torch.manual_seed(0)
    cfg = load_model_config(name)
    model = cfg.build()
    opt = cfg.optimizer.build(model)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(50):
        inputs, targets = _copy_batch(gen)
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        assert torch.isfinite(loss), f"{name}: non-finite loss at step {len(losses)}"
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.9 * first, (name, first, last)
