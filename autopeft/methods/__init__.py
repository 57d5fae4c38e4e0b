"""Method registry: importing this package registers every method."""

from typing import Any

from autopeft.methods import adapter, kv_prompt, lora, partial, pro_tuning, ssf, vpt  # noqa: F401  (registration)
from autopeft.methods.base import REGISTRY, Elastic, ElasticWrapper, MethodSpec, elastic_modules

# List methods in the order they attach (LoRA, SSF, KV prompts, adapters, VPT, Pro-tuning, baselines).
for _name in sorted(REGISTRY, key=lambda name: REGISTRY[name].order):
    REGISTRY[_name] = REGISTRY.pop(_name)

__all__ = ["REGISTRY", "Elastic", "ElasticWrapper", "MethodSpec", "describe_methods", "elastic_modules"]


def describe_methods(methods: dict[str, dict[str, Any]]) -> str:
    """Methods and their sizes in a few words, e.g. ``lora rank 8; ssf enabled 1``."""
    parts = []
    for name, options in methods.items():
        size_option = REGISTRY[name].size_option
        sizes = options.get(size_option) if size_option else None
        parts.append(name if sizes is None else f"{name} {size_option} {sizes}")
    return "; ".join(parts)
