"""Bad inputs fail before anything is written: an error naming the bad thing, and no directory."""
from __future__ import annotations

import pytest
import yaml

from nlsearch.budgets import KindBudget, load_budget
from nlsearch.cli import main
from nlsearch.config import ConfigError
from nlsearch.train import train
from train_fixtures import TINY_MODEL, tiny_budget, write_tasks


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = write_tasks(tmp_path_factory.mktemp("tasks"))
    spec = {"name": "missing_text", "version": 1, "description": "a corpus file that is not there",
            "generator": {"name": "lm_bytes", "params": {"corpus": {"source": "text", "files": ["nowhere.txt"]}}},
            "lengths": {"train": [64], "eval": [64]},
            "metrics": [{"name": "bits_per_byte", "higher_is_better": False}]}
    (folder / "missing_text.yaml").write_text(yaml.safe_dump(spec))
    odd = {**spec, "name": "odd_metric", "generator": {"name": "lm_bytes", "params": {}},
           "metrics": [{"name": "perplexity", "higher_is_better": False}]}
    (folder / "odd_metric.yaml").write_text(yaml.safe_dump(odd))
    return folder


SHORT = tiny_budget(recall=KindBudget(steps=2, batch_size=2, train_lengths=(8,)))


@pytest.mark.parametrize("model,task,budget,seed,error,match", [
    (TINY_MODEL, "no_such_task", tiny_budget(), 0, ValueError, "unknown task 'no_such_task'"),
    (TINY_MODEL, "tiny_recall@7", tiny_budget(), 0, ValueError, "no version 7"),
    (TINY_MODEL, "missing_text", tiny_budget(), 0, FileNotFoundError, "nowhere.txt"),
    (TINY_MODEL, "odd_metric", tiny_budget(), 0, ValueError, "perplexity"),
    (TINY_MODEL, "tiny_recall", SHORT, 0, ValueError, "train length 8 is shorter"),
    (TINY_MODEL, "tiny_recall", "huge", 0, ValueError, "unknown budget 'huge'"),
    (TINY_MODEL, "tiny_recall", tiny_budget(), -1, ValueError, "seed"),
    (TINY_MODEL, "tiny_recall", tiny_budget(), 2 ** 70, ValueError, r"seed must be an integer in \[0, 2\*\*63 - 1\]"),
    ({**TINY_MODEL, "d_modle": 32}, "tiny_recall", tiny_budget(), 0, ConfigError, "d_modle"),
    ({**TINY_MODEL, "d_model": 30, "mixer": {"kind": "attention", "n_heads": 4}}, "tiny_recall", tiny_budget(), 0,
     ConfigError, "n_heads=4 does not divide"),
    ("no-such-preset", "tiny_recall", tiny_budget(), 0, KeyError, "no-such-preset"),
])
def test_bad_input_writes_nothing(tasks, tmp_path, model, task, budget, seed, error, match):
    run_dir = tmp_path / "run"
    with pytest.raises(error, match=match):
        train(model, task, budget, seed, run_dir=run_dir, tasks_dir=tasks)
    assert not run_dir.exists()


def test_a_finished_run_is_not_overwritten(tasks, tmp_path):
    train(TINY_MODEL, "tiny_recall", tiny_budget(steps=2), 0, run_dir=tmp_path, tasks_dir=tasks)
    before = (tmp_path / "record.json").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        train(TINY_MODEL, "tiny_recall", tiny_budget(steps=2), 0, run_dir=tmp_path, tasks_dir=tasks)
    with pytest.raises(ValueError, match="another run"):
        train(TINY_MODEL, "tiny_recall", tiny_budget(steps=2), 1, run_dir=tmp_path, tasks_dir=tasks, resume=True)
    assert (tmp_path / "record.json").read_text() == before


def test_budget_versions_are_checked():
    assert load_budget("smoke@1") is load_budget("smoke")
    with pytest.raises(ValueError, match=r"no version '2'; versions: \[1\]"):
        load_budget("smoke@2")


@pytest.mark.parametrize("argv,match", [
    (["--model", "no-such-preset", "--task", "tiny_recall"], "no-such-preset"),
    (["--model", "transformer", "--task", "no_such_task"], "no_such_task"),
    (["--model", "transformer", "--task", "tiny_recall", "--budget", "huge"], "huge"),
    (["--model", "transformer", "--task", "tiny_recall", "--device", "cuda"], "cuda"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tasks, tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.setenv("NLSEARCH_TASKS_DIR", str(tasks))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = tmp_path / "out"
    assert main(["train", *argv, "--out", str(out), "--quiet"]) == 2
    assert match in capsys.readouterr().out
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "search", "run-suite"])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tasks, tmp_path, monkeypatch, capsys, command):
    from search_fixtures import tiny_space, write_space
    monkeypatch.setenv("NLSEARCH_TASKS_DIR", str(tasks))
    target = tmp_path / "README.md"
    target.write_text("a file, not a folder\n")
    space = tiny_space(name="s", tasks=["tiny_recall"],
                       objectives=[{"metric": "tiny_recall:accuracy", "direction": "maximize"}])
    argv = {"train": ["train", "--model", "transformer", "--task", "tiny_recall", "--quiet"],
            "search": ["search", str(write_space(tmp_path, space)), "--quiet"],
            "run-suite": ["run-suite", "--presets", "transformer", "--tasks", "tiny_recall", "--budget", "smoke"]}
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([*argv[command], "--out", str(target)]) == 2
    assert "is a file, not a folder" in " ".join(capsys.readouterr().out.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == before and target.read_text() == "a file, not a folder\n"


def test_the_memory_floor_is_weights_gradients_moments_and_logits(tasks):
    from nlsearch.train.plan import plan_run, training_bytes
    plan = plan_run(TINY_MODEL, "tiny_recall", tiny_budget(), 0, tasks_dir=tasks)
    params = sum(p.numel() for p in plan.cfg.build().parameters())           # built for real, counted here
    logits = plan.kb.batch_size * max(plan.train_lengths) * plan.cfg.vocab_size * 12
    assert training_bytes(plan) == 16 * params + logits


def test_a_model_that_cannot_fit_is_refused_before_allocating(tmp_path):
    """24 layers at width 16,384: about 1.5 TB to train. Refused in a fresh process whose peak memory
    stays that of an idle interpreter with torch loaded (the model is never built on a real device)."""
    import os
    import subprocess
    import sys
    (tmp_path / "huge.yaml").write_text("name: huge\nd_model: 16384\nn_layers: 24\n"
                                        "mixer: {kind: attention, n_heads: 16}\n")
    code = ("import resource, sys\nfrom nlsearch.cli import main\nrc = main(sys.argv[1:])\n"
            "print('peak-kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "train", "--model", str(tmp_path / "huge.yaml"),
                          "--task", "recall_small", "--budget", "smoke", "--out", str(tmp_path / "runs"), "--quiet"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "model huge cannot train here: it needs at least 1,5" in out.stdout and "GiB available" in out.stdout
    peak_kib = int(out.stdout.split("peak-kib")[1].split()[0])
    assert peak_kib < 1.5 * 2 ** 20                                        # under 1.5 GiB
    assert not (tmp_path / "runs").exists()


def test_a_model_whose_shapes_overflow_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "huge.yaml").write_text("name: huge\nd_model: 1000000000\n")
    assert main(["describe", str(tmp_path / "huge.yaml")]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "error: model huge cannot be built: Storage size calculation overflowed" in out and "Traceback" not in out


def test_a_second_process_training_the_same_folder_is_refused(tasks, tmp_path):
    """The first holds ``<run>/.lock`` while it trains; the second is refused naming the folder, and
    the first one's checkpoints are untouched."""
    import subprocess
    import sys
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom filelock import FileLock\n"
                               f"lock = FileLock({str(run_dir / '.lock')!r}); lock.acquire()\n"
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=r"is being trained by another process"):
            train(TINY_MODEL, "tiny_recall", tiny_budget(steps=2), 0, run_dir=run_dir, tasks_dir=tasks)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    train(TINY_MODEL, "tiny_recall", tiny_budget(steps=2), 0, run_dir=run_dir, tasks_dir=tasks)   # free again
    assert (run_dir / "record.json").is_file()
