"""Retention in log space: every decaying fast form exact for any log α in [-inf, 0].

The rows of the log-decay issue's table (dot and l2 decay, float64 at log α = -700, -1e4, -inf; float32
at -1, -80, -1e4, -inf) are cases here: fast vs the per-token naive form, outputs, final state and
every gradient, with one or several strongly decaying tokens, whole and in pieces with carried state.
"""
import math

import pytest
import torch

from memory_inputs import memory_inputs, mlp_state
from nlsearch.ops import MemoryState, linear_memory, linear_memory_naive, mlp_memory, mlp_memory_naive

LOG_ALPHAS_64 = [-1.0, -80.0, -700.0, -1e4, -math.inf]
LOG_ALPHAS_32 = [-1.0, -80.0, -100.0, -1e4, -math.inf]
LINEAR_RULES = [("dot", "with_step", False), ("l2", "with_step", False), ("l2", "before_step", False),
                ("dot", "with_step", True), ("l2", "before_step", True)]


def _positions(t, several):
    """Tokens given the extreme retention: one in the middle, or several (adjacent ones included)."""
    picked = {t // 3, t // 3 + 1, 1, t - 2} if several else {t // 3}
    return sorted(p for p in picked if 0 <= p < t)


def _inputs(t, log_alpha_value, several, momentum=False, mlp=False, seed=0):
    inp = memory_inputs(t=t, decay=True, momentum=momentum, eta_max=0.1 if mlp else 0.5, seed=seed)
    la = inp["log_alpha"].clone()
    la[:, :, _positions(t, several)] = log_alpha_value
    inp["log_alpha"] = la
    return inp


def _state(mlp, momentum, dtype=torch.float64):
    if mlp:
        return mlp_state(momentum=momentum, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    m0 = 0.3 * torch.randn(2, 2, 6, 6, generator=g, dtype=dtype)
    return MemoryState((m0,), (0.1 * torch.randn(m0.shape, generator=g, dtype=dtype),) if momentum else None)


def _run(fn, inp, state, cuts, **kw):
    """The op over the pieces ``[0, c1), [c1, c2), ...``; returns the outputs and every final-state
    tensor, the loss weighting all of them, and the gradients of the loss."""
    names = [n for n, x in inp.items() if x is not None]
    leaves = {n: inp[n].clone().requires_grad_() for n in names}
    w_leaves = tuple(w.clone().requires_grad_() for w in state.weights)
    state = state._replace(weights=w_leaves)
    ys, t = [], inp["q"].shape[2]
    bounds = [0] + [c for c in cuts if 0 < c < t] + [t]
    for a, b in zip(bounds, bounds[1:]):
        piece = [None if n not in leaves else leaves[n][:, :, a:b] for n in ("q", "k", "v", "eta", "log_alpha",
                                                                            "theta")]
        y, state = fn(*piece, state, **kw)
        ys.append(y)
    y = torch.cat(ys, dim=2)
    outs = [y, *state.weights, *(state.momentum or ()), *(state.anchor or ())]
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names] + list(w_leaves), allow_unused=True)
    return [o.detach() for o in outs], [torch.zeros(1) if g is None else g for g in grads]


def _max_rel_err(actual, expected):
    """max |a − e| / max |e| over a list of tensors (each scaled by its own size)."""
    errs = []
    for a, e in zip(actual, expected):
        assert torch.isfinite(a).all(), "non-finite values"
        scale = e.double().abs().max().clamp_min(1e-30)
        errs.append(((a.double() - e.double()).abs().max() / scale).item())
    return max(errs)


def _linear_kw(objective, order, chunk, fast):
    kw = dict(objective=objective, decay_order=order, chunk=chunk)
    return dict(kw, block=8) if fast else kw


@pytest.mark.parametrize("objective,order,momentum", LINEAR_RULES)
@pytest.mark.parametrize("log_alpha", LOG_ALPHAS_64)
@pytest.mark.parametrize("t,chunk,several,cuts", [(1, 1, False, ()), (7, 1, True, ()), (65, 1, False, (3, 30)),
                                                  (65, 4, True, (6,)), (65, 3, False, ())])
def test_linear_fast_matches_naive_at_extreme_retention_float64(objective, order, momentum, log_alpha, t, chunk,
                                                                several, cuts):
    inp = _inputs(t, log_alpha, several, momentum)
    state = _state(False, momentum)
    out1, g1 = _run(linear_memory_naive, inp, state, cuts, **_linear_kw(objective, order, chunk, False))
    out2, g2 = _run(linear_memory, inp, state, cuts, **_linear_kw(objective, order, chunk, True))
    for a, b in zip(out2 + g2, out1 + g1):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("log_alpha", LOG_ALPHAS_64)
@pytest.mark.parametrize("t,chunk,several,cuts", [(1, 1, False, ()), (7, 4, True, (2,)), (65, 16, False, (5, 40))])
def test_mlp_fast_matches_naive_at_extreme_retention_float64(momentum, log_alpha, t, chunk, several, cuts):
    inp = _inputs(t, log_alpha, several, momentum, mlp=True)
    state = _state(True, momentum)
    kw = dict(objective="l2", chunk=chunk)
    out1, g1 = _run(mlp_memory_naive, inp, state, cuts, **kw)
    out2, g2 = _run(mlp_memory, inp, state, cuts, **kw)
    for a, b in zip(out2 + g2, out1 + g1):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)


def _float32_errors(fast, naive, inp, state, cuts, fast_kw, naive_kw):
    """Errors of the fast and the naive form in float32 against the naive form in float64."""
    ref_out, ref_g = _run(naive, inp, state, cuts, **naive_kw)
    inp32 = {n: None if x is None else x.float() for n, x in inp.items()}
    st32 = MemoryState(*(None if xs is None else tuple(x.float() for x in xs) for xs in state[:2]))
    errs = []
    for fn, kw in ((fast, fast_kw), (naive, naive_kw)):
        out, g = _run(fn, inp32, st32, cuts, **kw)
        errs.append((_max_rel_err(out, ref_out), _max_rel_err(g, ref_g)))
    return errs


@pytest.mark.parametrize("objective,order,momentum", LINEAR_RULES)
@pytest.mark.parametrize("log_alpha", LOG_ALPHAS_32)
@pytest.mark.parametrize("t,chunk,several,cuts", [(7, 1, True, ()), (65, 1, False, (30,)), (65, 4, True, ())])
def test_linear_fast_float32_error_within_10x_naive(objective, order, momentum, log_alpha, t, chunk, several, cuts):
    inp = _inputs(t, log_alpha, several, momentum)
    (fast_y, fast_g), (naive_y, naive_g) = _float32_errors(
        linear_memory, linear_memory_naive, inp, _state(False, momentum), cuts,
        _linear_kw(objective, order, chunk, True), _linear_kw(objective, order, chunk, False))
    floor = 2 ** -23                                     # one float32 ulp: a naive error of exactly 0
    assert fast_y <= 10 * max(naive_y, floor), (fast_y, naive_y)
    assert fast_g <= 10 * max(naive_g, floor), (fast_g, naive_g)


@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("log_alpha", LOG_ALPHAS_32)
def test_mlp_fast_float32_error_within_10x_naive(momentum, log_alpha):
    inp = _inputs(33, log_alpha, True, momentum, mlp=True)
    kw = dict(objective="l2", chunk=4)
    (fast_y, fast_g), (naive_y, naive_g) = _float32_errors(
        mlp_memory, mlp_memory_naive, inp, _state(True, momentum), (10,), kw, kw)
    floor = 2 ** -23
    assert fast_y <= 10 * max(naive_y, floor), (fast_y, naive_y)
    assert fast_g <= 10 * max(naive_g, floor), (fast_g, naive_g)


def test_full_reset_forgets_everything_before_it():
    """α = 0 at token r: outputs from r on equal those of a fresh memory started at r (the definition)."""
    t, r = 40, 17
    inp = memory_inputs(t=t, decay=True)
    la = inp["log_alpha"].clone()
    la[:, :, r] = -math.inf
    inp["log_alpha"] = la
    kw = dict(objective="l2", decay_order="before_step", block=8)
    y, _ = linear_memory(*inp.values(), None, **kw)
    tail = {n: None if x is None else x[:, :, r:] for n, x in inp.items()}
    y_fresh, _ = linear_memory(*tail.values(), None, **kw)
    torch.testing.assert_close(y[:, :, r:], y_fresh, atol=1e-12, rtol=1e-12)


def test_decay_matrix_values_and_gradcheck():
    """The segment-sum decay matrix against its definition, and its hand-written backward against
    finite differences (finite entries, a strongly decaying one among them)."""
    from nlsearch.ops.blocks import decay_matrix
    g = torch.Generator().manual_seed(0)
    x = -torch.rand(2, 3, 9, generator=g, dtype=torch.float64)
    x[:, :, 4] = -80.0
    r = decay_matrix(x)
    length = x.shape[-1]
    expected = torch.zeros(2, 3, length + 1, length, dtype=torch.float64)
    for t in range(length + 1):
        for s in range(1, t + 1):
            expected[:, :, t, s - 1] = torch.exp(x[:, :, s:t].sum(-1))       # x_r for s < r ≤ t
    torch.testing.assert_close(r, expected, atol=0, rtol=1e-13)
    leaf = x[:1, :1].clone().requires_grad_()
    assert torch.autograd.gradcheck(decay_matrix, (leaf,), eps=1e-6, atol=1e-8)
    full_reset = x.clone()
    full_reset[:, :, 2] = -math.inf
    assert torch.isfinite(decay_matrix(full_reset)).all()
