"""Causal multi-head softmax attention with rotary position embeddings: the non-parametric memory
that writes every token (the Transformer baseline's mixer).

RoPE (the "rotate-half" pairing: channel ``i`` turns with channel ``i + Dh/2`` by the angle
``pos · base^(−2i/Dh)``) is applied to q and k at their absolute positions, so a key is stored in the
cache already rotated. With ``window = W`` each token attends to the last W tokens, itself included,
and the cache keeps the last W − 1 tokens; without a window the cache keeps every token.
"""
from __future__ import annotations

from typing import Callable, Sequence, Literal, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt
from torch import Tensor, nn

from nlsearch.layers.head_dim import head_dim
from nlsearch.config import Strict
from nlsearch.nesting import Level
from nlsearch.ops.attention import causal_attention
from nlsearch.registry import MIXERS


@MIXERS.register("attention")
class AttentionLayerConfig(Strict):
    kind: Literal["attention"] = "attention"
    n_heads: PositiveInt = 4
    head_dim: Optional[PositiveInt] = None   # default d_model // n_heads; even (RoPE turns pairs)
    window: Optional[PositiveInt] = None     # tokens seen per query, itself included; None: all
    rope_base: PositiveFloat = 10000.0

    def build(self, d_model: int) -> "AttentionLayer":
        return AttentionLayer(d_model, self)

    def check(self, d_model: int, path: str = "mixer") -> None:
        """Fail before any tensor exists when the heads cannot tile the width."""
        head_dim(d_model, self.n_heads, self.head_dim, path)

    def levels(self) -> "list[Level]":
        span = "all past tokens" if self.window is None else f"last {self.window} tokens"
        return [Level("attention", f"non-parametric key-value memory of the {span}", "tokens", 1,
                      "softmax (dot)", "kv-cache")]


class KVCache(NamedTuple):
    k: Tensor        # (B, H, S, Dh) keys after RoPE
    v: Tensor        # (B, H, S, Dh)
    offset: int      # absolute position of the next token (shared by the batch, not counted as state)


def rotary(x: Tensor, offset: int, base: float) -> Tensor:
    """Rotate ``x (B, H, T, Dh)`` at positions ``offset .. offset + T - 1`` (angles in >= float32)."""
    t, dh = x.shape[-2], x.shape[-1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = base ** (-torch.arange(0, dh // 2, dtype=dtype, device=x.device) * 2 / dh)
    pos = torch.arange(offset, offset + t, dtype=dtype, device=x.device)
    angle = pos[:, None] * inv_freq                                          # (T, Dh/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention_mask(t: int, cached: int, window: Optional[int], device) -> Tensor:
    """(T, cached + T) boolean, True where query i (after ``cached`` keys) may attend to key j."""
    q_pos = torch.arange(cached, cached + t, device=device)[:, None]
    k_pos = torch.arange(cached + t, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (q_pos - k_pos < window)
    return allowed


def windowed_attention(queries: Sequence[Tensor], keys: Sequence[Tensor], window: int, attend: Callable) -> Tensor:
    """Sliding-window attention in blocks: O(T·W) work and memory instead of a (T, S) mask.

    ``queries``: tensors (B, H, T, ·) for the last T of the S positions of ``keys`` (B, H, S, ·) (the
    first S − T are cached). Queries are cut into blocks of ``window``; block j sees the 2W key slots
    that end with its own last position, masked to the window. ``attend(*q_blocks, *k_blocks, mask)``
    gets blocks folded into the batch, (B·nb, H, W | 2W, ·), and ``mask`` (B·nb, 1, W, 2W); it returns
    (B·nb, H, W, D). Returns (B, H, T, D)."""
    b, h, t = queries[0].shape[:3]
    cached, w = keys[0].shape[2] - t, window
    nb = -(-t // w)
    pad_left, pad_q = max(0, w - cached), nb * w - t
    start = cached + pad_left - w                                           # first key slot of block 0
    q_blocks = [F.pad(q, (0, 0, 0, pad_q)).reshape(b, h, nb, w, -1) for q in queries]
    k_blocks = [F.pad(k, (0, 0, pad_left, pad_q))[:, :, start:start + (nb + 1) * w]
                .unfold(2, 2 * w, w).transpose(-1, -2) for k in keys]             # (B, H, nb, 2W, .)
    i = torch.arange(w, device=queries[0].device)[:, None]
    m = torch.arange(2 * w, device=queries[0].device)[None, :]
    key_pos = cached - w + m + w * torch.arange(nb, device=queries[0].device)[:, None, None]   # (nb, 1, 2W)
    mask = (m > i) & (m <= w + i) & (key_pos >= 0)                            # (nb, W, 2W)
    fold = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731  (B, H, nb, ...) -> (B·nb, H, ...)
    y = attend(*map(fold, q_blocks), *map(fold, k_blocks), mask[:, None].repeat(b, 1, 1, 1))
    return y.unflatten(0, (b, nb)).transpose(1, 2).flatten(2, 3)[:, :, :t]


class AttentionLayer(nn.Module):
    def __init__(self, d_model: int, cfg: AttentionLayerConfig):
        super().__init__()
        h = cfg.n_heads
        dh = head_dim(d_model, h, cfg.head_dim)
        if dh % 2:
            raise ValueError(f"head_dim={dh} must be even: RoPE rotates pairs of channels")
        self.cfg, self.h, self.dh = cfg, h, dh
        self.qkv = nn.Linear(d_model, 3 * h * dh, bias=False)
        self.out = nn.Linear(h * dh, d_model, bias=False)

    def forward(self, x: Tensor, state: Optional[KVCache] = None) -> Tuple[Tensor, KVCache]:
        """x (B, T, d_model) -> (y (B, T, d_model), cache)."""
        b, t, _ = x.shape
        offset = 0 if state is None else state.offset
        q, k, v = self.qkv(x).view(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
        q, k = rotary(q, offset, self.cfg.rope_base), rotary(k, offset, self.cfg.rope_base)
        if state is not None:
            k, v = torch.cat([state.k, k], dim=2), torch.cat([state.v, v], dim=2)   # (B, H, S + T, Dh)
        if state is None and self.cfg.window is None:
            y = causal_attention(q, k, v)
        elif self.cfg.window is not None and t > self.cfg.window:
            y = windowed_attention([q], [k, v], self.cfg.window,
                                   lambda qb, kb, vb, mask: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask))
        else:
            mask = attention_mask(t, k.shape[2] - t, self.cfg.window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, t, self.h * self.dh)
        keep = k.shape[2] if self.cfg.window is None else min(self.cfg.window - 1, k.shape[2])
        cache = KVCache(k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:], offset + t)
        return self.out(y), cache

    def flops_per_token(self, seq_len: int) -> float:
        """Scores and weighted values over the average context a token sees (causal: about T/2)."""
        context = seq_len / 2 if self.cfg.window is None else min(self.cfg.window, seq_len / 2)
        return 2.0 * 2 * context * self.h * self.dh

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Numbers carried per sequence after ``seq_len`` tokens: keys and values of the cached tokens.

        With a window the cache is bounded (W − 1 tokens; ``seq_len`` only lowers that for short
        sequences). Without one it grows with the sequence, so ``seq_len`` is required."""
        per_token = 2 * self.h * self.dh
        if self.cfg.window is not None:
            cap = self.cfg.window - 1
            return per_token * (cap if seq_len is None else min(cap, seq_len))
        if seq_len is None:
            raise ValueError("an unbounded KV cache grows with the sequence: pass seq_len to state_size()")
        return per_token * seq_len
