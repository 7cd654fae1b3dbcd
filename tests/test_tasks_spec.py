"""Task specs: every shipped spec loads and is deterministic in its seed; loading errors are clear."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from nlsearch.tasks import list_tasks, load_task, read_spec
from nlsearch.tasks.registry import GENERATORS
from nlsearch.tasks.spec import default_tasks_dir

SHIPPED = ["continual_drift@1", "continual_rebind@1", "continual_recall@1", "continual_text@1", "continual_text@2",
           "lm@1",
           "longctx_babi@1", "longctx_needle@1", "longctx_needle_multi@1", "recall@1", "recall_medium@1",
           "recall_overwrite@1", "recall_small@1", "recall_small_overwrite@1",
           "zoology_mqar_t128@1", "zoology_mqar_t256@1", "zoology_mqar_t512@1", "zoology_mqar_t64@1"]


@pytest.mark.parametrize("length, pairs", [(64, 4), (128, 8), (256, 16), (512, 64)])
def test_the_zoology_cells_are_figure_2s(length, pairs):
    """V=8192, the cell's pairs, no filler: every token after the context is a query or token 0."""
    task = load_task(f"zoology_mqar_t{length}@1")
    assert task.vocab_size == 8192 and task.spec.lengths.train == task.spec.lengths.eval == (length,)
    batch = task.batch(4, length, seed=0)
    after = batch.inputs[:, 2 * pairs:]
    queries = batch.mask[:, 2 * pairs:]
    assert (queries.sum(1) == pairs).all()
    assert (after[~queries] == 0).all() and (after[queries] > 0).all() and (after[queries] < 4096).all()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.getbasetemp() / "tasks-cache")


def test_shipped_specs_are_listed():
    assert list_tasks() == SHIPPED
    generators = {read_spec(p).generator.name for p in default_tasks_dir().glob("*.yaml")}
    assert generators == set(GENERATORS)


@pytest.mark.parametrize("ref", SHIPPED)
def test_every_task_is_deterministic_in_its_seed(ref: str, cache: str):
    task = load_task(ref, cache_dir=cache)
    length = task.spec.lengths.train[0]
    for phase in task.phases():
        a, b = phase.batch(3, length, seed=7), phase.batch(3, length, seed=7)
        c, e = phase.batch(3, length, seed=8), phase.batch(3, length, seed=7, split="eval")
        assert a.shape == (3, length) and a.mask.any()
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert all(torch.equal(a.meta[k], b.meta[k]) for k in a.meta)
        assert not torch.equal(a.inputs, c.inputs) and not torch.equal(a.inputs, e.inputs)
        assert int(a.inputs.max()) < task.vocab_size and int(a.targets.max()) < task.vocab_size
    if len(task.phases()) > 1:
        assert not torch.equal(task.batch(3, length, 7, phase=0).inputs, task.batch(3, length, 7, phase=1).inputs)


def test_refs_and_versions():
    assert load_task("recall").ref == load_task("recall@1").ref == "recall@1"
    task = load_task("recall_overwrite@1")
    assert task.spec.metrics[0].higher_is_better and task.vocab_size == 8192
    assert len(task.spec.sha256()) == 64 and task.spec.sha256() == load_task("recall_overwrite").spec.sha256()
    assert not load_task("lm").spec.metrics[0].higher_is_better
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(ValueError, match="task 'recall' has no version 9; versions: \\[1\\]"):
        load_task("recall@9")
    with pytest.raises(ValueError, match="bad task reference"):
        load_task("recall@latest")


def test_batch_errors():
    task = load_task("recall")
    with pytest.raises(ValueError, match="task recall@1: length 100 is shorter than the task needs"):
        task.batch(2, 100, seed=0)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        task.batch(2, 256, seed=0, split="test")
    with pytest.raises(ValueError, match="phase 1 out of range"):
        task.batch(2, 256, seed=0, phase=1)


def _spec(**changes) -> dict:
    spec = yaml.safe_load((default_tasks_dir() / "recall.yaml").read_text())
    spec["name"] = "mine"
    for key, value in changes.items():
        spec[key] = value
    return spec


def _write(folder: Path, spec: dict, name: str = "mine.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"generator": {"name": "mqar", "params": {"n_pair": 3}}}, "unknown key 'generator.params.n_pair'"),
    ({"metrics": [{"name": "accuracy", "higher_is_better": True, "goal": 1}]}, "unknown key 'metrics.0.goal'"),
    ({"metrics": [{"name": "accuracy"}]}, "metrics.0.higher_is_better: Field required"),
    ({"generator": {"name": "zoology"}}, "unknown task generator 'zoology'"),
    ({"lengths": {"train": [64], "eval": [256]}}, "train length 64 is shorter than the task needs"),
    ({"generator": {"name": "mqar", "params": {"vocab_size": 16, "n_pairs": 12}}}, "generator.params"),
])
def test_spec_errors_name_the_key_and_the_file(tmp_path: Path, change: dict, message: str):
    path = _write(tmp_path, _spec(**change))
    with pytest.raises(ValueError, match=message) as err:
        load_task(str(path))
    assert str(path) in str(err.value)


def test_spec_file_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="must be named mine.yaml or mine@1.yaml"):
        load_task(str(_write(tmp_path, _spec(), "other.yaml")))
    with pytest.raises(FileNotFoundError, match="absent.yaml"):
        load_task(str(tmp_path / "absent.yaml"))
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="bad.yaml: expected a mapping at the top level"):
        read_spec(tmp_path / "bad.yaml")
    folder = tmp_path / "dup"
    folder.mkdir()
    _write(folder, _spec())
    _write(folder, _spec(), "mine@1.yaml")
    with pytest.raises(ValueError, match="mine@1 is defined twice"):
        list_tasks(folder)


def test_user_spec_with_its_own_corpus(tmp_path: Path, cache: str):
    (tmp_path / "notes.txt").write_text("my own notes on nested learning. " * 200)
    spec = {"name": "my_lm", "version": 2, "description": "my corpus",
            "generator": {"name": "lm_bytes", "params": {"corpus": {"source": "text", "files": ["notes.txt"]}}},
            "lengths": {"train": [64], "eval": [64]},
            "metrics": [{"name": "bits_per_byte", "higher_is_better": False}]}
    _write(tmp_path, spec, "my_lm@2.yaml")
    assert list_tasks(tmp_path) == ["my_lm@2"]
    task = load_task("my_lm", tasks_dir=tmp_path, cache_dir=cache)
    text = bytes(task.batch(2, 64, seed=0).inputs[0].tolist())
    assert b"nested" in text or b"notes" in text
    spec["generator"]["params"]["corpus"]["files"] = ["missing.txt"]
    _write(tmp_path, spec, "my_lm@2.yaml")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_task("my_lm@2", tasks_dir=tmp_path, cache_dir=cache).batch(1, 64, seed=0)
