"""The mixed-precision policy (nlsearch.ops.precision) and retentions that underflow in training.

CPU bfloat16 autocast runs the same code path as the CUDA one: projections in bfloat16, every memory
op in float32 with its state kept in float32.
"""
import pytest
import torch
import torch.nn.functional as F

from memory_inputs import memory_inputs, mlp_state
from nlsearch.layers.selfmod import ALPHA
from nlsearch.models.describe import nesting_levels
from nlsearch.models import list_presets, load_model_config
from nlsearch.ops import MemoryState, linear_memory, linear_memory_naive, mlp_memory, mlp_memory_naive

MEMORY_FIELDS = {"weights", "momentum", "anchor", "anchor_decay", "ssm"}   # what the policy keeps in float32


def _memory_tensors(state, field=None):
    """(field, tensor) for every tensor of the carried state whose field holds memory (not the
    attention cache or the convolution's last inputs, which keep the projections' dtype)."""
    if isinstance(state, torch.Tensor):
        if field in MEMORY_FIELDS:
            yield field, state
    elif isinstance(state, tuple) and hasattr(state, "_fields"):
        for name, value in zip(state._fields, state):
            yield from _memory_tensors(value, name if field is None or field not in MEMORY_FIELDS else field)
    elif isinstance(state, (tuple, list)):
        for value in state:
            yield from _memory_tensors(value, field)


def _finite_step(name, model, opt, loss, step):
    """One optimizer step, asserting a finite loss and finite gradients first."""
    assert torch.isfinite(loss), f"{name}: loss {loss.item()} at step {step}"
    opt.zero_grad()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{name}: non-finite gradient of {pname}"
    opt.step()


@pytest.fixture
def norm_inputs(monkeypatch) -> list:
    """The dtype of every input ``F.rms_norm`` sees (``nn.RMSNorm`` and the per-head norms both call it)."""
    seen, real = [], F.rms_norm

    def watched(x, *args, **kw):
        seen.append(x.dtype)
        return real(x, *args, **kw)
    monkeypatch.setattr(F, "rms_norm", watched)
    return seen


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_trains_under_bf16_autocast_with_float32_memory_state(name, norm_inputs):
    torch.manual_seed(0)
    cfg = load_model_config(name)
    model = cfg.build()
    opt = cfg.optimizer.build(model)
    gen = torch.Generator().manual_seed(0)
    found = 0
    for step in range(3):
        tokens = torch.randint(0, 64, (2, 48), generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, state = model(tokens[:, :24])
            logits2, state = model(tokens[:, 24:], state)             # a second call on the carried state
            loss = F.cross_entropy(torch.cat([logits, logits2], 1).float().flatten(0, 1), tokens.flatten())
        _finite_step(name, model, opt, loss, step)
        # every norm normalises in float32 (a weighted one's weight is float32: a bfloat16 input would
        # also leave the fused kernel, "Mismatch dtype between input and weight")
        assert norm_inputs and set(norm_inputs) == {torch.float32}, f"{name}: {set(norm_inputs)}"
        for field, t in _memory_tensors(state):
            found += 1
            assert t.dtype == torch.float32, f"{name}: state {field} is {t.dtype}"
    in_context = [lv for lv in nesting_levels(cfg) if lv.clock == "tokens" and lv.memory != "kv-cache"]
    if in_context:                                # a model with fast weights must have shown them
        assert found, f"{name}: no memory state found to check"


def _bf16(inp):
    return {n: None if x is None else x.to(torch.bfloat16) for n, x in inp.items()}


# Measured (seed 0, T=45): output errors 1.0e-3..2.6e-3 relative to the output's largest value (the
# bfloat16 rounding of the result itself, at most 2^-8 = 3.9e-3), state errors 6e-8..4e-7 (float32
# arithmetic; a state kept in bfloat16 would be off by ~1e-3).
OUT_BOUND, STATE_BOUND = 8e-3, 1e-5


@pytest.mark.parametrize("form", ["dot-decay", "gated-delta", "delta-momentum-chunk4", "mlp-titans"])
def test_fast_forms_under_autocast_stay_near_the_float64_result(form):
    mlp = form == "mlp-titans"
    decay, momentum = form != "delta-momentum-chunk4" or mlp, form.startswith("delta-momentum") or mlp
    inp = _bf16(memory_inputs(t=45, decay=decay, momentum=momentum, eta_max=0.1 if mlp else 0.5))
    if mlp:
        state = mlp_state(momentum=True)
        fast, naive, kw = mlp_memory, mlp_memory_naive, dict(objective="l2", chunk=4)
    else:
        state = MemoryState((torch.zeros(2, 2, 6, 6, dtype=torch.float64),),
                            (torch.zeros(2, 2, 6, 6, dtype=torch.float64),) if momentum else None)
        objective = "dot" if form == "dot-decay" else "l2"
        order = "before_step" if form == "gated-delta" else "with_step"
        kw = dict(objective=objective, decay_order=order, chunk=4 if "chunk4" in form else 1)
        fast, naive = linear_memory, linear_memory_naive
    ref_y, ref_s = naive(*(None if x is None else x.double() for x in inp.values()), state, **kw)
    st32 = MemoryState(*(None if xs is None else tuple(x.float() for x in xs) for xs in state[:2]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = fast(*inp.values(), st32, **kw)
    assert y.dtype == torch.bfloat16
    assert all(w.dtype == torch.float32 for w in s.weights + (s.momentum or ()))
    out_err = ((y.double() - ref_y).abs().max() / ref_y.abs().max()).item()
    state_err = max(((a.double() - b).abs().max() / b.abs().max()).item() for a, b in zip(s.weights, ref_s.weights))
    assert out_err <= OUT_BOUND, out_err
    assert state_err <= STATE_BOUND, state_err


def test_the_boundary_keeps_float64_and_rejects_mixed_full_precision():
    inp = memory_inputs(t=5, decay=True)
    y, s = linear_memory(*inp.values(), None)
    assert y.dtype == torch.float64 and s.weights[0].dtype == torch.float64
    mixed = dict(inp, k=inp["k"].float())
    with pytest.raises(TypeError, match="k has dtype torch.float32 but q has dtype torch.float64"):
        linear_memory(*mixed.values(), None)


def _set_retention_bias(model, value):
    """Gate bias of every memory's retention, on half of its heads (the others keep theirs)."""
    done = 0
    for module in model.modules():
        if hasattr(module, "gates") and getattr(getattr(module, "rule", None), "decay", False):
            h = module.h
            with torch.no_grad():
                module.gates.bias.view(-1, h)[1, : h // 2] = value
            done += 1
        if hasattr(module, "gate_bias"):
            with torch.no_grad():
                module.gate_bias[ALPHA, : module.h // 2] = value
            done += 1
    assert done, "no retention gate found"


@pytest.mark.parametrize("name", ["gated-deltanet", "titans-lmm", "hope"])
def test_retention_that_underflows_in_float32_trains_with_finite_loss_and_gradients(name):
    """σ(-120) is 0 in float32 (log α = -120 exactly, by logsigmoid): a full reset at every token of
    those heads; the log-space ops keep loss and gradients finite."""
    assert torch.sigmoid(torch.tensor(-120.0)) == 0.0
    torch.manual_seed(0)
    cfg = load_model_config(name)
    model = cfg.build()
    _set_retention_bias(model, -120.0)
    opt = cfg.optimizer.build(model)
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        tokens = torch.randint(0, 64, (2, 40), generator=gen)
        logits, _ = model(tokens)
        _finite_step(name, model, opt, F.cross_entropy(logits.flatten(0, 1), tokens.flatten()), step)
