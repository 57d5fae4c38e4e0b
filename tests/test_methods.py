"""Generic checks that every registered method passes, on class-token, avg-pool and register-token ViTs."""

from __future__ import annotations

import copy

import pytest
import torch

import autopeft
from autopeft.methods import REGISTRY
from tests.conftest import randomise_trainable, tiny_vit

ELASTIC = [name for name, spec in REGISTRY.items() if spec.size_option]
ALL_FIVE = {"lora": {}, "adapter": {}, "vpt": {}, "ssf": {}, "kv_prompt": {}}


def with_methods(methods: dict, variant: str = "cls") -> torch.nn.Module:
    return autopeft.apply(tiny_vit(variant), copy.deepcopy(methods))


@pytest.mark.parametrize("method", ELASTIC)
def test_size_zero_reproduces_plain_timm_exactly(method, variant, images):
    plain = tiny_vit(variant)(images)
    model = with_methods({method: {}}, variant)
    randomise_trainable(model)
    autopeft.set_sizes(model, method, 0)
    assert torch.equal(model(images), plain)
    assert autopeft.count_trainable(model) == 0
    zero_option = {REGISTRY[method].size_option: 0}
    assert torch.equal(with_methods({method: zero_option}, variant)(images), plain)


def test_all_five_at_size_zero_reproduce_plain_timm(variant, images):
    plain = tiny_vit(variant)(images)
    model = with_methods(ALL_FIVE, variant)
    randomise_trainable(model)
    for method in ALL_FIVE:
        autopeft.set_sizes(model, method, 0)
    assert torch.equal(model(images), plain)


@pytest.mark.parametrize("method", [n for n, s in REGISTRY.items() if s.identity_at_init])
def test_identity_at_init(method, variant, images):
    assert torch.equal(with_methods({method: {}}, variant)(images), tiny_vit(variant)(images))


@pytest.mark.parametrize(
    "methods",
    [
        {"lora": {}},
        {"ssf": {}},
        {"lora": {"targets": ["q", "k", "v", "proj", "fc1", "fc2"], "alpha": 4.0}, "ssf": {}},
        {"lora": {"targets": ["qkv"], "rank": [2, 0, 4]}, "ssf": {"enabled": [1, 0, 1]}},
        ALL_FIVE,
    ],
    ids=["lora", "ssf", "lora-all-targets+ssf", "per-block", "all-five"],
)
def test_merge_equals_unmerged(methods, variant, images):
    model = with_methods(methods, variant)
    randomise_trainable(model)
    with torch.no_grad():
        before = model(images)
        autopeft.merge(model)
        after = model(images)
    assert (before - after).abs().max().item() <= 1e-5
    assert not any(hasattr(m, "merged_module") for m in model.modules())
    assert set(model.autopeft_methods) == set(methods) - {"lora", "ssf"}


def test_lora_merge_unmerge_restores_weights(images):
    model = with_methods({"lora": {"targets": ["q", "v", "fc1"]}})
    randomise_trainable(model)
    wrappers = [m for m in model.modules() if type(m).__name__ == "LoRALinear"]
    originals = [w.base.weight.detach().clone() for w in wrappers]
    before = model(images)
    for wrapper in wrappers:
        wrapper.merge()
    assert (model(images) - before).abs().max().item() <= 1e-5
    for wrapper, original in zip(wrappers, originals, strict=True):
        wrapper.unmerge()
        assert (wrapper.base.weight - original).abs().max().item() <= 1e-6
    assert (model(images) - before).abs().max().item() <= 1e-6


@pytest.mark.parametrize("method", list(REGISTRY))
def test_gradients_reach_trainable_and_frozen_stays(method, images):
    model = with_methods({method: {}} if method != "vpt" else {"vpt": {"dropout": 0.0}})
    randomise_trainable(model)
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.05)
    labels = torch.arange(images.shape[0]) % 5
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    for name, param in trainable.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer.step()
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
        else:
            assert not torch.equal(param, before[name]), name


def test_all_five_on_one_model_train(images):
    model = with_methods(ALL_FIVE)
    randomise_trainable(model)
    model.train()
    loss = model(images).logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("methods", [{m: {}} for m in REGISTRY] + [ALL_FIVE], ids=[*REGISTRY, "all-five"])
def test_save_load_round_trip(methods, variant, images, tmp_path):
    model = with_methods(methods, variant)
    randomise_trainable(model)
    expected = model(images)
    autopeft.save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    fresh = tiny_vit(variant)
    if methods.keys() & {"ssf", "adapter", "lora", "vpt", "kv_prompt"}:
        assert not torch.equal(autopeft.apply(copy.deepcopy(fresh), copy.deepcopy(methods))(images), expected)
    restored = autopeft.load_adapter(fresh, tmp_path / "adapter")
    assert torch.equal(restored(images), expected)
    assert autopeft.count_trainable(restored) == autopeft.count_trainable(model)


def test_save_load_keeps_active_sizes(images, tmp_path):
    model = with_methods({"lora": {"rank": 8}, "vpt": {"length": 6}})
    randomise_trainable(model)
    autopeft.set_sizes(model, "lora", [8, 2, 0])
    autopeft.set_sizes(model, "vpt", [3, 0, 6])
    expected = model(images)
    autopeft.save_adapter(model, tmp_path)
    restored = autopeft.load_adapter(tiny_vit(), tmp_path)
    assert autopeft.get_sizes(restored, "lora") == [8, 2, 0]
    assert autopeft.get_sizes(restored, "vpt") == [3, 0, 6]
    assert torch.equal(restored(images), expected)


def test_lora_merge_resize_unmerge_restores_base_weights_bit_for_bit(images):
    model = with_methods({"lora": {"rank": 8, "targets": ["q", "v", "fc1"], "alpha": 16.0}})
    randomise_trainable(model)
    wrappers = [m for m in model.modules() if type(m).__name__ == "LoRALinear"]
    originals = [w.base.weight.detach().clone() for w in wrappers]
    autopeft.set_sizes(model, "lora", 4)
    at_rank_4 = model(images)
    autopeft.set_sizes(model, "lora", 8)
    at_rank_8 = model(images)
    for wrapper in wrappers:
        wrapper.merge()
    assert (model(images) - at_rank_8).abs().max().item() <= 1e-5
    autopeft.set_sizes(model, "lora", 4)  # resized while merged
    for wrapper, original in zip(wrappers, originals, strict=True):
        wrapper.unmerge()
        assert torch.equal(wrapper.base.weight, original)
    assert torch.equal(model(images), at_rank_4)
    assert "unmerged_weight" not in dict(model.named_buffers()) and "unmerged_weight" not in str(model.state_dict())


def test_save_load_of_lora_at_rank_zero_everywhere(images, tmp_path):
    model = with_methods({"lora": {"rank": 0}, "bitfit": {}})
    randomise_trainable(model)
    assert autopeft.get_sizes(model, "lora") == [0, 0, 0]
    autopeft.save_adapter(model, tmp_path)
    restored = autopeft.load_adapter(tiny_vit(), tmp_path)
    assert autopeft.get_sizes(restored, "lora") == [0, 0, 0]
    assert torch.equal(restored(images), model(images))
    with pytest.raises(autopeft.ConfigError, match=r"lora: size in block 1: got 2, above the allocated maximum 0"):
        autopeft.set_sizes(restored, "lora", [0, 2, 0])
