"""E2VPT-style key-value prompts: learnable tokens prepended to K and V after projection."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention
from torch import nn

from autopeft import inject
from autopeft.backbones import BackboneInfo
from autopeft.config import per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import MethodSpec, register, tensor_kwargs
from autopeft.methods.prompts import PromptWrapper


@dataclass
class KVPromptOptions:
    length: int | list[int] = 5
    shared: bool = True


class PromptedAttention(PromptWrapper):
    """timm's Attention, reusing its weights, with ``t`` prompt tokens prepended to K and V.

    Prompts have shape ``(heads, t_max, head_dim)``; queries are unchanged, so attention is
    ``N x (N + t)``. With ``shared`` one tensor serves K and V. Size 0 calls timm's own forward.
    """

    method = "kv_prompt"
    tensors = ("prompt_k", "prompt_v")
    token_dim = 1

    def __init__(self, base: nn.Module, block: int, length: int, shared: bool) -> None:
        super().__init__(base, block, length)
        kw = tensor_kwargs(base)
        head_dim = inject.unwrapped(base.qkv).out_features // 3 // base.num_heads
        shape = (base.num_heads, length, head_dim)
        bound = 1.0 / math.sqrt(head_dim)  # kaiming-uniform(a=sqrt(5)) with fan_in = head_dim
        self.prompt_k = nn.Parameter(torch.empty(shape, **kw).uniform_(-bound, bound))
        self.prompt_v = None if shared else nn.Parameter(torch.empty(shape, **kw).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        t = self.size
        attn = self.base
        if t == 0:
            return attn(x, attn_mask=attn_mask, is_causal=is_causal)
        if is_causal:
            raise ConfigError("kv_prompt: causal attention is not supported with key-value prompts")
        B, N, _ = x.shape
        gate = attn.gate(x).sigmoid() if attn.gate is not None else None
        q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        prompt_k, prompt_v = self.prompts(B)
        k = torch.cat([prompt_k, k], dim=2)
        v = torch.cat([prompt_v, v], dim=2)
        if attn_mask is not None:
            attn_mask = F.pad(attn_mask, (t, 0), value=True if attn_mask.dtype == torch.bool else 0.0)
        if attn.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=attn.attn_drop.p if self.training else 0.0
            )
        else:
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                scores = (
                    scores.masked_fill(~attn_mask, float("-inf"))
                    if attn_mask.dtype == torch.bool
                    else scores + attn_mask
                )
            x = attn.attn_drop(scores.softmax(dim=-1)) @ v
        x = attn.norm(x.transpose(1, 2).reshape(B, N, attn.attn_dim))
        if gate is not None:
            x = x * gate
        return attn.proj_drop(attn.proj(x))

    def prompts(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The active key and value prompts, ``(batch, heads, t, head_dim)`` each."""
        key, value = (self.prompt_tensor(name) for name in self.tensors)
        key = key[:, : self.size].expand(batch, -1, -1, -1)
        return key, key if value is None else value[:, : self.size].expand(batch, -1, -1, -1)


class PromptedWindowAttention(PromptedAttention):
    """Swin's window attention with ``t`` prompt tokens prepended to K and V inside every window.

    The relative position bias and the shifted-window mask are padded with zeros on the prompt columns:
    prompts carry no position bias, and every query of every window (shifted or not) sees them.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        t, attn = self.size, self.base
        if t == 0:
            return attn(x, mask=mask)
        B, N, _ = x.shape
        q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        prompt_k, prompt_v = self.prompts(B)
        k, v = torch.cat([prompt_k, k], dim=2), torch.cat([prompt_v, v], dim=2)
        bias = F.pad(attn._get_rel_pos_bias(), (t, 0))  # (1, heads, N, t + N)
        if mask is not None:
            windows = mask.shape[0]
            shifted = F.pad(mask, (t, 0)).view(1, windows, 1, N, N + t)
            bias = bias + shifted.expand(B // windows, -1, attn.num_heads, -1, -1).reshape(B, attn.num_heads, N, N + t)
        dropout = attn.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        return attn.proj_drop(attn.proj(x.transpose(1, 2).reshape(B, N, -1)))


def attach(model: nn.Module, opts: KVPromptOptions, info: BackboneInfo) -> None:
    lengths = per_block(opts.length, info.depth, "kv_prompt.length")
    for index, block in inject.blocks_of(model):
        if lengths[index] == 0:
            continue
        parent, attr = inject.locate(block, "attn", "kv_prompt", index)
        attn = getattr(parent, attr)
        wrapper = {Attention: PromptedAttention, WindowAttention: PromptedWindowAttention}.get(type(attn))
        if wrapper is None:
            raise ConfigError(
                f"kv_prompt: block {index} attention is {type(attn).__name__}; allowed: timm's Attention (ViT) "
                f"and WindowAttention (Swin)"
            )
        inject.wrap(parent, attr, wrapper, index, lengths[index], opts.shared)


SPEC = register(
    MethodSpec(
        name="kv_prompt",
        options=KVPromptOptions,
        attach=attach,
        order=2,
        size_option="length",
    )
)
