"""Custom mixers from installed packages, through the ``nlsearch.mixers`` entry point group.

A user ships a mixer in their own package and declares it in its metadata, for example in
``pyproject.toml``::

    [project.entry-points."nlsearch.mixers"]
    shift = "mypkg.mixers:ShiftConfig"

``ShiftConfig`` is a strict config (``nlsearch.config.Strict``) with ``kind: Literal["shift"]``,
``build(d_model) -> nn.Module`` (the mixer interface: ``forward(x, state=None) -> (y, state)``,
``state_size(seq_len)``) and ``levels()`` (its nesting levels). A model config then says
``mixer: {kind: shift, ...}``.

Trust: a submission is data. Only a ``kind`` that is a plain short name (``KIND``) is looked up, only
among the entry points the operator's environment already has installed, and only the one entry
point whose name equals that kind is loaded. A kind such as ``os:system`` or ``pkg.module.Class`` is
refused before any lookup; a module that happens to be importable is never imported because a
submission names it.
"""
from __future__ import annotations

import re
from importlib.metadata import entry_points
from typing import Any, Dict, List, Optional

from nlsearch.config import ConfigError, Strict
from nlsearch.registry import MIXERS

GROUP = "nlsearch.mixers"
KIND = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_LOADED: Dict[str, str] = {}


def available() -> List[str]:
    """Names of the installed ``nlsearch.mixers`` entry points (nothing is loaded)."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def _check_class(cls: Any, kind: str, where: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Strict)):
        raise ConfigError(f"{where}: entry point {kind!r} is {cls!r}, not a strict config class (nlsearch.config"
                          f".Strict)")
    for method in ("build", "levels"):
        if not callable(getattr(cls, method, None)):
            raise ConfigError(f"{where}: the config class of entry point {kind!r} has no {method}()")
    default = cls.model_fields.get("kind")
    if default is None or default.default != kind:
        raise ConfigError(f"{where}: the config class of entry point {kind!r} must declare kind = {kind!r}")


def ensure_mixer(kind: Any, where: str = "mixer.kind") -> Optional[str]:
    """Makes ``kind`` usable as ``mixer.kind``: None for a built-in mixer; for an installed entry point
    loads it, registers its config class and returns ``"dist==version (value)"``. Raises ConfigError
    naming ``where`` and the value for a kind that is not a plain name or not installed."""
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: expected a mixer name, got {type(kind).__name__} {kind!r}")
    if kind in _LOADED:
        return _LOADED[kind]
    if kind in MIXERS:
        return None
    if not KIND.match(kind):
        raise ConfigError(f"{where}: {kind!r} is not a mixer name (lowercase letters, digits, '-' and '_'); "
                          f"built-in: {MIXERS.names()}; installed plugins: {available()}")
    found = [ep for ep in entry_points(group=GROUP) if ep.name == kind]
    if not found:
        raise ConfigError(f"{where}: unknown mixer kind {kind!r}: neither built in ({MIXERS.names()}) nor an "
                          f"installed '{GROUP}' entry point ({available()})")
    ep = found[0]
    try:
        cls = ep.load()
    except Exception as err:                 # noqa: BLE001 - a broken plugin is a clear error, not a crash
        raise ConfigError(f"{where}: entry point {kind!r} ({ep.value}) failed to load: {type(err).__name__}: "
                          f"{err}") from None
    _check_class(cls, kind, where)
    MIXERS.register(kind)(cls)
    dist = getattr(ep, "dist", None)
    origin = f"{dist.name}=={dist.version}" if dist is not None else "unknown distribution"
    _LOADED[kind] = f"{origin} ({ep.value})"
    return _LOADED[kind]


def resolve_plugins(data: Any, source: str) -> Dict[str, str]:
    """Loads the entry point a raw model-config mapping refers to by ``mixer.kind``, if any; returns
    ``{kind: origin}`` for the plugins used (empty for built-in mixers)."""
    if not isinstance(data, dict):
        return {}
    mixer = data.get("mixer")
    if not isinstance(mixer, dict) or "kind" not in mixer:
        return {}
    origin = ensure_mixer(mixer["kind"], f"{source}: mixer.kind")
    return {mixer["kind"]: origin} if origin else {}
