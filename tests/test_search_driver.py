"""The driver: ask/tell, pruning, failures, constraints, results files, resume after a crash or Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from nlsearch.models import load_model_config
from nlsearch.config import config_hash
from nlsearch.search import load_space, run_search
from nlsearch.search.executors import Executor
from nlsearch.search.study import JOURNAL, finished, make_storage
from nlsearch.search.trial import TrialJob, TrialOutcome, run_trial
from nlsearch.train.loop import NonFiniteLossError
from search_fixtures import tiny_space, write_space

ROOT = Path(__file__).parent.parent


def _load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(out, None))


def _search(tmp_path, **overrides):
    path = write_space(tmp_path, tiny_space(**overrides))
    return run_search(path, out=tmp_path / "out", log=lambda m: None, confirm=False)


def test_search_writes_every_result_and_best_yaml_is_the_best_trial(tmp_path):
    study, frame, out = _search(tmp_path, trials=3)
    assert finished(study) == 3 and len(frame) == 3
    for name in ("trials.parquet", "best.yaml", "summary.md", "depth.png", "history.png", "importance.png"):
        assert (out / name).is_file(), name
    table = pd.read_parquet(out / "trials.parquet")
    assert {"config", "config_sha256", "params", "state_size", "tokens_per_s", "wall_s", "hardware",
            "nesting_depth", "objective:recall_small:accuracy", "m:recall_small:accuracy"} <= set(table.columns)
    assert (table.state == "COMPLETE").all() and (table.tokens_per_s > 0).all()
    best = max(study.trials, key=lambda t: t.values[0])
    cfg = load_model_config(out / "best.yaml")                      # `nlsearch train --model` takes it
    assert "vocab_size" not in (out / "best.yaml").read_text()     # left to each task, as the trials had it
    assert config_hash(cfg) == best.user_attrs["config_sha256"]
    record = json.loads((Path(best.user_attrs["run_dir"]) / "recall_small" / "seed0" / "record.json").read_text())
    assert record["metrics"]["accuracy"] == pytest.approx(best.values[0])
    space = tiny_space()                                   # scored on a selection eval set, not the budget's own
    assert record["budget"] == f"{space['budget']['name']}-select@1"
    assert record["eval_seed"] != space["budget"]["eval_seed"]


class ScriptedExecutor(Executor):
    """A worker stand-in: trial n reports ``curves[n]`` one value per step and obeys the prune answer."""

    def __init__(self, curves: List[List[float]]):
        self.curves, self.jobs, self.all_jobs = curves, [], []

    def submit(self, job: TrialJob) -> None:
        self.jobs.append(job)
        self.all_jobs.append(job)

    def running(self) -> int:
        return len(self.jobs)

    def wait(self, timeout: float) -> List[TrialOutcome]:
        job = self.jobs.pop(0)
        for step, value in enumerate(self.curves[job.number], start=1):
            if self.on_report(job.number, step, value):
                return [TrialOutcome(job.number, "pruned", pruned_at=step)]
        return [TrialOutcome(job.number, "complete", metrics={"recall_small:accuracy": self.curves[job.number][-1]})]


def test_pruner_answers_reach_the_worker_and_pruned_trials_are_recorded(tmp_path):
    space = load_space(write_space(tmp_path, tiny_space(trials=3, pruner={"kind": "median", "n_startup_trials": 1})))
    curves = [[0.5, 0.6, 0.7], [0.9, 0.9, 0.95], [0.1, 0.1, 0.1]]
    study, _, _ = run_search(space, out=tmp_path / "out", executor=ScriptedExecutor(curves), log=lambda m: None,
                             confirm=False)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[2].user_attrs["pruned_at"] == 1 and study.trials[2].intermediate_values == {1: 0.1}


def test_reporter_stop_makes_a_pruned_outcome(tmp_path):
    space = tiny_space()
    job = TrialJob(number=0, config=load_model_config({"d_model": 32, "n_layers": 1, "mixer": {"kind": "attention",
                   "n_heads": 2}}).model_dump(mode="json"), tasks=["recall_small"], budget=space["budget"],
                   seeds=[0], run_dir=str(tmp_path / "t0"), prune_task="recall_small", prune_metric="accuracy",
                   threads=1)
    seen = []
    out = run_trial(job, lambda step, value: seen.append((step, value)) or True)
    assert out.status == "pruned" and out.pruned_at == 4 and seen[0][0] == 4 and 0 <= seen[0][1] <= 1
    assert run_trial(job, lambda step, value: False).status == "complete"   # resumes from the checkpoint


def test_a_trial_folder_holding_another_models_run_is_not_reused(tmp_path):
    space = tiny_space()

    def job(d_model: int) -> TrialJob:
        cfg = load_model_config({"d_model": d_model, "n_layers": 1, "mixer": {"kind": "attention", "n_heads": 2}})
        return TrialJob(number=0, config=cfg.model_dump(mode="json"), tasks=["recall_small"], budget=space["budget"],
                        seeds=[0], run_dir=str(tmp_path / "t0"), prune_task="recall_small",
                        prune_metric="accuracy", threads=1)

    first = run_trial(job(32))
    assert first.status == "complete" and run_trial(job(32)).metrics == first.metrics      # its own run: reused
    other = run_trial(job(48))                     # another study's trial 0 in the same folder
    assert other.status == "failed" and "holds a finished run of something else (config_sha256" in other.reason


def test_a_diverging_trial_is_failed_with_its_reason_and_the_search_goes_on(tmp_path, monkeypatch):
    import nlsearch.search.trial as trial_mod

    real = trial_mod.train

    def train(config, *args, **kwargs):
        if config["mixer"]["kind"] == "memory":
            raise NonFiniteLossError(3, float("nan"))
        return real(config, *args, **kwargs)
    monkeypatch.setattr(trial_mod, "train", train)
    study, frame, _ = _search(tmp_path, trials=4)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all("non-finite loss" in t.user_attrs["reason"] for t in failed)
    assert finished(study) == 4 and (frame.state == "COMPLETE").sum() == 4 - len(failed)


def test_constraints_skip_infeasible_candidates_through_optunas_constraint_api(tmp_path):
    params = {"width": {"choices": [32, 64], "path": "d_model"}}
    study, frame, _ = _search(tmp_path, trials=6, params=params, constraints={"params": {"max": 60_000}})
    for t in study.trials:
        assert (t.user_attrs["params"] <= 60_000) == (t.state == TrialState.COMPLETE)
        assert t.constraints["params"] == pytest.approx(t.user_attrs["params"] - 60_000)
        if t.state == TrialState.PRUNED:
            assert "infeasible" in t.user_attrs["reason"] and "run_dir" not in t.user_attrs


def test_multi_objective_search_writes_the_pareto_front(tmp_path):
    objectives = [{"metric": "recall_small:accuracy", "direction": "maximize"},
                  {"metric": "params", "direction": "minimize"}]
    study, _, out = _search(tmp_path, trials=3, objectives=objectives,
                            params={"width": {"choices": [16, 32], "path": "d_model"}})
    pareto = pd.read_parquet(out / "pareto.parquet")
    # each config once: a trial that re-proposed a trained config (two widths, three trials) is not a new point
    assert set(pareto.number) == {t.number for t in study.best_trials if "duplicate_of" not in t.user_attrs}
    assert (out / "pareto.png").is_file()


def test_a_resumed_search_draws_new_candidates(tmp_path):
    _search(tmp_path, trials=2)
    study, _, _ = _search(tmp_path, trials=4)
    params = [t.params for t in study.trials]
    assert len(params) == 4
    assert params[2] not in params[:2] and params[3] not in params[:2], params   # a sampler seeded afresh repeats them


def test_a_task_given_as_a_relative_spec_file_is_found_and_scored(tmp_path):
    import shutil
    (tmp_path / "specs").mkdir()
    shutil.copy(ROOT / "tasks" / "recall_small.yaml", tmp_path / "specs" / "recall_small.yaml")
    study, frame, _ = _search(tmp_path, trials=1, tasks=["specs/recall_small.yaml"])   # relative to the space
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert 0 <= study.trials[0].values[0] <= 1


def test_resume_refuses_an_edited_budget_file_of_the_same_name(tmp_path):
    from search_fixtures import tiny_budget
    budget = tmp_path / "tiny_budget.yaml"
    budget.write_text(yaml.safe_dump(tiny_budget(steps=8)))
    _search(tmp_path, trials=1, budget=str(budget))
    budget.write_text(yaml.safe_dump(tiny_budget(steps=12)))         # still tiny@1, other content
    with pytest.raises(ValueError, match=r"different space.*budget_sha256"):
        _search(tmp_path, trials=2, budget=str(budget))


def test_resume_refuses_a_space_that_changed_what_it_measures(tmp_path):
    _search(tmp_path, trials=1)
    more, _, _ = _search(tmp_path, trials=2)                 # asking for more trials is allowed
    assert finished(more) == 2 and len({t.number for t in more.trials}) == 2
    with pytest.raises(ValueError, match="different space"):
        _search(tmp_path, trials=2, seeds=[1])


def _default_sigint() -> None:
    """In the child, before exec: SIGINT unblocked and at its default, as a terminal's Ctrl-C finds a
    program, whatever an earlier test left in the pytest process (a child inherits an ignored or
    blocked SIGINT, and Python then never raises KeyboardInterrupt)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(space: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    return subprocess.Popen([sys.executable, "-m", "nlsearch.cli", "search", str(space), "--out", str(out),
                             "--workers", "1", "--quiet", "--no-plots", "--no-confirm"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint)


def _wait_for_checkpoint(out: Path, trial: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    folder = out / "trials" / f"{trial:04d}" / "recall_small" / "seed0" / "checkpoints"
    while not (folder.exists() and any(folder.iterdir())):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C", "SIGTERM"])
def test_stopped_search_resumes_without_losing_or_rerunning_a_finished_trial(tmp_path, how):
    # trials long enough that the signal lands mid-trial even on a loaded machine
    space = write_space(tmp_path, tiny_space(name="resume", trials=3, steps=300))   # a checkpoint every 4 steps
    out = tmp_path / "out"
    proc = _cli(space, out)
    _wait_for_checkpoint(out, 1, proc)                       # trial 0 finished, trial 1 mid-way
    proc.send_signal({"kill -9": signal.SIGKILL, "Ctrl-C": signal.SIGINT, "SIGTERM": signal.SIGTERM}[how])
    proc.wait(timeout=60)
    if how != "kill -9":                                      # SIGTERM (a batch system's stop) as Ctrl-C
        assert proc.returncode == {"Ctrl-C": 130, "SIGTERM": 143}[how], proc.stdout.read()
    before = {t.number: t.values for t in _load(out, "resume").trials if t.state == TrialState.COMPLETE}
    assert 0 in before
    record0 = out / "trials" / "0000" / "recall_small" / "seed0" / "record.json"
    stamp = record0.stat().st_mtime_ns
    again = _cli(space, out)
    assert again.wait(timeout=300) == 0, again.stdout.read()
    study = _load(out, "resume")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and finished(study) == 3
    assert all(study.trials[n].values == v for n, v in before.items())        # nothing finished was lost
    assert record0.stat().st_mtime_ns == stamp                              # ... or run twice
    requeued = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.number for t in requeued] == [1] and requeued[0].user_attrs["requeued"]
    retry = [t for t in done if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == requeued[0].params
    assert retry[0].user_attrs["run_dir"] == requeued[0].user_attrs["run_dir"]   # resumed its checkpoints
    assert (out / JOURNAL).is_file()


@pytest.mark.parametrize("trials", ["0", "-1", "two"])
def test_cli_refuses_a_bad_trial_count_before_writing(tmp_path, capsys, trials):
    from nlsearch.cli import main
    space = write_space(tmp_path, tiny_space())
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        main(["search", str(space), "--out", str(out), "--trials", trials, "--quiet"])
    assert err.value.code == 2 and f"--trials must be a positive integer, got {trials!r}" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="trials must be a positive integer"):
        run_search(space, out=out, trials=0, log=lambda m: None)
    assert not out.exists()


@pytest.mark.parametrize("key, value, match", [("tasks", ["recal_small"], r"tiny\.yaml: tasks\.0: .*recal_small"),
                                               ("budget", "cpuu", r"tiny\.yaml: budget: .*cpuu")])
def test_an_unknown_task_or_budget_names_the_space_file_and_key(tmp_path, key, value, match):
    space = tiny_space(**{key: value})
    if key == "tasks":
        space["objectives"] = [{"metric": "recal_small:accuracy", "direction": "maximize"}]
    path = write_space(tmp_path, space)
    with pytest.raises(ValueError, match=match):
        run_search(path, out=tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_a_bad_storage_url_is_refused_before_anything_is_written(tmp_path):
    path = write_space(tmp_path, tiny_space())
    with pytest.raises(ValueError, match=r"--storage 'postgress://x/y' is not a usable database URL"):
        run_search(path, out=tmp_path / "out", storage="postgress://x/y", log=lambda m: None)
    with pytest.raises(ValueError, match=r"--storage sqlite:///.*/nowhere/s\.db: the database's folder"):
        run_search(path, out=tmp_path / "out", storage=f"sqlite:///{tmp_path}/nowhere/s.db", log=lambda m: None)
    import socket
    with socket.socket() as s:                        # a port no server listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+pg8000://u:secret@127.0.0.1:{port}/db"
    with pytest.raises(ValueError, match=rf"--storage postgresql\+pg8000://u:\*\*\*@127.0.0.1:{port}/db: "):
        run_search(path, out=tmp_path / "out", storage=url, log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_a_seed_whose_metric_is_not_finite_is_left_out_of_the_mean_and_said(monkeypatch):
    from types import SimpleNamespace
    import nlsearch.search.trial as trial_module
    values = {0: 0.5, 1: float("nan"), 2: 0.7}
    monkeypatch.setattr(trial_module, "_run", lambda job, task, seed, report: SimpleNamespace(
        metrics={"accuracy": values[seed]}, tokens_per_s=100.0, hardware="test", status="completed"))
    job = TrialJob(number=0, config={}, tasks=["recall_small"], budget={}, seeds=[0, 1, 2], run_dir="/nowhere")
    outcome = run_trial(job)
    assert outcome.status == "complete"
    assert outcome.metrics["recall_small:accuracy"] == pytest.approx(0.6)
    assert outcome.dropped == ["recall_small:accuracy seed 1"]


def test_a_search_in_which_every_trial_fails_says_so_and_writes_no_best(tmp_path, monkeypatch, capsys):
    import nlsearch.search.trial as trial_module
    from nlsearch.cli import main

    def diverge(*args, **kwargs):
        raise NonFiniteLossError(3, float("nan"))
    monkeypatch.setattr(trial_module, "train", diverge)
    path = write_space(tmp_path, tiny_space(name="allfail", trials=2))
    out = tmp_path / "out"
    assert main(["search", str(path), "--out", str(out), "--workers", "1", "--quiet"]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "no trial completed (2 fail)" in text and "no best.yaml was written" in text
    assert not (out / "best.yaml").exists() and not (out / "confirmation.parquet").exists()
    summary = (out / "summary.md").read_text()
    assert "Trials: 0 complete, 0 pruned, 2 failed." in summary and "No trial completed." in summary
    table = pd.read_parquet(out / "trials.parquet")
    assert (table.state == "FAIL").all() and table.reason.str.contains("non-finite loss").all()


def test_ctrl_c_turned_into_another_error_by_a_library_still_stops_the_trial(monkeypatch):
    """torch can turn a KeyboardInterrupt raised inside a tensor conversion into a ValueError: after
    Ctrl-C a trial's broad error handling re-raises KeyboardInterrupt instead of recording a failure."""
    import nlsearch.runtime as runtime
    import nlsearch.search.trial as trial_module

    def broken(job, task, seed, report):
        raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'")
    monkeypatch.setattr(trial_module, "_run", broken)
    job = TrialJob(number=0, config={}, tasks=["recall_small"], budget={}, seeds=[0], run_dir="/nowhere")
    assert run_trial(job).status == "failed"                                # no Ctrl-C: an ordinary failure
    monkeypatch.setitem(runtime._interrupts, "seen", True)
    with pytest.raises(KeyboardInterrupt):
        run_trial(job)


def test_a_retry_whose_run_folder_is_not_visible_here_is_refused_saying_so(tmp_path):
    path = write_space(tmp_path, tiny_space(name="far", trials=1, steps=4))
    run_search(path, out=tmp_path / "out", log=lambda m: None, confirm=False)
    study = _load(tmp_path / "out", "far")
    study.enqueue_trial(study.trials[0].params, user_attrs={"retry_of": 0, "run_dir": "/elsewhere/trials/0000"})
    study, _, _ = run_search(path, out=tmp_path / "out", trials=2, log=lambda m: None, confirm=False)
    retry = study.trials[1]
    assert retry.state == TrialState.FAIL
    assert "/elsewhere/trials/0000 of trial 0 is not visible from this machine" in retry.user_attrs["reason"]


def test_a_candidate_already_trained_takes_its_result_without_training_and_does_not_count(tmp_path):
    """Two mixers: the sampler soon proposes a config it has trained. That trial is told the earlier
    trial's value (flagged ``duplicate_of``), trains nothing and does not count, so the two configs are
    trained once each; when only known configs come back, the search stops asking after a bounded
    number of them, and the summary and rankings show each config once."""
    from nlsearch.search.driver import REPEAT_LIMIT

    space = tiny_space(trials=3, params={"mixer": tiny_space()["params"]["mixer"]})     # 2 configs in all
    space = load_space(write_space(tmp_path, space))
    executor = ScriptedExecutor([[0.25 * (n + 1)] for n in range(100)])
    study, frame, out = run_search(space, out=tmp_path / "out", executor=executor, log=lambda m: None,
                                   confirm=False)
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    copies = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert len(trained) == 2 and len({t.user_attrs["config_sha256"] for t in trained}) == 2
    assert len(copies) == REPEAT_LIMIT and finished(study) == 2             # the third trial was never trainable
    by_number = {t.number: t for t in trained}
    for copy in copies:
        original = by_number[copy.user_attrs["duplicate_of"]]
        assert copy.values == original.values and copy.state == TrialState.COMPLETE
        assert copy.user_attrs["config_sha256"] == original.user_attrs["config_sha256"]
    table = pd.read_parquet(out / "trials.parquet")
    assert table.duplicate_of.notna().sum() == REPEAT_LIMIT
    summary = (out / "summary.md").read_text()
    assert f"{REPEAT_LIMIT} of the complete ones proposed a config an earlier trial had trained" in summary
    top = summary.split("## Best trials")[1].split("##")[0]
    assert sum(line.startswith("| ") and line[2].isdigit() for line in top.splitlines()) == 2   # each config once


def test_the_progress_line_counts_each_state_as_it_is_not_counting_duplicates_or_requeued_fails():
    """Two trained trials, one duplicate given a trained trial's result, one pruned, one failed that
    counts and one failed that was re-queued: 4 done (2 trained + pruned + counted fail), failed 1."""
    from types import SimpleNamespace

    from nlsearch.search.run import progress_line
    from nlsearch.search.study import DUPLICATE_OF, REQUEUED
    study = optuna.create_study(direction="maximize")
    for value, state, attrs in [(0.5, TrialState.COMPLETE, {}), (0.7, TrialState.COMPLETE, {}),
                                (0.7, TrialState.COMPLETE, {DUPLICATE_OF: 1}), (None, TrialState.PRUNED, {}),
                                (None, TrialState.FAIL, {}), (None, TrialState.FAIL, {REQUEUED: True})]:
        study.add_trial(optuna.trial.create_trial(state=state, value=value, user_attrs=attrs))
    space = SimpleNamespace(objectives=[SimpleNamespace(metric="acc", direction="maximize")])
    driver = SimpleNamespace(trials=8, space=space, state=SimpleNamespace(running=1, durations=[]),
                             executor=SimpleNamespace(slots=2))
    assert progress_line(driver, study) == "trials 4/8 · running 1 · pruned 1 · failed 1 · best acc 0.7 (#1)"


@pytest.mark.parametrize("first", ["complete", "failed"])
def test_a_candidate_proposed_while_its_config_trains_waits_for_that_trial_instead_of_training_it(tmp_path, first):
    """One config in the space, two slots: the second trial is asked while the first trains the same
    config. It trains nothing and waits: when the first completes it takes its values (flagged
    ``duplicate_of``, not counted); when the first fails it fails too, saying why, also not counted."""
    class Scripted(ScriptedExecutor):
        slots = 2

        def wait(self, timeout):
            (outcome,) = super().wait(timeout)
            return [outcome if first == "complete" or outcome.number else TrialOutcome(0, "failed", reason="boom")]

    space = tiny_space(trials=2, params={"mixer": {"choices": {"attention": {"kind": "attention", "n_heads": 2}}}})
    executor, lines = Scripted([[0.25 * (n + 1)] for n in range(100)]), []
    run_search(load_space(write_space(tmp_path, space)), out=tmp_path / "out", executor=executor,
               log=lines.append, confirm=False)
    study = _load(tmp_path / "out", "tiny")
    waited = study.trials[1]
    assert waited.user_attrs["waits_for"] == 0 and waited.user_attrs["duplicate_of"] == 0
    assert "trial 1: the config of trial 0, which is training" in "\n".join(lines)
    if first == "complete":
        assert waited.state == TrialState.COMPLETE and waited.values == study.trials[0].values == [0.25]
        assert finished(study) == 1
    else:
        assert waited.state == TrialState.FAIL and "which ended FAIL: not trained" in waited.user_attrs["reason"]
        assert finished(study) == 2                       # trial 0's failure counts, its duplicate's does not
    assert 0 in {job.number for job in executor.all_jobs} and 1 not in {job.number for job in executor.all_jobs}


def test_the_depth_plot_counts_each_trained_config_once(tmp_path):
    """Three trials of one depth-3 config (two of them duplicates given its result) and two of depth 4:
    the caption's mean per depth is over trained trials only."""
    from nlsearch.search.plots import depth_plot
    space = load_space(write_space(tmp_path, tiny_space()))
    col = "objective:recall_small:accuracy"
    frame = pd.DataFrame({"number": range(5), "state": ["COMPLETE"] * 5, col: [0.8, 0.8, 0.8, 0.5, 0.7],
                          "nesting_depth": [3, 3, 3, 4, 4], "duplicate_of": [None, 0, 0, None, None]})
    caption = depth_plot(space, frame, tmp_path)
    assert caption == ("recall_small:accuracy against nesting depth over 3 trained trials (duplicates left out); "
                       "the best mean is at depth 3 (0.8 over 1 trial).")
    assert (tmp_path / "depth.png").is_file()


def test_parameter_importance_counts_each_trained_config_once(tmp_path):
    """Parameter importance (PED-ANOVA) over a study where one config came back four times as
    duplicates (given its value without training): the importance is that of the trained trials
    alone, the same as a study that never had the duplicates, and the caption says how many it read."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from nlsearch.search.plots import importance_plot

    space = load_space(write_space(tmp_path, tiny_space()))
    dists = {"a": FloatDistribution(0.0, 1.0), "b": CategoricalDistribution(["x", "y"])}

    def trial(a, b, value, duplicate_of=None):
        attrs = {} if duplicate_of is None else {"duplicate_of": duplicate_of}
        return optuna.trial.create_trial(params={"a": a, "b": b}, distributions=dists, value=value,
                                         user_attrs=attrs)

    trained = [trial(a, b, v) for a, b, v in [(0.1, "x", 0.2), (0.4, "y", 0.9), (0.7, "x", 0.3), (0.9, "y", 0.8),
                                              (0.3, "x", 0.25), (0.6, "y", 0.85)]]
    with_copies = optuna.create_study(direction="maximize")
    with_copies.add_trials(trained + [trial(0.1, "x", 0.2, duplicate_of=0)] * 4)
    alone = optuna.create_study(direction="maximize")
    alone.add_trials(trained)
    caption = importance_plot(with_copies, space, tmp_path / "a")
    assert "over 6 trained trials (duplicates left out)" in caption
    assert caption == importance_plot(alone, space, tmp_path / "b")
