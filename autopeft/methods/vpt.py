"""VPT: learnable prompt tokens after the prefix tokens, shallow (input) or deep (per block)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from autopeft import inject
from autopeft.backbones import BackboneInfo
from autopeft.config import per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import MethodSpec, register, tensor_kwargs
from autopeft.methods.prompts import PromptWrapper


@dataclass
class VPTOptions:
    length: int | list[int] = 10
    mode: Literal["deep", "shallow"] = "deep"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.mode == "shallow" and isinstance(self.length, list):
            raise ConfigError("vpt.length: a per-block list needs mode 'deep'; allowed with 'shallow': one integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"vpt.dropout: got {self.dropout}; allowed: 0 <= dropout < 1")


class PromptRoute:
    """Which prompts are in the token sequence around each block (shared by a model's PromptedBlocks).

    Deep: before each block its own prompts replace the previous block's (a block of length 0 sees
    none). Shallow: block 0's prompts enter before it and travel through every block. After the last
    block every prompt leaves, so pooling and the head never see one.
    """

    def __init__(self, lengths: list[int], deep: bool, num_prefix_tokens: int) -> None:
        self.lengths, self.deep, self.prefix = lengths, deep, num_prefix_tokens

    def entering(self, block: int) -> int:
        """Prompt tokens in the sequence that reaches ``block``."""
        return 0 if block == 0 else self.lengths[block - 1 if self.deep else 0]

    def leaving(self, block: int) -> int:
        """Prompt tokens in the sequence that ``block`` puts out."""
        return self.lengths[block if self.deep else 0]


class PromptedBlock(PromptWrapper):
    """One transformer block (``base``) with the VPT prompts of its place in the sequence: it puts its own
    prompts after the prefix tokens in place of the ones it received (deep: every block; shallow: block 0),
    runs the block, and the last block removes them. One wrapper per block, so timm's gradient
    checkpointing, which runs the blocks one by one, keeps the prompts."""

    method = "vpt"
    tensors = ("prompt",)

    def __init__(
        self,
        base: nn.Module,
        block: int,
        length: int,
        route: PromptRoute,
        last: bool,
        info: BackboneInfo,
        dropout: float,
    ) -> None:
        super().__init__(base, block, length)
        self.route, self.last, self.dropout = route, last, dropout
        bound = math.sqrt(6.0 / (info.in_chans * math.prod(info.patch_size) + info.width))
        empty = torch.empty(length, info.width, **tensor_kwargs(base))
        self.prompt = nn.Parameter(empty.uniform_(-bound, bound)) if length else None

    def resized(self) -> None:
        self.route.lengths[self.block] = self._size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route, n, entering = self.route, self.route.prefix, self.route.entering(self.block)
        if (route.deep or self.block == 0) and (entering or self.size):
            pieces = [x[:, :n], self._prompt(x.shape[0])] if self.size else [x[:, :n]]
            x = torch.cat([*pieces, x[:, n + entering :]], dim=1)
        x = self.base(x)
        leaving = route.leaving(self.block)
        return torch.cat([x[:, :n], x[:, n + leaving :]], dim=1) if self.last and leaving else x

    def _prompt(self, batch: int) -> torch.Tensor:
        prompt = self.prompt_tensor("prompt")[: self.size]
        return F.dropout(prompt.expand(batch, -1, -1), self.dropout, self.training)

    def __getattr__(self, name: str):
        """The block's own parts (``attn``, ``mlp``, ``norm1``, ...) stay reachable through the wrapper."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base"), name)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={'deep' if self.route.deep else 'shallow'}"


def attach(model: nn.Module, opts: VPTOptions, info: BackboneInfo) -> None:
    if info.hierarchical:
        raise ConfigError(
            "vpt: prompts join one token sequence through every block; a hierarchical backbone (Swin: windowed "
            "stages of different widths) is not supported; allowed on this backbone: lora, adapter, ssf, "
            "kv_prompt and the baselines"
        )
    if not isinstance(model, VisionTransformer):
        raise ConfigError(
            f"vpt: {type(model).__name__} sizes its relative position bias to the patch grid, so extra tokens do "
            f"not fit; allowed on this backbone: lora, adapter, ssf and the baselines"
        )
    deep = opts.mode == "deep"
    if deep:
        lengths = per_block(opts.length, info.depth, "vpt.length")
    else:
        lengths = per_block(opts.length, 1, "vpt.length") + [0] * (info.depth - 1)
    if not any(lengths):
        return
    route = PromptRoute(list(lengths), deep, info.num_prefix_tokens)
    for index, _ in inject.blocks_of(model):
        last = index == info.depth - 1
        inject.wrap(model.blocks, str(index), PromptedBlock, index, lengths[index], route, last, info, opts.dropout)


SPEC = register(
    MethodSpec(
        name="vpt",
        options=VPTOptions,
        attach=attach,
        order=4,
        size_option="length",
    )
)
