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
    # CNN blocks: ResNet's convolutions, EfficientNet's and MobileNetV3's pointwise ones (ConvNeXt: mlp.fc1, mlp.fc2)
    "conv1": ("conv1",),
    "conv2": ("conv2",),
    "conv3": ("conv3",),
    "conv_pw": ("conv_pw",),
    "conv_pwl": ("conv_pwl",),
}
# Sites some families split into several Linears: EVA's unfused attention (``q_proj``, ``k_proj``, ``v_proj``
# in place of ``qkv``) and SwiGLU MLPs with separate gate and value layers (``fc1_g``, ``fc1_x`` in place of ``fc1``).
SPLIT_SITES: dict[str, tuple[str, ...]] = {"qkv": ("q_proj", "k_proj", "v_proj"), "fc1": ("fc1_g", "fc1_x")}


def unwrapped(module: nn.Module) -> nn.Module:
    """Follow ``.base`` through autopeft wrappers to the original timm module."""
    while isinstance(getattr(module, "base", None), nn.Module):
        module = module.base
    return module


def innermost(parent: nn.Module, attr: str) -> tuple[nn.Module, str]:
    """``(parent, attribute)`` of the timm module at ``parent.attr``, inside any wrappers around it."""
    while isinstance(getattr(getattr(parent, attr), "base", None), nn.Module):
        parent, attr = getattr(parent, attr), "base"
    return parent, attr


def locate(block: nn.Module, site: str, method: str, index: int) -> tuple[nn.Module, str]:
    """Return ``(parent, attribute)`` of ``site`` in ``block``, looking through wrappers."""
    found = locate_all(block, site, method, index)
    if len(found) != 1:
        raise BackboneError(
            f"{method}: site '{site}' in block {index} is split into {', '.join(attr for _, attr in found)}"
        )
    return found[0]


def locate_all(block: nn.Module, site: str, method: str, index: int) -> list[tuple[nn.Module, str]]:
    """``(parent, attribute)`` of every module that makes up ``site`` in ``block``: the one module, or the
    parts of a split site (``SPLIT_SITES``) when the block has them instead, looking through wrappers."""
    *path, attr = BLOCK_SITES[site]
    parent = block
    for step in path:
        parent = unwrapped(getattr(parent, step))
    if isinstance(getattr(parent, attr, None), nn.Module):
        return [(parent, attr)]
    split = SPLIT_SITES.get(site, ())
    if split and all(isinstance(getattr(parent, part, None), nn.Module) for part in split):
        return [(parent, part) for part in split]
    raise BackboneError(f"{method}: site '{site}' not found in block {index} ({type(parent).__name__} has no '{attr}')")


def reads_qkv_weight(attn: nn.Module) -> bool:
    """Whether ``attn`` computes q, k and v as ``F.linear(x, self.qkv.weight, cat(q_bias, k_bias, v_bias))``:
    EVA's and BEiT's attention with separate q / v biases do, a read of the weight that bypasses any module
    wrapping ``qkv`` (timm's ``qkv_bias_separate`` path calls the module, then adds the biases)."""
    return (
        isinstance(getattr(attn, "qkv", None), nn.Module)
        and getattr(attn, "q_bias", None) is not None
        and not getattr(attn, "qkv_bias_separate", True)
    )


def call_qkv_module(attn: nn.Module) -> None:
    """Make an attention that reads ``qkv.weight`` directly call its ``qkv`` module instead whenever that is
    needed: a forward pre-hook (once per attention) sets timm's own ``qkv_bias_separate`` flag before each call,
    True while a wrapper on ``qkv`` asks for the call (``calls_qkv``: SSF switched on there) or the Linear has a
    bias of its own (merged SSF), else False: timm's direct read, bit for bit the plain model."""
    if _route_qkv not in attn._forward_pre_hooks.values():
        attn.register_forward_pre_hook(_route_qkv)


def route_qkv(attn: nn.Module) -> None:
    """Set ``attn``'s ``qkv_bias_separate`` flag now as ``call_qkv_module``'s hook would before a call, for code
    that computes q, k and v in place of ``attn``'s own forward (key-value prompts); nothing without the hook."""
    if _route_qkv in attn._forward_pre_hooks.values():
        _route_qkv(attn, ())


def _route_qkv(attn: nn.Module, args: Any) -> None:
    module, called = attn.qkv, False
    while True:
        called = called or bool(getattr(module, "calls_qkv", False))
        if not isinstance(getattr(module, "base", None), nn.Module):
            break
        module = module.base
    attn.qkv_bias_separate = called or getattr(module, "bias", None) is not None


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
    """The blocks, numbered over all stages: a ViT's ``blocks``, or the blocks of each stage of a hierarchical
    model (Swin's ``layers``, a CNN's stages) in order. Per-block size lists index this numbering."""
    yield from enumerate(all_blocks(model))


def all_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of every stage, in forward order."""
    return [block for stage in _stage_containers(model) for block in stage]


def block_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(container, attribute)`` of every block, numbered as ``blocks_of``: where a wrapper of a whole block goes."""
    return [(stage, name) for stage in _stage_containers(model) for name, _ in stage.named_children()]


def stage_lengths(model: nn.Module) -> list[int]:
    """How many blocks each stage holds, in order, numbered as ``blocks_of`` (a plain ViT: one stage of all)."""
    return [len(list(stage.children())) for stage in _stage_containers(model)]


def _stage_containers(model: nn.Module) -> list[nn.Module]:
    """The module holding each stage's blocks: a ViT's ``blocks`` (one stage), Swin's ``layers[i].blocks``,
    ConvNeXt's ``stages[i].blocks``, ResNet's ``layer1`` .. ``layer4``, EfficientNet's and MobileNetV3's
    ``blocks[i]`` (a ``blocks`` of ``Sequential`` stages)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Module):
        stages = list(blocks.children())
        return stages if stages and all(type(stage) is nn.Sequential for stage in stages) else [blocks]
    layers = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(layer, nn.Sequential) for layer in layers):
        return layers
    stages = getattr(model, "layers", None) or getattr(model, "stages", ())
    return [stage.blocks for stage in stages if isinstance(getattr(stage, "blocks", None), nn.Module)]


def block_count(model: nn.Module) -> int:
    return len(all_blocks(model))
