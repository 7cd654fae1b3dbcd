"""Typed, strict, serialisable configs: YAML/JSON round trip, canonical JSON and its sha256."""
from __future__ import annotations

import hashlib
import json
import reprlib
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Type, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

C = TypeVar("C", bound=BaseModel)


class Strict(BaseModel):
    """Base of every config: unknown keys are errors, instances are immutable, a boolean is never
    taken for a number (``trials: true`` is refused, not read as 1), and a float field never takes NaN
    or infinity (``lr: .inf``, a range ``[.nan, 1]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and _takes_number_not_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"{value!r} is a boolean where a number is expected")
        return value


def _takes_number_not_bool(annotation: Any) -> bool:
    """Whether a field's type accepts an int or float but not a bool (Optional and Annotated looked into)."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _takes_number_not_bool(args[0])
    if get_origin(annotation) in (Union, UnionType) and bool not in args:
        return any(_takes_number_not_bool(a) for a in args)
    return False


Seed = Annotated[int, Field(ge=0, le=2 ** 63 - 1)]        # a training seed: records keep it as int64


class ConfigError(ValueError):
    """A config that does not validate: names the source (file) and each bad key path."""


SHOWN_INPUT_CHARS = 200                # a bad value is quoted in errors up to about this length
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, 80, 80
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 8


def _shown(value: Any) -> str:
    """``repr(value)`` abbreviated without walking all of it (a nested value can be huge)."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= SHOWN_INPUT_CHARS else text[:SHOWN_INPUT_CHARS] + "..."


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid config in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {path}: {e['msg']} (got {_shown(e.get('input'))})")
    return "\n".join(lines)


def parse_config(cls: Type[C], data: Any, source: str = "<config>") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (YAML's default keeps the last one,
    silently) and aliases (``*name``): a few hundred bytes of nested aliases expand to gigabytes
    ("billion laughs"), and no file of ours needs them."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue                                         # an unhashable key: YAML refuses it itself
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"an alias (*{event.anchor}) is not accepted here: "
                                              "write the value out", event.start_mark)
        return super().compose_node(parent, index)


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared by two keys out twice: what we write, :func:`safe_yaml` reads back."""

    def ignore_aliases(self, data) -> bool:
        return True


def safe_yaml(text: Union[str, bytes]) -> Any:
    """Plain data from YAML/JSON text: no tags, no aliases, no repeated keys; nothing constructed or
    executed."""
    return yaml.load(text, Loader=_StrictLoader)


def is_file_ref(ref: Any) -> bool:
    """A budget, task or model given as a YAML/JSON file path rather than a name."""
    return isinstance(ref, str) and ref.endswith((".yaml", ".yml", ".json"))


def read_yaml_mapping(path: Union[str, Path]) -> dict:
    """The mapping in a YAML (or JSON) file, read with safe parsing only (:func:`safe_yaml`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = safe_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (byte {err.start} is not UTF-8)") from None
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


def from_context(default: Any, description: str):
    """A field that, left unset, is filled in from where the config runs (``vocab_size``: the task's);
    hashed as its default, and never written out while unset (:func:`portable_dump`), so a config
    saved and read back still takes it from its context."""
    return Field(default, description=description, json_schema_extra={"from_context": True})


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


def portable_dump(cfg: BaseModel) -> dict:
    """``model_dump(mode="json")`` (every field, defaults included) without the :func:`from_context`
    fields left unset, at every depth: what a config file should say to mean the same config."""
    data = cfg.model_dump(mode="json")
    _drop_unset_context(cfg, data)
    return data


def _drop_unset_context(cfg: BaseModel, data: dict) -> None:
    for name, info in type(cfg).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("from_context") and name not in cfg.model_fields_set:
            data.pop(name, None)
            continue
        value = getattr(cfg, name)
        if isinstance(value, BaseModel) and isinstance(data.get(name), dict):
            _drop_unset_context(value, data[name])


def to_yaml(cfg: BaseModel) -> str:
    return yaml.dump(portable_dump(cfg), Dumper=_PlainDumper, sort_keys=False)
