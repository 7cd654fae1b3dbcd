"""Several drivers on one study in a real PostgreSQL server (``postgres_fixture``): they finish the
trials asked for between them with no trial run twice; a driver killed with -9 leaves a trial that
another driver re-queues once its heartbeat is stale, and the retry resumes from the checkpoint; a
driver stopped with Ctrl-C hands its trial back while the other keeps running. Slow (two drivers
train at once); ``.ci/run`` runs them with the server required."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search_fixtures import tiny_space, write_space

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def _driver(space: Path, out: Path, url: str, **env) -> subprocess.Popen:
    def default_sigint():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return subprocess.Popen([sys.executable, "-m", "nlsearch.cli", "search", str(space), "--out", str(out),
                             "--storage", url, "--workers", "1", "--quiet", "--no-plots", "--no-confirm"],
                            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160", **env}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)


def _space(tmp_path: Path, name: str, trials: int, steps: int) -> Path:
    return write_space(tmp_path, tiny_space(name=name, trials=trials, steps=steps))   # a checkpoint every 4 steps


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def _complete(study):
    return [t for t in study.trials if t.state == TrialState.COMPLETE]


def _wait(predicate, timeout: float, procs=()):
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            assert p.poll() is None, p.stdout.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_two_drivers_finish_the_trials_between_them_and_run_none_twice(postgres, tmp_path):
    url = postgres.new_database()
    space = _space(tmp_path, "pair", trials=6, steps=8)
    a, b = _driver(space, tmp_path / "out", url), _driver(space, tmp_path / "out", url)
    for p in (a, b):
        assert p.wait(timeout=600) == 0, p.stdout.read()
    study = _study(url, "pair")
    done = _complete(study)
    counted = [t for t in study.trials if t.state != TrialState.FAIL or not (t.user_attrs.get("surplus")
                                                                           or t.user_attrs.get("requeued"))]
    assert len(done) == 6 and len(counted) == 6
    run_dirs = [t.user_attrs["run_dir"] for t in done]
    assert len(set(run_dirs)) == 6
    for run_dir in run_dirs:
        record = json.loads((Path(run_dir) / "recall_small" / "seed0" / "record.json").read_text())
        assert len(record["sessions"]) == 1                                  # trained once, by one driver


@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_a_stopped_driver_leaves_its_trial_to_the_other_which_resumes_it(postgres, tmp_path, how):
    """kill -9: A dies mid-trial 0 and B, started after, re-queues exactly that trial once its heartbeat
    is GRACE_S old. Ctrl-C: A and B both run; A hands trial 0 back as it stops, B keeps running. Either
    way B's retry of trial 0 resumes from A's checkpoint and the study ends with the 2 trials wanted."""
    url = postgres.new_database()
    name = "kill" if how == "kill -9" else "interrupt"
    space = _space(tmp_path, name, trials=2, steps=1200)
    out = tmp_path / "out"
    fast = {"NLSEARCH_HEARTBEAT_S": "1", "NLSEARCH_GRACE_S": "4"}
    a = _driver(space, out, url, **fast)
    checkpoints = out / "trials" / "0000" / "recall_small" / "seed0" / "checkpoints"
    # A is mid-way through trial 0 with a checkpoint complete: ``latest`` is written only after the folder it
    # names is renamed into place (a temporary folder appears first, and killing A inside it leaves nothing)
    _wait(lambda: (checkpoints / "latest").is_file(), 180, [a])
    if how == "kill -9":
        a.send_signal(signal.SIGKILL)
        assert a.wait(timeout=60) == -signal.SIGKILL
        assert _study(url, name).trials[0].state == TrialState.RUNNING              # left behind, unowned
        b = _driver(space, out, url, **fast)
    else:
        b = _driver(space, out, url, **fast)
        _wait(lambda: any(t.state == TrialState.RUNNING and t.number == 1 for t in _study(url, name).trials), 180,
              [a, b])
        a.send_signal(signal.SIGINT)
        assert a.wait(timeout=120) == 130, a.stdout.read()
        assert b.poll() is None                                                      # B keeps running
    assert b.wait(timeout=900) == 0, b.stdout.read()
    study = _study(url, name)
    first = study.trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs["requeued"]
    reason = first.user_attrs["reason"]
    assert ("stopped beating" in reason) if how == "kill -9" else ("Ctrl-C" in reason)
    retry = [t for t in _complete(study) if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].user_attrs["run_dir"] == first.user_attrs["run_dir"]
    record = json.loads((Path(first.user_attrs["run_dir"]) / "recall_small" / "seed0" / "record.json").read_text())
    assert [s["from_step"] > 0 for s in record["sessions"]] == [False, True]   # resumed from A's checkpoint
    assert len(_complete(study)) == 2
