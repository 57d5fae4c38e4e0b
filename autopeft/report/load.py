"""Read run directories into report entries, only through the typed records of ``autopeft.records``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopeft.errors import ConfigError
from autopeft.records import (
    AnyRecord,
    Compute,
    PipelineRecord,
    Provenance,
    Pruning,
    RetrainRecord,
    RunRecord,
    SearchRecord,
    SelectionRecord,
    SelectionSummary,
    read_record,
)
from autopeft.report.vtab import canonical

RESULT = "result.json"
SELECTED = "selected per dataset"
STRATEGY_ROWS = ("searched", SELECTED)  # rows that aggregate a strategy's choices, one per dataset


@dataclass(frozen=True)
class Entry:
    """One measured row of one run directory: test accuracy mean and std over ``seeds`` (None = missing).

    ``key`` identifies the configuration (backbone and weights, data and split, methods with options,
    schedule; not the seed): only entries of one key pool into mean +- std. ``schedule`` describes it.
    ``pruning``: its prompts were pruned before the final runs (``params`` is then after pruning)."""

    name: str
    dataset: str
    methods: dict[str, Any]
    params: int | None
    mean: float | None
    std: float | None
    seeds: int
    source: Path
    command: str
    key: str | None = None
    schedule: str | None = None
    provenance: Provenance = field(default_factory=Provenance)
    chosen: str | None = None
    reason: str | None = None
    pruning: Pruning | None = None


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
    compute: Compute | None = None


@dataclass(frozen=True)
class Missing:
    """Something the report could not show, and why."""

    source: Path
    what: str
    reason: str


@dataclass(frozen=True)
class Chosen:
    """How one run directory made a choice on one dataset: its selection record."""

    dataset: str
    source: Path
    selection: SelectionSummary


@dataclass
class Loaded:
    entries: list[Entry] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    choices: list[Chosen] = field(default_factory=list)


def load_runs(run_dirs: list[Path]) -> Loaded:
    """Read every run directory; raise ConfigError naming the file for a malformed result.json."""
    loaded = Loaded()
    for run_dir in run_dirs:
        path = run_dir / RESULT
        if not path.is_file():
            why = "directory does not exist" if not run_dir.exists() else f"no {RESULT}"
            loaded.missing.append(Missing(run_dir, "whole run", why))
            continue
        record = read_record(path)
        entries = _entries(record, run_dir)
        loaded.entries.extend(entries)
        loaded.costs.append(_cost(record, run_dir))
        loaded.choices.extend(_choices(record, run_dir))
        loaded.missing.extend(Missing(e.source, f"{e.name} on {e.dataset}", e.reason) for e in entries if e.reason)
    if not loaded.entries:
        raise ConfigError(f"nothing to report: none of {', '.join(map(str, run_dirs))} holds a {RESULT}")
    return loaded


def _choices(record: AnyRecord, source: Path) -> list[Chosen]:
    if isinstance(record, SelectionRecord):
        return [Chosen(d.dataset, source, d.selection) for d in record.datasets if d.selection is not None]
    selection = getattr(record, "selection", None)  # run, and search with the supernet engine or a shortlist
    return [] if selection is None else [Chosen(record.dataset, source, selection)]


def method_label(methods: dict[str, Any]) -> str:
    return "+".join(methods) or "none"


def _entries(record: AnyRecord, source: Path) -> list[Entry]:
    if isinstance(record, SelectionRecord):
        return [_selected(choice, record, source) for choice in record.datasets]
    base = {
        "dataset": canonical(record.dataset),
        "source": source,
        "command": record.command,
        "provenance": record.provenance,
    }
    failed = _failure(record)
    if isinstance(record, PipelineRecord):
        return [_pipeline_row(row, base, failed) for row in record.table]
    name = method_label(record.methods)
    if isinstance(record, SearchRecord):
        reason = "search result: val accuracy only, test split never read (train its best.yaml to get one)"
        return [
            Entry(
                f"search: {name}",
                methods=record.methods,
                params=record.trainable_params,
                mean=None,
                std=None,
                seeds=0,
                reason=failed or reason,
                **base,
            )
        ]
    if isinstance(record, RetrainRecord):
        mean = None if failed else record.test_acc
        seeds = record.seeds_completed if mean is not None else 0
        key, schedule = record.row_key, f"{record.epochs} ep"
    else:
        mean = None if failed else record.test_acc
        seeds = 1 if mean is not None else 0
        key, schedule = _run_key(record)
    reason = failed or (None if mean is not None else "no test accuracy (test split not read)")
    std = record.test_acc_std if isinstance(record, RetrainRecord) and seeds > 1 else None
    return [
        Entry(
            name,
            methods=record.methods,
            params=record.trainable_params,
            mean=mean,
            std=std,
            seeds=seeds,
            key=key,
            schedule=schedule,
            reason=reason,
            **base,
        )
    ]


def _run_key(record: RunRecord) -> tuple[str, str]:
    """A training run's configuration key and schedule; a schema-1 run has no key, so its methods
    and epochs stand in for one (runs that differ only in lr then still pool: the old format lost it)."""
    s = record.schedule
    schedule = (
        f"{record.epochs} ep" if s is None else f"{s.epochs} ep, lr {s.lr:g}, wd {s.weight_decay:g}, bs {s.batch_size}"
    )
    return record.row_key or f"v1:{sorted(record.methods.items())}:{record.epochs}", schedule


def _selected(choice, record: SelectionRecord, source: Path) -> Entry:
    """One dataset of an ``autopeft select`` suite: its chosen strategy's final runs."""
    seeds = len(choice.seeds) if choice.test_acc is not None else 0
    return Entry(
        SELECTED,
        dataset=canonical(choice.dataset),
        methods=choice.methods,
        params=choice.trainable_params,
        mean=choice.test_acc,
        std=choice.test_acc_std if seeds > 1 else None,
        seeds=seeds,
        source=source,
        command="select",
        key=choice.row_key,
        provenance=record.provenance,
        chosen=choice.chosen,
        reason=_failure(record) or (None if choice.test_acc is not None else "no test accuracy"),
        pruning=choice.pruning,
    )


def _pipeline_row(row, base: dict[str, Any], failed: str | None) -> Entry:
    mean = None if failed else row.test_acc
    seeds = row.seeds_completed if mean is not None else 0
    reason = failed
    if reason is None and mean is None:
        reason = "not run" if row.seeds_run == 0 else f"no test accuracy ({row.seeds_completed}/{row.seeds_run} seeds)"
    std = row.test_acc_std if seeds > 1 else None
    return Entry(
        row.name,
        methods=row.methods,
        params=row.params,
        mean=mean,
        std=std,
        seeds=seeds,
        key=row.row_key,
        reason=reason,
        pruning=row.pruning,
        **base,
    )


def _failure(record: AnyRecord) -> str | None:
    if record.status == "completed":
        return None
    reason = getattr(record, "reason", None)
    return f"status {record.status}" + (f": {reason}" if reason else "")


def _cost(record: AnyRecord, source: Path) -> Cost:
    datasets = [c.dataset for c in record.datasets] if isinstance(record, SelectionRecord) else [record.dataset]
    compute = getattr(record, "compute", None)
    if isinstance(compute, dict):
        compute = Compute.total(compute.values())
    return Cost(
        dataset=", ".join(canonical(d) for d in datasets),
        source=source,
        command=record.command,
        status=record.status,
        wall_time_s=record.wall_time_s,
        device=record.provenance.device or "unknown",
        search_cost_ratio=getattr(record, "search_cost_ratio", None),
        compute=compute if compute and compute.images else None,
    )
