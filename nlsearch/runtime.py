"""Process-level settings for fast CPU training.

glibc's allocator serves tensors above its mmap threshold (128 KiB, raised dynamically) with fresh
pages and hands them back to the kernel when freed. A training step of a small recurrent model
allocates dozens of 1-10 MB temporaries, so without tuning every step page-faults on all of them
again: about 1,500-2,500 faults per fast DeltaNet step at T=512, B=8 (`nlsearch bench ops`), some
10% of its time. :func:`tune_allocator` keeps freed memory in the heap for reuse instead, the effect
PyTorch's CPU tuning guide gets by preloading jemalloc or tcmalloc. The cost is that the process
keeps its peak heap until it exits, which suits a training or benchmark process.

Subnormal floats (below 1.2e-38 in float32) are flushed to zero (:func:`flush_denormals`). The
backward of a chunked memory carries the state's adjoint back through every chunk's retention and
``I − η k kᵀ``, so the adjoint of early chunks shrinks into the subnormal range, and x86 cores take
a microcode assist on every subnormal operand: HOPE's training step at T=512 took 2.8 s with them
and 1.35 s flushed (this 2-core Xeon), the bmm's of its chunk backward running 14x below their
speed on normal numbers. A flushed value is smaller than float32's rounding of anything it is
added to, so no result changes beyond that rounding (GPUs flush the same way in their fast paths).
The flag is per thread and a new thread takes its creator's, so it must be set before the intra-op
thread pool exists: :func:`tune_process` is the first thing every entry point calls.

Entry points call :func:`tune_process` (the CLI, :func:`nlsearch.train.loop.train`, the benchmarks,
the test session); ``NLSEARCH_MALLOC=default`` leaves the allocator alone and
``NLSEARCH_DENORMALS=keep`` keeps subnormals.

Compiled layer steps: :func:`step_function` hands a chunked layer's sequential step (one mini-batch
of an MLP memory, one chunk of the self-modifying layer) to ``torch.compile``, when steps are compiled
(:func:`compile_steps`). The step runs 32-256 times per sequence on small tensors, so fusing its
elementwise work and dropping its per-op overhead pays, and its graph is small and compiled once per
shape. Compiling takes a minute or more per shape on a small CPU and needs a C++ compiler
(:func:`cpp_compiler`), so whether a run compiles is decided per run (``nlsearch.train.plan.
choose_compile``: where the run's training steps save more than the compile costs, from the timings
of ``nlsearch bench models --compile``) and set for its training steps with :func:`compiled_steps`.
``NLSEARCH_COMPILE=1`` forces compiled steps on (everywhere, also outside a run), ``NLSEARCH_COMPILE=0``
forces them off, unset leaves the choice to the run (:func:`compile_setting`).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import sys
from typing import Callable, Iterator, Optional, Tuple

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20          # glibc's maximum: blocks up to 32 MiB come from the heap
_TRIM_THRESHOLD = 1 << 30           # give memory back to the kernel only above 1 GiB of free top

_state = {"done": False, "tuned": False}
_denormals = {"done": False, "flushed": False}
_compiled: dict = {}
_seen: set = set()                  # step functions passed to step_function (compiled or not)
_mode = {"on": None}                # the setting of the innermost compiled_steps() block, None outside


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


def flush_denormals() -> bool:
    """Flush subnormal floats to zero in this process (once); True where every thread of the intra-op
    pool flushes (probed), False where switched off or the pool was made before the flag was set."""
    if _denormals["done"]:
        return _denormals["flushed"]
    _denormals["done"] = True
    if os.environ.get("NLSEARCH_DENORMALS", "flush").strip().lower() == "keep":
        return False
    import torch
    _denormals["flushed"] = bool(torch.set_flush_denormal(True)) and _pool_flushes()
    return _denormals["flushed"]


def _pool_flushes() -> bool:
    """Whether a product that lands in the subnormal range comes out zero on every thread: a
    multiplication large enough to be split over the pool, and a matrix product (BLAS threads)."""
    import torch
    tiny = torch.full((1 << 18,), 1e-20)
    square = torch.full((64, 256), 1e-20)
    return bool((tiny * 1e-20).eq(0).all()) and bool((square @ square.T).eq(0).all())


def denormals_flushed() -> bool:
    """Whether :func:`flush_denormals` took effect in this process (for provenance records)."""
    return _denormals["flushed"]


def tune_process() -> None:
    """Every process-level setting of this module: the allocator, then subnormal flushing."""
    flush_denormals()
    tune_allocator()


_interrupts = {"seen": False, "signal": None, "term": False}


def _on_signal(signum, frame):
    import signal

    if signum == signal.SIGTERM and _interrupts["seen"]:
        return                            # a second SIGTERM (batch systems repeat it) lets the clean-up finish
    _interrupts["seen"], _interrupts["signal"] = True, signum
    raise KeyboardInterrupt


def watch_interrupts() -> Callable[[], None]:
    """Remember that Ctrl-C was pressed (:func:`interrupted`), then raise KeyboardInterrupt as Python
    does. A KeyboardInterrupt raised inside a library call can come out as another exception (torch
    turns one inside a tensor conversion into a ValueError); code that catches broad errors asks
    :func:`interrupted` and stops instead of recording a failure. Only where SIGINT has Python's
    default handler (not where it is ignored, as for a background job).

    SIGTERM (``kill``, a batch system's wall-time limit, ``timeout``) takes the same path where it has
    its default action: the command stops its workers, keeps what each keeps on Ctrl-C (finished runs,
    checkpoints) and exits 143, instead of dying with its pool's workers and semaphores left behind; a
    repeated SIGTERM is ignored while that clean-up runs. Returns a function that puts the previous
    handlers back (a command run inside another program, e.g. a test, leaves no handler behind)."""
    import signal

    _interrupts.update(seen=False, signal=None, term=False)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if before[signal.SIGINT] is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)
    if before[signal.SIGTERM] == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_signal)
        _interrupts["term"] = True

    def restore() -> None:
        _interrupts["term"] = False
        for sig, handler in before.items():
            if signal.getsignal(sig) is _on_signal:
                signal.signal(sig, handler)
    return restore


def interrupt_exit() -> Tuple[str, int]:
    """What stopped this command and its exit status: ("SIGTERM", 143) or ("Ctrl-C", 130)."""
    import signal

    return ("SIGTERM", 143) if _interrupts["signal"] == signal.SIGTERM else ("Ctrl-C", 130)


def reclaim_sigterm() -> None:
    """After ``ray.init``, which sets its own SIGTERM handler (``sys.exit(15)``): SIGTERM back on the
    Ctrl-C path where :func:`watch_interrupts` had put it (main thread only, as signals are)."""
    import signal
    import threading

    if _interrupts["term"] and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)


def interrupted() -> bool:
    """Whether Ctrl-C (or SIGTERM) came to this process since :func:`watch_interrupts`."""
    return _interrupts["seen"]


_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def compile_setting() -> Optional[bool]:
    """``NLSEARCH_COMPILE``: True when it forces compiled steps on (``1``, ``true``, ``yes``, ``on``),
    False when it forces them off (``0``, ``false``, ``no``, ``off``), None when unset or empty (each
    run decides); raises ValueError naming any other value."""
    value = os.environ.get("NLSEARCH_COMPILE", "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    if not value:
        return None
    raise ValueError(f"NLSEARCH_COMPILE={value!r}: use 1 (compile the layers' steps), 0 (never) or leave it "
                     f"unset (each run decides)")


def compile_steps() -> bool:
    """Whether :func:`step_function` compiles now: the setting of the enclosing :func:`compiled_steps`
    block, else whether ``NLSEARCH_COMPILE`` forces it on (an unreadable value: off)."""
    if _mode["on"] is not None:
        return _mode["on"]
    try:
        return compile_setting() is True
    except ValueError:
        return False


@contextlib.contextmanager
def compiled_steps(on: bool) -> Iterator[None]:
    """Compile the layers' steps (``on``) or run them eager inside this block, whatever the
    environment says (a run applies its choice to its training steps this way)."""
    before = _mode["on"]
    _mode["on"] = bool(on)
    try:
        yield
    finally:
        _mode["on"] = before


def cpp_compiler() -> Optional[str]:
    """The C++ compiler inductor would use on the CPU (its own search: ``CXX``, then ``g++`` ...), or
    None where there is none: compiled CPU steps need one."""
    try:
        from torch._inductor import cpp_builder

        found = cpp_builder.get_cpp_compiler()
    except Exception:                                  # noqa: BLE001 - no compiler, or inductor unusable
        return None
    return found if found and shutil.which(found) else None


def step_function(fn):
    """``fn`` itself, or when steps are compiled (:func:`compile_steps`) ``torch.compile(fn,
    dynamic=False)``, made once per process and function (layers pass their step's plain function,
    ``self`` as its first argument). Layers call it on every forward, so the choice in effect then
    applies."""
    _seen.add(fn)
    if not compile_steps():
        return fn
    if fn not in _compiled:
        import torch
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def step_functions_seen(reset: bool = False) -> int:
    """How many distinct step functions went through :func:`step_function` since the last reset (a
    model without any has nothing to compile); ``reset``: start counting again."""
    n = len(_seen)
    if reset:
        _seen.clear()
    return n


def forget_compiled_steps() -> None:
    """Drop every compiled step and torch's compile caches, and the functions seen (the benchmark
    times compiles from scratch)."""
    _seen.clear()
    _compiled.clear()
    import torch
    torch._dynamo.reset()
