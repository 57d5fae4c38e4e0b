"""Train a supernet and score subnets with its inherited weights.

Sampling rules (which subnets a training step runs):

- ``uniform``: one subnet per step, every gene drawn uniformly (the whole space, budget ignored).
- ``budget``: one subnet per step, drawn uniformly among those inside the parameter budget.
- ``sandwich``: in one optimizer step, the largest in-budget subnet, the smallest non-empty one and
  ``random_subnets`` in-budget random ones, their gradients accumulated; with ``distill`` every
  subnet after the first learns the largest's predictions (in-place distillation) instead of the labels.

With ``masked`` the optimizer is ``MaskedAdamW``: slices of shared tensors that no subnet of the
step used do not move. Step ``i`` draws from ``Random(f"{seed}:{i}")``, so a resumed run samples
exactly what an uninterrupted one would, with no sampler state to checkpoint.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from autopeft.data import TaskData
from autopeft.data.transforms import normalize
from autopeft.fit import FitHooks, fit
from autopeft.optim import Masks
from autopeft.progress import RunProgress
from autopeft.records import Epoch
from autopeft.runconfig import RunConfig
from autopeft.supernet import SubnetConfig, Supernet
from autopeft.train import Normalization, Precision, check_finite, evaluate_with_loss

Sampling = Literal["uniform", "budget", "sandwich"]


@dataclass
class SupernetSteps:
    """What each supernet training step runs (see the module docstring)."""

    supernet: Supernet
    rule: Sampling
    budget: int | None
    seed: int
    random_subnets: int = 2
    distill: bool = True

    def __post_init__(self) -> None:
        net, budget = self.supernet, self.budget
        self.top = net.largest() if budget is None else net.largest_within(budget)
        self.bottom = net.smallest_nonempty()
        self.masks: Masks = {}

    def subnets(self, step: int) -> list[SubnetConfig]:
        rng = random.Random(f"{self.seed}:{step}")
        if self.rule == "uniform":
            return [self.supernet.sample(rng)]
        if self.rule == "budget":
            return [self.supernet.sample_within(rng, self.budget)]
        draws = [self.supernet.sample_within(rng, self.budget) for _ in range(self.random_subnets)]
        return [self.top, self.bottom, *draws]

    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, step: int, precision: Precision):
        """The step loss (``autopeft.train.StepLoss``): each subnet's forward and backward, gradients
        summed; the mean loss and the number of passes."""
        self.masks = {}
        teacher, total = None, torch.zeros(())
        subnets = self.subnets(step)
        for subnet in subnets:
            self.supernet.set_subnet(subnet)
            for param, mask in self.supernet.active_masks().items():
                self.masks[param] = self.masks[param] | mask if param in self.masks else mask
            with precision.autocast():
                logits = model(inputs).float()
            loss = subnet_loss(logits, labels, teacher if self.distill else None)
            check_finite(loss, step)
            precision.backward(loss)
            teacher = logits.detach() if teacher is None else teacher
            total += loss.detach()
        return total / len(subnets), len(subnets)


def subnet_loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy with the labels, or with ``teacher`` logits the KL divergence from the teacher's
    predictions (in-place distillation)."""
    if teacher is None:
        return F.cross_entropy(logits, labels)
    return F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher, -1), reduction="batchmean", log_target=True)


def train_supernet(
    steps: SupernetSteps,
    task: TaskData,
    norm: Normalization,
    config: RunConfig,
    out: Path,
    masked: bool = True,
    resume: bool = False,
    progress: RunProgress | None = None,
    after_epoch: Callable[[Epoch], None] | None = None,
) -> tuple[list[Epoch], float]:
    """Train every method's shared weights on the train split; val accuracy per epoch is the
    largest (in-budget) subnet's. Checkpoints (trainable weights only) go to ``out`` after every
    epoch. Returns the per-epoch history and the training time in seconds (across resumes)."""
    supernet = steps.supernet
    hooks = FitHooks(
        resume,
        progress,
        step_loss=steps,
        active=(lambda: steps.masks) if masked else None,
        before_eval=lambda: supernet.set_subnet(steps.top),
        after_epoch=after_epoch,
    )
    history, start = fit(supernet.model, task, norm, config, out, hooks)
    return history, time.perf_counter() - start


def inherited_score(supernet: Supernet, task: TaskData, norm: Normalization, batch_size: int = 256):
    """``score(subnet)``: val accuracy (%) and loss of ``subnet`` with the supernet's trained weights."""
    val = task.split("val")

    def score(subnet: SubnetConfig) -> tuple[float, float]:
        supernet.set_subnet(subnet)
        return evaluate_with_loss(supernet.model, val, norm, batch_size)

    return score


@torch.no_grad()
def features(model: nn.Module, split, norm: Normalization, batch_size: int = 256) -> torch.Tensor:
    """The head's input (pre-logits features) for every image of ``split``, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(split), batch_size):
        images, _ = split.batch(torch.arange(start, min(start + batch_size, len(split))))
        inputs = normalize(images.to(device), norm.mean, norm.std)
        out.append(model.forward_head(model.forward_features(inputs), pre_logits=True).float().cpu())
    return torch.cat(out)


def fit_head(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-3, steps: int = 100) -> nn.Linear:
    """A linear head fitted to features ``x`` and labels ``y``: multinomial logistic regression with an L2
    penalty, solved with L-BFGS (deterministic: it starts from zero)."""
    head = nn.Linear(x.shape[1], classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def refit_score(supernet: Supernet, task: TaskData, norm: Normalization, batch_size: int = 256):
    """``score(subnet)``: val accuracy (%) and loss of ``subnet`` with the supernet's trained weights and a
    linear head fitted afresh to the subnet's own train features (the shared head is trained for every
    subnet at once, so it fits none of them exactly)."""
    train, val = task.split("train"), task.split("val")

    def score(subnet: SubnetConfig) -> tuple[float, float]:
        supernet.set_subnet(subnet)
        x_train, x_val = (
            features(supernet.model, train, norm, batch_size),
            features(supernet.model, val, norm, batch_size),
        )
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        head = fit_head((x_train - mean) / std, train.labels, task.num_classes)
        with torch.no_grad():
            logits = head((x_val - mean) / std)
        accuracy = 100.0 * (logits.argmax(-1) == val.labels).float().mean().item()
        return accuracy, F.cross_entropy(logits, val.labels).item()

    return score
