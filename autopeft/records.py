"""Typed records: every ``result.json`` is written from one of these and read back only through them.

One dataclass per command (``train`` run, ``search``, ``run`` pipeline, ``retrain``, ``select``),
each with ``to_json`` / ``from_json`` and a schema version. Files written before the schema existed
(schema 1: no ``schema`` key) are read through ``migrate``. Shared parts: ``Compute`` (images
processed and wall time), ``Provenance`` (versions, weights, device, threads) and ``SeedStats``
(mean +- std over seeds, the one rule for it), and ``Pruning`` (a row's prompts pruned before its final runs).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from autopeft.config import parse_options
from autopeft.errors import ConfigError
from autopeft.files import write_json
from autopeft.train import TrainConfig

SCHEMA = 2
EVAL_WEIGHT = 1 / 3  # a forward-only image costs about a third of a training (forward+backward) image
Status = Literal["completed", "failed", "stopped"]  # stopped: ended early by a search's pruner


@dataclass(frozen=True)
class SeedStats:
    """Values of one configuration over seeds: mean, and std when at least two seeds finished."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float | None]) -> SeedStats:
        return cls(tuple(v for v in values if v is not None))

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Compute:
    """What a stage processed: training images (every forward+backward pass of an image), forward-only
    evaluation images, and wall time. ``images`` weighs an evaluation image as a third of a training one."""

    train_images: int = 0
    eval_images: int = 0
    wall_s: float = 0.0

    @property
    def images(self) -> float:
        return self.train_images + EVAL_WEIGHT * self.eval_images

    def __add__(self, other: Compute) -> Compute:
        return Compute(
            self.train_images + other.train_images,
            self.eval_images + other.eval_images,
            round(self.wall_s + other.wall_s, 2),
        )

    @staticmethod
    def total(parts: Iterable[Compute]) -> Compute:
        return sum(parts, Compute())


@dataclass
class Provenance:
    """Where a result came from: versions, weights, normalisation, data format, protocol, machine."""

    autopeft: str | None = None
    git_sha: str | None = None
    torch: str | None = None
    timm: str | None = None
    checkpoint: str | None = None
    normalization: str | None = None
    data_format: str | None = None
    selection: str = "val"
    reported_epoch: str = "final"
    train_split: str | None = None
    test_read: bool | None = None
    device: str | None = None
    accelerator: str | None = None
    dtype: str | None = None
    threads: int | None = None


@dataclass
class Schedule:
    """The training schedule of a run, as the leaderboard keys rows by it."""

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    warmup_epochs: int
    optimizer: str = "adamw"

    @classmethod
    def of(cls, train: TrainConfig) -> Schedule:
        return cls(train.epochs, train.lr, train.weight_decay, train.batch_size, train.warmup_epochs, train.optimizer)


class Record:
    """Shared JSON round trip of the records below (dataclasses with a ``command`` field)."""

    command: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, **asdict(self), "schema": SCHEMA}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "result.json"):
        body = {k: v for k, v in data.items() if k not in ("command", "schema")}
        return parse_options(cls, body, where)

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())


@dataclass
class RunRecord(Record):
    """``autopeft train``: one run of one configuration with one seed."""

    command: ClassVar[str] = "train"
    dataset: str
    methods: dict[str, dict[str, Any]]
    trainable_params: int
    backbone: str | None = None
    seed: int | None = None
    epochs: int | None = None
    config_key: str | None = None  # every field that changes the result (seed included)
    row_key: str | None = None  # the same without the seed: runs that pool into mean +- std
    schedule: Schedule | None = None
    val_acc: float | None = None
    val_loss: float | None = None
    test_acc: float | None = None
    wall_time_s: float | None = None
    status: Status = "completed"
    reason: str | None = None
    compute: Compute = field(default_factory=Compute)
    provenance: Provenance = field(default_factory=Provenance)


@dataclass
class SearchRecord(Record):
    """``autopeft search``: a search stopped at its val winner (the test split never read)."""

    command: ClassVar[str] = "search"
    dataset: str
    methods: dict[str, dict[str, Any]]
    trainable_params: int
    val_acc: float | None
    engine: str | None = None
    backbone: str | None = None
    train: dict[str, float] = field(default_factory=dict)
    val_loss: float | None = None
    seed: int | None = None
    epochs: int | None = None
    candidates: int | None = None
    scoring: str | None = None  # supernet searches: how candidates were scored on val (search.scoring)
    retrained: int | None = None
    best_trial: int | None = None
    trials_completed: int | None = None
    trials_pruned: int | None = None
    trials_failed: int | None = None
    trials_retried: int | None = None
    storage: str | None = None  # sweeps: where the study or the Ray results live (passwords redacted)
    study: str | None = None
    address: str | None = None  # ray: the cluster
    nodes: list[str] = field(default_factory=list)  # ray: the nodes trials ran on
    test_acc: None = None
    search_cost_s: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None
    status: Status = "completed"
    reason: str | None = None
    compute: Compute = field(default_factory=Compute)
    provenance: Provenance = field(default_factory=Provenance)


@dataclass(frozen=True)
class Pruning:
    """E2VPT pruning of a row's prompts before its final runs (``autopeft.search.prune_stage``): the level,
    the fraction chosen on val (None: no fraction passed the rule, the prompts stay whole), trainable
    parameters before and after (head excluded), what choosing it processed (pruning passes, rewinding runs)
    and the ``prune.json`` that holds every candidate and the rule."""

    level: str
    fraction: float | None
    params_before: int
    params_after: int
    record: str
    compute: Compute = field(default_factory=Compute)


@dataclass
class FinalRow:
    """One configuration's final runs on train+val (test read once per run): the test accuracy of
    each seed's run (None: failed), and their mean and std (``SeedStats``). ``params`` are the final runs'
    (after pruning, when ``pruning`` says the prompts were pruned)."""

    name: str
    methods: dict[str, dict[str, Any]]
    params: int
    val_acc: float | None
    test_acc: float | None = None
    test_acc_std: float | None = None
    seeds_completed: int = 0
    seeds_run: int = 0
    test_accs: list[float | None] = field(default_factory=list)  # per seed (empty in schema-1 files)
    row_key: str | None = None
    run_s: float | None = None
    compute: Compute = field(default_factory=Compute)
    pruning: Pruning | None = None

    @classmethod
    def of_runs(
        cls,
        name: str,
        methods,
        params: int,
        val_acc: float | None,
        runs: Sequence[RunRecord],
        pruning: Pruning | None = None,
    ) -> FinalRow:
        tests = [r.test_acc if r.status == "completed" else None for r in runs]
        stats = SeedStats.of(tests)
        return cls(
            name,
            methods,
            params,
            val_acc,
            stats.mean,
            stats.std,
            len(stats),
            len(runs),
            tests,
            runs[0].row_key if runs else None,
            round(statistics.mean(r.wall_time_s or 0.0 for r in runs), 2) if runs else None,
            Compute.total(r.compute for r in runs),
            pruning,
        )


@dataclass
class PipelineRecord(Record):
    """``autopeft run``: the searched subnet and each baseline, final runs per seed."""

    command: ClassVar[str] = "run"
    dataset: str
    methods: dict[str, dict[str, Any]]
    table: list[FinalRow]
    backbone: str | None = None
    trainable_params: int | None = None
    seed: int | None = None
    seeds: list[int] = field(default_factory=list)
    epochs: int | None = None
    select_epochs: int | None = None
    candidates: int | None = None
    scoring: str = "inherited"  # how candidates were scored on val (search.scoring); older records: inherited
    retrained: int | None = None
    val_acc: float | None = None
    test_acc: float | None = None
    test_acc_std: float | None = None
    budget: int | None = None
    search_cost_s: dict[str, float] = field(default_factory=dict)
    search_cost_ratio: float | None = None
    wall_time_s: float | None = None
    status: Status = "completed"
    reason: str | None = None
    compute: dict[str, Compute] = field(default_factory=dict)  # per stage
    provenance: Provenance = field(default_factory=Provenance)


@dataclass
class RetrainRecord(Record):
    """``autopeft retrain``: a search's ``best.yaml`` on train+val per seed."""

    command: ClassVar[str] = "retrain"
    dataset: str
    methods: dict[str, dict[str, Any]]
    trainable_params: int
    test_acc: float | None
    backbone: str | None = None
    seeds: list[int] = field(default_factory=list)
    epochs: int | None = None
    search: str | None = None
    test_accs: list[float | None] = field(default_factory=list)
    row_key: str | None = None
    test_acc_std: float | None = None
    seeds_completed: int = 0
    wall_time_s: float | None = None
    status: Status = "completed"
    compute: Compute = field(default_factory=Compute)
    provenance: Provenance = field(default_factory=Provenance)


@dataclass
class DatasetChoice:
    """One dataset of an ``autopeft select`` suite: the strategy chosen on val and its final runs."""

    dataset: str
    chosen: str
    methods: dict[str, dict[str, Any]]
    trainable_params: int
    val_acc: float | None
    test_acc: float | None
    test_acc_std: float | None
    seeds: list[int]
    row_key: str | None = None
    compute: dict[str, Compute] = field(default_factory=dict)  # per strategy, "prune" when it ran, and "final"
    pruning: Pruning | None = None


@dataclass
class SelectionRecord(Record):
    """``autopeft select``: the chosen strategy per dataset."""

    command: ClassVar[str] = "select"
    datasets: list[DatasetChoice]
    backbone: str | None = None
    engine: str | None = None
    budget: int | None = None
    strategies: list[str] = field(default_factory=list)
    wall_time_s: float | None = None
    this_invocation_s: float | None = None
    status: Status = "completed"
    provenance: Provenance = field(default_factory=Provenance)


RECORDS: dict[str, type[Record]] = {
    cls.command: cls for cls in (RunRecord, SearchRecord, PipelineRecord, RetrainRecord, SelectionRecord)
}
AnyRecord = RunRecord | SearchRecord | PipelineRecord | RetrainRecord | SelectionRecord


def read_record(path: Path) -> AnyRecord:
    """The record of a ``result.json``, any schema; one line naming the file for anything malformed."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    return record_from_json(data, str(path))


def record_from_json(data: Any, where: str) -> AnyRecord:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    command = data.get("command")
    if command not in RECORDS:
        raise ConfigError(f"{where}: 'command' is {command!r}; expected one of {', '.join(RECORDS)}")
    schema = data.get("schema", 1)
    if schema not in (1, SCHEMA):
        raise ConfigError(f"{where}: schema {schema!r}; this autopeft reads schemas 1 and {SCHEMA}")
    cls = RECORDS[command]
    body = migrate(cls, data) if schema == 1 else data
    missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in body]
    if missing:
        raise ConfigError(f"{where}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return cls.from_json(body, where)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


# Schema 1 (autopeft before typed records) --------------------------------------------------------------------------


def migrate(cls: type[Record], data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 result as the current record's fields: keys it did not have get their defaults
    (per-seed lists stay empty), keys the records no longer keep (e.g. ``kendall_tau``) are dropped."""
    names = {f.name for f in dataclasses.fields(cls)}
    body = {k: v for k, v in data.items() if k in names or k in ("command", "schema")}
    if cls is PipelineRecord:
        body["table"] = [{k: v for k, v in row.items() if k in _fields(FinalRow)} for row in data.get("table", [])]
    if cls is SelectionRecord:
        body["datasets"] = [{k: v for k, v in row.items() if k in _fields(DatasetChoice)} for row in data["datasets"]]
    if isinstance(data.get("provenance"), dict):
        body["provenance"] = {k: v for k, v in data["provenance"].items() if k in _fields(Provenance)}
    return body


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}
