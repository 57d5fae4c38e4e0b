"""Train a supernet (one sampled subnet per step) and score subnets with inherited weights."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from autopeft.data import TaskData
from autopeft.runconfig import RunConfig
from autopeft.runs import fit
from autopeft.supernet import SubnetConfig, Supernet
from autopeft.train import Normalization, evaluate_with_loss

Sampling = Literal["uniform", "sandwich"]


def step_sampler(supernet: Supernet, rule: Sampling, seed: int) -> Callable[[int], None]:
    """A ``before_step`` hook activating one subnet per training step.

    ``uniform``: every gene drawn uniformly; ``sandwich``: the largest, the smallest and a
    uniform subnet in turn. Step ``i`` draws from ``Random(f"{seed}:{i}")``, so a resumed run
    samples exactly what an uninterrupted one would, with no sampler state to checkpoint.
    """
    extremes = (supernet.largest(), supernet.smallest())

    def activate(step: int) -> None:
        if rule == "sandwich" and step % 3 < 2:
            supernet.set_subnet(extremes[step % 3])
        else:
            supernet.set_subnet(supernet.sample(random.Random(f"{seed}:{step}")))

    return activate


def train_supernet(
    supernet: Supernet,
    task: TaskData,
    norm: Normalization,
    config: RunConfig,
    out: Path,
    rule: Sampling = "uniform",
    resume: bool = False,
    progress: Any = None,
) -> tuple[list[dict[str, Any]], float]:
    """Train every method's shared weights on the train split; val accuracy per epoch is the
    largest subnet's. Checkpoints (trainable weights only) go to ``out`` after every epoch.
    Returns the per-epoch history and the training time in seconds (across resumes)."""
    history, start = fit(
        supernet.model,
        task,
        norm,
        config,
        out,
        resume,
        progress,
        before_step=step_sampler(supernet, rule, config.seed),
        before_eval=lambda: supernet.set_subnet(supernet.largest()),
    )
    return history, time.perf_counter() - start


def inherited_score(supernet: Supernet, task: TaskData, norm: Normalization, batch_size: int = 256):
    """``score(subnet)``: val accuracy (%) and loss of ``subnet`` with the supernet's trained weights."""
    val = task.split("val")

    def score(subnet: SubnetConfig) -> tuple[float, float]:
        supernet.set_subnet(subnet)
        return evaluate_with_loss(supernet.model, val, norm, batch_size)

    return score
