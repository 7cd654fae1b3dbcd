"""The short causal convolution: the fast form (taps as fused products, hand-written backward) against
``F.conv1d`` (its naive twin) and a per-token sum written from the equation; the layer in pieces with
its carried state equals the layer over the whole sequence; half precision runs in the input's dtype."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlsearch.layers.conv import ShortConv
from nlsearch.ops.conv import causal_conv, causal_conv_naive


def _per_token(x, w):
    """y_t = silu(Σ_k w_k x_{t+k}), one token at a time."""
    taps = w.shape[0]
    return torch.stack([F.silu(sum(w[k] * x[:, t + k] for k in range(taps)))
                        for t in range(x.shape[1] - taps + 1)], dim=1)


@pytest.mark.parametrize("taps", [2, 4])
@pytest.mark.parametrize("length", [1, 2, 7, 65])
def test_fast_equals_naive_and_the_equation_with_gradients(taps, length):
    gen = torch.Generator().manual_seed(length * 10 + taps)
    x = torch.randn(3, length + taps - 1, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(taps, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    dy = torch.randn(3, length, 5, dtype=torch.float64, generator=gen)
    results = []
    for fn in (causal_conv, causal_conv_naive, _per_token):
        y = fn(x, w)
        results.append((y, *torch.autograd.grad(y, (x, w), dy)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(causal_conv, (x, w))


def test_the_layer_in_pieces_with_its_state_equals_the_whole():
    torch.manual_seed(0)
    conv = ShortConv(6, 4).double()
    x = torch.randn(2, 23, 6, dtype=torch.float64)
    whole, end = conv(x)
    ys, state = [], None
    for piece in x.split([1, 2, 9, 11], dim=1):
        y, state = conv(piece, state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), whole)
    torch.testing.assert_close(state, end)
    assert end.shape == (2, 6, 3)
    weight = conv.conv.weight                                           # nn.Conv1d's parameter, as before
    ref = F.silu(F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), weight, groups=6)).transpose(1, 2)
    torch.testing.assert_close(whole, ref)


def test_half_precision_runs_in_the_input_dtype_and_the_weight_gradient_in_the_weights():
    torch.manual_seed(0)
    x32 = torch.randn(2, 40, 8)
    w = torch.randn(4, 8, requires_grad=True)
    x16 = x32.bfloat16().requires_grad_(True)
    y16 = causal_conv(x16, w)
    assert y16.dtype == torch.bfloat16
    y16.float().sum().backward()
    assert w.grad.dtype == torch.float32 and x16.grad.dtype == torch.bfloat16
    ref_w = w.detach().clone().requires_grad_(True)
    causal_conv_naive(x16.detach().float(), ref_w).sum().backward()
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=3e-2, atol=3e-2)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="x \\(B, T \\+ K - 1, C\\)"):
        causal_conv(torch.zeros(2, 5, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="fewer than the K - 1 = 3"):
        causal_conv(torch.zeros(2, 2, 3), torch.zeros(4, 3))
