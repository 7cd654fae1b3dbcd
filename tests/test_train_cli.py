"""``nlsearch train`` / ``eval`` / ``tasks list`` at smoke size: the record carries every provenance field."""
from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import yaml

from nlsearch.cli import main
from nlsearch.config import canonical_json, parse_config
from nlsearch.models import ModelConfig
from nlsearch.train import read_record
from train_fixtures import TINY_MODEL, write_tasks

PROVENANCE = ("config", "config_sha256", "task", "task_sha256", "seed", "budget", "budget_sha256", "metrics",
              "higher_is_better", "params", "state_size", "state_size_length", "tokens_per_s", "wall_time_s",
              "hardware", "torch", "nlsearch", "git_commit", "python", "device", "threads", "created")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tasks = write_tasks(root / "tasks")
    model = root / "tiny.yaml"
    model.write_text(yaml.safe_dump(TINY_MODEL))
    out = root / "runs"
    rc = main(["train", "--model", str(model), "--task", str(tasks / "tiny_recall.yaml"), "--budget", "smoke",
               "--seed", "5", "--out", str(out), "--quiet"])
    assert rc == 0
    (record_path,) = out.rglob("record.json")
    return record_path.parent, tasks


def test_train_writes_a_record_with_every_provenance_field(trained):
    run_dir, _ = trained
    raw = json.loads((run_dir / "record.json").read_text())
    for key in PROVENANCE:
        assert raw[key] not in (None, ""), key
    assert raw["status"] == "completed" and raw["task"] == "tiny_recall@1" and raw["budget"] == "smoke@1"
    assert raw["allocator"] in ("tuned", "default") and raw["compiled_steps"] in ("on", "off")
    (session,) = raw["sessions"]
    assert session["from_step"] == 0 and session["device"] == raw["device"] and session["git_commit"]
    assert raw["trained_as"] is None
    assert raw["seed"] == 5 and raw["config"]["vocab_size"] == 64
    cfg = parse_config(ModelConfig, raw["config"])
    assert hashlib.sha256(canonical_json(cfg).encode()).hexdigest() == raw["config_sha256"]
    assert raw["headline"] == ["accuracy"] and raw["higher_is_better"]["accuracy"] is True
    assert run_dir.parts[-3:] == ("tiny_recall@1", f"tiny-{raw['config_sha256'][:12]}", "smoke@1-seed5")
    frame = pd.read_parquet(run_dir / "metrics.parquet")
    assert set(frame.name) == set(raw["metrics"])
    assert (frame.config_sha256 == raw["config_sha256"]).all()
    assert not pd.read_parquet(run_dir / "history.parquet").empty


def test_eval_reproduces_the_training_record(trained, capsys):
    run_dir, _ = trained
    assert main(["eval", "--checkpoint", str(run_dir)]) == 0
    again = read_record(run_dir / "evals" / "tiny_recall@1-smoke@1")
    first = read_record(run_dir)
    assert again.status == "evaluated" and again.metrics == first.metrics
    assert again.config_sha256 == first.config_sha256
    assert "accuracy" in capsys.readouterr().out


def test_eval_under_another_budget_says_what_the_model_was_trained_under(trained):
    from nlsearch.train import evaluate_checkpoint
    from train_fixtures import tiny_budget
    run_dir, _ = trained
    first = read_record(run_dir)
    other = tiny_budget(steps=3, eval_size=4)
    record, _, out = evaluate_checkpoint(run_dir, budget=other, write=False)
    assert record.budget == other.ref and record.budget != first.budget
    assert record.trained_as["budget"] == first.budget and record.trained_as["budget_sha256"] == first.budget_sha256
    assert record.trained_as["task"] == first.task and record.train_lengths == first.train_lengths
    assert record.steps == first.steps and record.sessions == first.sessions


def test_rerun_without_resume_is_refused_and_resume_is_accepted(trained, tmp_path):
    run_dir, tasks = trained
    out = run_dir.parents[2]
    argv = ["train", "--model", str(out.parent / "tiny.yaml"), "--task", str(tasks / "tiny_recall.yaml"),
            "--budget", "smoke", "--seed", "5", "--out", str(out), "--quiet"]
    assert main(argv) == 2
    assert main(argv + ["--resume"]) == 0


def test_eval_of_a_missing_checkpoint_exits_2(tmp_path):
    assert main(["eval", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "nothing").exists()


def test_tasks_list_names_every_task(capsys):
    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    for ref in ("recall@1", "longctx_needle_multi@1", "continual_recall@1", "continual", "longctx"):
        assert ref in out
