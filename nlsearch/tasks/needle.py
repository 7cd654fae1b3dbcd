"""Needle in a haystack, single and multi-key (RULER-style, byte level).

Each needle is the sentence ``The special magic number for <key> is <value>.`` with a key such as
``amber-falcon`` and a ``value_digits``-digit number, hidden in corpus filler. With ``n_needles`` > 1
the other needles carry other keys and values (distractors). The question at the end asks for one
key's number; the target is its digits. ``depths``: the queried needle's depth (fraction of the
filler before it), sequence i using ``depths[i % len(depths)]``; ``None`` draws it uniformly.
Distractor depths are uniform. Keys and values never occur in the filler, and values are distinct.
"""
from __future__ import annotations

import random
from typing import List, Optional, Tuple

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from nlsearch.tasks.batch import TaskBatch, TaskContext, from_sequences, py_rng
from nlsearch.tasks.corpus import CorpusSpec, load_corpus
from nlsearch.tasks.haystack import compose

ADJECTIVES = ("amber", "brisk", "cobalt", "dusky", "eager", "frosty", "gilded", "hollow", "ivory", "jolly",
              "knotty", "lunar", "mossy", "nimble", "opal", "plucky", "quiet", "rusty", "silver", "tawny",
              "umber", "velvet", "wispy", "zesty")
NOUNS = ("falcon", "badger", "comet", "dingo", "ember", "fjord", "gecko", "heron", "iris", "jackal",
         "kestrel", "lynx", "marmot", "newt", "otter", "puffin", "quokka", "raven", "stoat", "tapir",
         "urchin", "vole", "walrus", "yak")
NEEDLE = "The special magic number for {key} is {value}. "
QUESTION = "\n\nQuestion: What is the special magic number for {key}?\nAnswer: "


class NeedleParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    filler: CorpusSpec = CorpusSpec()
    n_needles: PositiveInt = Field(1, le=len(ADJECTIVES) * len(NOUNS))
    depths: Optional[Tuple[float, ...]] = None
    value_digits: int = Field(7, ge=3, le=12)

    @field_validator("depths")
    @classmethod
    def _fractions(cls, depths: Optional[Tuple[float, ...]]) -> Optional[Tuple[float, ...]]:
        if depths is not None and (not depths or any(not 0 <= d <= 1 for d in depths)):
            raise ValueError(f"depths must be a non-empty list of fractions in [0, 1], got {list(depths)}")
        return depths


def _longest(words: Tuple[str, ...]) -> str:
    return max(words, key=len)


def needle_min_length(p: NeedleParams) -> int:
    """Returns the tokens the needles, question and answer take without filler."""
    key = f"{_longest(ADJECTIVES)}-{_longest(NOUNS)}"
    value = "9" * p.value_digits
    return p.n_needles * len(NEEDLE.format(key=key, value=value)) + len(QUESTION.format(key=key)) + len(value) - 1


def _keys_values(p: NeedleParams, rng: random.Random) -> Tuple[List[str], List[str]]:
    pairs = rng.sample(range(len(ADJECTIVES) * len(NOUNS)), p.n_needles)
    keys = [f"{ADJECTIVES[i // len(NOUNS)]}-{NOUNS[i % len(NOUNS)]}" for i in pairs]
    low = 10 ** (p.value_digits - 1)
    values = [str(v) for v in rng.sample(range(low, 10 * low), p.n_needles)]
    return keys, values


def _one(p: NeedleParams, stream: torch.Tensor, length: int, depth: float, rng: random.Random
         ) -> Tuple[bytes, List[int], float]:
    """Returns (seq of length + 1 bytes, answer byte indices, realised depth of the queried needle)."""
    keys, values = _keys_values(p, rng)
    fractions = [depth] + [rng.random() for _ in keys[1:]]
    order = sorted(range(len(keys)), key=lambda i: fractions[i])
    pieces = [NEEDLE.format(key=keys[i], value=values[i]).encode() for i in order]
    seq, starts, answer = compose(stream, length, pieces, [fractions[i] for i in order],
                                  QUESTION.format(key=keys[0]).encode(), values[0].encode(), rng,
                                  avoid=[k.encode() for k in keys] + [v.encode() for v in values], task="needle")
    filler = length + 1 - sum(len(x) for x in pieces) - len(QUESTION.format(key=keys[0])) - len(values[0])
    before = starts[order.index(0)] - sum(len(pieces[j]) for j in range(order.index(0)))
    return seq, answer, before / max(filler, 1)


def sample_needle(p: NeedleParams, n: int, length: int, split: str, phase: int, gen: torch.Generator,
                  ctx: TaskContext) -> TaskBatch:
    """Registry entry: n haystacks (N, T) scored on the answer digits; meta ``depth`` (N,) float64,
    the fraction of filler bytes before the queried needle."""
    stream = load_corpus(p.filler, ctx.base_dir, ctx.cache_dir).stream(split)
    rng = py_rng(gen)
    seqs, scored, depths = [], [], []
    for i in range(n):
        depth = rng.random() if p.depths is None else p.depths[i % len(p.depths)]
        seq, answer, realised = _one(p, stream, length, depth, rng)
        seqs.append(seq)
        scored.append(answer)
        depths.append(realised)
    return from_sequences(seqs, scored, {"depth": torch.tensor(depths, dtype=torch.float64)})
