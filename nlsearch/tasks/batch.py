"""The container every task generator returns, and the seeding every generator shares.

Convention: ``inputs[:, t]`` is what the model reads at position t and ``targets[:, t]`` what it must
predict there; ``mask`` marks the scored positions and ``targets`` holds ``IGNORE`` (-100, the
``ignore_index`` of ``torch.nn.functional.cross_entropy``) everywhere else.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

IGNORE = -100
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class TaskBatch:
    """``inputs``, ``targets`` (N, T) int64; ``mask`` (N, T) bool; ``meta`` per sequence (N,) or per
    position (N, T) tensors (e.g. ``kind``, ``depth``, ``window``)."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    meta: Dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inputs.dim() != 2 or self.inputs.dtype != torch.int64:
            raise ValueError(f"inputs must be (N, T) int64, got {tuple(self.inputs.shape)} {self.inputs.dtype}")
        if self.targets.shape != self.inputs.shape or self.targets.dtype != torch.int64:
            raise ValueError("targets must be int64 with the shape of inputs")
        if self.mask.shape != self.inputs.shape or self.mask.dtype != torch.bool:
            raise ValueError("mask must be bool with the shape of inputs")
        if not torch.equal(self.mask, self.targets != IGNORE):
            raise ValueError("mask must mark exactly the positions whose target is not IGNORE")
        for name, value in self.meta.items():
            if value.shape[0] != self.inputs.shape[0]:
                raise ValueError(f"meta[{name!r}] has {value.shape[0]} rows, inputs have {self.inputs.shape[0]}")

    @property
    def shape(self) -> torch.Size:
        return self.inputs.shape


@dataclass(frozen=True)
class TaskContext:
    """Where a task finds relative data files (``base_dir``, the spec's folder) and caches data."""

    base_dir: Optional[Path] = None
    cache_dir: Optional[str] = None


def derive_seed(*parts: object) -> int:
    """Returns a 63-bit seed that depends only on ``repr`` of ``parts`` (stable across processes)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def torch_rng(*parts: object) -> torch.Generator:
    """Returns a CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def py_rng(gen: torch.Generator) -> random.Random:
    """Returns a ``random.Random`` seeded from one draw of ``gen`` (for string-level generators)."""
    return random.Random(int(torch.randint(0, 2 ** 62, (1,), generator=gen)))


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def from_sequences(seqs: Sequence[bytes], scored: Sequence[List[int]], meta: Dict[str, Tensor]) -> TaskBatch:
    """Byte sequences of equal length T + 1 -> TaskBatch with inputs ``seq[:-1]`` and next-byte targets.

    ``scored[i]`` lists the indices into ``seqs[i]`` of the bytes to be predicted (each >= 1); the
    prediction of byte ``s`` is made at input position ``s - 1``. Returns a batch of shape (N, T).
    """
    lengths = {len(s) for s in seqs}
    if len(lengths) != 1:
        raise ValueError(f"sequences differ in length: {sorted(lengths)}")
    seq = torch.tensor([list(s) for s in seqs], dtype=torch.int64)       # (N, T + 1)
    keep = torch.zeros_like(seq, dtype=torch.bool)
    for row, idx in enumerate(scored):
        keep[row, torch.as_tensor(idx, dtype=torch.int64)] = True
    if keep[:, 0].any():
        raise ValueError("byte 0 of a sequence has no position that predicts it")
    mask = keep[:, 1:]
    targets = torch.where(mask, seq[:, 1:], torch.full_like(mask, IGNORE, dtype=torch.int64))
    return TaskBatch(seq[:, :-1].contiguous(), targets, mask, meta)
