"""Timing and memory measurement shared by the benchmarks."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch


REWARM_BELOW_S = float("inf")   # steps faster than this run once untimed before each timed run: all of them


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SavedBytes:
    """Bytes autograd keeps for the backward pass (distinct storages): the memory a training step
    holds per token, measurable on any device."""

    def __init__(self):
        self.storages: Dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        self.storages[st.data_ptr()] = st.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def _saved_bytes(step: Callable[[], torch.Tensor]) -> float:
    """Warm-up run of ``step`` that also counts the bytes autograd saves (nan where hooks are refused)."""
    saved = SavedBytes()
    try:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            step().backward()
        return float(saved.total)
    except RuntimeError as err:                              # torch.func transforms refuse the hooks
        if "saved tensor hooks" not in str(err):
            raise
        step().backward()
        return float("nan")


def measure_many(steps: Dict[str, Callable[[], torch.Tensor]], device: torch.device, *, repeats: int = 5,
                 budget_s: float = 20.0) -> Dict[str, Dict[str, float]]:
    """Run each step (returns a scalar loss) forward+backward: per step, the median seconds over up to
    ``repeats`` runs (fewer once the step has spent ``budget_s``) and its memory (autograd-saved
    bytes; CUDA peak where present). The steps are timed round-robin, one run of each in turn: a
    machine that slows down or speeds up during the benchmark shifts every step alike, so ratios
    between them hold better than between steps timed one after another. Every step runs once untimed
    before each of its timed runs (``REWARM_BELOW_S``), so it is not timed on the caches and the heap
    another step just left: in training a step follows the same step. Long steps were once exempt
    (below 0.5 s only); at T=4096 that timed ``mamba2`` right after the Transformer at 2.14 s a step,
    against 1.59 s after its own step, while the Transformer's 2.05 s did not move."""
    saved, warm_s = {}, {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        saved[name] = _saved_bytes(step)
        warm_s[name] = time.perf_counter() - t0
    times: Dict[str, List[float]] = {name: [] for name in steps}
    peaks = {name: 0.0 for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if times[name] and sum(times[name]) >= budget_s:
                continue
            if warm_s[name] < REWARM_BELOW_S:    # as in a training loop, the timed run follows a run of
                step().backward()                # the same step, not another step's (cold) caches
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            _sync(device)
            t0 = time.perf_counter()
            step().backward()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], float(torch.cuda.max_memory_allocated(device) - base))
    return {name: {"seconds": statistics.median(times[name]), "repeats": len(times[name]),
                   "saved_bytes": saved[name],
                   "peak_bytes": peaks[name] if device.type == "cuda" else float("nan")} for name in steps}
