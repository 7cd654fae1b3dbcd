"""Timing and memory measurement shared by the benchmarks."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch


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


def measure(step: Callable[[], torch.Tensor], device: torch.device, *, repeats: int = 5,
            budget_s: float = 20.0) -> Dict[str, float]:
    """Run ``step`` (returns a scalar loss) forward+backward: median seconds over repeats (stopping
    early once ``budget_s`` is spent), plus memory (autograd-saved bytes; CUDA peak where present)."""
    saved = SavedBytes()
    try:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            step().backward()                                # warm-up, and the saved-bytes count
        saved_bytes = float(saved.total)
    except RuntimeError as err:                              # torch.func transforms refuse the hooks
        if "saved tensor hooks" not in str(err):
            raise
        step().backward()
        saved_bytes = float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times: List[float] = []
    spent = 0.0
    while len(times) < repeats and (spent < budget_s or not times):
        _sync(device)
        t0 = time.perf_counter()
        step().backward()
        _sync(device)
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    out = {"seconds": statistics.median(times), "repeats": len(times), "saved_bytes": saved_bytes}
    out["peak_bytes"] = float(torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" \
        else float("nan")
    return out
