"""evaluate(): bits per byte of an untrained byte model is ~8 and falls with training; GEM metrics of a
2-phase run agree with their R matrix; reading in pieces gives the same numbers; breakdowns by group."""
from __future__ import annotations

import pytest
import torch

from nlsearch.eval import check_metrics, evaluate
from nlsearch.models import build_model
from nlsearch.tasks import load_task
from nlsearch.train import train
from train_fixtures import TINY_MEMORY, TINY_MODEL, tiny_budget, write_tasks


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def _model(cfg: dict, vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model({**cfg, "vocab_size": vocab})


def test_bits_per_byte_start_near_8_and_fall(tasks):
    task = load_task("tiny_lm", tasks)
    untrained = evaluate(_model(TINY_MODEL, 256), task, tiny_budget())
    assert untrained.headline()["bits_per_byte"] == pytest.approx(8.0, abs=0.15)
    assert untrained.higher_is_better()["bits_per_byte"] is False
    trained = train(TINY_MODEL, task, tiny_budget(steps=30), seed=0)
    assert trained.metrics["bits_per_byte"] < 7.0


def test_continual_metrics_match_their_matrix(tasks):
    result = train(TINY_MODEL, load_task("tiny_continual", tasks), tiny_budget(steps=10), seed=0)
    m = result.metrics
    r = [[m[f"accuracy@32[after={i},phase={j}]"] for j in range(2)] for i in range(2)]
    b = [m[f"accuracy@32[after=init,phase={j}]"] for j in range(2)]
    assert all(0.0 <= v <= 1.0 for v in sum(r, []) + b)
    assert m["acc"] == pytest.approx((r[1][0] + r[1][1]) / 2)
    assert m["bwt"] == pytest.approx(r[1][0] - r[0][0])
    assert m["fwt"] == pytest.approx(r[0][1] - b[1])
    assert result.record.headline == ["acc", "bwt", "fwt"]
    assert r[0][0] > b[0]


@pytest.mark.parametrize("cfg", [TINY_MODEL, TINY_MEMORY], ids=["attention", "deltanet"])
def test_pieces_with_carried_state_match_one_pass(tasks, cfg):
    task = load_task("tiny_recall", tasks)
    model = _model(cfg, 64, seed=1)
    whole = evaluate(model, task, tiny_budget(eval_piece=None), lengths=[64]).metrics()
    pieces = evaluate(model, task, tiny_budget(eval_piece=24), lengths=[64]).metrics()
    assert pieces.keys() == whole.keys()
    for name in whole:
        assert pieces[name] == pytest.approx(whole[name], abs=1e-6), name


def test_breakdowns_by_depth_and_window(tasks):
    needle = evaluate(_model(TINY_MODEL, 256), load_task("tiny_needle", tasks), tiny_budget(eval_size=6)).metrics()
    assert {"exact_match", "accuracy", "exact_match@160", "exact_match@320", "accuracy@320[depth=0.5]",
            "exact_match@160[depth=1]"} <= set(needle)
    drift = evaluate(_model(TINY_MODEL, 64), load_task("tiny_drift", tasks), tiny_budget()).metrics()
    assert {"accuracy", "last_window_accuracy", "accuracy@48[window=0]", "accuracy@48[window=1]"} <= set(drift)
    assert drift["last_window_accuracy@48"] == drift["accuracy@48[window=1]"]


def test_phases_limit_a_continual_evaluation(tasks):
    task = load_task("tiny_continual", tasks)
    model = _model(TINY_MODEL, 64)
    one = evaluate(model, task, tiny_budget(), phases=[1]).metrics()
    both = evaluate(model, task, tiny_budget()).metrics()
    assert set(one) == {"accuracy@32[phase=1]"}
    assert both["acc"] == pytest.approx((both["accuracy@32[phase=0]"] + both["accuracy@32[phase=1]"]) / 2)


def test_every_shipped_task_has_computable_metrics():
    from nlsearch.tasks import list_tasks

    for ref in list_tasks():
        check_metrics(load_task(ref))
