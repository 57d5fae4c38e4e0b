"""EVA / EVA-02 and BEiT: their attention reads ``qkv.weight`` directly (``F.linear`` with its own q / v biases),
so LoRA reaches it through ``LoRALinear.weight`` and SSF at qkv through timm's ``qkv_bias_separate`` path.
One tiny random instance per family: width 32, 2 blocks, 2 heads, 32 px images in 8 px patches."""

from __future__ import annotations

import copy
import random
import re

import pytest
import torch

import autopeft
from autopeft.errors import ConfigError
from autopeft.methods.adapter import NORM_OF_SITE, Adapter
from autopeft.supernet import Supernet, method_config, parse_space
from tests.conftest import randomise_trainable

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
FAMILIES = {
    # fused qkv read directly, rope, packed SwiGLU fc1 (2 x 85), layer scale gamma_1 / gamma_2
    "eva02_tiny_patch14_224": {**TINY, "init_values": 0.1},
    # separate q_proj / k_proj / v_proj, rope, SwiGLU with fc1_g, fc1_x and a norm before fc2
    "eva02_base_patch14_224": TINY,
    # fused qkv read directly, relative position bias per block, layer scale gamma_1 / gamma_2
    "beit_base_patch16_224": TINY,
}
D, BLOCKS, RANK = 32, 2, 2
FC1_OUT = {"eva02_tiny_patch14_224": [170], "eva02_base_patch14_224": [85, 85], "beit_base_patch16_224": [128]}
HIDDEN = {"eva02_tiny_patch14_224": 85, "eva02_base_patch14_224": 85, "beit_base_patch16_224": 128}
ALL_TARGETS = ["q", "k", "v", "proj", "fc1", "fc2"]
METHODS = {
    "lora": {"rank": RANK, "targets": ALL_TARGETS},
    "adapter": {"dim": 3, "sites": ["mlp", "attn"]},
    "ssf": {},
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return autopeft.create_backbone(name, 5, **FAMILIES[name]).eval()


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def out(model: torch.nn.Module) -> torch.Tensor:
    """The logits without autograd: PyTorch's attention picks another CPU kernel when BEiT's relative position
    bias requires grad, so a frozen BEiT differs from a trainable one in the last bits, methods or not."""
    return model(images())


def with_methods(name: str, methods: dict) -> torch.nn.Module:
    model = autopeft.apply(build(name), methods)
    randomise_trainable(model)
    return model


@pytest.mark.parametrize("name", FAMILIES)
def test_every_method_at_size_zero_is_the_plain_model_bit_for_bit(name):
    expected = out(build(name))
    model = with_methods(name, METHODS)
    assert not torch.equal(out(model), expected)
    for method in METHODS:
        autopeft.set_sizes(model, method, 0)
    assert torch.equal(out(model), expected)
    for method in ("bitfit", "ln_tune", "linear", "full"):  # they unfreeze tensors and add nothing
        assert torch.equal(out(autopeft.apply(build(name), {method: {}})), expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_counts_follow_the_formulas(name):
    def count(methods: dict) -> int:
        return autopeft.count_trainable(autopeft.apply(build(name), methods))

    fc1, h = FC1_OUT[name], HIDDEN[name]
    lora = RANK * (3 * 2 * D + 2 * D + sum(D + out for out in fc1) + h + D)  # q, k, v, proj, fc1 (each part), fc2
    assert count({"lora": METHODS["lora"]}) == BLOCKS * lora
    assert count({"lora": {"rank": RANK}}) == BLOCKS * RANK * 2 * 2 * D  # q and v
    assert count({"adapter": {"dim": 3}}) == BLOCKS * (2 * D * 3 + 3 + D)
    assert count({"adapter": METHODS["adapter"]}) == BLOCKS * 2 * (2 * D * 3 + 3 + D)
    ssf_block = 2 * (D + 3 * D + D + D + sum(fc1) + D)  # norm1, qkv (or q/k/v_proj), proj, norm2, fc1, fc2
    assert count({"ssf": {}}) == BLOCKS * ssf_block + 2 * D + 2 * D  # + patch embedding and final (fc_)norm
    biases = {  # per block: norm1, q, v, proj, norm2, fc2 + the first MLP layer (and a SwiGLU's norm)
        "eva02_tiny_patch14_224": 6 * D + 170,
        "eva02_base_patch14_224": 6 * D + 85 + 85 + 85,
        "beit_base_patch16_224": 6 * D + 128,
    }[name]
    assert count({"bitfit": {}}) == BLOCKS * biases + D + D  # + patch embedding and fc_norm
    norms = 2 * 2 * D + (2 * 85 if name == "eva02_base_patch14_224" else 0)  # norm1, norm2 (and mlp.norm)
    assert count({"ln_tune": {}}) == BLOCKS * norms + 2 * D
    model = build(name)
    head = sum(p.numel() for p in model.get_classifier().parameters())
    assert count({"full": {}}) == sum(p.numel() for p in model.parameters()) - head
    assert count({"linear": {}}) == 0


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "beit_base_patch16_224"])
def test_lora_reaches_the_directly_read_qkv_and_merges_bit_for_bit(name):
    attn = build(name).blocks[0].attn
    assert attn.q_bias is not None and not attn.qkv_bias_separate  # timm reads qkv.weight itself
    plain = out(build(name))
    model = with_methods(name, {"lora": {"rank": RANK, "targets": ["q", "k", "v"]}})
    logits = out(model)
    assert not torch.equal(logits, plain)
    assert torch.equal(out(autopeft.merge(model)), logits)  # the weight the attention read is the merged one


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_and_ssf_merge_within_1e4(name):
    model = with_methods(name, {"lora": {"rank": RANK, "targets": ALL_TARGETS}, "ssf": {}})
    expected = out(model)
    torch.testing.assert_close(out(autopeft.merge(model)), expected, rtol=1e-4, atol=1e-4)
    if name != "eva02_base_patch14_224":  # merged SSF gives the fused qkv its shift as a bias, called as a module
        assert model.blocks[0].attn.qkv.bias is not None and model.blocks[0].attn.qkv_bias_separate


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "beit_base_patch16_224"])
def test_ssf_at_a_directly_read_qkv_switches_the_path_only_while_on(name):
    model = with_methods(name, {"ssf": {"sites": ["qkv"]}})
    attn = model.blocks[0].attn
    logits = out(model)
    assert attn.qkv_bias_separate  # SSF on: the attention called the wrapper, then added its q / v biases
    oracle = copy.deepcopy(build(name).blocks[0].attn)  # SSF on the bias-free projection, then the q / v biases
    ssf = attn.qkv
    with torch.no_grad():
        oracle.qkv = torch.nn.Linear(D, 3 * D)
        oracle.qkv.weight.copy_(ssf.base.weight * ssf.gamma[:, None])
        oracle.qkv.bias.copy_(ssf.beta)
        oracle.qkv_bias_separate = True
        x = torch.randn(2, 17, D, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(attn(x), oracle(x), rtol=1e-5, atol=1e-5)
    autopeft.set_sizes(model, "ssf", 0)
    assert torch.equal(out(model), out(build(name))) and not attn.qkv_bias_separate
    assert not torch.equal(logits, out(build(name)))


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "beit_base_patch16_224"])
def test_gradients_reach_lora_and_ssf_at_a_directly_read_qkv(name):
    for ssf_on in (0, 1):  # LoRA through the weight read (SSF off), and through the module call (SSF on)
        model = with_methods(name, {"lora": {"rank": RANK}, "ssf": {"sites": ["qkv"], "enabled": ssf_on}})
        model(images()).square().sum().backward()
        qkv = model.blocks[0].attn.qkv
        lora = qkv.base if ssf_on else qkv
        tensors = [lora.lora_A["q"], lora.lora_B["v"]] + ([qkv.gamma, qkv.beta] if ssf_on else [])
        assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tensors)


def test_a_failed_load_leaves_the_directly_read_qkv_as_it_was(tmp_path):
    name = "beit_base_patch16_224"
    autopeft.save_adapter(with_methods(name, {"ssf": {}}), tmp_path)
    torch.manual_seed(0)
    expected = out(autopeft.create_backbone(name, 7, **FAMILIES[name]).eval())
    torch.manual_seed(0)
    model = autopeft.create_backbone(name, 7, **FAMILIES[name]).eval()  # another head: the load is refused
    with pytest.raises(ConfigError, match=r"tensor 'head\.bias' is \(5,\) in the file but \(7,\)"):
        autopeft.load_adapter(model, tmp_path)
    assert type(model.blocks[0].attn.qkv) is torch.nn.Linear
    assert torch.equal(out(model), expected) and not model.blocks[0].attn.qkv_bias_separate


@pytest.mark.parametrize("name", FAMILIES)
def test_save_and_load_round_trip(name, tmp_path):
    methods = {**METHODS, "bitfit": {}}
    model = with_methods(name, methods)
    autopeft.save_adapter(model, tmp_path)
    fresh = autopeft.load_adapter(build(name), tmp_path)
    assert torch.equal(out(fresh), out(model))


def plain_names(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under timm's own names: wrapper levels dropped, an adapter's norm back to the block's
    (name by name: EVA-02's SwiGLU has a ``mlp.norm`` of its own)."""
    moved = {
        f"{name}.norm.": f"{name.rsplit('.', 1)[0]}.{NORM_OF_SITE[name.rsplit('.', 1)[1]]}."
        for name, module in model.named_modules()
        if isinstance(module, Adapter)
    }
    named = {}
    for key, tensor in model.state_dict().items():
        prefix = next((p for p in moved if key.startswith(p)), None)
        key = moved[prefix] + key[len(prefix) :] if prefix else key
        named[re.sub(r"(\.base)+\.", ".", key)] = tensor
    return named


@pytest.mark.parametrize("name", FAMILIES)
def test_every_subnet_equals_the_standalone_model_with_inherited_weights(name):
    space = parse_space(
        {"methods": {"lora": {"sizes": [0, 2, 4]}, "adapter": {"sizes": [0, 3]}, "ssf": {"sizes": [0, 1]}}}, "s"
    )
    net = Supernet(build(name), space)
    randomise_trainable(net.model)
    rng = random.Random(0)
    for subnet in [net.largest(), *(net.sample(rng) for _ in range(4))]:
        net.set_subnet(subnet)
        model = autopeft.apply(build(name), method_config(space, subnet))
        assert net.count(subnet) == autopeft.count_trainable(model)
        shared = plain_names(net.model)
        with torch.no_grad():
            for key, tensor in plain_names(model).items():
                tensor.copy_(shared[key][tuple(slice(0, n) for n in tensor.shape)])
        torch.testing.assert_close(out(net.model), out(model), rtol=0, atol=1e-5)
    net.set_subnet(net.smallest())
    plain = build(name)
    plain.head.load_state_dict(net.model.head.state_dict())
    assert torch.equal(out(net.model), out(plain))


@pytest.mark.parametrize(
    ("name", "method", "message"),
    [
        (
            "eva02_tiny_patch14_224",
            "vpt",
            "vpt: eva02_tiny_patch14_224 (Eva) applies rotary position embeddings (rope) to the tokens after the "
            "prefix tokens by patch-grid position, so prompt tokens do not fit; allowed on this backbone: lora, "
            "adapter, ssf and the baselines",
        ),
        (
            "eva02_base_patch14_224",
            "kv_prompt",
            "kv_prompt: eva02_base_patch14_224 (Eva) applies rotary position embeddings (rope)",
        ),
        (
            "beit_base_patch16_224",
            "vpt",
            "vpt: beit_base_patch16_224 (Beit) indexes its relative position bias by patch-grid position (a table "
            "over the class token and the patches), so prompt tokens do not fit; allowed on this backbone: lora, "
            "adapter, ssf and the baselines",
        ),
        ("beit_base_patch16_224", "kv_prompt", "kv_prompt: beit_base_patch16_224 (Beit) indexes its relative"),
    ],
)
def test_prompt_methods_are_refused_with_one_line(name, method, message):
    with pytest.raises(ConfigError) as err:
        autopeft.apply(build(name), {"lora": {}, method: {}})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_lora_options_a_direct_read_or_separate_projections_cannot_take_are_refused():
    with pytest.raises(ConfigError) as err:
        autopeft.apply(build("beit_base_patch16_224"), {"lora": {"dropout": 0.1}})
    assert str(err.value).startswith(
        "lora.dropout: got 0.1 with targets ['q', 'v']; Attention in block 0 reads qkv.weight directly"
    )
    autopeft.apply(build("beit_base_patch16_224"), {"lora": {"dropout": 0.1, "targets": ["proj", "fc1"]}})
    autopeft.apply(build("eva02_base_patch14_224"), {"lora": {"dropout": 0.1}})  # q_proj / v_proj are called
    with pytest.raises(ConfigError) as err:
        autopeft.apply(build("eva02_base_patch14_224"), {"lora": {"targets": ["qkv"]}})
    assert str(err.value) == (
        "lora.targets: 'qkv' (fused) in block 0: EvaAttention has separate q_proj, k_proj and v_proj; "
        "allowed: some of q, k, v (one update per projection)"
    )


def test_adapters_are_refused_on_eva_post_norm_blocks():
    torch.manual_seed(0)
    model = autopeft.create_backbone("eva02_enormous_patch14_clip_224", 5, **TINY)  # EvaBlockPostNorm
    with pytest.raises(ConfigError) as err:
        autopeft.apply(model, {"adapter": {"dim": 2}})
    assert str(err.value) == (
        "adapter: block 0 is post-norm (EvaBlockPostNorm: x + norm(sublayer(x))), where an adapter would have to "
        "move the norm in front of its sub-layer; allowed on this backbone: lora, ssf and the baselines"
    )
