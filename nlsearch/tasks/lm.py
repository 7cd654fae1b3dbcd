"""Byte-level language modeling: bytes 0..255 are the tokens, every position is scored.

``train`` batches are windows at uniform random offsets of the train stream, ``eval`` batches of the
validation stream; ``tile_windows`` covers a stream with non-overlapping windows for a full evaluation.
"""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from nlsearch.tasks.batch import TaskBatch, TaskContext
from nlsearch.tasks.corpus import CorpusSpec, load_corpus

VOCAB = 256


class LMParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: CorpusSpec = CorpusSpec()


def _windows(stream: Tensor, starts: Tensor, length: int) -> TaskBatch:
    idx = starts[:, None] + torch.arange(length + 1)                   # (N, T + 1)
    seq = stream[idx].long()
    return TaskBatch(seq[:, :-1].contiguous(), seq[:, 1:].contiguous(), torch.ones(idx.shape[0], length,
                                                                                      dtype=torch.bool))


def _check_room(stream: Tensor, length: int, what: str) -> None:
    if stream.numel() < length + 1:
        raise ValueError(f"lm: length {length} needs {length + 1} bytes, the {what} has {stream.numel()}")


def random_windows(stream: Tensor, n: int, length: int, gen: torch.Generator, what: str = "stream") -> TaskBatch:
    """Returns n windows of ``stream`` (n_bytes,) at uniform random offsets: a batch (N, T), all scored."""
    _check_room(stream, length, what)
    starts = torch.randint(0, stream.numel() - length, (n,), generator=gen)
    return _windows(stream, starts, length)


def tile_windows(stream: Tensor, length: int) -> TaskBatch:
    """Returns the non-overlapping windows at offsets 0, T, 2T, ... that fit: (⌊(n_bytes − 1)/T⌋, T)."""
    _check_room(stream, length, "stream")
    starts = torch.arange(0, (stream.numel() - 1) // length) * length
    return _windows(stream, starts, length)


def sample_lm(p: LMParams, n: int, length: int, split: str, phase: int, gen: torch.Generator,
              ctx: TaskContext) -> TaskBatch:
    """Registry entry: n random windows (N, T) of the corpus's train (``train``) or validation
    (``eval``) stream."""
    corpus = load_corpus(p.corpus, ctx.base_dir, ctx.cache_dir)
    name = "train split" if split == "train" else "validation split"
    return random_windows(corpus.stream(split), n, length, gen, name)
