"""Plain training and evaluation: AdamW/SGD, cosine schedule with warm-up, seeded and resumable."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from autopeft.data import Split
from autopeft.data.transforms import augment, normalize


@dataclass
class TrainConfig:
    """Training hyperparameters (the ``train`` section of a run config)."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: int = 3
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    flip: bool = False
    shift: int = 0
    eval_batch_size: int = 256
    compile: bool = False
    device: str = "auto"  # "auto" = cuda when available, else cpu; or any torch device string


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; ``history`` holds the epochs completed before."""

    def __init__(self, message: str, history: list[dict] | None = None) -> None:
        super().__init__(message)
        self.history = history or []


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(device: torch.device):
    """bf16 autocast on CUDA, plain fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on trainable matrices only (not on biases, norms, scales, prompts' 1-D tensors)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Linear warm-up for ``warmup_epochs``, then cosine decay to zero, stepped per batch."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(config.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches(length: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Shuffled (with ``generator``) or ordered index batches; the last partial batch is kept."""
    order = torch.randperm(length, generator=generator) if generator is not None else torch.arange(length)
    yield from order.split(batch_size)


def train_epoch(
    model: nn.Module,
    split: Split,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: TrainConfig,
    norm: Normalization,
    generator: torch.Generator,
    on_step: Callable[[int, float], None] | None = None,
    before_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One pass over ``split``; returns mean loss and images per second. Raises NonFiniteLoss.

    ``before_step(step)`` runs before each batch with the global step count (the supernet
    activates a sampled subnet there).
    """
    model.train()
    device = device_of(model)
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    for positions in batches(len(split), config.batch_size, generator):
        images, labels = split.batch(positions)
        images = augment(images, generator, config.flip, config.shift)
        inputs = normalize(images.to(device, non_blocking=True), norm.mean, norm.std)
        if before_step is not None:
            before_step(scheduler.last_epoch)
        with autocast(device):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), labels.to(device), label_smoothing=config.label_smoothing)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss.item()} at step {scheduler.last_epoch}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        seen += len(labels)
        if on_step is not None:
            on_step(len(labels), loss.item())
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / seen, "images_per_s": seen / elapsed}


@torch.no_grad()
def logits(model: nn.Module, split: Split, norm: Normalization, batch_size: int = 256) -> torch.Tensor:
    """Float logits for every image of ``split``, in order (on the CPU)."""
    model.eval()
    device = device_of(model)
    outputs = []
    for positions in batches(len(split), batch_size, None):
        images, _ = split.batch(positions)
        with autocast(device):
            outputs.append(model(normalize(images.to(device), norm.mean, norm.std)).float().cpu())
    return torch.cat(outputs)


def evaluate(model: nn.Module, split: Split, norm: Normalization, batch_size: int = 256) -> float:
    """Top-1 accuracy on ``split`` in percent."""
    return evaluate_with_loss(model, split, norm, batch_size)[0]


def evaluate_with_loss(
    model: nn.Module, split: Split, norm: Normalization, batch_size: int = 256
) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy on ``split``; the loss separates models that tie
    on accuracy (a 200-image val split moves in 0.5-point steps)."""
    out = logits(model, split, norm, batch_size)
    accuracy = 100.0 * (out.argmax(-1) == split.labels).float().mean().item()
    return accuracy, F.cross_entropy(out, split.labels).item()
