"""``run_suite`` / ``nlsearch run-suite`` with tiny models, tasks and budget: one row per run, reuse of
completed runs, failed runs recorded, names validated before anything is written, the bigram baseline."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import yaml

import nlsearch.train.suite as suite
from nlsearch.cli import main
from nlsearch.tasks.batch import IGNORE, TaskBatch
from nlsearch.train import NonFiniteLossError
from nlsearch.eval.bigram import bigram_bits_per_byte, fit_bigram
from nlsearch.train.suite import SUITE_COLUMNS, run_suite
from train_fixtures import TINY_MEMORY, TINY_MODEL, tiny_budget, write_tasks

BUDGET = dict(steps=6, eval_interval=6, checkpoint_interval=6, eval_size=8)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    tasks = write_tasks(root / "tasks")
    out = root / "suite"
    sizes = []

    def log(msg):
        sizes.append(len(pd.read_parquet(out / "suite.parquet")) if (out / "suite.parquet").exists() else 0)

    frame = run_suite([TINY_MODEL, TINY_MEMORY], ["tiny_recall", "tiny_lm"], tiny_budget(**BUDGET), [0], out,
                      log=log, tasks_dir=tasks)
    return root, tasks, out, frame, sizes


def test_one_row_per_run_with_every_column(done):
    _, _, out, frame, sizes = done
    runs = frame[frame.preset != "bigram"]
    assert len(runs) == 4 and (runs.status == "completed").all() and not runs.reused.any()
    assert set(zip(runs.preset, runs.task)) == {(p, t) for p in ("tiny", "tiny-deltanet")
                                                for t in ("tiny_recall@1", "tiny_lm@1")}
    for col in SUITE_COLUMNS + ("accuracy", "accuracy.higher_is_better", "bits_per_byte",
                                "bits_per_byte.higher_is_better"):
        assert col in frame.columns, col
    assert (runs.budget == "tiny@1").all() and (runs.seed == 0).all()
    assert (runs.params > 0).all() and (runs.state_size > 0).all() and (runs.tokens_per_s > 0).all()
    lm = runs[runs.task == "tiny_lm@1"]
    assert (lm.headline == "bits_per_byte").all() and (~lm.higher_is_better).all()
    assert (lm.value == lm.bits_per_byte).all() and lm.accuracy.isna().all()
    recall = runs[runs.task == "tiny_recall@1"]
    assert recall["accuracy.higher_is_better"].all() and recall.value.between(0, 1).all()
    (bigram,) = frame[frame.preset == "bigram"].itertuples()
    assert bigram.task == "tiny_lm@1" and 0 < bigram.value < 8
    on_disk = pd.read_parquet(out / "suite.parquet")
    assert len(on_disk) == len(frame) and list(on_disk.columns) == list(frame.columns)
    assert sizes == sorted(sizes) and sizes[-1] == 4        # the table grew run by run (bigram row first)
    md = (out / "suite.md").read_text()
    for text in ("| tiny |", "| tiny-deltanet |", "| bigram |", "tiny_lm@1 bits_per_byte ↓",
                 "tiny_recall@1 accuracy ↑"):
        assert text in md, text
    assert len(list((out / "runs").rglob("record.json"))) == 4


def test_second_call_reuses_records_without_training(done, monkeypatch):
    _, tasks, out, frame, _ = done

    def no_training(*args, **kwargs):
        raise AssertionError("train called for a completed run")

    monkeypatch.setattr(suite, "train", no_training)
    again = run_suite([TINY_MODEL, TINY_MEMORY], ["tiny_recall", "tiny_lm"], tiny_budget(**BUDGET), [0], out,
                      tasks_dir=tasks)
    runs = again[again.preset != "bigram"]
    assert (runs.status == "completed").all() and runs.reused.all()
    pd.testing.assert_series_equal(runs.value.reset_index(drop=True),
                                   frame[frame.preset != "bigram"].value.reset_index(drop=True))


def test_a_new_budget_version_reuses_the_runs_of_the_kinds_it_did_not_change(done, monkeypatch, tmp_path):
    _, tasks, shared, frame, _ = done
    import shutil

    import nlsearch.budgets as budgets

    out = shutil.copytree(shared, tmp_path / "suite")              # the module's runs stay as they are
    v1 = tiny_budget(**BUDGET)
    v2 = v1.model_copy(update={"version": 2, "lm": v1.lm.model_copy(update={"steps": 7})})
    monkeypatch.setitem(budgets.FROZEN, ("tiny", 1), v1)
    monkeypatch.setitem(budgets.FROZEN, ("tiny", 2), v2)
    monkeypatch.setitem(budgets.BUDGETS, "tiny", v2)
    trained = []
    real = suite.train

    def spy(cfg, task, *args, **kwargs):
        trained.append((cfg.name, task.ref))
        return real(cfg, task, *args, **kwargs)

    monkeypatch.setattr(suite, "train", spy)
    again = run_suite([TINY_MODEL], ["tiny_recall", "tiny_lm"], "tiny@2", [0], out, tasks_dir=tasks)
    runs = again[again.preset != "bigram"].set_index("task")
    assert trained == [("tiny", "tiny_lm@1")]                       # only the kind whose budget changed
    assert runs.loc["tiny_recall@1", "reused"] and runs.loc["tiny_recall@1", "budget"] == "tiny@1"
    assert runs.loc["tiny_recall@1", "value"] == frame.set_index(["preset", "task"]).value[("tiny", "tiny_recall@1")]
    assert not runs.loc["tiny_lm@1", "reused"] and runs.loc["tiny_lm@1", "budget"] == "tiny@2"
    assert v1.trains_like(v2, "recall") and not v1.trains_like(v2, "lm")
    assert not v1.trains_like(v1.model_copy(update={"warmup": 0.2}), "recall")   # shared settings count


def test_a_folder_holding_another_run_is_never_reused(done, monkeypatch, tmp_path):
    _, tasks, shared, frame, _ = done
    import shutil

    out = shutil.copytree(shared, tmp_path / "suite")
    monkeypatch.setattr(suite, "train", lambda *a, **k: pytest.fail("trained over another run's folder"))
    edited = tiny_budget(**{**BUDGET, "eval_size": 4})                # same name@version, other content
    again = run_suite([TINY_MODEL], ["tiny_recall"], edited, [0], out, tasks_dir=tasks)
    (row,) = again[again.preset != "bigram"].itertuples()
    assert not row.reused and math.isnan(row.value)
    assert row.status.startswith("failed: ValueError: run directory") and "budget_sha256" in row.status


def test_a_failing_run_is_recorded_and_the_suite_goes_on(done, monkeypatch, tmp_path):
    _, tasks, _, _, _ = done
    real = suite.train

    def diverge_memory(cfg, *args, **kwargs):
        if cfg.name == "tiny-deltanet":
            raise NonFiniteLossError(3, float("nan"))
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(suite, "train", diverge_memory)
    frame = run_suite([TINY_MEMORY, TINY_MODEL], ["tiny_recall"], tiny_budget(**BUDGET), [0], tmp_path / "s",
                      tasks_dir=tasks)
    status = dict(zip(frame.preset, frame.status))
    assert status["tiny-deltanet"] == "failed: non-finite training loss nan at step 3"
    assert status["tiny"] == "completed"
    assert math.isnan(frame.set_index("preset").value["tiny-deltanet"])
    md = (tmp_path / "s" / "suite.md").read_text()
    assert "| tiny-deltanet | failed |" in md and "non-finite" in md
    assert len(pd.read_parquet(tmp_path / "s" / "suite.parquet")) == 2


@pytest.mark.parametrize("presets, tasks, budget, named", [
    (["transformer", "no-such-preset"], ["recall"], "cpu", "no-such-preset"),
    (["transformer"], ["recall", "no_such_task"], "cpu", "no_such_task"),
    (["transformer"], ["recall"], "no-such-budget", "no-such-budget"),
])
def test_unknown_names_raise_and_write_nothing(tmp_path, presets, tasks, budget, named):
    with pytest.raises(ValueError, match=named):
        run_suite(presets, tasks, budget, [0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_prints_the_pivot_and_rejects_bad_names(done, tmp_path, capsys):
    root, tasks, out, _, _ = done
    models = []
    for spec in (TINY_MODEL, TINY_MEMORY):
        models.append(root / f"{spec['name']}.yaml")
        models[-1].write_text(yaml.safe_dump(spec))
    budget = root / "tiny-budget.yaml"
    budget.write_text(yaml.safe_dump(tiny_budget(**BUDGET).model_dump(mode="json")))
    argv = ["run-suite", "--presets", *map(str, models), "--tasks", str(tasks / "tiny_recall.yaml"),
            str(tasks / "tiny_lm.yaml"), "--budget", str(budget), "--seeds", "0", "--out", str(out), "--quiet"]
    assert main(argv) == 0                               # every run is reused: the same run directories
    printed = capsys.readouterr().out
    assert "tiny-deltanet" in printed and "bigram" in printed and "suite.parquet" in printed
    assert "(reused)" in printed
    assert main(["run-suite", "--presets", "nope", "--out", str(tmp_path / "bad")]) == 2
    assert main(["run-suite", "--tasks", "nope", "--out", str(tmp_path / "bad")]) == 2
    assert main(["run-suite", "--budget", "nope", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def _batch(inputs, targets):
    inputs, targets = torch.tensor([inputs]), torch.tensor([targets])
    return TaskBatch(inputs, targets, targets != IGNORE)


def test_bigram_matches_a_hand_computation():
    # counts: 0->1 twice, 1->0 once (the unscored position after 2 is ignored); V = 3, add-one smoothing
    table = fit_bigram([_batch([0, 1, 0, 2], [1, 0, 1, IGNORE])], vocab_size=3)
    assert torch.allclose(table.exp2().sum(dim=1), torch.ones(3, dtype=torch.float64))
    p_1_given_0 = (2 + 1) / (2 + 3)
    p_2_given_1 = (0 + 1) / (1 + 3)
    p_0_given_2 = (0 + 1) / (0 + 3)
    bits = bigram_bits_per_byte(table, _batch([0, 1, 2], [1, 2, 0]))
    expected = -(math.log2(p_1_given_0) + math.log2(p_2_given_1) + math.log2(p_0_given_2)) / 3
    assert bits == pytest.approx(expected, rel=1e-12)


def test_bigram_is_far_below_8_bits_on_a_repetitive_corpus():
    text = torch.tensor(list(b"the cat sat on the mat. " * 400))
    train = TaskBatch(text[None, :-1], text[None, 1:], torch.ones(1, text.numel() - 1, dtype=torch.bool))
    held = torch.tensor(list(b"the mat sat on the cat. " * 20))
    bits = bigram_bits_per_byte(fit_bigram([train]), TaskBatch(held[None, :-1], held[None, 1:],
                                                               torch.ones(1, held.numel() - 1, dtype=torch.bool)))
    assert bits < 8 and bits < 2.0


def test_the_cli_help_names_the_default_tasks():
    from nlsearch.cli import build_parser
    from nlsearch.train.suite import DEFAULT_TASKS
    sub = next(a for a in build_parser()._actions if a.dest == "command" or a.choices)
    text = " ".join(sub.choices["run-suite"].format_help().split())
    assert f"default: {' '.join(DEFAULT_TASKS)}" in text
