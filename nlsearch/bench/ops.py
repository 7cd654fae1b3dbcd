"""``nlsearch bench ops``: forward+backward time, tokens/s and memory of every memory rule (naive and
fast), of causal SDPA attention and of the short causal convolution the recurrent layers put before
their memory (``conv``: fast and ``F.conv1d``, over the 3·H·D channels of a memory layer's q, k, v,
4 taps), over sequence lengths; saved as Parquet under ``results/bench``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from nlsearch.bench.timing import measure_many
from nlsearch.ops import PRESETS, MemoryState, apply_memory, causal_attention, causal_conv, causal_conv_naive
from nlsearch.provenance import provenance
from nlsearch.runtime import tune_process

DEFAULT_T = (256, 512, 1024, 4096, 16384)
CONV_TAPS = 4                        # the presets' conv_size
RECURRENT = tuple(PRESETS)


@dataclass
class OpsBenchConfig:
    lengths: Sequence[int] = DEFAULT_T
    batch: int = 8
    heads: int = 4
    head_dim: int = 32
    rules: Sequence[str] = RECURRENT
    impls: Sequence[str] = ("fast", "naive")
    repeats: int = 5
    max_seconds: float = 30.0        # skip a measurement predicted to take longer than this
    device: str = "auto"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def make_step(rule_name: str, impl: str, cfg: OpsBenchConfig, t: int, device: torch.device) -> Callable:
    """A closure computing one forward pass and returning a scalar loss; leaves require grad.

    Queries and keys are unit vectors, as the memory layer hands them to a rule: the layer's
    normalisation is not part of the rule and is not timed (it would add the same to both forms)."""
    b, h, d = cfg.batch, cfg.heads, cfg.head_dim
    leaf = lambda *s: torch.randn(*s, device=device).requires_grad_()  # noqa: E731
    unit = lambda *s: F.normalize(torch.randn(*s, device=device), dim=-1).requires_grad_()  # noqa: E731
    q, k, v = unit(b, h, t, d), unit(b, h, t, d), leaf(b, h, t, d)
    if rule_name == "sdpa":
        if impl != "fast":
            raise ValueError("sdpa has only the fast form here")
        return lambda: causal_attention(q, k, v).square().mean()
    if rule_name == "conv":
        x, w = leaf(b, t + CONV_TAPS - 1, 3 * h * d), leaf(CONV_TAPS, 3 * h * d)
        conv = causal_conv if impl == "fast" else causal_conv_naive
        return lambda: conv(x, w).square().mean()
    rule = PRESETS[rule_name]
    gates = leaf(3, b, h, t)
    init = []
    if rule.memory == "mlp":
        dims = [d, d * rule.mlp_expansion, d]
        init = [(torch.randn(h, o, i, device=device) * i ** -0.5).requires_grad_() for i, o in zip(dims, dims[1:])]

    def step():
        g = torch.sigmoid(gates)
        eta = g[0] * (1.0 if rule.memory == "linear" else 0.1)
        log_alpha = F.logsigmoid(gates[1]) if rule.decay else None
        theta = g[2] if rule.optimizer == "momentum" else None
        state = None
        if init:
            ws = tuple(w.expand(b, *w.shape) for w in init)
            state = MemoryState(ws, tuple(torch.zeros_like(w) for w in ws) if theta is not None else None)
        y, _ = apply_memory(rule, q, k, v, eta, log_alpha, theta, state, impl=impl)
        return y.square().mean()

    return step


def run_ops_bench(cfg: OpsBenchConfig, log: Optional[Callable[[str], None]] = None) -> pd.DataFrame:
    tune_process()
    device = pick_device(cfg.device)
    prov = provenance(device)
    rows: List[Dict] = []
    cases = [("sdpa", "fast")] + [("conv", i) for i in cfg.impls] + [(r, i) for r in cfg.rules for i in cfg.impls]
    last: Dict[tuple, tuple] = {}
    for t in sorted(cfg.lengths):
        steps = {}
        for name, impl in cases:
            prev = last.get((name, impl))
            grow = (t / prev[0]) ** (2 if name == "sdpa" else 1) if prev else 1.0
            if prev is not None and prev[1] * grow > cfg.max_seconds:
                if log:
                    log(f"skip {name}/{impl} T={t}: predicted {prev[1] * grow:.0f}s > {cfg.max_seconds:.0f}s")
                continue
            torch.manual_seed(0)
            steps[(name, impl)] = make_step(name, impl, cfg, t, device)
        # the forms of one length in turn: a drifting machine shifts fast and naive alike
        results = measure_many(steps, device, repeats=cfg.repeats, budget_s=min(cfg.max_seconds, 20.0))
        for (name, impl), res in results.items():
            last[(name, impl)] = (t, res["seconds"])
            tokens = cfg.batch * t
            rows.append(dict(rule=name, impl=impl, T=t, B=cfg.batch, H=cfg.heads, D=cfg.head_dim,
                             seconds=res["seconds"], tokens_per_s=tokens / res["seconds"],
                             saved_bytes=res["saved_bytes"], saved_bytes_per_token=res["saved_bytes"] / tokens,
                             peak_bytes=res["peak_bytes"], repeats=res["repeats"], device=device.type, **prov))
            if log:
                log(f"{name:>16}/{impl:<5} T={t:>5} {res['seconds'] * 1e3:9.1f} ms "
                    f"{tokens / res['seconds']:>10.0f} tok/s {res['saved_bytes'] / 2**20:7.1f} MiB")
    return pd.DataFrame(rows)


def _get(df: pd.DataFrame, rule: str, impl: str, t: int, col: str = "seconds") -> float:
    sel = df[(df.rule == rule) & (df.impl == impl) & (df["T"] == t)]
    return float(sel[col].iloc[0]) if len(sel) else math.nan


def floor_checks(df: pd.DataFrame) -> pd.DataFrame:
    """The issue's floors as ratios measured in this one run (nan where a measurement was skipped)."""
    checks = []

    def add(what, value, floor, ok):
        checks.append(dict(check=what, value=value, floor=floor, ok=None if math.isnan(value) else bool(ok(value))))

    add("deltanet fast speed-up over naive, T=512", _get(df, "deltanet", "naive", 512) /
        _get(df, "deltanet", "fast", 512), ">= 20", lambda x: x >= 20)
    add("deltanet fast time / SDPA time, T=512", _get(df, "deltanet", "fast", 512) /
        _get(df, "sdpa", "fast", 512), "<= 1.5", lambda x: x <= 1.5)
    for t in sorted(set(df["T"])):
        if t >= 4096:
            add(f"deltanet fast time / SDPA time, T={t}", _get(df, "deltanet", "fast", t) /
                _get(df, "sdpa", "fast", t), "< 1", lambda x: x < 1)
    add("conv fast speed-up over naive (F.conv1d), T=512", _get(df, "conv", "naive", 512) /
        _get(df, "conv", "fast", 512), "> 1", lambda x: x > 1)
    add("titans-lmm fast speed-up over naive, T=512", _get(df, "titans-lmm", "naive", 512) /
        _get(df, "titans-lmm", "fast", 512), ">= 10", lambda x: x >= 10)
    t_hi = max(df["T"])
    for rule in sorted(set(df.rule) - {"sdpa"}):
        for col, label in (("seconds", "time"), ("saved_bytes", "memory")):
            ratio = (_get(df, rule, "fast", t_hi, col) / t_hi) / (_get(df, rule, "fast", 512, col) / 512)
            add(f"{rule} fast {label} per token, T={t_hi} / T=512", ratio, "<= 1.5", lambda x: x <= 1.5)
    return pd.DataFrame(checks)
