"""Bad input raises one clear error naming the method, option, value and what is allowed."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import autopeft
from autopeft.errors import BackboneError, ConfigError
from autopeft.methods import Elastic
from tests.conftest import tiny_vit

BAD_OPTIONS = [
    (
        {"lorra": {}},
        "unknown method 'lorra'; allowed: lora, ssf, kv_prompt, adapter, vpt, pro_tuning, bitfit, ln_tune, linear, "
        "full",
    ),
    ({"lora": {"rnk": 4}}, "lora: unknown option 'rnk'; allowed: rank, alpha, targets, dropout"),
    ({"lora": {"rank": -1}}, "lora.rank: got -1; allowed: a non-negative integer"),
    ({"lora": {"rank": 2.5}}, "lora.rank: got 2.5; allowed: an integer or a list of (an integer)"),
    ({"lora": {"rank": [4, 4]}}, "lora.rank: per-block list has 2 entries; allowed: exactly 3"),
    (
        {"lora": {"targets": ["q", "out"]}},
        "lora.targets: 'out' is not a target of a transformer; allowed there: q, k, v, qkv, proj, fc1, fc2",
    ),
    ({"lora": {"targets": ["qkv", "q"]}}, "lora.targets: 'qkv' (fused) cannot be combined"),
    ({"lora": {"alpha": 0}}, "lora.alpha: got 0.0; allowed: a positive number"),
    ({"adapter": {"dim": "8"}}, "adapter.dim: got '8'; allowed: an integer"),
    ({"adapter": {"position": "serial"}}, "adapter.position: got 'serial'; allowed: 'sequential' or 'parallel'"),
    ({"adapter": {"scale": "big"}}, "adapter.scale: got 'big'; allowed: a number or 'learnable' or 'learnable_scalar'"),
    ({"adapter": {"sites": []}}, "adapter.sites: got []; allowed: a non-empty subset of mlp, attn"),
    ({"vpt": {"mode": "shallow", "length": [1, 2, 3]}}, "vpt.length: a per-block list needs mode 'deep'"),
    ({"vpt": {"length": [1, -2, 3]}}, "vpt.length: got -2; allowed: a non-negative integer"),
    ({"ssf": {"enabled": 2}}, "ssf.enabled: got 2; allowed: 0..1"),
    (
        {"ssf": {"sites": ["qkv", "mlp"]}},
        "ssf.sites: 'mlp' is not a site of a transformer; allowed there: patch_embed, norm1,",
    ),
    ({"kv_prompt": {"shared": "yes"}}, "kv_prompt.shared: got 'yes'; allowed: true or false"),
    ({"bitfit": {"lr": 1}}, "bitfit: unknown option 'lr'; allowed: none"),
    ({"lora": "rank=8"}, "lora: expected a mapping of options, got 'rank=8'"),
    ({}, "apply: give a mapping of method -> options"),
]


@pytest.mark.parametrize(("methods", "message"), BAD_OPTIONS, ids=[m for _, m in BAD_OPTIONS])
def test_bad_options_raise_one_clear_error(methods, message):
    with pytest.raises(ConfigError) as info:
        autopeft.apply(tiny_vit(), methods)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_active_size_above_maximum():
    model = autopeft.apply(tiny_vit(), {"lora": {"rank": 4}, "vpt": {"length": [2, 0, 2]}})
    with pytest.raises(
        ConfigError, match=r"lora: size in block 0: got 5, above the allocated maximum 4; allowed: 0..4"
    ):
        autopeft.set_sizes(model, "lora", 5)
    with pytest.raises(ConfigError, match=r"vpt: size in block 1: got 1, above the allocated maximum 0"):
        autopeft.set_sizes(model, "vpt", [1, 1, 1])
    with pytest.raises(ConfigError, match=r"lora sizes: per-block list has 2 entries"):
        autopeft.set_sizes(model, "lora", [1, 1])
    with pytest.raises(ConfigError, match=r"set_sizes: the model has no 'adapter' modules"):
        autopeft.set_sizes(model, "adapter", 1)


def test_token_method_on_backbone_without_tokens():
    cnn = timm.create_model("resnet10t", num_classes=3)
    with pytest.raises(BackboneError, match=r"vpt: needs a transformer's token blocks; backbone 'resnet10t' is a CNN"):
        autopeft.apply(cnn, {"vpt": {}})
    with pytest.raises(BackboneError, match=r"kv_prompt: needs a timm VisionTransformer .* got RegNet"):
        autopeft.apply(timm.create_model("regnetx_002", num_classes=3), {"kv_prompt": {}})


def test_baselines_work_on_any_timm_model():
    cnn = autopeft.apply(timm.create_model("resnet10t", num_classes=3), {"bitfit": {}})
    assert autopeft.count_trainable(cnn) == sum(p.numel() for n, p in cnn.named_parameters() if n.endswith("bias")) - 3


def test_target_the_backbone_lacks():
    model = tiny_vit(mlp_layer=timm.layers.SwiGLU)  # its fc1 is split: fc1_g and fc1_x (LoRA adapts both)
    del model.blocks[0].mlp.fc1_x  # with one part gone, block 0 has neither form of fc1
    with pytest.raises(BackboneError, match=r"lora: site 'fc1' not found in block 0 \(SwiGLU has no 'fc1'\)"):
        autopeft.apply(model, {"lora": {"targets": ["fc1"]}})


def test_apply_twice_is_refused():
    model = autopeft.apply(tiny_vit(), {"lora": {}})
    with pytest.raises(ConfigError, match=r"already has methods \['lora'\]"):
        autopeft.apply(model, {"ssf": {}})


def test_load_adapter_into_mismatched_backbone(tmp_path):
    model = autopeft.apply(tiny_vit(), {"lora": {"rank": 2}})
    autopeft.save_adapter(model, tmp_path)
    wider = tiny_vit(embed_dim=64)
    with pytest.raises(ConfigError) as info:
        autopeft.load_adapter(wider, tmp_path)
    message = str(info.value)
    assert (
        "adapter.safetensors: tensor 'blocks.0.attn.qkv.lora_A.q' is (2, 32) in the file but (2, 64) in the model"
        in message
    )


def test_load_adapter_missing_files(tmp_path):
    with pytest.raises(ConfigError, match=r"adapter_config.json: no such file"):
        autopeft.load_adapter(tiny_vit(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"adapter_config.json: not valid JSON"):
        autopeft.load_adapter(tiny_vit(), tmp_path)


def test_save_adapter_refuses_merged_model(tmp_path):
    model = autopeft.merge(autopeft.apply(tiny_vit(), {"lora": {}, "adapter": {}}))
    with pytest.raises(ConfigError, match=r"\['lora'\] are merged into the backbone weights"):
        autopeft.save_adapter(model, tmp_path)
    assert not list(tmp_path.iterdir())


def test_get_sizes_of_an_unknown_or_absent_method():
    model = autopeft.apply(tiny_vit(), {"lora": {"rank": [4, 0, 2]}, "bitfit": {}})
    assert autopeft.get_sizes(model, "lora") == [4, 0, 2]
    with pytest.raises(ConfigError) as info:
        autopeft.get_sizes(model, "loraa")
    assert str(info.value) == (
        "unknown method 'loraa'; allowed: lora, ssf, kv_prompt, adapter, vpt, pro_tuning, bitfit, ln_tune, linear, full"
    )
    with pytest.raises(ConfigError) as info:
        autopeft.get_sizes(model, "adapter")
    assert str(info.value) == "get_sizes: the model has no 'adapter' modules; apply it first"
    with pytest.raises(ConfigError) as info:
        autopeft.get_sizes(model, "bitfit")
    assert str(info.value) == (
        "get_sizes: method 'bitfit' has no size; allowed: lora, ssf, kv_prompt, adapter, vpt, pro_tuning"
    )


def snapshot(model) -> tuple:
    """Everything a failed load must leave as it was: modules, tensors, trainability, sizes, methods."""
    modules = [(name, type(module), id(module)) for name, module in model.named_modules()]
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    sizes = {m: autopeft.get_sizes(model, m) for m in getattr(model, "autopeft_methods", {})}
    sizes.update({name: getattr(m, "size", None) for name, m in model.named_modules() if isinstance(m, Elastic)})
    return modules, state, flags, sizes, copy.deepcopy(getattr(model, "autopeft_methods", None))


def assert_unchanged(model, before: tuple) -> None:
    modules, state, flags, sizes, methods = snapshot(model)
    assert modules == before[0]
    assert state.keys() == before[1].keys() and all(torch.equal(state[k], before[1][k]) for k in state)
    assert (flags, sizes, methods) == before[2:]


def test_failed_load_adapter_leaves_a_plain_backbone_as_it_was(tmp_path, images):
    model = autopeft.apply(tiny_vit(), {"lora": {"rank": 2}, "adapter": {"dim": 3}, "vpt": {"length": 2}})
    autopeft.save_adapter(model, tmp_path)
    wider = tiny_vit(embed_dim=64)
    plain = tiny_vit(embed_dim=64)(images)
    before = snapshot(wider)
    with pytest.raises(ConfigError, match=r"tensor '.*' is \(\d+, 32\) in the file but \(\d+, 64\) in the model"):
        autopeft.load_adapter(wider, tmp_path)
    assert_unchanged(wider, before)
    assert getattr(wider, "autopeft_methods", None) is None
    assert torch.equal(wider(images), plain)
    assert autopeft.apply(wider, {"ssf": {}}) is wider  # a plain backbone again: methods apply


def test_failed_load_adapter_leaves_an_adapted_model_as_it_was(tmp_path):
    autopeft.save_adapter(autopeft.apply(tiny_vit(), {"lora": {"rank": 4}, "ssf": {}}), tmp_path)
    wider = autopeft.apply(tiny_vit(embed_dim=64), {"lora": {"rank": 4}, "ssf": {}})
    autopeft.set_sizes(wider, "lora", [1, 0, 3])
    autopeft.set_sizes(wider, "ssf", [0, 1, 0])
    wider.patch_embed.proj.size = 0  # the SSF of the patch embedding, which serves no block
    before = snapshot(wider)
    with pytest.raises(ConfigError, match=r"in the file but \([^)]*64[^)]*\) in the model"):
        autopeft.load_adapter(wider, tmp_path)
    assert_unchanged(wider, before)
    assert autopeft.get_sizes(wider, "lora") == [1, 0, 3]


def test_load_adapter_without_weights_file_changes_nothing(tmp_path):
    autopeft.save_adapter(autopeft.apply(tiny_vit(), {"lora": {}}), tmp_path)
    (tmp_path / "adapter.safetensors").unlink()
    model = tiny_vit()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=r"adapter.safetensors: no such file"):
        autopeft.load_adapter(model, tmp_path)
    assert_unchanged(model, before)
    assert getattr(model, "autopeft_methods", None) is None
