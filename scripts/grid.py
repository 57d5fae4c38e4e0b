"""Run a list of ``autopeft train`` configs into one folder, skipping runs already completed.

Shared by the report scripts (``eval_demo_backbone.py``, ``baselines.py``): each run lands in
``<root>/<run name>/`` with the standard run-directory files, so an interrupted report picks
up where it stopped and every figure in it can be traced to its run directory.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from autopeft.backbones import DEMO_BACKBONES
from autopeft.runconfig import parse_run_config
from autopeft.runs import RESULT, train_run


def runs_folder(report: str, backbone: str = "vit_demo_fmnist") -> Path:
    """``runs/<report>/<first 12 hex digits of the shipped weights' sha256>``: new weights, new runs."""
    return Path("runs") / report / str(DEMO_BACKBONES[backbone]["sha256"])[:12]


def run_all(runs: Iterable[tuple[str, dict[str, Any]]], root: Path) -> dict[str, dict[str, Any]]:
    """Train each ``(name, config mapping)`` into ``root/name``; return result.json by name."""
    results = {}
    for name, data in runs:
        out = root / name
        finished = out / RESULT
        if finished.is_file() and json.loads(finished.read_text()).get("status") == "completed":
            results[name] = json.loads(finished.read_text())
            continue
        shutil.rmtree(out, ignore_errors=True)  # an unfinished run from an earlier interruption
        start = time.perf_counter()
        results[name] = train_run(parse_run_config(data, name), out)
        print(f"{name}: val {results[name]['val_acc']:.1f}  {time.perf_counter() - start:.0f} s", flush=True)
    return results


def select_on_val(results: dict[str, dict[str, Any]], names: list[str]) -> tuple[str, dict[str, Any]]:
    """The run with the best val accuracy among ``names`` (ties: the first listed)."""
    best = max(names, key=lambda name: (results[name]["val_acc"], -names.index(name)))
    return best, results[best]
