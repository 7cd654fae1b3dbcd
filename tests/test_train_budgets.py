"""Budgets: every shipped task fits every profile; the lr schedule warms up and ends at its floor; every
profile ever shipped stays loadable and unchanged under its ``name@version``."""
from __future__ import annotations

import math

import pytest

from nlsearch.budgets import BUDGETS, FROZEN, load_budget, run_lengths, task_kind
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


# The sha256 of every shipped profile. A profile that is edited in place (not given a new version)
# changes its hash and fails here: records that name ``cpu@1`` must keep meaning the same budget.
SHIPPED = {
    ("smoke", 1): "ab4f7a59fbfb20d0e26fb796a9fe185177b95dfd301b8e0c0eeb93c6a33bfd9b",
    ("cpu", 1): "71953c1d6f85c0cd10989b043054ab3f1698e87c51a8cbf3aa8aa61e01bdff1d",
    ("cpu", 2): "1f954b1e8b7659e9d25a3b3b32676cb6b279b69862ae8f3180bcf7ce41f9e670",
    ("cpu", 3): "47516a884abd336ae9794456e79b64e99adf394abfe63fd2e77fa297348a1c02",
    ("gpu", 1): "d39ac0cf1f0492c929d78c5bca6f336e34ffb7d3eb1936bd85c7e739d0b75f2c",
}


def test_no_shipped_profile_changes_under_its_version():
    assert {key: b.sha256() for key, b in FROZEN.items() if key in SHIPPED} == SHIPPED
    assert set(SHIPPED) <= set(FROZEN)


def test_a_bare_name_is_the_highest_version_and_every_version_stays_loadable():
    for (name, version), budget in FROZEN.items():
        assert load_budget(f"{name}@{version}") is budget
        assert budget.version <= load_budget(name).version
    assert load_budget("cpu").ref == "cpu@3"
    assert load_budget("cpu@1").recall.train_lengths == (256,)
    with pytest.raises(ValueError, match=r"no version '9'; versions: \[1, 2, 3\]"):
        load_budget("cpu@9")
    with pytest.raises(ValueError, match="no version 'x'"):
        load_budget("cpu@x")


def test_cpu_trains_and_scores_recall_at_the_task_specs_own_lengths():
    small = load_task("recall_small")
    assert run_lengths(load_budget("cpu"), small) == (small.spec.lengths.train, small.spec.lengths.eval) == \
        ((128,), (128, 256))
    assert run_lengths(load_budget("cpu@1"), small) == ((256,), (256, 512))
