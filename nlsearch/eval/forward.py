"""Forward passes for evaluation: the device, bf16 autocast on CUDA only, and long sequences read in
pieces with the model's state carried from piece to piece."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlsearch.tasks.batch import IGNORE


def pick_device(name: Optional[str] = None) -> torch.device:
    """Returns CUDA when available (``None`` or ``"auto"``), else the named device; raises ValueError
    when CUDA is asked for and absent."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but no CUDA device is available")
    return torch.device(name)


def precision(device: torch.device) -> str:
    """The precision a run on ``device`` trains and evaluates in (part of a run's identity):
    ``bf16-autocast`` on CUDA, ``fp32`` elsewhere."""
    return "bf16-autocast" if device.type == "cuda" else "fp32"


def autocast(device: torch.device) -> ContextManager:
    """bf16 autocast on CUDA; nothing on CPU (float32 there, so CPU runs are bitwise reproducible).
    Memory ops compute in float32 inside either way (:mod:`nlsearch.ops.precision`)."""
    if precision(device) == "bf16-autocast":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """logits (B, T, V), targets (B, T) -> NLL (B, T) float32 in nats, 0 where the target is IGNORE."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")


@torch.no_grad()
def predict(model: nn.Module, inputs: Tensor, targets: Tensor, device: torch.device, batch: int,
            piece: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Reads ``inputs`` (N, T) in groups of ``batch`` sequences and ``piece`` tokens (state carried
    across pieces); returns (argmax predictions (N, T) int64, NLL (N, T) float64 with 0 at unscored
    positions), both on the CPU."""
    was_training = model.training
    model.eval()
    n, t = inputs.shape
    step = piece or t
    preds, nlls = [], []
    try:
        for row in range(0, n, batch):
            x, y = inputs[row: row + batch].to(device), targets[row: row + batch].to(device)
            state, p_parts, n_parts = None, [], []
            for start in range(0, t, step):
                with autocast(device):
                    logits, state = model(x[:, start: start + step], state)       # (b, piece, V)
                p_parts.append(logits.argmax(dim=-1).cpu())
                n_parts.append(token_nll(logits, y[:, start: start + step]).double().cpu())
            preds.append(torch.cat(p_parts, dim=1))
            nlls.append(torch.cat(n_parts, dim=1))
    finally:
        model.train(was_training)
    return torch.cat(preds), torch.cat(nlls)
