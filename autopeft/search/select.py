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
        final/<strategy>/seed<s>/   `autopeft train` run directories on train+val, test read once
        selection.json           the dataset's record, written last: a finished dataset is never redone
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
import yaml

from autopeft import __version__
from autopeft.config import parse_options
from autopeft.data import BUILTIN_TASKS, DataConfig
from autopeft.errors import BudgetError, ConfigError, SearchFailed
from autopeft.files import write_json, write_text
from autopeft.runconfig import BackboneConfig, RunConfig
from autopeft.runs import RESULT, RunInterrupted, git_sha, train_or_reuse
from autopeft.search.pipeline import (
    PipelineConfig,
    SilentProgress,
    describe_methods,
    parse_pipeline,
    prepare_out,
    run_pipeline,
    standalone_order,
)
from autopeft.search.sweep import SweepConfig, backbone_depth, params_of, parse_sweep
from autopeft.supernet import FloatRange, parse_space, suggest
from autopeft.train import TrainConfig

# Each single method's size list for its sweep (no 0: the strategy is really that method).
METHOD_SIZES: dict[str, list[int]] = {
    "lora": [2, 4, 8, 16],
    "adapter": [8, 16, 32, 64],
    "vpt": [1, 5, 10, 50],
    "kv_prompt": [1, 5, 10],
    "ssf": [1],
}
SUPERNET = "supernet"
STRATEGIES = (*METHOD_SIZES, SUPERNET)
SET_BY_SELECT = {
    "sweep": ("backbone", "data", "space", "budget"),
    "supernet": ("backbone", "data", "baselines"),
}
MIN_SEEDS = 3


@dataclass
class FinalStage:
    """The finalists' runs on train+val: ``train``'s schedule with the learning rate and weight
    decay each strategy was selected with, once per seed."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=3e-3, warmup_epochs=0))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class SuiteConfig:
    """``autopeft select``'s suite. ``datasets``: built-in names or DataConfig mappings.
    ``sweep``: SweepConfig keys for every single-method sweep (its space is built per method);
    ``supernet``: ``autopeft run`` pipeline overrides for the supernet strategy."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    datasets: list[str | dict[str, Any]] = field(default_factory=lambda: ["digits"])
    strategies: list[str] = field(default_factory=lambda: ["lora", "adapter", "vpt", "ssf", "kv_prompt", SUPERNET])
    budget: int | None = None  # most trainable parameters (head excluded) for every strategy
    engine: Literal["optuna", "ray"] = "optuna"  # the single-method sweeps' engine
    lr: FloatRange = field(default_factory=lambda: FloatRange(low=1e-3, high=1e-2))  # searched by every sweep
    sweep: dict[str, Any] = field(default_factory=lambda: {"trials": 6})
    supernet: dict[str, Any] = field(default_factory=dict)
    finalists: int = 2
    final: FinalStage = field(default_factory=FinalStage)

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
        suite = parse_options(SuiteConfig, data, "")
        for section, keys in SET_BY_SELECT.items():
            given = [k for k in keys if k in getattr(suite, section)]
            if given:
                raise ConfigError(f"{section}.{given[0]}: set by select (from the suite's {', '.join(keys)})")
        labels = [dataset_label(d, i) for i, d in enumerate(data_configs(suite))]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"datasets: two datasets share a folder name ({', '.join(labels)}); give distinct tasks")
        for i, data_config in enumerate(data_configs(suite)):  # build each sub-config once: errors now
            sweep_config(suite, data_config, "lora")
            if SUPERNET in suite.strategies:
                supernet_config(suite, data_config, i)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    return suite


def data_configs(suite: SuiteConfig) -> list[DataConfig]:
    """The suite's datasets as DataConfigs; a string is a built-in name, checked here."""
    configs = []
    for i, entry in enumerate(suite.datasets):
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
    given = {**suite.sweep, "backbone": asdict(suite.backbone), "data": asdict(data), "space": space, "budget": budget}
    return parse_sweep(given, "sweep")


def supernet_config(suite: SuiteConfig, data: DataConfig, index: int = 0) -> PipelineConfig:
    """The supernet strategy's pipeline: the suite's backbone, data and budget; its selection runs
    use the sweeps' schedule (so val scores compare), top 3 by default; no baselines."""
    sweep = sweep_config(suite, data, "lora")
    overrides = suite.supernet
    search, retrain = overrides.get("search") or {}, overrides.get("retrain") or {}
    if not isinstance(search, dict) or not isinstance(retrain, dict):
        raise ConfigError("supernet: search and retrain must be mappings of their stage's options")
    if "budget" in search:
        raise ConfigError("supernet.search.budget: set by select (from the suite's budget)")
    given = {
        **overrides,
        "backbone": asdict(suite.backbone),
        "data": asdict(data),
        "baselines": [],
        "search": {**search, "budget": suite.budget},
        "retrain": {"top_k": 3, "train": asdict(sweep.train), "select_epochs": None, "seeds": [0], **retrain},
        "seed": overrides.get("seed", sweep.seed),
    }
    return parse_pipeline(given, "supernet")


def dump_suite(config: SuiteConfig) -> str:
    return yaml.safe_dump(asdict(config), sort_keys=False)


def run_select(
    config: SuiteConfig, out: Path, resume: bool = False, progress: Any = None, again: str = ""
) -> dict[str, Any]:
    """Select a strategy for every dataset of the suite into ``out`` (with ``resume``: finished
    datasets are kept as they are, an interrupted one continues); returns result.json."""
    start = time.perf_counter()
    progress = progress or SilentProgress()
    datasets = data_configs(config)
    again = again or f"autopeft select {out / 'config.yaml'} --out {out} --resume"
    prepare_out(out, resume, dump_suite(config), again)
    selections = []
    try:
        for i, data in enumerate(datasets):
            folder = out / dataset_label(data, i)
            if (folder / "selection.json").is_file():
                progress.say(f"{folder.name}: selected before, kept as it is")
                selections.append(json.loads((folder / "selection.json").read_text()))
                continue
            selections.append(select_dataset(config, data, i, folder, progress))
    except RunInterrupted as err:
        raise RunInterrupted(
            f"interrupted; finished datasets and runs are saved in {out}: continue with `{again}`"
        ) from err
    result = _suite_result(config, selections, start)
    write_text(out / "summary.md", render_summary(result, selections))
    write_json(out / RESULT, result)
    return result


def select_dataset(config: SuiteConfig, data: DataConfig, index: int, folder: Path, progress: Any) -> dict[str, Any]:
    """Every strategy on ``data`` (val only), the finalists on train+val per seed; writes selection.json."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "strategies.json"
    done: dict[str, dict] = json.loads(record.read_text()) if record.is_file() else {}
    for name in config.strategies:
        if name not in done:
            progress.say(f"{folder.name}: strategy {name} on train, scored on val")
            done[name] = _strategy(config, data, index, name, folder / name, progress)
            write_json(record, done)
    outcomes = [done[name] for name in config.strategies]
    scored = [o for o in outcomes if o["status"] == "completed" and o["val_acc"] is not None]
    if not scored:
        raise ConfigError(f"{folder.name}: no strategy finished ({'; '.join(_why(o) for o in outcomes)})")
    order = standalone_order(scored)[::-1]  # best first
    finalists = [scored[i] for i in order[: config.finalists]]
    seeds = config.final.seeds
    progress.say(
        f"{folder.name}: finalists {', '.join(f['name'] for f in finalists)} on train+val, seeds {seeds}, "
        "test read once each"
    )
    rows = [_final(config, data, f, folder / "final" / f["name"], progress) for f in finalists]
    chosen = rows[0]  # the finalist best on val (finalists are in val order); never chosen on test
    selection = {
        "dataset": folder.name,
        "data": asdict(data),
        "selected_on": "val",
        "ranking": [scored[i]["name"] for i in order],
        "strategies": outcomes,
        "finalists": rows,
        "chosen": chosen["name"],
        "methods": chosen["methods"],
        "trainable_params": chosen["trainable_params"],
        "val_acc": chosen["val_acc"],
        "test_acc": chosen["test_acc"],
        "test_acc_std": chosen["test_acc_std"],
        "seeds": seeds,
        "wall_time_s": round(sum(o["wall_time_s"] or 0 for o in outcomes) + sum(r["run_s"] for r in rows), 2),
        "selection_wall_time_s": round(time.perf_counter() - start, 2),
    }
    write_json(folder / "selection.json", selection)
    return selection


def _why(outcome: dict[str, Any]) -> str:
    return f"{outcome['name']}: {outcome.get('reason') or outcome['status']}"


def _strategy(config: SuiteConfig, data: DataConfig, index: int, name: str, out: Path, progress: Any) -> dict:
    """Run one strategy into ``out`` (resuming what an interrupted run left there); its val outcome."""
    start = time.perf_counter()
    if name == SUPERNET:
        pipeline = supernet_config(config, data, index)
        try:
            row = run_pipeline(pipeline, out, (out / "config.yaml").is_file(), progress, choose_only=True)
        except BudgetError as err:
            return _skipped(name, f"over budget: {err}")
        except SearchFailed as err:
            return _skipped(name, str(err), "failed")
        train = pipeline.retrain.select_train()
        lr, wd = train.lr, train.weight_decay
        scored_by = f"val accuracy (%) of the supernet search's winner, standalone on train ({train.epochs} epochs)"
    else:
        sizes, reason = _sizes_in_budget(config, data, name)
        if not sizes:
            return _skipped(name, reason)
        try:
            row = _sweep(config, sweep_config(config, data, name, sizes), out, progress)
        except SearchFailed as err:
            return _skipped(name, str(err), "failed")
        lr, wd = row["train"]["lr"], row["train"]["weight_decay"]
        scored_by = (
            f"val accuracy (%) of the best of {row['trials_completed']} sweep trials on train ({row['epochs']} epochs)"
        )
    completed = row.get("status") == "completed" and row.get("val_acc") is not None
    return {
        "name": name,
        "status": "completed" if completed else "failed",
        "reason": None if completed else row.get("reason", "no completed run"),
        "methods": row["methods"],
        "trainable_params": row["trainable_params"],
        "val_acc": row["val_acc"],
        "val_loss": row.get("val_loss"),
        "train": {"lr": lr, "weight_decay": wd},
        "scored_by": scored_by,
        "run_dir": str(out),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }


def _skipped(name: str, reason: str, status: str = "skipped") -> dict[str, Any]:
    return {"name": name, "status": status, "reason": reason, "val_acc": None, "wall_time_s": 0.0}


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


def _sweep(config: SuiteConfig, sweep: SweepConfig, out: Path, progress: Any) -> dict[str, Any]:
    """A single-method sweep on the suite's engine, resumed when ``out`` holds an interrupted one."""
    if config.engine == "optuna":
        from autopeft.search.optuna_sweep import optuna_sweep

        resume = (out / "config.yaml").is_file() and (out / "study.db").is_file()
        _clear_unresumable(out, resume)
        return optuna_sweep(sweep, out, None, "autopeft", resume, progress)
    from autopeft.search.ray_sweep import ray_sweep

    resume = (out / "config.yaml").is_file() and (out / "ray").is_dir()
    _clear_unresumable(out, resume)
    gpus = 1.0 if torch.cuda.is_available() else 0.0
    return ray_sweep(sweep, out, None, None, 1.0, gpus, 0, resume, progress)


def _clear_unresumable(out: Path, resume: bool) -> None:
    """A sweep killed before it saved anything to resume from starts again from scratch."""
    if not resume and out.is_dir():
        shutil.rmtree(out)


def _final(config: SuiteConfig, data: DataConfig, outcome: dict[str, Any], out: Path, progress: Any) -> dict:
    """The strategy's methods on train+val once per seed (``final.train`` with the strategy's lr and
    weight decay), test read once per run; mean +- std over the seeds."""
    train = replace(config.final.train, **outcome["train"])
    runs = []
    for seed in config.final.seeds:
        run = RunConfig(config.backbone, data, outcome["methods"], train, final=True, test=True, seed=seed)
        runs.append(train_or_reuse(run, out / f"seed{seed}", progress.run(f"{out.name}/seed{seed}")))
    tests = [r["test_acc"] for r in runs if r["status"] == "completed"]
    return {
        "name": outcome["name"],
        "methods": outcome["methods"],
        "trainable_params": outcome["trainable_params"],
        "val_acc": outcome["val_acc"],
        "val_loss": outcome["val_loss"],
        "train": outcome["train"],
        "test_acc": statistics.mean(tests) if tests else None,
        "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else None,
        "test_accs": [r["test_acc"] for r in runs],
        "seeds": config.final.seeds,
        "seeds_completed": len(tests),
        "run_dirs": [str(out / f"seed{s}") for s in config.final.seeds],
        "run_s": round(sum(r["wall_time_s"] or 0 for r in runs), 2),
    }


def _suite_result(config: SuiteConfig, selections: list[dict[str, Any]], start: float) -> dict[str, Any]:
    keys = ("dataset", "chosen", "methods", "trainable_params", "val_acc", "test_acc", "test_acc_std", "seeds")
    return {
        "command": "select",
        "backbone": config.backbone.name,
        "engine": config.engine,
        "budget": config.budget,
        "strategies": config.strategies,
        "datasets": [{k: s[k] for k in keys} for s in selections],
        "wall_time_s": round(sum(s["wall_time_s"] for s in selections), 2),
        "this_invocation_s": round(time.perf_counter() - start, 2),
        "provenance": {
            "autopeft": __version__,
            "git_sha": git_sha(),
            "torch": torch.__version__,
            "selection": "val",
            "reported_epoch": "final",
            "test_read": "once per final run",
        },
        "status": "completed",
    }


def render_summary(result: dict[str, Any], selections: list[dict[str, Any]]) -> str:
    """The per-dataset choice table, then each dataset's strategies with their val scores."""
    seeds = len(selections[0]["seeds"]) if selections else 0
    budget = "none" if result["budget"] is None else f"{result['budget']:,}"
    lines = [
        f"# autopeft select on {result['backbone']}",
        "",
        f"Strategies ranked on val (accuracy, ties by val loss); the chosen one is the finalist best on val. "
        f"test: retrained on train+val, final epoch, mean +- std over {seeds} seeds. params: trainable, "
        f"head excluded. Budget: {budget}. Engine: {result['engine']}.",
        "",
        "| dataset | chosen | methods | params | val % | test % |",
        "|---|---|---|---:|---:|---:|",
    ]
    for s in selections:
        lines.append(
            f"| {s['dataset']} | {s['chosen']} | {describe_methods(s['methods'])} | {s['trainable_params']:,} | "
            f"{_pct(s['val_acc'])} | {_test(s['test_acc'], s['test_acc_std'])} |"
        )
    for s in selections:
        finals = {f["name"]: f for f in s["finalists"]}
        lines += ["", f"## {s['dataset']}", "", "| strategy | params | val % | test % |", "|---|---:|---:|---:|"]
        for o in s["strategies"]:
            if o["status"] != "completed":
                lines.append(f"| {o['name']} | - | - | {o['status']}: {o.get('reason')} |")
                continue
            row = finals.get(o["name"])
            test = _test(row["test_acc"], row["test_acc_std"]) if row else "not a finalist"
            lines.append(f"| {o['name']} | {o['trainable_params']:,} | {_pct(o['val_acc'])} | {test} |")
    lines += ["", f"Wall time {result['wall_time_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _test(mean: float | None, std: float | None) -> str:
    return "failed" if mean is None else f"{mean:.2f} +- {std or 0.0:.2f}"
