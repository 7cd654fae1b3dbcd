"""The runner's queue (``runner.run_dynamic``) and a model's scoring (``scoring.Scoring``): jobs start
lowest priority first as workers free up, follow-ups queued later jump the queue by priority, a
task's seeds are queued the moment its own lr sweep is complete, and one model's tail does not keep
a worker idle while another model's runs wait."""
from __future__ import annotations

import pytest

import nlsearch.leaderboard.runner as runner
from nlsearch.leaderboard.protocol import load_protocol
from nlsearch.leaderboard.runner import Job, JobResult, run_dynamic
from nlsearch.leaderboard.scoring import RunError, Scoring
from leaderboard_fixtures import write_protocol


def _job(name: str, task: str = "t@1", seed: int = 0, factor: float = 1.0) -> Job:
    return Job({"name": name}, task, seed, factor, "tiny", "/nowhere")


class Scripted:
    """A backend with ``capacity`` slots whose jobs finish in the order they started; it logs every
    start and finish as ("start"/"end", model name, seed)."""

    def __init__(self, capacity: int):
        self.capacity, self.running, self.events, self.n = capacity, {}, [], 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def start(self, job):
        self.n += 1
        self.running[self.n] = job
        self.events.append(("start", job.model["name"], job.seed))
        return self.n

    def wait(self):
        handle = next(iter(self.running))
        job = self.running.pop(handle)
        self.events.append(("end", job.model["name"], job.seed))
        return handle, JobResult(job, "completed", False, {"metrics": {}}, None)


def test_a_freed_worker_takes_the_next_models_run_and_a_follow_up_jumps_the_queue(monkeypatch):
    """Two slots, model a (priority 0) with three runs, b (priority 1) with one: b starts while a's last
    run still runs (no worker idles at a's tail), and a follow-up of a queued after b's run still
    jumps ahead of b's own later runs."""
    backend = Scripted(capacity=2)
    monkeypatch.setattr(runner, "_backend", lambda *a, **k: backend)
    starts = [(0, _job("a", seed=s)) for s in range(3)] + [(1, _job("b", seed=s)) for s in range(2)]

    def follow(priority, result):
        if result.job.model["name"] == "a" and result.job.seed == 0:
            return [(0, _job("a", seed=9))]                  # a's seeds after its sweep
        return []

    seen = []
    run_dynamic(starts, follow, workers=2, on_result=seen.append)
    starts_order = [(name, seed) for kind, name, seed in backend.events if kind == "start"]
    assert starts_order == [("a", 0), ("a", 1), ("a", 2), ("a", 9), ("b", 0), ("b", 1)]
    events = backend.events
    assert events.index(("start", "b", 0)) < events.index(("end", "a", 9))     # b fills the slot a's tail left
    assert len(seen) == 6 and not backend.running


def test_serial_runs_go_by_priority_then_by_the_order_given(monkeypatch):
    order = []
    monkeypatch.setattr(runner, "run_job", lambda job: order.append(job.model["name"]) or
                        JobResult(job, "completed", False, {"metrics": {}}, None))
    run_dynamic([(2, _job("c")), (1, _job("b1")), (1, _job("b2")), (0, _job("a"))],
                lambda p, r: [(0, _job("a-next"))] if r.job.model["name"] == "a" else [])
    assert order == ["a", "a-next", "b1", "b2", "c"]


@pytest.fixture()
def two_tasks(tmp_path):
    protocol = load_protocol(write_protocol(tmp_path / "p", tasks=("tiny_recall", "tiny_lm"), factors=(0.5, 1.0, 2.0)))
    return protocol, Scoring({"name": "m", "d_model": 16}, protocol, protocol.load_budget("tiny"), tmp_path / "runs")


def _result(job: Job, status: str = "failed: diverged") -> JobResult:
    return JobResult(job, status, False, None, None)


def test_a_tasks_seeds_are_queued_when_its_own_sweep_is_complete(two_tasks):
    protocol, scoring = two_tasks
    first = scoring.start()
    assert sorted((j.task, j.seed, j.lr_factor) for j in first) == sorted(
        (t, 0, f) for t in ("tiny_recall@1", "tiny_lm@1") for f in (0.5, 1.0, 2.0))
    recall = [j for j in first if j.task == "tiny_recall@1"]
    assert scoring.take(_result(recall[0])) == [] and scoring.take(_result(recall[1])) == []
    ready = scoring.take(_result(recall[2]))                   # tiny_lm's sweep has not come back at all
    assert [(j.task, j.seed, j.lr_factor) for j in ready] == [("tiny_recall@1", 1, 1.0), ("tiny_recall@1", 2, 1.0)]
    assert not scoring.done
    for job in [j for j in first if j.task == "tiny_lm@1"] + ready:
        more = scoring.take(_result(job))
        for extra in more:
            scoring.take(_result(extra))
    assert scoring.done
    result = scoring.result()                   # every run diverged: factor 1 (the closest to 1), seeds 0-2
    assert result["tiny_recall@1"].lr_factor == 1.0 and [s.seed for s in result["tiny_recall@1"].seeds] == [0, 1, 2]


def test_an_error_in_a_sweep_queues_nothing_more_and_the_result_raises(two_tasks):
    _, scoring = two_tasks
    first = scoring.start()
    recall = [j for j in first if j.task == "tiny_recall@1"]
    lm = [j for j in first if j.task == "tiny_lm@1"]
    assert scoring.take(_result(recall[0], "error: RuntimeError: boom")) == []
    assert scoring.take(_result(recall[1])) == [] and scoring.take(_result(recall[2])) == []   # no lr from it
    assert [scoring.take(_result(j)) for j in lm] == [[], [], []]                           # nor for the others
    assert scoring.done
    with pytest.raises(RunError, match="boom"):
        scoring.result()


def _completed(job: Job, accuracy: float) -> JobResult:
    from leaderboard_fixtures import _run

    record = {**_run(job.seed).model_dump(mode="json"), "metrics": {"accuracy": accuracy},
              "higher_is_better": {"accuracy": True}, "task_kind": "recall"}
    return JobResult(job, "completed", False, record, "/nowhere")


@pytest.mark.parametrize("arrival", [(0.5, 1.0, 2.0), (2.0, 1.0, 0.5), (1.0, 2.0, 0.5)])
def test_a_tie_goes_to_the_same_factor_whatever_order_the_sweep_finished_in(two_tasks, arrival):
    """x0.5 and x2 tie on accuracy (and are equally far from 1): the protocol's order decides (x0.5), not
    which run came back first (workers finish in any order)."""
    _, scoring = two_tasks
    sweep = {j.lr_factor: j for j in scoring.start() if j.task == "tiny_recall@1"}
    values = {0.5: 0.8, 1.0: 0.3, 2.0: 0.8}
    ready = [job for f in arrival for job in scoring.take(_completed(sweep[f], values[f]))]
    assert {j.lr_factor for j in ready} == {0.5}
    assert list(scoring.sweeps["tiny_recall@1"]) == [0.5, 1.0, 2.0]        # as the entry's sweep lists them


def test_a_scoring_is_not_done_before_it_starts(two_tasks):
    _, scoring = two_tasks
    assert not scoring.done
    scoring.start()
    assert not scoring.done


def test_a_freed_worker_gets_its_next_run_before_the_slow_bookkeeping(monkeypatch):
    """``on_result`` (a reproduction rewrites its report there: seconds) runs after the freed slot has
    taken the next queued run, including one ``follow`` just queued."""
    backend = Scripted(capacity=2)
    monkeypatch.setattr(runner, "_backend", lambda *a, **k: backend)
    busy = []
    run_dynamic([(0, _job("a", seed=s)) for s in range(2)] + [(1, _job("b"))],
                lambda p, r: [(0, _job("a", seed=7))] if r.job.seed == 0 and r.job.model["name"] == "a" else [],
                workers=2, on_result=lambda r: busy.append((r.job.model["name"], r.job.seed, len(backend.running))))
    assert busy[0] == ("a", 0, 2)                  # a's follow-up already running beside a1 when a0 is logged
    assert busy[1] == ("a", 1, 2)                  # b took a1's slot


def test_a_dead_worker_breaks_only_its_jobs_and_a_new_executor_takes_the_rest(tmp_path, monkeypatch):
    """A worker dies (the executor is broken: its job and any running beside it come back as errors, and
    it refuses new jobs): the next job gets a new executor, so the runs still queued, other models'
    too, are trained."""
    from concurrent.futures import BrokenExecutor, Future
    from concurrent.futures.process import BrokenProcessPool

    pools = []

    class Pool:
        def __init__(self, *a, **k):
            self.n, self.broken = 0, False
            pools.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def shutdown(self, wait=True, cancel_futures=False):
            pass

        def submit(self, fn, job):
            if self.broken:
                raise BrokenProcessPool("A child process terminated abruptly, the process pool is not usable anymore")
            future, self.n = Future(), self.n + 1
            if len(pools) == 1 and self.n == 2:
                self.broken = True
                future.set_exception(BrokenProcessPool("a process in the pool was terminated abruptly"))
            else:
                future.set_result(JobResult(job, "completed", False, {"metrics": {}}, None))
            return future

    assert issubclass(BrokenProcessPool, BrokenExecutor)
    monkeypatch.setattr(runner.futures, "ProcessPoolExecutor", Pool)
    seen = []
    run_dynamic([(i // 2, _job(f"m{i // 2}", seed=i)) for i in range(6)], workers=2, on_result=seen.append)
    status = {r.job.seed: r.status for r in seen}
    assert status[1].startswith("error: worker lost (BrokenProcessPool")
    assert [status[s] for s in (0, 2, 3, 4, 5)] == ["completed"] * 5 and len(pools) == 2


def test_a_job_that_does_not_fit_is_passed_over_and_returned(monkeypatch):
    """``fits`` (a deadline) refuses b's long run: the next in line starts instead, nothing waits on the
    refused one, and it is returned; its follow-ups were never queued."""
    backend = Scripted(capacity=1)
    monkeypatch.setattr(runner, "_backend", lambda *a, **k: backend)
    starts = [(0, _job("a")), (1, _job("long")), (2, _job("c"))]

    def follow(priority, result):
        return [(0, _job("after-long"))] if result.job.model["name"] == "long" else []

    refused = run_dynamic(starts, follow, fits=lambda job: job.model["name"] != "long")
    assert [name for kind, name, _ in backend.events if kind == "start"] == ["a", "c"]
    assert [job.model["name"] for job in refused] == ["long"]
    assert run_dynamic([(0, _job("long"))], follow, fits=lambda job: False)[0].model["name"] == "long"


def test_the_time_a_run_needs_counts_what_its_checkpoint_has_done(tmp_path):
    """The estimate: training tokens x the preset's measured core-seconds per token (0.1 s for 8 x 128
    tokens at one thread: 4 steps take 0.4 s), the steps already checkpointed taken off, shared by the
    threads; an unmeasured preset has no estimate."""
    import math
    from types import SimpleNamespace

    import pandas as pd

    from nlsearch.bench.estimate import seconds_left

    table = pd.DataFrame({"preset": ["p"], "T": [128], "B": [8], "seconds": [0.1], "hardware": ["x, 1 threads"]})
    plan = SimpleNamespace(train_lengths=[128], total_steps=4, kb=SimpleNamespace(batch_size=8))
    assert seconds_left(plan, "p", table) == pytest.approx(0.4)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-00000003\n")
    assert seconds_left(plan, "p", table, tmp_path) == pytest.approx(0.1)
    assert seconds_left(plan, "p", table, tmp_path, threads=2) == pytest.approx(0.05)
    assert seconds_left(plan, "p", table, tmp_path / "no-run-yet") == pytest.approx(0.4)
    assert math.isnan(seconds_left(plan, "unmeasured", table))
