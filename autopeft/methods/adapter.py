"""Bottleneck adapters, sequential (Houlsby/Pfeiffer) or parallel (AdaptFormer); Conv-Adapters beside CNN blocks;
the bottleneck they share with Pro-tuning's prompt blocks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from autopeft import inject
from autopeft.backbones import CNN_FAMILIES, POST_NORM, TRANSFORMER, BackboneInfo, block_geometry
from autopeft.config import option, per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import (
    EVERYTHING,
    NOTHING,
    ElasticWrapper,
    Index,
    MethodSpec,
    check_family_choices,
    register,
    tensor_kwargs,
)

Position = Literal["sequential", "parallel"]
Scale = float | Literal["learnable", "learnable_scalar"]
NORM_OF_SITE = {"mlp": "norm2", "attn": "norm1"}
TRANSFORMER_SITES, CNN_SITES = ("mlp", "attn"), ("block",)


@dataclass
class AdapterOptions:
    """Bottleneck adapters' options."""

    dim: int | list[int] = option(
        8,
        help="The bottleneck width (hidden channels) of each adapter: one integer for every block, or a list with "
        "one entry per block; 0 leaves a block without adapters.",
    )
    position: Position = option(
        "parallel",
        help="parallel (AdaptFormer): the adapter reads the residual stream entering the sub-layer (CNNs: the "
        "block's input); sequential (Houlsby/Pfeiffer): the sub-layer's output (CNNs: the block's). Either way its "
        "output is added to the sub-layer's (the block's) output.",
    )
    sites: list[Literal["mlp", "attn", "block"]] | None = option(
        None,
        help="Where adapters go: transformers take mlp and/or attn (beside each block's sub-layer), CNNs block "
        "(beside each whole block, a Conv-Adapter). null: the family's default (mlp on transformers, block on CNNs).",
    )
    scale: Scale = option(
        0.1,
        help="The adapter output's multiplier: a fixed number, learnable (a learned scale per channel, initialized "
        "to 1) or learnable_scalar (one learned scale).",
    )

    def __post_init__(self) -> None:
        if self.sites is not None and (not self.sites or len(set(self.sites)) != len(self.sites)):
            raise ConfigError(f"adapter.sites: got {self.sites}; allowed: a non-empty subset of mlp, attn")


class Bottleneck(ElasticWrapper):
    """A bottleneck beside a wrapped module: ``down`` (in -> k) and ``up`` (k -> out) at the active width ``k`` of the
    allocated ``dim``; ``down`` kaiming-uniform, ``up`` and both biases zero, so its output starts at exactly zero.
    Linears, applied to NCHW maps as 1x1 convolutions (``down_map``, ``up_map``). Adapters and Pro-tuning's prompt
    blocks (``autopeft.methods.pro_tuning``) are bottlenecks."""

    def add_bottleneck(self, in_width: int, out_width: int, dim: int) -> None:
        kw = tensor_kwargs(self.base)
        self.down = nn.Linear(in_width, dim, **kw)
        self.up = nn.Linear(dim, out_width, **kw)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def down_map(self, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """``down`` at the active width on an NCHW map, as a 1x1 convolution with ``stride``."""
        k = self.size
        return F.conv2d(x, self.down.weight[:k, :, None, None], self.down.bias[:k], stride)

    def up_map(self, z: torch.Tensor) -> torch.Tensor:
        """``up`` at the active width on an NCHW map of ``k`` channels, as a 1x1 convolution."""
        return F.conv2d(z, self.up.weight[:, : self.size, None, None], self.up.bias)

    def own_parameters(self) -> list[nn.Parameter]:
        return [*self.down.parameters(), *self.up.parameters()]

    def active_parts(self) -> list[tuple[nn.Parameter, Index]]:
        if self.size == 0:
            return [(p, NOTHING) for p in self.own_parameters()]
        k = slice(0, self.size)
        parts = [(self.down.weight, (k,)), (self.down.bias, (k,)), (self.up.weight, (slice(None), k))]
        return [*parts, (self.up.bias, EVERYTHING)]

    def count(self) -> int:
        if self.size == 0:
            return 0
        return (self.down.in_features + self.up.out_features) * self.size + self.size + self.up.out_features


class BottleneckAdapter(Bottleneck):
    """What both adapters share: the bottleneck, ReLU between ``down`` and ``up``, the output times a fixed scale or
    a learned one (per channel or a scalar)."""

    method = "adapter"

    def add_adapter(self, in_width: int, out_width: int, dim: int, scale: Scale) -> None:
        self.add_bottleneck(in_width, out_width, dim)
        self.fixed_scale = scale if isinstance(scale, float) else None
        shape = {"learnable": (out_width,), "learnable_scalar": (1,)}.get(scale, ())
        self.learned_scale = nn.Parameter(torch.ones(shape, **tensor_kwargs(self.base))) if shape else None

    def scale(self, channel_dim: int = -1) -> torch.Tensor | float:
        """The output scale, per channel along ``channel_dim`` when learned per channel."""
        if self.learned_scale is None:
            return self.fixed_scale
        return self.learned_scale.view(-1, 1, 1) if channel_dim == 1 else self.learned_scale

    def own_parameters(self) -> list[nn.Parameter]:
        return super().own_parameters() + ([self.learned_scale] if self.learned_scale is not None else [])

    def active_parts(self) -> list[tuple[nn.Parameter, Index]]:
        if self.learned_scale is None:
            return super().active_parts()
        return [*super().active_parts(), (self.learned_scale, EVERYTHING if self.size else NOTHING)]

    def count(self) -> int:
        extra = self.learned_scale.numel() if self.learned_scale is not None and self.size else 0
        return super().count() + extra

    def extra_repr(self) -> str:
        scale = "learned" if self.learned_scale is not None else self.fixed_scale
        return f"{super().extra_repr()}, position={self.position}, scale={scale}"


class Adapter(BottleneckAdapter):
    """``h = base(norm(x))``; returns ``h + s * up(relu(down(src)))``.

    ``src`` is ``h`` (sequential: on the sub-layer output, before the residual add) or
    ``x`` (parallel: fed the residual stream). The block's own norm moves in here so the
    residual stream is visible; the block keeps an Identity in its place.
    """

    def __init__(
        self, base: nn.Module, norm: nn.Module, width: int, block: int, dim: int, position: Position, scale: Scale
    ) -> None:
        super().__init__(base, block, dim)
        self.norm = norm
        self.position = position
        self.add_adapter(width, width, dim, scale)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        h = self.base(self.norm(x), **kwargs)
        k = self.size
        if k == 0:
            return h
        src = h if self.position == "sequential" else x
        z = F.relu(F.linear(src, self.down.weight[:k], self.down.bias[:k]))
        z = F.linear(z, self.up.weight[:, :k], self.up.bias)
        return h + z * self.scale()


class ConvAdapter(BottleneckAdapter):
    """A Conv-Adapter (Chen et al., 2022) beside a whole CNN block: ``block(x) + s * up(relu(down(src)))`` with
    ``down`` and ``up`` 1x1 convolutions (a bottleneck of ``k`` channels). Parallel: ``src`` is the block's input
    and ``down`` takes the block's stride, so its map aligns with the block's output (also where the block changes
    width or resolution); sequential: ``src`` is the block's output."""

    def __init__(
        self, base: nn.Module, block: int, dim: int, geometry: tuple[int, int, int], position: Position, scale: Scale
    ) -> None:
        super().__init__(base, block, dim)
        in_width, out_width, stride = geometry
        self.position = position
        self.stride = stride if position == "parallel" else 1
        self.add_adapter(in_width if position == "parallel" else out_width, out_width, dim, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        if self.size == 0:
            return h
        src = x if self.position == "parallel" else h
        return h + self.up_map(F.relu(self.down_map(src, self.stride))) * self.scale(channel_dim=1)


def attach(model: nn.Module, opts: AdapterOptions, info: BackboneInfo) -> None:
    dims = per_block(opts.dim, info.depth, "adapter.dim")
    allowed = TRANSFORMER_SITES if info.family == TRANSFORMER else CNN_SITES  # CNNs: beside whole blocks
    check_family_choices("adapter.sites", "a site", opts.sites, allowed, info.family)
    if info.family != TRANSFORMER:
        for index, (parent, attr) in enumerate(inject.block_slots(model)):
            if dims[index]:
                geometry = block_geometry(inject.unwrapped(getattr(parent, attr)))
                inject.wrap(parent, attr, ConvAdapter, index, dims[index], geometry, opts.position, opts.scale)
        return
    for index, block in inject.blocks_of(model):
        if dims[index] == 0:
            continue
        kind = type(inject.unwrapped(block)).__name__
        if kind in POST_NORM:
            raise ConfigError(
                f"adapter: block {index} is post-norm ({kind}: x + norm(sublayer(x))), where an adapter would "
                f"have to move the norm in front of its sub-layer; allowed on this backbone: lora, ssf, vpt, "
                f"kv_prompt and the baselines"
            )
        for site in opts.sites:
            norm_parent, norm_attr = inject.locate(block, NORM_OF_SITE[site], "adapter", index)
            norm = inject.swap(norm_parent, norm_attr, nn.Identity())
            width = inject.unwrapped(norm).normalized_shape[-1]  # the block's own width (Swin stages differ)
            parent, attr = inject.locate(block, site, "adapter", index)
            inject.wrap(parent, attr, Adapter, norm, width, index, dims[index], opts.position, opts.scale)


SPEC = register(
    MethodSpec(
        name="adapter",
        options=AdapterOptions,
        attach=attach,
        order=3,
        size_option="dim",
        identity_at_init=True,
        cnn=True,
        family_defaults={
            TRANSFORMER: {"sites": list(TRANSFORMER_SITES[:1])},
            **{family: {"sites": list(CNN_SITES)} for family in CNN_FAMILIES.values()},
        },
    )
)
