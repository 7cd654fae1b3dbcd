"""``scripts/gpu-check``: what only a GPU machine can show, in one run of a few minutes.

1. ``presets``: every preset trains on ``recall_small`` for the ``smoke`` budget with ``--device cuda``
   (bf16 autocast, memory ops in float32): status, final loss, seconds.
2. ``gpu tests``: ``pytest -m gpu`` (fast ops under CUDA autocast against the float64 naive result,
   every preset under autocast with float32 state, placement).
3. ``bench``: ``bench models`` at T=512 and 4096 on CUDA: tokens/s and peak memory per preset, saved
   as ``results/bench/models-cuda.{parquet,md}``.
4. ``search``: a 2-trial search of a smoke-budget space with ``--workers auto`` (trials placed on the
   GPUs by Ray), and the device each trial's record names.

Prints one summary table (check, status, seconds, detail) and writes it to
``results/bench/gpu-check-cuda.md``. Exit code 1 when a check failed, 2 without a CUDA device.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import pandas as pd
import torch

from nlsearch.display import markdown_table
from nlsearch.io import write_text

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results" / "bench"

SPACE = """name: gpu_check
description: two smoke-budget trials placed by Ray on the GPUs
tasks: [recall_small]
budget: smoke
seeds: [0]
trials: 2
objectives:
  - {metric: recall_small:accuracy, direction: maximize}
sampler: {kind: random}
seed: 0
base: transformer
fixed: {d_model: 64, n_layers: 1}
params:
  lr: {float: [1.0e-3, 6.0e-3], log: true, path: optimizer.lr}
resources: {cpus_per_trial: 1, gpus_per_trial: 0.5}
"""


def _presets(work: Path) -> str:
    from nlsearch.models import list_presets
    from nlsearch.train import train

    bad = []
    for name in list_presets():
        try:
            result = train(name, "recall_small", "smoke", 0, run_dir=work / "presets" / name, device="cuda")
            loss = result.losses[-1] if result.losses else float("nan")
            if result.status != "completed" or not loss == loss:
                bad.append(f"{name}: {result.status}, loss {loss}")
        except Exception as err:                 # noqa: BLE001 - every preset is reported
            bad.append(f"{name}: {type(err).__name__}: {err}"[:200])
    if bad:
        raise RuntimeError("; ".join(bad))
    return f"{len(list_presets())} presets trained"


def _gpu_tests(work: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    if proc.returncode != 0:
        raise RuntimeError(last)
    return last


def _bench(work: Path) -> str:
    from rich.console import Console

    from nlsearch.bench.models import ModelsBenchConfig, model_floor_checks, run_models_bench
    from nlsearch.bench.report import report

    df = run_models_bench(ModelsBenchConfig(lengths=(512, 4096), repeats=3, device="cuda"))
    report(Console(), df, model_floor_checks(df), ["preset", "T", "seconds", "tokens_per_s", "peak_bytes"],
           "bench models on CUDA (scripts/gpu-check)", OUT, "models-cuda")
    best = df[df["T"] == 4096].sort_values("tokens_per_s", ascending=False).head(3)
    return "fastest at T=4096: " + ", ".join(f"{r.preset} {r.tokens_per_s:.3g} tok/s" for r in best.itertuples())


def _search(work: Path) -> str:
    space = work / "gpu_check.yaml"
    space.write_text(SPACE)
    proc = subprocess.run([sys.executable, "-m", "nlsearch.cli", "search", str(space), "--workers", "auto",
                           "--out", str(work / "search"), "--quiet", "--no-plots"],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])
    devices = sorted({json.loads(rec.read_text())["device"] for rec in (work / "search").rglob("record.json")})
    return f"2 trials, devices {devices}"


CHECKS: Dict[str, Callable[[Path], str]] = {"presets": _presets, "gpu tests": _gpu_tests, "bench": _bench,
                                            "search": _search}


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run it on a machine with an NVIDIA GPU")
        return 2
    rows: List[Dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name, check in CHECKS.items():
            start = time.perf_counter()
            try:
                detail, status = check(Path(tmp)), "ok"
            except Exception as err:             # noqa: BLE001 - every check is reported
                detail, status = " ".join(str(err).split())[:300], "FAIL"
            rows.append({"check": name, "status": status, "seconds": f"{time.perf_counter() - start:.0f}",
                         "detail": detail})
            print(f"{name}: {status} ({rows[-1]['seconds']} s) {detail}", flush=True)
    table = pd.DataFrame(rows)
    text = f"# scripts/gpu-check on {torch.cuda.get_device_name(0)}\n\n" + markdown_table(table) + "\n"
    write_text(text, OUT / "gpu-check-cuda.md")
    print(text)
    return 1 if (table.status != "ok").any() else 0


if __name__ == "__main__":
    sys.exit(main())
