"""The only code that edits a timm module tree: locate sites, wrap and unwrap modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from autopeft.errors import BackboneError

# Where each named site lives inside a timm ViT block (attribute path from the block).
BLOCK_SITES: dict[str, tuple[str, ...]] = {
    "norm1": ("norm1",),
    "attn": ("attn",),
    "qkv": ("attn", "qkv"),
    "proj": ("attn", "proj"),
    "norm2": ("norm2",),
    "mlp": ("mlp",),
    "fc1": ("mlp", "fc1"),
    "fc2": ("mlp", "fc2"),
}


def unwrapped(module: nn.Module) -> nn.Module:
    """Follow ``.base`` through autopeft wrappers to the original timm module."""
    while isinstance(getattr(module, "base", None), nn.Module):
        module = module.base
    return module


def locate(block: nn.Module, site: str, method: str, index: int) -> tuple[nn.Module, str]:
    """Return ``(parent, attribute)`` of ``site`` in ``block``, looking through wrappers."""
    *path, attr = BLOCK_SITES[site]
    parent = block
    for step in path:
        parent = unwrapped(getattr(parent, step))
    if not isinstance(getattr(parent, attr, None), nn.Module):
        raise BackboneError(
            f"{method}: site '{site}' not found in block {index} ({type(parent).__name__} has no '{attr}')"
        )
    return parent, attr


def wrap(parent: nn.Module, attr: str, wrapper: Callable[..., nn.Module], *args: Any) -> nn.Module:
    """Replace ``parent.attr`` by ``wrapper(parent.attr, *args)`` (in the same train/eval mode)."""
    old = getattr(parent, attr)
    new = wrapper(old, *args).train(old.training)
    setattr(parent, attr, new)
    return new


def swap(parent: nn.Module, attr: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``parent.attr`` and return the module that was there."""
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


def replace_modules(root: nn.Module, select: Callable[[nn.Module], nn.Module | None]) -> None:
    """Replace every module for which ``select`` returns a substitute, innermost first."""
    for name, module in reversed(list(root.named_modules())):
        substitute = select(module)
        if substitute is not None and substitute is not module and name:
            parent_name, _, attr = name.rpartition(".")
            setattr(root.get_submodule(parent_name), attr, substitute)


def blocks_of(model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    """The transformer blocks, numbered over all stages: a ViT's ``blocks``, or the blocks of each stage
    of a hierarchical model (Swin's ``layers``) in order. Per-block size lists index this numbering."""
    yield from enumerate(stage_blocks(model)[1])


def stage_blocks(model: nn.Module) -> tuple[list[int], list[nn.Module]]:
    """The stage of every block and the blocks themselves, in forward order."""
    if isinstance(getattr(model, "blocks", None), nn.Module):
        blocks = list(model.blocks)
        return [0] * len(blocks), blocks
    stages = [
        stage.blocks for stage in getattr(model, "layers", ()) if isinstance(getattr(stage, "blocks", None), nn.Module)
    ]
    return [i for i, stage in enumerate(stages) for _ in stage], [block for stage in stages for block in stage]


def block_count(model: nn.Module) -> int:
    return len(stage_blocks(model)[1])
