"""Atomic writes: a reader sees the old file or the new one, never half of one; and the check that a
folder can be written before any work that would end by writing there."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

import pandas as pd

PathLike = Union[str, Path]


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)               # as an ordinary new file (mkstemp makes it private)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_writable_folder(path: PathLike, what: str = "output folder") -> None:
    """Raises ValueError naming ``path`` unless it is (or can be created as) a folder this process
    may write: its nearest existing ancestor must be a writable folder. Creates nothing."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: {probe} is not writable")


def write_parquet(df: pd.DataFrame, path: PathLike) -> Path:
    return atomic_write(path, lambda p: df.to_parquet(p, index=False))


def write_text(text: str, path: PathLike) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))
