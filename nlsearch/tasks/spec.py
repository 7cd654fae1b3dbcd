"""Frozen, versioned task specs (``tasks/<name>.yaml`` or ``tasks/<name>@<version>.yaml``) and loading.

A spec names its generator (``nlsearch.tasks.registry``) and the generator's parameters, the train and
eval sequence lengths, and its metrics, each declaring ``higher_is_better``. Unknown keys anywhere in
a spec, including inside ``generator.params``, are errors that name the key and the file.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from nlsearch.config import read_yaml_mapping
from nlsearch.tasks.batch import TaskBatch, TaskContext, check_split, torch_rng
from nlsearch.tasks.registry import Generator, get_generator

NAME = r"^[a-z][a-z0-9_]*$"


class MetricSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME)
    higher_is_better: bool
    description: str = ""


class GeneratorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: Dict[str, Any] = Field(default_factory=dict)


class LengthSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train: Tuple[PositiveInt, ...] = Field(min_length=1)
    eval: Tuple[PositiveInt, ...] = Field(min_length=1)


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME)
    version: PositiveInt
    description: str
    generator: GeneratorSpec
    lengths: LengthSpec
    metrics: Tuple[MetricSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_metrics(self) -> "TaskSpec":
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names repeat: {names}")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def sha256(self) -> str:
        """Returns the sha256 of the spec's canonical JSON (sorted keys, no spaces)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _explain(err: ValidationError, path: Path, prefix: Tuple[str, ...] = ()) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in prefix + tuple(e["loc"])) or "(top level)"
        lines.append(f"unknown key {loc!r}" if e["type"] == "extra_forbidden" else f"{loc}: {e['msg']}")
    return f"{path}: " + "; ".join(lines)


_PARSED: Dict[Tuple[str, int, int], Dict[str, Any]] = {}     # (path, mtime_ns, size) -> the file's YAML mapping


def _read_mapping(path: Path) -> Dict[str, Any]:
    """The YAML mapping in ``path``, parsed once per file version (resolving a task reads every spec of
    its folder; a report that plans hundreds of runs would otherwise parse them thousands of times)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _PARSED:
        _PARSED[key] = read_yaml_mapping(path)
    return copy.deepcopy(_PARSED[key])


def read_spec(path: Union[str, Path]) -> TaskSpec:
    """Returns the validated spec in ``path``; raises ValueError naming the file and the bad key."""
    path = Path(path)
    raw = _read_mapping(path) if path.is_file() else read_yaml_mapping(path)
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as e:
        raise ValueError(_explain(e, path)) from None
    if path.stem not in (spec.name, spec.ref):
        raise ValueError(f"{path}: the file of task {spec.ref} must be named {spec.name}.yaml or {spec.ref}.yaml")
    return spec


@dataclass(frozen=True)
class Task:
    """A spec bound to its generator and validated parameters."""

    spec: TaskSpec
    params: BaseModel
    path: Path
    context: TaskContext

    @property
    def ref(self) -> str:
        return self.spec.ref

    @property
    def generator(self) -> Generator:
        return get_generator(self.spec.generator.name)

    @property
    def vocab_size(self) -> int:
        return self.generator.vocab_size(self.params)

    @property
    def min_length(self) -> int:
        return self.generator.min_length(self.params)

    def phase_names(self) -> List[str]:
        return self.generator.phases(self.params)

    def check_length(self, length: int, what: str = "length") -> None:
        """Raises ValueError naming the task when ``length`` is shorter than the task needs."""
        if length < self.min_length:
            raise ValueError(f"task {self.ref}: {what} {length} is shorter than the task needs "
                             f"(at least {self.min_length} tokens)")

    def batch(self, n: int, length: int, seed: int, split: str = "train", phase: int = 0) -> TaskBatch:
        """Returns n sequences of ``length`` tokens, a TaskBatch (n, length), determined by
        (task ref, split, phase, seed)."""
        check_split(split)
        self.check_length(length)
        if not 0 <= phase < len(self.phase_names()):
            raise ValueError(f"task {self.ref}: phase {phase} out of range (it has {len(self.phase_names())})")
        gen = torch_rng(self.ref, split, phase, seed)
        return self.generator.sample(self.params, n, length, split, phase, gen, self.context)

    def phases(self) -> List["Phase"]:
        """Returns the task's phases in order (one for a task that is not continual)."""
        return [Phase(self, i, name) for i, name in enumerate(self.phase_names())]


@dataclass(frozen=True)
class Phase:
    task: Task
    index: int
    name: str

    def batch(self, n: int, length: int, seed: int, split: str = "train") -> TaskBatch:
        """Returns this phase's TaskBatch (n, length)."""
        return self.task.batch(n, length, seed, split, self.index)


def build_task(spec: TaskSpec, path: Path, cache_dir: Optional[str] = None) -> Task:
    """Returns the Task of ``spec`` (read from ``path``); raises ValueError naming the file for an
    unknown generator, bad parameters or a length shorter than the task needs."""
    try:
        generator = get_generator(spec.generator.name)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        params = generator.params.model_validate(spec.generator.params)
    except ValidationError as e:
        raise ValueError(_explain(e, path, ("generator", "params"))) from None
    task = Task(spec, params, path, TaskContext(path.parent, cache_dir))
    for split, lengths in (("train", spec.lengths.train), ("eval", spec.lengths.eval)):
        for length in lengths:
            try:
                task.check_length(length, f"{split} length")
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
    return task


def default_tasks_dir() -> Path:
    """Returns ``$NLSEARCH_TASKS_DIR`` or the repository's top-level ``tasks/`` folder."""
    return Path(os.environ.get("NLSEARCH_TASKS_DIR") or Path(__file__).resolve().parents[2] / "tasks")


def _index(tasks_dir: Optional[Path]) -> Dict[Tuple[str, int], Path]:
    folder = Path(tasks_dir) if tasks_dir is not None else default_tasks_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"tasks folder not found: {folder}")
    found: Dict[Tuple[str, int], Path] = {}
    for path in sorted(folder.glob("*.yaml")):
        spec = read_spec(path)
        key = (spec.name, spec.version)
        if key in found:
            raise ValueError(f"task {spec.ref} is defined twice: {found[key]} and {path}")
        found[key] = path
    return found


def list_tasks(tasks_dir: Optional[Path] = None) -> List[str]:
    """Returns the sorted ``name@version`` references of every spec in the tasks folder."""
    return sorted(f"{name}@{version}" for name, version in _index(tasks_dir))


def _parse_ref(ref: str) -> Tuple[str, Optional[int]]:
    name, _, version = ref.partition("@")
    if not version:
        return name, None
    if not version.isdigit():
        raise ValueError(f"bad task reference {ref!r}: expected 'name' or 'name@version' (an integer)")
    return name, int(version)


def load_task(ref: Union[str, Path], tasks_dir: Optional[Path] = None, cache_dir: Optional[str] = None) -> Task:
    """Returns the Task for ``name@version``, ``name`` (its highest version) or a path to a YAML spec."""
    ref = str(ref)
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref)
        if not path.is_file():
            raise FileNotFoundError(f"task spec file not found: {path}")
        return build_task(read_spec(path), path, cache_dir)
    name, version = _parse_ref(ref)
    index = _index(tasks_dir)
    versions = sorted(v for n, v in index if n == name)
    if not versions:
        raise ValueError(f"unknown task {name!r}; known: {sorted({n for n, _ in index})}")
    if version is not None and version not in versions:
        raise ValueError(f"task {name!r} has no version {version}; versions: {versions}")
    path = index[(name, version if version is not None else versions[-1])]
    return build_task(read_spec(path), path, cache_dir)
