"""Multi-query associative recall (MQAR, Zoology: Arora et al. 2023) and its overwrite variant.

Layout of one sequence of T tokens (Zoology's ``multiquery_ar``):

    k1 v1 k2 v2 ... kC vC | q . q . q . ... (filler)

The context lists C = ``n_pairs + n_rebinds`` key-value pairs. Keys come from the lower half of the
vocabulary (token 0 excluded), values from the upper half, all values distinct. Each of the
``n_pairs`` distinct keys is queried once in the query region; the query slots are at even offsets
and the gap (in slots) from the context end to a query is drawn, without replacement, with
probability ∝ a·i^(a−1), i = 1..S (``power_a`` = a). The target at a query is the key's value; only
queries are scored. Overwrite variant (``n_rebinds`` > 0): ``n_rebinds`` extra pairs re-bind keys
that are already in the context (a key may be re-bound several times), the pairs are shuffled, and
the answer is the key's LATEST binding.

Filler (``noise=True``, Zoology's ``random_non_queries``): uniform over the vocabulary minus this
sequence's keys and values (Zoology draws from the whole vocabulary; excluding the sequence's own
keys and values keeps every key occurrence a binding or a query). ``noise=False``: token 0.
"""
from __future__ import annotations

from typing import Tuple

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from torch import Tensor

from nlsearch.tasks.batch import IGNORE, TaskBatch

FILLER, BIND_KEY, BIND_VALUE, QUERY = 0, 1, 2, 3


class RecallParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: PositiveInt = 8192
    n_pairs: PositiveInt = 64
    n_rebinds: NonNegativeInt = 0
    power_a: PositiveFloat = 0.01
    noise: bool = True

    @model_validator(mode="after")
    def _fits_vocab(self) -> "RecallParams":
        keys, values = self.vocab_size // 2 - 1, self.vocab_size - self.vocab_size // 2
        if self.n_pairs > keys:
            raise ValueError(f"n_pairs={self.n_pairs} needs more keys than vocab_size={self.vocab_size} has ({keys})")
        if self.n_pairs + self.n_rebinds > values:
            raise ValueError(f"n_pairs + n_rebinds = {self.n_pairs + self.n_rebinds} distinct values do not fit "
                             f"in vocab_size={self.vocab_size} ({values} values)")
        return self


def key_pool(vocab_size: int) -> Tensor:
    """Returns the key tokens 1 .. V/2 − 1, shape (V/2 − 1,)."""
    return torch.arange(1, vocab_size // 2)


def value_pool(vocab_size: int) -> Tensor:
    """Returns the value tokens V/2 .. V − 1, shape (V − V/2,)."""
    return torch.arange(vocab_size // 2, vocab_size)


def recall_min_length(p: RecallParams) -> int:
    """Returns the shortest T that holds the context and one query slot per key."""
    return 2 * (p.n_pairs + p.n_rebinds) + 2 * p.n_pairs


def _choose(pool: Tensor, n: int, k: int, gen: torch.Generator) -> Tensor:
    """Returns (n, k) draws from ``pool`` without replacement within each row."""
    order = torch.rand(n, pool.numel(), generator=gen).argsort(dim=1)[:, :k]
    return pool[order]


def _context(n: int, p: RecallParams, keys: Tensor, values: Tensor, gen: torch.Generator
             ) -> Tuple[Tensor, Tensor]:
    """Returns the context (n, 2C) and each distinct key's latest value (n, n_pairs)."""
    extra = torch.randint(0, p.n_pairs, (n, p.n_rebinds), generator=gen)
    occ = torch.cat([torch.arange(p.n_pairs).expand(n, -1), extra], dim=1)         # (n, C) key index
    occ = occ.gather(1, torch.rand(occ.shape, generator=gen).argsort(dim=1))
    ctx = torch.stack([keys.gather(1, occ), values], dim=2).flatten(1)              # (n, 2C)
    order = torch.arange(occ.shape[1]).expand(n, -1)
    last = torch.full((n, p.n_pairs), -1).scatter_reduce(1, occ, order, reduce="amax")
    return ctx, values.gather(1, last)


def _query_slots(n: int, slots: int, k: int, power_a: float, gen: torch.Generator) -> Tensor:
    """Returns (n, k) distinct slot indices in [0, slots), P(i) ∝ a·(i+1)^(a−1)."""
    rank = torch.arange(1, slots + 1, dtype=torch.float64)
    prob = power_a * rank ** (power_a - 1)
    return torch.multinomial((prob / prob.sum()).expand(n, -1), k, replacement=False, generator=gen)


def _noise(inputs: Tensor, filler: Tensor, vocab_size: int, gen: torch.Generator) -> Tensor:
    """Returns ``inputs`` with filler positions drawn uniformly from tokens the row does not use."""
    used = torch.zeros(inputs.shape[0], vocab_size, dtype=torch.bool)
    used.scatter_(1, torch.where(filler, 0, inputs), True)
    used[:, 0] = False
    weights = (~used).double()
    draws = torch.multinomial(weights, inputs.shape[1], replacement=True, generator=gen)
    return torch.where(filler, draws, inputs)


def mqar(n: int, length: int, p: RecallParams, gen: torch.Generator,
         keys: Tensor | None = None, values: Tensor | None = None) -> TaskBatch:
    """Returns n MQAR sequences of ``length`` tokens (N, T), meta ``kind`` (N, T) int64 (FILLER,
    BIND_KEY, BIND_VALUE, QUERY). ``keys``/``values``: token pools (default: the vocabulary halves)."""
    if length < recall_min_length(p):
        raise ValueError(f"recall: length {length} is shorter than the task needs ({recall_min_length(p)})")
    keys = key_pool(p.vocab_size) if keys is None else keys
    values = value_pool(p.vocab_size) if values is None else values
    n_ctx = p.n_pairs + p.n_rebinds
    row_keys = _choose(keys, n, p.n_pairs, gen)                                    # (n, P)
    row_values = _choose(values, n, n_ctx, gen)                                    # (n, C)
    ctx, answers = _context(n, p, row_keys, row_values, gen)
    slots = _query_slots(n, (length - 2 * n_ctx) // 2, p.n_pairs, p.power_a, gen)  # (n, P)
    pos = 2 * n_ctx + 2 * slots
    inputs = torch.zeros(n, length, dtype=torch.int64)
    inputs[:, : 2 * n_ctx] = ctx
    inputs.scatter_(1, pos, row_keys)
    kind = torch.full((n, length), FILLER, dtype=torch.int64)
    kind[:, 0: 2 * n_ctx: 2], kind[:, 1: 2 * n_ctx: 2] = BIND_KEY, BIND_VALUE
    kind.scatter_(1, pos, QUERY)
    if p.noise:
        inputs = _noise(inputs, kind == FILLER, p.vocab_size, gen)
    targets = torch.full((n, length), IGNORE, dtype=torch.int64).scatter_(1, pos, answers)
    return TaskBatch(inputs, targets, kind == QUERY, {"kind": kind})


def sample_recall(p: RecallParams, n: int, length: int, split: str, phase: int, gen: torch.Generator,
                  ctx: object) -> TaskBatch:
    """Registry entry: n MQAR sequences (N, T); train and eval differ only in their seed stream."""
    return mqar(n, length, p, gen)
