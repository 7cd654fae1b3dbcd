"""The whole grid of memory rules (not only the presets) against loops written here from the update
equations (README, "Memory rules"), with no library helper: read order, decay order, momentum,
mini-batches, dot/l2, MLP depth and residual."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from memory_inputs import memory_inputs, mlp_state
from nlsearch.ops import linear_memory, mlp_memory

TOL = dict(atol=1e-9, rtol=1e-9)


def _linear_reference(q, k, v, eta, log_alpha, theta, objective, order, chunk, read):
    b, h, t, dk = q.shape
    m = q.new_zeros(b, h, v.shape[-1], dk)
    s = torch.zeros_like(m)
    ys = []
    for i in range(t):
        if i % chunk == 0:
            anchor, since = m, torch.ones(b, h, 1, 1, dtype=q.dtype)
        a = log_alpha[:, :, i, None, None].exp() if log_alpha is not None else torch.ones(b, h, 1, 1, dtype=q.dtype)
        since = since * a
        at = since * anchor if order == "before_step" else anchor
        kt, vt = k[:, :, i, :, None], v[:, :, i, :, None]                       # column vectors
        grad = ((at @ kt - vt) if objective == "l2" else -vt) @ kt.mT
        step = -eta[:, :, i, None, None] * grad
        if theta is not None:
            s = theta[:, :, i, None, None] * s + step
            step = s
        new = a * m + step
        ys.append(((new if read == "after_write" else m) @ q[:, :, i, :, None])[..., 0])
        m = new
    return torch.stack(ys, 2), m


@pytest.mark.parametrize("objective,order,read,decay,momentum",
                         list(itertools.product(["dot", "l2"], ["with_step", "before_step"],
                                                ["after_write", "before_write"], [False, True], [False, True])))
@pytest.mark.parametrize("chunk", [1, 3])
def test_linear_grid(objective, order, read, decay, momentum, chunk):
    inp = memory_inputs(t=20, dv=4, decay=decay, momentum=momentum)
    y, state = linear_memory(*inp.values(), objective=objective, decay_order=order, chunk=chunk, read=read)
    y_ref, m_ref = _linear_reference(*inp.values(), objective, order, chunk, read)
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(state.weights[0], m_ref, **TOL)


def _mlp(ws, x, residual, act):
    hid = x
    for i, w in enumerate(ws):
        hid = (w @ hid[..., None])[..., 0]
        if i < len(ws) - 1:
            hid = act(hid)
    return hid + x if residual else hid


def _mlp_reference(q, k, v, eta, log_alpha, theta, ws, objective, chunk, read, residual, act):
    ws = [w.clone() for w in ws]
    s = [torch.zeros_like(w) for w in ws]
    ys = []
    for i in range(q.shape[2]):
        if i % chunk == 0:
            anchor = [w.detach().requires_grad_() if not w.requires_grad else w for w in ws]
        out = _mlp(anchor, k[:, :, i], residual, act)
        loss = 0.5 * (out - v[:, :, i]).square().sum() if objective == "l2" else -(out * v[:, :, i]).sum()
        grads = torch.autograd.grad(loss, anchor, create_graph=True)
        a = log_alpha[:, :, i, None, None].exp() if log_alpha is not None else 1.0
        steps = [-eta[:, :, i, None, None] * g for g in grads]
        if theta is not None:
            s = [theta[:, :, i, None, None] * si + st for si, st in zip(s, steps)]
            steps = s
        new = [a * w + st for w, st in zip(ws, steps)]
        ys.append(_mlp(new if read == "after_write" else ws, q[:, :, i], residual, act))
        ws = new
    return torch.stack(ys, 2), ws


@pytest.mark.parametrize("objective,read,residual,depth,act", [
    ("dot", "after_write", True, 2, "silu"), ("l2", "before_write", True, 2, "gelu"),
    ("l2", "after_write", False, 3, "silu"), ("dot", "before_write", False, 1, "gelu")])
@pytest.mark.parametrize("decay,momentum,chunk", [(False, False, 1), (True, True, 4)])
def test_mlp_grid(objective, read, residual, depth, act, decay, momentum, chunk):
    inp = memory_inputs(t=13, decay=decay, momentum=momentum, eta_max=0.1)
    state = mlp_state(depth=depth, momentum=False)
    y, out = mlp_memory(*inp.values(), state._replace(momentum=tuple(torch.zeros_like(w) for w in state.weights)
                                                      if momentum else None),
                        objective=objective, chunk=chunk, read=read, activation=act, residual=residual)
    fn = {"silu": F.silu, "gelu": F.gelu}[act]
    y_ref, ws_ref = _mlp_reference(*inp.values(), state.weights, objective, chunk, read, residual, fn)
    torch.testing.assert_close(y, y_ref, **TOL)
    for a, b in zip(out.weights, ws_ref):
        torch.testing.assert_close(a, b, **TOL)
