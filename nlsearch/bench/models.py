"""``nlsearch bench models``: training throughput and memory of every preset at a small size."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from nlsearch.bench.ops import pick_device
from nlsearch.bench.timing import measure_many
from nlsearch.models import list_presets, load_model_config
from nlsearch.provenance import provenance
from nlsearch.runtime import tune_process



def has_bounded_state(name: str) -> bool:
    """True for recurrent models: their state per sequence does not grow with the length (a full
    attention KV cache does, and ``state_size()`` without a length refuses to answer for it)."""
    try:
        load_model_config(name).build().state_size()
    except ValueError:
        return False
    return True


@dataclass
class ModelsBenchConfig:
    presets: Sequence[str] = ()              # empty: every preset
    lengths: Sequence[int] = (512, 4096)
    batch: int = 8
    d_model: int = 128
    n_layers: int = 2
    repeats: int = 3
    device: str = "auto"


def make_train_step(name: str, cfg: ModelsBenchConfig, t: int, device: torch.device) -> Callable:
    """One training step (forward, loss, backward, optimizer step) of preset ``name``; returns the loss
    graph's root so :func:`measure_many` can time forward+backward, with the optimizer step folded in."""
    mc = load_model_config(name).model_copy(update={"d_model": cfg.d_model, "n_layers": cfg.n_layers})
    model = mc.build().to(device)
    opt = mc.optimizer.build(model)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, mc.vocab_size, (cfg.batch, t + 1), generator=gen).to(device)
    pending = []

    def step():
        if pending:                          # the previous step's backward has run: apply it
            opt.step()
            opt.zero_grad(set_to_none=True)
        pending.append(1)
        logits, _ = model(tokens[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    return step


def run_models_bench(cfg: ModelsBenchConfig, log: Optional[Callable[[str], None]] = None) -> pd.DataFrame:
    tune_process()
    device = pick_device(cfg.device)
    prov = provenance(device)
    names = list(cfg.presets) or list_presets()
    unknown = sorted(set(names) - set(list_presets()))
    if unknown:
        raise KeyError(f"unknown model presets {unknown}; known: {list_presets()}")
    rows: List[Dict] = []
    for t in cfg.lengths:
        steps = {}
        for name in names:
            torch.manual_seed(0)
            steps[name] = make_train_step(name, cfg, t, device)
        results = measure_many(steps, device, repeats=cfg.repeats, budget_s=30.0)   # presets in turn
        for name, res in results.items():
            tokens = cfg.batch * t
            rows.append(dict(preset=name, T=t, B=cfg.batch, d_model=cfg.d_model, n_layers=cfg.n_layers,
                             seconds=res["seconds"], tokens_per_s=tokens / res["seconds"],
                             saved_bytes=res["saved_bytes"], saved_bytes_per_token=res["saved_bytes"] / tokens,
                             peak_bytes=res["peak_bytes"], device=device.type, threads=torch.get_num_threads(), **prov))
            if log:
                log(f"{name:>16} T={t:>5} {res['seconds'] * 1e3:9.1f} ms {tokens / res['seconds']:>9.0f} tok/s "
                    f"{res['saved_bytes'] / 2**20:7.1f} MiB")
    return pd.DataFrame(rows)


def _get(df: pd.DataFrame, name: str, t: int, col: str = "seconds") -> float:
    sel = df[(df.preset == name) & (df["T"] == t)]
    return float(sel[col].iloc[0]) if len(sel) else math.nan


def model_floor_checks(df: pd.DataFrame) -> pd.DataFrame:
    checks = []
    lo, hi = min(df["T"]), max(df["T"])
    for name in sorted(n for n in set(df.preset) if has_bounded_state(n)):
        ratio = (_get(df, name, hi) / hi) / (_get(df, name, lo) / lo)
        checks.append(dict(check=f"{name} time per token, T={hi} / T={lo}", value=ratio, floor="<= 2",
                           ok=None if math.isnan(ratio) else bool(ratio <= 2)))
    for name, t, most in RATIO_FLOORS:             # the baseline-speed floors: step time / the Transformer's
        ratio = _get(df, name, t) / _get(df, "transformer", t)
        checks.append(dict(check=f"{name} step / transformer step, T={t}", value=ratio,
                           floor=f"< {most}" if most == 1.0 else f"<= {most}",
                           ok=None if math.isnan(ratio) else bool(ratio < most if most == 1.0 else ratio <= most)))
    return pd.DataFrame(checks)


RATIO_FLOORS = (("mamba", 512, 3.0), ("mamba", 4096, 2.5), ("mamba2", 512, 1.5), ("mamba2", 4096, 1.0),
                ("hope", 512, 4.0))
"""(preset, T, largest step-time ratio to the Transformer); 1.0 reads "faster than it"."""
