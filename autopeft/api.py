"""The public functions: apply methods, count, merge, resize, save and load adapters."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from autopeft import inject
from autopeft.backbones import BackboneInfo, backbone_info, backbone_name
from autopeft.config import parse_options, per_block
from autopeft.errors import BackboneError, ConfigError
from autopeft.files import write_atomic, write_json
from autopeft.methods import REGISTRY, Elastic, ElasticWrapper, elastic_modules
from autopeft.methods.base import check_size, with_family_defaults
from autopeft.methods.prompts import SegmentMask, segment_masks, set_segment_masks

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"


def apply(model: nn.Module, methods: Mapping[str, Mapping[str, Any] | None]) -> nn.Module:
    """Attach ``methods`` (name -> options) to ``model`` in place, freeze the rest, return it.

    The classifier head is always trainable. Methods attach in a fixed order (LoRA, SSF,
    key-value prompts, adapters, VPT, Pro-tuning, then the baselines) whatever the mapping's order.
    """
    if getattr(model, "autopeft_methods", None):
        raise ConfigError(
            f"apply: the model already has methods {sorted(model.autopeft_methods)}; apply all methods "
            f"in one call on a fresh backbone"
        )
    if not isinstance(methods, Mapping) or not methods:
        raise ConfigError(f"apply: give a mapping of method -> options; allowed methods: {', '.join(REGISTRY)}")
    parsed = {name: parse_options(_spec(name).options, opts, name) for name, opts in methods.items()}
    vit_methods = [name for name in parsed if REGISTRY[name].needs_vit]
    info = backbone_info(model, vit_methods[0]) if vit_methods else None
    if info is not None:
        _refuse_on_cnn(model, vit_methods, info)
        parsed = {name: with_family_defaults(REGISTRY[name], opts, info.family) for name, opts in parsed.items()}
    for name in sorted(parsed, key=lambda n: REGISTRY[n].order):
        REGISTRY[name].attach(model, parsed[name], info)
    _set_trainable(model, parsed)
    model.autopeft_methods = {name: asdict(opts) for name, opts in parsed.items()}
    return model


def _refuse_on_cnn(model: nn.Module, methods: list[str], info: BackboneInfo) -> None:
    """One line for the first token method (VPT, key-value prompts) asked of a CNN."""
    refused = [name for name in methods if not REGISTRY[name].takes(info.family)]
    if refused:
        allowed = ", ".join(name for name, spec in REGISTRY.items() if spec.takes(info.family))
        raise BackboneError(
            f"{refused[0]}: needs a transformer's token blocks; backbone '{backbone_name(model)}' is a CNN "
            f"({info.family}); allowed on CNNs: {allowed}"
        )


def _spec(name: str):
    if name not in REGISTRY:
        raise ConfigError(f"unknown method '{name}'; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier's parameters: one head, or both heads of a distilled DeiT (class and distillation)."""
    heads = model.get_classifier() if hasattr(model, "get_classifier") else ()
    heads = heads if isinstance(heads, tuple) else (heads,)
    return [p for head in heads if isinstance(head, nn.Module) for p in head.parameters()]


def _set_trainable(model: nn.Module, methods: Mapping[str, Any]) -> None:
    model.requires_grad_(False)
    chosen = [p for m in elastic_modules(model) for p in m.own_parameters()]
    for name in methods:
        if REGISTRY[name].trainable is not None:
            chosen += REGISTRY[name].trainable(model)
    for param in chosen + _head_parameters(model):
        param.requires_grad_(True)


def count_trainable(model: nn.Module) -> int:
    """Trainable parameters at the active sizes, classifier head excluded."""
    modules = elastic_modules(model)
    skip = {id(p) for m in modules for p in m.own_parameters()} | {id(p) for p in _head_parameters(model)}
    rest = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in skip)
    return rest + sum(m.count() for m in modules)


def _elastic(model: nn.Module, method: str, caller: str) -> list[Elastic]:
    """The modules of elastic ``method``; none when it is applied at size 0 everywhere."""
    modules = elastic_modules(model, _spec(method).name)
    if not REGISTRY[method].size_option:
        sized = ", ".join(name for name, spec in REGISTRY.items() if spec.size_option)
        raise ConfigError(f"{caller}: method '{method}' has no size; allowed: {sized}")
    if not modules and method not in getattr(model, "autopeft_methods", {}):
        raise ConfigError(f"{caller}: the model has no '{method}' modules; apply it first")
    return modules


def get_sizes(model: nn.Module, method: str) -> list[int]:
    """Active size per block of an elastic method (0 where the block has none)."""
    sizes = [0] * inject.block_count(model)
    for module in _elastic(model, method, "get_sizes"):
        for block, size in module.block_sizes().items():
            sizes[block] = max(sizes[block], size)
    return sizes


def set_sizes(model: nn.Module, method: str, sizes: int | list[int]) -> None:
    """Set the active size per block (each <= the allocated maximum; 0 = off)."""
    modules = _elastic(model, method, "set_sizes")
    expanded = per_block(sizes, inject.block_count(model), f"{method} sizes")
    if not modules:  # applied at size 0 in every block: nothing was allocated
        for block, size in enumerate(expanded):
            check_size(method, size, 0, block)
    for module in modules:
        module.set_block_sizes(expanded)


def merge(model: nn.Module) -> nn.Module:
    """Fold LoRA and SSF into the weights they modify, in place; other methods keep running."""
    inject.replace_modules(model, lambda m: m.merged_module() if hasattr(m, "merged_module") else None)
    methods = getattr(model, "autopeft_methods", {})
    merged = [name for name in methods if REGISTRY[name].mergeable]
    model.autopeft_methods = {n: o for n, o in methods.items() if n not in merged}
    model.autopeft_merged = sorted(set(getattr(model, "autopeft_merged", [])) | set(merged))
    return model


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write ``adapter.safetensors`` (trainable tensors, head included) and ``adapter_config.json`` (with
    the segment masks of pruned prompts: their pruned segments are in no tensor)."""
    if getattr(model, "autopeft_merged", None):
        raise ConfigError(
            f"save_adapter: {model.autopeft_merged} are merged into the backbone weights; save the "
            f"unmerged model, or the merged model's full state_dict"
        )
    methods = getattr(model, "autopeft_methods", {})
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    config = {
        "format": "autopeft-adapter",
        "version": 1,
        "backbone": backbone_name(model),
        "num_classes": getattr(model, "num_classes", None),
        "methods": methods,
        "sizes": {m: get_sizes(model, m) for m in methods if REGISTRY[m].size_option},
    }
    masks = segment_masks(model)
    if masks:
        config["segment_masks"] = [asdict(mask) for mask in masks]
    write_atomic(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    write_json(directory / CONFIG_FILE, config)
    return directory


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a saved adapter into ``model``: applies its methods to a plain backbone first.

    All or nothing: when any check fails (config, methods, sizes, a tensor's name or shape) the
    error leaves ``model`` exactly as it was: same modules, tensors, trainability and sizes."""
    directory = Path(path)
    config = _read_config(directory / CONFIG_FILE)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ConfigError(f"{weights}: no such file")
    try:
        tensors = load_file(str(weights))
    except Exception as err:  # safetensors' own error types
        raise ConfigError(f"{weights}: not a readable safetensors file ({err})") from err
    methods = getattr(model, "autopeft_methods", None)
    if methods and methods != config["methods"]:
        name = min(n for n in {*methods, *config["methods"]} if methods.get(n) != config["methods"].get(n))
        raise ConfigError(
            f"{directory / CONFIG_FILE}: methods {sorted(config['methods'])} differ from the model's "
            f"{sorted(methods)}: {name} is {config['methods'].get(name)} in the file, {methods.get(name)} in the model"
        )
    undo = _undo_point(model)
    try:
        if not methods:
            apply(model, config["methods"])
        for method, sizes in config.get("sizes", {}).items():
            set_sizes(model, method, sizes)
        set_segment_masks(model, _segment_masks(config, directory / CONFIG_FILE), str(directory / CONFIG_FILE))
        _check_tensors(model, tensors, weights, config.get("backbone"))
    except (ConfigError, BackboneError) as err:
        undo()
        saved, current = config.get("backbone"), backbone_name(model)
        if saved in (None, current) or "saved for backbone" in str(err):
            raise
        raise type(err)(f"{directory}: {err} (saved for backbone '{saved}', model is '{current}')") from err
    except BaseException:
        undo()
        raise
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return model


def _undo_point(model: nn.Module) -> Callable[[], None]:
    """A function that puts back what ``apply``, ``set_sizes`` and segment masks change: every module's
    children (wrappers replace them) and parameters (a masked prompt's), ``requires_grad`` flags, active
    sizes and ``model.autopeft_methods``. Tensor values are not recorded: ``load_adapter`` copies them only
    after every check passed."""
    children = [(module, dict(module._modules), dict(module._parameters)) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    sizes = [(m, m.size if isinstance(m, ElasticWrapper) else m.block_sizes()) for m in elastic_modules(model)]
    methods = model.__dict__.get("autopeft_methods", None)
    depth = inject.block_count(model)

    def undo() -> None:
        for module, modules, params in children:
            module._modules.clear()
            module._modules.update(modules)
            module._parameters.clear()
            module._parameters.update(params)
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, size in sizes:
            if isinstance(module, ElasticWrapper):
                module.size = size
            else:
                module.set_block_sizes([size.get(block, 0) for block in range(depth)])
        model.__dict__.pop("autopeft_methods", None)
        if methods is not None:
            model.autopeft_methods = methods

    return undo


def _read_config(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise ConfigError(f"{file}: no such file; save_adapter writes {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or not isinstance(config.get("methods"), dict):
        raise ConfigError(f"{file}: missing key 'methods' (a mapping of method -> options)")
    return config


def _segment_masks(config: dict[str, Any], file: Path) -> list[SegmentMask]:
    masks = config.get("segment_masks", [])
    if not isinstance(masks, list):
        raise ConfigError(f"{file}: 'segment_masks' is not a list of masks (method, block, tensor, keep)")
    keys = list(SegmentMask.__dataclass_fields__)
    for i, mask in enumerate(masks):
        if not isinstance(mask, dict) or not set(keys) <= set(mask):
            raise ConfigError(f"{file}: segment_masks[{i}]: expected a mapping with keys {', '.join(keys)}")
    return [parse_options(SegmentMask, mask, f"{file}: segment_masks[{i}]") for i, mask in enumerate(masks)]


def _check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], file: Path, saved_for: str | None) -> None:
    """Every tensor of the file exists in ``model`` with the same shape, and every trainable tensor is in the file."""
    params = dict(model.named_parameters())
    where = f"(saved for backbone '{saved_for}', model is '{backbone_name(model)}')"
    for name, tensor in tensors.items():
        if name not in params:
            raise ConfigError(f"{file}: tensor '{name}' does not exist in the model {where}")
        if params[name].shape != tensor.shape:
            raise ConfigError(
                f"{file}: tensor '{name}' is {tuple(tensor.shape)} in the file but "
                f"{tuple(params[name].shape)} in the model {where}"
            )
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
    if missing:
        raise ConfigError(f"{file}: trainable tensor '{missing[0]}' is missing from the file {where}")
