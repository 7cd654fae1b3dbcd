"""Where a number came from: hardware, versions, commit."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Dict

import torch

from nlsearch.runtime import allocator_tuned, compile_steps, denormals_flushed


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()}, {torch.get_num_threads()} threads"


PACKAGE = Path(__file__).resolve().parent


def _git(*args: str, cwd: Path = PACKAGE) -> str:
    out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd)
    return out.stdout.strip() if out.returncode == 0 else ""


@lru_cache(maxsize=4)
def git_commit(checkout: Path = PACKAGE) -> str:
    """Short commit of the checkout that holds the package folder ``checkout``, ``-dirty`` when the
    tracked code (the package and, beside it, its build file) differs from it; results, reports
    and leaderboard pages a run or a reproduction rewrites do not make it dirty."""
    try:
        sha = _git("rev-parse", "--short", "HEAD", cwd=checkout)
        # what decides what a run computes (task specs and configs are hashed apart); absolute paths, so
        # git reads them the same from any folder of the checkout
        checkout = Path(checkout).resolve()
        code = [str(checkout), str(checkout.parent / "pyproject.toml")]
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", *code, cwd=checkout) if sha else ""
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) or "unknown"


_LOADED = git_commit()


def code_commit() -> str:
    """The commit (``-dirty`` as :func:`git_commit` says) of the code this process runs: read once,
    when this module is imported, because later edits or checkouts of the tree are not what a running
    process (a long reproduction's worker) computes with."""
    return _LOADED


def provenance(device: torch.device) -> Dict[str, str]:
    try:
        pkg = version("nlsearch")
    except PackageNotFoundError:
        pkg = "unknown"
    return {
        "hardware": device_name(device),
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "nlsearch": pkg,
        "git_commit": code_commit(),
        "python": platform.python_version(),
        "allocator": "tuned" if allocator_tuned() else "default",
        "compiled_steps": "on" if compile_steps() else "off",
        "denormals": "flushed" if denormals_flushed() else "kept",
    }
