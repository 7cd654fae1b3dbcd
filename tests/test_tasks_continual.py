"""Continual phases, the drifting in-context stream, and the GEM metrics against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from nlsearch.tasks.batch import IGNORE, TaskBatch, TaskContext, torch_rng
from nlsearch.tasks.continual import (ContinualRecallParams, binding_tables, first_occurrence,
                                      sample_continual_recall)
from nlsearch.tasks.drift import DriftParams, sample_drift
from nlsearch.tasks.metrics import accuracy_by, gem_acc, gem_bwt, gem_fwt, gem_metrics, masked_accuracy
from nlsearch.tasks.recall import BIND_KEY, BIND_VALUE, QUERY

CTX = TaskContext()


def _continual(p: ContinualRecallParams, phase: int, seed: int = 0, length: int = 64) -> TaskBatch:
    return sample_continual_recall(p, 8, length, "train", phase, torch_rng("c", phase, seed), CTX)


def test_disjoint_phases_bind_disjoint_keys():
    p = ContinualRecallParams(vocab_size=128, n_phases=3, keys_per_phase=8, mode="disjoint")
    keys, values = binding_tables(p)
    assert keys.shape == values.shape == (3, 8)
    assert len(set(keys.flatten().tolist())) == 24
    assert ((keys >= 1) & (keys < 64)).all() and ((values >= 64) & (values < 128)).all()


def test_rebind_phases_change_every_value():
    p = ContinualRecallParams(vocab_size=128, n_phases=4, keys_per_phase=8, mode="rebind")
    keys, values = binding_tables(p)
    assert (keys == keys[0]).all()
    assert (values[1:] != values[:-1]).all()
    assert torch.equal(binding_tables(p)[1], values)
    assert not torch.equal(binding_tables(p.model_copy(update={"table_seed": 1}))[1], values)


@pytest.mark.parametrize("score", ["first", "all"])
@pytest.mark.parametrize("length", [2, 33, 64])
def test_continual_targets_come_from_the_phase_table(score: str, length: int):
    p = ContinualRecallParams(vocab_size=128, n_phases=2, keys_per_phase=8, mode="rebind", score=score)
    keys, values = binding_tables(p)
    for phase in range(2):
        batch = _continual(p, phase, length=length)
        table = dict(zip(keys[phase].tolist(), values[phase].tolist()))
        assert batch.shape == (8, length) and (batch.meta["phase"] == phase).all()
        for row in range(8):
            seen = set()
            for t in range(0, length - 1, 2):
                k, v = int(batch.inputs[row, t]), int(batch.inputs[row, t + 1])
                assert v == table[k]
                expect = v if score == "all" or k not in seen else IGNORE
                assert batch.targets[row, t] == expect and batch.targets[row, t + 1] == IGNORE
                seen.add(k)


def test_first_occurrence():
    keys = torch.tensor([[3, 1, 3, 2, 1, 5], [7, 7, 7, 7, 7, 7]])
    expect = torch.tensor([[1, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(first_occurrence(keys), expect)


def _drift(p: DriftParams, seed: int, length: int = 200) -> TaskBatch:
    return sample_drift(p, 6, length, "train", 0, torch_rng("d", seed), CTX)


@pytest.mark.parametrize("length", [34, 101, 400])
def test_drift_answers_are_the_current_binding(length: int):
    p = DriftParams(vocab_size=64, n_keys=16, drift=0.3, n_windows=4)
    batch = _drift(p, 0, length)
    kind, writes, queries = batch.meta["kind"], 0, 0
    assert batch.shape == (6, length) and torch.equal(batch.mask, kind == QUERY)
    for row in range(6):
        bound = {}
        for t in range(0, length - 1, 2):
            k, v = int(batch.inputs[row, t]), int(batch.inputs[row, t + 1])
            assert kind[row, t + 1] == BIND_VALUE
            if kind[row, t] == BIND_KEY:
                assert v != bound.get(k) and batch.targets[row, t] == IGNORE
                writes += t >= 32
            else:
                assert v == bound[k] and batch.targets[row, t] == v
                queries += 1
            bound[k] = v
        assert len(bound) == 16
    if length == 400:
        assert 0.2 < writes / (writes + queries) < 0.4


def test_drift_windows_and_determinism():
    p = DriftParams(vocab_size=64, n_keys=8, drift=0.1, n_windows=5)
    batch = _drift(p, 1)
    window = batch.meta["window"]
    pos = torch.arange(200).expand(6, -1)
    assert torch.equal(window[batch.mask], (pos * 5 // 200)[batch.mask])
    assert (window[~batch.mask] == -1).all()
    assert torch.equal(_drift(p, 1).inputs, batch.inputs) and not torch.equal(_drift(p, 2).inputs, batch.inputs)


R3 = [[0.8, 0.1, 0.0],
      [0.6, 0.9, 0.2],
      [0.5, 0.7, 0.95]]
B3 = [0.1, 0.05, 0.1]


def test_gem_metrics_by_hand():
    assert gem_acc(R3) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert gem_bwt(R3) == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)
    assert gem_fwt(R3, B3) == pytest.approx(((0.1 - 0.05) + (0.2 - 0.1)) / 2)
    two = gem_metrics(torch.tensor([[1.0, 0.3], [0.4, 0.8]]), [0.5, 0.2])
    assert two == pytest.approx({"acc": 0.6, "bwt": -0.6, "fwt": 0.1})


def test_gem_metrics_edge_cases():
    assert gem_acc([[0.7]]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="at least 2 phases"):
        gem_bwt([[0.7]])
    with pytest.raises(ValueError, match="square"):
        gem_acc([[0.1, 0.2]])
    with pytest.raises(ValueError, match="one score per task"):
        gem_fwt(R3, [0.1, 0.2])
    no_forgetting = [[0.9, 0.0], [0.9, 0.8]]
    assert gem_bwt(no_forgetting) == 0.0


def test_accuracies_by_group():
    targets = torch.tensor([[5, IGNORE, 6, 7], [IGNORE, 1, 2, IGNORE]])
    batch = TaskBatch(torch.zeros(2, 4, dtype=torch.long), targets, targets != IGNORE)
    pred = torch.tensor([[5, 0, 0, 7], [0, 1, 0, 0]])
    assert masked_accuracy(pred, batch) == pytest.approx(3 / 5)
    window = torch.tensor([[0, -1, 1, 1], [-1, 0, 1, -1]])
    acc = accuracy_by(pred, batch, window, 3)
    assert acc[:2].tolist() == pytest.approx([1.0, 1 / 3]) and math.isnan(acc[2])
    assert accuracy_by(pred, batch, torch.tensor([1, 0]), 2).tolist() == pytest.approx([0.5, 2 / 3])
