"""VPT: learnable prompt tokens after the prefix tokens, shallow (input) or deep (per block)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from autopeft import inject
from autopeft.backbones import BackboneInfo
from autopeft.config import per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import Elastic, Index, MethodSpec, check_size, register, tensor_kwargs


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


class PromptedBlocks(Elastic, nn.Sequential):
    """The model's block sequence, inserting prompts after the prefix tokens.

    Deep: before each block its own prompts replace the previous ones (a block with length
    0 sees none). Shallow: prompts enter before block 0 and travel through. All prompts are
    removed after the last block, so pooling and the head never see them.
    """

    method = "vpt"

    def __init__(
        self, blocks: nn.Sequential, info: BackboneInfo, lengths: list[int], deep: bool, dropout: float
    ) -> None:
        super().__init__(*blocks)
        self.deep = deep
        self.num_prefix_tokens = info.num_prefix_tokens
        self.width = info.width
        self.max_lengths = list(lengths)
        self.lengths = list(lengths)
        self.dropout = dropout  # a float, not an nn.Dropout: every child module here is a block
        kw = tensor_kwargs(blocks)
        bound = math.sqrt(6.0 / (info.in_chans * math.prod(info.patch_size) + info.width))
        for index, length in enumerate(lengths):
            if length:
                prompt = torch.empty(length, info.width, **kw)
                self.register_parameter(f"prompt_{index}", nn.Parameter(prompt.uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.num_prefix_tokens
        current = 0
        for index, block in enumerate(self):
            length = self.lengths[index]
            if (self.deep or index == 0) and (length or current):
                pieces = [x[:, :n], self._prompt(index, x.shape[0])] if length else [x[:, :n]]
                x = torch.cat([*pieces, x[:, n + current :]], dim=1)
                current = length
            x = block(x)
        if current:
            x = torch.cat([x[:, :n], x[:, n + current :]], dim=1)
        return x

    def _prompt(self, index: int, batch: int) -> torch.Tensor:
        prompt = getattr(self, f"prompt_{index}")[: self.lengths[index]]
        return F.dropout(prompt.expand(batch, -1, -1), self.dropout, self.training)

    def block_sizes(self) -> dict[int, int]:
        return dict(enumerate(self.lengths))

    def set_block_sizes(self, sizes: list[int]) -> None:
        checked = [check_size("vpt", s, m, i) for i, (s, m) in enumerate(zip(sizes, self.max_lengths, strict=True))]
        self.lengths = checked

    def own_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters(recurse=False) if name.startswith("prompt_")]

    def active_parts(self) -> list[tuple[nn.Parameter, Index]]:
        return [
            (getattr(self, f"prompt_{i}"), (slice(0, self.lengths[i]),))
            for i, length in enumerate(self.max_lengths)
            if length
        ]

    def count(self) -> int:
        return sum(self.lengths) * self.width

    def extra_repr(self) -> str:
        return f"mode={'deep' if self.deep else 'shallow'}, lengths={self.lengths}"


def attach(model: nn.Module, opts: VPTOptions, info: BackboneInfo) -> None:
    if info.hierarchical:
        raise ConfigError(
            "vpt: prompts join one token sequence through every block; a hierarchical backbone (Swin: windowed "
            "stages of different widths) is not supported; allowed on this backbone: lora, adapter, ssf and the "
            "baselines"
        )
    deep = opts.mode == "deep"
    if deep:
        lengths = per_block(opts.length, info.depth, "vpt.length")
    else:
        lengths = per_block(opts.length, 1, "vpt.length") + [0] * (info.depth - 1)
    if not any(lengths):
        return
    inject.wrap(model, "blocks", PromptedBlocks, info, lengths, deep, opts.dropout)


SPEC = register(
    MethodSpec(
        name="vpt",
        options=VPTOptions,
        attach=attach,
        order=4,
        size_option="length",
    )
)
