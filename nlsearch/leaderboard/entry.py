"""A leaderboard entry: one model scored under one protocol version and budget track, with the
provenance of every run behind its numbers (docs/architecture.md, "Leaderboard").

An entry is a JSON file of its own (``leaderboard/entries/<protocol>/<budget>/<sha12>-<name>.json``),
written once and never edited: two branches that each add entries merge without conflicts. Numbers
are stored per seed; the mean and spread are derived (``TaskResult.aggregate``), never typed in.
"""
from __future__ import annotations

import math
import re
import statistics
from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict

FORMAT = 1


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunInfo(Record):
    """Provenance of one training run (a subset of its ``RunRecord``; the run directory has the rest)."""

    config_sha256: str                  # of the config trained (the task's vocabulary and lr factor applied)
    task_sha256: str
    budget_sha256: str
    steps: int
    params: int
    state_size: int
    state_size_length: int
    tokens_per_s: Optional[float]
    wall_time_s: float
    device: str
    threads: int
    hardware: str
    torch: str
    nlsearch: str
    git_commit: str
    python: str
    run_dir: str
    reused: bool = False                # a finished run found and checked, not trained by this call
    precision: str = "fp32"
    files: Dict[str, str] = {}          # sha256 of the run's metrics files (its record's digests)
    tokens_per_cpu_s: Optional[float] = None    # per CPU-second of the process (CPU runs; older runs: None)


class SeedResult(Record):
    seed: int
    status: str                                  # completed | failed: <reason>
    source: Literal["measured", "claimed"]
    lr_factor: float
    metrics: Dict[str, Optional[float]]          # headline and per-length metrics; None for NaN
    run: Optional[RunInfo] = None                # None for a claimed or failed seed


class TaskResult(Record):
    task: str                                    # name@version
    kind: str                                    # lm | recall | longctx | continual
    metric: str                                  # the ranked metric
    higher_is_better: bool
    directions: Dict[str, bool]                  # every metric name in ``seeds`` -> higher is better
    lr_factor: float                             # chosen by the sweep (or claimed, then verified)
    sweep: Dict[str, Optional[float]]            # lr factor -> ranked metric on the sweep seed
    seeds: Tuple[SeedResult, ...]

    def values(self, metric: Optional[str] = None) -> List[float]:
        """The finite values of ``metric`` (default: the ranked one) over completed seeds."""
        name = metric or self.metric
        out = []
        for s in self.seeds:
            value = s.metrics.get(name) if s.status == "completed" else None
            if value is not None and math.isfinite(value):
                out.append(float(value))
        return out

    def aggregate(self, metric: Optional[str] = None) -> Tuple[float, float, int]:
        """(mean, sample std, n) of ``metric`` over completed seeds; NaN where undefined."""
        values = self.values(metric)
        mean = statistics.fmean(values) if values else math.nan
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return mean, std, len(values)

    def per_length(self, metric: Optional[str] = None) -> Dict[int, float]:
        """Mean over seeds of ``metric@length`` for every eval length present."""
        base = metric or self.metric
        pattern = re.compile(rf"^{re.escape(base)}@(\d+)$")
        lengths = sorted({int(m.group(1)) for s in self.seeds for k in s.metrics if (m := pattern.match(k))})
        return {n: self.aggregate(f"{base}@{n}")[0] for n in lengths}


class Verification(Record):
    """How a supplied result file was checked: the seeds re-run and the largest deviation found."""

    results_file: str
    results_sha256: str
    seeds: Tuple[int, ...]
    tolerance: Dict[str, float]
    max_deviation: float
    passed: bool


class Entry(Record):
    format: int = FORMAT
    id: str                                      # <protocol>/<budget>/<sha12>-<name>
    name: str
    author: str
    kind: Literal["submission", "baseline"]
    created: str                                 # UTC, ISO 8601
    protocol: str                                # name@version
    protocol_sha256: str
    budget: str                                  # name@version of the track
    budget_sha256: str
    config: Dict[str, Any]                       # the submitted config, every field (an unset vocab_size left out)
    config_sha256: str
    source_file: Optional[str]                   # the submitted file's name (not its path)
    source_sha256: Optional[str]                 # sha256 of the submitted file's bytes
    plugins: Dict[str, str]                      # mixer kind -> "dist==version (entry point value)"
    params: int
    params_non_embedding: int
    state_size: int                              # numbers per sequence at state_size_length
    state_size_length: int
    nesting_depth: int
    levels: Tuple[str, ...]                      # the nesting profile, fastest first
    tasks: Dict[str, TaskResult]                 # by task ref, in protocol order
    verification: Optional[Verification] = None

    def key(self) -> Tuple[str, str, str]:
        """What makes two entries duplicates: the same model under the same protocol and track."""
        return self.config_sha256, self.protocol, self.budget

    def tokens_per_s(self) -> float:
        """Median training throughput over the measured runs (NaN when none was measured). Each run's
        is its wall-clock training tokens per second where it ran, so a run that shared its machine or
        was paused reads slower; the median leaves such runs out while they are under half (the mean of
        one baseline's 15 runs read 11% below their median). Runs also keep a CPU-time figure
        (``tokens_per_cpu_s``, immune to pauses), not used here: runs made before it have none, and one
        column must measure every entry alike."""
        speeds = [s.run.tokens_per_s for t in self.tasks.values() for s in t.seeds
                  if s.run is not None and s.run.tokens_per_s]
        return statistics.median(speeds) if speeds else math.nan


def slug(name: str) -> str:
    """A file-name-safe form of an entry name."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return text[:60] or "model"


def entry_id(protocol: str, budget: str, config_sha256: str, name: str) -> str:
    return f"{protocol}/{budget}/{config_sha256[:12]}-{slug(name)}"
