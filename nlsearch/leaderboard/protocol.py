"""The leaderboard protocol: which tasks (at which versions), which budget tracks, which seeds, how
metrics aggregate and how ranks are computed. ``leaderboard/PROTOCOL.md`` explains it in prose;
``leaderboard/protocol.yaml`` is the machine-readable twin loaded here.

A protocol is identified by ``name@version`` plus the sha256 of its canonical JSON: an entry keeps the
reference and hash it was scored under, and a protocol file whose content changed while its version
did not is refused when an entry is added (a change must be a new version).

Paths in a protocol file (``tasks_dir``, a budget given as a YAML file, ``claims``) are relative to
the protocol file, so a test can carry its own small protocol (tiny tasks, a budget of a few steps).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple, Union

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, PrivateAttr, \
    model_validator

from nlsearch.budgets import Budget, load_budget
from nlsearch.config import Seed, Strict, added, canonical_json, is_file_ref, load_config

DEFAULT_PROTOCOL = Path(__file__).resolve().parents[2] / "leaderboard" / "protocol.yaml"
REF = re.compile(r"^[a-z][a-z0-9_]*@[1-9][0-9]*$")
ROLE = r"^[a-z][a-z0-9_]*$"


class ProtocolError(ValueError):
    """A protocol file that is malformed, or an input that does not match the protocol it names."""


class ProtocolTask(Strict):
    task: str                                   # name@version of a frozen task spec
    metric: str                                 # the spec metric this task is ranked by
    role: Optional[str] = Field(None, pattern=ROLE)   # what the reproduction's claims call this task
    # the budget names (``cpu``, ``gpu``) on which the task is ranked; empty: every track
    tracks: Tuple[str, ...] = added((), "the budget names on which the task is ranked (empty: every track)")

    @model_validator(mode="after")
    def _versioned(self) -> "ProtocolTask":
        if not REF.match(self.task):
            raise ValueError(f"task {self.task!r} must be name@version (a frozen spec)")
        return self


class Tolerance(Strict):
    """A claimed number ``c`` matches a measured ``m`` when ``|c - m| <= abs + rel * |m|``."""

    abs: NonNegativeFloat = 0.01
    rel: NonNegativeFloat = 0.01

    def allows(self, claimed: float, measured: float) -> bool:
        return abs(claimed - measured) <= self.abs + self.rel * abs(measured)


class LRSweep(Strict):
    """Every model gets the same sweep: its configured outer lr times each factor, trained on the
    protocol's first seed; per task the factor with the best ranked metric is used for every seed."""

    factors: Tuple[PositiveFloat, ...] = Field((1.0,), min_length=1)


class Protocol(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    version: PositiveInt
    description: str = ""
    tasks: Tuple[ProtocolTask, ...] = Field(min_length=1)
    budgets: Tuple[str, ...] = Field(min_length=1)      # the allowed tracks; the first is the default
    seeds: Tuple[Seed, ...] = Field(min_length=3)
    verify_seeds: PositiveInt = 1                       # seeds re-run to check a supplied result file
    tolerance: Tolerance = Tolerance()
    lr_sweep: LRSweep = LRSweep()
    max_params: Optional[PositiveInt] = None
    aggregate: Literal["mean_std"] = "mean_std"         # mean and sample std (ddof 1) over seeds
    ranking: Literal["mean_rank"] = "mean_rank"         # overall rank: mean of the per-task ranks
    tasks_dir: Optional[str] = None                     # default: the repository's tasks/
    claims: Optional[str] = None                        # the published claims ``reproduce`` checks
    # tasks at a published claim's own setting: trained only for the baselines a claim names, on the
    # tracks where the claim is testable; never ranked, never asked of a submission
    claim_tasks: Tuple[ProtocolTask, ...] = added((), "tasks scored only for the claims that read them")
    _source: Path = PrivateAttr(default=DEFAULT_PROTOCOL)

    @model_validator(mode="after")
    def _consistent(self) -> "Protocol":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {list(self.seeds)}")
        if self.verify_seeds > len(self.seeds):
            raise ValueError(f"verify_seeds {self.verify_seeds} exceeds the {len(self.seeds)} seeds")
        names = [t.task.split("@")[0] for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"a task appears twice: {names}")
        roles = [t.role for t in self.tasks + self.claim_tasks if t.role]
        if len(set(roles)) != len(roles):
            raise ValueError(f"a role is given to two tasks: {roles}")
        unnamed = [t.task for t in self.claim_tasks if not t.role]
        if unnamed:
            raise ValueError(f"claim_tasks {unnamed} need a role (claims read tasks by role)")
        clash = sorted({t.task for t in self.tasks} & {t.task for t in self.claim_tasks})
        if clash:
            raise ValueError(f"{clash} are both ranked tasks and claim_tasks")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def source(self) -> Path:
        return self._source

    def sha256(self) -> str:
        return hashlib.sha256(canonical_json(self).encode()).hexdigest()

    def task_refs(self, budget: Union[Budget, str, None] = None) -> Tuple[str, ...]:
        """The ranked tasks' refs: every track's (``budget`` None), or those ranked on ``budget``."""
        return tuple(t.task for t in (self.tasks if budget is None else self.ranked(budget)))

    def ranked(self, budget: Union[Budget, str, None] = None) -> Tuple[ProtocolTask, ...]:
        """The tasks ranked on a track (a Budget, a track name or ref; None: the default track): those
        without ``tracks`` and those that list the track's budget name."""
        name = (budget if isinstance(budget, Budget) else self.load_budget(budget)).name
        return tuple(t for t in self.tasks if not t.tracks or name in t.tracks)

    def by_role(self) -> Dict[str, ProtocolTask]:
        """Ranked tasks and claim tasks by role."""
        return {t.role: t for t in self.tasks + self.claim_tasks if t.role}

    def resolve_tasks_dir(self) -> Optional[Path]:
        return None if self.tasks_dir is None else (self._source.parent / self.tasks_dir).resolve()

    def claims_path(self) -> Optional[Path]:
        return None if self.claims is None else (self._source.parent / self.claims).resolve()

    def _budget_of(self, track: str) -> Budget:
        if is_file_ref(track):
            return load_budget(self._source.parent / track)
        return load_budget(track)

    def load_budget(self, budget: Optional[str] = None) -> Budget:
        """The Budget of the track named by ``budget`` (``cpu``, ``cpu@1``, a listed file or its
        ``name@version``; None: the default track, the first listed); raises ProtocolError when the
        protocol does not allow it."""
        if budget is None:
            return self._budget_of(self.budgets[0])
        for allowed in self.budgets:
            loaded = self._budget_of(allowed)
            if budget in (allowed, loaded.ref, loaded.name):
                return loaded
        raise ProtocolError(f"protocol {self.ref} ({self.source}): budget {budget!r} is not one of its tracks "
                            f"{list(self.budgets)}")


def load_protocol(path: Union[str, Path, None] = None) -> Protocol:
    """Returns the protocol in ``path`` (default ``leaderboard/protocol.yaml``), read with safe YAML;
    raises ConfigError naming the file and key, ProtocolError for a bad track or task directory."""
    path = Path(path) if path is not None else DEFAULT_PROTOCOL
    protocol = load_config(Protocol, path)
    protocol._source = path.resolve()
    for track in protocol.budgets:
        try:
            protocol._budget_of(track)
        except (ValueError, FileNotFoundError) as err:
            raise ProtocolError(f"protocol {path}: budgets: {track!r}: {err}") from None
    names = {protocol._budget_of(track).name for track in protocol.budgets}
    for i, rule in enumerate(protocol.tasks):
        unknown = sorted(set(rule.tracks) - names)
        if unknown:
            raise ProtocolError(f"protocol {path}: tasks[{i}] ({rule.task}): tracks {unknown} are not budget names "
                                f"of its tracks {sorted(names)}")
    if not all(protocol.ranked(track) for track in protocol.budgets):
        empty = [track for track in protocol.budgets if not protocol.ranked(track)]
        raise ProtocolError(f"protocol {path}: no task is ranked on track(s) {empty}")
    folder = protocol.resolve_tasks_dir()
    if folder is not None and not folder.is_dir():
        raise ProtocolError(f"protocol {path}: tasks_dir {protocol.tasks_dir!r} is not a folder ({folder})")
    return protocol
