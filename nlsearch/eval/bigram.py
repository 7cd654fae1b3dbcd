"""The reference every byte-level LM result is read against: an add-one-smoothed byte bigram fitted on
the very train batches a run of the same plan draws, scored on the eval batches evaluation draws.
``nlsearch run-suite`` prints it as a row, ``nlsearch reproduce`` beside the LM table."""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import torch

from nlsearch.budgets import KindBudget
from nlsearch.tasks import Task
from nlsearch.tasks.batch import TaskBatch, derive_seed


def _pairs(batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
    """(previous token, next token) at the scored positions of ``batch``: inputs[t] predicts targets[t]."""
    mask = batch.mask.bool()
    return batch.inputs[mask].long(), batch.targets[mask].long()


def fit_bigram(batches: Iterable[TaskBatch], vocab_size: int = 256) -> torch.Tensor:
    """Returns log2 p(next | previous), a (V, V) float64 table of an add-one-smoothed bigram model
    counted on the scored positions of ``batches``: ``p(b | a) = (c(a, b) + 1) / (c(a) + V)``."""
    counts = torch.zeros(vocab_size * vocab_size, dtype=torch.float64)
    for batch in batches:
        prev, nxt = _pairs(batch)
        counts += torch.bincount(prev * vocab_size + nxt, minlength=vocab_size * vocab_size).double()
    counts = counts.view(vocab_size, vocab_size) + 1.0
    return torch.log2(counts / counts.sum(dim=1, keepdim=True))


def bigram_bits_per_byte(table: torch.Tensor, batch: TaskBatch) -> float:
    """Mean −log2 p(target | input) over the scored positions of ``batch`` under ``table`` (from
    ``fit_bigram``): bits per byte, the same quantity the models' ``bits_per_byte`` reports."""
    prev, nxt = _pairs(batch)
    return float(-table[prev, nxt].mean())


def bigram_score(task: Task, kb: KindBudget, seed: int, train_lengths: Sequence[int], eval_lengths: Sequence[int],
                 eval_seed: int) -> float:
    """Bits per byte of the bigram fitted on the train batches of ``seed`` (exactly those training
    draws: ``kb.steps`` batches of ``kb.batch_size``, lengths in turn) and scored on the eval batches;
    the mean over the eval lengths, like the models' headline."""
    train_batches = (task.batch(kb.batch_size, train_lengths[s % len(train_lengths)],
                                derive_seed("train", seed, s), "train", 0) for s in range(kb.steps))
    table = fit_bigram(train_batches, task.vocab_size)
    per_length = [bigram_bits_per_byte(table, task.batch(kb.eval_size, n, eval_seed, "eval", 0))
                  for n in eval_lengths]
    return sum(per_length) / len(per_length)
