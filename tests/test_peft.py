"""autopeft's LoRA on timm's fused qkv equals HF peft's LoRA given the same A and B."""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, get_peft_model

import autopeft
from autopeft.inject import blocks_of
from tests.conftest import tiny_vit


def share_random_lora(ours, theirs) -> None:
    """The same random A and B (B nonzero, so the update shows) in both models' LoRA on every block's qkv."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for (_, block), (_, peft_block) in zip(blocks_of(ours), blocks_of(theirs.base_model.model), strict=True):
            peft_qkv = peft_block.attn.qkv
            a = torch.randn(peft_qkv.lora_A["default"].weight.shape, generator=generator)
            b = torch.randn(peft_qkv.lora_B["default"].weight.shape, generator=generator)
            peft_qkv.lora_A["default"].weight.copy_(a)
            peft_qkv.lora_B["default"].weight.copy_(b)
            block.attn.qkv.lora_A["qkv"].copy_(a)
            block.attn.qkv.lora_B["qkv"].copy_(b)


def test_lora_qkv_matches_peft(images):
    base = tiny_vit()
    ours = autopeft.apply(copy.deepcopy(base), {"lora": {"rank": 4, "alpha": 8.0, "targets": ["qkv"]}})
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"]))
    share_random_lora(ours, theirs)
    expected = theirs(images)
    assert not torch.allclose(expected, base(images), atol=1e-3)
    assert (ours(images) - expected).abs().max().item() <= 1e-5
    peft_count = sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n)
    assert autopeft.count_trainable(ours) == peft_count


def test_lora_on_swin_window_attention_qkv_matches_peft():
    from tests.test_families import swin, swin_images

    base = swin()
    ours = autopeft.apply(copy.deepcopy(base), {"lora": {"rank": 2, "alpha": 4.0, "targets": ["qkv"]}})
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=["qkv"]))
    share_random_lora(ours, theirs)
    expected = theirs(swin_images())
    assert not torch.allclose(expected, base(swin_images()), atol=1e-3)
    assert (ours(swin_images()) - expected).abs().max().item() <= 1e-5
    peft_count = sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n)
    assert autopeft.count_trainable(ours) == peft_count
