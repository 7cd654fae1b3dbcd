"""``submit``: validate a model config, score it under the protocol, store it as an entry.

Order of work (each step fails with a clear error before anything is written to the leaderboard):
1. read the file with safe YAML (no tags, nothing executed), resolve a plugin mixer by entry point
   name (``plugins.py``), validate the config strictly, build the model, count its parameters
   against ``protocol.max_params``, and hash it;
2. refuse a duplicate (same config hash, protocol version and budget track), pointing at the entry;
3. check a supplied result file against the protocol, the track and the config's hash, and refuse it
   when claims for this config failed verification before;
4. train and evaluate under the protocol (every seed; or, with a result file, the seeds the
   leaderboard picks to verify it). Claims that do not reproduce are refused, and that is the one
   thing a refused submission writes: a record under ``rejected/`` (see :mod:`store`), so that the
   same config cannot be tried again with claims until the random seeds miss the invented ones;
5. add the entry under the leaderboard's lock (duplicates are checked again there).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import yaml

from nlsearch.config import ConfigError, config_hash, parse_config, portable_dump, safe_yaml
from nlsearch.io import check_writable_folder
from nlsearch.leaderboard.entry import Entry, TaskResult, Verification, entry_id
from nlsearch.leaderboard.plugins import resolve_plugins
from nlsearch.leaderboard.protocol import Protocol, load_protocol
from nlsearch.leaderboard.runner import Log
from nlsearch.leaderboard.scoring import score_model
from nlsearch.leaderboard.store import DEFAULT_ROOT, DuplicateEntryError, LeaderboardError, Store
from nlsearch.leaderboard.verify import (VerificationError, check_claims, load_results_file, merge_claims,
                                         pick_seeds)

DEFAULT_RUNS = Path("results/runs/leaderboard")
DISPLAY_TEXT = re.compile(r"[^\W_][\w .()+,-]{0,63}")      # entry names and authors: plain text on the page


@dataclass(frozen=True)
class Submission:
    """A validated model config and what the leaderboard records about it before training."""

    cfg: Any                                    # ModelConfig
    data: Dict[str, Any]                        # the config as a mapping (defaults filled in)
    sha256: str
    source_file: Optional[str]
    source_sha256: Optional[str]
    plugins: Dict[str, str]
    info: Dict[str, Any]                        # nlsearch.models.describe output


def _safe_mapping(path: Path) -> Dict[str, Any]:
    try:
        data = safe_yaml(path.read_bytes())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML/JSON (only plain data is accepted, no tags, no aliases): "
                          f"{' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a model config mapping at the top level, got {type(data).__name__}")
    return data


def _meta_params(cfg) -> Optional[int]:
    """Parameter count from a build on the meta device (no memory, no time); None if that fails."""
    import torch

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in cfg.build().parameters())
    except Exception:                           # noqa: BLE001 - the real build below reports it
        return None


def _check_size(cfg, params: Optional[int], protocol: Protocol, source: str) -> None:
    if params is not None and protocol.max_params is not None and params > protocol.max_params:
        raise ConfigError(f"{source}: {params:,} parameters exceed the protocol's max_params {protocol.max_params:,}")


def load_submission(config: Union[str, Path, Dict[str, Any]], protocol: Protocol) -> Submission:
    """Validates a config (file path, preset name or mapping): schema, plugin, build, parameter count."""
    from nlsearch.models import ModelConfig, list_presets
    from nlsearch.models.build import PRESET_DIR
    from nlsearch.models.describe import describe

    source, raw = "<mapping>", None
    if not isinstance(config, dict):
        path = Path(config)
        if not path.exists() and str(config) in list_presets():
            path = PRESET_DIR / f"{config}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {config} (a YAML/JSON file or a preset name)")
        source, raw = str(path), path.read_bytes()
        config = _safe_mapping(path)
    plugins = resolve_plugins(config, source)
    cfg = parse_config(ModelConfig, config, source)
    _check_size(cfg, _meta_params(cfg), protocol, source)
    try:
        info = describe(cfg)
    except Exception as err:                    # noqa: BLE001 - any build failure is the config's fault
        raise ConfigError(f"{source}: the config validates but does not build: {type(err).__name__}: {err}") from None
    _check_size(cfg, info["params"], protocol, source)
    _check_vocab(cfg, protocol, source)
    data = cfg.model_dump(mode="json", exclude_unset=True)       # an unset vocab_size stays unset
    return Submission(cfg, data, config_hash(cfg), Path(source).name if raw else None,
                      hashlib.sha256(raw).hexdigest() if raw else None, plugins, info)


def _check_vocab(cfg, protocol: Protocol, source: str) -> None:
    """A config that sets ``vocab_size`` must cover every protocol task's vocabulary (unset, each task's
    is taken): caught here, not after the first tasks have trained."""
    if "vocab_size" not in cfg.model_fields_set:
        return
    from nlsearch.tasks import load_task
    from nlsearch.train.plan import with_task_vocab

    for ref in protocol.task_refs():
        try:
            with_task_vocab(cfg, load_task(ref, protocol.resolve_tasks_dir()))
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from None


def build_entry(sub: Submission, name: str, author: str, kind: str, protocol: Protocol, budget,
                tasks: Dict[str, TaskResult], verification: Optional[Verification] = None) -> Entry:
    return Entry(
        id=entry_id(protocol.ref, budget.ref, sub.sha256, name), name=name, author=author, kind=kind,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), protocol=protocol.ref,
        protocol_sha256=protocol.sha256(), budget=budget.ref, budget_sha256=budget.sha256(),
        config=portable_dump(sub.cfg), config_sha256=sub.sha256, source_file=sub.source_file,
        source_sha256=sub.source_sha256, plugins=sub.plugins, params=sub.info["params"],
        params_non_embedding=sub.info["params_non_embedding"], state_size=sub.info["state_size"],
        state_size_length=sub.info["seq_len"], nesting_depth=sub.info["nesting_depth"],
        levels=tuple(f"{lv['name']} ({lv['frequency']})" for lv in sub.info["levels"]), tasks=tasks,
        verification=verification)


def _check_free(store: Store, sub: Submission, name: str, protocol: Protocol, budget_ref: str) -> None:
    existing = store.find(sub.sha256, protocol.ref, budget_ref)
    if existing is not None:
        raise DuplicateEntryError(existing, f"config {sub.sha256[:12]} under protocol {protocol.ref}, "
                                            f"budget {budget_ref}")
    for entry in store.entries(protocol.ref, budget_ref):
        if entry.name == name:
            raise LeaderboardError(f"the name {name!r} is taken on {protocol.ref} {budget_ref} by "
                                   f"{store.path_of(entry)}; choose another --name")


def submit(config: Union[str, Path, Dict[str, Any]], name: str, *, author: str = "anonymous",
           protocol: Union[Protocol, str, Path, None] = None, budget: Optional[str] = None,
           root: Union[str, Path] = DEFAULT_ROOT, runs_dir: Union[str, Path] = DEFAULT_RUNS,
           results: Union[str, Path, None] = None, workers: int = 1, address: Optional[str] = None,
           verify_seeds: Optional[Sequence[int]] = None, kind: str = "submission",
           log: Optional[Log] = None) -> Tuple[Entry, Path]:
    """Scores ``config`` under the protocol and adds it to the leaderboard at ``root``; returns the
    entry and its file. Raises ConfigError, ProtocolError, LeaderboardError (DuplicateEntryError,
    VerificationError) or FileNotFoundError with the leaderboard's entries unchanged (claims that do not
    reproduce leave a record under ``rejected/``)."""
    for flag, value in (("--name", name), ("--author", author)):
        if not isinstance(value, str) or not DISPLAY_TEXT.fullmatch(value):
            raise LeaderboardError(f"{flag} {value!r} must be 1-64 letters, digits, spaces or . _ ( ) + - , "
                                   f"starting with a letter or digit (it is shown on the leaderboard page)")
    protocol = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    track = protocol.load_budget(budget)
    sub = load_submission(config, protocol)
    for folder, what in ((root, "leaderboard folder (--dir)"), (runs_dir, "runs folder (--runs)")):
        check_writable_folder(folder, what)
    store = Store(root)
    _check_free(store, sub, name, protocol, track.ref)
    verification = None
    if results is None:
        tasks = score_model(sub.data, protocol, track, Path(runs_dir), workers=workers, address=address, log=log)
    else:
        claims, sha = load_results_file(Path(results), protocol, track.ref, sub.sha256, sub.source_file or name)
        earlier = store.rejection(sub.sha256, protocol.ref, track.ref)
        if earlier is not None:
            raise VerificationError(f"claimed results for config {sub.sha256[:12]} failed verification before "
                                    f"({earlier}): submit it without --results, and every seed is measured")
        seeds = sorted(verify_seeds) if verify_seeds is not None else pick_seeds(protocol)
        factors = {ref: t.lr_factor for ref, t in claims.tasks.items()}
        measured = score_model(sub.data, protocol, track, Path(runs_dir), seeds=seeds, lr_factors=factors,
                               workers=workers, address=address, log=log)
        try:
            verification = check_claims(claims, measured, protocol, Path(results), sha, seeds)
        except VerificationError:
            store.add_rejection(sub.sha256, protocol.ref, track.ref, sha, seeds,
                                datetime.now(timezone.utc).isoformat(timespec="seconds"))
            raise
        tasks = merge_claims(claims, measured, protocol)
    entry = build_entry(sub, name, author, kind, protocol, track, tasks, verification)
    return entry, store.add(entry)

