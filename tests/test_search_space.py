"""Space files: validation with file + key path, define-by-run sampling, placement, match_params."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from nlsearch.config import ConfigError
from nlsearch.search import load_space, run_search
from nlsearch.search.sampling import check_space, sample, suggest, to_mapping
from nlsearch.search.space import SearchSpace
from search_fixtures import tiny_space, write_space

SPACES = sorted((Path(__file__).parent.parent / "search_spaces").glob("*.yaml"))


def _space(**overrides) -> SearchSpace:
    return SearchSpace.model_validate(tiny_space(**overrides))


def _params(**extra):
    base = tiny_space()["params"]
    base.update(extra)
    return base


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_spaces_load_and_sample_valid_configs(path):
    space = load_space(path)
    check_space(space, seq_len=128, samples=4)


def test_shipped_spaces_include_the_required_ones():
    names = {p.stem for p in SPACES}
    assert {"nesting_depth", "objectives", "cms_frequencies", "depth_vs_nesting", "hope"} <= names


@pytest.mark.parametrize("change, where", [
    ({"params": {"lr": {"float": [1e-3, 3e-3], "colour": 1}}}, "params.lr"),
    ({"params": {"lr": {"int": [5, 1]}}}, "low > high"),
    ({"params": {"lr": {"float": [0.0, 1.0], "log": True}}}, "log scale"),
    ({"params": {"a": {"choices": [1, 2], "when": {"b": 1}}, "b": {"choices": [1]}}}, "params.a.when"),
    ({"objectives": [{"metric": "lm:bits_per_byte", "direction": "minimize"}]}, "not in tasks"),
    ({"objectives": [{"metric": "recall_small:accuracy", "direction": "up"}]}, "objectives.0.direction"),
    ({"sampler": {"kind": "grid"}}, "sampler.kind"),
    ({"objectives": [{"metric": "recall_small:accuracy", "direction": "maximize"},
                     {"metric": "params", "direction": "minimize"}], "pruner": {"kind": "median"}}, "multi-objective"),
])
def test_bad_space_names_file_and_key(tmp_path, change, where):
    path = write_space(tmp_path, tiny_space(**change))
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert str(path) in str(err.value) and where in str(err.value)


def test_bad_candidate_fails_before_any_trial_and_writes_nothing(tmp_path):
    params = _params(heads={"choices": [3], "path": "mixer.n_heads"})    # 3 does not divide d_model 32
    path = write_space(tmp_path, tiny_space(params=params))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="n_heads"):
        run_search(path, out=out, log=lambda m: None)
    assert not out.exists()


def test_unknown_task_metric_is_refused_before_any_trial(tmp_path):
    path = write_space(tmp_path, tiny_space(objectives=[{"metric": "recall_small:bleu", "direction": "maximize"}]))
    with pytest.raises(ValueError, match="recall_small reports"):
        run_search(path, out=tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_conditional_param_is_sampled_only_when_its_condition_holds():
    space = _space(params=_params(window={"int": [8, 64], "when": {"mixer": "attention"}, "path": "mixer.window"}))
    for mixer in ("attention", "deltanet"):
        sampled = suggest(space, optuna.trial.FixedTrial({"mixer": mixer, "lr": 1e-3, "window": 16}))
        assert ("window" in sampled) == (mixer == "attention")
        mapping = to_mapping(space, sampled)
        assert mapping["mixer"].get("window") == (16 if mixer == "attention" else None)


def test_switching_kind_replaces_the_mixer_and_same_kind_merges():
    space = _space()
    mapping = to_mapping(space, {"mixer": "deltanet", "lr": 2e-3})
    assert mapping["mixer"] == {"kind": "memory", "n_heads": 2, "rule": "deltanet"}     # no attention leftovers
    assert mapping["optimizer"]["lr"] == 2e-3 and mapping["optimizer"]["weight_decay"] == 0.1   # merged


def _levels_space() -> SearchSpace:
    group = {"repeat": [0, 3], "path": "mlp", "set": {"kind": "cms", "clock": "tokens", "n_heads": 2},
             "each": {"period": {"choices": [4, 16], "path": "periods"},
                      "objective": {"choices": ["dot", "l2"]}}}
    return _space(params={"levels": group})


def test_repeated_group_collects_one_list_per_item_param():
    space = _levels_space()
    fixed = {"levels": 2, "levels.0.period": 16, "levels.0.objective": "dot",
             "levels.1.period": 4, "levels.1.objective": "l2"}
    cand = sample(space, optuna.trial.FixedTrial(fixed), seq_len=128)
    assert cand.config.mlp.kind == "cms" and cand.config.mlp.periods == (16, 4)
    assert cand.config.mlp.objective == ("dot", "l2")
    zero = sample(space, optuna.trial.FixedTrial({"levels": 0}), seq_len=128)
    assert zero.config.mlp.kind == "swiglu"                         # no items: the base stands
    assert cand.facts["nesting_depth"] == zero.facts["nesting_depth"] + 2


def test_group_items_beyond_the_count_are_not_asked():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        sampled = suggest(_levels_space(), trial)
        n = sampled["levels"]
        assert set(trial.params) == {"levels"} | {f"levels.{i}.{k}" for i in range(n) for k in ("period", "objective")}
        study.tell(trial, 0.0)


def test_match_params_picks_the_width_closest_to_the_target():
    target = 200_000
    space = _space(match_params={"target": target, "adjust": "d_model", "multiple_of": 16, "low": 16, "high": 512})
    cand = sample(space, optuna.trial.FixedTrial({"mixer": "attention", "lr": 1e-3}), seq_len=128)
    d = cand.config.d_model
    assert d % 16 == 0

    def count(width):
        cfg = cand.config.model_copy(update={"d_model": width})
        with torch.device("meta"):
            return sum(p.numel() for p in cfg.build().parameters())
    error = abs(count(d) - target)
    assert error <= abs(count(d - 16) - target) and error <= abs(count(d + 16) - target)


def test_a_group_item_condition_must_name_an_earlier_parameter(tmp_path):
    group = {"repeat": [1, 2], "each": {"period": {"choices": [4], "when": {"later": 1}}}}
    params = {"levels": group, "later": {"choices": [1, 2]}}
    path = write_space(tmp_path, tiny_space(params=params))
    with pytest.raises(ConfigError, match="params.levels.each.period.when names 'later'"):
        load_space(path)
