"""A space compiled to an Optuna define-by-run function: ``sample(space, trial) -> Candidate``.

Each active parameter is asked of the trial in declaration order (so a conditional parameter is only
sampled when its ``when`` holds, and a group's item parameters only for the items that exist); the
sampled values are then placed into the base model config (see ``nlsearch.search.space``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from nlsearch.config import ConfigError, parse_config, read_yaml_mapping
from nlsearch.models.backbone import ModelConfig
from nlsearch.models.build import PRESET_DIR, list_presets
from nlsearch.models.describe import flops_per_token, nesting_levels
from nlsearch.search.space import Param, SearchSpace


@dataclass(frozen=True)
class Candidate:
    sampled: Dict[str, Any]          # Optuna's values by parameter name (labels for labelled choices)
    config: ModelConfig
    facts: Dict[str, float]          # params, state_size, nesting_depth, flops_per_token


def base_mapping(space: SearchSpace) -> Dict[str, Any]:
    """The base config as a mapping: a preset's YAML, a YAML file (relative to the space file) or
    the inline mapping; ``fixed`` merged in."""
    base = space.base
    if isinstance(base, dict):
        data = copy.deepcopy(base)
    elif base in list_presets():
        data = read_yaml_mapping(PRESET_DIR / f"{base}.yaml")
    else:
        path = Path(base)
        if not path.is_absolute() and space.source:
            path = Path(space.source).parent / path
        data = read_yaml_mapping(path)
    return merge(data, space.fixed)


def merge(into: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """A deep merge returning a new mapping; a sub-mapping whose ``kind`` differs replaces the old one."""
    out = copy.deepcopy(into)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and value.get("kind", old.get("kind")) == old.get("kind"):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def place(config: Dict[str, Any], path: str, value: Any) -> Dict[str, Any]:
    """``config`` with ``value`` at the dotted ``path`` (``.`` or empty: merged into the root)."""
    keys = [k for k in path.split(".") if k]
    update: Any = value
    for key in reversed(keys):
        update = {key: update}
    if not isinstance(update, dict):
        raise ConfigError(f"a value placed at the config's root must be a mapping, got {value!r}")
    return merge(config, update)


def _active(when: Dict[str, Any], sampled: Dict[str, Any]) -> bool:
    for name, wanted in when.items():
        options = wanted if isinstance(wanted, list) else [wanted]
        if name not in sampled or sampled[name] not in options:
            return False
    return True


def _suggest(trial, name: str, spec: Param) -> Any:
    if spec.choices is not None:
        return trial.suggest_categorical(name, spec.labels)
    if spec.int is not None:
        return trial.suggest_int(name, spec.int[0], spec.int[1], step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(name, spec.float[0], spec.float[1], step=spec.step, log=spec.log)


def suggest(space: SearchSpace, trial) -> Dict[str, Any]:
    """Asks ``trial`` (an Optuna Trial or FixedTrial) for every active parameter; returns them by name."""
    sampled: Dict[str, Any] = {}
    for name, spec in space.params.items():
        if not _active(spec.when, sampled):
            continue
        if isinstance(spec, Param):
            sampled[name] = _suggest(trial, name, spec)
            continue
        n = trial.suggest_int(name, spec.repeat[0], spec.repeat[1])
        sampled[name] = n
        for i in range(n):
            for item, item_spec in spec.each.items():
                if _active(item_spec.when, sampled):
                    sampled[f"{name}.{i}.{item}"] = _suggest(trial, f"{name}.{i}.{item}", item_spec)
    return sampled


def to_mapping(space: SearchSpace, sampled: Dict[str, Any]) -> Dict[str, Any]:
    """The model config mapping of one set of sampled values."""
    config = base_mapping(space)
    for name, spec in space.params.items():
        if name not in sampled:
            continue
        if isinstance(spec, Param):
            config = place(config, spec.path or name, spec.value(sampled[name]))
            continue
        if sampled[name] == 0:
            continue
        if spec.set:
            config = place(config, spec.path, spec.set)
        for item, item_spec in spec.each.items():
            values = [item_spec.value(sampled[f"{name}.{i}.{item}"]) for i in range(sampled[name])
                      if f"{name}.{i}.{item}" in sampled]
            config = place(config, f"{spec.path}.{item_spec.path or item}", values)
    return config


def _meta_model(config: ModelConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return config.build()


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_facts(config: ModelConfig, seq_len: int) -> Dict[str, float]:
    """Parameter count, state size at ``seq_len``, nesting depth and forward FLOPs/token, counted on
    the meta device (no memory is allocated)."""
    model = _meta_model(config)
    return {"params": float(_n_params(model)),
            "state_size": float(model.state_size(seq_len)),
            "nesting_depth": float(len(nesting_levels(config))),
            "flops_per_token": float(flops_per_token(config, model, seq_len))}


def _count(mapping: Dict[str, Any], field: str, value: int) -> Optional[int]:
    try:
        return _n_params(_meta_model(parse_config(ModelConfig, place(mapping, field, value))))
    except (ConfigError, ValueError):
        return None


def match_params(space: SearchSpace, mapping: Dict[str, Any]) -> Dict[str, Any]:
    """``mapping`` with ``match_params.adjust`` set to the multiple whose parameter count is closest
    to the target (a bisection: the count grows with the width)."""
    spec = space.match_params
    if spec is None:
        return mapping
    grid = list(range(spec.low - spec.low % spec.multiple_of or spec.multiple_of, spec.high + 1, spec.multiple_of))
    lo, hi = 0, len(grid) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        count = _count(mapping, spec.adjust, grid[mid])
        if count is not None and count >= spec.target:
            hi = mid
        else:
            lo = mid + 1
    scored = [(abs(c - spec.target), v) for v in grid[max(lo - 1, 0):lo + 1]
              if (c := _count(mapping, spec.adjust, v)) is not None]
    if not scored:
        raise ConfigError(f"match_params: no {spec.adjust} in [{spec.low}, {spec.high}] builds this config")
    return place(mapping, spec.adjust, min(scored)[1])


def sample(space: SearchSpace, trial, seq_len: int) -> Candidate:
    """The define-by-run function: sampled values -> a validated ModelConfig and its facts."""
    sampled = suggest(space, trial)
    mapping = match_params(space, to_mapping(space, sampled))
    number = getattr(trial, "number", None)
    mapping["name"] = f"{space.name}-{number}" if number is not None else space.name
    where = f"space {space.source or space.name}, sampled {sampled}"
    config = parse_config(ModelConfig, mapping, where)
    return Candidate(sampled, config, model_facts(config, seq_len))


def check_space(space: SearchSpace, seq_len: int, samples: int = 8) -> None:
    """Raises ConfigError (naming the space file and the sampled values) when a random sample of the
    space does not give a valid, buildable model config: a bad file fails before any trial starts."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=space.seed),
                                directions=space.directions)
    for _ in range(samples):
        trial = study.ask()
        try:
            sample(space, trial, seq_len)
        except (ConfigError, ValueError, KeyError, FileNotFoundError) as err:
            raise ConfigError(f"{space.source or space.name}: a sampled candidate is invalid: {err}") from None
        study.tell(trial, [0.0] * len(space.directions))


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def candidate_text(space: SearchSpace, sampled: Dict[str, Any]) -> str:
    """A compact line for tables: ``mixer=deltanet levels=[64/linear, 16/mlp] lr=0.0021``."""
    parts = []
    for name, spec in space.params.items():
        if name not in sampled:
            continue
        if isinstance(spec, Param):
            parts.append(f"{name}={_short(sampled[name])}")
            continue
        items = ["/".join(_short(sampled[f"{name}.{i}.{k}"]) for k in spec.each if f"{name}.{i}.{k}" in sampled)
                 for i in range(sampled[name])]
        parts.append(f"{name}=[{', '.join(items)}]")
    return " ".join(parts)
