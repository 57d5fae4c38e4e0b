"""Step timing shared by the benchmark scripts (``bench_methods.py``, ``e2vpt.py``): the train step, the frozen
floor and the forward pass under test, and the interleaved rounds that time them.

Every configuration is built first; then each is warmed up and timed in rounds, each round running a few steps of
every configuration in a shuffled order, so slow drifts of a noisy machine hit every configuration alike.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

LEARNING_RATE = 1e-3  # AdamW's in every timed train step

Step = Callable[[], None]


@dataclass
class Timed:
    """One configuration under test: a step to run (over ``images`` images) and its timings in ms per step."""

    name: str
    step: Step
    images: int = 1
    ms_per_step: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.ms_per_step)

    @property
    def ms_per_img(self) -> float:
        return self.median / self.images

    @property
    def min_ms_per_img(self) -> float:
        return min(self.ms_per_step) / self.images


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Step:
    """Forward, cross-entropy, backward, AdamW step and zero_grad over the trainable parameters."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)

    def step() -> None:
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def floor_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Step:
    """Forward and backward to an input that requires grad; the frozen weights get no gradients."""
    leaf = images.detach().clone().requires_grad_(True)

    def step() -> None:
        F.cross_entropy(model(leaf), labels).backward()
        leaf.grad = None

    return step


def forward_step(model: nn.Module, images: torch.Tensor) -> Step:
    @torch.no_grad()
    def step() -> None:
        model(images)

    return step


def run_interleaved(timed: list[Timed], warmup: int, steps: int, per_round: int, seed: int) -> None:
    """Warm every configuration up, then time ``steps`` steps of each in shuffled rounds."""
    for item in timed:
        for _ in range(warmup):
            item.step()
    order = list(timed)
    rng = random.Random(seed)
    done = 0
    while done < steps:
        count = min(per_round, steps - done)
        rng.shuffle(order)
        for item in order:
            for _ in range(count):
                start = time.perf_counter()
                item.step()
                item.ms_per_step.append((time.perf_counter() - start) * 1000.0)
        done += count
