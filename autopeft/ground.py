"""The evaluation ground: the demo budget, the learning-rate grid and the final schedule of every
built-in task per backbone, read from ``ground.yaml`` (one file every benchmark and script reads)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autopeft.config import parse_options
from autopeft.errors import ConfigError
from autopeft.runconfig import read_yaml
from autopeft.train import TrainConfig

GROUND_FILE = Path(__file__).with_name("ground.yaml")


@dataclass(frozen=True)
class Schedule:
    """A final schedule: AdamW, batch 64, weight decay 1e-4, linear warm-up then cosine to zero."""

    epochs: int
    lr: float
    warmup_epochs: int

    def train(self, **changes) -> TrainConfig:
        """The schedule as a ``train`` section (``changes`` override fields, e.g. another ``lr``)."""
        base = TrainConfig(epochs=self.epochs, lr=self.lr, warmup_epochs=self.warmup_epochs, batch_size=64)
        return replace(base, weight_decay=1e-4, **changes)


@dataclass(frozen=True)
class Ground:
    budget: int
    lr_grid: tuple[float, ...]
    schedules: dict[str, dict[str, Schedule]] = field(default_factory=dict)
    learnable: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def schedule(self, backbone: str, task: str) -> Schedule:
        """The final schedule of ``task`` on ``backbone``; one line naming what exists otherwise."""
        known = self.schedules.get(backbone, {})
        if task not in known:
            have = ", ".join(f"{b}/{t}" for b, tasks in self.schedules.items() for t in tasks) or "none"
            raise ConfigError(f"ground: no final schedule for task '{task}' on '{backbone}'; have: {have}")
        return known[task]


@dataclass
class _GroundFile:
    budget: int
    lr_grid: list[float]
    schedules: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    learnable: dict[str, list[str]] = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def load_ground(path: Path = GROUND_FILE) -> Ground:
    raw = parse_options(_GroundFile, read_yaml(path), str(path))
    schedules = {
        backbone: {
            task: parse_options(Schedule, spec, f"{path}: schedules.{backbone}.{task}") for task, spec in tasks.items()
        }
        for backbone, tasks in raw.schedules.items()
    }
    learnable = {backbone: tuple(tasks) for backbone, tasks in raw.learnable.items()}
    return Ground(raw.budget, tuple(raw.lr_grid), schedules, learnable)
