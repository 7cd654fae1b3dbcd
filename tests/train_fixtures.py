"""Tiny tasks, models and budgets for the training and evaluation tests (seconds on one CPU thread)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import yaml

from nlsearch.budgets import Budget, KindBudget

TINY_MODEL: Dict[str, Any] = {
    "name": "tiny", "d_model": 32, "n_layers": 1,
    "mixer": {"kind": "attention", "n_heads": 2},
    "mlp": {"kind": "swiglu", "ratio": 2.0},
    "optimizer": {"kind": "adamw", "lr": 0.01},
}

TINY_MEMORY: Dict[str, Any] = {**TINY_MODEL, "name": "tiny-deltanet",
                               "mixer": {"kind": "memory", "n_heads": 2, "rule": "deltanet"}}

SPECS: Dict[str, Dict[str, Any]] = {
    "tiny_recall": {
        "generator": {"name": "mqar", "params": {"vocab_size": 64, "n_pairs": 4, "power_a": 0.01}},
        "lengths": {"train": [32], "eval": [32, 64]},
        "metrics": [{"name": "accuracy", "higher_is_better": True}]},
    "tiny_continual": {
        "generator": {"name": "continual_recall",
                      "params": {"vocab_size": 64, "n_phases": 2, "keys_per_phase": 4, "score": "all"}},
        "lengths": {"train": [32], "eval": [32]},
        "metrics": [{"name": "acc", "higher_is_better": True}, {"name": "bwt", "higher_is_better": True},
                    {"name": "fwt", "higher_is_better": True}]},
    "tiny_lm": {
        "generator": {"name": "lm_bytes", "params": {}},
        "lengths": {"train": [64], "eval": [64]},
        "metrics": [{"name": "bits_per_byte", "higher_is_better": False}]},
    "tiny_needle": {
        "generator": {"name": "needle", "params": {"n_needles": 1, "depths": [0.0, 0.5, 1.0]}},
        "lengths": {"train": [160], "eval": [160, 320]},
        "metrics": [{"name": "exact_match", "higher_is_better": True}, {"name": "accuracy", "higher_is_better": True}]},
    "tiny_drift": {
        "generator": {"name": "drift_recall", "params": {"vocab_size": 64, "n_keys": 4, "n_windows": 2}},
        "lengths": {"train": [48], "eval": [48]},
        "metrics": [{"name": "accuracy", "higher_is_better": True},
                    {"name": "last_window_accuracy", "higher_is_better": True}]},
}


def write_tasks(folder: Path) -> Path:
    """Writes every tiny spec as ``folder/<name>.yaml``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in SPECS.items():
        spec = {"name": name, "version": 1, "description": f"tiny test task {name}", **body}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def tiny_budget(steps: int = 12, eval_interval: int = 4, checkpoint_interval: int = 4, eval_size: int = 16,
                **over: Any) -> Budget:
    kind = KindBudget(steps=steps, batch_size=8, eval_size=eval_size)
    fields = dict(name="tiny", version=1, lm=kind, recall=kind, longctx=kind, continual=kind, warmup=0.1,
                  eval_interval=eval_interval, checkpoint_interval=checkpoint_interval, eval_batch=8, threads=1)
    return Budget(**{**fields, **over})
