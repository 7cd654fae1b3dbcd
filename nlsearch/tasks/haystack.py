"""Hiding sentences in corpus filler text at exact total lengths (shared by needle and bAbI tasks).

A long-context sequence of T + 1 bytes is ``filler with pieces inserted`` + ``question`` + ``answer``;
the model reads the first T bytes and is scored on the answer bytes. The filler is a slice of a corpus
byte stream at a random offset, exactly as long as the total needs.
"""
from __future__ import annotations

import random
from typing import List, Sequence, Tuple

from torch import Tensor

SNAP = 64
TRIES = 200


def filler_slice(stream: Tensor, size: int, rng: random.Random, avoid: Sequence[bytes] = ()) -> bytes:
    """Returns ``size`` bytes of ``stream`` (n_bytes,) uint8 from a random offset, containing none of
    ``avoid``; raises ValueError when the stream is too short or no such slice is found."""
    if size > stream.numel():
        raise ValueError(f"filler of {size} bytes asked from a corpus stream of {stream.numel()} bytes")
    for _ in range(TRIES):
        start = rng.randrange(stream.numel() - size + 1)
        text = bytes(stream[start: start + size].tolist())
        if not any(a in text for a in avoid):
            return text
    raise ValueError(f"no filler slice of {size} bytes free of {list(avoid)} in {TRIES} tries")


def _snap(filler: bytes, pos: int) -> int:
    """Returns the position just after the first space or newline at or after ``pos`` (within SNAP
    bytes), else ``pos``: pieces start at word boundaries."""
    for i in range(pos, min(pos + SNAP, len(filler))):
        if filler[i] in b" \n":
            return i + 1
    return pos


def insert(filler: bytes, pieces: Sequence[bytes], fractions: Sequence[float]) -> Tuple[bytes, List[int]]:
    """Returns (text, starts): ``pieces`` inserted in order at ``fractions`` (non-decreasing, in
    [0, 1]) of the filler, and the byte offset in ``text`` where each piece starts."""
    if list(fractions) != sorted(fractions) or any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must be non-decreasing in [0, 1], got {list(fractions)}")
    out, starts, last = [], [], 0
    for piece, frac in zip(pieces, fractions):
        pos = max(_snap(filler, round(frac * len(filler))), last)
        out.append(filler[last:pos])
        starts.append(sum(len(o) for o in out))
        out.append(piece)
        last = pos
    out.append(filler[last:])
    return b"".join(out), starts


def compose(stream: Tensor, length: int, pieces: Sequence[bytes], fractions: Sequence[float],
            question: bytes, answer: bytes, rng: random.Random, avoid: Sequence[bytes] = (),
            task: str = "longctx") -> Tuple[bytes, List[int], List[int]]:
    """Returns (seq, piece_starts, answer_idx): ``seq`` has exactly ``length + 1`` bytes, ``answer_idx``
    lists the indices of the answer bytes in ``seq``; raises ValueError when ``length`` is too short."""
    fixed = sum(len(p) for p in pieces) + len(question) + len(answer)
    if fixed > length + 1:
        raise ValueError(f"{task}: length {length} is shorter than the sequence needs ({fixed - 1} tokens "
                         f"without filler)")
    text, starts = insert(filler_slice(stream, length + 1 - fixed, rng, avoid), pieces, fractions)
    seq = text + question + answer
    return seq, starts, list(range(len(seq) - len(answer), len(seq)))
