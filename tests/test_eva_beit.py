"""EVA / EVA-02 and BEiT: their attention reads ``qkv.weight`` directly (``F.linear`` with its own q / v biases),
so LoRA reaches it through ``LoRALinear.weight`` and SSF at qkv through timm's ``qkv_bias_separate`` path.
Key-value prompts there and on relative-position ViTs: no rope and no position bias on the prompts.
One tiny random instance per family: width 32, 2 blocks, 2 heads, 32 px images in 8 px patches."""

from __future__ import annotations

import copy
import random
import re

import pytest
import torch
import torch.nn.functional as F
from timm.layers import AttentionRope, apply_rot_embed_cat

import autopeft
from autopeft.errors import ConfigError
from autopeft.methods.adapter import NORM_OF_SITE, Adapter
from autopeft.supernet import Supernet, method_config, parse_space
from tests.conftest import randomise_trainable, tiny_vit

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
    "kv_prompt": {"length": 3, "shared": False},
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
    heads, head_dim = 2, D // 2
    assert count({"kv_prompt": {"length": 3}}) == BLOCKS * heads * 3 * head_dim  # one tensor serves K and V
    assert count({"kv_prompt": {"length": 3, "shared": False}}) == BLOCKS * 2 * heads * 3 * head_dim
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
        {
            "methods": {
                "lora": {"sizes": [0, 2, 4]},
                "adapter": {"sizes": [0, 3]},
                "ssf": {"sizes": [0, 1]},
                "kv_prompt": {"sizes": [0, 2, 3]},
            }
        },
        "s",
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
        "move the norm in front of its sub-layer; allowed on this backbone: lora, ssf, vpt, kv_prompt and the "
        "baselines"
    )


SHARED_BEIT = {**TINY, "use_rel_pos_bias": False, "use_shared_rel_pos_bias": True}
EVA_NORMS = {**TINY, "qk_norm": True, "scale_attn_inner": True, "rope_rotate_half": True, "num_reg_tokens": 1}
PROMPTED = {  # case: timm name, options, the position input the model passes its attention (None: the block's own)
    "eva02-fused": ("eva02_tiny_patch14_224", FAMILIES["eva02_tiny_patch14_224"], "rope"),
    "eva02-unfused": ("eva02_base_patch14_224", TINY, "rope"),
    "eva02-qk-norm-half-rope": ("eva02_base_patch14_224", EVA_NORMS, "rope"),
    "beit": ("beit_base_patch16_224", TINY, None),
    "beit-shared-bias": ("beit_base_patch16_224", SHARED_BEIT, "shared_rel_pos_bias"),
    "relpos": ("vit_relpos_base_patch16_224", TINY, None),
    "relpos-shared": ("vit_srelpos_small_patch16_224", TINY, "shared_rel_pos"),
}


def build_prompted(case: str) -> torch.nn.Module:
    """A ``PROMPTED`` backbone with random q / v biases and relative position bias tables (timm starts them at 0),
    and attention matrices large enough for sharp attention, where rope and position bias matter."""
    name, options, _ = PROMPTED[case]
    torch.manual_seed(0)
    model = autopeft.create_backbone(name, 5, **options).eval()
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith(("q_bias", "v_bias", "relative_position_bias_table")):
                param.normal_(0.0, 0.5)
            elif ".attn." in key and param.dim() == 2:
                param.normal_(0.0, 0.3)
    return model


def attention_call(model: torch.nn.Module, block: int = 1) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The input, keyword arguments (rope, shared bias) and output of a block's attention in one forward."""
    seen = {}
    handle = model.blocks[block].attn.register_forward_hook(
        lambda module, args, kwargs, output: seen.update(x=args[0], kwargs=kwargs, out=output), with_kwargs=True
    )
    try:
        out(model)
    finally:
        handle.remove()
    return seen["x"], seen["kwargs"], seen["out"]


def position_bias(attn: torch.nn.Module, kwargs: dict) -> torch.Tensor | None:
    """The relative position bias on the token scores: BEiT's table read through its index plus the model's shared
    bias; a relative-position ViT's own bias, else the shared one; none for EVA."""
    if hasattr(attn, "relative_position_bias_table"):
        parts = [kwargs.get("shared_rel_pos_bias")]
        if attn.relative_position_bias_table is not None:
            n = attn.relative_position_index.shape[0]
            table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
            parts.append(table.view(n, n, -1).permute(2, 0, 1)[None])
        parts = [part for part in parts if part is not None]
        return sum(parts) if parts else None
    if hasattr(attn, "rel_pos"):
        return attn.rel_pos.get_bias() if attn.rel_pos is not None else kwargs.get("shared_rel_pos")
    return None


def reference(prompted, x, kwargs, rope_on_prompts: bool = False, bias_on_prompts: bool = False) -> torch.Tensor:
    """The prompted attention from the module's own tensors: one explicit softmax over [prompt keys, token keys].
    Prompts get no rope and no position bias, unless asked: the wrong variants, rope as if the prompts sat at the
    first patch positions, or the first token column's bias on every prompt column."""
    attn, t = prompted.base, prompted.size
    B, N, _ = x.shape
    if getattr(attn, "q_proj", None) is not None:
        q, k, v = (F.linear(x, p.weight, p.bias) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    else:
        q_bias = getattr(attn, "q_bias", None)
        bias = attn.qkv.bias if q_bias is None else torch.cat([q_bias, torch.zeros_like(q_bias), attn.v_bias])
        q, k, v = F.linear(x, attn.qkv.weight, bias).chunk(3, dim=-1)
    q, k, v = (part.reshape(B, N, attn.num_heads, -1).transpose(1, 2) for part in (q, k, v))
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    prompt_k = prompted.prompt_tensor("prompt_k")[:, :t].expand(B, -1, -1, -1)
    prompt_v = prompted.prompt_tensor("prompt_v")
    prompt_v = prompt_k if prompt_v is None else prompt_v[:, :t].expand(B, -1, -1, -1)
    rope = kwargs.get("rope")
    if rope is not None:
        npt, half = attn.num_prefix_tokens, attn.rotate_half
        q, k = (torch.cat([z[:, :, :npt], apply_rot_embed_cat(z[:, :, npt:], rope, half=half)], 2) for z in (q, k))
        if rope_on_prompts:
            prompt_k = apply_rot_embed_cat(prompt_k, rope[:t], half=half)
    scores = (q * attn.scale) @ torch.cat([prompt_k, k], 2).transpose(-2, -1)
    bias = position_bias(attn, kwargs)
    if bias is not None:
        columns = bias[..., :1] if bias_on_prompts else torch.zeros_like(bias[..., :1])
        scores = scores + torch.cat([columns.expand(*bias.shape[:-1], t), bias], -1)
    x = (scores.softmax(-1) @ torch.cat([prompt_v, v], 2)).transpose(1, 2).reshape(B, N, -1)
    return attn.proj(attn.norm(x) if hasattr(attn, "norm") else x)


@pytest.mark.parametrize("case", PROMPTED)
def test_key_value_prompts_equal_an_explicit_reference_with_no_rope_and_no_bias_on_the_prompts(case):
    model = autopeft.apply(build_prompted(case), {"kv_prompt": {"length": 3, "shared": False}})
    randomise_trainable(model)
    prompted, given = model.blocks[1].attn, PROMPTED[case][2]
    for fused in (True, False):  # timm's scaled_dot_product_attention path, and its explicit one
        prompted.base.fused_attn = fused
        x, kwargs, got = attention_call(model)
        assert given is None or kwargs[given] is not None
        with torch.no_grad():
            torch.testing.assert_close(got, reference(prompted, x, kwargs), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the check can tell: rope or the bias on the prompts changes the output
        wrong = reference(prompted, x, kwargs, **{"rope_on_prompts" if given == "rope" else "bias_on_prompts": True})
    assert (got - wrong).abs().max() > 1e-2


@pytest.mark.parametrize("case", PROMPTED)
def test_key_value_prompts_at_size_zero_are_the_plain_model_bit_for_bit(case):
    expected = out(build_prompted(case))
    model = autopeft.apply(build_prompted(case), {"kv_prompt": {"length": 3}})
    randomise_trainable(model)
    assert not torch.equal(out(model), expected)
    autopeft.set_sizes(model, "kv_prompt", 0)
    assert torch.equal(out(model), expected)


@pytest.mark.parametrize("case", ["eva02-unfused", "beit-shared-bias", "relpos"])
def test_pruned_key_value_prompts_keep_the_reference(case):
    model = autopeft.apply(build_prompted(case), {"kv_prompt": {"length": 4, "shared": False}})
    randomise_trainable(model)
    prompted = model.blocks[1].attn
    prompted.keep_tokens([0, 2, 3])  # E2VPT's token pruning, then segments of the keys fixed at zero
    prompted.keep_segments("prompt_k", torch.tensor([[True, False], [True, True], [False, True]]))
    assert prompted.count() == 2 * 3 * 16 + 4 * 16  # the values' 3 tokens (2 heads x 16), the keys' 4 kept halves
    x, kwargs, got = attention_call(model)
    with torch.no_grad():
        torch.testing.assert_close(got, reference(prompted, x, kwargs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_key_value_prompts_with_lora_and_ssf_at_qkv_train_and_merge_within_1e4(name):
    model = with_methods(name, {"lora": {"rank": RANK, "targets": ["q", "k", "v"]}, "ssf": {}, "kv_prompt": {}})
    model(images()).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    expected = out(model)
    autopeft.set_sizes(model, "ssf", 0)  # timm's direct read of qkv.weight, then the module call again
    assert not torch.equal(out(model), expected)
    autopeft.set_sizes(model, "ssf", 1)
    assert torch.equal(out(model), expected)
    torch.testing.assert_close(out(autopeft.merge(model)), expected, rtol=1e-4, atol=1e-4)


def test_key_value_prompts_refuse_an_attention_kind_they_do_not_know_with_one_line():
    model = tiny_vit()
    model.blocks[0].attn = AttentionRope(D, num_heads=2)
    with pytest.raises(ConfigError) as err:
        autopeft.apply(model, {"kv_prompt": {}})
    assert str(err.value) == (
        "kv_prompt: block 0 attention is AttentionRope; allowed: timm's Attention (ViT), WindowAttention (Swin), "
        "EvaAttention (eva_*, eva02_*), BEiT's Attention (beit*) and RelPosAttention (vit_relpos_*)"
    )
