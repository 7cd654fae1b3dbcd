"""A diverged step says where it broke (``nlsearch.train.divergence``): the first module whose output
went non-finite in the failing forward, or the parameters an earlier update broke."""
from __future__ import annotations

import torch

from nlsearch.models import load_model_config
from nlsearch.tasks.batch import TaskBatch
from nlsearch.train import NonFiniteLossError
from nlsearch.train.divergence import divergence_site
from nlsearch.train.loop import train_step
from train_fixtures import TINY_MODEL


def _model():
    torch.manual_seed(0)
    return load_model_config(dict(TINY_MODEL)).build()



def test_the_first_module_to_overflow_is_named_with_what_grew_before_it():
    model = _model()
    x = torch.randint(0, 64, (2, 16))
    assert divergence_site(model, x).startswith("every module's output finite")
    with torch.no_grad():
        model.blocks[0].mlp.gate_up.weight.mul_(1e4)       # finite weights, outputs past float32's range
        model.blocks[0].mlp.down.weight.mul_(1e36)
    site = divergence_site(model, x)
    assert site.startswith("first non-finite output: blocks.0.mlp.down; largest output before it: "
                           "blocks.0.mlp.gate_up"), site


def test_broken_parameters_are_named_before_any_forward():
    model = _model()
    with torch.no_grad():
        model.blocks[0].mixer.qkv.weight[0, 0] = float("nan")
    assert divergence_site(model, torch.randint(0, 64, (2, 16))) == "non-finite parameters: blocks.0.mixer.qkv.weight"


def test_a_diverged_training_step_says_where_and_leaves_the_weights_as_they_were():
    model = _model()
    with torch.no_grad():
        model.blocks[0].mlp.gate_up.weight.mul_(1e4)
        model.blocks[0].mlp.down.weight.mul_(1e36)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, 64, (2, 17))
    batch = TaskBatch(x[:, :-1], x[:, 1:], torch.ones(2, 16, dtype=torch.bool))
    try:
        train_step(model, opt, batch, torch.device("cpu"), 1.0, 7)
    except NonFiniteLossError as err:
        assert err.step == 7 and "first non-finite output: blocks.0.mlp.down" in str(err)
    else:
        raise AssertionError("the step did not diverge")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_non_finite_gradient_stops_the_step_before_any_weight_moves_and_names_the_parameter():
    """A finite loss whose gradient is not (here: one weight's gradient made infinite): clipping would
    turn every updated weight into NaN; the step raises (a diverged outcome) naming that parameter,
    and the weights are as they were."""
    from nlsearch.train.loop import NonFiniteGradientError

    model = _model()
    model.blocks[0].mixer.out.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 64, (2, 17))
    batch = TaskBatch(x[:, :-1], x[:, 1:], torch.ones(2, 16, dtype=torch.bool))
    try:
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), batch, torch.device("cpu"), 1.0, 4)
    except NonFiniteGradientError as err:
        assert isinstance(err, NonFiniteLossError) and err.step == 4
        assert "non-finite gradient at step 4" in str(err), str(err)
        assert "non-finite gradients: blocks.0.mixer.out.weight (1 of" in str(err), str(err)
    else:
        raise AssertionError("the step went on")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
