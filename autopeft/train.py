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
from torch.nn.modules.batchnorm import _BatchNorm

from autopeft.config import option
from autopeft.data import Split
from autopeft.data.transforms import augment, normalize
from autopeft.errors import ConfigError
from autopeft.optim import MaskedAdamW, Masks
from autopeft.records import Epoch


@dataclass
class TrainConfig:
    """Training hyperparameters (the ``train`` section of a run config)."""

    epochs: int = option(
        30, help="Passes over the training split, at least 1; the learning-rate schedule spans them all."
    )
    batch_size: int = option(
        64, help="Training images per optimizer step, at least 1; an epoch's last, smaller batch is kept."
    )
    optimizer: Literal["adamw", "sgd"] = option(
        "adamw", help="adamw (AdamW) or sgd (SGD with train.momentum); a supernet's masked steps need adamw."
    )
    lr: float = option(
        1e-3,
        help="Peak learning rate (> 0), reached after the linear warm-up, then decayed to zero by a cosine, stepped "
        "per batch.",
    )
    weight_decay: float = option(
        1e-4,
        help="Weight decay (>= 0) of the trainable parameters of 2 or more dimensions; 1-D ones (biases, norms, "
        "scales) get none.",
    )
    momentum: float = option(0.9, help="SGD's momentum, 0 <= momentum < 1; unused with adamw.")
    warmup_epochs: int = option(
        3,
        help="Epochs of linear learning-rate warm-up before the cosine decay, 0..epochs; when not written, 3 clipped "
        "to epochs - 1.",
    )
    label_smoothing: float = option(
        0.0, help="Label smoothing of the cross-entropy loss, 0 <= label_smoothing < 1; 0 turns it off."
    )
    grad_clip: float | None = option(
        None,
        help="Clip the norm of all trainable gradients together to this value (> 0) before each step; null: no "
        "clipping.",
    )
    flip: bool = option(False, help="Augment training images with random horizontal flips (each with probability 0.5).")
    shift: int = option(
        0,
        help="Augment training images with a random shift of up to this many pixels each way (zero padded, one "
        "offset per batch); 0 turns it off.",
    )
    eval_batch_size: int = option(256, help="Images per batch when scoring the val and test splits, at least 1.")
    compile: bool = option(False, help="Train and score val through torch.compile(model) instead of the eager model.")
    amp: Literal["auto", "bf16", "fp16", "off"] = option(
        "auto",
        help="Mixed precision: auto is bf16 autocast on CUDA and fp32 elsewhere; bf16 autocasts on any device; fp16 "
        "(CUDA only) autocasts and scales the loss; off is fp32.",
    )
    device: str = option(
        "auto",
        help="Where to train: auto (cuda when available, else cpu), cpu, cuda, cuda:N (GPU N, counted from 0) or "
        "mps; it is left out of the run's cache key.",
    )
    bn: Literal["auto", "frozen", "update"] = option(
        "auto",
        help="BatchNorm running statistics while training: frozen (layers in eval mode) or update; auto updates them "
        "only in full fine-tuning (method full) and keeps them frozen otherwise.",
    )

    @staticmethod
    def unwritten_defaults(written: dict[str, Any]) -> dict[str, Any]:
        """An unwritten ``warmup_epochs`` is clipped to ``epochs - 1``, so a short schedule needs no warm-up key.
        Keys stay: configs of 4 or more epochs keep the default 3; below 3 epochs the default failed before; only
        ``epochs: 3`` without the key (all of it warm-up before, none such in the ledger) now warms up for 2."""
        epochs = written.get("epochs")
        if "warmup_epochs" in written or not isinstance(epochs, int):
            return {}
        return {"warmup_epochs": min(TrainConfig.warmup_epochs, max(0, epochs - 1))}

    def __post_init__(self) -> None:
        """Range checks (types are checked by ``parse_options``); each error names its ``train.`` key."""
        at_least_one = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}
        for key, value in at_least_one.items():
            if value < 1:
                raise ConfigError(f"train.{key}: got {value!r}; allowed: an integer >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr: got {self.lr!r}; allowed: a finite number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"train.weight_decay: got {self.weight_decay!r}; allowed: a finite number >= 0")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(
                f"train.warmup_epochs: got {self.warmup_epochs!r}; allowed: 0..{self.epochs} "
                f"(at most train.epochs = {self.epochs})"
            )
        for key, value in (("momentum", self.momentum), ("label_smoothing", self.label_smoothing)):
            if not 0 <= value < 1:
                raise ConfigError(f"train.{key}: got {value!r}; allowed: 0 <= {key} < 1")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"train.grad_clip: got {self.grad_clip!r}; allowed: a number > 0, or null for none")
        if self.shift < 0:
            raise ConfigError(f"train.shift: got {self.shift!r}; allowed: an integer >= 0")
        index = self.device.removeprefix("cuda:") if self.device.startswith("cuda:") else None
        if self.device not in ("auto", "cpu", "cuda", "mps") and not (index and index.isascii() and index.isdigit()):
            raise ConfigError(f"train.device: got {self.device!r}; allowed: auto, cpu, cuda, cuda:N, mps")


def resolve_device(name: str) -> torch.device:
    """The torch device of ``train.device``; a device this machine lacks is one ConfigError line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = ["auto", "cpu"]
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda:
        here += ["cuda", *(f"cuda:{i}" for i in range(cuda))]
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if has_mps:
        here.append("mps")
    allowed = f"allowed here: {', '.join(here)}"
    if name.startswith("cuda") and not cuda:
        raise ConfigError(f"train.device: got {name!r} but torch sees no CUDA device on this machine; {allowed}")
    if name.startswith("cuda:") and name not in here:
        raise ConfigError(f"train.device: got {name!r} but torch sees {cuda} CUDA device(s) on this machine; {allowed}")
    if name == "mps" and not has_mps:
        raise ConfigError(f"train.device: got {name!r} but torch sees no MPS device on this machine; {allowed}")
    return torch.device(name)


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; ``history`` holds the epochs completed before."""

    def __init__(self, message: str, history: list[Epoch] | None = None) -> None:
        super().__init__(message)
        self.history = history or []


def train_mode(model: nn.Module, bn: str) -> None:
    """``model.train()``, every BatchNorm kept in eval mode (normalising with, and not updating, its running
    statistics) unless ``bn`` is ``update``, or ``auto`` and the model is fully fine-tuned (method ``full``)."""
    model.train()
    if bn == "update" or (bn == "auto" and "full" in getattr(model, "autopeft_methods", {})):
        return
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.eval()


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class Precision:
    """Mixed precision of a run (``train.amp`` on ``device``): the autocast dtype, and loss scaling for fp16.

    ``auto`` is bf16 autocast on CUDA and fp32 elsewhere; ``bf16`` autocasts on any device; ``fp16``
    needs CUDA and scales the loss (``torch.amp.GradScaler``) so small gradients do not underflow.
    """

    device: torch.device
    amp: str = "auto"

    def __post_init__(self) -> None:
        if self.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError(
                f"train.amp: got 'fp16' on {self.device}; allowed there: auto, bf16, off (fp16 needs CUDA)"
            )
        cuda = self.device.type == "cuda"
        self.dtype = {"auto": torch.bfloat16 if cuda else None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.amp
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None

    @property
    def label(self) -> str:
        names = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast, loss scaling"}
        return names.get(self.dtype, "fp32")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, clip: float | None, params: list[nn.Parameter]) -> None:
        """Clip (after unscaling) and step; with fp16 a step whose gradients overflowed is skipped."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if clip:
            nn.utils.clip_grad_norm_(params, clip)
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


def make_optimizer(
    model: nn.Module, config: TrainConfig, active: Callable[[], Masks] | None = None
) -> torch.optim.Optimizer:
    """Weight decay on trainable matrices only (not on biases, norms, scales, prompts' 1-D tensors).
    ``active`` (AdamW only): the masks of the elements each step may move, for a supernet
    (``MaskedAdamW``); without it, torch's own optimizers."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        if active is not None:
            raise ConfigError("supernet: masked steps need optimizer adamw; with sgd set supernet.masked: false")
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if active is not None:
        return MaskedAdamW(groups, active, lr=config.lr)
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


StepLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, Precision], tuple[torch.Tensor, int]]
"""``(model, inputs, labels, step, precision) -> (loss, passes)``: forward and backward of one batch
(gradients accumulate in ``.grad``; ``precision`` autocasts and scales), the loss to log and how many
forward+backward passes of the batch it ran."""


def cross_entropy_step(label_smoothing: float = 0.0) -> StepLoss:
    """The plain step: one forward, cross-entropy, one backward."""

    def step(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, index: int, precision: Precision):
        with precision.autocast():
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        check_finite(loss, index)
        precision.backward(loss)
        return loss.detach(), 1

    return step


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss became {loss.item()} at step {step}")


def train_epoch(
    model: nn.Module,
    split: Split,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: TrainConfig,
    norm: Normalization,
    generator: torch.Generator,
    on_step: Callable[[int, float], None] | None = None,
    step_loss: StepLoss | None = None,
    precision: Precision | None = None,
) -> dict[str, float]:
    """One pass over ``split``; returns mean loss, images per second and training images processed
    (forward+backward passes x images). Raises NonFiniteLoss.

    ``step_loss`` runs each batch's forward and backward (default: ``cross_entropy_step``; a
    supernet activates its sampled subnets there), given the global step count.
    """
    train_mode(model, config.bn)
    device = device_of(model)
    precision = precision or Precision(device, config.amp)
    step_loss = step_loss or cross_entropy_step(config.label_smoothing)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total_loss, seen, passes, start = 0.0, 0, 0, time.perf_counter()
    for positions in batches(len(split), config.batch_size, generator):
        images, labels = split.batch(positions)
        images = augment(images, generator, config.flip, config.shift)
        inputs = normalize(images.to(device, non_blocking=True), norm.mean, norm.std)
        optimizer.zero_grad(set_to_none=True)
        loss, runs = step_loss(model, inputs, labels.to(device), scheduler.last_epoch, precision)
        precision.step(optimizer, config.grad_clip, trainable)
        scheduler.step()
        total_loss += loss.item() * len(labels)
        seen += len(labels)
        passes += runs * len(labels)
        if on_step is not None:
            on_step(len(labels), loss.item())
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / seen, "images_per_s": seen / elapsed, "train_images": passes}


@torch.no_grad()
def logits(
    model: nn.Module, split: Split, norm: Normalization, batch_size: int = 256, amp: str = "auto"
) -> torch.Tensor:
    """Float logits for every image of ``split``, in order (on the CPU)."""
    model.eval()
    device = device_of(model)
    precision = Precision(device, amp)
    outputs = []
    for positions in batches(len(split), batch_size, None):
        images, _ = split.batch(positions)
        with precision.autocast():
            outputs.append(model(normalize(images.to(device), norm.mean, norm.std)).float().cpu())
    return torch.cat(outputs)


def evaluate(model: nn.Module, split: Split, norm: Normalization, batch_size: int = 256, amp: str = "auto") -> float:
    """Top-1 accuracy on ``split`` in percent."""
    return evaluate_with_loss(model, split, norm, batch_size, amp)[0]


def evaluate_with_loss(
    model: nn.Module, split: Split, norm: Normalization, batch_size: int = 256, amp: str = "auto"
) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy on ``split``; the loss separates models that tie
    on accuracy (a 200-image val split moves in 0.5-point steps)."""
    scored = score(model, split, norm, batch_size, amp)
    return scored.accuracy, scored.loss


@dataclass(frozen=True)
class Scored:
    """One evaluation of ``split``: accuracy (%), mean cross-entropy, and both per example, in split order."""

    accuracy: float
    loss: float
    correct: torch.Tensor
    example_loss: torch.Tensor


def score(model: nn.Module, split: Split, norm: Normalization, batch_size: int = 256, amp: str = "auto") -> Scored:
    """Evaluate ``split`` keeping its per-example outcomes (what paired comparisons of candidates need)."""
    out = logits(model, split, norm, batch_size, amp)
    correct = out.argmax(-1) == split.labels
    accuracy = 100.0 * correct.float().mean().item()
    return Scored(
        accuracy,
        F.cross_entropy(out, split.labels).item(),
        correct,
        F.cross_entropy(out, split.labels, reduction="none"),
    )
