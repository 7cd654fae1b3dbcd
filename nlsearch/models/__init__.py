"""Models: ONE generic backbone; a new architecture is a new mixer plus a config."""
from nlsearch.models.backbone import LM, BackboneConfig

__all__ = ["LM", "BackboneConfig"]
