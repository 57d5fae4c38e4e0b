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
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from autopeft.config import parse_options
from autopeft.errors import ConfigError
from autopeft.files import write_atomic, write_json

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


@dataclass(frozen=True)
class Epoch:
    """One epoch of a run: a line of its metrics.jsonl and of its checkpoint's history. ``loss`` is the mean
    training loss; ``val_acc`` / ``val_loss`` are None for a final run (train+val, no val split)."""

    epoch: int
    loss: float
    images_per_s: float
    train_images: int
    eval_images: int
    val_acc: float | None
    val_loss: float | None
    lr: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Epoch:
        """A history line as written (today's checkpoints and metrics.jsonl files hold exactly these keys)."""
        return cls(**data)


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


EVIDENCE_SCHEMA = 1
OUTCOMES = "val_outcomes.npz"  # a run directory's per-example val outcomes


@dataclass(frozen=True, eq=False)
class Outcomes:
    """Per-example outcomes of one evaluation (``split``), as ``val_outcomes.npz`` keeps them.

    ``ids`` name positions in the task's pool (the same for every fold of a task; ``fingerprint`` names the pool),
    ``correct`` is 0/1 per seed and example ``(seeds, n)``, ``loss`` the cross-entropy alongside, ``fold`` the
    fold each example was held out in (all 0 on a holdout split).
    """

    split: str
    correct: np.ndarray
    loss: np.ndarray | None = None
    ids: np.ndarray | None = None
    fold: np.ndarray | None = None
    fingerprint: str = ""

    def __post_init__(self) -> None:
        correct = np.atleast_2d(np.asarray(self.correct, dtype=np.uint8))
        object.__setattr__(self, "correct", correct)
        if self.loss is not None:
            object.__setattr__(self, "loss", np.atleast_2d(np.asarray(self.loss, dtype=np.float64)))
        n = correct.shape[1]
        for name in ("ids", "fold"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.int32 if name == "ids" else np.int8)
                if value.shape != (n,):
                    raise ValueError(f"outcomes: {name} has shape {value.shape}; correct has {n} examples")
                object.__setattr__(self, name, value)
        if self.loss is not None and self.loss.shape != correct.shape:
            raise ValueError(f"outcomes: loss has shape {self.loss.shape}; correct has {correct.shape}")
        if self.ids is not None and len(np.unique(self.ids)) != n:
            raise ValueError("outcomes: ids repeat; each example is named once")

    @property
    def n(self) -> int:
        return self.correct.shape[1]

    def write(self, path: Path) -> None:
        """Atomically, as ``correct`` uint8, ``loss`` float16, ``ids`` int32, ``fold`` int8 and the fingerprint."""
        n = self.n
        arrays = {
            "split": np.array(self.split),
            "fingerprint": np.array(self.fingerprint),
            "correct": self.correct.astype(np.uint8),
            "ids": (self.ids if self.ids is not None else np.arange(n)).astype(np.int32),
            "fold": (self.fold if self.fold is not None else np.zeros(n)).astype(np.int8),
        }
        if self.loss is not None:
            arrays["loss"] = self.loss.astype(np.float16)

        def save(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        write_atomic(path, save)

    @classmethod
    def read(cls, path: Path) -> Outcomes:
        try:
            with np.load(path) as data:
                return cls(
                    str(data["split"]),
                    data["correct"],
                    data.get("loss"),
                    data["ids"],
                    data["fold"],
                    str(data["fingerprint"]),
                )
        except (OSError, KeyError, ValueError) as error:
            raise ConfigError(f"{path}: not a readable outcomes file ({error})") from error


@dataclass(frozen=True, eq=False)
class Evidence:
    """What comparing one candidate needs: ``n`` examples, accuracy (%) and mean loss over them, trainable
    parameters, its accuracy per fold or seed where several ran (``values``), and the per-example val
    ``outcomes`` when they were kept. Test outcomes never enter one: selection reads val only."""

    n: int
    accuracy: float
    loss: float | None = None
    params: int | None = None
    values: tuple[float, ...] = ()
    outcomes: Outcomes | None = None
    schema: int = EVIDENCE_SCHEMA

    @classmethod
    def from_counts(cls, correct: int, n: int, params: int | None = None, loss: float | None = None) -> Evidence:
        """``correct`` of ``n`` examples right, with no per-example outcomes (compared unpaired)."""
        if not 0 <= correct <= n:
            raise ValueError(f"evidence: correct {correct} must lie in 0..n ({n})")
        return cls(n, 100 * correct / n if n else math.nan, loss, params)

    @classmethod
    def from_outcomes(
        cls,
        correct: np.ndarray | Outcomes,
        loss: np.ndarray | None = None,
        ids: np.ndarray | None = None,
        params: int | None = None,
    ) -> Evidence:
        """From 0/1 outcomes per example (``(n,)``, or ``(seeds, n)`` for seeds on one split), or an ``Outcomes``."""
        outcomes = correct if isinstance(correct, Outcomes) else Outcomes("val", correct, loss, ids)
        if outcomes.split != "val":
            raise TypeError(f"evidence: {outcomes.split} outcomes never enter an Evidence (choices read val only)")
        per_seed = outcomes.correct.mean(axis=1) * 100
        folds = np.unique(outcomes.fold) if outcomes.fold is not None else ()
        values = (
            tuple(float(outcomes.correct[:, outcomes.fold == f].mean() * 100) for f in folds)
            if len(folds) > 1
            else tuple(float(v) for v in per_seed)
        )
        return cls(
            outcomes.n,
            float(outcomes.correct.mean() * 100),
            None if outcomes.loss is None else float(outcomes.loss.mean()),
            params,
            values if len(values) > 1 else (),
            outcomes,
        )

    @classmethod
    def pooled(cls, folds: Sequence[Outcomes], params: int | None = None) -> Evidence:
        """One candidate's out-of-fold outcomes, fold ``k`` from ``folds[k]``, pooled into one Evidence."""
        return cls.from_outcomes(pool_folds(folds), params=params)

    @property
    def failed(self) -> bool:
        return self.n == 0 or not math.isfinite(self.accuracy)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evidence:
        """The summary ``to_json`` wrote, without its outcomes."""
        return cls(
            data["n"], data["accuracy"], data["loss"], data["params"], tuple(data["values"]), None, data["schema"]
        )

    def to_json(self) -> dict[str, Any]:
        """The summary (no per-example arrays: those live in ``val_outcomes.npz``)."""
        keep = ("n", "accuracy", "loss", "params", "values", "schema")
        paired = self.outcomes is not None and self.outcomes.ids is not None
        return {**{k: getattr(self, k) for k in keep}, "values": list(self.values), "paired": paired}


def pool_folds(folds: Sequence[Outcomes]) -> Outcomes:
    """Concatenate per-fold val outcomes (one candidate, fold ``k`` = ``folds[k]``) into one out-of-fold set."""
    seeds = {part.correct.shape[0] for part in folds}
    if len(seeds) != 1:
        raise ValueError(f"outcomes: folds ran different numbers of seeds {sorted(seeds)}")
    if len({part.fingerprint for part in folds}) != 1:
        raise ValueError("outcomes: folds come from different data (their fingerprints differ)")
    losses = [part.loss for part in folds]
    ids = [part.ids for part in folds]
    return Outcomes(
        "val",
        np.concatenate([part.correct for part in folds], axis=1),
        None if any(x is None for x in losses) else np.concatenate(losses, axis=1),
        None if any(x is None for x in ids) else np.concatenate(ids),
        np.concatenate([np.full(part.n, k, dtype=np.int8) for k, part in enumerate(folds)]),
        folds[0].fingerprint,
    )


def stack_seeds(seeds: Sequence[Outcomes]) -> Outcomes:
    """One candidate's val outcomes on one split under several seeds, stacked ``(seeds, n)`` (same ids)."""
    first = seeds[0]
    for other in seeds[1:]:
        same = (first.ids is None) == (other.ids is None) and (
            first.ids is None or np.array_equal(first.ids, other.ids)
        )
        if not same or other.fingerprint != first.fingerprint:
            raise ValueError("outcomes: seeds scored on different examples cannot be stacked")
    losses = [part.loss for part in seeds]
    return Outcomes(
        "val",
        np.concatenate([part.correct for part in seeds]),
        None if any(x is None for x in losses) else np.concatenate(losses),
        first.ids,
        first.fold,
        first.fingerprint,
    )


@dataclass
class RaceRound:
    """One fold of the selection stage: the candidates scored on it, those dropped after it (with why), its cost."""

    fold: int
    scored: int
    dropped: dict[str, str]
    compute: Compute


@dataclass
class SelectionSummary:
    """How a command's candidates were scored and chosen: the ``selection:`` settings, the choice
    (``autopeft.choice.Choice.to_dict``), each candidate's evidence summary, the rounds, what it cost, and
    whether the winner is tied with the default LoRA baseline (when that ran on the same val images)."""

    mode: str
    folds: int
    seeds: int
    alpha: float
    prefer: str
    race: bool
    choice: dict[str, Any]
    evidence: dict[str, dict[str, Any] | None]
    rounds: list[RaceRound]
    compute: Compute
    versus_lora: str | None = None


@dataclass
class Schedule:
    """The training schedule of a run, as the leaderboard keys rows by it."""

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    warmup_epochs: int
    optimizer: str = "adamw"


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
    selection: SelectionSummary | None = None  # engine supernet: how its winner was chosen


@dataclass(frozen=True)
class Pruning:
    """E2VPT pruning of a row's prompts before its final runs (``autopeft.search.prune_stage``): the level,
    the fraction chosen on val (None: no fraction passed the rule, the prompts stay whole), trainable
    parameters before and after (head excluded), what choosing it processed (pruning passes, rewinding runs)
    and the ``prune_choice.json`` that holds every candidate and the rule."""

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
    selection: SelectionSummary | None = None  # how the searched subnet was chosen (older records: holdout, no record)


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
    selection: SelectionSummary | None = None  # how the strategy was chosen, with its tied set


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
