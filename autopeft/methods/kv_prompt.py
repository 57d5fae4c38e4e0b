"""E2VPT-style key-value prompts: learnable tokens prepended to K and V after projection."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention, apply_rot_embed_cat
from timm.models.beit import Attention as BeitAttention
from timm.models.eva import EvaAttention
from timm.models.swin_transformer import WindowAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn

from autopeft import inject
from autopeft.backbones import BackboneInfo
from autopeft.config import option, per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import MethodSpec, register, tensor_kwargs
from autopeft.methods.prompts import PromptWrapper


@dataclass
class KVPromptOptions:
    """Key-value prompts' options (transformer backbones only)."""

    length: int | list[int] = option(
        5,
        help="Prompt tokens prepended to each attention's keys and values (on Swin, in every window): one integer "
        "for every block, or a list with one entry per block; 0 adds none.",
    )
    shared: bool = option(
        True, help="true: one prompt tensor serves as both keys and values; false: separate key and value prompts."
    )


class PromptedAttention(PromptWrapper):
    """timm's Attention, reusing its weights, with ``t`` prompt tokens prepended to K and V.

    Prompts have shape ``(heads, t_max, head_dim)``; queries are unchanged, so attention is
    ``N x (N + t)``. With ``shared`` one tensor serves K and V. Size 0 calls timm's own forward.
    Subclasses for other attention kinds compute q, k and v as timm does and share :meth:`attend`.
    """

    method = "kv_prompt"
    tensors = ("prompt_k", "prompt_v")
    token_dim = 1

    def __init__(self, base: nn.Module, block: int, length: int, shared: bool) -> None:
        super().__init__(base, block, length)
        kw = tensor_kwargs(base)
        head_dim = getattr(base, "head_dim", None) or inject.unwrapped(base.qkv).out_features // 3 // base.num_heads
        shape = (base.num_heads, length, head_dim)
        bound = 1.0 / math.sqrt(head_dim)  # kaiming-uniform(a=sqrt(5)) with fan_in = head_dim
        self.prompt_k = nn.Parameter(torch.empty(shape, **kw).uniform_(-bound, bound))
        self.prompt_v = None if shared else nn.Parameter(torch.empty(shape, **kw).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        attn = self.base
        if self.size == 0:
            return attn(x, attn_mask=attn_mask, is_causal=is_causal)
        _refuse_causal(is_causal)
        B, N, _ = x.shape
        gate = attn.gate(x).sigmoid() if attn.gate is not None else None
        q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        x = attn.norm(self.attend(q, k, v, attn_mask).transpose(1, 2).reshape(B, N, attn.attn_dim))
        if gate is not None:
            x = x * gate
        return attn.proj_drop(attn.proj(x))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Attention of ``q`` over the active prompts and then ``k``, values likewise, ``(B, heads, N, head_dim)``.

        ``bias`` (additive, or a boolean mask: True attends) covers the token keys only and is padded on the
        prompt columns with zeros (True): prompts carry no position bias and no query is masked from them. It
        runs as timm's attention does: ``scaled_dot_product_attention`` when ``fused_attn``, else explicit scores.
        """
        attn, t = self.base, self.size
        prompt_k, prompt_v = self.prompts(q.shape[0])
        k, v = torch.cat([prompt_k, k], dim=2), torch.cat([prompt_v, v], dim=2)
        if bias is not None:
            bias = F.pad(bias, (t, 0), value=True if bias.dtype == torch.bool else 0.0)
        if attn.fused_attn:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=attn.attn_drop.p if self.training else 0.0
            )
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores.masked_fill(~bias, float("-inf")) if bias.dtype == torch.bool else scores + bias
        return attn.attn_drop(scores.softmax(dim=-1)) @ v

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


class PromptedEvaAttention(PromptedAttention):
    """EVA / EVA-02's attention (fused ``qkv`` read with its own q / v biases, or ``q_proj`` / ``k_proj`` /
    ``v_proj``) with ``t`` prompt tokens prepended to K and V after the k norm and the rotation: rope turns the
    token queries and keys exactly as timm does, the prompts stay unrotated."""

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        attn = self.base
        if self.size == 0:
            return attn(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)
        _refuse_causal(is_causal)
        B, N, C = x.shape
        gate = attn.gate(x).sigmoid() if attn.gate is not None else None
        if attn.qkv is not None:
            q, k, v = _heads(fused_qkv(attn, x), 3, attn.num_heads).unbind(0)
        else:
            q, k, v = (_heads(proj(x), 1, attn.num_heads)[0] for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        q, k = attn.q_norm(q), attn.k_norm(k)
        if rope is not None:
            q, k = _rotate(attn, q, rope, v), _rotate(attn, k, rope, v)
        x = attn.norm(self.attend(q, k, v, attn_mask).transpose(1, 2).reshape(B, N, C))
        if gate is not None:
            x = x * gate
        return attn.proj_drop(attn.proj(x))


class PromptedBeitAttention(PromptedAttention):
    """BEiT's attention (fused ``qkv`` read with its own q / v biases) with ``t`` prompt tokens prepended to K
    and V. Its relative position bias (the block's table, the model's shared one, or their sum) is padded with
    zeros on the prompt columns: prompts carry no position bias."""

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.base
        if self.size == 0:
            return attn(x, shared_rel_pos_bias=shared_rel_pos_bias)
        B, N, C = x.shape
        q, k, v = _heads(fused_qkv(attn, x), 3, attn.num_heads).unbind(0)
        bias = shared_rel_pos_bias
        if attn.relative_position_bias_table is not None:
            own = attn._get_rel_pos_bias()
            bias = own if bias is None else own + bias
        x = self.attend(q, k, v, bias).transpose(1, 2).reshape(B, N, C)
        return attn.proj_drop(attn.proj(x))


class PromptedRelPosAttention(PromptedAttention):
    """The attention of timm's relative-position ViTs (``vit_relpos_*``, ``vit_srelpos_*``) with ``t`` prompt
    tokens prepended to K and V. The position bias (the block's own when it has one, else the model's shared
    one, as timm picks) is padded with zeros on the prompt columns: prompts carry no position bias."""

    def forward(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.base
        if self.size == 0:
            return attn(x, shared_rel_pos=shared_rel_pos)
        B, N, C = x.shape
        q, k, v = _heads(attn.qkv(x), 3, attn.num_heads).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        bias = attn.rel_pos.get_bias() if attn.rel_pos is not None else shared_rel_pos
        x = self.attend(q, k, v, bias).transpose(1, 2).reshape(B, N, C)
        return attn.proj_drop(attn.proj(x))


def fused_qkv(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` through EVA's / BEiT's fused qkv as their forward computes it: the module alone without q / v
    biases; with them, ``F.linear`` on ``qkv.weight`` (LoRA's update included: ``LoRALinear.weight``) or, on timm's
    ``qkv_bias_separate`` path (SSF on at qkv, or a merged bias), the module and then the biases."""
    inject.route_qkv(attn)
    if attn.q_bias is None:
        return attn.qkv(x)
    bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    if attn.qkv_bias_separate:
        return attn.qkv(x) + bias
    return F.linear(x, weight=attn.qkv.weight, bias=bias)


def _heads(projected: torch.Tensor, parts: int, heads: int) -> torch.Tensor:
    """A projection's ``(B, N, parts * heads * head_dim)`` output as ``(parts, B, heads, N, head_dim)``."""
    return projected.reshape(*projected.shape[:2], parts, heads, -1).permute(2, 0, 3, 1, 4)


def _rotate(attn: EvaAttention, x: torch.Tensor, rope: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Rope on the token queries or keys ``x`` after the prefix tokens, as timm's EvaAttention applies it."""
    npt = attn.num_prefix_tokens
    rotated = apply_rot_embed_cat(x[:, :, npt:, :], rope, half=getattr(attn, "rotate_half", False))
    return torch.cat([x[:, :, :npt, :], rotated], dim=2).type_as(like)


def _refuse_causal(is_causal: bool) -> None:
    if is_causal:
        raise ConfigError("kv_prompt: causal attention is not supported with key-value prompts")


WRAPPERS: dict[type[nn.Module], type[PromptedAttention]] = {
    Attention: PromptedAttention,
    WindowAttention: PromptedWindowAttention,
    EvaAttention: PromptedEvaAttention,
    BeitAttention: PromptedBeitAttention,
    RelPosAttention: PromptedRelPosAttention,
}


def attach(model: nn.Module, opts: KVPromptOptions, info: BackboneInfo) -> None:
    lengths = per_block(opts.length, info.depth, "kv_prompt.length")
    for index, block in inject.blocks_of(model):
        if lengths[index] == 0:
            continue
        parent, attr = inject.locate(block, "attn", "kv_prompt", index)
        attn = getattr(parent, attr)
        wrapper = WRAPPERS.get(type(attn))
        if wrapper is None:
            raise ConfigError(
                f"kv_prompt: block {index} attention is {type(attn).__name__}; allowed: timm's Attention (ViT), "
                f"WindowAttention (Swin), EvaAttention (eva_*, eva02_*), BEiT's Attention (beit*) and "
                f"RelPosAttention (vit_relpos_*)"
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
