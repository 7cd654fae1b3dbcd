"""Tiny spaces and budgets for the search tests: a trial trains a 2-layer d=32 model for a few steps."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import yaml

from nlsearch.budgets import BUDGETS


def tiny_budget(steps: int = 8, interval: int = 4) -> Dict[str, Any]:
    """The smoke profile shrunk: recall at T=128, ``steps`` steps, a report every ``interval``."""
    data = BUDGETS["smoke"].model_dump(mode="json")
    data.update(name="tiny", version=1, eval_interval=interval, checkpoint_interval=interval, threads=1)
    data["recall"] = {"steps": steps, "batch_size": 2, "train_lengths": [128], "eval_lengths": [128],
                      "eval_size": 4}
    return data


def tiny_space(name: str = "tiny", trials: int = 3, steps: int = 8, **overrides: Any) -> Dict[str, Any]:
    space = {
        "name": name,
        "tasks": ["recall_small"],
        "budget": tiny_budget(steps),
        "trials": trials,
        "objectives": [{"metric": "recall_small:accuracy", "direction": "maximize"}],
        "sampler": {"kind": "random"},
        "pruner": {"kind": "none"},
        "base": "transformer",
        "fixed": {"d_model": 32, "n_layers": 1},
        "params": {
            "mixer": {"choices": {"attention": {"kind": "attention", "n_heads": 2},
                                  "deltanet": {"kind": "memory", "n_heads": 2, "rule": "deltanet"}}},
            "lr": {"float": [1e-3, 3e-3], "log": True, "path": "optimizer.lr"},
        },
    }
    space.update(overrides)
    return space


def write_space(folder: Path, space: Dict[str, Any]) -> Path:
    path = Path(folder) / f"{space['name']}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path
