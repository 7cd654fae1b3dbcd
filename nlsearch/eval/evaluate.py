"""``evaluate(model, task, budget, seed)``: a model's metrics on a task's eval split, by task kind.

- lm: bits per byte (mean NLL at scored positions / ln 2) per eval length;
- recall: accuracy at the answer positions per eval length;
- longctx: accuracy / exact match per eval length (train short, test long), broken down by bAbI kind
  or needle depth; long sequences are read in ``budget.eval_piece``-token pieces with state carried;
- a single-phase continual stream (``drift_recall``): accuracy per length and per time window;
- a multi-phase continual task: each phase's score (accuracy, or bits per byte for text) at the first
  eval length, and ACC, their mean. The GEM matrix R, BWT and FWT need the training run:
  ``continual_rows`` turns R and the untrained model's scores into rows.

The headline of a metric (row without length) is its mean over the eval lengths. The eval set is
drawn from the ``eval`` split with ``seed`` (``budget.eval_seed`` by default, the same for every run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from nlsearch.budgets import Budget, load_budget, run_lengths, task_kind
from nlsearch.eval.forward import predict
from nlsearch.eval.scores import GEM, SCORES, MetricRow, Outputs, check_metrics, phase_score, score_rows
from nlsearch.tasks.metrics import gem_acc, gem_bwt, gem_fwt


@dataclass(frozen=True)
class EvalResult:
    rows: Tuple[MetricRow, ...]

    def metrics(self) -> Dict[str, float]:
        """Every row by name: ``accuracy``, ``accuracy@512``, ``exact_match@1024[kind=one_fact]``, ..."""
        return {r.name: r.value for r in self.rows}

    def higher_is_better(self) -> Dict[str, bool]:
        return {r.name: r.higher_is_better for r in self.rows}

    def headline(self) -> Dict[str, float]:
        """The spec's metrics: rows without a length or a group."""
        return {r.name: r.value for r in self.rows if r.length is None and r.group is None}


def outputs(model: nn.Module, task, budget: Budget, seed: int, length: int, phase: int,
            device: torch.device) -> Outputs:
    """Draws the eval batch (eval_size, length) of ``phase`` and runs the model over it."""
    batch = task.batch(budget.for_kind(task_kind(task)).eval_size, length, seed, "eval", phase)
    pred, nll = predict(model, batch.inputs, batch.targets, device, budget.eval_batch, budget.eval_piece)
    return Outputs(batch, pred, nll)


def phase_scores(model: nn.Module, task, budget: Budget, seed: int, length: int,
                 phases: Optional[Sequence[int]] = None, device: Optional[torch.device] = None) -> List[float]:
    """Returns the score of each phase in ``phases`` (default all): one row of the GEM matrix R."""
    device = device or next(model.parameters()).device
    phases = range(len(task.phase_names())) if phases is None else phases
    score = SCORES[phase_score(task.spec.generator.name)]
    return [score(outputs(model, task, budget, seed, length, j, device)) for j in phases]


def _single_phase(model: nn.Module, task, budget: Budget, seed: int, lengths: Sequence[int],
                  device: torch.device) -> List[MetricRow]:
    direction = {m.name: m.higher_is_better for m in task.spec.metrics}
    rows: List[MetricRow] = []
    for length in lengths:
        rows += score_rows(task, outputs(model, task, budget, seed, length, 0, device), length, direction)
    headline = [MetricRow(m, sum(r.value for r in rows if r.metric == m and r.group is None) / len(lengths), up)
                for m, up in direction.items()]
    return headline + rows


def _multi_phase(model: nn.Module, task, budget: Budget, seed: int, length: int, phases: Sequence[int],
                 device: torch.device) -> List[MetricRow]:
    name = phase_score(task.spec.generator.name)
    up = name != "bits_per_byte"
    scores = phase_scores(model, task, budget, seed, length, phases, device)
    rows = [MetricRow(name, s, up, length, f"phase={j}") for j, s in zip(phases, scores)]
    if len(phases) == len(task.phase_names()):
        rows = [MetricRow(m.name, sum(scores) / len(scores), m.higher_is_better)
                for m in task.spec.metrics if GEM.match(m.name).group(1) == "acc"] + rows
    return rows


def evaluate(model: nn.Module, task, budget: Union[str, Budget], seed: Optional[int] = None, *,
             lengths: Optional[Sequence[int]] = None, phases: Optional[Sequence[int]] = None,
             device: Optional[torch.device] = None) -> EvalResult:
    """Returns the metrics of ``model`` on ``task`` under ``budget`` (eval lengths, eval set size,
    pieces); ``seed`` picks the eval set (default ``budget.eval_seed``); ``phases`` limits a
    multi-phase task to some phases (ACC only when all are evaluated)."""
    budget = load_budget(budget)
    check_metrics(task)
    seed = budget.eval_seed if seed is None else seed
    device = device or next(model.parameters()).device
    lengths = tuple(lengths) if lengths else run_lengths(budget, task)[1]
    n_phases = len(task.phase_names())
    if n_phases > 1:
        chosen = tuple(range(n_phases)) if phases is None else tuple(phases)
        return EvalResult(tuple(_multi_phase(model, task, budget, seed, lengths[0], chosen, device)))
    return EvalResult(tuple(_single_phase(model, task, budget, seed, lengths, device)))


def continual_rows(task, r: Sequence[Sequence[float]], baseline: Sequence[float], length: int) -> List[MetricRow]:
    """Returns the GEM metrics of the spec (ACC, BWT, FWT over R (T, T) and the untrained model's
    scores b (T,)) and every entry of R and b as rows (groups ``after=i,phase=j``, ``after=init,...``)."""
    name = phase_score(task.spec.generator.name)
    up = name != "bits_per_byte"
    gem = {"acc": lambda: gem_acc(r), "bwt": lambda: gem_bwt(r), "fwt": lambda: gem_fwt(r, baseline)}
    rows = [MetricRow(m.name, gem[GEM.match(m.name).group(1)](), m.higher_is_better) for m in task.spec.metrics]
    rows += [MetricRow(name, v, up, length, f"after={i},phase={j}")
             for i, row in enumerate(r) for j, v in enumerate(row)]
    rows += [MetricRow(name, v, up, length, f"after=init,phase={j}") for j, v in enumerate(baseline)]
    return rows
