"""Model configs by name or file, and ``build_model``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Union

from nlsearch.config import load_config, parse_config
from nlsearch.models.backbone import LM, ModelConfig

PRESET_DIR = Path(__file__).parent / "presets"


def list_presets() -> List[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_model_config(spec: Union[str, Path, Dict[str, Any], ModelConfig]) -> ModelConfig:
    """A preset name (``hope``), a YAML/JSON file, a mapping, or a config (returned as is)."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, dict):
        return parse_config(ModelConfig, spec, "<mapping>")
    path = Path(spec)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return load_config(ModelConfig, path)
    if str(spec) in list_presets():
        return load_config(ModelConfig, PRESET_DIR / f"{spec}.yaml")
    raise KeyError(f"unknown model preset {str(spec)!r} and no such file; presets: {list_presets()}")


def build_model(spec: Union[str, Path, Dict[str, Any], ModelConfig]) -> LM:
    """The ``nn.Module`` of a config (validated first: a bad value fails before any tensor exists)."""
    return load_model_config(spec).build()
