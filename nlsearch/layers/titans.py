"""The Titans architectures (Behrouz, Zhong, Mirrokni 2024, "Titans: Learning to Memorize at Test
Time", §4) as mixers: a neural long-term memory (a :class:`MemoryLayer`, rule ``titans-lmm`` unless
configured otherwise), softmax attention with RoPE, and ``n_persistent`` persistent memory tokens
(learned, data-independent, prefixed to attention's context only; see :mod:`titans_parts`).

Read/write order, per token t (``M_t``: the memory after writing tokens ≤ t; the memory layer's own
read is that of its rule, ``after_write`` for titans-lmm: y_t = M_t(q_t)):

``titans-mag`` (memory as a gate, §4.2): two branches on the same x.
    a_t = SW-Attn*(x)_t over [P, x_{t−W+1} … x_t];   m_t = Mem(x)_t (write x_t, then read);
    y_t = a_t ⊗ m_t (:class:`OutputGate`: ``normalized`` = the paper's normalised product, or
    ``linear``).
``titans-mal`` (memory as a layer, §4.3): the memory first, attention on its output.
    m_t = Mem(x)_t (write x_t, then read);  ``inner: compose``:  y_t = SW-Attn*(m)_t  (the paper's
    equations as written);  ``inner: residual``: h = x + m, y_t = m_t + SW-Attn*(RMSNorm(h))_t, i.e. two
    residual sublayers (§4.4: "in all blocks we use residual connections"; the backbone adds x).
``titans-mac`` (memory as context, §4.1): segments of S tokens; for segment i (tokens t):
    1. read   h_t = M*_{i−1}(x_t W_Q): the memory as it stood at the segment's start; no write of
              segment i is visible (not even of earlier tokens of the same segment);
    2. attend o_t = Attn over [P, h_s, x_s for s in segment i, s ≤ t] (causal inside the segment,
              nothing of earlier segments: the memory is the only path across segments);
    3. write  o_t into the memory (its keys/values are projections of o_t), then read M_t(o_t);
    4. y_t = o_t ⊗ M_t(o_t) with the same gate as MAG.
    W_Q in step 1 is the memory's own query projection (and q-normalisation) without its short
    convolution, whose state follows the stream o the memory is written from. Segments run one after
    another (each retrieval needs the previous segment's writes): T/S sequential steps.
    h_s is visible to query t only for s ≤ t: the paper's figure puts all of h before the segment, but
    h_s depends on x_s, so a causal language model must mask it like x_s.
    The paper also feeds P through the memory (M(x̃), x̃ = [P] ‖ x); here P enters attention only: a
    data-independent prefix written into the memory is a learned change of its initial state, which
    the memory's learned initial weights already are.
    MAC has a loop the others lack: what the memory returns (h) is attended to, and the attention
    output (o) is what the memory writes, its values unnormalised, so the memory's reads feed its next
    targets once per segment (64 times in a 4k-token sequence). Observed: ``titans-mac`` on
    ``longctx_needle`` at ``cpu@3`` (seed 0, lr x1) trains smoothly to step 167 while the second
    block's residual stream grows (largest activation 65 at step 131, 184 at step 167), then the
    second block's memory (its fast weights or reads) goes from at most 110 to 348 to 2,000 in three
    steps, with the projections it writes from at 66, and the loss is NaN at step 168 (this loop is
    the likely path; what was measured is the per-step maxima above). That is the architecture as
    the paper states it (kept: the protocol's lr sweep and a ``failed`` seed say what it costs); a
    stabiliser like the self-modifying layer's ``v_norm`` would be a variant of it.

State: MAG/MAL carry (memory state, attention KV cache of the last W − 1 tokens); MAC carries the
memory state and, while a segment is open, the segment-start weights M*_{i−1} and the keys/values of
the segment's retrieved and input tokens so far, so a sequence may be cut anywhere.
"""
from __future__ import annotations

from typing import List, Literal, NamedTuple, Optional, Tuple

import torch
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt, field_validator
from torch import Tensor, nn

from nlsearch.config import Strict
from nlsearch.layers.attention import KVCache, attention_mask
from nlsearch.layers.memory import LayerState, MemoryLayer, MemoryLayerConfig
from nlsearch.layers.norm import RMSNorm
from nlsearch.layers.head_dim import head_dim
from nlsearch.layers.titans_parts import OutputGate, PersistentAttention
from nlsearch.ops import preset
from nlsearch.nesting import Level
from nlsearch.registry import MIXERS

MEMORY_DEFAULTS = {"rule": "titans-lmm"}
LMM = MemoryLayerConfig(rule=preset("titans-lmm"))


class TitansConfigBase(Strict):
    """``memory``: a mapping without ``rule`` is the Titans memory (:data:`MEMORY_DEFAULTS`); the
    memory layer's own step-size normalisation (η divided by the chunk, momentum as an average) keeps
    the chunk-16 momentum rule finite on correlated tokens (tested on repetitive text)."""

    kind: str
    memory: MemoryLayerConfig = LMM          # a mapping without rule: titans-lmm
    n_heads: PositiveInt = 4                 # attention heads
    head_dim: Optional[PositiveInt] = None   # attention head width, default d_model // n_heads; even
    rope_base: PositiveFloat = 10000.0
    n_persistent: NonNegativeInt = 4         # persistent memory tokens in attention's context

    @field_validator("memory", mode="before")
    @classmethod
    def _lmm_by_default(cls, value):
        if isinstance(value, dict) and "rule" not in value:
            return {**MEMORY_DEFAULTS, **value}
        return value

    def check(self, d_model: int, path: str = "mixer") -> None:
        """Fail before any tensor exists when heads cannot tile the width or RoPE cannot pair channels."""
        self.memory.check(d_model, f"{path}.memory")
        dh = head_dim(d_model, self.n_heads, self.head_dim, path)
        if dh % 2:
            raise ValueError(f"{path}: attention head_dim={dh} must be even (RoPE rotates pairs)")

    def attention_span(self) -> str:
        raise NotImplementedError

    def levels(self) -> List[Level]:
        """The memory's levels, attention (every token) and, with persistent tokens, a "persistent
        memory" level: data-independent tokens learned only by the outer optimiser (clock ``steps``,
        period 1, the LM loss), kept apart from "weights" as the paper's third kind of memory."""
        out = list(self.memory.levels())
        out.append(Level("attention", f"non-parametric key-value memory of {self.attention_span()}",
                         "tokens", 1, "softmax (dot)", "kv-cache"))
        if self.n_persistent:
            out.append(Level("persistent memory", f"{self.n_persistent} learned data-independent tokens "
                             "prefixed to attention's context", "steps", 1, "LM loss", "parameters"))
        return out

    def make_attention(self, d_model: int, window: Optional[int], segment: Optional[int] = None
                       ) -> PersistentAttention:
        return PersistentAttention(d_model, self.n_heads, self.head_dim, self.rope_base, self.n_persistent,
                                   window, segment)


class _WindowedConfig(TitansConfigBase):
    window: Optional[PositiveInt] = 64       # sliding window W (tokens, itself included); None: all

    def attention_span(self) -> str:
        span = "all past tokens" if self.window is None else f"the last {self.window} tokens"
        return f"{span} + {self.n_persistent} persistent tokens"


@MIXERS.register("titans-mag")
class TitansMAGConfig(_WindowedConfig):
    kind: Literal["titans-mag"] = "titans-mag"
    gate: Literal["normalized", "linear"] = "normalized"

    def build(self, d_model: int) -> "TitansMAG":
        return TitansMAG(d_model, self)


@MIXERS.register("titans-mal")
class TitansMALConfig(_WindowedConfig):
    kind: Literal["titans-mal"] = "titans-mal"
    inner: Literal["residual", "compose"] = "residual"

    def build(self, d_model: int) -> "TitansMAL":
        return TitansMAL(d_model, self)


@MIXERS.register("titans-mac")
class TitansMACConfig(TitansConfigBase):
    kind: Literal["titans-mac"] = "titans-mac"
    segment: PositiveInt = 64                # S: tokens per segment (attention's span, memory's read clock)
    gate: Literal["normalized", "linear"] = "normalized"

    def attention_span(self) -> str:
        return (f"the current {self.segment}-token segment and its retrieved memory tokens "
                f"+ {self.n_persistent} persistent tokens")

    def build(self, d_model: int) -> "TitansMAC":
        return TitansMAC(d_model, self)


class HybridState(NamedTuple):
    memory: LayerState
    attention: KVCache


class _Windowed(nn.Module):
    def __init__(self, d_model: int, cfg: _WindowedConfig):
        super().__init__()
        cfg.check(d_model)
        self.cfg = cfg
        self.memory = MemoryLayer(d_model, cfg.memory)
        self.attn = cfg.make_attention(d_model, cfg.window)

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Memory state (as :meth:`MemoryLayer.state_size` counts it) + the KV cache of the window."""
        return self.memory.state_size(seq_len) + self.attn.state_size(seq_len)


class TitansMAG(_Windowed):
    def __init__(self, d_model: int, cfg: TitansMAGConfig):
        super().__init__(d_model, cfg)
        self.gate = OutputGate(d_model, cfg.gate)

    def forward(self, x: Tensor, state: Optional[HybridState] = None) -> Tuple[Tensor, HybridState]:
        """x (B, T, d) -> (y (B, T, d), state): y = SW-Attn*(x) ⊗ Mem(x)."""
        mem_state, cache = state if state is not None else (None, None)
        a, cache = self.attn(x, cache)
        m, mem_state = self.memory(x, mem_state)
        return self.gate(a, m), HybridState(mem_state, cache)


class TitansMAL(_Windowed):
    def __init__(self, d_model: int, cfg: TitansMALConfig):
        super().__init__(d_model, cfg)
        self.norm = RMSNorm(d_model) if cfg.inner == "residual" else None

    def forward(self, x: Tensor, state: Optional[HybridState] = None) -> Tuple[Tensor, HybridState]:
        """x (B, T, d) -> (y (B, T, d), state): attention over the memory's output."""
        mem_state, cache = state if state is not None else (None, None)
        m, mem_state = self.memory(x, mem_state)
        if self.norm is None:
            y, cache = self.attn(m, cache)
        else:
            a, cache = self.attn(self.norm(x + m), cache)
            y = m + a
        return y, HybridState(mem_state, cache)


class MACState(NamedTuple):
    memory: LayerState
    retrieval: Optional[Tuple[Tensor, ...]]   # M*_{i−1}: weights at the open segment's start; None between
    cache: Optional[Tuple[Tensor, Tensor]]    # k, v (B, H, 2n, Dh): the open segment's n retrieved tokens,
                                              # then its n input tokens; None between segments
    offset: int                               # tokens seen: position of the next token


class TitansMAC(nn.Module):
    def __init__(self, d_model: int, cfg: TitansMACConfig):
        super().__init__()
        cfg.check(d_model)
        self.cfg, self.segment = cfg, cfg.segment
        self.memory = MemoryLayer(d_model, cfg.memory)
        self.attn = cfg.make_attention(d_model, None, cfg.segment)
        self.gate = OutputGate(d_model, cfg.gate)

    def forward(self, x: Tensor, state: Optional[MACState] = None) -> Tuple[Tensor, MACState]:
        """x (B, T, d) -> (y (B, T, d), state), one step per (part of a) segment."""
        if state is None:
            state = MACState(self.memory.initial_state(x.shape[0], x), None, None, 0)
        ys, start = [], 0
        while start < x.shape[1]:
            n = min(x.shape[1] - start, self.segment - state.offset % self.segment)
            y, state = self._step(x[:, start:start + n], state)
            ys.append(y)
            start += n
        return (torch.cat(ys, dim=1) if ys else x.clone()), state

    def retrieve(self, x: Tensor, weights: Tuple[Tensor, ...]) -> Tensor:
        """h = M*(x W_Q) at fixed ``weights``: (B, n, d) -> (B, n, d)."""
        return self.memory.read(x, tuple(weights))

    def _step(self, x: Tensor, st: MACState) -> Tuple[Tensor, MACState]:
        """Tokens x (B, n, d) inside one segment, ``start`` of its tokens already seen."""
        start = st.offset % self.segment
        weights = st.retrieval if start else st.memory.memory.weights
        h = self.retrieve(x, weights)                                          # 1. read M*_{i−1}
        o, cache = self._attend(x, h, st.cache, st.offset, start)              # 2. attend in segment
        m, mem = self.memory(o, st.memory)                                     # 3. write o, read M_t(o)
        y = self.gate(o, m)                                                    # 4. o ⊗ M_t(o)
        if start + x.shape[1] == self.segment:
            return y, MACState(mem, None, None, st.offset + x.shape[1])
        return y, MACState(mem, weights, cache, st.offset + x.shape[1])

    def _attend(self, x: Tensor, h: Tensor, cache, offset: int, start: int) -> Tuple[Tensor, Tuple]:
        """Queries of x over [P, h and x of this segment up to themselves] -> (o (B, n, d), cache)."""
        n = x.shape[1]
        q, q_rot, kx, vx = self.attn.project(x, offset)                        # (B, H, n, Dh)
        _, _, kh, vh = self.attn.project(h, offset)                            # h_s sits at x_s's position
        if cache is not None:
            ck, cv = cache                                                     # (B, H, 2 start, Dh)
            kh, kx = torch.cat([ck[:, :, :start], kh], 2), torch.cat([ck[:, :, start:], kx], 2)
            vh, vx = torch.cat([cv[:, :, :start], vh], 2), torch.cat([cv[:, :, start:], vx], 2)
        k, v = torch.cat([kh, kx], dim=2), torch.cat([vh, vx], dim=2)          # (B, H, 2 (start + n), Dh)
        causal = attention_mask(n, start, None, x.device)                      # (n, start + n)
        return self.attn.attend(q, q_rot, k, v, torch.cat([causal, causal], dim=-1)), (k, v)

    def flops_per_token(self, seq_len: int) -> float:
        """Work beyond what the submodules report once per token: the retrieval read (W_Q, a pass over
        the fast weights, W_out) and the attention's projection of the retrieved token."""
        fast = sum(w[0].numel() for w in self.memory.initial_state(1, self.attn.qkv.weight).memory.weights)
        w_q = self.memory.h * self.memory.dh * self.memory.qkv.in_features
        return 2.0 * (w_q + fast + self.memory.out.weight.numel() + self.attn.qkv.weight.numel())

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Memory state (as :meth:`MemoryLayer.state_size` counts it) and, while a segment is open
        (``seq_len % S`` tokens into it; S − 1 at most when ``seq_len`` is None), a copy of the
        segment-start weights and the keys and values of its retrieved and input tokens."""
        open_len = self.segment - 1 if seq_len is None else seq_len % self.segment
        if open_len == 0:
            return self.memory.state_size(seq_len)
        weights = self.memory.initial_state(1, self.attn.qkv.weight).memory.weights
        kv = 2 * 2 * open_len * self.attn.h * self.attn.dh
        return self.memory.state_size(seq_len) + sum(w[0].numel() for w in weights) + kv
