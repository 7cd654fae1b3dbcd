"""The confirmation stage: finalists chosen from the search, retrained with several seeds on the report
eval set, reused and resumed like trials; the verdict's statistics against hand computations."""
from __future__ import annotations

import json
from pathlib import Path
import math

import optuna
import pandas as pd
import pytest
import torch

from nlsearch.config import ConfigError
from nlsearch.search import load_space, run_search
from nlsearch.search.confirm import select_finalists, verdict
from nlsearch.search.driver import SearchInterrupted
from nlsearch.search.space import SearchSpace
from search_fixtures import tiny_space, write_space


def _space(**over) -> SearchSpace:
    data = tiny_space(question="mixer", **over)
    return SearchSpace.model_validate(data)


def _frame(values, question=None) -> pd.DataFrame:
    rows = []
    for (q, trial), seeds in values.items():
        for seed, v in enumerate(seeds):
            rows.append({"trial": trial, "question": q, "why": "", "lr_factor": 1.0, "seed": seed,
                         "status": "complete", "reason": "", "value": v, "chosen": True})
    return pd.DataFrame(rows)


def test_the_verdict_names_the_winner_and_tests_it_against_the_runner_up_and_the_reference():
    space = _space(reference="attention")
    frame = _frame({("deltanet", 3): [0.9, 0.8, 0.85], ("deltanet", 5): [0.1, 0.2, 0.3],      # 5: worse deltanet
                    ("attention", 1): [0.5, 0.6, 0.55]})
    result = verdict(space, frame)
    assert list(result.per_value.question) == ["deltanet", "attention"]          # one finalist per value
    assert result.per_value.trial.tolist() == [3, 1]
    runner_up = result.tests["runner-up"]
    assert runner_up.diff == pytest.approx(0.3) and 0.0015 < runner_up.p < 0.002
    assert "mixer=deltanet wins" in result.text and "0.85 ± 0.05 over 3 seeds" in result.text
    assert "beyond seed noise" in result.text
    assert "reference" not in result.tests                        # the reference is the runner-up here
    # overlapping seeds: the answer is that no difference is resolved
    close = verdict(space, _frame({("deltanet", 3): [0.6, 0.8, 0.7], ("attention", 1): [0.5, 0.75, 0.65]}))
    assert "no difference resolved at this budget" in close.text


def test_finalists_are_the_top_k_and_the_best_of_every_question_value():
    space = _space(confirm={"top_k": 1, "seeds": [0, 1]})
    study = optuna.create_study(direction="maximize")
    dist = {"mixer": optuna.distributions.CategoricalDistribution(["attention", "deltanet", "other"])}
    for number, (mixer, value) in enumerate([("attention", 0.5), ("deltanet", 0.9), ("attention", 0.7),
                                              ("deltanet", 0.8)]):
        study.add_trial(optuna.trial.create_trial(params={"mixer": mixer}, distributions=dist, value=value,
                                                  user_attrs={"config": json.dumps({"n": number})}))
    finalists = select_finalists(study, space)
    assert [(f.number, f.value) for f in finalists] == [(1, "deltanet"), (2, "attention")]
    assert finalists[1].why == "best of mixer=attention" and finalists[0].config == {"n": 1}


@pytest.mark.parametrize("change, match", [
    ({"question": "colour"}, r"question 'colour' is neither a parameter"),
    ({"confirm": {"seeds": [0]}}, r"confirm\.seeds"),
    ({"confirm": {"top_k": 0}}, r"confirm\.top_k"),
    ({"confirm": {"seeds": [1, 1]}}, r"seeds repeat"),
    ({"reference": "attention", "question": None}, r"reference 'attention' needs a question"),
])
def test_bad_confirmation_settings_are_refused_naming_the_file_and_key(tmp_path, change, match):
    path = write_space(tmp_path, {**tiny_space(name="bad"), **change})
    with pytest.raises(ConfigError, match=match) as err:
        load_space(path)
    assert str(path) in str(err.value)


def _confirmed(tmp_path, **over):
    space = tiny_space(name="conf", trials=2, question="mixer", confirm={"top_k": 1, "seeds": [0, 1]}, **over)
    return write_space(tmp_path, space)


def test_a_search_ends_with_its_confirmation_and_a_verdict_and_reuses_it(tmp_path, monkeypatch):
    path = _confirmed(tmp_path)
    study, _, out = run_search(path, out=tmp_path / "out", log=lambda m: None)
    table = pd.read_parquet(out / "confirmation.parquet")
    finalists = select_finalists(study, load_space(path))
    assert sorted(table.trial.unique()) == sorted(f.number for f in finalists)
    assert len(table) == 2 * len(finalists) and (table.status == "complete").all()
    runs = {t.number: Path(t.user_attrs["run_dir"]) for t in study.trials}
    for row in table.itertuples():                     # on the report eval set, with its own seeds
        if row.seed == 0:                              # the seed the search trial trained: its checkpoint, evaluated
            assert row.trained_in == str(runs[row.trial])
            folder = runs[row.trial] / "recall_small" / "seed0" / "evals"
            record = json.loads(next(folder.glob("*-tiny@1/record.json")).read_text())
            assert record["status"] == "evaluated" and record["trained_as"]["budget"] == "tiny-select@1"
            assert not (out / "confirm" / f"{row.trial:04d}" / "recall_small" / "seed0").exists()   # not trained
        else:
            assert row.trained_in == ""
            record = json.loads((out / "confirm" / f"{row.trial:04d}" / "recall_small" / f"seed{row.seed}" /
                                 "record.json").read_text())
        assert record["budget"] == "tiny@1" and record["seed"] == row.seed
        assert record["metrics"]["accuracy"] == pytest.approx(row.value)
    summary = (out / "summary.md").read_text()
    assert summary.index("## Answer") < summary.index("## Best trials")
    assert "over 2 seeds" in summary and (out / "confirm.png").is_file()
    assert "Learning rate: searched per candidate (`lr`)" in summary
    # run again: the study is finished and every confirmation run is reused, nothing trains
    import nlsearch.search.trial as trial_module
    monkeypatch.setattr(trial_module, "train", lambda *a, **k: pytest.fail("trained again"))
    run_search(path, out=tmp_path / "out", log=lambda m: None)
    assert pd.read_parquet(out / "confirmation.parquet").equals(table)


def test_training_does_not_depend_on_the_eval_set(tmp_path):
    """What lets a confirmation evaluate a search trial's checkpoint instead of training again: the
    budget and its selection twin (another eval set) train the same weights, bit for bit."""
    from safetensors.torch import load_file

    from nlsearch.budgets import Budget
    from nlsearch.search.driver import selection_budget
    from nlsearch.train.checkpoint import latest_checkpoint
    from nlsearch.train.loop import train

    budget = Budget.model_validate(tiny_space()["budget"])
    twin = selection_budget(budget)
    assert twin.eval_seed != budget.eval_seed
    weights = []
    for b, name in ((budget, "report"), (twin, "select")):
        train({"d_model": 32, "n_layers": 1}, "recall_small", b, 0, run_dir=tmp_path / name, device="cpu")
        weights.append(load_file(latest_checkpoint(tmp_path / name) / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_an_interrupted_confirmation_resumes_without_rerunning_a_finished_run(tmp_path, monkeypatch):
    import nlsearch.search.trial as trial_module
    path = _confirmed(tmp_path)
    real, calls = trial_module.train, []

    def train_then_stop(*args, **kwargs):
        calls.append(kwargs["run_dir"])
        if "confirm" in str(kwargs["run_dir"]) and sum("confirm" in str(c) for c in calls) == 2:
            raise KeyboardInterrupt                       # Ctrl-C during the second confirmation run
        return real(*args, **kwargs)

    monkeypatch.setattr(trial_module, "train", train_then_stop)
    with pytest.raises(SearchInterrupted):
        run_search(path, out=tmp_path / "out", log=lambda m: None)
    out = tmp_path / "out"
    assert not (out / "confirmation.parquet").exists()
    first = [c for c in calls if "confirm" in str(c)][0]
    stamp = (first / "record.json").stat().st_mtime_ns
    monkeypatch.setattr(trial_module, "train", real)
    run_search(path, out=out, log=lambda m: None)
    assert (first / "record.json").stat().st_mtime_ns == stamp          # reused, not retrained
    table = pd.read_parquet(out / "confirmation.parquet")
    assert (table.status == "complete").all() and len(table) == 2 * table.trial.nunique()


def test_report_rebuilds_the_summary_without_training(tmp_path, monkeypatch, capsys):
    from nlsearch.cli import main
    import nlsearch.search.trial as trial_module
    path = _confirmed(tmp_path)
    run_search(path, out=tmp_path / "out", log=lambda m: None)
    (tmp_path / "out" / "summary.md").unlink()
    monkeypatch.setattr(trial_module, "train", lambda *a, **k: pytest.fail("trained"))
    assert main(["search", str(path), "--out", str(tmp_path / "out"), "--report"]) == 0
    assert "## Answer" in (tmp_path / "out" / "summary.md").read_text()
    assert "answer" in capsys.readouterr().out
    assert main(["search", str(path), "--out", str(tmp_path / "nothing"), "--report"]) == 2


def test_enqueued_candidates_are_tried_first_and_bad_ones_refused(tmp_path):
    path = write_space(tmp_path, tiny_space(name="first", trials=1, steps=4,
                                            enqueue=[{"mixer": "attention", "lr": 0.002}]))
    study, _, _ = run_search(path, out=tmp_path / "out", log=lambda m: None, confirm=False)
    assert study.trials[0].params == {"mixer": "attention", "lr": 0.002}
    bad = write_space(tmp_path, tiny_space(name="bad2", enqueue=[{"colour": 1}]))
    with pytest.raises(ConfigError, match=r"enqueue\.0: \['colour'\] are not parameters of the space"):
        load_space(bad)


def test_the_confirmation_retunes_each_finalists_lr_on_the_first_seed_and_keeps_the_best(tmp_path):
    """``confirm.lr_factors``: every factor on seed 0 (x1 is the trial's own checkpoint, evaluated;
    the others train in ``lr<factor>`` folders), the best by the objective (ties: closest to x1) for
    the other seeds; the summary says the lr was re-tuned."""
    space = tiny_space(name="conf", trials=2, question="mixer",
                       confirm={"top_k": 1, "seeds": [0, 1], "lr_factors": [0.5, 1.0, 2.0]})
    path = write_space(tmp_path, space)
    study, _, out = run_search(path, out=tmp_path / "out", log=lambda m: None)
    table = pd.read_parquet(out / "confirmation.parquet")
    for trial, rows in table.groupby("trial"):
        first = rows[rows.seed == 0].set_index("lr_factor")
        assert sorted(first.index) == [0.5, 1.0, 2.0]
        assert first.loc[1.0, "trained_in"] != "" and first.loc[0.5, "trained_in"] == ""
        assert (out / "confirm" / f"{trial:04d}" / "lr0.5" / "recall_small" / "seed0" / "record.json").is_file()
        best = max(first.index, key=lambda f: (first.loc[f, "value"], -abs(math.log(f))))
        later = rows[rows.seed == 1]
        assert list(later.lr_factor) == [best]                     # the other seed only at the chosen factor
        assert set(rows[rows.chosen].lr_factor) == {best}
    assert "re-tuned per finalist in the confirmation" in (out / "summary.md").read_text()
