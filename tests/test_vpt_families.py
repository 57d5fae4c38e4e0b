"""VPT beyond the plain ViT: Swin (prompts inside every window, across stages and patch merging) and the
families with position information in the attention (EVA / EVA-02's rope, BEiT's and relative-position ViTs'
relative position bias), where the prompts get none. Each on one tiny random instance, against explicit
references built without autopeft's code paths."""

from __future__ import annotations

import copy
import itertools
import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import autopeft
from autopeft.data import from_arrays
from autopeft.inject import unwrapped
from autopeft.methods.vpt import PromptedMerging, pack, unpack
from autopeft.supernet import Supernet, method_config, parse_space
from tests.conftest import checkpointing_keeps_outputs_and_gradients, randomise_trainable

SWIN = {"img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2)}
STAGE_WIDTHS = [16, 16, 32, 32]  # block widths over Swin's two stages
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
D, BLOCKS = 32, 2
FAMILIES = {
    "eva02_tiny_patch14_224": {**TINY, "init_values": 0.1},  # rope, fused qkv read directly, class token
    "eva02_base_patch14_224": TINY,  # rope, separate q / k / v projections
    # q / k norms, rope on rotated halves, a register token after the class token (2 prefix tokens)
    "eva02_base_patch14_224-norms": {**TINY, "qk_norm": True, "rope_rotate_half": True, "num_reg_tokens": 1},
    "beit_base_patch16_224": TINY,  # a relative position bias table per block (class token included)
    "beit_base_patch16_224-shared": {**TINY, "use_rel_pos_bias": False, "use_shared_rel_pos_bias": True},
    "vit_relpos_base_patch16_224": TINY,  # RelPosMlp per block, no class token
    "vit_relpos_medium_patch16_cls_224": TINY,  # RelPosMlp per block after a class token
    "vit_srelpos_small_patch16_224": TINY,  # one shared RelPosMlp bias, passed to every block
}


def swin(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return autopeft.create_backbone("swin_tiny_patch4_window7_224", 5, **SWIN, **options).eval()


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return autopeft.create_backbone(name.split("-")[0], 5, **FAMILIES[name]).eval()


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def out(model: torch.nn.Module) -> torch.Tensor:
    return model(images())


@torch.no_grad()
def features(model: torch.nn.Module) -> torch.Tensor:
    """The normed features the head pools (of order 1, where the tiny random heads' logits are of order 1e-4)."""
    return model.forward_features(images())


def with_methods(model: torch.nn.Module, methods: dict) -> torch.nn.Module:
    autopeft.apply(model, copy.deepcopy(methods))
    randomise_trainable(model)
    return model


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5 + bias).softmax(-1) @ v


def with_zero_rows(bias: torch.Tensor, at: int, n: int) -> torch.Tensor:
    """``bias`` ``(..., N, N)`` spread by index into ``(..., N + n, N + n)``, zero at the n positions from ``at``."""
    size = bias.shape[-1] + n
    index = torch.tensor([i for i in range(size) if not at <= i < at + n])
    full = bias.new_zeros(*bias.shape[:-2], size, size)
    full[..., index[:, None], index] = bias
    return full


# Swin


def explicit_swin_block(block: torch.nn.Module, x: torch.Tensor, prompts: torch.Tensor):
    """A timm Swin block on the grid ``x`` with ``prompts`` (one set per image) prepended to every window, window
    by window with explicit scores: zero bias and no mask on the prompts, their outputs averaged over the image's
    windows; returns the grid and the prompts."""
    attn, (ws, _), (sh, sw) = unwrapped(block.attn), block.window_size, block.shift_size
    B, H, W, C = x.shape
    n, heads, grid = prompts.shape[1], attn.num_heads, H // ws * (W // ws)
    rolled, normed = torch.roll(block.norm1(x), (-sh, -sw), (1, 2)), block.norm1(prompts)
    attended, prompt_out = torch.empty_like(x), torch.zeros_like(prompts)
    bias = attn._get_rel_pos_bias()[0]
    for b, (w, (i, j)) in itertools.product(range(B), enumerate(itertools.product(range(H // ws), range(W // ws)))):
        cells = (slice(i * ws, (i + 1) * ws), slice(j * ws, (j + 1) * ws))
        tokens = torch.cat([normed[b], rolled[b][cells].reshape(-1, C)])
        q, k, v = attn.qkv(tokens).reshape(len(tokens), 3, heads, -1).permute(1, 2, 0, 3)
        full = torch.zeros(heads, len(tokens), len(tokens))
        full[:, n:, n:] = bias + (block.attn_mask[w] if block.attn_mask is not None else 0)
        result = attn.proj(explicit_attention(q, k, v, full).transpose(0, 1).reshape(len(tokens), C))
        attended[b][cells] = result[n:].reshape(ws, ws, C)
        prompt_out[b] += result[:n] / grid
    x, prompts = x + torch.roll(attended, (sh, sw), (1, 2)), prompts + prompt_out
    return x + block.mlp(block.norm2(x)), prompts + block.mlp(block.norm2(prompts))


@torch.no_grad()
def explicit_swin(model: torch.nn.Module, deep: bool) -> torch.Tensor:
    """The prompted Swin's features, block by block with ``explicit_swin_block``: deep, each block's own prompts
    (its output prompts dropped); shallow, block 0's prompts carried on, across patch merging as a patch of four
    copies of themselves; the head pools the patch tokens only."""
    x, prompts = model.patch_embed(images()), None
    for stage in model.layers:
        merging = unwrapped(stage.downsample)
        if not isinstance(merging, torch.nn.Identity):
            x = merging(x)
            if prompts is not None:
                prompts = merging.reduction(merging.norm(torch.cat([prompts] * 4, -1)))
        for block in stage.blocks:
            if deep or prompts is None:
                prompts = block.prompt.expand(x.shape[0], -1, -1)
            x, prompts = explicit_swin_block(block.base, x, prompts)
    return model.norm(x)


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_swin_vpt_equals_the_explicit_window_by_window_model(mode):
    model = with_methods(swin(), {"vpt": {"length": 3, "mode": mode}})
    shifted = model.layers[0].blocks[1].base
    assert shifted.attn_mask is not None and shifted.attn_mask.min() < -10  # the mask keeps rolled regions apart
    assert (features(model) - features(swin())).abs().max() > 1e-2
    torch.testing.assert_close(features(model), explicit_swin(model, mode == "deep"), rtol=1e-5, atol=1e-5)


def test_swin_prompts_differ_per_image_and_join_their_own_images_windows():
    model = with_methods(swin(), {"vpt": {"length": 3, "mode": "shallow"}})
    block = model.layers[0].blocks[1]  # a shifted block that receives the travelling prompts
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    prompts = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        grid, after = unpack(block(pack(x, prompts)), 3)
        expected = explicit_swin_block(block.base, x, prompts)
    torch.testing.assert_close(grid, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, expected[1], rtol=1e-5, atol=1e-5)


def test_swin_shallow_prompts_cross_patch_merging_at_the_next_width():
    model = with_methods(swin(), {"vpt": {"length": 5, "mode": "shallow"}})
    merging = model.layers[1].downsample
    assert isinstance(merging, PromptedMerging)
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    prompts = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        packed = merging(pack(x, prompts))
        grid, merged = unpack(packed, 5)
        base = merging.base
        assert packed.shape == (2, 8 + 1, 8, 32)  # 5 prompts fit in one more row of the 8-wide grid
        assert torch.equal(grid, base(x))
        assert torch.equal(merged, base.reduction(base.norm(torch.cat([prompts] * 4, -1))))


def test_swin_vpt_counts_stage_by_stage_and_sizes_index_blocks_over_stages():
    def count(options: dict) -> int:
        return autopeft.count_trainable(autopeft.apply(swin(), {"vpt": options}))

    assert count({"length": 3}) == sum(3 * d for d in STAGE_WIDTHS)
    assert count({"length": [0, 2, 4, 1]}) == 2 * 16 + 4 * 32 + 1 * 32
    assert count({"length": 3, "mode": "shallow"}) == 3 * 16  # once, at the first stage's width
    model = autopeft.apply(swin(), {"vpt": {"length": [0, 2, 4, 1]}})
    assert autopeft.get_sizes(model, "vpt") == [0, 2, 4, 1]
    assert [b.prompt.shape for b in model.layers[1].blocks] == [(4, 32), (1, 32)]
    autopeft.set_sizes(model, "vpt", [0, 1, 2, 0])
    assert autopeft.count_trainable(model) == 1 * 16 + 2 * 32


SWIN_METHODS = {
    "lora": {"rank": 2},
    "adapter": {"dim": 3, "sites": ["mlp", "attn"]},
    "ssf": {},
    "kv_prompt": {"length": 2},
}


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_swin_vpt_at_size_zero_is_the_plain_model_bit_for_bit(mode):
    expected = out(swin())
    model = with_methods(swin(), {"vpt": {"length": 3, "mode": mode}})
    autopeft.set_sizes(model, "vpt", 0)
    assert torch.equal(out(model), expected)
    model = with_methods(swin(), {**SWIN_METHODS, "vpt": {"length": 3, "mode": mode}})
    assert not torch.equal(out(model), expected)
    for method in model.autopeft_methods:
        autopeft.set_sizes(model, method, 0)
    assert torch.equal(out(model), expected)


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_swin_vpt_survives_timm_gradient_checkpointing(mode):
    methods = {**SWIN_METHODS, "vpt": {"length": 3, "mode": mode, "dropout": 0.0}}
    model = with_methods(swin(drop_path_rate=0.0), methods)  # no random drops: both passes see the same model
    grads = checkpointing_keeps_outputs_and_gradients(model, images())
    assert grads["layers.1.blocks.1.prompt" if mode == "deep" else "layers.0.blocks.0.prompt"].abs().sum() > 0


def plain_names(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under timm's own names (wrapper levels dropped)."""
    return {re.sub(r"(\.base)+\.", ".", key): tensor for key, tensor in model.state_dict().items()}


def check_subnets_equal_standalone_models(make, space: dict) -> None:
    space = parse_space(space, "s")
    net = Supernet(make(), space)
    randomise_trainable(net.model)
    rng = random.Random(0)
    for subnet in [net.largest(), *(net.sample(rng) for _ in range(2))]:
        net.set_subnet(subnet)
        model = autopeft.apply(make(), method_config(space, subnet))
        assert net.count(subnet) == autopeft.count_trainable(model)
        shared = plain_names(net.model)
        with torch.no_grad():
            for key, tensor in plain_names(model).items():
                tensor.copy_(shared[key][tuple(slice(0, n) for n in tensor.shape)])
        torch.testing.assert_close(features(net.model), features(model), rtol=0, atol=1e-5)
    net.set_subnet(net.smallest())
    plain = make()
    plain.head.load_state_dict(net.model.head.state_dict())
    assert torch.equal(out(net.model), out(plain))


def test_swin_vpt_subnets_equal_standalone_models_with_inherited_weights():
    space = {"methods": {"vpt": {"sizes": [0, 2, 3]}, "kv_prompt": {"sizes": [0, 2]}, "lora": {"sizes": [0, 2]}}}
    check_subnets_equal_standalone_models(swin, space)


def test_swin_vpt_saves_loads_and_prunes(tmp_path):
    model = with_methods(swin(), {"vpt": {"length": 4}})
    autopeft.save_adapter(model, tmp_path)
    assert torch.equal(out(autopeft.load_adapter(swin(), tmp_path)), out(model))
    rng = np.random.default_rng(0)
    arrays = {s: (rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), np.arange(8) % 5) for s in ("train", "val")}
    task = from_arrays("toy", lambda: arrays, 32)
    before = [block.prompt.detach().clone() for stage in model.layers for block in stage.blocks]
    result = autopeft.prune(model, task, 0.5, "token", batch_size=8)
    assert result.params_after == autopeft.count_trainable(model) == sum(2 * d for d in STAGE_WIDTHS)
    reference = autopeft.apply(swin(), copy.deepcopy(model.autopeft_methods))
    blocks = [block for stage in reference.layers for block in stage.blocks]
    with torch.no_grad():
        for block, layer, prompt in zip(blocks, result.layers, before, strict=True):
            block.prompt.copy_(prompt[layer.tokens])
    torch.testing.assert_close(features(model), features(reference), rtol=0, atol=1e-5)
    autopeft.prune(model, task, 0.5, "segment", segments=4, batch_size=8)  # 4 divides both stage widths


# EVA / EVA-02, BEiT and relative-position ViTs


@pytest.mark.parametrize("name", FAMILIES)
def test_vpt_at_size_zero_is_the_plain_model_bit_for_bit(name):
    expected = out(build(name))
    for mode in ("deep", "shallow"):
        methods = {"vpt": {"length": 3, "mode": mode}, "lora": {"rank": 2}, "ssf": {}, "kv_prompt": {"length": 2}}
        model = with_methods(build(name), methods)
        assert not torch.equal(out(model), expected)
        for method in methods:
            autopeft.set_sizes(model, method, 0)
        assert torch.equal(out(model), expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_vpt_counts_and_prompts_leave_before_the_head(name):
    model = with_methods(build(name), {"vpt": {"length": [3, 1]}})
    assert autopeft.count_trainable(model) == 4 * D
    shallow = autopeft.apply(build(name), {"vpt": {"length": 3, "mode": "shallow"}})
    assert autopeft.count_trainable(shallow) == 3 * D
    with torch.no_grad():
        assert model.forward_features(images()).shape == build(name).forward_features(images()).shape


def with_prompts(x: torch.Tensor, prompts: torch.Tensor, prefix: int, replace: int) -> torch.Tensor:
    return torch.cat([x[:, :prefix], prompts.expand(x.shape[0], -1, -1), x[:, prefix + replace :]], dim=1)


@torch.no_grad()
def explicit_eva(model: torch.nn.Module, rope_of_prompts) -> torch.Tensor:
    """The deep-prompted EVA's features through timm's own blocks, the prompts after the prefix tokens; the rope the
    prompts get is ``rope_of_prompts(rope, n)``: None marks them prefix tokens of the attention (unrotated), else
    the rope rows they get."""
    prefix = model.num_prefix_tokens
    x, rope = model._pos_embed(model.patch_embed(images()))
    x, previous = model.norm_pre(x), 0
    for block in model.blocks:
        n, attn = block.prompt.shape[0], unwrapped(block.attn)
        x = with_prompts(x, block.prompt, prefix, previous)
        turned = rope_of_prompts(rope, n)
        attn.num_prefix_tokens = prefix + (n if turned is None else 0)
        try:
            x = block.base(x, rope=rope if turned is None else torch.cat([turned, rope]))
        finally:
            attn.num_prefix_tokens = prefix
        previous = n
    return model.norm(torch.cat([x[:, :prefix], x[:, prefix + previous :]], dim=1))


@pytest.mark.parametrize("name", [name for name in FAMILIES if name.startswith("eva")])
def test_eva_prompts_get_no_rotation(name):
    model = with_methods(build(name), {"vpt": {"length": [3, 2]}})
    with torch.no_grad():
        for block in model.blocks:
            block.norm1.weight.mul_(5.0)  # sharper attention than at random init, where positions barely matter
    unturned = features(model)
    assert torch.equal(unturned, explicit_eva(model, lambda rope, n: None))  # identity rotations are exact
    rotated = explicit_eva(model, lambda rope, n: rope[:n])  # prompts turned like the first patches
    assert (rotated - unturned).abs().max() > 1e-4


OWN_BIAS = ["beit_base_patch16_224", "vit_relpos_base_patch16_224", "vit_relpos_medium_patch16_cls_224"]


@pytest.mark.parametrize("name", OWN_BIAS)
def test_prompts_get_zero_relative_position_bias_in_the_blocks_own_bias(name):
    model = with_methods(build(name), {"vpt": {"length": 3}})
    attn, prefix = model.blocks[0].attn, model.num_prefix_tokens
    timm_attn = unwrapped(attn)
    if name.startswith("beit"):  # BEiT's table starts at zero
        table = timm_attn.relative_position_bias_table
        torch.nn.init.normal_(table, std=1.0, generator=torch.Generator().manual_seed(5))
    tokens = 16 + prefix + 3
    x = torch.randn(2, tokens, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        if name.startswith("beit"):
            qkv = F.linear(x, timm_attn.qkv.weight, torch.cat((timm_attn.q_bias, timm_attn.k_bias, timm_attn.v_bias)))
            bias = timm_attn._get_rel_pos_bias()
        else:
            qkv = timm_attn.qkv(x)
            bias = unwrapped(timm_attn.rel_pos).get_bias()
        q, k, v = qkv.reshape(2, tokens, 3, 2, D // 2).permute(2, 0, 3, 1, 4)
        expected = explicit_attention(q, k, v, with_zero_rows(bias, prefix, 3))
        expected = timm_attn.proj(expected.transpose(1, 2).reshape(2, tokens, D))
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)
        as_patches = explicit_attention(q, k, v, F.pad(bias, (0, 3, 0, 3)))  # prompts biased as the first patches
        assert (timm_attn.proj(as_patches.transpose(1, 2).reshape(2, tokens, D)) - expected).abs().max() > 1e-4


@torch.no_grad()
def explicit_shared_bias(model: torch.nn.Module, key: str, bias: torch.Tensor) -> torch.Tensor:
    """The deep-prompted model's features through timm's own blocks, given the shared position bias ``bias``
    with zero rows and columns (by index) for the prompts after the prefix tokens."""
    prefix, x, previous = model.num_prefix_tokens, model.patch_embed(images()), 0
    if prefix:
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    if getattr(model, "pos_embed", None) is not None:
        x = x + model.pos_embed
    for block in model.blocks:
        n = block.prompt.shape[0]
        x = block.base(with_prompts(x, block.prompt, prefix, previous), **{key: with_zero_rows(bias, prefix, n)})
        previous = n
    return model.norm(torch.cat([x[:, :prefix], x[:, prefix + previous :]], dim=1))


@pytest.mark.parametrize(
    ("name", "key"),
    [("beit_base_patch16_224-shared", "shared_rel_pos_bias"), ("vit_srelpos_small_patch16_224", "shared_rel_pos")],
)
def test_prompts_get_zero_shared_relative_position_bias(name, key):
    model = with_methods(build(name), {"vpt": {"length": [3, 2]}})
    shared = model.rel_pos_bias() if key == "shared_rel_pos_bias" else model.shared_rel_pos.get_bias()
    torch.testing.assert_close(features(model), explicit_shared_bias(model, key, shared), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_vpt_subnets_equal_standalone_models_and_adapters_round_trip(name, tmp_path):
    space = {"methods": {"vpt": {"sizes": [0, 2, 3]}, "kv_prompt": {"sizes": [0, 2]}, "lora": {"sizes": [0, 2]}}}
    check_subnets_equal_standalone_models(lambda: build(name), space)
    model = with_methods(build(name), {"vpt": {"length": 3, "mode": "shallow"}, "ssf": {}})
    autopeft.save_adapter(model, tmp_path)
    assert torch.equal(out(autopeft.load_adapter(build(name), tmp_path)), out(model))


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "beit_base_patch16_224-shared"])
def test_vpt_survives_timm_gradient_checkpointing_with_block_inputs(name):
    model = with_methods(build(name), {"vpt": {"length": 3, "dropout": 0.0}})
    checkpointing_keeps_outputs_and_gradients(model, images())
