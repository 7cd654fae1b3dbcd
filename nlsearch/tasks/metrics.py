"""Metric functions over task outputs: GEM continual-learning metrics and per-group accuracy.

GEM (Lopez-Paz & Ranzato 2017, Sec. 3): R[i, j] is the test score on task j after training on
phases 0..i, b_j the score on task j at random initialisation; T phases.
ACC = 1/T Σ_j R[T−1, j];  BWT = 1/(T−1) Σ_{j<T−1} (R[T−1, j] − R[j, j]);
FWT = 1/(T−1) Σ_{j≥1} (R[j−1, j] − b_j).
For a lower-is-better score (bits per byte) the same formulas apply and the signs read reversed.
"""
from __future__ import annotations

from typing import Dict, Sequence, Union

import torch
from torch import Tensor

from nlsearch.tasks.batch import TaskBatch

Matrix = Union[Sequence[Sequence[float]], Tensor]
Vector = Union[Sequence[float], Tensor]


def _matrix(r: Matrix) -> Tensor:
    m = torch.as_tensor(r, dtype=torch.float64)
    if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"R must be a square (T, T) matrix with T >= 1, got shape {tuple(m.shape)}")
    return m


def _need_two(m: Tensor, what: str) -> None:
    if m.shape[0] < 2:
        raise ValueError(f"{what} needs at least 2 phases, R is {tuple(m.shape)}")


def gem_acc(r: Matrix) -> float:
    """Returns ACC = mean_j R[T−1, j]: the final score averaged over all tasks."""
    return float(_matrix(r)[-1].mean())


def gem_bwt(r: Matrix) -> float:
    """Returns BWT = mean_{j<T−1} (R[T−1, j] − R[j, j]); negative means forgetting (for accuracies)."""
    m = _matrix(r)
    _need_two(m, "BWT")
    return float((m[-1, :-1] - m.diagonal()[:-1]).mean())


def gem_fwt(r: Matrix, baseline: Vector) -> float:
    """Returns FWT = mean_{j≥1} (R[j−1, j] − b_j): how much earlier phases help a task not yet trained."""
    m = _matrix(r)
    _need_two(m, "FWT")
    b = torch.as_tensor(baseline, dtype=torch.float64)
    if b.shape != (m.shape[0],):
        raise ValueError(f"baseline must have one score per task ({m.shape[0]}), got shape {tuple(b.shape)}")
    return float((m.diagonal(offset=1) - b[1:]).mean())


def gem_metrics(r: Matrix, baseline: Vector) -> Dict[str, float]:
    """Returns {"acc", "bwt", "fwt"} of the score matrix R (T, T) and baseline b (T,)."""
    return {"acc": gem_acc(r), "bwt": gem_bwt(r), "fwt": gem_fwt(r, baseline)}


def masked_accuracy(predictions: Tensor, batch: TaskBatch) -> float:
    """Returns the fraction of scored positions where ``predictions`` (N, T) equal the targets."""
    return float((predictions == batch.targets)[batch.mask].double().mean())


def sequence_accuracy(predictions: Tensor, batch: TaskBatch) -> Tensor:
    """Returns (N,) float64: 1 where every scored position of a sequence is right (exact match)."""
    wrong = (predictions != batch.targets) & batch.mask
    return (~wrong.any(dim=1)).double()


def accuracy_by(predictions: Tensor, batch: TaskBatch, group: Tensor, n_groups: int) -> Tensor:
    """Returns (n_groups,) float64 accuracy over the scored positions of each group; ``group`` is
    (N, T) per position (e.g. ``meta["window"]``, −1 = none) or (N,) per sequence. NaN for an empty group."""
    group = group[:, None].expand_as(batch.mask) if group.dim() == 1 else group
    keep = batch.mask & (group >= 0)
    right = (predictions == batch.targets)[keep].double()
    ids = group[keep]
    total = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, ids, torch.ones_like(right))
    hits = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, ids, right)
    return hits / total
