"""Pro-tuning: a prompt block (1x1 -> 5x5 depthwise -> 1x1 convolution) after every stage but the last adds an
input-dependent prompt to the stage's map, on CNNs (their own stages), Swin (its stages' grids) and plain ViTs
(stages of ``group`` blocks, the patch tokens folded into their grid). Exact at init and at size 0, against explicit
convolutions, in its counts, its gradients, save / load, the supernet and timm's gradient checkpointing; one-line
errors. Tiny random models at 32 px."""

from __future__ import annotations

import random
import re

import pytest
import torch
from torch import nn

import autopeft
from autopeft.backbones import backbone_info
from autopeft.errors import BackboneError, ConfigError
from autopeft.methods import elastic_modules
from autopeft.methods.pro_tuning import StagePrompt
from autopeft.supernet import Supernet, load_space, method_config, parse_space
from tests import test_cnn, test_eva_beit, test_families
from tests.conftest import WIDTH, checkpointing_keeps_outputs_and_gradients, randomise_trainable, tiny_vit

CNNS = ("convnext_atto", "resnet10t", "mobilenetv3_small_050")
MODELS = {
    **{name: (lambda name=name: test_cnn.build(name), test_cnn.images) for name in CNNS},
    "swin": (test_families.swin, test_families.swin_images),
    "vit_avg": (lambda: tiny_vit("avg"), test_cnn.images),  # timm pools its tokens in a transposed memory layout
    "vit_reg": (lambda: tiny_vit("reg"), test_cnn.images),  # a class token and 2 registers before the patches
    "eva02": (lambda: test_eva_beit.build("eva02_tiny_patch14_224"), test_eva_beit.images),  # rope as block input
}


def prompt_blocks(model: nn.Module) -> list[StagePrompt]:
    return [m for m in model.modules() if isinstance(m, StagePrompt)]


@pytest.mark.parametrize("name", MODELS)
def test_identity_at_init_and_at_size_zero_bit_for_bit(name):
    make, inputs = MODELS[name]
    with torch.no_grad():
        expected = make()(inputs())
        model = autopeft.apply(make(), {"pro_tuning": {"dim": 4}})
        assert prompt_blocks(model) and torch.equal(model(inputs()), expected)
        randomise_trainable(model)
        assert not torch.allclose(model(inputs()), expected)
        autopeft.set_sizes(model, "pro_tuning", 0)
        assert torch.equal(model(inputs()), expected) and autopeft.count_trainable(model) == 0
        assert torch.equal(autopeft.apply(make(), {"pro_tuning": {"dim": 0}})(inputs()), expected)


def explicit_prompt(block: StagePrompt, maps: torch.Tensor) -> torch.Tensor:
    """The prompt of an NCHW map at the block's active size, with convolutions built here from its slices."""
    k, c = block.size, block.up.out_features
    down, depthwise, up = nn.Conv2d(c, k, 1), nn.Conv2d(k, k, 5, padding=2, groups=k), nn.Conv2d(k, c, 1)
    with torch.no_grad():
        down.weight.copy_(block.down.weight[:k, :, None, None])
        down.bias.copy_(block.down.bias[:k])
        depthwise.weight.copy_(block.depthwise.weight[:k])
        depthwise.bias.copy_(block.depthwise.bias[:k])
        up.weight.copy_(block.up.weight[:, :k, None, None])
        up.bias.copy_(block.up.bias)
    return up(depthwise(down(maps)))


# where a prompt block sits, the input its stage's last block takes, and the prompt added to that block's output
LAYOUTS = {
    "resnet10t": (  # stage 1: a BasicBlock that halves an odd map and widens 8 -> 16 channels
        lambda m: m.layer2[0],
        (2, 8, 9, 9),
        lambda block, y: y + explicit_prompt(block, y),
    ),
    "swin": (  # stage 0's (B, H, W, C) grid
        lambda m: m.layers[0].blocks[1],
        (2, 16, 16, 16),
        lambda block, y: y + explicit_prompt(block, y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1),
    ),
    "vit_reg": (  # 3 prefix tokens left alone, the 16 patch tokens as a 4 x 4 map
        lambda m: m.blocks[0],
        (2, 3 + 16, WIDTH),
        lambda block, y: torch.cat(
            [y[:, :3], y[:, 3:] + explicit_prompt(block, y[:, 3:].transpose(1, 2).reshape(2, WIDTH, 4, 4))
             .flatten(2).transpose(1, 2)], dim=1),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", LAYOUTS)
def test_the_prompt_block_equals_explicit_convolutions(name):
    where, shape, expected = LAYOUTS[name]
    model = autopeft.apply(MODELS[name][0](), {"pro_tuning": {"dim": 6}})
    randomise_trainable(model)
    autopeft.set_sizes(model, "pro_tuning", 4)  # leading slices of the allocated 6
    block = where(model)
    assert isinstance(block, StagePrompt) and block.size == 4
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected(block, block.base(x)), rtol=1e-5, atol=1e-6)


def per_stage(k: int, widths: list[int]) -> int:
    """The README's count of a prompt block of k hidden channels after a stage of c channels, summed."""
    return sum(c * k + k + 25 * k + k + k * c + c for c in widths)


def count(model: nn.Module, options: dict) -> int:
    return autopeft.count_trainable(autopeft.apply(model, {"pro_tuning": options}))


def test_counts_follow_the_formula_stage_by_stage():
    k = 3
    dims, channels = test_cnn.CONVNEXT_DIMS, test_cnn.RESNET_CHANNELS
    assert count(test_cnn.build("convnext_atto"), {"dim": k}) == per_stage(k, dims[:3])  # every stage but the last
    assert count(test_cnn.build("resnet10t"), {"dim": k}) == per_stage(k, channels[:3])
    mobilenet = test_cnn.build("mobilenetv3_small_050")
    widths, lengths = backbone_info(mobilenet).widths, autopeft.inject.stage_lengths(mobilenet)
    last_blocks = [sum(lengths[: i + 1]) - 1 for i in range(len(lengths) - 1)]
    assert count(mobilenet, {"dim": k}) == per_stage(k, [widths[b] for b in last_blocks])
    assert count(test_families.swin(), {"dim": k}) == per_stage(k, [16])  # stage 0 of widths 16, 32
    assert count(tiny_vit(), {"dim": k}) == per_stage(k, [WIDTH] * 2)  # 3 blocks: 3 stages of 1 by default
    assert count(tiny_vit(), {"dim": k, "group": 2}) == per_stage(k, [WIDTH])  # blocks 0-1, then 2 (remainder)
    # a stage's prompt block takes the size of its first block; the other blocks' entries change nothing
    model = autopeft.apply(test_cnn.build("convnext_atto"), {"pro_tuning": {"dim": [4, 0, 2, 9, 5]}})
    assert autopeft.get_sizes(model, "pro_tuning") == [4, 0, 2, 0, 0]
    assert autopeft.count_trainable(model) == per_stage(4, [8]) + per_stage(2, [24])
    assert count(test_cnn.build("resnet10t"), {"dim": k, "stages": [2, 0]}) == per_stage(k, [8, 24])
    with torch.device("meta"):  # as `autopeft methods` and the README count them
        atto = autopeft.create_backbone("convnext_atto", 100)
        vit_b = autopeft.create_backbone("vit_base_patch16_224", 100)
    assert count(atto, {}) == per_stage(16, [40, 80, 160]) == 10_536
    assert count(vit_b, {}) == per_stage(16, [768] * 3) == 77_328  # 4 stages of 3 blocks


@pytest.mark.parametrize("name", ["resnet10t", "vit_reg"])
def test_gradients_reach_the_prompt_blocks_and_the_head_only(name):
    make, inputs = MODELS[name]
    model = autopeft.apply(make(), {"pro_tuning": {"dim": 4}})
    randomise_trainable(model)
    model.train()
    model(inputs()).logsumexp(-1).sum().backward()
    own = {id(p) for block in prompt_blocks(model) for p in block.own_parameters()}
    head = {id(p) for p in autopeft.api._head_parameters(model)}
    for param in model.parameters():
        assert param.requires_grad == (id(param) in own | head)
        assert param.grad is None if not param.requires_grad else param.grad.abs().sum() > 0


def test_save_and_load_round_trip_with_sizes_per_stage(tmp_path):
    model = autopeft.apply(test_cnn.build("convnext_atto"), {"pro_tuning": {"dim": 5}})
    randomise_trainable(model)
    autopeft.set_sizes(model, "pro_tuning", [3, 0, 5, 0, 0])
    autopeft.save_adapter(model, tmp_path)
    fresh = autopeft.load_adapter(test_cnn.build("convnext_atto"), tmp_path)
    assert autopeft.get_sizes(fresh, "pro_tuning") == [3, 0, 5, 0, 0]
    assert torch.equal(fresh(test_cnn.images()), model(test_cnn.images()))


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor under a name no wrapping changes: timm's name with the wrapper levels dropped, a method's
    tensors tagged with the method (a prompt block and a Conv-Adapter at one block both have ``down``, ``up``)."""
    owner = {id(p): m.method for m in elastic_modules(model) for p in m.own_parameters()}
    return {
        re.sub(r"(\.base)+\.", ".", key) + (f"@{owner[id(t)]}" if id(t) in owner else ""): t
        for key, t in model.state_dict(keep_vars=True).items()
    }


@pytest.mark.parametrize(
    ("name", "space"),
    [
        ("convnext_atto", load_space("cnn")),  # the named space: LoRA, Conv-Adapters, SSF and Pro-tuning
        ("vit_avg", parse_space({"methods": {"pro_tuning": {"sizes": [0, 2, 4]}, "lora": {"sizes": [0, 2]}}}, "s")),
    ],
)
def test_every_subnet_equals_the_standalone_model_with_inherited_weights(name, space):
    make, inputs = MODELS[name]
    net = Supernet(make(), space)
    randomise_trainable(net.model)
    shared = named_tensors(net.model)
    rng = random.Random(0)
    for subnet in [net.largest(), net.smallest(), *(net.sample(rng) for _ in range(3))]:
        net.set_subnet(subnet)
        model = autopeft.apply(make(), method_config(net.space, subnet))
        with torch.no_grad():
            for key, tensor in named_tensors(model).items():
                tensor.copy_(shared[key][tuple(slice(0, n) for n in tensor.shape)])
            torch.testing.assert_close(net.model(inputs()), model(inputs()), rtol=0, atol=1e-5)
        assert net.count(subnet) == autopeft.count_trainable(model)


def test_timm_gradient_checkpointing_keeps_the_prompt_blocks():
    model = autopeft.apply(tiny_vit(), {"pro_tuning": {"dim": 4}, "vpt": {"length": 2, "dropout": 0.0}})
    randomise_trainable(model)
    images = test_cnn.images()
    grads = checkpointing_keeps_outputs_and_gradients(model, images)
    assert grads["blocks.1.up.weight"].abs().sum() > 0


def copy_shared(target: nn.Module, source: nn.Module) -> None:
    """``source``'s tensors into the same timm and method tensors of ``target`` (whatever wraps them there)."""
    shared = named_tensors(source)
    with torch.no_grad():
        for key, tensor in named_tensors(target).items():
            if key in shared:
                tensor.copy_(shared[key])


@pytest.mark.parametrize(
    ("make", "vpt"),
    [(tiny_vit, {"length": 2}), (test_families.swin, {"length": 3, "mode": "shallow"})],
    ids=["vit-deep-vpt", "swin-shallow-vpt"],
)
def test_vpt_prompts_pass_the_prompt_blocks_untouched(make, vpt):
    images = test_families.swin_images()
    alone = autopeft.apply(make(), {"vpt": vpt})
    randomise_trainable(alone)
    both = autopeft.apply(make(), {"vpt": vpt, "pro_tuning": {"dim": 4}})
    copy_shared(both, alone)
    with torch.no_grad():
        expected = alone(images)
        assert torch.equal(both(images), expected)  # zero prompts: VPT's tokens and the grid as they were
        randomise_trainable(both, seed=7)
        copy_shared(both, alone)  # VPT's prompts and the head back, the prompt blocks random
        assert not torch.allclose(both(images), expected)
        autopeft.set_sizes(both, "pro_tuning", 0)
        assert torch.equal(both(images), expected)


@pytest.mark.parametrize(
    ("make", "options", "message"),
    [
        (lambda: test_cnn.build("resnet10t"), {"stages": [3]},
         "pro_tuning.stages: got 3; allowed: 0..2 (a prompt goes into the next stage; this backbone has 4 stages)"),
        (lambda: test_cnn.build("resnet10t"), {"stages": [0, -1]}, "pro_tuning.stages: got -1; allowed: 0..2"),
        (tiny_vit, {"stages": [1, 1]}, "pro_tuning.stages: got [1, 1]; allowed: a non-empty list of distinct stages"),
        (lambda: test_cnn.build("convnext_atto"), {"group": 2},
         "pro_tuning.group: got 2; allowed: null on a backbone with 4 stages of its own (Swin, CNNs)"),
        (tiny_vit, {"group": 3}, "pro_tuning.group: got 3; the 3 blocks would form one stage, with no next stage "
         "for a prompt; allowed: 1..2"),
        (tiny_vit, {"group": 0}, "pro_tuning.group: got 0; allowed: a positive integer (blocks per stage)"),
        (tiny_vit, {"dim": [4, 4]}, "pro_tuning.dim: per-block list has 2 entries; allowed: exactly 3"),
        (lambda: tiny_vit(dynamic_img_size=True), {}, "pro_tuning: needs a fixed patch grid to fold the tokens "
         "into a map; this ViT has dynamic_img_size; allowed: dynamic_img_size=False"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line(make, options, message):
    with pytest.raises((ConfigError, BackboneError)) as err:
        autopeft.apply(make(), {"pro_tuning": options})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_cheapest_subnet_is_found_when_no_prompt_block_follows_stage_zero():
    space = parse_space({"methods": {"pro_tuning": {"sizes": [0, 2, 4], "options": {"stages": [1]}}}}, "s")
    net = Supernet(test_cnn.build("convnext_atto"), space)  # stages of 1, 1, 2, 1 blocks: stage 1 is block 1
    cheapest = net.smallest_nonempty()
    assert list(cheapest.size("pro_tuning")) == [0, 2, 0, 0, 0]
    assert net.count(cheapest) == autopeft.count_trainable(
        autopeft.apply(test_cnn.build("convnext_atto"), {"pro_tuning": {"dim": 2, "stages": [1]}})
    )


def test_the_supernet_searches_only_the_genes_that_change_something():
    space = parse_space({"methods": {"pro_tuning": {"sizes": [0, 2, 4]}, "lora": {"sizes": [0, 2]}}}, "s")
    net = Supernet(test_cnn.build("convnext_atto"), space)  # stages of 1, 1, 2, 1 blocks open at blocks 0, 1, 2, 4
    assert [gene for gene in net.genes if gene.startswith("pro_tuning")] == [f"pro_tuning.{b}" for b in (0, 1, 2)]
    assert [gene for gene in net.genes if gene.startswith("lora")] == [f"lora.{b}" for b in range(5)]
    rng = random.Random(0)
    subnets = {net.sample(rng) for _ in range(300)}
    assert {tuple(s.size("pro_tuning"))[3:] for s in subnets} == {(0, 0)}  # blocks 3, 4: no prompt block reads them
    assert len({tuple(s.size("pro_tuning")) for s in subnets}) == 3**3
    assert net.from_genes({**{g: 2 for g in net.genes}, "pro_tuning.3": 4}).size("pro_tuning") == (2, 2, 2, 0, 0)
