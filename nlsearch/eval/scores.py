"""Scores of model outputs on a task batch, by the metric names task specs declare, and the groups
(bAbI kind, needle depth, drift window) a score is also broken down by.

A metric row is named ``metric``, ``metric@length`` or ``metric@length[group]`` (see ``MetricRow``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from nlsearch.tasks.batch import TaskBatch
from nlsearch.tasks.metrics import accuracy_by, masked_accuracy, sequence_accuracy

BPB_GENERATORS = ("lm_bytes", "continual_text")
GEM = re.compile(r"^(acc|bwt|fwt)(_[a-z0-9_]+)?$")


@dataclass(frozen=True)
class Outputs:
    """A batch (N, T) and what the model made of it: argmax ``pred`` (N, T), ``nll`` (N, T) float64."""

    batch: TaskBatch
    pred: Tensor
    nll: Tensor


@dataclass(frozen=True)
class MetricRow:
    """One number: ``metric`` (a spec metric name, or a phase score such as ``accuracy``) at eval
    ``length`` (None: the headline over lengths), within ``group`` (``kind=one_fact``,
    ``phase=2``, ``after=1,phase=2``; None: all)."""

    metric: str
    value: float
    higher_is_better: bool
    length: Optional[int] = None
    group: Optional[str] = None

    @property
    def name(self) -> str:
        at = "" if self.length is None else f"@{self.length}"
        return f"{self.metric}{at}" + ("" if self.group is None else f"[{self.group}]")


def bits_per_byte(o: Outputs) -> float:
    """Mean NLL at scored positions in bits (bits per token for a non-byte vocabulary)."""
    return float(o.nll[o.batch.mask].mean() / math.log(2))


def accuracy(o: Outputs) -> float:
    return masked_accuracy(o.pred, o.batch)


def exact_match(o: Outputs) -> float:
    return float(sequence_accuracy(o.pred, o.batch).mean())


def last_window_accuracy(o: Outputs) -> float:
    if "window" not in o.batch.meta:
        raise ValueError("last_window_accuracy needs meta['window'] (the drift_recall generator)")
    window = o.batch.meta["window"]
    return float(accuracy_by(o.pred, o.batch, window, int(window.max()) + 1)[-1])


SCORES: Dict[str, Callable[[Outputs], float]] = {
    "bits_per_byte": bits_per_byte,
    "accuracy": accuracy,
    "exact_match": exact_match,
    "last_window_accuracy": last_window_accuracy,
}


def phase_score(generator: str) -> str:
    """Returns the per-phase score of a continual task: bits per byte for text, else accuracy."""
    return "bits_per_byte" if generator in BPB_GENERATORS else "accuracy"


def check_metrics(task) -> None:
    """Raises ValueError naming the task and metric when the evaluator cannot compute a spec metric."""
    multi = len(task.phase_names()) > 1
    for m in task.spec.metrics:
        ok = bool(GEM.match(m.name)) if multi else m.name in SCORES
        if not ok:
            known = "acc, bwt, fwt (optionally with a suffix such as _bpb)" if multi else ", ".join(SCORES)
            raise ValueError(f"task {task.ref}: metric {m.name!r} cannot be computed for a "
                             f"{'multi' if multi else 'single'}-phase task; known: {known}")


def groups(task, batch: TaskBatch) -> Dict[str, Tuple[Tensor, List[str]]]:
    """Returns the breakdowns of a batch: name -> (group ids (N,) or (N, T), −1 = none; labels)."""
    name, p, n = task.spec.generator.name, task.params, batch.shape[0]
    if name == "babi":
        return {"kind": (batch.meta["kind"], list(p.kinds))}
    if name == "needle" and p.depths is not None:
        return {"depth": (torch.arange(n) % len(p.depths), [f"{d:g}" for d in p.depths])}
    if name == "drift_recall":
        return {"window": (batch.meta["window"], [str(i) for i in range(p.n_windows)])}
    return {}


def _grouped(metric: str, o: Outputs, ids: Tensor, n: int) -> Optional[Tensor]:
    """Returns (n,) float64 per-group values of ``metric`` (NaN for empty groups), or None when the
    metric has no per-group form for these ids."""
    if metric == "accuracy":
        return accuracy_by(o.pred, o.batch, ids, n)
    if metric == "exact_match" and ids.dim() == 1:
        right = sequence_accuracy(o.pred, o.batch)
        total = torch.zeros(n, dtype=torch.float64).index_add_(0, ids, torch.ones_like(right))
        return torch.zeros(n, dtype=torch.float64).index_add_(0, ids, right) / total
    return None


def score_rows(task, o: Outputs, length: int, direction: Dict[str, bool]) -> List[MetricRow]:
    """Returns every spec metric of a single-phase task at ``length``, then its breakdowns."""
    rows = [MetricRow(m, SCORES[m](o), direction[m], length) for m in direction]
    for group, (ids, labels) in groups(task, o.batch).items():
        for m in direction:
            values = _grouped(m, o, ids, len(labels))
            if values is None:
                continue
            rows += [MetricRow(m, float(v), direction[m], length, f"{group}={label}")
                     for v, label in zip(values.tolist(), labels) if not math.isnan(v)]
    return rows
