"""Continual learning: a sequence of phases, each a new task, and the GEM metrics over them.

``continual_recall``: phase i has a fixed binding table key -> value that the model must hold in
its weights (the bindings are not in the sequence before the first query). ``mode="disjoint"``: each
phase binds its own keys (keys of different phases never overlap); ``mode="rebind"``: every phase binds
the same keys, each to a value different from the previous phase's (old answers become wrong). The
tables depend only on ``table_seed``. A sequence is T/2 pairs ``k v`` with keys drawn uniformly from
the phase's keys; the target at a key is its value. ``score="first"``: only a key's first occurrence
in the sequence is scored (answerable from weights only); ``"all"``: every key occurrence.

``continual_text``: phase i is byte-level language modeling on ``domains[i]``.
The GEM metrics over the phases are in ``nlsearch.tasks.metrics``.
"""
from __future__ import annotations

from typing import List, Literal, Tuple

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import Tensor

from nlsearch.tasks.batch import IGNORE, TaskBatch, TaskContext, torch_rng
from nlsearch.tasks.corpus import CorpusSpec, load_corpus
from nlsearch.tasks.lm import random_windows
from nlsearch.tasks.recall import BIND_VALUE, FILLER, QUERY, key_pool, value_pool


class ContinualRecallParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: PositiveInt = 256
    n_phases: PositiveInt = 4
    keys_per_phase: PositiveInt = 16
    mode: Literal["disjoint", "rebind"] = "disjoint"
    score: Literal["first", "all"] = "first"
    table_seed: int = 0

    @model_validator(mode="after")
    def _fits_vocab(self) -> "ContinualRecallParams":
        keys = self.keys_per_phase * (self.n_phases if self.mode == "disjoint" else 1)
        if keys > self.vocab_size // 2 - 1:
            raise ValueError(f"{keys} keys ({self.mode}) do not fit in vocab_size={self.vocab_size} "
                             f"({self.vocab_size // 2 - 1} keys)")
        return self


def binding_tables(p: ContinualRecallParams) -> Tuple[Tensor, Tensor]:
    """Returns (keys, values), each (n_phases, keys_per_phase) int64: phase i binds keys[i, k] to
    values[i, k]."""
    gen = torch_rng("continual_recall", p.table_seed)
    pool, values = key_pool(p.vocab_size), value_pool(p.vocab_size)
    perm = pool[torch.randperm(pool.numel(), generator=gen)]
    k = p.keys_per_phase
    keys = perm[: p.n_phases * k].view(p.n_phases, k) if p.mode == "disjoint" else perm[:k].expand(p.n_phases, k)
    idx = torch.randint(0, values.numel(), (p.n_phases, k), generator=gen)
    if p.mode == "rebind":
        for i in range(1, p.n_phases):
            shift = torch.randint(1, values.numel(), (k,), generator=gen)
            idx[i] = (idx[i - 1] + shift) % values.numel()
    return keys.contiguous(), values[idx]


def first_occurrence(keys: Tensor) -> Tensor:
    """Returns (N, E) bool: True where ``keys`` (N, E) holds a value not seen earlier in its row."""
    ordered, order = keys.sort(dim=1, stable=True)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return torch.zeros_like(first).scatter_(1, order, first)


def sample_continual_recall(p: ContinualRecallParams, n: int, length: int, split: str, phase: int,
                            gen: torch.Generator, ctx: TaskContext) -> TaskBatch:
    """Registry entry: n sequences (N, T) of phase ``phase``'s pairs; meta ``kind`` (N, T), ``phase`` (N,)."""
    keys, values = binding_tables(p)
    pairs = length // 2
    idx = torch.randint(0, p.keys_per_phase, (n, pairs), generator=gen)
    row_keys, row_values = keys[phase][idx], values[phase][idx]                       # (n, E)
    scored = first_occurrence(row_keys) if p.score == "first" else torch.ones_like(row_keys, dtype=torch.bool)
    inputs = torch.zeros(n, length, dtype=torch.int64)
    inputs[:, 0: 2 * pairs: 2], inputs[:, 1: 2 * pairs: 2] = row_keys, row_values
    targets = torch.full((n, length), IGNORE, dtype=torch.int64)
    targets[:, 0: 2 * pairs: 2] = torch.where(scored, row_values, IGNORE)
    kind = torch.full((n, length), FILLER, dtype=torch.int64)
    kind[:, 0: 2 * pairs: 2], kind[:, 1: 2 * pairs: 2] = QUERY, BIND_VALUE
    meta = {"kind": kind, "phase": torch.full((n,), phase, dtype=torch.int64)}
    return TaskBatch(inputs, targets, targets != IGNORE, meta)


class ContinualTextParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: Tuple[CorpusSpec, ...] = Field(min_length=2)


def domain_name(spec: CorpusSpec) -> str:
    """Returns a short readable name of a text domain."""
    return "+".join(spec.parts) if spec.source == "stdlib" else "+".join(spec.files)


def sample_continual_text(p: ContinualTextParams, n: int, length: int, split: str, phase: int,
                          gen: torch.Generator, ctx: TaskContext) -> TaskBatch:
    """Registry entry: n random windows (N, T) of domain ``phase``; meta ``phase`` (N,)."""
    corpus = load_corpus(p.domains[phase], ctx.base_dir, ctx.cache_dir)
    batch = random_windows(corpus.stream(split), n, length, gen, f"domain {domain_name(p.domains[phase])}")
    return TaskBatch(batch.inputs, batch.targets, batch.mask, {"phase": torch.full((n,), phase, dtype=torch.int64)})


def phase_names_recall(p: ContinualRecallParams) -> List[str]:
    return [f"{p.mode}-{i}" for i in range(p.n_phases)]


def phase_names_text(p: ContinualTextParams) -> List[str]:
    return [domain_name(d) for d in p.domains]
