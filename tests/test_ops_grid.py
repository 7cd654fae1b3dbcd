"""Fast vs naive forms over the grid of memory rules: outputs, final state, gradients, pieces."""
import itertools

import pytest
import torch

from memory_inputs import memory_inputs, mlp_state
from nlsearch.ops import MemoryState, linear_memory, linear_memory_naive, mlp_memory, mlp_memory_naive

TOL = dict(atol=1e-9, rtol=1e-9)
LINEAR_GRID = list(itertools.product(["dot", "l2"], ["with_step", "before_step"], [False, True], [False, True]))


def _call(fn, inp, state=None, **kw):
    return fn(inp["q"], inp["k"], inp["v"], inp["eta"], inp["log_alpha"], inp["theta"], state, **kw)


def _cut(inp, a, b):
    return {n: None if x is None else x[:, :, a:b] for n, x in inp.items()}


def _assert_states(s1, s2):
    for part in ("weights", "momentum", "anchor"):
        a, b = getattr(s1, part) or (), getattr(s2, part) or ()
        assert len(a) == len(b), part
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, **TOL)
    assert s1.offset == s2.offset
    if s1.offset:
        torch.testing.assert_close(s1.anchor_decay, s2.anchor_decay, **TOL)


@pytest.mark.parametrize("objective,order,decay,momentum", LINEAR_GRID)
@pytest.mark.parametrize("t,chunk", [(1, 1), (63, 1), (100, 1), (257, 1), (100, 4), (257, 16), (63, 100)])
@pytest.mark.parametrize("read", ["after_write", "before_write"])
def test_linear_fast_matches_naive(objective, order, decay, momentum, t, chunk, read):
    inp = memory_inputs(t=t, decay=decay, momentum=momentum)
    kw = dict(objective=objective, decay_order=order, chunk=chunk, read=read)
    y1, s1 = _call(linear_memory_naive, inp, **kw)
    y2, s2 = _call(linear_memory, inp, **kw)
    torch.testing.assert_close(y2, y1, **TOL)
    _assert_states(s1, s2)


@pytest.mark.parametrize("objective,order,decay,momentum", LINEAR_GRID)
@pytest.mark.parametrize("chunk", [1, 5])
def test_linear_gradients_match(objective, order, decay, momentum, chunk):
    inp = memory_inputs(t=37, decay=decay, momentum=momentum, requires_grad=True)
    kw = dict(objective=objective, decay_order=order, chunk=chunk)
    leaves = [x for x in inp.values() if x is not None]
    grads = []
    for fn in (linear_memory_naive, linear_memory):
        y, s = _call(fn, inp, **kw)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * w).sum() + s.weights[0].square().sum() + sum(m.square().sum() for m in s.momentum or ())
        grads.append(torch.autograd.grad(loss, leaves))
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g2, g1, atol=1e-8, rtol=1e-8)


def _linear_loss(y, s):
    """Weights every output and every piece of the final state, so each reaches the gradients."""
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    loss = (y * w).sum() + s.weights[0].square().sum() + sum(m.square().sum() for m in s.momentum or ())
    for a in s.anchor or ():
        loss = loss + a.sin().sum()
    return loss


@pytest.mark.parametrize("objective,order,decay,momentum", LINEAR_GRID)
@pytest.mark.parametrize("chunk,read,block", [(1, "after_write", 4), (3, "before_write", 4), (4, "after_write", 4),
                                              (2, "after_write", 8)])
def test_linear_gradients_match_across_blocks_and_pieces(objective, order, decay, momentum, chunk, read, block):
    """The hand-written backward of the block scan over several blocks, a tail, a piece that starts
    inside an open mini-batch (the prefix) and one that ends inside one (the anchor), against
    autograd through the per-token reference. Leaves include the carried state."""
    t, cut = 29, 6                                    # 6 tokens leave a mini-batch of 4 open
    inp = memory_inputs(t=t, decay=decay, momentum=momentum, requires_grad=True)
    m0 = (0.3 * torch.randn(2, 2, 6, 6, dtype=torch.float64)).requires_grad_()
    s0 = (0.1 * torch.randn(2, 2, 6, 6, dtype=torch.float64)).requires_grad_() if momentum else None
    leaves = [x for x in inp.values() if x is not None] + [m0] + ([s0] if momentum else [])
    kw = dict(objective=objective, decay_order=order, chunk=chunk, read=read)
    grads = []
    for fn, extra in ((linear_memory_naive, {}), (linear_memory, dict(block=block))):
        state = MemoryState((m0,), None if s0 is None else (s0,))
        y1, state = _call(fn, _cut(inp, 0, cut), state, **kw, **extra)
        loss1 = _linear_loss(y1, state)
        y2, state = _call(fn, _cut(inp, cut, t), state, **kw, **extra)
        grads.append(torch.autograd.grad(loss1 + _linear_loss(y2, state), leaves))
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g2, g1, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("objective,order,decay,momentum", [("l2", "before_step", True, False),
                                                            ("l2", "with_step", False, True),
                                                            ("l2", "with_step", False, False),
                                                            ("dot", "with_step", True, False)])
def test_linear_fast_gradcheck(objective, order, decay, momentum):
    """Finite differences, independent of both forms, through three blocks and a tail."""
    inp = memory_inputs(b=1, h=1, t=11, dk=3, dv=2, decay=decay, momentum=momentum, requires_grad=True)
    names = [n for n, x in inp.items() if x is not None]

    def f(*xs):
        full = dict(inp, **dict(zip(names, xs)))
        y, s = _call(linear_memory, full, objective=objective, decay_order=order, chunk=1, block=3)
        return y, s.weights[0]

    assert torch.autograd.gradcheck(f, [inp[n] for n in names], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("objective", ["dot", "l2"])
@pytest.mark.parametrize("decay,momentum", [(False, False), (True, True)])
@pytest.mark.parametrize("t,chunk", [(1, 1), (20, 1), (63, 4), (100, 16)])
@pytest.mark.parametrize("read", ["after_write", "before_write"])
def test_mlp_fast_matches_naive(objective, decay, momentum, t, chunk, read):
    inp = memory_inputs(t=t, decay=decay, momentum=momentum, eta_max=0.1)
    state = mlp_state(momentum=momentum)
    kw = dict(objective=objective, chunk=chunk, read=read)
    y1, s1 = _call(mlp_memory_naive, inp, state, **kw)
    y2, s2 = _call(mlp_memory, inp, state, **kw)
    torch.testing.assert_close(y2, y1, **TOL)
    _assert_states(s1, s2)


@pytest.mark.parametrize("activation,residual,depth", [("gelu", True, 3), ("silu", False, 2), ("gelu", False, 1)])
def test_mlp_shapes_and_activations(activation, residual, depth):
    inp = memory_inputs(t=50, decay=True, momentum=True, eta_max=0.1)
    state = mlp_state(depth=depth, momentum=True)
    kw = dict(objective="l2", chunk=8, activation=activation, residual=residual)
    y1, s1 = _call(mlp_memory_naive, inp, state, **kw)
    y2, s2 = _call(mlp_memory, inp, state, **kw)
    torch.testing.assert_close(y2, y1, **TOL)
    _assert_states(s1, s2)


@pytest.mark.parametrize("chunk", [1, 6])
def test_mlp_gradients_match(chunk):
    inp = memory_inputs(t=30, decay=True, momentum=True, eta_max=0.1, requires_grad=True)
    state = mlp_state(momentum=True, requires_grad=True)
    leaves = [x for x in inp.values() if x is not None] + list(state.weights)
    grads = []
    for fn in (mlp_memory_naive, mlp_memory):
        y, s = _call(fn, inp, state, objective="l2", chunk=chunk)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * w).sum() + sum(x.square().sum() for x in s.weights + s.momentum)
        grads.append(torch.autograd.grad(loss, leaves))
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g2, g1, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("memory", ["linear", "mlp"])
@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_pieces_and_token_by_token(memory, chunk):
    t = 45
    inp = memory_inputs(t=t, decay=True, momentum=True, eta_max=0.1)
    fn = linear_memory if memory == "linear" else mlp_memory
    kw = dict(objective="l2", chunk=chunk)
    state0 = mlp_state(momentum=True) if memory == "mlp" else None
    y_whole, s_whole = _call(fn, inp, state0, **kw)
    for cuts in ([0, 7, 8, 30, t], list(range(t + 1))):
        state, ys = state0, []
        for a, b in zip(cuts[:-1], cuts[1:]):
            y, state = _call(fn, _cut(inp, a, b), state, **kw)
            ys.append(y)
        torch.testing.assert_close(torch.cat(ys, 2), y_whole, **TOL)
        _assert_states(state, s_whole)


def test_block_size_never_changes_the_result():
    inp = memory_inputs(t=130, decay=True, momentum=True)
    ref, _ = _call(linear_memory, inp, objective="l2", chunk=2, block=64)
    for block in (1, 2, 7, 32, 200):
        y, _ = _call(linear_memory, inp, objective="l2", chunk=2, block=block)
        torch.testing.assert_close(y, ref, **TOL)


def test_float32_close_to_float64():
    inp64 = memory_inputs(t=300, decay=True)
    inp32 = {n: None if x is None else x.float() for n, x in inp64.items()}
    y64, _ = _call(linear_memory, inp64, objective="l2", decay_order="before_step")
    y32, _ = _call(linear_memory, inp32, objective="l2", decay_order="before_step")
    torch.testing.assert_close(y32.double(), y64, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("t", [1, 63, 100])
def test_causal_attention_matches_naive(t):
    from nlsearch.ops import causal_attention, causal_attention_naive
    inp = memory_inputs(t=t, requires_grad=True)
    q, k, v = inp["q"], inp["k"], inp["v"]
    y_fast, y_naive = causal_attention(q, k, v), causal_attention_naive(q, k, v)
    torch.testing.assert_close(y_fast, y_naive, **TOL)
    w = torch.linspace(-1, 1, y_fast.numel(), dtype=y_fast.dtype).view_as(y_fast)
    g_fast = torch.autograd.grad((y_fast * w).sum(), (q, k, v))
    g_naive = torch.autograd.grad((y_naive * w).sum(), (q, k, v))
    for a, b in zip(g_fast, g_naive):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("fn", [mlp_memory, mlp_memory_naive])
@pytest.mark.parametrize("read", ["after_write", "before_write"])
def test_mlp_read_from_reads_the_last_heads_only(fn, read):
    """Heads before ``read_from`` are written (same state) but not read; the read heads match the
    full read of the per-token reference, gradients included."""
    inp = memory_inputs(t=21, decay=True, momentum=True, eta_max=0.1, requires_grad=True)
    kw = dict(objective="l2", chunk=4, read=read)
    y_ref, s_ref = _call(mlp_memory_naive, inp, mlp_state(momentum=True), **kw)
    y, s = fn(inp["q"][:, 1:], inp["k"], inp["v"], inp["eta"], inp["log_alpha"], inp["theta"],
              mlp_state(momentum=True), read_from=1, **kw)
    torch.testing.assert_close(y, y_ref[:, 1:], **TOL)
    _assert_states(s, s_ref)
    leaves = [inp[n] for n in ("q", "k", "v", "eta", "log_alpha", "theta")]
    g_ref = torch.autograd.grad(y_ref[:, 1:].sin().sum() + s_ref.weights[0].sum(), leaves)
    g = torch.autograd.grad(y.sin().sum() + s.weights[0].sum(), leaves)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("read_from,heads,match", [(2, 1, "read_from=2 must be below"),
                                                   (1, 2, "must have H - read_from"), (-1, 2, "read_from=-1")])
def test_mlp_read_from_bad_input(read_from, heads, match):
    inp = memory_inputs(t=5)
    with pytest.raises(ValueError, match=match):
        mlp_memory(inp["q"][:, :heads], inp["k"], inp["v"], inp["eta"], None, None, mlp_state(),
                   read_from=read_from)


MLP_RULES = [(False, False), (True, False), (False, True), (True, True)]      # (decay, momentum)


def _mlp_loss(y, s):
    """Weights every output, the final state and an open mini-batch's anchor."""
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    loss = (y * w).sum() + sum(x.square().sum() for x in s.weights + (s.momentum or ()))
    for a in s.anchor or ():
        loss = loss + a.sin().sum()
    return loss


@pytest.mark.parametrize("objective", ["l2", "dot"])
@pytest.mark.parametrize("decay,momentum", MLP_RULES)
@pytest.mark.parametrize("read,read_from", [("after_write", 0), ("before_write", 0), ("after_write", 1)])
def test_mlp_gradients_match_across_pieces(objective, decay, momentum, read, read_from):
    """The hand-written backward of the MLP mini-batch step (mlp_chunk) against autograd through the
    per-token reference: two pieces, the first ending inside an open mini-batch (so the second starts
    at weights apart from its anchor), the carried state as leaves, unread heads (read_from)."""
    t, cut, chunk = 23, 6, 4
    inp = memory_inputs(t=t, decay=decay, momentum=momentum, eta_max=0.2, requires_grad=True)
    state0 = mlp_state(momentum=momentum, requires_grad=True)
    if momentum:
        state0 = state0._replace(momentum=tuple(m.requires_grad_() for m in state0.momentum))
    leaves = [x for x in inp.values() if x is not None] + list(state0.weights) + list(state0.momentum or ())
    kw = dict(objective=objective, chunk=chunk, read=read, read_from=read_from)
    grads = []
    for fn in (mlp_memory_naive, mlp_memory):
        state, loss = state0, 0.0
        for a, b in ((0, cut), (cut, t)):
            piece = _cut(inp, a, b)
            y, state = fn(piece["q"][:, read_from:], piece["k"], piece["v"], piece["eta"], piece["log_alpha"],
                          piece["theta"], state, **kw)
            loss = loss + _mlp_loss(y, state)
        grads.append(torch.autograd.grad(loss, leaves, allow_unused=True))
    for g1, g2 in zip(*grads):
        assert (g1 is None) == (g2 is None)
        if g1 is not None:
            torch.testing.assert_close(g2, g1, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("activation,residual,depth,objective", [("gelu", True, 3, "l2"), ("silu", False, 2, "l2"),
                                                                 ("gelu", False, 1, "l2"), ("silu", True, 3, "dot")])
def test_mlp_gradients_match_across_depths(activation, residual, depth, objective):
    """Depth 1 (no activation), 2 and 3 (two σ'' terms), both activations, with and without the residual;
    in two pieces, the first ending inside a mini-batch (the second starts apart from its anchor)."""
    inp = memory_inputs(t=19, decay=True, momentum=True, eta_max=0.2, requires_grad=True)
    state0 = mlp_state(depth=depth, momentum=True, requires_grad=True)
    leaves = [x for x in inp.values() if x is not None] + list(state0.weights)
    kw = dict(objective=objective, chunk=5, activation=activation, residual=residual)
    grads = []
    for fn in (mlp_memory_naive, mlp_memory):
        state, loss = state0, 0.0
        for a, b in ((0, 7), (7, 19)):
            y, state = _call(fn, _cut(inp, a, b), state, **kw)
            loss = loss + _mlp_loss(y, state)
        grads.append(torch.autograd.grad(loss, leaves))
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g2, g1, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("decay,momentum", [(True, True), (False, False)])
def test_mlp_fast_gradcheck(decay, momentum):
    """Finite differences, independent of both forms, through three mini-batches, a tail and unread heads."""
    inp = memory_inputs(b=1, h=2, t=8, dk=3, dv=3, decay=decay, momentum=momentum, eta_max=0.3, requires_grad=True)
    state = mlp_state(b=1, h=2, d=3, hidden=4, momentum=momentum, requires_grad=True)
    names = [n for n, x in inp.items() if x is not None]
    n_in = len(names)

    def f(*xs):
        full = dict(inp, **dict(zip(names, xs[:n_in])))
        st = MemoryState(tuple(xs[n_in:]), state.momentum)
        y, s = mlp_memory(full["q"][:, 1:], full["k"], full["v"], full["eta"], full["log_alpha"], full["theta"], st,
                          objective="l2", chunk=3, read_from=1)
        return (y, *s.weights)

    assert torch.autograd.gradcheck(f, [inp[n] for n in names] + list(state.weights), eps=1e-6, atol=1e-6)
