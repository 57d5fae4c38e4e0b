"""The contract every method implements, the elastic-size machinery and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from autopeft.backbones import TRANSFORMER, BackboneInfo
from autopeft.errors import ConfigError

Index = tuple[slice, ...]
EVERYTHING: Index = ()
NOTHING: Index = (slice(0, 0),)


class Elastic:
    """Mixin for modules allocated at a maximum size that run at an active size <= max.

    Sizes are per block; size 0 makes the module an exact identity of what it wraps.
    """

    method: str = ""

    def block_sizes(self) -> dict[int, int]:
        """Active size per block index this module serves."""
        raise NotImplementedError

    def set_block_sizes(self, sizes: list[int]) -> None:
        """Set active sizes from a full per-block list (entries for other blocks ignored)."""
        raise NotImplementedError

    def own_parameters(self) -> list[nn.Parameter]:
        """The parameters this method added (not those of the wrapped timm module)."""
        raise NotImplementedError

    def count(self) -> int:
        """Trainable parameters at the active size."""
        raise NotImplementedError

    def active_parts(self) -> list[tuple[nn.Parameter, Index]]:
        """Each own parameter with the index of the part the active size uses (``NOTHING`` when none):
        what a training step may move. Slices past the active size get no gradient and must not move."""
        raise NotImplementedError


class ElasticWrapper(Elastic, nn.Module):
    """An elastic module that wraps one timm module (``self.base``) in one block."""

    def __init__(self, base: nn.Module, block: int | None, max_size: int) -> None:
        super().__init__()
        self.base = base
        self.block = block
        self.max_size = max_size
        self._size = max_size

    @property
    def size(self) -> int:
        return self._size

    @size.setter
    def size(self, value: int) -> None:
        self._size = check_size(self.method, value, self.max_size, self.block)
        self.resized()

    def resized(self) -> None:
        """Called after ``size`` changes: a wrapper whose size other modules read keeps them in step."""

    def block_sizes(self) -> dict[int, int]:
        return {} if self.block is None else {self.block: self.size}

    def set_block_sizes(self, sizes: list[int]) -> None:
        if self.block is not None:
            self.size = sizes[self.block]

    def own_parameters(self) -> list[nn.Parameter]:
        base = {id(p) for p in self.base.parameters()}
        return [p for p in self.parameters() if id(p) not in base]

    def extra_repr(self) -> str:
        return f"block={self.block}, size={self.size}, max_size={self.max_size}"


def tensor_kwargs(module: nn.Module) -> dict[str, Any]:
    """``device`` and ``dtype`` of a module's weights, for creating matching parameters."""
    weight = next(module.parameters())
    return {"device": weight.device, "dtype": weight.dtype}


def check_size(method: str, value: Any, maximum: int, block: int | None) -> int:
    """Validate an active size against the allocated maximum."""
    where = f"{method}: size" + (f" in block {block}" if block is not None else "")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: got {value!r}; allowed: a non-negative integer")
    if value > maximum:
        raise ConfigError(f"{where}: got {value}, above the allocated maximum {maximum}; allowed: 0..{maximum}")
    return value


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its options class and how it attaches to a backbone.

    ``attach(model, options, info)`` edits the model through ``autopeft.inject`` and returns
    nothing; trainability is set afterwards from ``Elastic.own_parameters`` and
    ``trainable`` (for methods that unfreeze backbone tensors instead of adding modules).
    ``needs_vit``: attaching needs the backbone's ``BackboneInfo`` (every method that adds modules);
    ``cnn``: the method attaches to CNN blocks too. ``family_defaults``: family -> the values of the
    options whose default is None (``autopeft.backbones``: ``transformer`` or a CNN family).
    """

    name: str
    options: type
    attach: Callable[[nn.Module, Any, BackboneInfo | None], None]
    order: int
    size_option: str | None = None
    identity_at_init: bool = False
    mergeable: bool = False
    needs_vit: bool = True
    trainable: Callable[[nn.Module], list[nn.Parameter]] | None = None
    cnn: bool = False
    family_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def takes(self, family: str) -> bool:
        """Whether backbones of ``family`` (``autopeft.backbones``) take this method: CNNs lack token blocks."""
        return family == TRANSFORMER or self.cnn or not self.needs_vit


def check_family_choices(where: str, noun: str, values: list[str], allowed: tuple[str, ...], family: str) -> None:
    """One line for the first of ``values`` (an option's choices, e.g. LoRA targets) not in ``allowed``, the
    choices of backbone ``family``: transformers and CNNs name their layers differently."""
    wrong = [value for value in values if value not in allowed]
    if wrong:
        kind = "a transformer" if family == TRANSFORMER else f"a CNN ({family})"
        raise ConfigError(f"{where}: '{wrong[0]}' is not {noun} of {kind}; allowed there: {', '.join(allowed)}")


def with_family_defaults(spec: MethodSpec, options: Any, family: str) -> Any:
    """``options`` with each option left None set to ``family``'s default (the options themselves when none is)."""
    fill = {key: value for key, value in spec.family_defaults.get(family, {}).items() if getattr(options, key) is None}
    return replace(options, **fill) if fill else options


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    REGISTRY[spec.name] = spec
    return spec


def elastic_modules(model: nn.Module, method: str | None = None) -> list[Elastic]:
    """All elastic method modules in ``model`` (optionally of one method), in tree order."""
    return [m for m in model.modules() if isinstance(m, Elastic) and method in (None, m.method)]
