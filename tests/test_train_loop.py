"""train(): loss falls, same inputs give the same numbers, a killed run resumes to the same numbers,
a non-finite loss ends the run with NonFiniteLossError, the vocabulary follows the task."""
from __future__ import annotations

import json

import pytest
import torch

from nlsearch.budgets import BUDGETS
from nlsearch.train import NonFiniteLossError, latest_checkpoint, train
from train_fixtures import TINY_MODEL, tiny_budget, write_tasks


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def _task(tasks, name: str) -> str:
    return str(tasks / f"{name}.yaml")


def test_loss_falls_on_recall_at_smoke_size(tasks):
    result = train(TINY_MODEL, _task(tasks, "tiny_recall"), "smoke", seed=0)
    losses = result.losses
    assert result.status == "completed" and len(losses) == BUDGETS["smoke"].recall.steps
    assert sum(losses[-5:]) / 5 < losses[0] - 0.3
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert set(result.metrics) >= {"accuracy", "accuracy@256"}
    assert result.higher_is_better["accuracy"] is True


def test_same_inputs_same_numbers_and_the_caller_rng_is_untouched(tasks):
    before = torch.get_rng_state()
    a = train(TINY_MODEL, _task(tasks, "tiny_recall"), tiny_budget(), seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    b = train(TINY_MODEL, _task(tasks, "tiny_recall"), tiny_budget(), seed=3)
    other = train(TINY_MODEL, _task(tasks, "tiny_recall"), tiny_budget(), seed=4)
    assert a.losses == b.losses and a.metrics == b.metrics and a.history == b.history
    assert a.losses != other.losses
    assert a.record.config_sha256 == b.record.config_sha256


@pytest.mark.parametrize("name,stop_after", [("tiny_recall", 6), ("tiny_continual", 10), ("tiny_continual", 13)])
def test_killed_run_resumes_to_the_same_metrics(tasks, tmp_path, name, stop_after):
    budget = tiny_budget(steps=8)
    full = train(TINY_MODEL, _task(tasks, name), budget, seed=1, run_dir=tmp_path / "full")
    cut = train(TINY_MODEL, _task(tasks, name), budget, seed=1, run_dir=tmp_path / "cut", stop_after=stop_after)
    assert cut.status == "interrupted" and cut.steps == stop_after and cut.record is None
    assert not (tmp_path / "cut" / "record.json").exists()
    step = json.loads((latest_checkpoint(tmp_path / "cut") / "trainer.json").read_text())["state"]["step"]
    assert step == stop_after // 4 * 4
    resumed = train(TINY_MODEL, _task(tasks, name), budget, seed=1, run_dir=tmp_path / "cut", resume=True)
    assert resumed.status == "completed"
    assert [x["from_step"] for x in resumed.record.sessions] == [0, step]     # both sessions on the record
    assert [x["from_step"] for x in full.record.sessions] == [0]
    assert resumed.metrics == full.metrics
    assert resumed.losses == full.losses and resumed.history == full.history
    assert (tmp_path / "cut" / "record.json").exists()


@pytest.mark.parametrize("over", [
    {"optimizer": {"kind": "muon", "lr": 0.02}},
    {"optimizer": {"kind": "dmgd", "lr": 0.02}},
    {"mlp": {"kind": "cms", "clock": "steps", "periods": [1, 3], "ratio": 2.0}},
], ids=["muon", "dmgd", "cms-steps-clock"])
def test_resume_is_exact_for_every_outer_optimizer(tasks, tmp_path, over):
    model, budget = {**TINY_MODEL, **over}, tiny_budget(steps=10)
    full = train(model, _task(tasks, "tiny_recall"), budget, seed=1)
    train(model, _task(tasks, "tiny_recall"), budget, seed=1, run_dir=tmp_path, stop_after=7)
    resumed = train(model, _task(tasks, "tiny_recall"), budget, seed=1, run_dir=tmp_path, resume=True)
    assert resumed.losses == full.losses and resumed.metrics == full.metrics


def test_reporter_stops_and_resume_finishes_identically(tasks, tmp_path):
    budget = tiny_budget(steps=12, checkpoint_interval=0)
    calls = []

    def prune(step, metrics):
        calls.append((step, metrics))
        return step >= 8

    full = train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=2)
    stopped = train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=2, reporter=prune, run_dir=tmp_path)
    assert [s for s, _ in calls] == [4, 8]
    assert {"train_loss", "accuracy@32"} <= set(calls[0][1])
    assert stopped.status == "stopped" and stopped.steps == 8
    assert stopped.higher_is_better["train_loss"] is False and stopped.higher_is_better["accuracy@32"] is True
    resumed = train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=2, run_dir=tmp_path, resume=True)
    assert resumed.metrics == full.metrics and resumed.losses == full.losses


def test_non_finite_loss_raises_with_step_and_loss(tasks, tmp_path):
    absurd = {**TINY_MODEL, "optimizer": {"kind": "adamw", "lr": 1e30}}
    with pytest.raises(NonFiniteLossError) as err:
        train(absurd, _task(tasks, "tiny_recall"), tiny_budget(steps=20), seed=0, run_dir=tmp_path / "run")
    from nlsearch.train.loop import NonFiniteGradientError
    assert err.value.step >= 1
    if not isinstance(err.value, NonFiniteGradientError):       # else the loss was finite, its gradient not
        assert not torch.isfinite(torch.tensor(err.value.loss))
    assert not (tmp_path / "run" / "record.json").exists()
    assert json.loads((tmp_path / "run" / "failure.json").read_text())["step"] == err.value.step   # kept


def test_vocabulary_follows_the_task_unless_set(tasks):
    result = train(TINY_MODEL, _task(tasks, "tiny_recall"), tiny_budget(steps=2), seed=0)
    assert result.record.config["vocab_size"] == 64
    with pytest.raises(ValueError, match="vocab_size=32"):
        train({**TINY_MODEL, "vocab_size": 32}, _task(tasks, "tiny_recall"), tiny_budget(steps=2), seed=0)


def test_resume_reads_the_checkpoint(tasks, tmp_path):
    """A resumed run continues from the saved weights: corrupting them changes the result."""
    from safetensors.torch import load_file, save_file

    budget = tiny_budget(steps=8)
    full = train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=1)
    train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=1, run_dir=tmp_path, stop_after=6)
    path = latest_checkpoint(tmp_path) / "model.safetensors"
    weights = load_file(path)
    save_file({k: v + 0.5 for k, v in weights.items()}, path)
    resumed = train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=1, run_dir=tmp_path, resume=True)
    assert resumed.losses[:4] == full.losses[:4]
    assert resumed.losses[4:] != full.losses[4:]


def test_cpu_time_throughput_leaves_out_time_the_run_did_not_compute(tasks, tmp_path, monkeypatch):
    """A step that waits 20 ms without computing (a paused run, a core given to another process) slows
    the wall-clock tokens/s, not the CPU-time one; a run resumed from a checkpoint of code that did not
    count CPU time has none (a part unmeasured), and its wall-clock figure stays."""
    import time

    import nlsearch.train.loop as loop

    real = loop.train_step

    def waiting(*args, **kwargs):
        loss = real(*args, **kwargs)
        time.sleep(0.02)
        return loss

    monkeypatch.setattr(loop, "train_step", waiting)
    budget = tiny_budget(steps=8)
    timed = train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=0, threads=1).record
    assert timed.device == "cpu" and timed.tokens_per_cpu_s is not None
    seconds_waited = 8 * 0.02
    assert timed.train_tokens / timed.tokens_per_s >= seconds_waited                  # the wall clock saw them
    assert timed.train_tokens / timed.tokens_per_cpu_s < seconds_waited / 2          # the CPU time did not
    monkeypatch.setattr(loop, "train_step", real)

    train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=0, run_dir=tmp_path, stop_after=4)
    trainer_file = latest_checkpoint(tmp_path) / "trainer.json"
    trainer = json.loads(trainer_file.read_text())
    del trainer["state"]["train_cpu_time"]                                    # written by older code
    trainer_file.write_text(json.dumps(trainer))
    resumed = train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=0, run_dir=tmp_path, resume=True).record
    assert resumed.tokens_per_cpu_s is None and resumed.tokens_per_s > 0
    # a run whose sessions ran with different thread counts mixes machines: no CPU-time figure either
    other = tmp_path / "threads"
    train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=0, run_dir=other, stop_after=4, threads=1)
    mixed = train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=0, run_dir=other, resume=True,
                  threads=2).record
    assert [s["threads"] for s in mixed.sessions] == [1, 2] and mixed.tokens_per_cpu_s is None
    same = tmp_path / "same"
    train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=0, run_dir=same, stop_after=4, threads=1)
    kept = train(TINY_MODEL, _task(tasks, "tiny_recall"), budget, seed=0, run_dir=same, resume=True, threads=1).record
    assert kept.tokens_per_cpu_s is not None
