"""The memory presets against their papers' update equations.

Each reference below is a literal per-token loop over one paper's equation, written with plain torch
(nothing from ``nlsearch``), so a mistake in the library's fast (chunk-parallel) or naive forms, or in
the preset's settings, shows up as a mismatch. Checked for every preset (float64):

1. outputs and final state of ``apply_memory`` (``fast`` and ``naive``) equal the reference,
   for several lengths and mini-batch sizes;
2. gradients of a random functional of the outputs and final state w.r.t. every input agree
   between the library (``fast``) and the reference (autograd through the loop);
3. a sequence processed whole, in uneven pieces with the state carried, or token by token gives the
   same outputs and final weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nlsearch.ops import PRESETS, MemoryState, apply_memory

DTYPE = torch.float64
B, H = 2, 2
LINEAR_DK, LINEAR_DV = 6, 4          # unequal on purpose: catches transposed memories
MLP_D, MLP_HIDDEN = 4, 8             # residual MLP memory needs Dk == Dv; hidden = 2 x head dim

LINEAR_PRESETS = ["linear-attention", "deltanet", "gated-deltanet", "ttt-linear"]
MLP_PRESETS = ["ttt-mlp", "titans-lmm"]
# Mini-batch size each preset is meant to use (TTT: b = 16, Sun et al. 2024; Titans: chunk 16).
PRESET_CHUNK = {"linear-attention": 1, "deltanet": 1, "gated-deltanet": 1,
                "ttt-linear": 16, "ttt-mlp": 16, "titans-lmm": 16}
USES_ALPHA = {"gated-deltanet", "titans-lmm"}
USES_THETA = {"titans-lmm"}

Weights = Tuple[Tensor, ...]


# ---------------------------------------------------------------------------------------------------
# Small helpers (plain torch)
# ---------------------------------------------------------------------------------------------------

def matvec(m: Tensor, x: Tensor) -> Tensor:
    """Per-head ``m x``: m (B, H, out, in), x (B, H, in) -> (B, H, out)."""
    return (m @ x[..., None])[..., 0]


def outer(a: Tensor, b: Tensor) -> Tensor:
    """Per-head ``a bᵀ``: (B, H, m), (B, H, n) -> (B, H, m, n)."""
    return a[..., :, None] * b[..., None, :]


def per_head(s: Tensor) -> Tensor:
    """A per-token scalar (B, H) broadcast over a per-head matrix."""
    return s[..., None, None]


def gelu_exact(x: Tensor) -> Tensor:
    """GELU with the exact Gaussian CDF: x Φ(x) (Hendrycks & Gimpel)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def silu(x: Tensor) -> Tensor:
    """SiLU / swish: x σ(x)."""
    return x * torch.sigmoid(x)


def residual_mlp(w1: Tensor, w2: Tensor, x: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
    """The MLP memory f(x) = x + W2 act(W1 x), per head; x (B, H, D)."""
    return x + matvec(w2, act(matvec(w1, x)))


def grad_l2(weights: Weights, k: Tensor, v: Tensor, act: Callable[[Tensor], Tensor]) -> Weights:
    """∇_W ℓ(W; k, v), ℓ = ½‖f_W(k) − v‖², by autograd, keeping the graph for outer gradients.

    The loss is summed over batch and heads; heads have separate weights, so each head's block of the
    gradient is that head's own gradient."""
    ws = tuple(w if w.requires_grad else w.detach().requires_grad_() for w in weights)
    loss = 0.5 * ((residual_mlp(ws[0], ws[1], k, act) - v) ** 2).sum()
    return torch.autograd.grad(loss, ws, create_graph=True)


def minibatches(t_len: int, b: int) -> List[range]:
    """Token ranges of the mini-batches (aligned to the sequence start; the last may be partial)."""
    return [range(s, min(s + b, t_len)) for s in range(0, t_len, b)]


# ---------------------------------------------------------------------------------------------------
# References: one per paper equation
# ---------------------------------------------------------------------------------------------------

def ref_linear_attention(q, k, v, eta, m0):
    """Linear attention (Katharopoulos et al. 2020) as a fast-weight memory:
    M_t = M_{t-1} + η_t v_t k_tᵀ;   y_t = M_t q_t."""
    m, ys = m0, []
    for t in range(q.shape[2]):
        m = m + per_head(eta[:, :, t]) * outer(v[:, :, t], k[:, :, t])
        ys.append(matvec(m, q[:, :, t]))
    return torch.stack(ys, 2), (m,), None


def ref_deltanet(q, k, v, eta, m0):
    """DeltaNet, delta rule (Schlag et al. 2021; Yang et al. 2024, Eq. 1):
    M_t = M_{t-1} − η_t (M_{t-1} k_t − v_t) k_tᵀ;   y_t = M_t q_t."""
    m, ys = m0, []
    for t in range(q.shape[2]):
        kt = k[:, :, t]
        m = m - per_head(eta[:, :, t]) * outer(matvec(m, kt) - v[:, :, t], kt)
        ys.append(matvec(m, q[:, :, t]))
    return torch.stack(ys, 2), (m,), None


def ref_gated_deltanet(q, k, v, eta, alpha, m0):
    """Gated DeltaNet (Yang et al. 2025, gated delta rule):
    M_t = α_t M_{t-1} (I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ;   y_t = M_t q_t."""
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    m, ys = m0, []
    for t in range(q.shape[2]):
        kt, e = k[:, :, t], per_head(eta[:, :, t])
        m = per_head(alpha[:, :, t]) * m @ (eye - e * outer(kt, kt)) + e * outer(v[:, :, t], kt)
        ys.append(matvec(m, q[:, :, t]))
    return torch.stack(ys, 2), (m,), None


def ref_ttt_linear(q, k, v, eta, w_init, b):
    """TTT-Linear with mini-batch gradient descent (Sun et al. 2024, Sec. 2.7), plain inner model:
    W_t = W_0 − Σ_{s≤t in the mini-batch} η_s ∇ℓ(W_0; k_s, v_s),  ∇ℓ(W; k, v) = (W k − v) kᵀ;
    y_t = W_t q_t. W_0 is the previous mini-batch's final weights."""
    w, ys = w_init, []
    for batch in minibatches(q.shape[2], b):
        w0, acc = w, torch.zeros_like(w)
        for t in batch:
            kt = k[:, :, t]
            acc = acc + per_head(eta[:, :, t]) * outer(matvec(w0, kt) - v[:, :, t], kt)
            w = w0 - acc
            ys.append(matvec(w, q[:, :, t]))
    return torch.stack(ys, 2), (w,), None


def ref_ttt_mlp(q, k, v, eta, w_init: Weights, b):
    """TTT-MLP with mini-batch gradient descent (Sun et al. 2024), f(x) = x + W2 gelu(W1 x):
    W_t = W_0 − Σ_{s≤t in the mini-batch} η_s ∇_W ½‖f_{W_0}(k_s) − v_s‖²;   y_t = f_{W_t}(q_t)."""
    w, ys = tuple(w_init), []
    for batch in minibatches(q.shape[2], b):
        w0, acc = w, tuple(torch.zeros_like(x) for x in w)
        for t in batch:
            g = grad_l2(w0, k[:, :, t], v[:, :, t], gelu_exact)
            acc = tuple(a + per_head(eta[:, :, t]) * gi for a, gi in zip(acc, g))
            w = tuple(x0 - a for x0, a in zip(w0, acc))
            ys.append(residual_mlp(w[0], w[1], q[:, :, t], gelu_exact))
    return torch.stack(ys, 2), w, None


def ref_titans(q, k, v, eta, alpha, theta, w_init: Weights, s_init: Weights, chunk):
    """Titans long-term memory (Behrouz et al. 2024, Eqs. 13-14), f(x) = x + W2 silu(W1 x):
    S_t = θ_t S_{t-1} − η_t ∇ℓ(M_{t'}; k_t, v_t),   M_t = α_t M_{t-1} + S_t,   y_t = M_t(q_t),
    with α_t the retention (the paper's 1 − α_t) and M_{t'} the weights at the start of the token's
    mini-batch of ``chunk`` tokens."""
    w, s, ys = tuple(w_init), tuple(s_init), []
    for batch in minibatches(q.shape[2], chunk):
        w_start = w
        for t in batch:
            g = grad_l2(w_start, k[:, :, t], v[:, :, t], silu)
            s = tuple(per_head(theta[:, :, t]) * si - per_head(eta[:, :, t]) * gi for si, gi in zip(s, g))
            w = tuple(per_head(alpha[:, :, t]) * wi + si for wi, si in zip(w, s))
            ys.append(residual_mlp(w[0], w[1], q[:, :, t], silu))
    return torch.stack(ys, 2), w, s


def reference(name: str, x: "Inputs", init: "Init", chunk: int):
    """(y, final weights, final momentum) of preset ``name`` by its paper's equation."""
    if name == "linear-attention":
        return ref_linear_attention(x.q, x.k, x.v, x.eta, init.weights[0])
    if name == "deltanet":
        return ref_deltanet(x.q, x.k, x.v, x.eta, init.weights[0])
    if name == "gated-deltanet":
        return ref_gated_deltanet(x.q, x.k, x.v, x.eta, x.alpha, init.weights[0])
    if name == "ttt-linear":
        return ref_ttt_linear(x.q, x.k, x.v, x.eta, init.weights[0], chunk)
    if name == "ttt-mlp":
        return ref_ttt_mlp(x.q, x.k, x.v, x.eta, init.weights, chunk)
    if name == "titans-lmm":
        return ref_titans(x.q, x.k, x.v, x.eta, x.alpha, x.theta, init.weights, init.momentum, chunk)
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------

@dataclass
class Inputs:
    q: Tensor
    k: Tensor
    v: Tensor
    eta: Tensor
    alpha: Optional[Tensor]
    theta: Optional[Tensor]

    def tensors(self) -> Dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def cut(self, sl: slice) -> "Inputs":
        return Inputs(*(None if x is None else x[:, :, sl] for x in
                        (self.q, self.k, self.v, self.eta, self.alpha, self.theta)))


@dataclass
class Init:
    """The memory's initial weights (and momentum); ``given=False``: a linear memory passed no state."""
    weights: Weights
    momentum: Optional[Weights]
    given: bool

    def tensors(self) -> Dict[str, Tensor]:
        out = {f"w{i}": w for i, w in enumerate(self.weights)} if self.given else {}
        out.update({f"s{i}": s for i, s in enumerate(self.momentum or ())})
        return out


def make_inputs(name: str, t_len: int, seed: int, requires_grad: bool = False) -> Inputs:
    """Stable dynamics: unit-norm keys, η in (0.01, 0.5) (linear) or (0.005, 0.1) (MLP),
    θ in (0.05, 0.95), α in (0.5, 1) for Gated DeltaNet but (0.98, 1) for Titans.

    Zero weights are a fixed point of the MLP memory (f = identity, zero gradient), so with α down to
    0.5 the Titans memory decays to ~1e-29 within a few hundred tokens and its final weights would be
    compared at round-off level only; α near 1 keeps them O(1)."""
    g = torch.Generator().manual_seed(seed)
    mlp = name in MLP_PRESETS
    dk, dv = (MLP_D, MLP_D) if mlp else (LINEAR_DK, LINEAR_DV)
    bht = (B, H, t_len)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=DTYPE)

    q = torch.randn(*bht, dk, generator=g, dtype=DTYPE)
    k = F.normalize(torch.randn(*bht, dk, generator=g, dtype=DTYPE), dim=-1)
    v = torch.randn(*bht, dv, generator=g, dtype=DTYPE)
    eta = 0.005 + 0.095 * rand(*bht) if mlp else 0.01 + 0.49 * rand(*bht)
    alpha_low = 0.98 if mlp else 0.5
    alpha = alpha_low + (1 - alpha_low) * rand(*bht) if name in USES_ALPHA else None
    theta = 0.05 + 0.9 * rand(*bht) if name in USES_THETA else None
    x = Inputs(q, k, v, eta, alpha, theta)
    if requires_grad:
        for t in x.tensors().values():
            t.requires_grad_(True)
    return x


def make_init(name: str, seed: int, *, given: bool = True, requires_grad: bool = False) -> Init:
    """MLP presets: W1 (Dh, D), W2 (D, Dh) ~ randn / sqrt(fan_in), zero momentum for Titans.
    Linear presets: zeros when ``given`` is False (no state passed), else a random M_0."""
    g = torch.Generator().manual_seed(10_000 + seed)
    if name in MLP_PRESETS:
        w1 = torch.randn(B, H, MLP_HIDDEN, MLP_D, generator=g, dtype=DTYPE) / math.sqrt(MLP_D)
        w2 = torch.randn(B, H, MLP_D, MLP_HIDDEN, generator=g, dtype=DTYPE) / math.sqrt(MLP_HIDDEN)
        weights = (w1, w2)
        given = True
    elif given:
        weights = (0.3 * torch.randn(B, H, LINEAR_DV, LINEAR_DK, generator=g, dtype=DTYPE),)
    else:
        weights = (torch.zeros(B, H, LINEAR_DV, LINEAR_DK, dtype=DTYPE),)
    momentum = tuple(torch.zeros_like(w) for w in weights) if name in USES_THETA else None
    init = Init(weights, momentum, given)
    if requires_grad:
        for t in init.tensors().values():
            t.requires_grad_(True)
    return init


def library(name: str, x: Inputs, init: Init, chunk: Optional[int], impl: str = "fast",
            state: Optional[MemoryState] = None):
    """Run the preset (its own chunk when ``chunk`` is None) through ``apply_memory``."""
    rule = PRESETS[name] if chunk is None else PRESETS[name].model_copy(update={"chunk": chunk})
    if state is None and init.given:
        state = MemoryState(weights=init.weights, momentum=init.momentum)
    log_alpha = None if x.alpha is None else x.alpha.log()          # the ops take log-retention
    return apply_memory(rule, x.q, x.k, x.v, x.eta, log_alpha, x.theta, state, impl=impl)


def assert_near(actual: Tensor, expected: Tensor, tol: float = 1e-9, what: str = "") -> None:
    """Equal up to ``tol`` relative to the scale of ``expected`` (float64 round-off only)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(expected).all(), f"{what}: reference is not finite"
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def assert_same_result(y, state: MemoryState, y_ref, w_ref, s_ref, tol=1e-9, what="") -> None:
    assert_near(y, y_ref, tol, f"{what} y")
    assert len(state.weights) == len(w_ref), f"{what}: {len(state.weights)} weight tensors, want {len(w_ref)}"
    for i, (w, wr) in enumerate(zip(state.weights, w_ref)):
        assert_near(w, wr, tol, f"{what} weights[{i}]")
    if s_ref is None:
        assert state.momentum is None, f"{what}: plain GD returned momentum"
    else:
        assert state.momentum is not None and len(state.momentum) == len(s_ref), f"{what}: momentum missing"
        for i, (s, sr) in enumerate(zip(state.momentum, s_ref)):
            assert_near(s, sr, tol, f"{what} momentum[{i}]")


# ---------------------------------------------------------------------------------------------------
# 0. The preset table itself
# ---------------------------------------------------------------------------------------------------

def test_preset_names_and_inputs():
    """Exactly the six presets; each asks for exactly the per-token factors its equation uses."""
    assert set(PRESETS) == set(PRESET_CHUNK)
    for name, rule in PRESETS.items():
        assert rule.chunk == PRESET_CHUNK[name], name
        assert rule.decay == (name in USES_ALPHA), name
        assert (rule.optimizer == "momentum") == (name in USES_THETA), name
        assert rule.memory == ("mlp" if name in MLP_PRESETS else "linear"), name
        assert rule.read == "after_write", name


# ---------------------------------------------------------------------------------------------------
# 1. Forward: library (fast and naive) == paper equation
# ---------------------------------------------------------------------------------------------------

LENGTHS = [1, 63, 100, 257]

FORWARD_CASES = (
    # chunk None = the preset as it is (reference uses the paper's mini-batch size)
    [(n, None, t) for n in ["linear-attention", "deltanet", "gated-deltanet"] for t in LENGTHS]
    + [("ttt-linear", c, t) for c in [None, 1, 4, 7, 24] for t in LENGTHS]
    + [(n, c, t) for n in MLP_PRESETS for c in [None, 1, 4, 7] for t in [1, 63, 100]]
    + [(n, None, 257) for n in MLP_PRESETS]
)


@pytest.mark.parametrize("impl", ["fast", "naive"])
@pytest.mark.parametrize("name,chunk,t_len", FORWARD_CASES)
def test_forward_matches_paper(name, chunk, t_len, impl):
    seed = 1000 * len(name) + 10 * t_len + (chunk or 0)
    x = make_inputs(name, t_len, seed)
    # Linear presets start from an empty memory (no state passed), MLP presets from random weights.
    init = make_init(name, seed, given=False)
    y_ref, w_ref, s_ref = reference(name, x, init, chunk or PRESET_CHUNK[name])
    assert min(w.abs().max() for w in w_ref) > 1e-2, "memory died out: the weight check would be vacuous"
    y, state = library(name, x, init, chunk, impl)
    assert_same_result(y, state, y_ref, w_ref, s_ref, what=f"{name} chunk={chunk} T={t_len} {impl}")


@pytest.mark.parametrize("name", LINEAR_PRESETS)
def test_forward_from_given_linear_state(name):
    """A linear memory given a non-zero initial M_0 continues from it."""
    x = make_inputs(name, 40, seed=7)
    init = make_init(name, seed=7, given=True)
    y_ref, w_ref, s_ref = reference(name, x, init, PRESET_CHUNK[name])
    for impl in ("fast", "naive"):
        y, state = library(name, x, init, None, impl)
        assert_same_result(y, state, y_ref, w_ref, s_ref, what=f"{name} {impl}")


# ---------------------------------------------------------------------------------------------------
# 2. Gradients: library (fast) == autograd through the paper equation
# ---------------------------------------------------------------------------------------------------

GRAD_CASES = (
    [(n, None, 63, given) for n in LINEAR_PRESETS for given in (False, True)]
    + [("ttt-linear", c, 63, True) for c in (1, 4, 7)]
    + [(n, c, 37, True) for n in MLP_PRESETS for c in (None, 1, 4)]
)


def _objective(y: Tensor, weights: Weights, momentum: Optional[Weights], probe: Dict[str, Tensor]) -> Tensor:
    """A fixed random linear functional of the outputs and the final state."""
    total = (y * probe["y"]).sum()
    for i, w in enumerate(weights):
        total = total + (w * probe[f"w{i}"]).sum()
    for i, s in enumerate(momentum or ()):
        total = total + (s * probe[f"s{i}"]).sum()
    return total


@pytest.mark.parametrize("name,chunk,t_len,given", GRAD_CASES)
def test_gradients_match_paper(name, chunk, t_len, given):
    seed = 77 + t_len + (chunk or 0)
    x = make_inputs(name, t_len, seed, requires_grad=True)
    init = make_init(name, seed, given=given, requires_grad=True)
    leaves = {**x.tensors(), **init.tensors()}

    y_ref, w_ref, s_ref = reference(name, x, init, chunk or PRESET_CHUNK[name])
    g = torch.Generator().manual_seed(seed + 1)
    probe = {"y": torch.randn(y_ref.shape, generator=g, dtype=DTYPE)}
    probe.update({f"w{i}": torch.randn(w.shape, generator=g, dtype=DTYPE) for i, w in enumerate(w_ref)})
    probe.update({f"s{i}": torch.randn(s.shape, generator=g, dtype=DTYPE) for i, s in enumerate(s_ref or ())})
    grads_ref = torch.autograd.grad(_objective(y_ref, w_ref, s_ref, probe), list(leaves.values()))

    y, state = library(name, x, init, chunk, "fast")
    assert (state.momentum is None) == (s_ref is None)
    grads = torch.autograd.grad(_objective(y, state.weights, state.momentum, probe), list(leaves.values()))

    for key, gl, gr in zip(leaves, grads, grads_ref):
        assert gr.abs().max() > 0, f"{key}: the reference gradient is zero, the check would be vacuous"
        assert_near(gl, gr, 1e-8, f"{name} chunk={chunk} d/d{key}")


# ---------------------------------------------------------------------------------------------------
# 3. Whole sequence == uneven pieces with carried state == token by token
# ---------------------------------------------------------------------------------------------------

# Boundaries 5, 5, 16, 17, 47, 49, 66, 100: pieces end mid mini-batch, exactly on a mini-batch boundary
# (5 + 11 = 16), span several mini-batches, start and end inside one; one is empty (an open state passes
# through unchanged).
PIECES = [5, 0, 11, 1, 30, 2, 17, 34]

SPLIT_CASES = (
    [(n, None) for n in LINEAR_PRESETS + MLP_PRESETS]
    + [(n, c) for n in ("ttt-linear", "ttt-mlp", "titans-lmm") for c in (4, 7)]
)


def _run_pieces(name, x: Inputs, init: Init, chunk, impl, lengths: Sequence[int]):
    state, ys, pos = None, [], 0
    for length in lengths:
        y, state = library(name, x.cut(slice(pos, pos + length)), init, chunk, impl, state=state)
        ys.append(y)
        pos += length
    assert pos == x.q.shape[2]
    return torch.cat(ys, 2), state


@pytest.mark.parametrize("impl", ["fast", "naive"])
@pytest.mark.parametrize("name,chunk", SPLIT_CASES)
def test_pieces_and_tokens_match_whole(name, chunk, impl):
    t_len = sum(PIECES)
    seed = 31 * len(name) + (chunk or 0)
    x = make_inputs(name, t_len, seed)
    init = make_init(name, seed, given=False)
    y_ref, w_ref, s_ref = reference(name, x, init, chunk or PRESET_CHUNK[name])
    y_whole, st_whole = library(name, x, init, chunk, impl)
    assert_same_result(y_whole, st_whole, y_ref, w_ref, s_ref, what=f"{name} whole")
    for label, lengths in (("pieces", PIECES), ("tokens", [1] * t_len)):
        y, st = _run_pieces(name, x, init, chunk, impl, lengths)
        assert st.offset == st_whole.offset, f"{label}: offset {st.offset} != {st_whole.offset}"
        assert_same_result(y, st, y_whole, st_whole.weights, st_whole.momentum,
                           what=f"{name} {label} vs whole")
