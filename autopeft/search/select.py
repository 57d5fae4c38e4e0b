"""`autopeft select SUITE`: per-dataset method selection over a suite of datasets.

For every dataset of the suite each candidate strategy runs on train and is scored on val: a
single method (its size and learning rate searched by a sweep on the optuna or ray engine) or the
mixed supernet search (``autopeft run``'s pipeline, stopped once its winner is chosen on val).
Strategies are ranked by val accuracy (ties: lower val loss, then suite order); the best
``finalists`` are retrained on train+val once per seed with the test split read once per run,
and the finalist best on val is the dataset's choice. Test accuracy never takes part in a choice.

    out/
      config.yaml  result.json  summary.md
      <dataset>/
        <strategy>/              the strategy's sweep or pipeline run directory (val only)
        strategies.json          each finished strategy's val outcome (what a resume reuses)
        prune_choice.json  prune/  with prune.enabled: the chosen strategy's prompts pruned on train, the
                                 fraction chosen on val (``autopeft.search.prune_stage``)
        final/<strategy>/seed<s>/   `autopeft train` run directories on train+val, test read once
        selection.json           the dataset's record, written last: a finished dataset is never redone
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import optuna
import torch

from autopeft.build import machine_provenance
from autopeft.config import given, option, parse_options, partial
from autopeft.data import BUILTIN_TASKS, DataConfig, split_sizes
from autopeft.errors import BudgetError, ConfigError, SearchFailed
from autopeft.files import write_json, write_text
from autopeft.jobs.rundir import RunDir
from autopeft.jobs.train import train_or_reuse
from autopeft.progress import SilentProgress, StageProgress
from autopeft.records import (
    Compute,
    DatasetChoice,
    FinalRow,
    RunRecord,
    SearchRecord,
    SelectionRecord,
    SelectionSummary,
)
from autopeft.report.summaries import render_summary
from autopeft.runconfig import BackboneConfig, RunConfig
from autopeft.search.engines import run_sweep
from autopeft.search.pipeline import PipelineConfig, parse_pipeline, run_pipeline
from autopeft.search.prune_stage import (
    FOLDER,
    UNPRUNED,
    PruneChoice,
    PruneStage,
    check_stage,
    choice_file,
    choose_pruning,
    claimed,
    prunes,
)
from autopeft.search.suite_records import DatasetSelection, Finalist, StrategyOutcome, read_selection
from autopeft.search.sweep import SweepConfig, Where, backbone_depth, params_of, parse_sweep
from autopeft.selection import SelectionConfig, select_on_counts, select_runs, summarize
from autopeft.supernet import FloatRange, load_space, parse_space, suggest
from autopeft.train import TrainConfig

# Each single method's size list for its sweep (no 0: the strategy is really that method).
METHOD_SIZES: dict[str, list[int]] = {
    "lora": [2, 4, 8, 16],
    "adapter": [8, 16, 32, 64],
    "vpt": [1, 5, 10, 50],
    "kv_prompt": [1, 5, 10],
    "ssf": [1],
    "pro_tuning": [4, 8, 16, 32],
}
SUPERNET = "supernet"
STRATEGIES = (*METHOD_SIZES, SUPERNET)
SET_BY_SELECT = {  # each strategy's options that the suite sets: its overrides are the rest
    "sweep": ("backbone", "data", "space", "budget"),
    "supernet": ("backbone", "data", "baselines", "prune"),
}
SweepOverrides = partial(SweepConfig, SET_BY_SELECT["sweep"])
PipelineOverrides = partial(PipelineConfig, SET_BY_SELECT["supernet"])
MIN_SEEDS = 3


@dataclass
class FinalStage:
    """The finalists' runs on train+val, once per seed, with the test split read once per run."""

    train: TrainConfig = option(
        factory=lambda: TrainConfig(epochs=5, lr=3e-3, warmup_epochs=0),
        help="The finalists' training schedule; each strategy's lr and weight_decay replace this schedule's with "
        "the values it was selected with.",
    )
    seeds: list[int] = option(
        factory=lambda: [0, 1, 2],
        help="The seeds each finalist is retrained with, one train+val run per seed (at least 3 distinct seeds: "
        "results are reported as mean +- std).",
    )


@dataclass
class SuiteConfig:
    """``autopeft select``'s suite: the datasets, the candidate strategies and how each dataset's choice is made."""

    backbone: BackboneConfig = option(
        factory=BackboneConfig, help="The timm backbone every strategy fine-tunes, on every dataset."
    )
    datasets: list[str | dict[str, Any]] = option(
        factory=lambda: ["digits"],
        help="The datasets to select a strategy for: built-in names, or data mappings (the keys of a run config's "
        "data section); each gets its own folder, so their names must differ.",
    )
    data: dict[str, Any] | None = option(
        None,
        help="A data mapping set once for the suite: each name in datasets is then this mapping's task (e.g. a "
        "VTAB-1k root with one task per name). null: a name in datasets is a built-in dataset.",
    )
    strategies: list[str] = option(
        factory=lambda: ["lora", "adapter", "vpt", "ssf", "kv_prompt", SUPERNET],
        help="The candidate strategies, each once: single methods (lora, adapter, vpt, kv_prompt, ssf, pro_tuning; "
        "each a sweep over its sizes and the lr) or supernet (the mixed supernet search of autopeft run).",
    )
    budget: int | None = option(
        None,
        help="The most trainable parameters (head excluded) of every strategy's candidates; a strategy with none "
        "within it is skipped. null: no limit.",
    )
    engine: Literal["optuna", "ray"] = option(
        "optuna", help="The engine of the single-method sweeps (the supernet strategy runs its own search)."
    )
    lr: FloatRange = option(
        factory=lambda: FloatRange(low=1e-3, high=1e-2),
        help="The learning-rate range every single-method sweep searches; the supernet strategy's top candidates "
        "are tried at its ends and their geometric mean (unless supernet.retrain.lrs says otherwise).",
    )
    sweep: SweepOverrides = option(
        factory=lambda: SweepOverrides(trials=6),
        help="Sweep config options (as autopeft search takes) for every single-method sweep; backbone, data, budget "
        "and space (built per method: its sizes and the lr range) are set by select.",
    )
    supernet: PipelineOverrides = option(
        factory=PipelineOverrides,
        help="Pipeline config options (as autopeft run takes) for the supernet strategy; backbone, data, "
        "baselines, prune and search.budget are set by select, and retrain defaults to the sweeps' schedule.",
    )
    finalists: int = option(
        2,
        help="How many of the best strategies on val (at least 1) are retrained on train+val per seed; the best "
        "of them on val is the dataset's choice.",
    )
    final: FinalStage = option(factory=FinalStage, help="The finalists' runs on train+val.")
    prune: PruneStage = option(
        factory=PruneStage,
        help="E2VPT pruning of the chosen strategy's prompts on train (off by default), the fraction chosen on val.",
    )
    selection: SelectionConfig = option(
        factory=SelectionConfig,
        help="How the strategies' winners are compared: with kfold or several seeds they are re-scored first, "
        "else compared on their val scores.",
    )

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigError("datasets: empty; give at least one built-in name or data mapping")
        for name in self.strategies:
            if name not in STRATEGIES:
                raise ConfigError(f"strategies: unknown strategy '{name}'; allowed: {', '.join(STRATEGIES)}")
        if not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies: need at least one, each once; got {self.strategies}")
        if len(self.final.seeds) < MIN_SEEDS or len(set(self.final.seeds)) != len(self.final.seeds):
            raise ConfigError(
                f"final.seeds: got {self.final.seeds}; allowed: at least {MIN_SEEDS} different seeds (mean +- std)"
            )
        if self.finalists < 1:
            raise ConfigError(f"finalists: got {self.finalists}; allowed: >= 1")
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"budget: got {self.budget}; allowed: a positive integer or null")


def parse_suite(data: Any, where: str, base: Path | None = None) -> SuiteConfig:
    """A SuiteConfig from a mapping, its datasets, sweep and supernet sections checked; every error
    names ``where`` and the key. Relative space paths in ``supernet`` resolve against ``base``."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(SuiteConfig.__dataclass_fields__)}")
    space = (data.get("supernet") or {}).get("space") if isinstance(data.get("supernet"), dict) else None
    if base is not None and isinstance(space, str) and space.endswith((".yaml", ".yml")):
        data = {**data, "supernet": {**data["supernet"], "space": str(base / space)}}
    try:
        for section, keys in SET_BY_SELECT.items():
            written = [k for k in keys if isinstance(data.get(section), dict) and k in data[section]]
            if written:
                raise ConfigError(f"{section}.{written[0]}: set by select (from the suite's {', '.join(keys)})")
        suite = parse_options(SuiteConfig, data, "")
        labels = [dataset_label(d, i) for i, d in enumerate(data_configs(suite))]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"datasets: two datasets share a folder name ({', '.join(labels)}); give distinct tasks")
        for i, data_config in enumerate(data_configs(suite)):  # build each sub-config once: errors now
            sweep_config(suite, data_config, "lora")
            if SUPERNET in suite.strategies:
                supernet_config(suite, data_config, i)
        check_stage(suite.prune, suite.backbone, {name: {} for name in suite.strategies if name != SUPERNET})
        if SUPERNET in suite.strategies:
            space = load_space(supernet_config(suite, data_configs(suite)[0]).space)
            check_stage(suite.prune, suite.backbone, {m: spec.options for m, spec in space.methods.items()})
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    return suite


def data_configs(suite: SuiteConfig) -> list[DataConfig]:
    """The suite's datasets as DataConfigs: a mapping as it is; a string is the task of the suite's
    ``data`` mapping when the suite sets one (e.g. a VTAB-1k root), else a built-in name, checked here."""
    configs = []
    for i, entry in enumerate(suite.datasets):
        if isinstance(entry, str) and suite.data is not None:
            entry = {**suite.data, "task": entry}
        if isinstance(entry, str):
            if entry not in BUILTIN_TASKS:
                raise ConfigError(
                    f"datasets[{i}]: unknown built-in dataset '{entry}'; allowed: {', '.join(BUILTIN_TASKS)}"
                )
            configs.append(DataConfig(name=entry))
        else:
            config = parse_options(DataConfig, entry, f"datasets[{i}]")
            if config.root is not None and not Path(config.root).exists():
                raise ConfigError(f"datasets[{i}].root: {config.root} not found")
            if config.task is not None and config.root is not None and not (Path(config.root) / config.task).is_dir():
                raise ConfigError(f"datasets[{i}]: task folder {Path(config.root) / config.task} not found")
            configs.append(config)
    return configs


def dataset_label(data: DataConfig, index: int = 0) -> str:
    """The dataset's folder name under ``out``."""
    return data.label.replace("/", "_") or f"dataset{index}"


def sweep_config(suite: SuiteConfig, data: DataConfig, method: str, sizes: list[int] | None = None) -> SweepConfig:
    """The single-method sweep of ``method`` on ``data``: its sizes for the whole model, lr searched."""
    space = {
        "methods": {method: {"sizes": sizes or METHOD_SIZES[method]}},
        "sizes_per": "model",
        "train": {"lr": asdict(suite.lr)},
    }
    budget = suite.budget if suite.engine == "optuna" else None  # ray has no constraints: sizes are pre-filtered
    written = given(suite.sweep)
    written = {**written, "backbone": asdict(suite.backbone), "data": asdict(data), "space": space, "budget": budget}
    return parse_sweep(written, "sweep")


def lr_grid(lr: FloatRange) -> list[float]:
    """Three learning rates spanning the sweeps' range: its ends and their geometric mean."""
    return [lr.low, math.sqrt(lr.low * lr.high), lr.high]


def supernet_config(suite: SuiteConfig, data: DataConfig, index: int = 0) -> PipelineConfig:
    """The supernet strategy's pipeline: the suite's backbone, data and budget; its selection runs
    use the sweeps' schedule (so val scores compare), top 3 by default, each finalist at three learning
    rates across the sweeps' lr range (the lr tuning the single-method sweeps get); no baselines."""
    sweep = sweep_config(suite, data, "lora")
    overrides = given(suite.supernet)
    search, retrain = overrides.get("search") or {}, overrides.get("retrain") or {}
    if not isinstance(search, dict) or not isinstance(retrain, dict):
        raise ConfigError("supernet: search and retrain must be mappings of their stage's options")
    if "budget" in search:
        raise ConfigError("supernet.search.budget: set by select (from the suite's budget)")
    completed = {
        **overrides,
        "backbone": asdict(suite.backbone),
        "data": asdict(data),
        "baselines": [],
        "search": {**search, "budget": suite.budget},
        "retrain": {
            "top_k": 3,
            "train": asdict(sweep.train),
            "select_epochs": None,
            "lrs": lr_grid(suite.lr),
            "seeds": [0],
            **retrain,
        },
        "seed": overrides.get("seed", sweep.seed),
    }
    return parse_pipeline(completed, "supernet")


def run_select(
    config: SuiteConfig, out: Path, resume: bool = False, progress: StageProgress | None = None
) -> SelectionRecord:
    """Select a strategy for every dataset of the suite into ``out`` (with ``resume``: finished
    datasets are kept as they are, an interrupted one continues); returns result.json."""
    start = time.perf_counter()
    progress = progress or SilentProgress()
    datasets = data_configs(config)
    rundir = RunDir(out, resume, "select")
    with rundir.writing(claimed(config), "finished datasets and runs"):
        selections = [_selection(config, data, i, out, progress) for i, data in enumerate(datasets)]
        record = _suite_record(config, selections, start)
        write_text(out / "summary.md", render_summary(record, selections))
        return rundir.write(record)


def _selection(
    config: SuiteConfig, data: DataConfig, index: int, out: Path, progress: StageProgress
) -> DatasetSelection:
    """The dataset's selection: kept as it is when a finished one is on disk, else made now."""
    folder = out / dataset_label(data, index)
    if (folder / "selection.json").is_file():
        progress.say(f"{folder.name}: selected before, kept as it is")
        return read_selection(folder / "selection.json")
    return select_dataset(config, data, index, folder, progress)


def select_dataset(
    config: SuiteConfig, data: DataConfig, index: int, folder: Path, progress: StageProgress
) -> DatasetSelection:
    """Every strategy on ``data`` (val only), the finalists on train+val per seed; writes selection.json."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "strategies.json"
    done = _read_outcomes(record)
    for name in config.strategies:
        if name not in done:
            progress.say(f"{folder.name}: strategy {name} on train, scored on val")
            done[name] = _strategy(config, data, index, name, folder / name, progress)
            write_json(record, {n: asdict(o) for n, o in done.items()})
    outcomes = [done[name] for name in config.strategies]
    scored = [o for o in outcomes if o.status == "completed" and o.val_acc is not None]
    if not scored:
        raise ConfigError(f"{folder.name}: no strategy finished ({'; '.join(_why(o) for o in outcomes)})")
    chosen = _choose_strategy(config, data, scored, folder / "rescore", progress)
    ranking = _ranking(chosen)
    finalists = [next(o for o in scored if o.name == name) for name in ranking[: config.finalists]]
    pruned = _prune(config, data, finalists[0], folder, progress)  # the first finalist is the choice
    seeds = config.final.seeds
    progress.say(
        f"{folder.name}: finalists {', '.join(f.name for f in finalists)} on train+val, seeds {seeds}, "
        "test read once each"
    )
    rows = [
        _final(config, data, f, folder / "final" / f.name, progress, pruned if i == 0 else None)
        for i, f in enumerate(finalists)
    ]
    selection = DatasetSelection(
        dataset=folder.name,
        data=data,
        ranking=ranking,
        strategies=outcomes,
        finalists=rows,
        chosen=rows[0].row.name,  # the choice on val (finalists start with it); never chosen on test
        selection_wall_time_s=round(time.perf_counter() - start, 2),
        selection=chosen,
    )
    write_json(folder / "selection.json", asdict(selection))
    return selection


def _choose_strategy(
    config: SuiteConfig, data: DataConfig, scored: list[StrategyOutcome], out: Path, progress: StageProgress
) -> SelectionSummary:
    """The choice among the strategies' winners: on their val counts (holdout, one seed; compared unpaired),
    or re-scored as ``config.selection`` says (kfold or several seeds, in ``out/<strategy>[-fold<k>]...``)."""
    selection, params = config.selection, {o.name: o.trainable_params for o in scored}
    sizes = split_sizes(data)
    if selection.mode == "holdout" and selection.seeds == 1:
        return select_on_counts(
            selection, {o.name: (o.val_acc, o.val_loss, o.trainable_params) for o in scored}, sizes[1]
        )
    progress.say(f"{out.parent.name}: the strategies' winners re-scored; {selection.describe()}")
    runs = {o.name: _selection_run(config, data, o) for o in scored}

    def train(run: RunConfig, where: Path) -> RunRecord:
        return train_or_reuse(run, where, progress.run(f"rescore/{where.name}"))

    selected, records = select_runs(runs, selection, params, out, train, sizes)
    return summarize(selection, selected, records)


def _ranking(summary: SelectionSummary) -> list[str]:
    """The strategies best first: the winner, the rest of the tied set, then the others by their evidence."""
    choice, evidence = summary.choice, summary.evidence
    rest = sorted(
        (name for name in evidence if evidence[name] is not None and name not in choice["tied"]),
        key=lambda name: (
            -evidence[name]["accuracy"],
            math.inf if evidence[name]["loss"] is None else evidence[name]["loss"],
        ),
    )
    return [choice["winner"], *(name for name in choice["tied"] if name != choice["winner"]), *rest]


def _read_outcomes(path: Path) -> dict[str, StrategyOutcome]:
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    return {name: parse_options(StrategyOutcome, outcome, f"{path}: {name}") for name, outcome in saved.items()}


def _why(outcome: StrategyOutcome) -> str:
    return f"{outcome.name}: {outcome.reason or outcome.status}"


def _strategy(
    config: SuiteConfig, data: DataConfig, index: int, name: str, out: Path, progress: StageProgress
) -> StrategyOutcome:
    """Run one strategy into ``out`` (resuming what an interrupted run left there); its val outcome."""
    start = time.perf_counter()
    if name == SUPERNET:
        pipeline = supernet_config(config, data, index)
        try:
            record = run_pipeline(pipeline, out, (out / "config.yaml").is_file(), progress, choose_only=True)
        except BudgetError as err:
            return StrategyOutcome(name, "skipped", f"over budget: {err}")
        except SearchFailed as err:
            return StrategyOutcome(name, "failed", str(err))
        train = pipeline.retrain.select_train()
        scored_by = f"val accuracy (%) of the supernet search's winner, standalone on train ({train.epochs} epochs)"
    else:
        sizes, reason = _sizes_in_budget(config, data, name)
        if not sizes:
            return StrategyOutcome(name, "skipped", reason)
        try:
            record = _sweep(config, sweep_config(config, data, name, sizes), out, progress)
        except SearchFailed as err:
            return StrategyOutcome(name, "failed", str(err))
        scored_by = (
            f"val accuracy (%) of the best of {record.trials_completed} sweep trials on train ({record.epochs} epochs)"
        )
    lr, wd = record.train["lr"], record.train["weight_decay"]  # the supernet winner's: the lr it won at
    completed = record.status == "completed" and record.val_acc is not None
    return StrategyOutcome(
        name=name,
        status="completed" if completed else "failed",
        reason=None if completed else record.reason or "no completed run",
        methods=record.methods,
        trainable_params=record.trainable_params,
        val_acc=record.val_acc,
        val_loss=record.val_loss,
        train={"lr": lr, "weight_decay": wd},
        scored_by=scored_by,
        run_dir=str(out),
        wall_time_s=round(time.perf_counter() - start, 2),
        compute=record.compute,
    )


def _sizes_in_budget(config: SuiteConfig, data: DataConfig, method: str) -> tuple[list[int], str]:
    """The method's sizes whose model fits the budget, and why none does when the list is empty."""
    sizes = METHOD_SIZES[method]
    if config.budget is None:
        return sizes, ""
    sweep = sweep_config(config, data, method)
    space = parse_space(sweep.space, "space")
    depth = backbone_depth(config.backbone)
    low = {key: r.low for key, r in space.train.items()}
    counts = {
        s: params_of(sweep, space, suggest(optuna.trial.FixedTrial({f"{method}.size": s, **low}), space, depth))
        for s in sizes
    }
    fit = [s for s in sizes if counts[s] <= config.budget]
    smallest = min(sizes)
    reason = (
        f"over budget: {method} at its smallest size {smallest} has {counts[smallest]:,} trainable parameters "
        f"> budget {config.budget:,}"
    )
    return fit, "" if fit else reason


def _sweep(config: SuiteConfig, sweep: SweepConfig, out: Path, progress: StageProgress) -> SearchRecord:
    """A single-method sweep on the suite's engine, resumed when ``out`` holds an interrupted one."""
    saved = out / ("study.db" if config.engine == "optuna" else "ray")
    resume = (out / "config.yaml").is_file() and saved.exists()
    _clear_unresumable(out, resume)
    where = Where(gpus_per_trial=1.0 if torch.cuda.is_available() and config.engine == "ray" else 0.0)
    return run_sweep(config.engine, sweep, out, where, resume, progress)


def _clear_unresumable(out: Path, resume: bool) -> None:
    """A sweep killed before it saved anything to resume from starts again from scratch."""
    if not resume and out.is_dir():
        shutil.rmtree(out)


def _prune(
    config: SuiteConfig, data: DataConfig, outcome: StrategyOutcome, folder: Path, progress: StageProgress
) -> PruneChoice | None:
    """With ``prune.enabled`` and a chosen strategy with prompts: its methods trained once more on train as
    the strategy was scored on val (``_selection_run``; the sweeps' trial directories are engine-specific), the
    unpruned reference, then the fraction chosen on val (``<dataset>/prune_choice.json``); else None."""
    if not prunes(config.prune, outcome.methods, f"{folder.name}: the chosen strategy {outcome.name}", progress):
        return None
    source = folder / FOLDER / UNPRUNED
    unpruned = train_or_reuse(_selection_run(config, data, outcome), source, progress.run(f"{FOLDER}/{UNPRUNED}"))
    return choose_pruning(source, config.prune, folder, progress, unpruned.compute)


def _selection_run(config: SuiteConfig, data: DataConfig, outcome: StrategyOutcome) -> RunConfig:
    """The strategy's methods on train, scored on val: its selection schedule and seed (the sweep's, or the
    supernet pipeline's selection runs') with the lr and weight decay its final runs get."""
    if outcome.name == SUPERNET:
        pipeline = supernet_config(config, data)
        train, seed = pipeline.retrain.select_train(), pipeline.seed
    else:
        sweep = sweep_config(config, data, outcome.name)
        train, seed = sweep.train, sweep.seed
    return RunConfig(config.backbone, data, outcome.methods, replace(train, **outcome.train), test=False, seed=seed)


def _final(
    config: SuiteConfig,
    data: DataConfig,
    outcome: StrategyOutcome,
    out: Path,
    progress: StageProgress,
    pruned: PruneChoice | None = None,
) -> Finalist:
    """The strategy's methods on train+val once per seed (``final.train`` with the strategy's lr and
    weight decay), test read once per run; mean +- std over the seeds. ``pruned``: they start from the pruned
    adapter chosen on val (its prune_choice.json is in the dataset folder, ``out``'s grandparent)."""
    methods, params, init, pruning = outcome.methods, outcome.trainable_params, None, None
    if pruned is not None:
        methods, params, init = pruned.methods, pruned.params_after, pruned.init
        pruning = pruned.summary(choice_file(out.parent.parent))
    train = replace(config.final.train, **outcome.train)
    runs = []
    for seed in config.final.seeds:
        run = RunConfig(config.backbone, data, methods, train, final=True, test=True, seed=seed, init=init)
        runs.append(train_or_reuse(run, out / f"seed{seed}", progress.run(f"{out.name}/seed{seed}")))
    row = FinalRow.of_runs(outcome.name, methods, params, outcome.val_acc, runs, pruning)
    return Finalist(row, outcome.train, config.final.seeds, [str(out / f"seed{s}") for s in config.final.seeds])


def _suite_record(config: SuiteConfig, selections: list[DatasetSelection], start: float) -> SelectionRecord:
    datasets = []
    for s in selections:
        chosen = s.choice.row
        datasets.append(
            DatasetChoice(
                dataset=s.dataset,
                chosen=s.chosen,
                methods=chosen.methods,
                trainable_params=chosen.params,
                val_acc=chosen.val_acc,
                test_acc=chosen.test_acc,
                test_acc_std=chosen.test_acc_std,
                seeds=s.choice.seeds,
                row_key=chosen.row_key,
                compute=s.compute(),
                pruning=chosen.pruning,
                selection=s.selection,
            )
        )
    wall = sum(o.wall_time_s for s in selections for o in s.strategies)
    wall += sum(s.compute().get("prune", Compute()).wall_s for s in selections)
    wall += sum(f.row.run_s * len(f.seeds) for s in selections for f in s.finalists if f.row.run_s)
    return SelectionRecord(
        backbone=config.backbone.name,
        engine=config.engine,
        budget=config.budget,
        strategies=config.strategies,
        datasets=datasets,
        wall_time_s=round(wall, 2),
        this_invocation_s=round(time.perf_counter() - start, 2),
        provenance=machine_provenance(test_read=True, train=config.final.train),
    )
