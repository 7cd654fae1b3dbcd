"""Resume loses nothing: a ``latest`` pointer naming a missing folder, garbage in it, or a truncated
checkpoint falls back to the newest intact checkpoint (or step 0), saying so, and the run ends with the
numbers of an uninterrupted one; an intact checkpoint is never deleted before a newer one is verified."""
import pytest

from nlsearch.train import train
from nlsearch.train.checkpoint import LATEST, check_checkpoint, resume_point
from train_fixtures import TINY_MODEL, tiny_budget, write_tasks

BUDGET = tiny_budget(steps=12, checkpoint_interval=4)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return str(write_tasks(tmp_path_factory.mktemp("tasks")) / "tiny_recall.yaml")


@pytest.fixture(scope="module")
def whole(task):
    return train(TINY_MODEL, task, BUDGET, 0)


def _interrupted(task, run_dir, after=8):
    """A run killed after ``after`` steps: a checkpoint every 4 steps was written, only the last is kept."""
    result = train(TINY_MODEL, task, BUDGET, 0, run_dir=run_dir, stop_after=after)
    assert result.status == "interrupted"
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == [f"step-{after:08d}"]
    return ckpts


def _resumed(task, run_dir, whole, match):
    with pytest.warns(UserWarning, match=match):
        result = train(TINY_MODEL, task, BUDGET, 0, run_dir=run_dir, resume=True)
    assert result.status == "completed" and result.metrics == whole.metrics        # nothing lost, nothing different
    return result


def test_a_pointer_to_a_missing_folder_resumes_from_the_intact_checkpoint(task, whole, tmp_path):
    ckpts = _interrupted(task, tmp_path / "run")
    (ckpts / LATEST).write_text("step-00000020")
    result = _resumed(task, tmp_path / "run", whole, "step-00000020 does not exist")
    assert [s["from_step"] for s in result.record.sessions] == [0, 8]             # resumed, not restarted


def test_garbage_in_the_pointer_is_named_and_passed_over(task, whole, tmp_path):
    ckpts = _interrupted(task, tmp_path / "run")
    (ckpts / LATEST).write_text("../../../etc")
    result = _resumed(task, tmp_path / "run", whole, "names no checkpoint")
    assert [s["from_step"] for s in result.record.sessions] == [0, 8]


def test_a_truncated_checkpoint_is_named_and_the_run_restarts_without_loss(task, whole, tmp_path):
    ckpts = _interrupted(task, tmp_path / "run")
    weights = ckpts / "step-00000008" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "model.safetensors is unreadable" in check_checkpoint(ckpts / "step-00000008")
    folder, notes = resume_point(tmp_path / "run")
    assert folder is None and "starting from step 0" in notes[-1]
    result = _resumed(task, tmp_path / "run", whole, "model.safetensors is unreadable")
    assert [s["from_step"] for s in result.record.sessions] == [0]


def test_a_newer_intact_checkpoint_is_chosen_over_a_corrupt_pointer_target(task, whole, tmp_path):
    """Two checkpoints on disk (a crash between writing the newer and removing the older): the pointer
    names the newer one, which is corrupt; the older intact one is used."""
    ckpts = _interrupted(task, tmp_path / "run", after=4)                         # keeps step 4
    older = ckpts / "step-00000004"
    result = train(TINY_MODEL, task, BUDGET, 0, run_dir=tmp_path / "other", stop_after=8)
    assert result.status == "interrupted"
    newer = tmp_path / "other" / "checkpoints" / "step-00000008"
    newer.rename(ckpts / "step-00000008")
    (ckpts / "step-00000008" / "trainer.json").write_text("{not json")
    (ckpts / LATEST).write_text("step-00000008")
    assert resume_point(tmp_path / "run")[0] == older
    result = _resumed(task, tmp_path / "run", whole, "trainer.json is unreadable")
    assert [s["from_step"] for s in result.record.sessions] == [0, 4]



def test_a_write_killed_midway_is_never_resumed_from_and_its_leftover_is_removed(task, whole, tmp_path):
    """kill -9 inside a checkpoint write leaves its temporary folder (``.step-*``, half written): the
    resume takes the intact checkpoint without a word about it, and the next checkpoint removes it."""
    ckpts = _interrupted(task, tmp_path / "run")
    left = ckpts / ".step-00000012.dead"
    left.mkdir()
    weights = (ckpts / "step-00000008" / "model.safetensors").read_bytes()
    (left / "model.safetensors").write_bytes(weights[:100])
    assert resume_point(tmp_path / "run") == (ckpts / "step-00000008", [])
    result = train(TINY_MODEL, task, BUDGET, 0, run_dir=tmp_path / "run", resume=True)
    assert result.status == "completed" and result.metrics == whole.metrics
    assert [s["from_step"] for s in result.record.sessions] == [0, 8]
    assert not left.exists() and [p.name for p in ckpts.glob(".step-*")] == []
