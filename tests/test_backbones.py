"""create_backbone builds tiny timm ViTs and loads real checkpoint files (.safetensors, .pth/.pt, JAX .npz)."""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import autopeft
from autopeft.backbones import BackboneInfo, backbone_info
from tests.conftest import DEPTH, HEADS, HIDDEN, VARIANTS, WIDTH, randomise_trainable, tiny_vit

NAME = "vit_tiny_patch16_224"
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": WIDTH, "depth": DEPTH, "num_heads": HEADS}
SOURCE_CLASSES, TARGET_CLASSES = 5, 7
PREFIX_TOKENS = {"cls": 1, "avg": 0, "reg": 3}


def source_vit(variant: str = "cls", **kwargs) -> torch.nn.Module:
    """A tiny ViT with 5 classes whose every tensor is moved off timm's init, so loading it is observable."""
    model = tiny_vit(variant, seed=0, **kwargs)
    randomise_trainable(model, seed=3)
    return model


def build(variant: str = "cls", num_classes: int = TARGET_CLASSES, checkpoint=None, **kwargs) -> torch.nn.Module:
    """A tiny ViT through create_backbone, always from the same seed (so its fresh head is reproducible)."""
    torch.manual_seed(1)
    options = {**TINY, **VARIANTS[variant], **kwargs}
    return autopeft.create_backbone(NAME, num_classes, checkpoint=checkpoint, **options).eval()


def assert_loaded(model, source, images, variant: str = "cls", atol: float = 0.0) -> None:
    """Every non-head tensor equals the source, the head keeps its fresh 7-class init, features match."""
    fresh = build(variant).state_dict()
    loaded, wanted = model.state_dict(), source.state_dict()
    assert loaded.keys() == wanted.keys()
    for key, tensor in loaded.items():
        if key.startswith("head."):
            assert torch.equal(tensor, fresh[key]), f"{key} is not the fresh head"
            continue
        assert not torch.equal(fresh[key], wanted[key]), f"{key}: source equals a fresh model; test is vacuous"
        torch.testing.assert_close(tensor, wanted[key], rtol=0, atol=atol, msg=f"{key} differs from the source")
    assert model.head.weight.shape == (TARGET_CLASSES, WIDTH)
    assert model.head.bias.shape == (TARGET_CLASSES,)
    with torch.no_grad():
        got, expected = model.forward_features(images), source.forward_features(images)
    assert got.shape == (4, 16 + PREFIX_TOKENS[variant], WIDTH)
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def test_safetensors_checkpoint_loads_all_but_the_head(tmp_path, variant, images):
    source = source_vit(variant)
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))
    model = build(variant, checkpoint=path)
    assert_loaded(model, source, images, variant)
    assert model.autopeft_backbone == {"name": NAME, "checkpoint": str(path)}


@pytest.mark.parametrize("nest", [None, "state_dict", "model"])
@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_torch_checkpoint_loads_bare_or_nested(tmp_path, suffix, nest, images):
    source = source_vit()
    state = source.state_dict()
    path = tmp_path / f"vit{suffix}"
    torch.save(state if nest is None else {nest: state, "epoch": 3}, path)
    assert_loaded(build(checkpoint=path), source, images)


def test_torch_checkpoint_with_same_head_size_loads_the_head(tmp_path):
    source = source_vit()
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    model = build(num_classes=SOURCE_CLASSES, checkpoint=path)
    assert torch.equal(model.head.weight, source.head.weight)
    assert torch.equal(model.head.bias, source.head.bias)


def to_jax_npz(state: dict[str, torch.Tensor], path) -> None:
    """Write a timm class-token ViT state dict in the original JAX/Flax layout that timm's _load_weights reads."""
    head_dim = WIDTH // HEADS

    def arr(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy().copy()

    w = {
        "embedding/kernel": arr(state["patch_embed.proj.weight"].permute(2, 3, 1, 0)),  # OIHW -> HWIO
        "embedding/bias": arr(state["patch_embed.proj.bias"]),
        "cls": arr(state["cls_token"]),
        "Transformer/posembed_input/pos_embedding": arr(state["pos_embed"]),
        "Transformer/encoder_norm/scale": arr(state["norm.weight"]),
        "Transformer/encoder_norm/bias": arr(state["norm.bias"]),
        "head/kernel": arr(state["head.weight"].T),
        "head/bias": arr(state["head.bias"]),
    }
    for i in range(DEPTH):
        block, jax = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = f"{jax}MultiHeadDotProductAttention_1/"
        for torch_norm, jax_norm in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            w[f"{jax}{jax_norm}/scale"] = arr(state[f"{block}{torch_norm}.weight"])
            w[f"{jax}{jax_norm}/bias"] = arr(state[f"{block}{torch_norm}.bias"])
        weights = state[f"{block}attn.qkv.weight"].chunk(3)
        biases = state[f"{block}attn.qkv.bias"].chunk(3)
        for name, weight, bias in zip(("query", "key", "value"), weights, biases, strict=True):
            w[f"{mha}{name}/kernel"] = arr(weight.T.reshape(WIDTH, HEADS, head_dim))  # (in, heads, head_dim)
            w[f"{mha}{name}/bias"] = arr(bias.reshape(HEADS, head_dim))
        w[f"{mha}out/kernel"] = arr(state[f"{block}attn.proj.weight"].T.reshape(HEADS, head_dim, WIDTH))
        w[f"{mha}out/bias"] = arr(state[f"{block}attn.proj.bias"])
        for r in range(2):
            w[f"{jax}MlpBlock_3/Dense_{r}/kernel"] = arr(state[f"{block}mlp.fc{r + 1}.weight"].T)
            w[f"{jax}MlpBlock_3/Dense_{r}/bias"] = arr(state[f"{block}mlp.fc{r + 1}.bias"])
    np.savez(path, **w)


def test_jax_npz_checkpoint_loads_all_but_the_head(tmp_path, images):
    source = source_vit()
    path = tmp_path / "ViT-tiny.npz"
    to_jax_npz(source.state_dict(), path)
    with np.load(path) as archive:
        assert archive["embedding/kernel"].shape == (8, 8, 3, WIDTH)
        assert archive["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel"].shape == (2, 16, 32)
        assert archive["Transformer/encoderblock_2/MlpBlock_3/Dense_0/kernel"].shape == (WIDTH, HIDDEN)
    assert_loaded(build(checkpoint=path), source, images, atol=1e-6)


def test_jax_npz_checkpoint_with_same_head_size_loads_the_head(tmp_path):
    source = source_vit()
    path = tmp_path / "ViT-tiny.npz"
    to_jax_npz(source.state_dict(), path)
    model = build(num_classes=SOURCE_CLASSES, checkpoint=path)
    torch.testing.assert_close(model.head.weight, source.head.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.head.bias, source.head.bias, rtol=0, atol=1e-6)


def error_of(name: str = NAME, num_classes: int = TARGET_CLASSES, **kwargs) -> str:
    with pytest.raises(autopeft.BackboneError) as info:
        autopeft.create_backbone(name, num_classes, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "absent" / "vit.safetensors"
    message = error_of(checkpoint=path, **TINY)
    assert str(path) in message
    assert "no such file" in message


def test_unsupported_suffix_lists_the_allowed_ones(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save(source_vit().state_dict(), path)
    message = error_of(checkpoint=path, **TINY)
    assert str(path) in message
    assert "unsupported suffix '.bin'; allowed: .safetensors, .pth, .pt, .npz" in message


@pytest.mark.parametrize(
    ("suffix", "problem"),
    [(".safetensors", "cannot be read"), (".pth", "cannot be read"), (".npz", "not a timm/JAX ViT .npz")],
)
def test_corrupt_checkpoint_is_reported(tmp_path, suffix, problem):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
    message = error_of(checkpoint=path, **TINY)
    assert f"checkpoint {path}: {problem}" in message


def test_pickled_objects_are_refused_on_one_line(tmp_path):
    path = tmp_path / "train_checkpoint.pth"
    torch.save({"state_dict": source_vit().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    message = error_of(checkpoint=path, **TINY)
    assert (
        f"checkpoint {path}: cannot be read (UnpicklingError: Unsupported global: GLOBAL argparse.Namespace: the file "
        "pickles Python objects beside its tensors, and autopeft does not run pickled code; save the tensors alone"
    ) in message
    assert "weights_only" not in message and "safe_globals" not in message  # torch's advice runs the file's code


def test_checkpoint_of_another_width_names_the_tensor_and_both_shapes(tmp_path):
    wide = source_vit(embed_dim=64).state_dict()
    path = tmp_path / "wide.safetensors"
    save_file(wide, str(path))
    message = error_of(checkpoint=path, **TINY)
    found = re.search(r"tensor '([^']+)' is (\([^)]*\)) in the file but (\([^)]*\)) in the model", message)
    assert found, message
    key, in_file, in_model = found.groups()
    assert in_file == str(tuple(wide[key].shape))
    assert in_model == str(tuple(build().state_dict()[key].shape))
    assert "64" in in_file and "32" in in_model


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ("drop", "missing ['blocks.2.mlp.fc2.weight', 'norm.bias']"),
        ("add", "unexpected ['extra.weight']"),
    ],
)
def test_checkpoint_with_other_keys_is_rejected(tmp_path, edit, problem):
    state = source_vit().state_dict()
    if edit == "drop":
        del state["blocks.2.mlp.fc2.weight"], state["norm.bias"]
    else:
        state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    message = error_of(checkpoint=path, **TINY)
    assert f"checkpoint {path}: does not match the backbone ({problem})" in message


def test_pretrained_offline_fails_fast_and_points_to_checkpoint():
    start = time.perf_counter()
    message = error_of(pretrained=True, **TINY)
    assert time.perf_counter() - start < 10
    assert f"backbone '{NAME}': pretrained weights could not be fetched" in message
    assert "pass checkpoint=PATH" in message


def test_checkpoint_and_pretrained_together_are_rejected(tmp_path):
    message = error_of(checkpoint=tmp_path / "vit.safetensors", pretrained=True, **TINY)
    assert "pass either checkpoint=PATH or pretrained=True, not both" in message


def test_unknown_name_suggests_the_close_one():
    message = error_of("vit_tiny_patch16_22", **TINY)
    assert "unknown backbone 'vit_tiny_patch16_22'; did you mean vit_tiny_patch16_224" in message
    assert "did you mean vit_demo_fmnist?" in error_of("vit_demo_fmnst")  # a built-in, misspelt
    assert error_of("nosuch").endswith(
        "unknown backbone 'nosuch'; allowed: a built-in backbone (vit_demo_fmnist, swin_demo, "
        "efficientnet_lite0_imagenet) or a timm model (timm.list_models())"
    )


def test_unsupported_timm_model_is_rejected():
    message = error_of("regnetx_002")  # a CNN family without method support (ResNets and ConvNeXts have it)
    assert "backbone 'regnetx_002': needs a timm VisionTransformer" in message
    assert "or a CNN: ConvNeXt (convnext_*), ResNet (resnet*)" in message and "got RegNet" in message


def expected_info(prefix_tokens: int) -> BackboneInfo:
    return BackboneInfo(
        width=WIDTH,
        depth=DEPTH,
        num_heads=HEADS,
        head_dim=WIDTH // HEADS,
        num_prefix_tokens=prefix_tokens,
        patch_size=(8, 8),
        in_chans=3,
    )


def test_variants_build_and_report_their_shape(variant, images):
    model = build(variant)
    assert backbone_info(model) == expected_info(PREFIX_TOKENS[variant])
    assert backbone_info(model).head_dim == 16
    with torch.no_grad():
        assert model(images).shape == (4, TARGET_CLASSES)


def test_deit_builds_tiny():
    torch.manual_seed(1)
    model = autopeft.create_backbone("deit_tiny_patch16_224", TARGET_CLASSES, **TINY)
    assert backbone_info(model) == expected_info(1)
    assert model.autopeft_backbone == {"name": "deit_tiny_patch16_224", "checkpoint": None}


def test_demo_backbone_loads_its_shipped_weights_exactly():
    from safetensors.torch import load_file

    from autopeft.backbones import DEMO_BACKBONES, demo_weights

    model = autopeft.create_backbone("vit_demo_fmnist", 7)
    shipped = load_file(demo_weights("vit_demo_fmnist"))
    state = model.state_dict()
    assert set(shipped) == set(state) - {"head.weight", "head.bias"}
    assert all(torch.equal(state[key], tensor.float()) for key, tensor in shipped.items())
    assert state["head.weight"].shape == (7, DEMO_BACKBONES["vit_demo_fmnist"]["timm"]["embed_dim"])
    assert model.pretrained_cfg["input_size"] == (3, 32, 32) and model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_demo_backbone_refuses_weights_that_do_not_match_their_sha256(tmp_path, monkeypatch):
    from autopeft import backbones

    original = backbones.demo_weights("vit_demo_fmnist").read_bytes()
    (tmp_path / "vit_demo_fmnist.safetensors").write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    monkeypatch.setattr(backbones, "ASSETS", tmp_path)
    with pytest.raises(autopeft.BackboneError, match="does not match its recorded sha256"):
        autopeft.create_backbone("vit_demo_fmnist", 10)


def test_a_built_in_is_a_timm_model_with_its_shipped_weights_and_keeps_its_identity():
    import timm
    import torch

    from autopeft.runconfig import BackboneConfig
    from autopeft.runkey import weights_id

    shipped = autopeft.create_backbone("vit_demo_fmnist", 7).state_dict()
    through_timm = timm.create_model("vit_demo_fmnist", pretrained=True, num_classes=7).state_dict()
    body = [k for k in shipped if not k.startswith("head")]
    assert body and all(torch.equal(shipped[k], through_timm[k]) for k in body)
    random = autopeft.create_backbone("vit_demo_fmnist", 7, pretrained=False).state_dict()
    assert not torch.equal(random["blocks.0.attn.qkv.weight"], shipped["blocks.0.attn.qkv.weight"])
    assert {"vit_demo_fmnist", "swin_demo", "efficientnet_lite0_imagenet"} <= set(timm.list_models())
    # what run keys and exports record is what it was: the weights' sha256, and plain timm's own architecture
    sha256 = "993f65531874c249d1caee0ba58b8f6040b256e1d280ab790dd837876945a2fc"
    assert weights_id(BackboneConfig(name="vit_demo_fmnist")) == f"sha256:{sha256}"
    from autopeft.build import timm_metadata
    from autopeft.train import Normalization

    model = autopeft.create_backbone("vit_demo_fmnist", 7)
    exported = timm_metadata(BackboneConfig(name="vit_demo_fmnist"), model, Normalization((0.5,) * 3, (0.5,) * 3))
    assert exported["timm_model"] == "vit_tiny_patch16_224" and exported["timm_kwargs"]["embed_dim"] == 128
