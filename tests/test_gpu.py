"""What only a CUDA device can show (marked ``gpu``; ``scripts/gpu-check`` runs them): the fast memory ops
under CUDA bf16 autocast against the float64 naive result, and every preset training under autocast
with its memory state in float32. The same casting logic is tested on the CPU (test_precision.py)."""
import pytest
import torch
import torch.nn.functional as F

from memory_inputs import memory_inputs, mlp_state
from nlsearch.eval.forward import autocast
from nlsearch.models import list_presets, load_model_config
from nlsearch.ops import MemoryState, linear_memory, linear_memory_naive, mlp_memory, mlp_memory_naive
from nlsearch.ops.ssm import selective_scan, selective_scan_naive
from test_precision import OUT_BOUND, STATE_BOUND, _memory_tensors

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False          # float32 inside the ops means float32
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("kind", ["dot-decay", "gated-delta", "mlp-titans"])
def test_fast_memory_ops_under_cuda_autocast(kind):
    mlp = kind == "mlp-titans"
    inp = memory_inputs(t=100, decay=True, momentum=mlp, eta_max=0.1 if mlp else 0.5)
    inp = {n: None if x is None else x.to(torch.bfloat16).double() for n, x in inp.items()}   # bf16 values
    if mlp:
        state, fast, naive, kw = mlp_state(momentum=True), mlp_memory, mlp_memory_naive, dict(objective="l2", chunk=4)
    else:
        state = MemoryState((torch.zeros(2, 2, 6, 6, dtype=torch.float64),))
        fast, naive = linear_memory, linear_memory_naive
        kw = dict(objective="dot" if kind == "dot-decay" else "l2",
                  decay_order="before_step" if kind == "gated-delta" else "with_step")
    ref_y, ref_s = naive(*inp.values(), state, **kw)
    on_gpu = [None if x is None else x.to(CUDA, torch.bfloat16) for x in inp.values()]
    st = MemoryState(*(None if xs is None else tuple(x.to(CUDA, torch.float32) for x in xs) for xs in state[:2]))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, s = fast(*on_gpu, st, **kw)
    assert y.dtype == torch.bfloat16 and s.weights[0].dtype == torch.float32
    assert ((y.double().cpu() - ref_y).abs().max() / ref_y.abs().max()).item() <= OUT_BOUND
    for a, b in zip(s.weights, ref_s.weights):
        assert ((a.double().cpu() - b).abs().max() / b.abs().max()).item() <= STATE_BOUND


def test_selective_scan_on_cuda_matches_the_cpu_reference():
    g = torch.Generator().manual_seed(0)
    x, delta = torch.randn(2, 130, 8, generator=g), 0.01 + 0.5 * torch.rand(2, 130, 8, generator=g)
    a = -torch.rand(8, 4, generator=g).exp()
    b, c = torch.randn(2, 130, 4, generator=g), torch.randn(2, 130, 4, generator=g)
    y_ref, h_ref = selective_scan_naive(*(t.double() for t in (x, delta, a, b, c)))
    y, h = selective_scan(*(t.to(CUDA) for t in (x, delta, a, b, c)))
    torch.testing.assert_close(y.double().cpu(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(h.double().cpu(), h_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_trains_on_cuda_under_autocast(name):
    torch.manual_seed(0)
    cfg = load_model_config(name)
    model = cfg.build().to(CUDA)
    opt = cfg.optimizer.build(model)
    tokens = torch.randint(0, 64, (2, 96), device=CUDA)
    for _ in range(3):
        with autocast(CUDA):
            logits, state = model(tokens)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        assert all(t.dtype == torch.float32 for _, t in _memory_tensors(state))
