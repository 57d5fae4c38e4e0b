"""VPT: learnable prompt tokens after the prefix tokens, shallow (input) or deep (per block).

Prompts carry no position: EVA's rope gives them the identity rotation, and every relative position bias (BEiT's,
relative-position ViTs', Swin's) has zero rows and columns for them. On Swin they are prepended inside every window
(VPT's Swin variant, Jia et al., ECCV 2022); see ``PromptedSwinBlock``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.models.beit import Attention as BeitAttention
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformer,
    WindowAttention,
    window_partition,
    window_reverse,
)
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn

from autopeft import inject
from autopeft.backbones import BackboneInfo
from autopeft.config import option, per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import MethodSpec, register, tensor_kwargs
from autopeft.methods.prompts import PromptWrapper

SHARED_BIASES = ("shared_rel_pos_bias", "shared_rel_pos")  # BEiT's and relative-position ViTs' block inputs


@dataclass
class VPTOptions:
    """VPT's options (transformer backbones only)."""

    length: int | list[int] = option(
        10,
        help="Prompt tokens per block (on Swin, inside every window): one integer for every block, or (deep only) "
        "a list with one entry per block; 0 adds none. Shallow takes one integer: the prompts entering block 0.",
    )
    mode: Literal["deep", "shallow"] = option(
        "deep",
        help="deep: every block gets its own prompts in place of the previous block's; shallow: prompts enter "
        "once, before the first block, and travel through every block.",
    )
    dropout: float = option(
        0.1, help="Dropout probability on the prompt tokens during training, 0 <= dropout < 1 (0: none)."
    )

    def __post_init__(self) -> None:
        if self.mode == "shallow" and isinstance(self.length, list):
            raise ConfigError("vpt.length: a per-block list needs mode 'deep'; allowed with 'shallow': one integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"vpt.dropout: got {self.dropout}; allowed: 0 <= dropout < 1")


class PromptRoute:
    """Which prompts are in the token sequence around each block (shared by a model's PromptedBlocks).

    Deep: before each block its own prompts replace the previous block's (a block of length 0 sees
    none). Shallow: block 0's prompts enter before it and travel through every block. After the last
    block every prompt leaves, so pooling and the head never see one. ``prefix``: the tokens before the prompts.
    """

    def __init__(self, lengths: list[int], deep: bool, num_prefix_tokens: int) -> None:
        self.lengths, self.deep, self.prefix = lengths, deep, num_prefix_tokens

    def entering(self, block: int) -> int:
        """Prompt tokens in the sequence that reaches ``block``."""
        return 0 if block == 0 else self.lengths[block - 1 if self.deep else 0]

    def inside(self, block: int) -> int:
        """Prompt tokens in the sequence inside ``block`` (and that it puts out, unless it is the last)."""
        return self.lengths[block if self.deep else 0]


class Transparent:
    """Mixin for a module that wraps ``base``: the wrapped module's own parts (a block's ``attn``, ``mlp``,
    ``norm1``; an attention's ``qkv``, ``num_heads``, ...) stay reachable through the wrapper."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base"), name)


class PromptedBlock(Transparent, PromptWrapper):
    """One transformer block (``base``) with the VPT prompts of its place in the sequence: it puts its own
    prompts after the prefix tokens in place of the ones it received (deep: every block; shallow: block 0),
    runs the block with position inputs that give the prompts none (``position_free``), and the last block
    removes them. One wrapper per block, so timm's gradient checkpointing, which runs the blocks one by one,
    keeps the prompts."""

    method = "vpt"
    tensors = ("prompt",)

    def __init__(
        self,
        base: nn.Module,
        block: int,
        length: int,
        route: PromptRoute,
        last: bool,
        width: int,
        bound: float,
        dropout: float,
    ) -> None:
        super().__init__(base, block, length)
        self.route, self.last, self.dropout = route, last, dropout
        empty = torch.empty(length, width, **tensor_kwargs(base))
        self.prompt = nn.Parameter(empty.uniform_(-bound, bound)) if length else None

    def resized(self) -> None:
        self.route.lengths[self.block] = self._size

    def forward(self, x: torch.Tensor, **inputs: Any) -> torch.Tensor:
        route, n, entering = self.route, self.route.prefix, self.route.entering(self.block)
        if (route.deep or self.block == 0) and (entering or self.size):
            pieces = [x[:, :n], self._prompt(x.shape[0])] if self.size else [x[:, :n]]
            x = torch.cat([*pieces, x[:, n + entering :]], dim=1)
        inside = route.inside(self.block)
        x = self.base(x, **position_free(inputs, n, inside))
        return torch.cat([x[:, :n], x[:, n + inside :]], dim=1) if self.last and inside else x

    def _prompt(self, batch: int) -> torch.Tensor:
        prompt = self.prompt_tensor("prompt")[: self.size]
        return F.dropout(prompt.expand(batch, -1, -1), self.dropout, self.training)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={'deep' if self.route.deep else 'shallow'}"


class PromptedSwinBlock(PromptedBlock):
    """A Swin block (``base``) with VPT prompts in every window, as VPT's Swin variant and its reference code:
    the prompts are prepended to the tokens of every (shifted) window, the same prompts in all windows of an
    image, with zero relative position bias and no shifted-window mask on their rows and columns; each prompt's
    output is its mean over the image's windows, then the residual and the MLP as for any token. Deep: every
    block's own prompts, at its stage's width, live only inside it. Shallow: block 0's prompts travel through
    every block and patch merging (``PromptedMerging``), packed below the grid (``pack``), and leave after the
    last block; the head pools the patch tokens only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.route.inside(self.block)
        if not n:
            return self.base(x)
        travel = not self.route.deep
        if travel and self.block:
            x, prompts = unpack(x, n)
        else:
            prompts = self._prompt(x.shape[0])
        x, prompts = self._prompted(x, prompts)
        return pack(x, prompts) if travel and not self.last else x

    def packed(self) -> int:
        """Prompt tokens packed below the grid this block puts out (shallow prompts travelling on), else 0."""
        return self.route.lengths[0] if not self.route.deep and not self.last else 0

    def _prompted(self, x: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timm's block on the grid ``x`` ``(B, H, W, C)`` and the ``prompts`` ``(B, n, C)``: norm, window
        attention, residual, norm, MLP, residual; returns both."""
        block, n = self.base, prompts.shape[1]
        B, H, W, C = x.shape
        tokens = torch.cat([prompts, x.reshape(B, H * W, C)], dim=1)
        tokens = tokens + block.drop_path1(self._window_attention(block.norm1(tokens), H, W))
        tokens = tokens + block.drop_path2(block.mlp(block.norm2(tokens)))
        return tokens[:, n:].reshape(B, H, W, C), tokens[:, :n]

    def _window_attention(self, tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """timm's shifted-window attention (``SwinTransformerBlock._attn``) on the normed ``[prompts | grid]``
        tokens, with the prompts prepended to every window (the mask padded with zeros for them; the attention's
        wrapper ``PromptFreeAttention`` pads the bias) and their outputs averaged over each image's windows."""
        block, n = self.base, self.route.inside(self.block)
        B, _, C = tokens.shape
        prompts, x = tokens[:, :n], tokens[:, n:].reshape(B, H, W, C)
        (wh, ww), (sh, sw) = block.window_size, block.shift_size
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        x = F.pad(x, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
        windows = window_partition(x, block.window_size).view(-1, block.window_area, C)
        count = windows.shape[0] // B  # windows per image; window_partition orders them image by image
        mask = block.get_attn_mask(x) if getattr(block, "dynamic_mask", False) else block.attn_mask
        out = block.attn(
            torch.cat([prompts[:, None].expand(-1, count, -1, -1).reshape(-1, n, C), windows], dim=1),
            mask=None if mask is None else insert_zeros(mask, 0, n),
        )
        x = window_reverse(out[:, n:].reshape(-1, wh, ww, C), block.window_size, x.shape[1], x.shape[2])
        x = x[:, :H, :W]
        if sh or sw:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return torch.cat([out[:, :n].reshape(B, count, n, C).mean(1), x.reshape(B, H * W, C)], dim=1)


class PromptedMerging(nn.Module):
    """Swin's patch merging (``base``) with shallow VPT prompts packed below the grid: the grid merges as timm
    does; each prompt crosses as a patch whose 2x2 neighbourhood is four copies of itself (concatenated, then the
    merging's own norm and reduction), as VPT's reference code takes prompts to the next stage's width."""

    def __init__(self, base: nn.Module, route: PromptRoute) -> None:
        super().__init__()
        self.base, self.route = base, route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.route.lengths[0]  # shallow: block 0's prompts travel
        if not n:
            return self.base(x)
        grid, prompts = unpack(x, n)
        merging = self.base
        return pack(merging(grid), merging.reduction(merging.norm(torch.cat([prompts] * 4, dim=-1))))


class PromptFreeBias(Transparent, nn.Module):
    """A timm module that adds a relative position bias (``base``), run by timm's own forward on this wrapper,
    whose bias has zero rows and columns for the prompts inside block ``block`` (after the prefix tokens, or
    first in a Swin window): they get no position bias and no query is masked from them. Subclasses name the
    method timm reads the bias from. Without prompts it is ``base`` itself."""

    def __init__(self, base: nn.Module, block: int, route: PromptRoute) -> None:
        super().__init__()
        self.base, self.block, self.route = base, block, route

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.route.inside(self.block):
            return self.base(*args, **kwargs)
        return type(self.base).forward(self, *args, **kwargs)

    def free(self, bias: torch.Tensor) -> torch.Tensor:
        return insert_zeros(bias, self.route.prefix, self.route.inside(self.block))


class PromptFreeAttention(PromptFreeBias):
    """Swin's ``WindowAttention`` or BEiT's ``Attention`` with its own table (``_get_rel_pos_bias``). BEiT's
    reads ``qkv.weight`` directly; this wrapper routes its own ``qkv_bias_separate`` flag as timm's would be."""

    def __init__(self, base: nn.Module, block: int, route: PromptRoute) -> None:
        super().__init__(base, block, route)
        if inject.reads_qkv_weight(base):
            inject.call_qkv_module(self)

    def _get_rel_pos_bias(self) -> torch.Tensor:
        return self.free(self.base._get_rel_pos_bias())


class PromptFreeRelPos(PromptFreeBias):
    """The position bias module (``rel_pos``: ``RelPosMlp``, ``RelPosBias``) of a relative-position ViT's attention."""

    def get_bias(self) -> torch.Tensor:
        return self.free(self.base.get_bias())


def position_free(inputs: dict[str, Any], at: int, n: int) -> dict[str, Any]:
    """A block's keyword inputs with ``n`` prompts at token ``at`` given no position: EVA's ``rope`` (one row per
    token after the prefix tokens) gets identity rotations for them, a shared relative position bias (BEiT's,
    relative-position ViTs') zero rows and columns."""
    if not n:
        return inputs
    free = dict(inputs)
    if free.get("rope") is not None:
        free["rope"] = unrotated(free["rope"], n)
    for key in SHARED_BIASES:
        if free.get(key) is not None:
            free[key] = insert_zeros(free[key], at, n)
    return free


def unrotated(rope: torch.Tensor, n: int) -> torch.Tensor:
    """``rope`` (``(..., tokens, 2 * dim)``, sin then cos, as timm's ``apply_rot_embed_cat`` reads it) with ``n``
    rows of the identity rotation (sin 0, cos 1) in front: prompts right after the prefix tokens stay unturned."""
    shape = (*rope.shape[:-2], n, rope.shape[-1] // 2)
    return torch.cat([torch.cat([rope.new_zeros(shape), rope.new_ones(shape)], dim=-1), rope], dim=-2)


def insert_zeros(bias: torch.Tensor, at: int, n: int) -> torch.Tensor:
    """``bias`` (``(..., N, N)``, additive) with ``n`` zero rows and columns inserted before position ``at``."""
    if not n:
        return bias
    shape = bias.shape
    bias = torch.cat([bias[..., :at], bias.new_zeros(*shape[:-1], n), bias[..., at:]], dim=-1)
    return torch.cat([bias[..., :at, :], bias.new_zeros(*shape[:-2], n, shape[-1] + n), bias[..., at:, :]], dim=-2)


def pack(grid: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """The Swin grid ``(B, H, W, C)`` with ``prompts`` ``(B, n, C)`` below it in ``ceil(n / W)`` more rows (the
    last one zero-padded): the one tensor in which shallow prompts travel between Swin's blocks."""
    B, _, W, C = grid.shape
    n = prompts.shape[1]
    rows = -(-n // W)
    return torch.cat([grid, F.pad(prompts, (0, 0, 0, rows * W - n)).view(B, rows, W, C)], dim=1)


def unpack(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid and the ``n`` prompts of a ``pack``-ed tensor."""
    B, rows, W, C = x.shape
    below = -(-n // W)
    return x[:, : rows - below], x[:, rows - below :].reshape(B, below * W, C)[:, :n]


def _free_positions(block: nn.Module, index: int, route: PromptRoute) -> None:
    """Give the prompts no position bias in ``block``'s attention: wrap Swin's window attention or BEiT's with its
    own table (below any other method's wrapper, which reads the bias from it), or a relative-position ViT's
    ``rel_pos``. EVA's rope and the shared biases are block inputs (``position_free``)."""
    parent, attr = inject.innermost(*inject.locate(block, "attn", "vpt", index))
    attn = getattr(parent, attr)
    if isinstance(attn, WindowAttention | BeitAttention) and attn.relative_position_bias_table is not None:
        inject.wrap(parent, attr, PromptFreeAttention, index, route)
    elif isinstance(attn, RelPosAttention) and attn.rel_pos is not None:
        inject.wrap(attn, "rel_pos", PromptFreeRelPos, index, route)


def attach(model: nn.Module, opts: VPTOptions, info: BackboneInfo) -> None:
    deep = opts.mode == "deep"
    if deep:
        lengths = per_block(opts.length, info.depth, "vpt.length")
    else:
        lengths = per_block(opts.length, 1, "vpt.length") + [0] * (info.depth - 1)
    if not any(lengths):
        return
    route = PromptRoute(list(lengths), deep, info.num_prefix_tokens)
    swin = isinstance(model, SwinTransformer)
    bound = math.sqrt(6.0 / (info.in_chans * math.prod(info.patch_size) + info.width))
    for index, (parent, attr) in enumerate(inject.block_slots(model)):
        block = getattr(parent, attr)
        if route.inside(index):
            _free_positions(block, index, route)
        proj = inject.unwrapped(getattr(*inject.locate(block, "proj", "vpt", index)))
        last = index == info.depth - 1
        wrapper = PromptedSwinBlock if swin else PromptedBlock
        inject.wrap(parent, attr, wrapper, index, lengths[index], route, last, proj.out_features, bound, opts.dropout)
    if swin and not deep:
        for stage in model.layers:
            if isinstance(stage.downsample, PatchMerging):
                inject.wrap(stage, "downsample", PromptedMerging, route)


SPEC = register(
    MethodSpec(
        name="vpt",
        options=VPTOptions,
        attach=attach,
        order=4,
        size_option="length",
    )
)
