"""Result files a submitter supplies, and how the leaderboard checks them.

A result file (YAML or JSON, read with safe parsing) claims the numbers of a config under a protocol
and budget track::

    protocol: standard@4
    budget: cpu@3
    config_sha256: 3f1c...            # nlsearch's hash of the submitted config (``nlsearch describe``)
    tasks:
      recall_small@1:
        lr_factor: 1.0                # one of the protocol's lr_sweep factors
        seeds:
          0: {accuracy: 0.93, accuracy@128: 0.95, accuracy@256: 0.91}
          1: {...}

It must cover every protocol task and seed with the ranked metric. Claims are never taken as they
are: ``protocol.verify_seeds`` seeds, chosen by the leaderboard at random (the submitter cannot know
which), are re-run; every claimed metric of those seeds must match the measured value within
``protocol.tolerance``, else the entry is rejected. Seeds that were re-run keep the measured numbers,
the others keep the claimed ones, marked ``source: claimed``.
"""
from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pydantic import Field, NonNegativeInt, PositiveFloat

from nlsearch.config import Strict, parse_config, read_yaml_mapping
from nlsearch.leaderboard.entry import SeedResult, TaskResult, Verification
from nlsearch.leaderboard.protocol import Protocol, ProtocolError
from nlsearch.leaderboard.store import LeaderboardError


class ClaimedTask(Strict):
    lr_factor: PositiveFloat = 1.0
    seeds: Dict[NonNegativeInt, Dict[str, Optional[float]]] = Field(min_length=1)


class ResultsFile(Strict):
    protocol: str
    budget: str
    config_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tasks: Dict[str, ClaimedTask]


class VerificationError(LeaderboardError):
    """Re-run numbers differ from the claimed ones by more than the protocol's tolerance."""


def load_results_file(path: Path, protocol: Protocol, budget_ref: str, config_sha256: str,
                      config_file: str) -> Tuple[ResultsFile, str]:
    """Returns the claims in ``path`` and the sha256 of its bytes; raises ProtocolError / LeaderboardError
    naming the file, key and value that do not fit the protocol or the config."""
    path = Path(path)
    claims = parse_config(ResultsFile, read_yaml_mapping(path), str(path))
    if claims.protocol != protocol.ref:
        raise ProtocolError(f"{path}: protocol {claims.protocol!r} does not match the leaderboard's {protocol.ref} "
                            f"({protocol.source})")
    if claims.budget != budget_ref:
        raise ProtocolError(f"{path}: budget {claims.budget!r} does not match the track {budget_ref}")
    if claims.config_sha256 != config_sha256:
        raise LeaderboardError(f"{path}: config_sha256 {claims.config_sha256[:12]}... does not match the hash of "
                               f"{config_file} ({config_sha256[:12]}...): these results are for another config")
    for rule in protocol.ranked(budget_ref):
        task = claims.tasks.get(rule.task)
        if task is None:
            raise LeaderboardError(f"{path}: tasks: no results for protocol task {rule.task}")
        if task.lr_factor not in protocol.lr_sweep.factors:
            raise LeaderboardError(f"{path}: tasks.{rule.task}.lr_factor {task.lr_factor} is not one of the "
                                   f"protocol's lr_sweep factors {list(protocol.lr_sweep.factors)}")
        for seed in protocol.seeds:
            metrics = task.seeds.get(seed)
            if metrics is None or metrics.get(rule.metric) is None:
                raise LeaderboardError(f"{path}: tasks.{rule.task}.seeds.{seed}: no {rule.metric!r} claimed")
    ranked = protocol.task_refs(budget_ref)
    extra = sorted(set(claims.tasks) - set(ranked))
    if extra:
        raise LeaderboardError(f"{path}: tasks: {extra} are not tasks the protocol ranks on {budget_ref} "
                               f"{list(ranked)}")
    return claims, hashlib.sha256(path.read_bytes()).hexdigest()


def pick_seeds(protocol: Protocol) -> List[int]:
    """``verify_seeds`` of the protocol's seeds, drawn from the operating system's randomness."""
    return sorted(random.SystemRandom().sample(list(protocol.seeds), protocol.verify_seeds))


def deviations(claims: ResultsFile, measured: Dict[str, TaskResult], protocol: Protocol) -> List[Tuple]:
    """(task, seed, metric, claimed, measured, ok) for every claimed metric of every re-run seed."""
    out = []
    for ref, result in measured.items():
        for seed in result.seeds:
            claimed = claims.tasks[ref].seeds[seed.seed]
            for metric, value in claimed.items():
                got = seed.metrics.get(metric)
                if value is None or got is None or not math.isfinite(got):
                    ok = value is None and (got is None or not math.isfinite(got))
                else:
                    ok = protocol.tolerance.allows(value, got)
                out.append((ref, seed.seed, metric, value, got, ok))
    return out


def check_claims(claims: ResultsFile, measured: Dict[str, TaskResult], protocol: Protocol, path: Path,
                 sha256: str, seeds: Sequence[int]) -> Verification:
    """Raises VerificationError listing the metrics outside tolerance; returns the verification record."""
    rows = deviations(claims, measured, protocol)
    bad = [r for r in rows if not r[5]]
    finite = [abs(c - m) for _, _, _, c, m, _ in rows if c is not None and m is not None and math.isfinite(m)]
    if bad:
        lines = [f"  {t} seed {s} {m}: claimed {c}, measured {g}" for t, s, m, c, g, _ in bad[:10]]
        raise VerificationError(f"{path}: claimed results do not reproduce within the protocol tolerance "
                                f"(abs {protocol.tolerance.abs}, rel {protocol.tolerance.rel}) on re-run seeds "
                                f"{list(seeds)}:\n" + "\n".join(lines))
    return Verification(results_file=path.name, results_sha256=sha256, seeds=tuple(seeds),
                        tolerance=protocol.tolerance.model_dump(), max_deviation=max(finite, default=0.0),
                        passed=True)


def merge_claims(claims: ResultsFile, measured: Dict[str, TaskResult], protocol: Protocol) -> Dict[str, TaskResult]:
    """Every protocol seed per task: the measured seeds as measured, the others as claimed."""
    merged = {}
    for ref, result in measured.items():
        by_seed = {s.seed: s for s in result.seeds}
        claimed = claims.tasks[ref]
        seeds = [by_seed.get(seed) or SeedResult(seed=seed, status="completed", source="claimed",
                                                 lr_factor=claimed.lr_factor, metrics=claimed.seeds[seed])
                 for seed in protocol.seeds]
        merged[ref] = result.model_copy(update={"seeds": tuple(seeds)})
    return merged


def results_from_entry(entry) -> Dict:
    """A result file's content claiming exactly what ``entry`` measured (to re-submit elsewhere)."""
    tasks = {ref: {"lr_factor": t.lr_factor, "seeds": {s.seed: dict(s.metrics) for s in t.seeds}}
             for ref, t in entry.tasks.items()}
    return {"protocol": entry.protocol, "budget": entry.budget, "config_sha256": entry.config_sha256, "tasks": tasks}
