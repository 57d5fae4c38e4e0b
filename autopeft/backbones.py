"""Build timm Vision Transformers, from timm names, local checkpoints or the Hub."""

from __future__ import annotations

import difflib
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.beit import Beit
from timm.models.eva import Eva, EvaAttention
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


@dataclass(frozen=True)
class BackboneInfo:
    """The shape facts of a backbone that methods and parameter counts need. Blocks are numbered over all
    stages (``autopeft.inject.blocks_of``)."""

    width: int  # the token width entering the first block
    depth: int
    num_heads: int
    head_dim: int
    num_prefix_tokens: int
    patch_size: tuple[int, int]
    in_chans: int


def backbone_info(model: torch.nn.Module, method: str = "autopeft") -> BackboneInfo:
    """Describe ``model``; raise a clear error if it is not a supported timm transformer."""
    if not isinstance(model, FAMILIES):
        raise BackboneError(
            f"{method}: needs a timm VisionTransformer (vit_*, deit_*, vit_relpos_*), SwinTransformer (swin_*), "
            f"Eva (eva_*, eva02_*) or Beit (beit*) with token blocks; got {type(model).__name__}"
        )
    blocks = all_blocks(model)
    block = unwrapped(blocks[0])
    kind = type(block).__name__
    if kind not in BLOCK_KINDS:
        raise BackboneError(
            f"{method}: blocks of kind {kind} ({PARALLEL.get(kind, 'an unknown block layout')}) are not supported; "
            f"allowed: timm blocks {', '.join(BLOCK_KINDS)}"
        )
    attn = unwrapped(block.attn)
    if isinstance(model, Eva) and not isinstance(attn, EvaAttention):
        raise BackboneError(
            f"{method}: Eva blocks with {type(attn).__name__} (rope attention with its own qkv layout, e.g. "
            f"vit_pe_*) are not supported; allowed: Eva models with EvaAttention (eva_*, eva02_*)"
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


def create_backbone(
    name: str,
    num_classes: int,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    **timm_kwargs: Any,
) -> torch.nn.Module:
    """Create a timm ViT with a fresh ``num_classes`` head.

    ``checkpoint`` loads local weights (.safetensors; .pth/.pt with ``weights_only=True``;
    .npz as timm reads JAX checkpoints). ``pretrained=True`` uses timm's Hub download.
    """
    if checkpoint is not None and pretrained:
        raise BackboneError("create_backbone: pass either checkpoint=PATH or pretrained=True, not both")
    if name in DEMO_BACKBONES:
        model = build_demo_architecture(name, num_classes, **timm_kwargs)
        load_checkpoint(model, Path(checkpoint) if checkpoint else demo_weights(name))
    else:
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
        if not pretrained:
            raise
        raise BackboneError(
            f"backbone '{name}': pretrained weights could not be fetched from the Hugging Face Hub "
            f"({type(err).__name__}); offline, download them elsewhere and pass "
            f"checkpoint=PATH (.safetensors, .pth/.pt or .npz) instead of pretrained=True"
        ) from err
    backbone_info(model, f"backbone '{name}'")
    return model


def build_demo_architecture(name: str, num_classes: int, **timm_kwargs: Any) -> torch.nn.Module:
    """A shipped demo backbone's architecture, randomly initialised, with its normalisation."""
    spec = DEMO_BACKBONES[name]
    model = timm.create_model(spec["timm_name"], num_classes=num_classes, **{**spec["timm"], **timm_kwargs})
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "architecture": name,
        "input_size": (3, spec["timm"]["img_size"], spec["timm"]["img_size"]),
        "mean": spec["mean"],
        "std": spec["std"],
    }
    return model


def demo_weights(name: str) -> Path:
    """The shipped weights of a demo backbone, checked against their recorded sha256."""
    if DEMO_BACKBONES[name]["sha256"] is None:
        raise BackboneError(
            f"backbone '{name}': ships without weights (an architecture for random-init runs); allowed: "
            f"backbone.pretrained: false, or checkpoint=PATH"
        )
    path = ASSETS / f"{name}.safetensors"
    if not path.is_file():
        raise BackboneError(f"backbone '{name}': shipped weights {path} are missing; reinstall autopeft")
    if hashlib.sha256(path.read_bytes()).hexdigest() != DEMO_BACKBONES[name]["sha256"]:
        raise BackboneError(f"backbone '{name}': {path} does not match its recorded sha256; reinstall autopeft")
    return path


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    known = timm.list_models("vit_*") + timm.list_models("deit*")
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models('vit_*')"
    raise BackboneError(f"unknown backbone '{name}'{hint}")


def load_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Load a local checkpoint into ``model``; a classifier of another size is skipped."""
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
    state = sys.modules[type(model).__module__].checkpoint_filter_fn(state, model)  # the family's own key mapping
    heads = model.get_classifier()
    head_ids = {id(p) for head in (heads if isinstance(heads, tuple) else (heads,)) for p in head.parameters()}
    head_keys = {name for name, param in model.named_parameters() if id(param) in head_ids}
    own = model.state_dict()
    for key, tensor in list(state.items()):
        if key in own and own[key].shape != tensor.shape:
            if key in head_keys:
                del state[key]
                continue
            raise BackboneError(
                f"checkpoint {path}: tensor '{key}' is {tuple(tensor.shape)} in the file "
                f"but {tuple(own[key].shape)} in the model"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in head_keys]
    if missing or unexpected:
        problem = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise BackboneError(f"checkpoint {path}: does not match the backbone ({problem})")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BackboneError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {_one_line(err)})") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"checkpoint {path}: holds no state dict")
    return state


def _one_line(err: Exception) -> str:
    """The gist of a reader's error on one line (torch's weights_only errors span several paragraphs)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split())
