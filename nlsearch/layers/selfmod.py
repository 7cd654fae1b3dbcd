"""Self-modifying Titans (NL full paper, §8.1–8.2, Eqs. 83–93): the projections are
themselves in-context memories, and every memory writes targets it generates itself.

Per head, five residual 2-layer MLP memories ``M_□(a) = a + W_□,2 σ(W_□,1 a)``,
□ ∈ {k, v, η, α, memory}, start every sequence at meta-learned weights (parameters):

    u_t = x_t W_u (head_input: project) or x_t's head slice (split);   q_t = x_t W_q (fixed)
    k_t = M_k,t−1(u_t)    v_t = M_v,t−1(u_t)
    η_t = eta_scale σ(g_η(M_η,t−1(u_t))) / C    α_t = σ(g_α(M_α,t−1(u_t)))  (to the op as log σ(·))
    v̂_□,t = M_□,t−1(v_t)
    M_□,t = α_t M_□,t−1 − η_t ∇_M ½‖M_□,t−1(k_t) − v̂_□,t‖²      (the same k_t, η_t, α_t for every □)
    y_t = W_o rms(M_memory,t(q_t))

The update is Eq. 86's L2 delta rule with retention read as one step of the l2 objective: for a
linear memory it is exactly ``M(α_t I − η_t k_t k_tᵀ) + η_t v̂ k_tᵀ``; for these MLP memories the
gradient runs through the MLP (the ``mlp_memory`` op, decay ``with_step``). k_t and q_t are
L2-normalised per head when ``qk_norm`` is on (as the paper's experiments do); v_t too when
``v_norm`` is on (below).

Chunked (``chunk`` = C, the paper's chunk-wise training): inside a chunk every ``M_□,t−1`` on the
right-hand side (the projections k, v, η, α, the targets v̂ and the gradients) is the chunk-start
``M_□``; all five memories then take the chunk's update through ``mlp_memory`` (stacked along the
head axis: one op call per chunk). C = 1 is the exact per-token recurrence. A state left inside a
chunk keeps its anchor, so pieces of a sequence give the outputs of the whole.

Named readings where the paper leaves room (both of each are tested):

- ``read``: ``after_write`` (y_t = M_memory,t(q_t), as the other memories read) or ``before_write`` (the paper's
  output equation reads ``M_memory,t−1(q_t)``).
- ``memory_target``: ``self`` (Eq. 86 lets □ range over the output memory too: v̂_memory,t =
  M_memory,t−1(v_t)) or ``value`` (Titans: the output memory learns k_t → v_t; only the projection
  memories generate their own targets).
- ``gates``: how the scalars η_t, α_t (per head) come out of the head-wide outputs of M_η, M_α:
  ``mean`` (the mean over the head's dims, plus a learned per-head bias) or ``linear`` (a learned
  fixed read-out vector and bias); then η = eta_scale σ(·) / chunk (the op sums a chunk's gradients:
  this makes a chunk's step the mean gradient's, as in MemoryLayer), α = σ(·).
- ``head_input``: what the per-head memories read: ``project`` (a fixed projection u_t = x_t W_u,
  like q_t) or ``split`` (x_t's own slice of width head_dim: M_k(x_t) with no fixed weights).
- ``v_norm``: L2-normalise the generated values v_t per head (the paper normalises q and k only).
  v_t is what every memory's target is made of (v̂_□ = M_□(v_t)), and unnormalised it grows with the
  memories' weights, which grow with the targets: a feedback that can blow the fast weights up
  within one sequence. Observed: ``hope`` without it diverged on ``recall_small`` at outer step 54 of
  ``cpu@2``, its output memory's largest weight going 0.7, 1.0, 2.7, 68, 1.3e7, NaN over six
  chunks at an in-context step size of 0.003; with it the same weights and batch decay smoothly.
  Off by default (the paper's reading); the ``hope`` preset turns it on.
"""
from __future__ import annotations

from typing import List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt
from torch import Tensor, nn

from nlsearch.config import Strict, added, unhashed
from nlsearch.layers.conv import ShortConv
from nlsearch.layers.head_dim import head_dim
from nlsearch.layers.memory import LayerState, open_block
from nlsearch.ops import MemoryState, mlp_forward, mlp_memory, mlp_memory_naive
from nlsearch.optim.adamw import no_weight_decay
from nlsearch.ops.blocks import plan_segments
from nlsearch.ops.precision import autocast_off, up
from nlsearch.nesting import Level
from nlsearch.registry import MIXERS
from nlsearch.runtime import step_function

N_MEMORIES = 5                       # stacked along the head axis in this order: k, v, η, α, memory
ETA, ALPHA = 0, 1                    # rows of the gate parameters


@MIXERS.register("selfmod")
class SelfModConfig(Strict):
    kind: Literal["selfmod"] = "selfmod"
    n_heads: PositiveInt = 4
    head_dim: Optional[PositiveInt] = None     # default d_model // n_heads
    chunk: PositiveInt = 16                    # tokens per mini-batch update (1: exact per token)
    expansion: PositiveInt = 2                 # memory hidden width = expansion * head_dim
    activation: Literal["silu", "gelu"] = "silu"
    eta_scale: PositiveFloat = 0.1
    qk_norm: bool = True
    v_norm: bool = added(False, "L2-normalise the generated values (a stabiliser; hashed only when on)")
    conv_size: int = 4                         # on u and q; 0 or 1: no short convolution
    read: Literal["after_write", "before_write"] = "after_write"
    memory_target: Literal["self", "value"] = "self"
    gates: Literal["mean", "linear"] = "mean"
    head_input: Literal["project", "split"] = "project"
    impl: Literal["fast", "naive"] = unhashed("fast", "chunkwise or per-token form; same results")

    def build(self, d_model: int) -> "SelfModLayer":
        return SelfModLayer(d_model, self)

    def check(self, d_model: int, path: str = "mixer") -> None:
        """Fail before any tensor exists when the heads cannot tile the width."""
        width = self.n_heads * head_dim(d_model, self.n_heads, self.head_dim, path)
        if self.head_input == "split" and width != d_model:
            raise ValueError(f"{path}.head_input='split' needs n_heads * head_dim == d_model, "
                             f"got {width} != {d_model}")

    def levels(self) -> List[Level]:
        return [
            Level("self-modifying memory", "MLP output memory M_memory (in-context, DGD with log-retention "
                  "log α_t = logsigmoid(g_α(M_α(u_t))))",
                  "tokens", self.chunk,
                  "l2 (self-generated targets)" if self.memory_target == "self" else "l2 (values)", "mlp"),
            Level("self-modifying projections", "MLP memories M_k, M_v, M_η, M_α: keys, values, learning "
                  "rate and retention, each learning its self-generated targets", "tokens", self.chunk,
                  "l2 (self-generated targets)", "mlp", stage=1),
        ]


class SelfModLayer(nn.Module):
    def __init__(self, d_model: int, cfg: SelfModConfig):
        super().__init__()
        cfg.check(d_model, path="selfmod")
        h = cfg.n_heads
        dh = head_dim(d_model, h, cfg.head_dim)
        hidden = cfg.expansion * dh
        self.cfg, self.h, self.dh = cfg, h, dh
        self.inp = nn.Linear(d_model, (1 if cfg.head_input == "split" else 2) * h * dh, bias=False)
        self.conv = ShortConv(2 * h * dh, cfg.conv_size) if cfg.conv_size > 1 else None
        self.w1 = nn.Parameter(torch.randn(N_MEMORIES, h, hidden, dh) * dh ** -0.5)
        self.w2 = nn.Parameter(torch.randn(N_MEMORIES, h, dh, hidden) * hidden ** -0.5)
        bias = torch.tensor([0.0, 3.0])[:, None].repeat(1, h)                   # (2, H): α ≈ 0.95
        self.gate_bias = no_weight_decay(nn.Parameter(bias))                   # biases: never decayed
        self.gate_w = nn.Parameter(torch.randn(2, h, dh) * dh ** -0.5) if cfg.gates == "linear" else None
        self.out = nn.Linear(h * dh, d_model, bias=False)

    def initial_state(self, batch: int, like: Tensor) -> LayerState:
        """The meta-learned weights, in float32 at least (:mod:`nlsearch.ops.precision`)."""
        dtype = up(like.new_empty(())).dtype
        weights = tuple(w.to(dtype).flatten(0, 1).expand(batch, -1, -1, -1) for w in (self.w1, self.w2))
        return LayerState(MemoryState(weights), None)                         # (B, 5H, out, in) each

    def _inputs(self, x: Tensor, conv_state: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """x (B, T, d) -> u, q (B, H, T, Dh) and the convolution's state."""
        b, t, _ = x.shape
        z = torch.cat([x, self.inp(x)], -1) if self.cfg.head_input == "split" else self.inp(x)
        if self.conv is not None:
            z, conv_state = self.conv(z, conv_state)
        u, q = z.view(b, t, 2, self.h, self.dh).permute(2, 0, 3, 1, 4)         # 2 x (B, H, T, Dh)
        return u, (F.normalize(q, dim=-1) if self.cfg.qk_norm else q), conv_state

    def _gate(self, s: Tensor, row: int) -> Tensor:
        """Head-wide memory output s (B, H, L, Dh) -> pre-squash scalar (B, H, L)."""
        z = s.mean(-1) if self.gate_w is None else (s * self.gate_w[row][:, None]).sum(-1)
        return z + self.gate_bias[row][:, None]

    def _chunk(self, u: Tensor, q: Tensor, mem: MemoryState) -> Tuple[Tensor, MemoryState]:
        """One chunk, or the part of one that ``mem`` left open: u, q (B, H, L, Dh) -> y (B, H, L, Dh)."""
        h, act = self.h, self.cfg.activation
        anchor = mem.anchor if mem.offset else mem.weights                     # chunk-start weights
        # all five memories at u, M_memory's output unused: the four projection memories are not a
        # flat batch of (B, 5H, ...) weights, and copying them out (and their gradients back) costs
        # more than evaluating the fifth (same-process A/B of the HOPE step: 0.7% by minimum, 5% by median)
        proj = mlp_forward(anchor, u.repeat(1, N_MEMORIES, 1, 1), act, True)    # (B, 5H, L, Dh)
        k, v, s_eta, s_alpha = proj[:, :4 * h].split(h, dim=1)
        if self.cfg.qk_norm:
            k = F.normalize(k, dim=-1)
        if self.cfg.v_norm:
            v = F.normalize(v, dim=-1)
        eta = self.cfg.eta_scale * torch.sigmoid(self._gate(s_eta, ETA)) / self.cfg.chunk  # (B, H, L)
        log_alpha = F.logsigmoid(self._gate(s_alpha, ALPHA))
        n_self = N_MEMORIES if self.cfg.memory_target == "self" else N_MEMORIES - 1
        own = anchor if n_self == N_MEMORIES else [w[:, :n_self * h] for w in anchor]   # no alias node when all
        targets = mlp_forward(own, v.repeat(1, n_self, 1, 1), act, True)
        if n_self < N_MEMORIES:
            targets = torch.cat([targets, v], dim=1)                          # (B, 5H, L, Dh)
        op = mlp_memory if self.cfg.impl == "fast" else mlp_memory_naive
        y, mem = op(q, k.repeat(1, N_MEMORIES, 1, 1), targets, eta.repeat(1, N_MEMORIES, 1),
                    log_alpha.repeat(1, N_MEMORIES, 1), None, mem, objective="l2", chunk=self.cfg.chunk,
                    read=self.cfg.read, activation=act, residual=True, read_from=4 * h)   # read M_memory only
        return y, mem

    def forward(self, x: Tensor, state: Optional[LayerState] = None) -> Tuple[Tensor, LayerState]:
        """x (B, T, d_model) -> (y (B, T, d_model), state)."""
        b, t, _ = x.shape
        if state is None:
            state = self.initial_state(b, x)
        u, q, conv_state = self._inputs(x, state.conv)
        mem, c = state.memory, self.cfg.chunk
        seg = plan_segments(t, mem.offset, c, c)
        lengths = [n for n in [seg.prefix] + [c] * seg.n_blocks + [seg.tail] if n]
        ys, step = [], step_function(SelfModLayer._chunk)
        with autocast_off(u):                     # every chunk is memory work: float32 throughout
            for uc, qc in zip(up(u).split(lengths, dim=2), up(q).split(lengths, dim=2)):
                y, mem = step(self, uc, qc, mem)
                ys.append(y)
        y = torch.cat(ys, dim=2) if ys else up(q).new_zeros(q.shape)          # (B, H, T, Dh)
        y = F.rms_norm(y, (self.dh,)).transpose(1, 2).reshape(b, t, self.h * self.dh)
        return self.out(y), LayerState(mem, conv_state)

    def _fast_numel(self) -> int:
        return self.w1[0, 0].numel() * N_MEMORIES * self.h * 2

    def flops_per_token(self, seq_len: int) -> float:
        """Beyond the linear maps: the projections and the targets (all five memories at u and at v:
        2 passes over the fast weights), the op's gradient, write and read (~3 passes over all five),
        and its intra-chunk products."""
        intra_chunk = 2.0 * 3 * min(seq_len, self.cfg.chunk) * 2 * N_MEMORIES * self.h * self.dh
        return 2.0 * self._fast_numel() * (2 + 3) + intra_chunk

    def state_size(self, seq_len: Optional[int] = None) -> int:
        """Numbers carried per sequence after ``seq_len`` tokens (None: the most it ever holds): the
        five memories' weights, the open chunk's anchor and accumulated retention (while ``seq_len %
        chunk`` leaves one open), and the convolution's last inputs."""
        anchor = int(open_block(self.cfg.chunk, seq_len))
        return (self._fast_numel() * (1 + anchor) + anchor * N_MEMORIES * self.h
                + (self.conv.state_size() if self.conv else 0))
