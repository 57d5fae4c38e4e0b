"""Method registry: importing this package registers every method."""

from autopeft.methods import adapter, kv_prompt, lora, partial, ssf, vpt  # noqa: F401  (registration)
from autopeft.methods.base import REGISTRY, Elastic, ElasticWrapper, MethodSpec, elastic_modules

# List methods in the order they attach (LoRA, SSF, KV prompts, adapters, VPT, baselines).
for _name in sorted(REGISTRY, key=lambda name: REGISTRY[name].order):
    REGISTRY[_name] = REGISTRY.pop(_name)

__all__ = ["REGISTRY", "Elastic", "ElasticWrapper", "MethodSpec", "elastic_modules"]
