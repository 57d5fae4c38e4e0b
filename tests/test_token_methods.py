"""VPT and key-value prompts: where tokens go, that they never reach pooling, fused == manual attention."""

from __future__ import annotations

import pytest
import torch

import autopeft
from autopeft.inject import unwrapped
from tests.conftest import WIDTH, checkpointing_keeps_outputs_and_gradients, randomise_trainable, tiny_vit

PATCHES = 16


def block_inputs(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    blocks = [unwrapped(b) for b in model.blocks]  # the timm blocks, inside any VPT wrapper
    hooks = [b.register_forward_pre_hook(lambda _, args: seen.append(args[0])) for b in blocks]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_vpt_prompts_follow_prefix_tokens_and_leave_before_pooling(variant, mode, images):
    plain = tiny_vit(variant)
    model = autopeft.apply(tiny_vit(variant), {"vpt": {"length": 4, "mode": mode}})
    prefix = model.num_prefix_tokens
    first = block_inputs(model, images)[0]
    reference = block_inputs(plain, images)[0]
    assert first.shape[1] == prefix + 4 + PATCHES
    assert torch.equal(first[:, :prefix], reference[:, :prefix])
    assert torch.equal(first[:, prefix : prefix + 4], model.blocks[0].prompt.expand(4, -1, -1))
    assert torch.equal(first[:, prefix + 4 :], reference[:, prefix:])
    with torch.no_grad():
        assert model.forward_features(images).shape == plain.forward_features(images).shape


def test_vpt_deep_replaces_prompts_per_block(images):
    model = autopeft.apply(tiny_vit(), {"vpt": {"length": [2, 0, 3]}})
    lengths = [x.shape[1] - 1 - PATCHES for x in block_inputs(model, images)]
    assert lengths == [2, 0, 3]
    inputs = block_inputs(model, images)
    assert torch.equal(inputs[2][:, 1:4], model.blocks[2].prompt.expand(4, -1, -1))


def test_vpt_shallow_prompts_travel_through_blocks(images):
    model = autopeft.apply(tiny_vit(), {"vpt": {"length": 3, "mode": "shallow"}})
    assert [x.shape[1] for x in block_inputs(model, images)] == [1 + 3 + PATCHES] * 3


def test_vpt_init_bound():
    model = autopeft.apply(tiny_vit(), {"vpt": {"length": 200}})
    bound = (6.0 / (3 * 8 * 8 + WIDTH)) ** 0.5
    prompt = model.blocks[0].prompt
    assert prompt.abs().max().item() <= bound
    assert prompt.abs().max().item() > 0.9 * bound


@pytest.mark.parametrize("shared", [True, False])
def test_kv_prompt_fused_equals_manual_attention(shared, variant, images):
    model = autopeft.apply(tiny_vit(variant), {"kv_prompt": {"length": 3, "shared": shared}, "vpt": {"length": 2}})
    randomise_trainable(model)
    with torch.no_grad():
        fused = model(images)
        for block in model.blocks:
            block.attn.base.fused_attn = False
        manual = model(images)
    assert (fused - manual).abs().max().item() <= 1e-5
    assert (block.attn.prompt_v is None) == shared


def test_kv_prompt_matches_explicit_attention():
    model = autopeft.apply(tiny_vit(), {"kv_prompt": {"length": 2}})
    randomise_trainable(model)
    wrapper = model.blocks[0].attn
    attn = wrapper.base
    x = torch.randn(2, 5, WIDTH)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 16).permute(2, 0, 3, 1, 4)
    k = torch.cat([wrapper.prompt_k[:, :2].expand(2, -1, -1, -1), k], dim=2)
    v = torch.cat([wrapper.prompt_k[:, :2].expand(2, -1, -1, -1), v], dim=2)
    weights = (q @ k.transpose(-2, -1) / 4.0).softmax(-1)
    assert weights.shape[-2:] == (5, 7)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, WIDTH))
    assert (wrapper(x) - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "methods",
    [
        {"vpt": {"length": [2, 0, 3], "dropout": 0.0}},
        {"vpt": {"length": 3, "mode": "shallow", "dropout": 0.0}},
        {"lora": {"rank": 2}, "adapter": {"dim": 2}, "ssf": {}, "kv_prompt": {"length": 2}},
    ],
    ids=["vpt-deep", "vpt-shallow", "the-other-four"],
)
def test_timm_gradient_checkpointing_keeps_every_method(methods, images):
    model = autopeft.apply(tiny_vit(), methods)
    randomise_trainable(model)
    checkpointing_keeps_outputs_and_gradients(model, images)
