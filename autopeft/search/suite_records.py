"""What a suite's selection writes per dataset (``<dataset>/selection.json``): each strategy's val outcome,
the finalists' final runs and the strategy chosen."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autopeft.config import parse_options
from autopeft.data import DataConfig
from autopeft.errors import ConfigError
from autopeft.records import Compute, FinalRow, SelectionSummary


@dataclass
class StrategyOutcome:
    """One strategy on one dataset: trained on train, scored on val (skipped or failed: why)."""

    name: str
    status: Literal["completed", "failed", "skipped"]
    reason: str | None = None
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    trainable_params: int | None = None
    val_acc: float | None = None
    val_loss: float | None = None
    train: dict[str, float] = field(default_factory=dict)  # lr and weight decay it was selected with
    scored_by: str | None = None
    run_dir: str | None = None
    wall_time_s: float = 0.0
    compute: Compute = field(default_factory=Compute)


@dataclass
class Finalist:
    """A finalist strategy: its val outcome and its final runs on train+val per seed."""

    row: FinalRow
    train: dict[str, float]
    seeds: list[int]
    run_dirs: list[str]


@dataclass
class DatasetSelection:
    """``<dataset>/selection.json``: every strategy's val outcome, the finalists' final runs and the
    strategy chosen on val; written last, so a finished dataset is never redone."""

    dataset: str
    data: DataConfig
    ranking: list[str]
    strategies: list[StrategyOutcome]
    finalists: list[Finalist]
    chosen: str
    selected_on: str = "val"
    selection_wall_time_s: float | None = None
    selection: SelectionSummary | None = None  # the choice among the strategies, with its tied set

    @property
    def choice(self) -> Finalist:
        return next(f for f in self.finalists if f.row.name == self.chosen)

    def compute(self) -> dict[str, Compute]:
        """What each strategy's selection processed, the pruning of the chosen one, and every final run together."""
        pruning = self.choice.row.pruning
        return {
            **{o.name: o.compute for o in self.strategies},
            **({} if pruning is None else {"prune": pruning.compute}),
            "final": Compute.total(f.row.compute for f in self.finalists),
        }


def read_selection(path: Path) -> DatasetSelection:
    try:
        return parse_options(DatasetSelection, json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); delete it to select this dataset again") from err
