"""An in-context stream whose bindings drift: continual learning inside one sequence.

The sequence is T/2 pairs ``k v`` over ``n_keys`` keys (lower half of the vocabulary, token 0
excluded; values from the upper half). The first ``n_keys`` pairs bind every key once. Each later pair
is, with probability ``drift``, a re-binding (the key gets a value different from its current one)
and otherwise a query (the key with its current value). The target at a query's key is the current
value; re-bindings are unpredictable and not scored. Each scored position belongs to the time window
``⌊t · n_windows / T⌋`` (``meta["window"]``, −1 elsewhere), so accuracy can be read per window.
"""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from nlsearch.tasks.batch import IGNORE, TaskBatch, TaskContext
from nlsearch.tasks.recall import BIND_KEY, BIND_VALUE, FILLER, QUERY, key_pool, value_pool


class DriftParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: PositiveInt = 256
    n_keys: PositiveInt = 16
    drift: float = Field(0.1, ge=0.0, lt=1.0)
    n_windows: PositiveInt = 4

    @model_validator(mode="after")
    def _fits_vocab(self) -> "DriftParams":
        if self.n_keys > self.vocab_size // 2 - 1 or self.vocab_size - self.vocab_size // 2 < 2:
            raise ValueError(f"n_keys={self.n_keys} keys and 2+ values do not fit in vocab_size={self.vocab_size}")
        return self


def drift_min_length(p: DriftParams) -> int:
    """Returns the shortest T: the initial bindings plus one more pair."""
    return 2 * p.n_keys + 2


def sample_drift(p: DriftParams, n: int, length: int, split: str, phase: int, gen: torch.Generator,
                 ctx: TaskContext) -> TaskBatch:
    """Registry entry: n streams (N, T); meta ``kind`` (N, T) (re-bindings are BIND_KEY/BIND_VALUE,
    queries QUERY/BIND_VALUE) and ``window`` (N, T) int64."""
    keys, values = key_pool(p.vocab_size), value_pool(p.vocab_size)
    m, rows = values.numel(), torch.arange(n)
    row_keys = keys[torch.rand(n, keys.numel(), generator=gen).argsort(dim=1)[:, : p.n_keys]]   # (n, K)
    current = torch.randint(0, m, (n, p.n_keys), generator=gen)
    first = torch.rand(n, p.n_keys, generator=gen).argsort(dim=1)
    inputs = torch.zeros(n, length, dtype=torch.int64)
    targets = torch.full((n, length), IGNORE, dtype=torch.int64)
    kind = torch.full((n, length), FILLER, dtype=torch.int64)
    for e in range(length // 2):
        if e < p.n_keys:
            slot, write = first[:, e], torch.ones(n, dtype=torch.bool)
        else:
            slot = torch.randint(0, p.n_keys, (n,), generator=gen)
            write = torch.rand(n, generator=gen) < p.drift
            moved = (current[rows, slot] + torch.randint(1, m, (n,), generator=gen)) % m
            current[rows, slot] = torch.where(write, moved, current[rows, slot])
        value = values[current[rows, slot]]
        inputs[:, 2 * e], inputs[:, 2 * e + 1] = row_keys[rows, slot], value
        targets[:, 2 * e] = torch.where(write, IGNORE, value)
        kind[:, 2 * e], kind[:, 2 * e + 1] = torch.where(write, BIND_KEY, QUERY), BIND_VALUE
    mask = targets != IGNORE
    window = torch.arange(length) * p.n_windows // length
    meta = {"kind": kind, "window": torch.where(mask, window.expand(n, -1), -1)}
    return TaskBatch(inputs, targets, mask, meta)
