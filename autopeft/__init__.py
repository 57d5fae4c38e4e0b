"""autopeft: find the best parameter-efficient fine-tuning of a timm ViT for your data."""

from autopeft.api import apply, count_trainable, get_sizes, load_adapter, merge, save_adapter, set_sizes
from autopeft.backbones import create_backbone
from autopeft.errors import AutopeftError, BackboneError, ConfigError
from autopeft.methods import REGISTRY as METHODS

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AutopeftError",
    "BackboneError",
    "ConfigError",
    "__version__",
    "apply",
    "count_trainable",
    "create_backbone",
    "get_sizes",
    "load_adapter",
    "merge",
    "save_adapter",
    "set_sizes",
]
