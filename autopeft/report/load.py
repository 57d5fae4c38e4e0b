"""Read run directories (``autopeft run``, ``train`` and ``search`` result.json files) into report entries."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopeft.errors import ConfigError
from autopeft.report.vtab import canonical

RESULT = "result.json"
REQUIRED: dict[str, tuple[str, ...]] = {
    "run": ("dataset", "methods", "table", "wall_time_s"),
    "train": ("dataset", "methods", "trainable_params", "test_acc", "wall_time_s"),
    "search": ("dataset", "methods", "trainable_params", "val_acc", "wall_time_s"),
    "retrain": ("dataset", "methods", "trainable_params", "test_acc", "test_acc_std", "seeds_completed", "wall_time_s"),
    "select": ("datasets", "wall_time_s"),
}
SELECTED_REQUIRED = ("dataset", "chosen", "methods", "trainable_params", "test_acc", "test_acc_std", "seeds")
SELECTED = "selected per dataset"
ROW_REQUIRED = ("name", "methods", "params", "test_acc", "test_acc_std", "seeds_completed")


@dataclass(frozen=True)
class Entry:
    """One measured row of one run directory: test accuracy mean and std over ``seeds`` (None = missing)."""

    name: str
    dataset: str
    methods: dict[str, Any]
    params: int | None
    mean: float | None
    std: float | None
    seeds: int
    source: Path
    command: str
    provenance: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


@dataclass(frozen=True)
class Cost:
    """What one run directory cost."""

    dataset: str
    source: Path
    command: str
    status: str
    wall_time_s: float | None
    device: str
    search_cost_ratio: float | None


@dataclass(frozen=True)
class Missing:
    """Something the report could not show, and why."""

    source: Path
    what: str
    reason: str


@dataclass
class Loaded:
    entries: list[Entry] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)


def load_runs(run_dirs: list[Path]) -> Loaded:
    """Read every run directory; raise ConfigError naming the file for a malformed result.json."""
    loaded = Loaded()
    for run_dir in run_dirs:
        path = run_dir / RESULT
        if not path.is_file():
            why = "directory does not exist" if not run_dir.exists() else f"no {RESULT}"
            loaded.missing.append(Missing(run_dir, "whole run", why))
            continue
        result = read_result(path)
        entries = _entries(result, run_dir)
        loaded.entries.extend(entries)
        loaded.costs.append(_cost(result, run_dir))
        loaded.missing.extend(Missing(e.source, f"{e.name} on {e.dataset}", e.reason) for e in entries if e.reason)
    if not loaded.entries:
        raise ConfigError(f"nothing to report: none of {', '.join(map(str, run_dirs))} holds a {RESULT}")
    return loaded


def read_result(path: Path) -> dict[str, Any]:
    """Parse and check one result.json (keys its command needs, numeric accuracies)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(result, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(result).__name__}")
    command = result.get("command")
    if command not in REQUIRED:
        raise ConfigError(f"{path}: 'command' is {command!r}; expected one of {', '.join(REQUIRED)}")
    _require(path, result, REQUIRED[command], "")
    if command == "select":
        if not isinstance(result["datasets"], list):
            raise ConfigError(f"{path}: 'datasets' must be a list of per-dataset choices")
        for i, row in enumerate(result["datasets"]):
            _require(path, row, SELECTED_REQUIRED, f"datasets[{i}].")
    if command == "run":
        if not isinstance(result["table"], list):
            raise ConfigError(f"{path}: 'table' must be a list of rows")
        for i, row in enumerate(result["table"]):
            _require(path, row, ROW_REQUIRED, f"table[{i}].")
    return result


def _require(path: Path, data: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {where or 'result'} must be a JSON object")
    absent = [key for key in keys if key not in data]
    if absent:
        raise ConfigError(
            f"{path}: missing required key{'s' if len(absent) > 1 else ''} {', '.join(where + k for k in absent)}"
        )
    for key in ("test_acc", "test_acc_std", "trainable_params", "params", "wall_time_s"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{path}: {where}{key} must be a number or null, got {value!r}")
    if "methods" in keys and not isinstance(data["methods"], dict):
        raise ConfigError(f"{path}: {where}methods must be a mapping of method name to options")


def method_label(methods: dict[str, Any]) -> str:
    return "+".join(methods) or "none"


def _entries(result: dict[str, Any], source: Path) -> list[Entry]:
    if result["command"] == "select":
        return [_selected(row, result, source) for row in result["datasets"]]
    command, dataset = result["command"], canonical(str(result["dataset"]))
    base = {"dataset": dataset, "source": source, "command": command, "provenance": result.get("provenance") or {}}
    failed = _failure(result)
    if command == "run":
        return [_run_row(row, base, failed) for row in result["table"]]
    name = method_label(result["methods"])
    params = result["trainable_params"]
    if command == "search":
        reason = "search result: val accuracy only, test split never read (train its best.yaml to get one)"
        return [
            Entry(
                f"search: {name}",
                methods=result["methods"],
                params=params,
                mean=None,
                std=None,
                seeds=0,
                reason=failed or reason,
                **base,
            )
        ]
    mean = None if failed else result["test_acc"]
    reason = failed or (None if mean is not None else "no test accuracy (test split not read)")
    seeds = (result["seeds_completed"] if command == "retrain" else 1) if mean is not None else 0
    return [
        Entry(
            name,
            methods=result["methods"],
            params=params,
            mean=mean,
            std=result["test_acc_std"] if seeds > 1 else None,
            seeds=seeds,
            reason=reason,
            **base,
        )
    ]


def _selected(row: dict[str, Any], result: dict[str, Any], source: Path) -> Entry:
    """One dataset of an ``autopeft select`` suite: its chosen strategy's final runs."""
    seeds = len(row["seeds"]) if row["test_acc"] is not None else 0
    return Entry(
        SELECTED,
        dataset=canonical(str(row["dataset"])),
        methods=row["methods"],
        params=row["trainable_params"],
        mean=row["test_acc"],
        std=row["test_acc_std"] if seeds > 1 else None,
        seeds=seeds,
        source=source,
        command="select",
        provenance={**(result.get("provenance") or {}), "chosen": row["chosen"]},
        reason=_failure(result) or (None if row["test_acc"] is not None else "no test accuracy"),
    )


def _run_row(row: dict[str, Any], base: dict[str, Any], failed: str | None) -> Entry:
    mean = None if failed else row["test_acc"]
    seeds = row["seeds_completed"] if mean is not None else 0
    reason = failed
    if reason is None and mean is None:
        run = row.get("seeds_run")
        reason = "not run" if run == 0 else f"no test accuracy ({row['seeds_completed']}/{run or '?'} seeds completed)"
    std = row["test_acc_std"] if seeds > 1 else None
    return Entry(
        row["name"],
        methods=row["methods"],
        params=row["params"],
        mean=mean,
        std=std,
        seeds=seeds,
        reason=reason,
        **base,
    )


def _failure(result: dict[str, Any]) -> str | None:
    status = result.get("status", "completed")
    if status == "completed":
        return None
    return f"status {status}" + (f": {result['reason']}" if result.get("reason") else "")


def _cost(result: dict[str, Any], source: Path) -> Cost:
    provenance = result.get("provenance") or {}
    datasets = [row["dataset"] for row in result["datasets"]] if result["command"] == "select" else [result["dataset"]]
    return Cost(
        dataset=", ".join(canonical(str(d)) for d in datasets),
        source=source,
        command=result["command"],
        status=result.get("status", "completed"),
        wall_time_s=result["wall_time_s"],
        device=str(provenance.get("device") or result.get("device") or "unknown"),
        search_cost_ratio=result.get("search_cost_ratio"),
    )
