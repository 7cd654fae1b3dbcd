"""Checkpoints: safetensors for every tensor, JSON for everything else.

Layout of ``<run_dir>/checkpoints/step-<8 digits>/`` (written to a temporary folder, read back in
full, renamed; only then does ``checkpoints/latest`` name it and are older ones removed, so an intact
checkpoint is never deleted before a newer one is complete and verified; a process killed inside a write
leaves its temporary ``.step-*`` folder, never read, removed by the run's next checkpoint):

- ``model.safetensors``: the weights (``safetensors.torch.save_model``: tied weights stored once);
- ``model.yaml``: the model config (with the task's vocabulary), enough to rebuild the model;
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's ``state_dict`` flattened: every
  tensor is stored under its path (``state.0.exp_avg``) and replaced in the JSON by
  ``{"__tensor__": path}``; dicts become ``{"__dict__": [[key, value], ...]}`` (integer keys kept),
  tuples ``{"__tuple__": [...]}``, so the state dict loads back exactly;
- ``rng.safetensors``: the torch CPU generator state (``cpu``) and the CUDA one (``cuda``) if any;
- ``grads.safetensors``: the gradients the parameters hold after the step, by parameter name: the
  running sums of the CMS ``steps`` clock's open windows (``PeriodicOptimizer``); for an optimizer
  that zeroes every gradient before the next backward they are never read;
- ``trainer.json``: the run identity (config/task/budget sha256, seed) and the trainer state (steps
  done, losses, history, GEM rows, tokens, timings).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from nlsearch.config import to_yaml
from nlsearch.io import write_text
from nlsearch.runtime import interrupted

LATEST = "latest"
FILES = ("model.safetensors", "model.yaml", "optimizer.safetensors", "optimizer.json", "rng.safetensors",
         "grads.safetensors", "trainer.json")
STEP = re.compile(r"step-\d{8}")


def flatten(obj: Any, tensors: Dict[str, Tensor], path: str) -> Any:
    """Returns a JSON-able copy of ``obj`` with each tensor moved into ``tensors`` under its path."""
    if isinstance(obj, Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"cannot checkpoint the dict key {key!r} at {path}")
        return {"__dict__": [[k, flatten(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path}")


def unflatten(obj: Any, tensors: Dict[str, Tensor]) -> Any:
    """Inverse of ``flatten``."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def _save_tensors(tensors: Dict[str, Tensor], path: Path) -> None:
    save_file(tensors or {"__empty__": torch.zeros(0)}, str(path))


def _rng_state(device: torch.device) -> Dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer: Dict[str, Any], device: torch.device) -> Path:
    """Writes checkpoint ``step`` atomically, points ``latest`` at it and removes older ones, and the
    temporary folders of writes killed midway."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "model.yaml").write_text(to_yaml(model.cfg))
        tensors: Dict[str, Tensor] = {}
        meta = flatten(optimizer.state_dict(), tensors, "optimizer")
        _save_tensors(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        save_file(_rng_state(device), str(tmp / "rng.safetensors"))
        grads = {n: p.grad.detach().cpu().contiguous() for n, p in model.named_parameters() if p.grad is not None}
        _save_tensors(grads, tmp / "grads.safetensors")
        (tmp / "trainer.json").write_text(json.dumps(trainer, sort_keys=True))
        problem = check_checkpoint(tmp)
        if problem is not None:
            raise OSError(f"checkpoint {final} did not read back after writing: {problem}")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    write_text(final.name, root / LATEST)
    for old in [*root.glob("step-*"), *root.glob(".step-*")]:   # .step-*: a write killed midway (the run's
        if old != final:                                         # lock says no other process is writing)
            shutil.rmtree(old, ignore_errors=True)
    return final


def check_checkpoint(folder: Path) -> Optional[str]:
    """None when every file of the checkpoint is there and reads back; else what is wrong, naming
    the file."""
    folder = Path(folder)
    for name in FILES:
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        try:
            if name.endswith(".safetensors"):
                load_file(str(path))
            elif name.endswith(".json"):
                json.loads(path.read_text())
        except Exception as err:                      # noqa: BLE001 - any unreadable file is reported
            if interrupted():                         # Ctrl-C inside the read, come out as another error
                raise KeyboardInterrupt from err
            return f"{path} is unreadable ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
    return None


def resume_point(run_dir: Path) -> Tuple[Optional[Path], List[str]]:
    """The checkpoint a run resumes from, and notes on every one passed over: the folder ``latest``
    names when it is intact, else the newest intact ``step-*`` folder, else None (a fresh start)."""
    root = Path(run_dir) / "checkpoints"
    candidates, notes = [], []
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        if STEP.fullmatch(name):
            candidates.append(root / name)
        else:
            notes.append(f"{pointer} names no checkpoint ({name[:40]!r})")
    candidates += sorted((p for p in root.glob("step-*") if STEP.fullmatch(p.name)), reverse=True)
    for folder in dict.fromkeys(candidates):
        problem = check_checkpoint(folder) if folder.is_dir() else f"{folder} does not exist"
        if problem is None:
            if notes:
                notes.append(f"resuming from {folder}")
            return folder, notes
        notes.append(f"checkpoint passed over: {problem}")
    if notes:
        notes.append("no intact checkpoint: starting from step 0")
    return None, notes


def latest_checkpoint(path: Path) -> Optional[Path]:
    """Returns the checkpoint to read of a run directory (:func:`resume_point`) or ``path`` itself when
    it is a checkpoint folder; None when there is none."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    return resume_point(path)[0]


def read_trainer(folder: Path) -> Dict[str, Any]:
    path = Path(folder) / "trainer.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable trainer state ({type(err).__name__}: {err})") from None


def load_weights(folder: Path, model: nn.Module, device: torch.device) -> None:
    missing, unexpected = load_model(model, str(Path(folder) / "model.safetensors"), strict=True, device=str(device))
    if missing or unexpected:
        raise ValueError(f"checkpoint {folder} does not fit the model: missing {missing}, unexpected {unexpected}")


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device) -> Tuple[Dict[str, Any], Dict[str, Tensor]]:
    """Loads weights, held gradients and optimizer state into ``model``/``optimizer``; returns
    (trainer JSON, RNG states) for the caller to apply."""
    folder = Path(folder)
    load_weights(folder, model, device)
    params = dict(model.named_parameters())
    for name, grad in load_file(str(folder / "grads.safetensors")).items():
        if name in params:
            params[name].grad = grad.to(device=device, dtype=params[name].dtype)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    optimizer.load_state_dict(unflatten(json.loads((folder / "optimizer.json").read_text()), tensors))
    return read_trainer(folder), load_file(str(folder / "rng.safetensors"))


def restore_rng(states: Dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
