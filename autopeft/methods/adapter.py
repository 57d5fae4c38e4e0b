"""Bottleneck adapters, sequential (Houlsby/Pfeiffer) or parallel (AdaptFormer)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from autopeft import inject
from autopeft.backbones import POST_NORM, BackboneInfo
from autopeft.config import per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import EVERYTHING, NOTHING, ElasticWrapper, Index, MethodSpec, register, tensor_kwargs

Position = Literal["sequential", "parallel"]
Scale = float | Literal["learnable", "learnable_scalar"]
NORM_OF_SITE = {"mlp": "norm2", "attn": "norm1"}


@dataclass
class AdapterOptions:
    dim: int | list[int] = 8
    position: Position = "parallel"
    sites: list[Literal["mlp", "attn"]] = field(default_factory=lambda: ["mlp"])
    scale: Scale = 0.1

    def __post_init__(self) -> None:
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"adapter.sites: got {self.sites}; allowed: a non-empty subset of mlp, attn")


class Adapter(ElasticWrapper):
    """``h = base(norm(x))``; returns ``h + s * up(relu(down(src)))``.

    ``src`` is ``h`` (sequential: on the sub-layer output, before the residual add) or
    ``x`` (parallel: fed the residual stream). The block's own norm moves in here so the
    residual stream is visible; the block keeps an Identity in its place.
    """

    method = "adapter"

    def __init__(
        self, base: nn.Module, norm: nn.Module, width: int, block: int, dim: int, position: Position, scale: Scale
    ) -> None:
        super().__init__(base, block, dim)
        self.norm = norm
        self.position = position
        kw = tensor_kwargs(base)
        self.down = nn.Linear(width, dim, **kw)
        self.up = nn.Linear(dim, width, **kw)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.fixed_scale = scale if isinstance(scale, float) else None
        shape = {"learnable": (width,), "learnable_scalar": (1,)}.get(scale, ())
        self.learned_scale = nn.Parameter(torch.ones(shape, **kw)) if shape else None

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        h = self.base(self.norm(x), **kwargs)
        k = self.size
        if k == 0:
            return h
        src = h if self.position == "sequential" else x
        z = F.relu(F.linear(src, self.down.weight[:k], self.down.bias[:k]))
        z = F.linear(z, self.up.weight[:, :k], self.up.bias)
        scale = self.learned_scale if self.learned_scale is not None else self.fixed_scale
        return h + z * scale

    def own_parameters(self) -> list[nn.Parameter]:
        own = [*self.down.parameters(), *self.up.parameters()]
        return own + ([self.learned_scale] if self.learned_scale is not None else [])

    def active_parts(self) -> list[tuple[nn.Parameter, Index]]:
        if self.size == 0:
            return [(p, NOTHING) for p in self.own_parameters()]
        k = slice(0, self.size)
        parts = [(self.down.weight, (k,)), (self.down.bias, (k,)), (self.up.weight, (slice(None), k))]
        scale = [(self.learned_scale, EVERYTHING)] if self.learned_scale is not None else []
        return [*parts, (self.up.bias, EVERYTHING), *scale]

    def count(self) -> int:
        if self.size == 0:
            return 0
        width = self.up.out_features
        extra = self.learned_scale.numel() if self.learned_scale is not None else 0
        return 2 * width * self.size + self.size + width + extra

    def extra_repr(self) -> str:
        scale = "learned" if self.learned_scale is not None else self.fixed_scale
        return f"{super().extra_repr()}, position={self.position}, scale={scale}"


def attach(model: nn.Module, opts: AdapterOptions, info: BackboneInfo) -> None:
    dims = per_block(opts.dim, info.depth, "adapter.dim")
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
    )
)
