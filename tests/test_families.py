"""timm ViT families beyond the plain block: distilled DeiT, post-norm, packed SwiGLU, hybrid CNN stems
(exact), and parallel blocks (refused with one line). Each family on one tiny random instance."""

from __future__ import annotations

import pytest
import torch

import autopeft
from autopeft.errors import BackboneError, ConfigError
from tests.conftest import randomise_trainable

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
FAMILIES = {
    "deit_tiny_distilled_patch16_224": TINY,  # two heads, two prefix tokens
    "vit_base_patch16_rpn_224": TINY,  # post-norm ResPostBlock
    "vit_giant_patch14_dinov2": {"img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "vit_tiny_r_s16_p8_224": {"img_size": 64},  # ResNet stem (HybridEmbed)
}
METHODS = {"lora": {"rank": 2}, "ssf": {}, "vpt": {"length": 2}, "kv_prompt": {"length": 2}}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return autopeft.create_backbone(name, 5, **FAMILIES[name]).eval()


def inputs(name: str) -> torch.Tensor:
    side = FAMILIES[name]["img_size"]
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", FAMILIES)
def test_every_method_at_size_zero_is_the_plain_model_bit_for_bit(name):
    plain = build(name)
    expected = plain(inputs(name))
    model = autopeft.apply(build(name), METHODS)
    randomise_trainable(model)  # trained-like values everywhere, then every method switched off
    for method in METHODS:
        autopeft.set_sizes(model, method, 0)
    assert torch.equal(model(inputs(name)), expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_methods_run_count_exactly_and_merge(name):
    model = autopeft.apply(build(name), METHODS)
    randomise_trainable(model)
    counted = autopeft.count_trainable(model)
    own = sum(p.numel() for p in model.parameters() if p.requires_grad)
    heads = autopeft.api._head_parameters(model)
    assert counted == own - sum(p.numel() for p in heads)  # every trainable tensor but the head(s), at full size
    before = model(inputs(name))
    unmerged_vpt = autopeft.apply(build(name), {"lora": {"rank": 2}, "ssf": {}})
    randomise_trainable(unmerged_vpt)
    reference = unmerged_vpt(inputs(name))
    torch.testing.assert_close(autopeft.merge(unmerged_vpt)(inputs(name)), reference, rtol=1e-4, atol=1e-4)
    assert before.shape == (2, 5)


def test_packed_swiglu_ssf_scales_the_whole_fc1_output():
    model = autopeft.apply(build("vit_giant_patch14_dinov2"), {"ssf": {"sites": ["fc1", "fc2"]}})
    fc1 = model.blocks[0].mlp.fc1
    assert (
        fc1.gamma.shape == (fc1.base.out_features,)
        and fc1.base.out_features == 2 * model.blocks[0].mlp.fc2.base.in_features
    )
    width = 32
    assert autopeft.count_trainable(model) == 2 * 2 * (fc1.base.out_features + width)


def test_distilled_deit_trains_counts_and_saves_both_heads(tmp_path):
    model = autopeft.apply(build("deit_tiny_distilled_patch16_224"), {"linear": {}})
    head, head_dist = model.get_classifier()
    assert all(p.requires_grad for p in [*head.parameters(), *head_dist.parameters()])
    assert autopeft.count_trainable(model) == 0  # heads are never counted
    full = autopeft.apply(build("deit_tiny_distilled_patch16_224"), {"full": {}})
    total = sum(p.numel() for p in full.parameters())
    assert autopeft.count_trainable(full) == total - sum(
        p.numel() for p in [*head.parameters(), *head_dist.parameters()]
    )
    with torch.no_grad():
        head_dist.weight.add_(1.0)
    autopeft.save_adapter(model, tmp_path)
    fresh = build("deit_tiny_distilled_patch16_224")
    autopeft.load_adapter(fresh, tmp_path)
    assert torch.equal(fresh.get_classifier()[1].weight, head_dist.weight)


def test_adapters_are_refused_on_post_norm_blocks():
    with pytest.raises(ConfigError) as err:
        autopeft.apply(build("vit_base_patch16_rpn_224"), {"adapter": {"dim": 2}})
    assert str(err.value).startswith("adapter: block 0 is post-norm (ResPostBlock: x + norm(sublayer(x)))")


@pytest.mark.parametrize(
    ("name", "kind"),
    [("vit_small_patch16_18x2_224", "ParallelThingsBlock"), ("vit_base_patch16_xp_224", "ParallelScalingBlock")],
)
def test_parallel_blocks_are_refused_on_one_line(name, kind):
    with pytest.raises(BackboneError) as err:
        autopeft.create_backbone(name, 5, **TINY)
    message = str(err.value)
    assert message.startswith(f"backbone '{name}': blocks of kind {kind} (") and "\n" not in message
    assert message.endswith("are not supported; allowed: timm ViT blocks Block, ResPostBlock")
