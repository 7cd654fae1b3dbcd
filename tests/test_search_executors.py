"""One contract every executor passes (in-process, Ray), and Ray's worker-death handling."""
from __future__ import annotations

import os
import subprocess
import sys
import signal
import time
from pathlib import Path
from typing import List

import pytest
import torch

from nlsearch.models import load_model_config
from nlsearch.search import load_space, run_search
from nlsearch.search.driver import auto_workers
from nlsearch.search.executors import Executor, InProcessExecutor, RayExecutor
from nlsearch.search.space import Resources
from nlsearch.search.trial import TrialJob, TrialOutcome
from search_fixtures import tiny_budget, tiny_space, write_space

CONFIG = load_model_config({"d_model": 32, "n_layers": 1, "mixer": {"kind": "attention", "n_heads": 2}})


def job(tmp_path: Path, number: int, steps: int = 8, seeds=(0,)) -> TrialJob:
    return TrialJob(number=number, config=CONFIG.model_dump(mode="json"), tasks=["recall_small"],
                    budget=tiny_budget(steps), seeds=list(seeds), run_dir=str(tmp_path / f"t{number}"),
                    prune_task="recall_small", prune_metric="accuracy", threads=1)


def drain(executor: Executor, n: int, timeout: float = 300) -> List[TrialOutcome]:
    outcomes, deadline = [], time.monotonic() + timeout
    while len(outcomes) < n:
        assert time.monotonic() < deadline, "executor did not finish"
        outcomes += executor.wait(timeout=0.5)
    return sorted(outcomes, key=lambda o: o.number)


class ExecutorContract:
    """Inherit and define ``make(tmp_path)``."""

    def make(self, tmp_path) -> Executor:
        raise NotImplementedError

    def test_runs_jobs_and_relays_reports(self, tmp_path):
        reports = []
        executor = self.make(tmp_path)
        executor.start(lambda number, step, value: reports.append((number, step, value)) and False)
        try:
            for n in range(2):
                executor.submit(job(tmp_path, n))
            outcomes = drain(executor, 2)
        finally:
            executor.shutdown()
        assert [o.status for o in outcomes] == ["complete", "complete"]
        assert all(0 <= o.metrics["recall_small:accuracy"] <= 1 and o.tokens_per_s > 0 for o in outcomes)
        assert sorted((n, s) for n, s, _ in reports) == [(0, 4), (1, 4)]      # one report at step 4 each
        assert executor.running() == 0

    def test_prune_answer_stops_the_trial(self, tmp_path):
        executor = self.make(tmp_path)
        executor.start(lambda number, step, value: True)
        try:
            executor.submit(job(tmp_path, 7))
            (outcome,) = drain(executor, 1)
        finally:
            executor.shutdown()
        assert outcome.status == "pruned" and outcome.pruned_at == 4
        assert not (tmp_path / "t7" / "recall_small" / "seed0" / "record.json").exists()


class TestInProcess(ExecutorContract):
    def make(self, tmp_path) -> Executor:
        return InProcessExecutor(threads=1)


class TestRay(ExecutorContract):
    def make(self, tmp_path) -> Executor:
        return RayExecutor(workers=2, resources=Resources(cpus_per_trial=1))

    def test_a_worker_killed_mid_trial_gives_a_failed_outcome_with_the_reason(self, tmp_path):
        executor = self.make(tmp_path)
        executor.start(lambda number, step, value: False)
        try:
            executor.submit(job(tmp_path, 3, steps=400))
            victim = _wait_for_process("ray::nlsearch_trial")
            os.kill(victim, signal.SIGKILL)
            (outcome,) = drain(executor, 1)
        finally:
            executor.shutdown()
        assert outcome.number == 3 and outcome.status == "failed" and "worker died" in outcome.reason

    def test_a_lost_report_channel_is_replaced_and_the_trial_holding_it_trains_on(self, tmp_path):
        """The channel actor dies (as with a node that goes away): the trial that holds it finishes
        unpruned, the driver goes on, and a trial submitted after it reports through a new channel."""
        reports = []
        executor = self.make(tmp_path)
        executor.start(lambda number, step, value: reports.append((number, step)) and False)
        try:
            executor.ray.kill(executor.channel)
            executor.submit(job(tmp_path, 1))                      # handed the dead channel
            (first,) = drain(executor, 1)
            executor.submit(job(tmp_path, 2))
            (second,) = drain(executor, 1)
        finally:
            executor.shutdown()
        assert (first.number, first.status, second.number, second.status) == (1, "complete", 2, "complete")
        assert reports == [(2, 4)]


def _parent(pid: int) -> int:
    """The parent pid of ``pid`` (0 when it is gone): field 4 of /proc/<pid>/stat, after the command."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def _is_descendant(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = _parent(pid)
        if pid == ancestor:
            return True
    return False


def _own_process(title: str, ancestor: "int | None" = None) -> "int | None":
    """A process titled ``title`` under ``ancestor`` (default: this test process, so the workers of the
    Ray instance this test's executor started), never another one on the machine."""
    ancestor = os.getpid() if ancestor is None else ancestor
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(title) and _is_descendant(int(pid), ancestor):
            return int(pid)
    return None


def _wait_for_process(title: str, timeout: float = 120, ancestor: "int | None" = None) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _own_process(title, ancestor)
        if pid is not None:
            return pid
        time.sleep(0.1)
    pytest.fail(f"no process titled {title!r} of this test appeared")


def test_the_victim_is_only_ever_a_process_under_the_session_that_started_it():
    """Two process trees, each with a process titled like a trial (as this test's Ray session and a
    user's running search would be): the one under the other tree is never picked."""
    title = "ray::nlsearch_trial"
    script = f"import subprocess; subprocess.Popen([{title!r}, '120'], executable='/bin/sleep').wait()"
    mine = subprocess.Popen([sys.executable, "-c", script])
    theirs = subprocess.Popen([sys.executable, "-c", script])
    try:
        victim = _wait_for_process(title, timeout=10, ancestor=mine.pid)
        other = _wait_for_process(title, timeout=10, ancestor=theirs.pid)
        assert victim != other
        assert _is_descendant(victim, mine.pid) and not _is_descendant(other, mine.pid)
        for _ in range(20):                                  # whatever the order /proc lists them in
            assert _own_process(title, ancestor=mine.pid) == victim
    finally:
        for tree in (mine, theirs):                          # the test started both trees: it ends them
            for pid in filter(str.isdigit, os.listdir("/proc")):
                if _parent(int(pid)) == tree.pid:
                    os.kill(int(pid), signal.SIGKILL)
            tree.kill()
            tree.wait()


@pytest.mark.parametrize("cores, cpus_per_trial, expected", [(2, 1, 2), (16, 4, 4), (3, 2, 1), (1, 4, 1)])
def test_auto_workers_fill_the_cores_this_process_may_use(tmp_path, monkeypatch, cores, cpus_per_trial, expected):
    space = load_space(write_space(tmp_path, tiny_space(name="auto"))).model_copy(
        update={"resources": Resources(cpus_per_trial=cpus_per_trial)})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert auto_workers(space) == expected


@pytest.mark.parametrize("gpus, per_trial, expected", [(1, 1.0, 1), (1, 0.25, 4), (8, 1.0, 8), (2, 0.5, 4)])
def test_auto_workers_take_one_per_gpu_share_and_cpu_device_ignores_gpus(tmp_path, monkeypatch, gpus, per_trial,
                                                                          expected):
    space = load_space(write_space(tmp_path, tiny_space(name="auto"))).model_copy(
        update={"resources": Resources(gpus_per_trial=per_trial)})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert auto_workers(space) == expected
    assert auto_workers(space, device="cpu") == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_bad_worker_counts_are_refused_before_anything_is_written(tmp_path, bad):
    with pytest.raises(ValueError, match="workers="):
        run_search(write_space(tmp_path, tiny_space(name="bad")), out=tmp_path / "out", workers=bad, log=lambda m: None)
    assert not (tmp_path / "out").exists()
