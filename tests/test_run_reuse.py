"""A finished run is reused only when it is this run (identity, precision) and its metrics files match
the digests written into its record (nlsearch.train.record.finished_record); the leaderboard runner
sets anything else aside and retrains. GPU placement of leaderboard jobs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nlsearch.leaderboard.runner import Job, run_job
from nlsearch.train import read_record
from nlsearch.train.record import RECORD, finished_record
from leaderboard_fixtures import write_protocol
from train_fixtures import TINY_MODEL


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny leaderboard job trained once: (job, result)."""
    root = tmp_path_factory.mktemp("reuse")
    write_protocol(root / "proto")
    job = Job(dict(TINY_MODEL), "tiny_recall@1", 0, 1.0, str(root / "proto" / "tiny_budget.yaml"),
              str(root / "runs"), str(root / "proto" / "tasks"), threads=1, device="cpu")
    result = run_job(job)
    assert result.status == "completed" and not result.reused
    return job, result


def _rerun(job, result):
    """Runs the job again; returns its result and the folders beside the run folder afterwards."""
    again = run_job(job)
    siblings = sorted(p.name for p in Path(result.run_dir).parent.iterdir())
    return again, siblings


def test_an_intact_finished_run_is_reused_with_its_digests(finished):
    job, result = finished
    record = read_record(Path(result.run_dir))
    assert "metrics.parquet" in record.files and record.precision == "fp32"
    again = run_job(job)
    assert again.reused and again.status == "completed" and again.note == ""
    assert again.record["metrics"] == result.record["metrics"]


def _plant(run_dir: Path, **changes) -> None:
    data = json.loads((run_dir / RECORD).read_text())
    data.update(changes)
    (run_dir / RECORD).write_text(json.dumps(data))


@pytest.mark.parametrize("change,reason", [
    (dict(metrics={"accuracy": 0.999}, config_sha256="f" * 64), "config_sha256"),     # a planted foreign record
    (dict(precision="bf16-autocast"), "precision"),                                    # a GPU run for the cpu track
    (dict(files={}), "holds no digests"),                                              # a record from before digests
])
def test_a_record_that_is_not_this_run_is_set_aside_and_retrained(tmp_path, finished, change, reason):
    job, result = finished
    job = Job(**{**job.__dict__, "runs_dir": str(tmp_path / "runs")})
    first = run_job(job)
    run_dir = Path(first.run_dir)
    _plant(run_dir, **change)
    again, siblings = _rerun(job, first)
    assert not again.reused and again.status == "completed"
    assert reason in again.note and "set aside" in again.note
    assert any(name.endswith(".rejected-1") for name in siblings)
    assert again.record["metrics"] == first.record["metrics"]                         # retrained: same numbers
    assert read_record(run_dir).files                                                  # a fresh record


def test_edited_metrics_file_is_caught_by_its_digest(tmp_path, finished):
    job, _ = finished
    job = Job(**{**job.__dict__, "runs_dir": str(tmp_path / "runs")})
    first = run_job(job)
    run_dir = Path(first.run_dir)
    with open(run_dir / "metrics.parquet", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="metrics.parquet does not match the sha256"):
        finished_record(run_dir, {"seed": 0})
    again = run_job(job)
    assert not again.reused and "does not match" in again.note


def _job(i):
    return Job({}, "t@1", i, 1.0, "cpu", "/runs")


def test_cpu_track_jobs_run_on_the_cpu_and_gpu_track_jobs_spread_over_gpus(monkeypatch):
    import nlsearch.leaderboard.runner as runner

    def devices(gpus_per_job, visible):          # the device of each of five jobs, in the order started
        monkeypatch.setattr(runner, "_visible_gpus", lambda: visible)
        backend = runner._Serial(gpus_per_job)
        return [backend.running[backend.start(_job(i))].device for i in range(5)]

    assert set(devices(0.0, 4)) == {"cpu"}
    assert devices(1.0, 2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert set(devices(1.0, 0)) == {"auto"}


def test_a_gpu_job_goes_to_the_gpu_running_fewest_jobs(monkeypatch):
    """Runs end at different times: the next one takes the GPU that has emptied, not the next in turn."""
    import nlsearch.leaderboard.runner as runner

    monkeypatch.setattr(runner, "_visible_gpus", lambda: 2)
    backend = runner._Serial(1.0)
    handles = [backend.start(_job(i)) for i in range(4)]                 # cuda:0, 1, 0, 1
    for handle in handles:
        if backend.running[handle].device == "cuda:1":                    # both of cuda:1's runs end
            backend.running.pop(handle)
    assert backend.running[backend.start(_job(4))].device == "cuda:1"    # in turn it would be cuda:0


def _visible(job):
    return job.seed, os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.slow
def test_ray_gives_each_gpu_job_its_own_gpu_with_fake_gpus():
    """Ray with two fake GPUs: two jobs asking for one GPU each see different CUDA_VISIBLE_DEVICES;
    a CPU-track job (0 GPUs) sees none."""
    import ray

    from nlsearch.leaderboard.runner import _drive, _Ray

    def on_ray(jobs, gpus_per_job):
        out = {}
        _drive(_Ray("", gpus_per_job, fn=_visible), list(enumerate(jobs)), lambda _i, _r: (),
               lambda _i, seen: out.__setitem__(*seen))
        return out
    here = str(Path(__file__).resolve().parent)                   # the workers import this module
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": here}})
    try:
        seen = on_ray([_job(0), _job(1)], 1.0)
        assert sorted(seen.values()) == ["0", "1"]
        cpu = on_ray([_job(2)], 0.0)
        assert cpu[2] in (None, "")
    finally:
        ray.shutdown()


def _as_of(run_dir: Path, version: int, kind: str, tmp_path: Path) -> Path:
    """A copy of a finished run whose record says it was trained by code at ``version`` and whose
    config holds a mixer of ``kind`` (the identity check is not what is tested here)."""
    import shutil
    copy = tmp_path / f"{kind}-v{version}"
    shutil.copytree(run_dir, copy)
    data = json.loads((copy / RECORD).read_text())
    data["training_version"] = version
    data["config"]["mixer"]["kind"] = kind
    (copy / RECORD).write_text(json.dumps(data))
    return copy


def test_a_run_trained_before_a_listed_change_to_its_model_is_not_reused(finished, tmp_path):
    from nlsearch.train.record import TRAINING_CHANGES, TRAINING_VERSION
    job, result = finished
    identity = {}                                         # identity passes; only the code version is at stake
    assert read_record(Path(result.run_dir)).training_version == TRAINING_VERSION
    change = TRAINING_CHANGES[0]
    old_mamba = _as_of(Path(result.run_dir), change.version - 1, change.kinds[0], tmp_path)
    with pytest.raises(ValueError, match=rf"trained before a change .*\(change {change.version}: "):
        finished_record(old_mamba, identity)
    old_attention = _as_of(Path(result.run_dir), 0, "attention", tmp_path)       # the change is not about it
    assert finished_record(old_attention, identity) is not None
    new_mamba = _as_of(Path(result.run_dir), change.version, change.kinds[0], tmp_path)
    assert finished_record(new_mamba, identity) is not None


def test_every_committed_reproduction_run_is_reusable_from_this_checkout():
    """What a fresh clone holds under results/reproduce/runs: each run passes the reuse gate for the
    plan its record names (config, task, budget, seed, precision; digests; training changes)."""
    from nlsearch.train import plan_run
    root = Path(__file__).resolve().parents[1] / "results" / "reproduce" / "runs"
    records = sorted(root.rglob(RECORD))
    assert records, "no committed reproduction run"
    for path in records:
        record = read_record(path.parent)
        plan = plan_run(record.config, record.task, record.budget, record.seed, "cpu")
        assert finished_record(path.parent, plan.identity()) is not None, path
    from nlsearch.train.record import FAILURE, Failure, finished_failure
    for path in sorted(root.rglob(FAILURE)):                     # runs that diverged: kept as outcomes
        failure = Failure.model_validate_json(path.read_bytes())
        plan = plan_run(failure.config, failure.task, failure.budget, failure.seed, "cpu")
        assert finished_failure(path.parent, plan.identity()) is not None, path


def test_run_jobs_hands_over_every_result_as_it_finishes(finished):
    """A reproduction rewrites its report after every run: ``on_result`` sees each job's result, failed
    ones too, by the time ``run_jobs`` moves on; results come back in the jobs' order."""
    from dataclasses import replace

    from nlsearch.leaderboard.runner import run_jobs

    job, _ = finished
    broken = replace(job, task="no_such_task@1")
    seen, logged = [], []
    results = run_jobs([broken, job], 1, log=logged.append, on_result=lambda r: seen.append((r.job.task, r.status,
                                                                                           len(logged))))
    assert [r.job.task for r in results] == [broken.task, job.task]
    assert seen[0][0] == broken.task and seen[0][1].startswith("error: ") and seen[0][2] == 1   # logged, handed over
    assert seen[1] == (job.task, "completed", 2) and results[1].reused


def test_a_diverged_run_is_kept_and_reused_as_a_failure_not_trained_again(tmp_path, monkeypatch):
    """A run whose loss diverged leaves ``failure.json`` (its identity, step and status): the next call
    takes that outcome without training (a fresh clone keeps it: it is a small committed file), the
    report's progress counts it as done, and it follows the same version rule as a record."""
    import nlsearch.train as train_module
    import nlsearch.train.loop as loop
    from nlsearch.leaderboard.protocol import load_protocol
    from nlsearch.leaderboard.scoring import partial_results
    from nlsearch.train import NonFiniteLossError
    from nlsearch.train.record import FAILURE, TRAINING_CHANGES, finished_failure

    write_protocol(tmp_path / "proto")
    job = Job(dict(TINY_MODEL), "tiny_recall@1", 0, 1.0, str(tmp_path / "proto" / "tiny_budget.yaml"),
              str(tmp_path / "runs"), str(tmp_path / "proto" / "tasks"), threads=1, device="cpu")
    step = loop.train_step

    def diverge(model, optimizer, batch, device, grad_clip, at):
        if at == 2:
            raise NonFiniteLossError(at, float("nan"), "first non-finite output: somewhere")
        return step(model, optimizer, batch, device, grad_clip, at)

    monkeypatch.setattr(loop, "train_step", diverge)
    first = run_job(job)
    assert first.status == ("failed: NonFiniteLossError: non-finite training loss nan at step 2 "
                            "(first non-finite output: somewhere)") and not first.reused
    failure = json.loads((Path(first.run_dir) / FAILURE).read_text())
    assert failure["step"] == 2 and failure["status"] == first.status and failure["seed"] == 0

    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("trained again"))
    again = run_job(job)
    assert (again.status, again.reused, again.run_dir) == (first.status, True, first.run_dir)
    protocol = load_protocol(tmp_path / "proto" / "protocol.yaml")
    done, needed, so_far = partial_results(dict(TINY_MODEL), protocol, protocol.load_budget("tiny"),
                                           tmp_path / "runs")["tiny_recall@1"]
    assert (done, needed) == (1, 3) and [s.status for s in so_far.seeds] == [first.status]   # seed 0, failed

    data = json.loads((Path(first.run_dir) / FAILURE).read_text())
    data["training_version"] = 0
    data["config"]["mixer"]["kind"] = TRAINING_CHANGES[0].kinds[0]
    (Path(first.run_dir) / FAILURE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="before a change to what training computes"):
        finished_failure(Path(first.run_dir), {})
