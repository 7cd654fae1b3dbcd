"""Every fast form in float32 is about as accurate as its per-token naive twin in float32.

The reference is the naive form in float64. For each fast/naive pair of ``nlsearch.ops`` (the linear memory over
its whole grid: objective, decay order, momentum, read order, chunk 1 / 5 / 16; the MLP memory with and without
decay and momentum, chunk 1 / 4 / 16; the selective scan; causal attention) both forms run in float32 at an
odd length that spans several of the fast form's blocks, and their errors against the reference are measured
(max |error| / max |reference| per tensor, the worst over outputs, every final-state tensor and the gradients
of every input and initial state). The fast form must stay within ``FACTOR`` (4) × the naive form's error +
``EPS`` (2^-21, four float32 ulps of 1: the naive error is sometimes ~0 on a tensor). A fast form that loses
digits (a half-precision intermediate, an exponent of a long cumulative sum, a cancelling subtraction) fails
here while the float64 fast-vs-naive tests still pass. ``test_log_decay.py`` covers the extreme retentions.
"""
import pytest
import torch

from memory_inputs import memory_inputs, mlp_state
from nlsearch.ops import (MemoryState, causal_attention, causal_attention_naive, linear_memory, linear_memory_naive,
                          mlp_memory, mlp_memory_naive, selective_scan, selective_scan_naive)

FACTOR, EPS = 4.0, 2.0 ** -21
F64, F32 = torch.float64, torch.float32


def _rel_errs(actual, expected):
    """max |a − e| / max |e| of each tensor."""
    errs = []
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == F32, a.dtype
        assert torch.isfinite(a).all(), "non-finite values"
        scale = e.abs().max().clamp_min(1e-30)
        errs.append(((a.double() - e).abs().max() / scale).item())
    return errs


def _weighted_loss(outs):
    return sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)


def _memory_run(fn, inp, state, dtype, **kw):
    """Outputs (y and every final-state tensor) and gradients (inputs, initial state) of one memory op call."""
    leaves = {n: x.to(dtype).requires_grad_() for n, x in inp.items() if x is not None}
    weights = tuple(w.to(dtype).requires_grad_() for w in state.weights)
    mom = None if state.momentum is None else tuple(s.to(dtype).requires_grad_() for s in state.momentum)
    args = [leaves.get(n) for n in ("q", "k", "v", "eta", "log_alpha", "theta")]
    y, st = fn(*args, MemoryState(weights, mom), **kw)
    outs = [y, *st.weights, *(st.momentum or ()), *(st.anchor or ())]
    if st.anchor_decay is not None:
        outs.append(st.anchor_decay)
    grads = torch.autograd.grad(_weighted_loss(outs), [*leaves.values(), *weights, *(mom or ())])
    return [o.detach() for o in outs] + list(grads)


def _check(fast, naive, run, names=None):
    """run(fn, dtype) -> list of tensors; per tensor, fast32 error <= FACTOR × naive32 error + EPS."""
    ref = run(naive, F64)
    fast_errs, naive_errs = _rel_errs(run(fast, F32), ref), _rel_errs(run(naive, F32), ref)
    bad = [f"tensor {i}: fast32 {f:.3g} vs naive32 {n:.3g}"
           for i, (f, n) in enumerate(zip(fast_errs, naive_errs)) if not f <= FACTOR * n + EPS]
    assert not bad, "; ".join(bad)
    return fast_errs, naive_errs


def _with_theta(inp, low, high):
    if inp["theta"] is not None:
        gen = torch.Generator().manual_seed(5)
        inp["theta"] = low + (high - low) * torch.rand(inp["theta"].shape, generator=gen, dtype=F64)
    return inp


LINEAR_GRID = [(obj, decay, order, momentum)
               for obj in ("dot", "l2") for momentum in (False, True)
               for decay, order in ((False, "with_step"), (True, "with_step"), (True, "before_step"))]


@pytest.mark.parametrize("objective,decay,order,momentum", LINEAR_GRID)
@pytest.mark.parametrize("chunk,read", [(1, "after_write"), (16, "after_write"), (5, "before_write")])
def test_linear_memory_float32(objective, decay, order, momentum, chunk, read):
    """77 tokens: two blocks of 32 (the default block) and a tail; a random initial state (and momentum);
    θ in [0.5, 0.999] (the layers start at θ ≈ 0.95; smaller θ: the test below)."""
    inp = _with_theta(memory_inputs(t=77, decay=decay, momentum=momentum), 0.5, 0.999)
    g = torch.Generator().manual_seed(3)
    m0 = 0.3 * torch.randn(2, 2, 6, 6, generator=g, dtype=F64)
    state = MemoryState((m0,), (0.1 * torch.randn(m0.shape, generator=g, dtype=F64),) if momentum else None)
    kw = dict(objective=objective, decay_order=order, chunk=chunk, read=read)
    _check(linear_memory, linear_memory_naive, lambda fn, dt: _memory_run(fn, inp, state, dt, **kw))


def test_linear_momentum_small_theta_float32():
    """Linear attention with momentum (dot, no decay), 300 tokens, θ down to 0.05: the gradient of θ
    sums the decay matrix's rows t ≥ r from the end (ops/blocks.py::_DecayMatrix.backward); as a total
    minus a prefix it was ~10x less accurate than the naive form in float32 (4.4e-6 vs 4.5e-7)."""
    inp = _with_theta(memory_inputs(t=300, momentum=True), 0.05, 0.95)
    g = torch.Generator().manual_seed(3)
    m0 = 0.3 * torch.randn(2, 2, 6, 6, generator=g, dtype=F64)
    state = MemoryState((m0,), (0.1 * torch.randn(m0.shape, generator=g, dtype=F64),))
    kw = dict(objective="dot", chunk=1)
    _check(linear_memory, linear_memory_naive, lambda fn, dt: _memory_run(fn, inp, state, dt, **kw))


@pytest.mark.parametrize("decay,momentum,chunk,objective,read,activation,depth", [
    (False, False, 16, "l2", "after_write", "gelu", 2),        # ttt-mlp
    (True, True, 16, "l2", "after_write", "silu", 2),          # titans-lmm
    (True, True, 4, "dot", "before_write", "silu", 3),
    (True, False, 1, "l2", "after_write", "gelu", 2)])
def test_mlp_memory_float32(decay, momentum, chunk, objective, read, activation, depth):
    inp = memory_inputs(t=37, decay=decay, momentum=momentum, eta_max=0.1)
    state = mlp_state(depth=depth, momentum=momentum)
    kw = dict(objective=objective, chunk=chunk, read=read, activation=activation, residual=True)
    _check(mlp_memory, mlp_memory_naive, lambda fn, dt: _memory_run(fn, inp, state, dt, **kw))


@pytest.mark.parametrize("t", [45, 150])
def test_selective_scan_float32(t):
    """Chunks of 64 (the default): 45 is one partial chunk, 150 two chunks and a padded tail."""
    gen = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    inp = dict(x=rnd(2, t, 5), delta=0.01 + 0.5 * torch.rand(2, t, 5, generator=gen, dtype=F64),
               A=-rnd(5, 4).exp(), B=rnd(2, t, 4), C=rnd(2, t, 4), D=rnd(5), h0=rnd(2, 5, 4))

    def run(fn, dtype):
        leaves = {n: x.to(dtype).requires_grad_() for n, x in inp.items()}
        y, h = fn(**leaves)
        return [y.detach(), h.detach(), *torch.autograd.grad(_weighted_loss([y, h]), list(leaves.values()))]

    _check(selective_scan, selective_scan_naive, run)


def test_causal_attention_float32():
    gen = torch.Generator().manual_seed(0)
    qkv = [torch.randn(2, 3, 53, 8, generator=gen, dtype=F64) for _ in range(3)]

    def run(fn, dtype):
        leaves = [x.to(dtype).requires_grad_() for x in qkv]
        y = fn(*leaves)
        return [y.detach(), *torch.autograd.grad(_weighted_loss([y]), leaves)]

    _check(causal_attention, causal_attention_naive, run)
