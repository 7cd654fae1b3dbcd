"""Typed, strict, serialisable configs: YAML/JSON round trip, canonical JSON and its sha256."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Type, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

C = TypeVar("C", bound=BaseModel)


class Strict(BaseModel):
    """Base of every config: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A config that does not validate: names the source (file) and each bad key path."""


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid config in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {path}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_config(cls: Type[C], data: Any, source: str = "<config>") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def read_yaml_mapping(path: Union[str, Path]) -> dict:
    """The mapping in a YAML (or JSON) file, read with safe parsing only: nothing is executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: Type[C], path: Union[str, Path]) -> C:
    return parse_config(cls, read_yaml_mapping(path), str(path))


def unhashed(default: Any, description: str):
    """A field that never changes what a model computes (a compute path, a display name): kept in
    YAML, left out of the config hash."""
    return Field(default, description=description, json_schema_extra={"unhashed": True})


def added(default: Any, description: str):
    """A field added after configs were hashed, whose default keeps the old behaviour: left out of the
    config hash while it holds that default, so every earlier config keeps its hash (and its runs)."""
    return Field(default, description=description, json_schema_extra={"omit_default": True})


def semantic_dump(cfg: Any) -> Any:
    """``model_dump(mode="json")`` without compute-only fields (nor :func:`added` fields at their
    default), at every depth."""
    if isinstance(cfg, BaseModel):
        out = {}
        for name, info in type(cfg).model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            value = getattr(cfg, name)
            if extra.get("unhashed") or (extra.get("omit_default") and value == info.default):
                continue
            out[name] = semantic_dump(value)
        return out
    if isinstance(cfg, (list, tuple)):
        return [semantic_dump(x) for x in cfg]
    if isinstance(cfg, dict):
        return {k: semantic_dump(v) for k, v in cfg.items()}
    return json.loads(json.dumps(cfg))


def canonical_json(cfg: BaseModel) -> str:
    """Every semantic field, defaults included, sorted keys, no whitespace: configs that describe the
    same model give the same text (compute-only fields such as ``impl`` do not count)."""
    return json.dumps(semantic_dump(cfg), sort_keys=True, separators=(",", ":"))


def config_hash(cfg: BaseModel) -> str:
    return hashlib.sha256(canonical_json(cfg).encode()).hexdigest()


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
