"""Models: ONE generic backbone; a new architecture is a new mixer plus a config."""
from nlsearch.models.backbone import LM, ModelConfig
from nlsearch.models.build import build_model, list_presets, load_model_config

__all__ = ["LM", "ModelConfig", "build_model", "list_presets", "load_model_config"]
