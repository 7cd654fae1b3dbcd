"""``nlsearch bench models``: training throughput and memory of every preset at a small size.

With ``compile`` (``--compile``) each preset whose layers have a sequential step (``nlsearch.runtime.
step_function``) is also timed with that step compiled, in the same round-robin as the eager steps:
``compiled_seconds`` (the median compiled step), ``compile_seconds`` (the first compiled step, which
compiles, less the median one: from scratch, torch's compile caches reset and an empty inductor cache
folder for each preset and length, since presets share step functions and shapes: after ``hope`` the
``cms`` preset's MLP-memory step compiled in 0.3 s) and ``step_functions`` (how many step functions
its forward passes through; 0: nothing to compile, the compiled columns are NaN). Before the timed
round-robin the caches are reset once more and every compiled step compiles again (from its warm
folder), so no reset falls between timed runs. ``seconds`` stays the eager
step. Runs choose compiled steps from this table (``nlsearch.train.plan.choose_compile``).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from nlsearch.bench.ops import pick_device
from nlsearch.bench.timing import measure_many
from nlsearch.models import list_presets, load_model_config
from nlsearch.provenance import provenance
from nlsearch.runtime import compiled_steps, forget_compiled_steps, step_functions_seen, tune_process



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
    compile: bool = False                    # also time each preset's compiled layer steps (and the compile)


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


def _in_mode(step: Callable, on: bool, cache: Optional[str] = None) -> Callable:
    """``step`` with the layers' steps compiled (``on``) or eager, whatever ``NLSEARCH_COMPILE`` says;
    ``cache``: the inductor cache folder its compiles read and write."""
    def run():
        if cache is not None:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        with compiled_steps(on):
            return step()
    return run


def _first_compiled_step(name: str, cfg: ModelsBenchConfig, t: int, device: torch.device, cache: str):
    """A fresh compiled training step of ``name``, its first run timed from scratch (compile caches
    reset, empty inductor folder): (step, seconds of that first run, step functions seen)."""
    forget_compiled_steps()
    torch.manual_seed(0)
    step = _in_mode(make_train_step(name, cfg, t, device), True, cache)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    step().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return step, time.perf_counter() - t0, step_functions_seen()


def _max_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


COMPILED = "+compiled"                   # key suffix of a compiled step in one round-robin with the eager ones


def run_models_bench(cfg: ModelsBenchConfig, log: Optional[Callable[[str], None]] = None) -> pd.DataFrame:
    tune_process()
    device = pick_device(cfg.device)
    prov = provenance(device)
    names = list(cfg.presets) or list_presets()
    unknown = sorted(set(names) - set(list_presets()))
    if unknown:
        raise KeyError(f"unknown model presets {unknown}; known: {list_presets()}")
    rows: List[Dict] = []
    run = f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {uuid.uuid4().hex[:6]}"   # rows timed together
    with tempfile.TemporaryDirectory(prefix="nlsearch-inductor-") as caches:
        for t in cfg.lengths:
            steps, first = {}, {}
            for name in names:
                torch.manual_seed(0)
                step = make_train_step(name, cfg, t, device)
                steps[name] = _in_mode(step, False) if cfg.compile else step    # else NLSEARCH_COMPILE decides
            for name in names if cfg.compile else ():
                cache = tempfile.mkdtemp(dir=caches)
                step, seconds, n_fns = _first_compiled_step(name, cfg, t, device, cache)
                first[name] = (seconds, n_fns)
                if n_fns:
                    steps[name + COMPILED] = step
                if log:
                    log(f"{name:>16} T={t:>5} first compiled step {seconds:7.1f} s, {n_fns} step function(s)")
            if cfg.compile:                      # one compile state for the whole round-robin (untimed)
                forget_compiled_steps()
                for name in names:
                    if name + COMPILED in steps:
                        steps[name + COMPILED]().backward()
            results = measure_many(steps, device, repeats=cfg.repeats, budget_s=30.0)   # presets in turn
            if log:
                log(f"T={t}: peak resident memory of this process so far {_max_rss_gib():.1f} GiB")
            for name in names:
                res, tokens = results[name], cfg.batch * t
                row = dict(preset=name, T=t, B=cfg.batch, d_model=cfg.d_model, n_layers=cfg.n_layers,
                           seconds=res["seconds"], tokens_per_s=tokens / res["seconds"],
                           saved_bytes=res["saved_bytes"], saved_bytes_per_token=res["saved_bytes"] / tokens,
                           peak_bytes=res["peak_bytes"], device=device.type, threads=torch.get_num_threads(),
                           run=run, **prov)
                if cfg.compile:
                    fast = results.get(name + COMPILED, {}).get("seconds", math.nan)
                    row.update(compiled_seconds=fast, compile_seconds=first[name][0] - fast,
                               step_functions=first[name][1])
                rows.append(row)
                if log:
                    extra = (f"  compiled {fast * 1e3:9.1f} ms after {row['compile_seconds']:.1f} s"
                             if cfg.compile and not math.isnan(fast) else "")
                    log(f"{name:>16} T={t:>5} {res['seconds'] * 1e3:9.1f} ms {tokens / res['seconds']:>9.0f} tok/s "
                        f"{res['saved_bytes'] / 2**20:7.1f} MiB{extra}")
    if cfg.compile:
        forget_compiled_steps()
    return pd.DataFrame(rows)


def _get(df: pd.DataFrame, name: str, t: int, col: str = "seconds") -> float:
    sel = df[(df.preset == name) & (df["T"] == t)]
    return float(sel[col].iloc[0]) if len(sel) else math.nan


SAME_SETTING = ("B", "d_model", "n_layers", "device", "threads", "hardware", "torch")
"""What rows measured in different runs must share to sit in one table (``update_rows``)."""


def update_rows(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``old`` with the rows of ``new``'s presets replaced by ``new`` (``bench models --update``: time a
    new preset without timing every other again). Each row keeps the run that timed it (``run``;
    ``git_commit``), and the floors compare only rows of one run. Refuses, naming the column and both
    values, when the two tables were measured in different settings."""
    check_setting(old, {col: sorted(set(map(str, new[col]))) for col in SAME_SETTING if col in new})
    old = old.copy()
    if "run" not in old:
        old["run"] = "before " + str(new["run"].iloc[0]) if "run" in new else "earlier"
    kept = old[~old.preset.isin(set(new.preset))]
    return pd.concat([kept, new], ignore_index=True).sort_values(["T", "preset"], kind="stable",
                                                                 ignore_index=True)


def check_setting(old: pd.DataFrame, setting: Dict[str, List[str]]) -> None:
    """Raises, naming the column and both values, when ``old`` was measured in another setting (a
    column's values as strings) than ``setting``; called before timing with what the config fixes, and
    again with the timed rows."""
    for col, now in setting.items():
        if col in old:
            before = sorted(set(map(str, old[col])))
            if before != now:
                raise ValueError(f"cannot update a table measured with {col}={before} by rows measured with "
                                 f"{col}={now}: time every preset again (without --update)")


def _one_run(df: pd.DataFrame, names: Sequence[str], t: int) -> bool:
    if "run" not in df:
        return True
    return df[(df.preset.isin(names)) & (df["T"] == t)]["run"].nunique() <= 1


def model_floor_checks(df: pd.DataFrame) -> pd.DataFrame:
    checks = []
    lo, hi = min(df["T"]), max(df["T"])
    for name in sorted(n for n in set(df.preset) if has_bounded_state(n)):
        ratio = (_get(df, name, hi) / hi) / (_get(df, name, lo) / lo)
        checks.append(dict(check=f"{name} time per token, T={hi} / T={lo}", value=ratio, floor="<= 2",
                           ok=None if math.isnan(ratio) else bool(ratio <= 2)))
    for name, t, most in RATIO_FLOORS:             # the baseline-speed floors: step time / the Transformer's
        for col, what in (("seconds", "step"), ("compiled_seconds", "compiled step")):
            if col not in df or (col != "seconds" and math.isnan(_get(df, name, t, col))):
                continue
            ratio = _get(df, name, t, col) / _get(df, "transformer", t)
            apart = not _one_run(df, [name, "transformer"], t)        # timed in different runs: no ratio
            ratio = math.nan if apart else ratio
            checks.append(dict(check=f"{name} {what} / transformer step, T={t}"
                               + (" (timed in different runs: not compared)" if apart else ""), value=ratio,
                               floor=f"< {most}" if most == 1.0 else f"<= {most}",
                               ok=None if math.isnan(ratio) else bool(ratio < most if most == 1.0 else ratio <= most)))
    return pd.DataFrame(checks)


RATIO_FLOORS = (("mamba", 512, 3.0), ("mamba", 4096, 2.5), ("mamba2", 512, 1.5), ("mamba2", 4096, 1.0),
                ("hope", 512, 4.0))
"""(preset, T, largest step-time ratio to the Transformer); 1.0 reads "faster than it"."""
