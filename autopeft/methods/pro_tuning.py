"""Pro-tuning (Nie et al., 2022): a prompt block after a stage makes an input-dependent prompt from the stage's
feature map and adds it to that map, the next stage's input; the backbone stays frozen.

The prompt block is a bottleneck (``autopeft.methods.adapter.Bottleneck``): a 1x1 convolution from the stage's ``c``
channels to ``k``, a 5x5 depthwise convolution on the ``k``, a 1x1 convolution back to ``c``, all with biases and
nothing between them; ``k`` is the elastic size. Stages are a CNN's or a Swin's own; a plain ViT (EVA, BEiT and
relative-position ViTs too) is cut into stages of ``group`` blocks, its patch tokens folded into their grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from autopeft import inject
from autopeft.backbones import TRANSFORMER, BackboneInfo
from autopeft.config import option, per_block
from autopeft.errors import BackboneError, ConfigError
from autopeft.methods.adapter import Bottleneck
from autopeft.methods.base import NOTHING, Index, MethodSpec, register, tensor_kwargs
from autopeft.methods.vpt import Transparent, pack, unpack

KERNEL = 5  # the depthwise convolution's kernel, 'same' padding
STAGES = 4  # a one-stage backbone is cut into this many stages by default, as ResNets and Swins have


@dataclass
class ProTuningOptions:
    """Pro-tuning's options: prompt blocks after stages, each prompt added to the next stage's input."""

    dim: int | list[int] = option(
        16,
        help="The prompt block's hidden channels: one integer, or a list with one entry per block, a stage's "
        "prompt block taking the entry of the stage's first block; 0 leaves that stage without one.",
    )
    stages: list[int] | None = option(
        None,
        help="The stages (numbered from 0) followed by a prompt block, each prompt going into the next stage, so "
        "not the last. null: every stage but the last.",
    )
    group: int | None = option(
        None,
        help="Blocks per stage (1 to depth - 1) when a one-stage backbone (plain ViTs, EVA, BEiT, relative-position "
        "ViTs) is cut into stages, the last keeping the remainder. null: ceil(depth / 4); backbones with stages of "
        "their own (Swin, CNNs) take null only.",
    )

    def __post_init__(self) -> None:
        if self.group is not None and self.group < 1:
            raise ConfigError(f"pro_tuning.group: got {self.group}; allowed: a positive integer (blocks per stage)")
        if self.stages is not None and (not self.stages or len(set(self.stages)) != len(self.stages)):
            raise ConfigError(f"pro_tuning.stages: got {self.stages}; allowed: a non-empty list of distinct stages")


class StagePrompt(Transparent, Bottleneck):
    """The prompt block after a stage, wrapping the stage's last block (``base``): its output map ``F`` becomes
    ``F + P(F)`` with ``P`` the 1x1 -> 5x5 depthwise -> 1x1 bottleneck at the active width. ``up`` starts at zero, so
    a new prompt block (and any at size 0) is the plain model bit for bit. ``block`` is the stage's first block,
    whose entry of a per-block size list is the prompt block's size. This class takes NCHW maps (CNNs)."""

    method = "pro_tuning"

    def __init__(self, base: nn.Module, block: int, dim: int, width: int, stage: int) -> None:
        super().__init__(base, block, dim)
        self.stage = stage
        self.add_bottleneck(width, width, dim)
        self.depthwise = nn.Conv2d(dim, dim, KERNEL, padding=KERNEL // 2, groups=dim, **tensor_kwargs(base))
        nn.init.kaiming_uniform_(self.depthwise.weight, a=math.sqrt(5))
        nn.init.zeros_(self.depthwise.bias)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.base(x, *args, **kwargs)
        return self.prompted(y) if self.size else y

    def prompted(self, y: torch.Tensor) -> torch.Tensor:
        return added(y, (...,), self.prompt(y))

    def prompt(self, maps: torch.Tensor) -> torch.Tensor:
        """``P(maps)`` for NCHW ``maps`` at the active width ``k``."""
        k = self.size
        z = self.down_map(maps)
        z = F.conv2d(z, self.depthwise.weight[:k], self.depthwise.bias[:k], padding=KERNEL // 2, groups=k)
        return self.up_map(z)

    def own_parameters(self) -> list[nn.Parameter]:
        return [*super().own_parameters(), *self.depthwise.parameters()]

    def active_parts(self) -> list[tuple[nn.Parameter, Index]]:
        k = (slice(0, self.size),) if self.size else NOTHING
        return [*super().active_parts(), (self.depthwise.weight, k), (self.depthwise.bias, k)]

    def count(self) -> int:
        """``c*k + k`` (down), ``25k + k`` (depthwise), ``k*c + c`` (up)."""
        return super().count() + (KERNEL * KERNEL + 1) * self.size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stage={self.stage}"


class GridStagePrompt(StagePrompt):
    """On a Swin stage's ``(B, H, W, C)`` grid; shallow VPT prompts packed below the grid (``PromptedSwinBlock``)
    are left alone."""

    def prompted(self, y: torch.Tensor) -> torch.Tensor:
        packed = getattr(self.base, "packed", None)
        n = packed() if packed is not None else 0
        grid, prompts = unpack(y, n) if n else (y, None)
        grid = added(grid, (...,), self.prompt(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return pack(grid, prompts) if n else grid


class TokenStagePrompt(StagePrompt):
    """On a ViT's ``(B, N, C)`` tokens: the patch tokens (the last ``H*W``, after the prefix tokens and any VPT
    prompts, which are left alone) folded into their ``(H, W)`` grid."""

    def __init__(self, base: nn.Module, block: int, dim: int, width: int, stage: int, grid: tuple[int, int]) -> None:
        super().__init__(base, block, dim, width, stage)
        self.grid = grid

    def prompted(self, y: torch.Tensor) -> torch.Tensor:
        (h, w), (batch, _, width) = self.grid, y.shape
        patches = (slice(None), slice(-h * w, None))
        maps = y[patches].transpose(1, 2).reshape(batch, width, h, w)
        return added(y, patches, self.prompt(maps).flatten(2).transpose(1, 2))


def added(y: torch.Tensor, index: tuple, prompt: torch.Tensor) -> torch.Tensor:
    """``y`` with ``prompt`` added to ``y[index]``, in ``y``'s memory layout: timm pools a ViT's tokens in the order
    they lie in memory, so the plain model's layout keeps a zero prompt bit for bit."""
    out = y.clone()
    out[index] += prompt
    return out


def stage_spans(model: nn.Module, group: int | None, depth: int) -> list[range]:
    """The blocks of each stage: the model's own stages, or a one-stage model cut into ``group`` blocks each."""
    lengths = inject.stage_lengths(model)
    if len(lengths) > 1:
        if group is not None:
            raise ConfigError(
                f"pro_tuning.group: got {group}; allowed: null on a backbone with {len(lengths)} stages of its own "
                f"(Swin, CNNs)"
            )
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        return [range(start, start + n) for start, n in zip(starts, lengths, strict=True)]
    size = group or math.ceil(depth / STAGES)
    if size >= depth:
        given = f"got {group}" if group else f"null gives {size}"
        allowed = f"1..{depth - 1}" if depth > 1 else "a backbone of two blocks or more"
        raise ConfigError(
            f"pro_tuning.group: {given}; the {depth} blocks would form one stage, with no next stage for a prompt; "
            f"allowed: {allowed}"
        )
    return [range(start, min(start + size, depth)) for start in range(0, depth, size)]


def check_stages(stages: list[int], count: int) -> None:
    """Each prompt goes into the next stage: stages ``0 .. count - 2`` can have a prompt block."""
    wrong = [stage for stage in stages if not 0 <= stage < count - 1]
    if wrong:
        raise ConfigError(
            f"pro_tuning.stages: got {wrong[0]}; allowed: 0..{count - 2} (a prompt goes into the next stage; this "
            f"backbone has {count} stages)"
        )


def _patch_grid(model: nn.Module) -> tuple[int, int]:
    """The ``(H, W)`` grid of a ViT's patch tokens."""
    if getattr(model, "dynamic_img_size", False):
        raise BackboneError(
            "pro_tuning: needs a fixed patch grid to fold the tokens into a map; this ViT has dynamic_img_size; "
            "allowed: dynamic_img_size=False"
        )
    return tuple(model.patch_embed.grid_size)


def _width(block: nn.Module, index: int, info: BackboneInfo) -> int:
    """Channels the stage's last block puts out."""
    if info.family != TRANSFORMER:
        return info.widths[index]
    return inject.unwrapped(getattr(*inject.locate(inject.unwrapped(block), "proj", "pro_tuning", index))).out_features


def attach(model: nn.Module, opts: ProTuningOptions, info: BackboneInfo) -> None:
    dims = per_block(opts.dim, info.depth, "pro_tuning.dim")
    spans = stage_spans(model, opts.group, info.depth)
    stages = list(range(len(spans) - 1)) if opts.stages is None else opts.stages
    check_stages(stages, len(spans))
    slots = inject.block_slots(model)
    for stage in stages:
        first, last = spans[stage][0], spans[stage][-1]
        if not dims[first]:
            continue
        parent, attr = slots[last]
        args = (first, dims[first], _width(getattr(parent, attr), last, info), stage)
        if info.family != TRANSFORMER:
            inject.wrap(parent, attr, StagePrompt, *args)
        elif isinstance(model, SwinTransformer):
            inject.wrap(parent, attr, GridStagePrompt, *args)
        else:
            inject.wrap(parent, attr, TokenStagePrompt, *args, _patch_grid(model))


SPEC = register(
    MethodSpec(
        name="pro_tuning",
        options=ProTuningOptions,
        attach=attach,
        order=5,
        size_option="dim",
        identity_at_init=True,
        cnn=True,
    )
)
