"""Method registry: importing this package registers every method."""

from autopeft.methods import adapter, kv_prompt, lora, partial, ssf, vpt  # noqa: F401  (registration)
from autopeft.methods.base import REGISTRY, Elastic, ElasticWrapper, MethodSpec, elastic_modules

__all__ = ["REGISTRY", "Elastic", "ElasticWrapper", "MethodSpec", "elastic_modules"]
