"""Process-level settings for fast CPU training.

glibc's allocator serves tensors above its mmap threshold (128 KiB, raised dynamically) with fresh
pages and hands them back to the kernel when freed. A training step of a small recurrent model
allocates dozens of 1-10 MB temporaries, so without tuning every step page-faults on all of them
again: about 1,500-2,500 faults per fast DeltaNet step at T=512, B=8 (`nlsearch bench ops`), some
10% of its time. :func:`tune_allocator` keeps freed memory in the heap for reuse instead, the effect
PyTorch's CPU tuning guide gets by preloading jemalloc or tcmalloc. The cost is that the process
keeps its peak heap until it exits, which suits a training or benchmark process.

Entry points call it (the CLI, :func:`nlsearch.train.loop.train`, the benchmarks); the environment
variable ``NLSEARCH_MALLOC=default`` leaves the allocator alone.

``NLSEARCH_COMPILE=1`` compiles the sequential step of the chunked layers (one mini-batch of an MLP
memory, one chunk of the self-modifying layer) with ``torch.compile``: the step runs 32-256 times per
sequence on small tensors, so fusing its elementwise work and dropping its per-op overhead pays, and
its graph is small and compiled once per shape (:func:`step_function`). Off by default: compiling
takes a minute or more per shape on a small CPU and needs a C++ compiler.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20          # glibc's maximum: blocks up to 32 MiB come from the heap
_TRIM_THRESHOLD = 1 << 30           # give memory back to the kernel only above 1 GiB of free top

_state = {"done": False, "tuned": False}
_compiled: dict = {}


def tune_allocator() -> bool:
    """Apply the settings above once per process; True where they are in effect (Linux with glibc
    and not switched off), False elsewhere. Never raises."""
    if _state["done"]:
        return _state["tuned"]
    _state["done"] = True
    if os.environ.get("NLSEARCH_MALLOC", "tuned") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):            # musl and other C libraries: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
    trim_ok = bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    _state["tuned"] = mmap_ok or trim_ok                 # either changes the allocator's behaviour
    return _state["tuned"]


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` took effect in this process (for provenance records)."""
    return _state["tuned"]


def compile_steps() -> bool:
    """Whether ``NLSEARCH_COMPILE`` asks for compiled layer steps (``1``, ``true``, ``yes`` or ``on``)."""
    return os.environ.get("NLSEARCH_COMPILE", "").strip().lower() in ("1", "true", "yes", "on")


def step_function(fn):
    """``fn`` itself, or with ``NLSEARCH_COMPILE=1`` ``torch.compile(fn, dynamic=False)``, made once per
    process and function (layers pass their step's plain function, ``self`` as its first argument)."""
    if not compile_steps():
        return fn
    if fn not in _compiled:
        import torch
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]
