"""A small leaderboard protocol (tiny tasks, a budget of a few steps, three seeds) and synthetic entries
for the leaderboard tests: scoring a tiny model under it takes seconds on one CPU thread."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import yaml

from nlsearch.leaderboard.entry import Entry, RunInfo, SeedResult, TaskResult, entry_id
from train_fixtures import write_tasks

ROLES = {"tiny_recall": "recall", "tiny_lm": "lm", "tiny_needle": "needle", "tiny_continual": "continual"}
SETTING = {"task": {"n_pairs": 8}, "metric": "accuracy", "models": ["attention"]}   # a claim's source setting
METRIC = {"tiny_recall": "accuracy", "tiny_lm": "bits_per_byte", "tiny_needle": "accuracy", "tiny_continual": "acc"}


def write_protocol(folder: Path, tasks: Sequence[str] = tuple(ROLES), factors: Sequence[float] = (1.0,),
                   steps: int = 4, claims: Optional[list] = None, **over) -> Path:
    """Writes tiny task specs, a budget file ``tiny@1`` and ``protocol.yaml`` (``test@1``) into
    ``folder``; returns the protocol's path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tasks(folder / "tasks")
    kind = {"steps": steps, "batch_size": 8, "eval_size": 8}
    budget = {"name": "tiny", "version": 1, **{k: dict(kind) for k in ("lm", "recall", "longctx", "continual")},
              "eval_interval": steps, "checkpoint_interval": 0, "eval_batch": 8, "threads": 1}
    (folder / "tiny_budget.yaml").write_text(yaml.safe_dump(budget))
    protocol = {"name": "test", "version": 1,
                "tasks": [{"task": f"{t}@1", "metric": METRIC[t], "role": ROLES[t]} for t in tasks],
                "budgets": ["tiny_budget.yaml", "smoke@1"], "seeds": [0, 1, 2], "lr_sweep": {"factors": list(factors)},
                "tasks_dir": "tasks", "tolerance": {"abs": 0.01, "rel": 0.0}}
    if claims is not None:
        plain = json.loads(json.dumps(claims))            # no shared objects: YAML would write aliases
        (folder / "claims.yaml").write_text(yaml.safe_dump({"claims": plain}, sort_keys=False))
        protocol["claims"] = "claims.yaml"
    protocol.update(over)
    path = folder / "protocol.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(protocol)), sort_keys=False))
    return path


def _run(seed: int) -> RunInfo:
    return RunInfo(config_sha256="0" * 64, task_sha256="1" * 64, budget_sha256="2" * 64, steps=4, params=100,
                   state_size=10, state_size_length=64, tokens_per_s=1000.0 + seed, wall_time_s=1.0, device="cpu",
                   threads=1, hardware="test cpu", torch="2", nlsearch="0.1.0", git_commit="abc", python="3",
                   run_dir="/nowhere")


def task_result(task: str, values: Sequence[Optional[float]], higher_is_better: bool = True, kind: str = "recall",
                metric: str = "accuracy", per_length: Optional[Dict[int, Sequence[float]]] = None,
                extra: Optional[Dict[str, Sequence[float]]] = None) -> TaskResult:
    seeds = []
    for i, value in enumerate(values):
        metrics = {metric: value}
        for length, vals in (per_length or {}).items():
            metrics[f"{metric}@{length}"] = vals[i]
        for name, vals in (extra or {}).items():
            metrics[name] = vals[i]
        seeds.append(SeedResult(seed=i, status="completed", source="measured", lr_factor=1.0, metrics=metrics,
                                run=_run(i)))
    directions = {name: (higher_is_better if name.split("@")[0] == metric else True) for name in seeds[0].metrics}
    return TaskResult(task=task, kind=kind, metric=metric, higher_is_better=higher_is_better, directions=directions,
                      lr_factor=1.0, sweep={}, seeds=tuple(seeds))


def make_entry(name: str, tasks: Dict[str, TaskResult], protocol: str = "test@1", budget: str = "tiny@1",
               state_size: int = 1000, depth: int = 3, protocol_sha256: str = "p" * 64,
               kind: str = "submission") -> Entry:
    """A synthetic entry (no training), its config hash derived from ``name``."""
    sha = hashlib.sha256(name.encode()).hexdigest()
    return Entry(id=entry_id(protocol, budget, sha, name), name=name, author="tester", kind=kind,
                 created="2025-01-01T00:00:00+00:00", protocol=protocol, protocol_sha256=protocol_sha256,
                 budget=budget, budget_sha256="b" * 64, config={"name": name}, config_sha256=sha, source_file=None,
                 source_sha256=None, plugins={}, params=1000 + len(name), params_non_embedding=500,
                 state_size=state_size, state_size_length=64, nesting_depth=depth, levels=("weights",), tasks=tasks)
