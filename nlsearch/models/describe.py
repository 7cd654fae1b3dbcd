"""``nlsearch describe``: size, state, compute and the nesting profile of a model config."""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from nlsearch.config import config_hash
from nlsearch.models.backbone import ModelConfig
from nlsearch.nesting import Level, dedupe, order_levels

WEIGHTS = Level("weights", "parameters (and the meta-learned initial fast weights)", "steps", 1,
                "LM loss (next token)", "parameters")


def nesting_levels(cfg: ModelConfig) -> List[Level]:
    """Every level of the model, fastest first; ``len`` of it is the nesting depth."""
    levels = list(cfg.mixer.levels()) + list(cfg.mlp.levels()) + [WEIGHTS] + list(cfg.optimizer.levels())
    return order_levels(dedupe(levels))


def _matmul_params(module: nn.Module) -> int:
    """Weights multiplied once per token by one application of ``module``: every nn.Linear in it."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def flops_per_token(cfg: ModelConfig, model: nn.Module, seq_len: int) -> float:
    """Forward FLOPs per token, estimated: 2 per weight of every linear map per application (the
    blocks run ``loops`` times; the head, tied or not, once), plus what each mixer reports for its
    sequence work (``flops_per_token(seq_len)``; mixers without it count 0), per application."""
    extra = sum(getattr(m, "flops_per_token", lambda _: 0)(seq_len) for m in model.blocks.modules())
    return 2.0 * (cfg.loops * _matmul_params(model.blocks) + _matmul_params(model.head)) + cfg.loops * extra


def meta_model(cfg: ModelConfig) -> torch.nn.Module:
    """``cfg`` built on the meta device: shapes only, nothing allocated. Raises ValueError naming the
    model when even its shapes cannot exist (a tensor's element count overflows)."""
    try:
        with torch.device("meta"):
            return cfg.build()
    except RuntimeError as err:
        raise ValueError(f"model {cfg.name or '(unnamed)'} cannot be built: {err}") from None


def describe(cfg: ModelConfig, seq_len: int = 512) -> Dict[str, Any]:
    """Size, state, FLOPs per token and levels of ``cfg``, from the model built on the meta device:
    shapes only, no memory allocated, so describing a model that could never fit is instant."""
    model = meta_model(cfg)
    levels = nesting_levels(cfg)
    embedding = model.embed.weight.numel()
    params = sum(p.numel() for p in model.parameters())
    return {
        "name": cfg.name or "(unnamed)",
        "config_sha256": config_hash(cfg),
        "params": params,
        "params_non_embedding": params - embedding,
        "state_size": model.state_size(seq_len),
        "seq_len": seq_len,
        "flops_per_token": flops_per_token(cfg, model, seq_len),
        "nesting_depth": len(levels),
        "levels": [lv.as_row() for lv in levels],
    }
