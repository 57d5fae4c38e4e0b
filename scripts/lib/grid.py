"""Run a list of ``autopeft train`` configs into one folder, skipping runs already completed.

Used by ``eval_demo_backbone.py``: each run lands in
``<root>/<run name>/`` with the standard run-directory files, so an interrupted report picks
up where it stopped and every figure in it can be traced to its run directory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from autopeft.backbones import DEMO_BACKBONES
from autopeft.jobs.train import train_or_reuse
from autopeft.records import RunRecord
from autopeft.runconfig import parse_run_config


def runs_folder(report: str, backbone: str = "vit_demo_fmnist") -> Path:
    """``runs/<report>/<first 12 hex digits of the shipped weights' sha256>``: new weights, new runs."""
    return Path("runs") / report / str(DEMO_BACKBONES[backbone]["sha256"])[:12]


def run_all(runs: Iterable[tuple[str, dict[str, Any]]], root: Path) -> dict[str, RunRecord]:
    """Train each ``(name, config mapping)`` into ``root/name`` (reusing finished runs); records by name."""
    results = {}
    for name, data in runs:
        start = time.perf_counter()
        results[name] = train_or_reuse(parse_run_config(data, name), root / name)
        print(f"{name}: val {results[name].val_acc:.1f}  {time.perf_counter() - start:.0f} s", flush=True)
    return results


def select_on_val(results: dict[str, RunRecord], names: list[str]) -> tuple[str, RunRecord]:
    """The run with the best val accuracy among ``names`` (ties: the first listed)."""
    best = max(names, key=lambda name: (results[name].val_acc, -names.index(name)))
    return best, results[best]
