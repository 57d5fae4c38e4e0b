"""Building a run's model from its config, checked on the architecture first, and the provenance of its numbers."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import timm
import torch

import autopeft
from autopeft.api import apply, count_trainable, load_adapter
from autopeft.backbones import DEMO_BACKBONES, create_backbone
from autopeft.data import TaskData, load_task, split_sizes
from autopeft.data.transforms import input_config
from autopeft.errors import AutopeftError
from autopeft.inject import block_count
from autopeft.methods import REGISTRY
from autopeft.records import (
    Provenance,
)
from autopeft.runconfig import BackboneConfig, RunConfig
from autopeft.train import (
    Normalization,
    Precision,
    TrainConfig,
    resolve_device,
)


def build_model(config: RunConfig, with_methods: bool = True) -> tuple[torch.nn.Module, TaskData, Normalization]:
    """Backbone with a head for the task (methods applied, then ``config.init``'s adapter loaded when
    set); the task; the backbone's normalisation.

    Seeded first, so a randomly initialised backbone (``pretrained: false``) is rebuilt identically
    by ``export`` and by a resumed run.
    """
    torch.manual_seed(config.seed)
    model = build_backbone(config.backbone)
    size, mean, std = input_config(model)
    task = load_task(config.data, size)
    model.reset_classifier(task.num_classes)
    if with_methods:
        apply(model, config.methods)
        if config.init is not None:
            load_adapter(model, config.init)
    return model, task, Normalization(mean, std)


def build_backbone(backbone: BackboneConfig) -> torch.nn.Module:
    kwargs = {"drop_path_rate": backbone.drop_path, **backbone.options}
    weights = backbone.pretrained and backbone.checkpoint is None  # a built-in's shipped ones, else the Hub's
    return create_backbone(backbone.name, 1, backbone.checkpoint, pretrained=weights, **kwargs)


def methods_count(backbone: BackboneConfig, methods: dict[str, Any]) -> int:
    """Trainable parameters (head excluded) of ``methods`` on the backbone, counted on the meta device
    (the architecture alone: no weights are loaded or allocated)."""
    with torch.device("meta"):
        model = build_backbone(replace(backbone, pretrained=False, checkpoint=None))
        return count_trainable(apply(model, methods))


def check_buildable(config: RunConfig, where: str) -> None:
    """What parsing cannot see, checked on the architecture alone before a run directory is touched: the
    backbone exists, the method options fit it, the data is there. One error line starting with ``where``
    (the config file) and naming the full key."""
    try:
        with torch.device("meta"):
            model = build_backbone(replace(config.backbone, pretrained=False, checkpoint=None))
    except AutopeftError as err:
        raise type(err)(f"{where}: backbone.name: {err}") from err
    try:
        with torch.device("meta"):
            apply(model, config.methods)
    except AutopeftError as err:
        key = "methods." if str(err).split(".", 1)[0] in REGISTRY else "methods: "
        raise type(err)(f"{where}: {key}{err}") from err
    try:
        split_sizes(config.data)
    except AutopeftError as err:
        key = "data.name" if config.data.name is not None else "data.root"
        raise type(err)(f"{where}: {key}: {err}") from err


def backbone_depth(backbone: BackboneConfig) -> int:
    """The backbone's block count, from its architecture alone."""
    with torch.device("meta"):
        return block_count(build_backbone(replace(backbone, pretrained=False, checkpoint=None)))


def machine_provenance(test_read: bool | None, train: TrainConfig) -> Provenance:
    """Versions, git sha and the machine ``train`` runs on: the provenance of a result that spans several runs."""
    device = resolve_device(train.device)
    return Provenance(
        autopeft=autopeft.__version__,
        git_sha=git_sha(),
        torch=torch.__version__,
        timm=timm.__version__,
        test_read=test_read,
        device=str(device),
        accelerator=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        dtype=Precision(device, train.amp).label,
        threads=torch.get_num_threads(),
    )


def provenance(config: RunConfig, task: TaskData, norm: Normalization, test_read: bool | None = None) -> Provenance:
    """Everything a training run's numbers depend on besides its config: versions, weights, data, machine."""
    return replace(
        machine_provenance(test_read, config.train),
        checkpoint=_weights(config.backbone),
        normalization=f"mean={list(norm.mean)} std={list(norm.std)}",
        data_format=task.data_format,
        train_split="trainval" if config.final else "train",
    )


def _weights(backbone: BackboneConfig) -> str:
    if not backbone.pretrained:
        return "random init"
    if backbone.checkpoint:
        return backbone.checkpoint
    return "shipped with autopeft" if backbone.name in DEMO_BACKBONES else "timm Hub"


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def timm_metadata(backbone: BackboneConfig, model: torch.nn.Module, norm: Normalization) -> dict[str, Any]:
    """How plain timm rebuilds the model: ``timm.create_model(timm_model, **timm_kwargs)``, then the
    weights; inputs scaled to [0, 1] and normalised with ``mean`` / ``std``."""
    name, kwargs = backbone.name, dict(backbone.options)
    if name in DEMO_BACKBONES:
        name, kwargs = DEMO_BACKBONES[name]["timm_name"], {**DEMO_BACKBONES[name]["timm"], **kwargs}
    kwargs["num_classes"] = model.num_classes
    return {"timm_model": name, "timm_kwargs": kwargs, "mean": list(norm.mean), "std": list(norm.std)}
