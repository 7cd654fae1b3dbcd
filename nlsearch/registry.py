"""Components by short stable names: the storage boundary (YAML, Optuna choices, leaderboard rows)
refers to ``kind: attention``, never to an import path that breaks when a file moves."""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, List, TypeVar

from pydantic import BaseModel, WrapValidator
from typing_extensions import Annotated

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str):
        self.what = what
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.what} {name!r} is already registered to {self._items[name]!r}")
            self._items[name] = obj
            return obj
        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise KeyError(f"unknown {self.what} {name!r}; known: {self.names()}")
        return self._items[name]

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


def config_field(registry: "Registry[type]", default_kind: str):
    """A pydantic field type holding any config class registered in ``registry``, chosen by its
    ``kind`` key (``default_kind`` when absent); errors keep the nested key path."""

    def validate(value: Any, handler) -> Any:
        if isinstance(value, BaseModel):
            kind = getattr(value, "kind", None)
            if kind in registry and isinstance(value, registry.get(kind)):
                return value
            raise ValueError(f"{type(value).__name__} is not a registered {registry.what}")
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping with a 'kind' key, got {type(value).__name__}")
        kind = value.get("kind", default_kind)
        if kind not in registry:
            raise ValueError(f"unknown {registry.what} {kind!r}; known: {registry.names()}")
        return registry.get(kind).model_validate(value)

    return Annotated[Any, WrapValidator(validate)]


MIXERS: "Registry[type]" = Registry("mixer kind")
CHANNEL_MIXERS: "Registry[type]" = Registry("mlp kind")
OPTIMIZERS: "Registry[type]" = Registry("optimizer kind")
