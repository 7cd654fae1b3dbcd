"""Selective scan: the chunked form against the per-token reference (outputs, final state, gradients)."""
import math
import pytest
import torch

from nlsearch.ops.ssm import NAMES, selective_scan, selective_scan_naive


def scan_inputs(b=2, t=33, dch=5, n=4, *, dtype=torch.float64, seed=0, skip=True, initial=True,
                requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    out = dict(x=rnd(b, t, dch), delta=0.01 + 0.5 * torch.rand(b, t, dch, generator=g, dtype=dtype),
               A=-rnd(dch, n).exp(), B=rnd(b, t, n), C=rnd(b, t, n),
               D=rnd(dch) if skip else None, h0=rnd(b, dch, n) if initial else None)
    if requires_grad:
        out = {k: None if v is None else v.requires_grad_() for k, v in out.items()}
    return out


def _grads(fn, inp, seed=1):
    y, h = fn(**inp)
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    loss = loss + (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
    leaves = [v for v in inp.values() if v is not None]
    return y, h, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("t", [1, 63, 100, 257])
def test_fast_matches_naive_with_gradients(t):
    inp = scan_inputs(t=t, requires_grad=True)
    y, h, grads = _grads(selective_scan, inp)
    y_ref, h_ref, grads_ref = _grads(selective_scan_naive, inp)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h, h_ref, atol=1e-10, rtol=1e-10)
    for name, gr, gr_ref in zip(NAMES, grads, grads_ref):
        torch.testing.assert_close(gr, gr_ref, atol=1e-9, rtol=1e-9, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
@pytest.mark.parametrize("skip,initial", [(False, False), (True, False), (False, True)])
def test_chunk_is_a_compute_setting(chunk, skip, initial):
    inp = scan_inputs(t=45, skip=skip, initial=initial)
    y, h = selective_scan(**inp, chunk=chunk)
    y_ref, h_ref = selective_scan_naive(**inp)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h, h_ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("fn", [selective_scan, selective_scan_naive])
def test_pieces_with_carried_state_equal_whole(fn):
    inp = scan_inputs(t=100)
    y, h = fn(**inp)
    ys, state = [], inp["h0"]
    for a, b in [(0, 1), (1, 64), (64, 65), (65, 100)]:
        piece = {k: inp[k][:, a:b] for k in ("x", "delta", "B", "C")}
        y_piece, state = fn(**piece, A=inp["A"], D=inp["D"], h0=state)
        ys.append(y_piece)
    torch.testing.assert_close(torch.cat(ys, dim=1), y, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(state, h, atol=1e-10, rtol=1e-10)


def test_strong_decay_does_not_overflow_in_float32():
    inp = scan_inputs(t=130, dtype=torch.float32)
    inp["delta"] = inp["delta"] * 1e3                    # Δ·A down to about −1e4 per token
    y, h = selective_scan(**inp)
    y_ref, h_ref = selective_scan_naive(**inp)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(h, h_ref, atol=1e-4, rtol=1e-4)


def test_empty_sequence_returns_the_initial_state():
    inp = scan_inputs(t=0)
    y, h = selective_scan(**inp)
    assert y.shape == (2, 0, 5)
    torch.testing.assert_close(h, inp["h0"])


@pytest.mark.parametrize("name,value,match", [
    ("x", torch.zeros(2, 8), "x must have shape \\(B, T, Dch\\)"),
    ("x", torch.zeros(2, 8, 5, dtype=torch.long), "x must be a floating-point"),
    ("delta", torch.zeros(2, 7, 5, dtype=torch.float64), "delta must have shape \\(2, 8, 5\\)"),
    ("delta", torch.zeros(2, 8, 5, dtype=torch.float32), "delta has dtype torch.float32"),
    ("A", torch.zeros(5, dtype=torch.float64), "A must have shape \\(Dch, N\\)"),
    ("A", torch.zeros(6, 4, dtype=torch.float64), "A must have shape \\(5, 4\\)"),
    ("B", torch.zeros(2, 8, 3, dtype=torch.float64), "B must have shape \\(2, 8, 4\\)"),
    ("C", [[0.0]], "C must be a torch.Tensor"),
    ("D", torch.zeros(4, dtype=torch.float64), "D must have shape \\(5,\\)"),
    ("h0", torch.zeros(2, 4, 5, dtype=torch.float64), "h0 must have shape \\(2, 5, 4\\)"),
])
@pytest.mark.parametrize("fn", [selective_scan, selective_scan_naive])
def test_bad_inputs_name_the_argument(fn, name, value, match):
    inp = scan_inputs(t=8)
    inp[name] = value
    with pytest.raises((ValueError, TypeError), match=match):
        fn(**inp)


@pytest.mark.parametrize("chunk", [0, -1, 2.5, True])
def test_bad_chunk(chunk):
    with pytest.raises(ValueError, match="chunk="):
        selective_scan(**scan_inputs(t=8), chunk=chunk)


def test_scan_matches_the_s6_equations_written_out():
    """h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] B_t[n] x_t[d];  y_t[d] = Σ_n C_t[n] h_t[d, n]
    + D[d] x_t[d], as scalar loops (no library code), against both library forms."""
    from nlsearch.ops import selective_scan, selective_scan_naive
    g = torch.Generator().manual_seed(7)
    bsz, t, dch, n = 1, 9, 3, 2
    x = torch.randn(bsz, t, dch, generator=g, dtype=torch.float64)
    delta = torch.rand(bsz, t, dch, generator=g, dtype=torch.float64) * 0.5
    a = -torch.rand(dch, n, generator=g, dtype=torch.float64) * 2
    bb, cc = (torch.randn(bsz, t, n, generator=g, dtype=torch.float64) for _ in range(2))
    dd = torch.randn(dch, generator=g, dtype=torch.float64)
    h = [[0.0] * n for _ in range(dch)]
    want = torch.zeros(bsz, t, dch, dtype=torch.float64)
    for s in range(t):
        for d in range(dch):
            for j in range(n):
                h[d][j] = (math.exp(float(delta[0, s, d] * a[d, j])) * h[d][j]
                           + float(delta[0, s, d] * bb[0, s, j] * x[0, s, d]))
            want[0, s, d] = sum(float(cc[0, s, j]) * h[d][j] for j in range(n)) + float(dd[d] * x[0, s, d])
    for fn in (selective_scan_naive, selective_scan):
        y, h_end = fn(x, delta, a, bb, cc, dd)
        torch.testing.assert_close(y, want, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(h_end[0], torch.tensor(h, dtype=torch.float64), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("t", [1, 7, 65, 300])
@pytest.mark.parametrize("chunk", [1, 8, 32])
def test_hand_written_backward_matches_autograd_through_the_naive_scan(t, chunk):
    """Outputs, final state and the gradient of every input (h0 included) at odd lengths, several
    chunk lengths (1: every token its own chunk; 32 > 7: one padded chunk)."""
    inp = scan_inputs(t=t, requires_grad=True, seed=t)
    y, h, grads = _grads(lambda **kw: selective_scan(**kw, chunk=chunk), inp)
    y_ref, h_ref, grads_ref = _grads(selective_scan_naive, inp)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h, h_ref, atol=1e-10, rtol=1e-10)
    for name, gr, gr_ref in zip(NAMES, grads, grads_ref):
        torch.testing.assert_close(gr, gr_ref, atol=1e-9, rtol=1e-9, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("cuts", [(1,), (5, 40), (64, 65)])
def test_gradients_through_pieces_with_carried_state(cuts):
    """The state handed from piece to piece carries gradients back into earlier pieces and into h0."""
    inp = scan_inputs(t=100, requires_grad=True, seed=3)
    leaves = [v for v in inp.values() if v is not None]
    g = torch.Generator().manual_seed(5)
    weights = torch.randn(2, 100, 5, generator=g, dtype=torch.float64)
    grads = []
    for fn in (lambda **kw: selective_scan(**kw, chunk=16), selective_scan_naive):
        bounds = [0, *cuts, 100]
        state, loss = inp["h0"], 0.0
        for a, b in zip(bounds, bounds[1:]):
            piece = {k: inp[k][:, a:b] for k in ("x", "delta", "B", "C")}
            y, state = fn(**piece, A=inp["A"], D=inp["D"], h0=state)
            loss = loss + (y * weights[:, a:b]).sum()
        loss = loss + state.square().sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for name, a, b in zip(NAMES, *grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=lambda m: f"d{name}: {m}")


def test_gradcheck_of_the_chunked_scan():
    """Finite differences, independent of both forms: three chunks and a padded tail."""
    inp = scan_inputs(b=1, t=11, dch=2, n=3, requires_grad=True, seed=9)
    names = [k for k, v in inp.items() if v is not None]

    def f(*xs):
        return selective_scan(**dict(zip(names, xs)), chunk=4)

    assert torch.autograd.gradcheck(f, [inp[k] for k in names], eps=1e-6, atol=1e-7)
