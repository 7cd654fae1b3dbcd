"""Budgets: every shipped task fits every profile; the lr schedule warms up and ends at its floor."""
from __future__ import annotations

import math

import pytest

from nlsearch.budgets import BUDGETS, load_budget, run_lengths, task_kind
from nlsearch.tasks import list_tasks, load_task


@pytest.mark.parametrize("name", list(BUDGETS))
def test_every_task_fits_every_budget(name):
    budget = load_budget(name)
    for ref in list_tasks():
        task = load_task(ref)
        train, evals = run_lengths(budget, task)
        assert min(train + evals) >= task.min_length
        assert task_kind(task) in ("lm", "recall", "longctx", "continual")
    if name == "gpu":
        assert max(run_lengths(budget, load_task("longctx_needle"))[1]) == 16384


def test_lr_schedule_warms_up_then_follows_a_cosine_to_the_floor():
    budget = BUDGETS["smoke"].model_copy(update={"warmup": 0.1, "min_lr_ratio": 0.1})
    factors = [budget.lr_factor(s, 20) for s in range(20)]
    assert factors[:2] == [0.5, 1.0]
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    assert factors[-1] == pytest.approx(0.1)
    assert factors[11] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 17)))


def test_budgets_are_frozen_and_hashed():
    smoke = BUDGETS["smoke"]
    with pytest.raises(Exception):
        smoke.grad_clip = 2.0
    assert smoke.sha256() == load_budget("smoke@1").sha256() != BUDGETS["cpu"].sha256()
