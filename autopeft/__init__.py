"""autopeft: find the best parameter-efficient fine-tuning of a timm ViT for your data.

The public names load on first use (torch and timm are imported then, not by ``import autopeft``),
so the command line starts at once and a Ctrl-C while it loads them is reported like any other.
"""

from __future__ import annotations

import importlib
from typing import Any

from autopeft.errors import AutopeftError, BackboneError, ConfigError

__version__ = "0.1.0"

_LAZY = {
    "apply": "autopeft.api",
    "count_trainable": "autopeft.api",
    "get_sizes": "autopeft.api",
    "load_adapter": "autopeft.api",
    "merge": "autopeft.api",
    "save_adapter": "autopeft.api",
    "set_sizes": "autopeft.api",
    "create_backbone": "autopeft.backbones",
    "Choice": "autopeft.choice",
    "choose": "autopeft.choice",
    "Evidence": "autopeft.records",
    "prune": "autopeft.pruning",
    "METHODS": "autopeft.methods",
}

__all__ = ["AutopeftError", "BackboneError", "ConfigError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'autopeft' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module.REGISTRY if name == "METHODS" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
