"""Parts the Titans mixers share: attention with persistent memory tokens, the output gate ⊗, and a
read-only retrieval from a memory layer's fast weights.

Persistent memory (Titans §3.3): ``n_persistent`` learned, data-independent tokens ``p_1 … p_Np`` in
the model's input space, prefixed to attention's context. They pass through the attention's own key
and value projections and carry no position: their keys are not rotated and are scored against the
query before its rotation, so every query, at any absolute position and in any piece of a sequence,
sees them alike (a rotated query against a rotated key at the same position gives the same number).
Queries never come from them: they are context, not outputs.
"""
from __future__ import annotations

from typing import Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlsearch.layers.attention import KVCache, attention_mask, rotary, windowed_attention
from nlsearch.layers.head_dim import head_dim as resolve_head_dim
from nlsearch.layers.norm import RMSNorm


def prefix_attention(q: Tensor, q_rot: Tensor, k: Tensor, v: Tensor, kp: Optional[Tensor],
                     vp: Optional[Tensor], mask: Tensor) -> Tensor:
    """Softmax over [persistent keys, context keys] in one ``scaled_dot_product_attention`` call.
    (``mask`` may carry leading batch dims, e.g. (B, 1, T, S).)

    q, q_rot (B, H, T, Dh): queries before / after RoPE; k, v (B, H, S, Dh): rotated context keys and
    values; kp, vp (H, P, Dh) or None: persistent keys and values; mask (T, S) bool, True = visible.
    The position-free persistent scores ride on extra feature channels: queries [q_rot, q] against
    keys [0, kp] (persistent) and [k, 0] (context) give q·kp and q_rot·k. Returns (B, H, T, Dh).
    """
    scale = q.shape[-1] ** -0.5
    if kp is None:
        return F.scaled_dot_product_attention(q_rot, k, v, attn_mask=mask, scale=scale)
    b, p = q.shape[0], kp.shape[1]
    kp, vp = kp.expand(b, -1, -1, -1), vp.expand(b, -1, -1, -1)                # (B, H, P, Dh)
    q2 = torch.cat([q_rot, q], dim=-1)                                          # (B, H, T, 2Dh)
    k2 = torch.cat([torch.cat([torch.zeros_like(kp), kp], dim=-1),
                    torch.cat([k, torch.zeros_like(k)], dim=-1)], dim=2)        # (B, H, P + S, 2Dh)
    v2 = torch.cat([vp, v], dim=2)                                              # (B, H, P + S, Dh)
    mask2 = torch.cat([mask.new_ones(*mask.shape[:-1], p), mask], dim=-1)     # (..., T, P + S)
    return F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask2, scale=scale)


def prefix_attention_naive(q: Tensor, q_rot: Tensor, k: Tensor, v: Tensor, kp: Optional[Tensor],
                           vp: Optional[Tensor], mask: Tensor) -> Tensor:
    """Reference for :func:`prefix_attention`: explicit scores, one softmax over both parts."""
    scale = q.shape[-1] ** -0.5
    ctx = (q_rot @ k.mT).masked_fill(~mask, float("-inf"))                      # (B, H, T, S)
    pers = q @ kp.mT if kp is not None else ctx[..., :0]                        # (B, H, T, P)
    w = (torch.cat([pers, ctx], dim=-1) * scale).softmax(-1)
    p = pers.shape[-1]
    y = w[..., p:] @ v
    return y + w[..., :p] @ vp if kp is not None else y


class PersistentAttention(nn.Module):
    """RoPE softmax attention over [persistent tokens, context]; ``forward`` is the sliding-window
    form (SW-Attn* of the paper: the last ``window`` tokens, itself included, plus the prefix) with a
    KV cache of the last ``window − 1`` tokens; ``project`` / ``attend`` let MAC build its own context
    (``segment`` S: each query sees its segment's retrieved and input tokens up to itself)."""

    def __init__(self, d_model: int, n_heads: int, head_dim: Optional[int], rope_base: float,
                 n_persistent: int, window: Optional[int] = None, segment: Optional[int] = None):
        super().__init__()
        dh = resolve_head_dim(d_model, n_heads, head_dim)
        if dh % 2:
            raise ValueError(f"head_dim={dh} must be even: RoPE rotates pairs of channels")
        self.h, self.dh, self.rope_base, self.window, self.segment = n_heads, dh, rope_base, window, segment
        self.qkv = nn.Linear(d_model, 3 * n_heads * dh, bias=False)
        self.out = nn.Linear(n_heads * dh, d_model, bias=False)
        self.persistent = nn.Parameter(torch.randn(n_persistent, d_model)) if n_persistent else None

    def project(self, x: Tensor, offset: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, T, d) at positions offset … -> q, rotated q, rotated k, v, each (B, H, T, Dh)."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        return q, rotary(q, offset, self.rope_base), rotary(k, offset, self.rope_base), v

    def persistent_kv(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """Keys and values of the persistent tokens, (H, P, Dh) each, or (None, None)."""
        if self.persistent is None:
            return None, None
        _, k, v = self.qkv(self.persistent).view(-1, 3, self.h, self.dh).permute(1, 2, 0, 3)
        return k, v

    def attend(self, q: Tensor, q_rot: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Queries (B, H, T, Dh) over [persistent, k/v (B, H, S, Dh)] under mask (T, S) -> (B, T, d)."""
        b, _, t, _ = q.shape
        y = prefix_attention(q, q_rot, k, v, *self.persistent_kv(), mask)
        return self.out(y.transpose(1, 2).reshape(b, t, self.h * self.dh))

    def forward(self, x: Tensor, cache: Optional[KVCache] = None) -> Tuple[Tensor, KVCache]:
        """x (B, T, d) -> (y (B, T, d), cache): sliding window over the sequence, plus the prefix."""
        t = x.shape[1]
        offset = 0 if cache is None else cache.offset
        q, q_rot, k, v = self.project(x, offset)
        if cache is not None:
            k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)   # (B, H, S + T, Dh)
        if self.window is not None and t > self.window:
            kp, vp = self.persistent_kv()
            y = windowed_attention([q, q_rot], [k, v], self.window,
                                   lambda qb, qrb, kb, vb, mask: prefix_attention(qb, qrb, kb, vb, kp, vp, mask))
            y = self.out(y.transpose(1, 2).reshape(x.shape[0], t, self.h * self.dh))
        else:
            y = self.attend(q, q_rot, k, v, attention_mask(t, k.shape[2] - t, self.window, x.device))
        keep = k.shape[2] if self.window is None else min(self.window - 1, k.shape[2])
        return y, KVCache(k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:], offset + t)

    def flops_per_token(self, seq_len: int) -> float:
        """Scores and weighted values over the average context a token sees, persistent tokens included
        (sliding: min(W, T/2); MAC: about S, half of the segment's retrieved and input tokens each)."""
        if self.segment is not None:
            context = min(self.segment, seq_len)
        else:
            context = seq_len / 2 if self.window is None else min(self.window, seq_len / 2)
        n_persistent = 0 if self.persistent is None else self.persistent.shape[0]
        return 2.0 * 2 * (context + n_persistent) * self.h * self.dh

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Keys and values of the cached tokens (bounded by the window; unbounded without one)."""
        per_token = 2 * self.h * self.dh
        if self.window is not None:
            cap = self.window - 1
            return per_token * (cap if seq_len is None else min(cap, seq_len))
        if seq_len is None:
            raise ValueError("an unbounded KV cache grows with the sequence: pass seq_len to state_size()")
        return per_token * seq_len


class OutputGate(nn.Module):
    """``o = y ⊗ m``: attention output y gated by memory output m (both (B, T, d)), then ``W_o``.

    ``normalized`` (the paper's §4.2 reading): both normalised with learnable vector weights, the
    non-linearity on the memory factor: ``o = W_o (RMSNorm_y(y) ⊙ σ(RMSNorm_m(m)))``.
    ``linear``: a linear gate of the memory output: ``o = W_o (y ⊙ σ(W_g m + b_g))``.
    """

    def __init__(self, d_model: int, form: Literal["normalized", "linear"]):
        super().__init__()
        self.form = form
        if form == "normalized":
            self.norm_y, self.norm_m = RMSNorm(d_model), RMSNorm(d_model)
        else:
            self.gate = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, y: Tensor, m: Tensor) -> Tensor:
        if self.form == "normalized":
            return self.out(self.norm_y(y) * torch.sigmoid(self.norm_m(m)))
        return self.out(y * torch.sigmoid(self.gate(m)))
