"""Bad arguments fail with an error that names the argument."""
import pytest
import torch
from pydantic import ValidationError

from memory_inputs import memory_inputs, mlp_state
from nlsearch.ops import MemoryRule, MemoryState, apply_memory, linear_memory, mlp_memory, preset


def _linear(**over):
    inp = memory_inputs(t=8)
    inp.update(over)
    kw = {n: inp.pop(n) for n in list(inp) if n not in ("q", "k", "v", "eta", "log_alpha", "theta", "state")}
    return linear_memory(inp["q"], inp["k"], inp["v"], inp["eta"], inp["log_alpha"], inp["theta"],
                         inp.get("state"), **kw)


@pytest.mark.parametrize("over,match", [
    (dict(q=torch.zeros(2, 2, 8)), "q must have shape"),
    (dict(k=torch.zeros(2, 2, 9, 6, dtype=torch.float64)), "k must have shape"),
    (dict(k=torch.zeros(2, 2, 8, 5, dtype=torch.float64)), "k has key dim 5"),
    (dict(v=torch.zeros(2, 2, 8, 6, dtype=torch.float32)), "v has dtype"),
    (dict(v=torch.zeros(2, 2, 8, 6, dtype=torch.long)), "v must be a floating-point"),
    (dict(eta=torch.zeros(2, 2, 7, dtype=torch.float64)), "eta must have shape"),
    (dict(log_alpha=torch.zeros(2, 8, dtype=torch.float64)), "log_alpha must have shape"),
    (dict(chunk=0), "chunk=0"),
    (dict(chunk=-3), "chunk=-3"),
    (dict(chunk=2.5), "chunk=2.5"),
    (dict(objective="l3"), "objective='l3'"),
    (dict(decay_order="after"), "decay_order='after'"),
    (dict(read="sometimes"), "read='sometimes'"),
    (dict(block=0), "block=0"),
    (dict(state=MemoryState((torch.zeros(2, 2, 6, 5, dtype=torch.float64),))), "state.weights\\[0\\] reads"),
])
def test_linear_bad_arguments(over, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _linear(**over)


def test_mlp_needs_initial_weights_and_matching_dims():
    inp = memory_inputs(t=4)
    with pytest.raises(ValueError, match="needs state"):
        mlp_memory(*inp.values())
    bad = mlp_state(d=5)
    with pytest.raises(ValueError, match="state.weights\\[0\\]"):
        mlp_memory(*inp.values(), bad)
    with pytest.raises(ValueError, match="activation='tanh'"):
        mlp_memory(*inp.values(), mlp_state(), activation="tanh")


def test_rule_errors_name_the_field():
    with pytest.raises(KeyError, match="unknown memory preset 'deltanett'"):
        preset("deltanett")
    with pytest.raises(ValidationError, match="chunk"):
        MemoryRule(chunk=0)
    with pytest.raises(ValidationError, match="objectiv"):
        MemoryRule(objectiv="dot")
    with pytest.raises(ValidationError, match="before_step"):
        MemoryRule(memory="mlp", decay_order="before_step")
    inp = memory_inputs(t=4)
    with pytest.raises(ValueError, match="log_alpha was not given"):
        apply_memory(preset("gated-deltanet"), inp["q"], inp["k"], inp["v"], inp["eta"])
    with pytest.raises(ValueError, match="impl='slow'"):
        apply_memory(preset("deltanet"), inp["q"], inp["k"], inp["v"], inp["eta"], impl="slow")
