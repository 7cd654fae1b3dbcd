"""MQAR and its overwrite variant: answers re-derived by scanning the context, no leaks, exact layout."""
from __future__ import annotations

import pytest
import torch

from nlsearch.tasks.batch import IGNORE, torch_rng
from nlsearch.tasks.recall import BIND_KEY, BIND_VALUE, FILLER, QUERY, RecallParams, _query_slots, mqar


def _scan_answers(inputs: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """Re-derives every query's answer by reading the sequence left to right: (N, T), IGNORE elsewhere."""
    out = torch.full_like(inputs, IGNORE)
    for row in range(inputs.shape[0]):
        bound = {}
        for t in range(inputs.shape[1]):
            if kind[row, t] == BIND_VALUE and kind[row, t - 1] == BIND_KEY:
                bound[int(inputs[row, t - 1])] = int(inputs[row, t])
            elif kind[row, t] == QUERY:
                out[row, t] = bound[int(inputs[row, t])]
    return out


PARAMS = [RecallParams(vocab_size=64, n_pairs=6, n_rebinds=0),
          RecallParams(vocab_size=64, n_pairs=6, n_rebinds=8),
          RecallParams(vocab_size=64, n_pairs=6, n_rebinds=3, noise=False)]


@pytest.mark.parametrize("p", PARAMS)
@pytest.mark.parametrize("length", [40, 48, 101])
def test_answers_follow_from_the_context(p: RecallParams, length: int):
    batch = mqar(16, length, p, torch_rng("t", 0))
    kind = batch.meta["kind"]
    assert batch.shape == (16, length)
    assert torch.equal(batch.targets, _scan_answers(batch.inputs, kind))
    assert torch.equal(batch.mask, kind == QUERY)
    assert (batch.mask.sum(1) == p.n_pairs).all()


@pytest.mark.parametrize("p", PARAMS)
def test_vocabulary_halves_and_no_leaks(p: RecallParams):
    batch = mqar(16, 64, p, torch_rng("t", 1))
    x, kind, half = batch.inputs, batch.meta["kind"], p.vocab_size // 2
    keys, values = x[(kind == BIND_KEY) | (kind == QUERY)], x[kind == BIND_VALUE]
    assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < p.vocab_size)).all()
    for row in range(x.shape[0]):
        row_keys = set(x[row][kind[row] == BIND_KEY].tolist())
        filler = x[row][kind[row] == FILLER].tolist()
        assert not row_keys & set(filler) and not set(x[row][kind[row] == BIND_VALUE].tolist()) & set(filler)
        for q in batch.mask[row].nonzero().flatten().tolist():
            answer = int(batch.targets[row, q])
            where = (x[row] == answer).nonzero().flatten().tolist()
            assert len(where) == 1 and where[0] < q and kind[row, where[0]] == BIND_VALUE
            assert x[row, where[0] - 1] == x[row, q]
    if not p.noise:
        assert (x[kind == FILLER] == 0).all()


def test_overwrite_answers_are_the_latest_binding():
    p = RecallParams(vocab_size=128, n_pairs=8, n_rebinds=16)
    batch = mqar(32, 96, p, torch_rng("t", 2))
    changed = 0
    for row in range(32):
        ctx = batch.inputs[row, : 2 * 24].view(-1, 2).tolist()
        first = {}
        for k, v in ctx:
            first.setdefault(k, v)
        for q in batch.mask[row].nonzero().flatten().tolist():
            key, answer = int(batch.inputs[row, q]), int(batch.targets[row, q])
            assert answer == [v for k, v in ctx if k == key][-1]
            changed += answer != first[key]
    assert changed > 32 * 8 // 2


def test_layout_is_zoology():
    p = RecallParams(vocab_size=64, n_pairs=4, n_rebinds=0, noise=False)
    batch = mqar(8, 40, p, torch_rng("t", 3))
    kind = batch.meta["kind"]
    assert (kind[:, 0:8:2] == BIND_KEY).all() and (kind[:, 1:8:2] == BIND_VALUE).all()
    offsets = batch.mask.nonzero()[:, 1] - 8
    assert (offsets >= 0).all() and (offsets % 2 == 0).all()


def test_query_gaps_follow_a_power_law():
    slots = _query_slots(4000, 100, 1, 0.01, torch_rng("gaps", 0)).flatten()
    counts = torch.bincount(slots, minlength=100).double()
    assert counts[:10].sum() > 3 * counts[-10:].sum()
    prob = 0.01 * torch.arange(1, 101, dtype=torch.float64) ** (0.01 - 1)
    assert abs(counts[0] / 4000 - prob[0] / prob.sum()) < 0.03


def test_deterministic_in_the_seed():
    p = PARAMS[1]
    a, b, c = (mqar(4, 64, p, torch_rng("t", s)) for s in (5, 5, 6))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_bad_parameters_and_lengths():
    with pytest.raises(ValueError, match="shorter than the task needs"):
        mqar(2, 23, PARAMS[0], torch_rng("t", 0))
    with pytest.raises(ValueError, match="n_pairs=40"):
        RecallParams(vocab_size=64, n_pairs=40)
    with pytest.raises(ValueError, match="distinct values"):
        RecallParams(vocab_size=64, n_pairs=20, n_rebinds=20)
