"""timm ViT families beyond the plain block: distilled DeiT, post-norm, packed SwiGLU, hybrid CNN stems
(exact), and parallel blocks (refused with one line). Each family on one tiny random instance."""

from __future__ import annotations

import pytest
import timm
import torch

import autopeft
from autopeft.errors import BackboneError, ConfigError
from tests.conftest import randomise_trainable

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
FAMILIES = {
    "deit_tiny_distilled_patch16_224": TINY,  # two heads, two prefix tokens
    "vit_relpos_base_patch16_224": TINY,  # relative position bias (an MLP over offsets), no class token
    "vit_base_patch16_rpn_224": TINY,  # post-norm ResPostBlock
    "vit_giant_patch14_dinov2": {"img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "vit_tiny_r_s16_p8_224": {"img_size": 64},  # ResNet stem (HybridEmbed)
}
METHODS = {"lora": {"rank": 2}, "ssf": {}, "vpt": {"length": 2}, "kv_prompt": {"length": 2}}


RELPOS_METHODS = {**METHODS, "adapter": {"dim": 2}}  # pre-norm blocks: adapters too


def methods_of(name: str) -> dict:
    return RELPOS_METHODS if "relpos" in name else METHODS


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
    model = autopeft.apply(build(name), methods_of(name))
    randomise_trainable(model)  # trained-like values everywhere, then every method switched off
    for method in methods_of(name):
        autopeft.set_sizes(model, method, 0)
    assert torch.equal(model(inputs(name)), expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_methods_run_count_exactly_and_merge(name):
    model = autopeft.apply(build(name), methods_of(name))
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
    assert message.endswith(
        "not supported; allowed: timm blocks Block, ResPostBlock, RelPosBlock, ResPostRelPosBlock, "
        "SwinTransformerBlock, EvaBlock, EvaBlockPostNorm"
    )


SWIN = {"img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2)}
SWIN_NAME = "swin_tiny_patch4_window7_224"
STAGE_WIDTHS = [16, 16, 32, 32]  # block widths over the two stages


def swin() -> torch.nn.Module:
    torch.manual_seed(0)
    return autopeft.create_backbone(SWIN_NAME, 5, **SWIN).eval()


def swin_images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


SWIN_METHODS = {"lora": {"rank": 2}, "adapter": {"dim": 3, "sites": ["mlp", "attn"]}, "ssf": {}, "kv_prompt": {}}


def test_swin_methods_at_size_zero_are_the_plain_model_bit_for_bit():
    expected = swin()(swin_images())
    model = autopeft.apply(swin(), SWIN_METHODS)
    randomise_trainable(model)
    for method in SWIN_METHODS:
        autopeft.set_sizes(model, method, 0)
    assert torch.equal(model(swin_images()), expected)


def test_swin_counts_follow_the_formulas_stage_by_stage():
    def count(methods: dict) -> int:
        return autopeft.count_trainable(autopeft.apply(swin(), methods))

    assert count({"lora": {"rank": 2}}) == sum(2 * 2 * (d + d) for d in STAGE_WIDTHS)  # q and v rows of qkv
    assert count({"adapter": {"dim": 3}}) == sum(2 * d * 3 + 3 + d for d in STAGE_WIDTHS)
    ssf_blocks = sum(2 * (d + 3 * d + d + d + 4 * d + d) for d in STAGE_WIDTHS)
    merging = 2 * (4 * 16 + 32)  # the second stage's patch merging: its norm (4 x 16) and reduction (32)
    assert count({"ssf": {}}) == ssf_blocks + merging + 2 * 16 + 2 * 32  # + the patch embedding and the final norm
    assert count({"ssf": {"enabled": [1, 1, 0, 1]}}) == ssf_blocks - 2 * 11 * 32 + 2 * 16 + 2 * 32  # stage 2 opens off
    assert count({"kv_prompt": {"length": 3}}) == sum(3 * d for d in STAGE_WIDTHS)
    per_block = autopeft.apply(swin(), {"lora": {"rank": [0, 2, 4, 0]}})
    assert autopeft.get_sizes(per_block, "lora") == [0, 2, 4, 0]
    with pytest.raises(ConfigError, match=r"lora.rank: per-block list has 2 entries; allowed: exactly 4"):
        autopeft.apply(swin(), {"lora": {"rank": [2, 2]}})


def test_swin_lora_and_ssf_merge_exactly():
    model = autopeft.apply(swin(), {"lora": {"rank": 2, "targets": ["qkv", "proj", "fc1", "fc2"]}, "ssf": {}})
    randomise_trainable(model)
    expected = model(swin_images())
    torch.testing.assert_close(autopeft.merge(model)(swin_images()), expected, rtol=1e-4, atol=1e-4)


def test_swin_supernet_subnets_count_exactly():
    import random

    from autopeft.supernet import Supernet, method_config, parse_space

    space = parse_space(
        {"methods": {"lora": {"sizes": [0, 2]}, "adapter": {"sizes": [0, 3]}, "ssf": {"sizes": [0, 1]}}}, "s"
    )
    net = Supernet(swin(), space)
    assert net.depth == 4
    rng = random.Random(0)
    for subnet in [net.largest(), *(net.sample(rng) for _ in range(4))]:
        assert net.count(subnet) == autopeft.count_trainable(autopeft.apply(swin(), method_config(space, subnet)))


def test_swin_key_value_prompts_get_no_bias_and_every_shifted_window_query_sees_them():
    model = autopeft.apply(swin(), {"kv_prompt": {"length": 3, "shared": False}})
    randomise_trainable(model)
    block = model.layers[0].blocks[1]  # a shifted block: its mask keeps the rolled regions apart
    assert block.attn_mask is not None and block.attn_mask.min() < -10
    prompted, attn = block.attn, block.attn.base
    windows, N, C = block.attn_mask.shape[0], attn.window_area, 16
    x = torch.randn(2 * windows, N, C, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            out = prompted(x, mask=block.attn_mask)
        # an independent oracle: explicit scores over [prompts | window tokens]
        q, k, v = attn.qkv(x).reshape(2 * windows, N, 3, 1, 16).permute(2, 0, 3, 1, 4)
        pk = prompted.prompt_k.expand(2 * windows, -1, -1, -1)
        pv = prompted.prompt_v.expand(2 * windows, -1, -1, -1)
        scores = q @ torch.cat([pk, k], 2).transpose(-2, -1) * attn.scale  # (B, heads, N, 3 + N)
        bias = attn._get_rel_pos_bias()  # (1, heads, N, N) for window tokens only
        mask = block.attn_mask.repeat(2, 1, 1)[:, None]  # window i of every image
        scores[..., 3:] = scores[..., 3:] + bias + mask
        expected = attn.proj((scores.softmax(-1) @ torch.cat([pv, v], 2)).transpose(1, 2).reshape(2 * windows, N, C))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("vit_small_patch16_18x2_224", "blocks of kind ParallelThingsBlock (several attention and MLP branches"),
        ("vit_pe_core_tiny_patch16_384", "Eva blocks with AttentionRope (rope attention with its own qkv layout"),
    ],
)
def test_prompts_are_refused_with_one_line_where_the_blocks_are_unsupported(name, message):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **TINY)  # timm's own model: create_backbone refuses it already
    for method in ("vpt", "kv_prompt"):
        with pytest.raises(BackboneError) as err:
            autopeft.apply(model, {method: {}})
        assert str(err.value).startswith(f"{method}: {message}") and "\n" not in str(err.value)
        assert "not supported; allowed: " in str(err.value) and name in str(err.value)  # the model is named


def test_swin_demo_runs_the_supernet_pipeline_end_to_end(tmp_path):
    from autopeft.search.pipeline import parse_pipeline, run_pipeline

    backbone = {"name": "swin_demo", "pretrained": False}
    train = {"epochs": 1, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0}
    space = {"methods": {"lora": {"sizes": [0, 2]}, "kv_prompt": {"sizes": [0, 2]}, "ssf": {"sizes": [0, 1]}}}
    pipeline = parse_pipeline(
        {
            "backbone": backbone,
            "space": space,
            "supernet": {"train": train, "cost": None, "sampling": "budget"},
            "search": {"evolution": {"population": 3, "parents": 1, "mutations": 2, "crossovers": 0, "generations": 1}},
            "retrain": {"top_k": 1, "train": train, "seeds": [0]},
            "baselines": ["lora"],
        },
        "x",
    )
    record = run_pipeline(pipeline, tmp_path / "run")
    assert record.status == "completed" and 0 < record.trainable_params <= record.budget
    assert record.table[0].test_acc is not None and record.provenance.checkpoint == "random init"
    with pytest.raises(BackboneError, match="backbone 'swin_demo': ships without weights"):
        autopeft.create_backbone("swin_demo", 5)
