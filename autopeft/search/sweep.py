"""`autopeft search`: a sweep of standalone trials over a YAML space, on any engine.

A trial is one training run of a candidate drawn by the space's define-by-run function
(``suggest``): its methods, sizes, placements, scaling factors, learning rate and weight decay.
It trains on train and is scored on val after every epoch (the test split is never read), so
pruners and schedulers can stop it early. The engines (``optuna_sweep``, ``ray_sweep``) differ
only in how trials are scheduled; both end in ``finish_sweep``, which writes the run files every
engine shares:

    out/
      config.yaml      the resolved sweep config
      candidates.csv   every scored trial (pruned ones with their last val score)
      pareto.csv       completed trials on the front of val accuracy up, parameters down
      best.yaml        the best completed trial as a run config for `autopeft train` (train+val)
      result.json      the best trial and the sweep's accounting
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

from autopeft.build import backbone_depth, machine_provenance, methods_count
from autopeft.config import option, parse_options
from autopeft.data import DataConfig, split_sizes
from autopeft.errors import ConfigError, SearchFailed
from autopeft.files import write_json, write_text
from autopeft.jobs.rundir import RunDir
from autopeft.jobs.train import train_or_reuse, train_run
from autopeft.progress import RunProgress, SilentProgress, StageProgress
from autopeft.records import Compute, RunRecord, SearchRecord, SelectionSummary
from autopeft.runconfig import BackboneConfig, RunConfig, dump_run_config, dump_yaml
from autopeft.search.candidates import Candidate, candidate_front, ranked, write_candidates
from autopeft.search.optuna_search import SAMPLERS
from autopeft.selection import SelectionConfig, select_on_counts, select_runs, summarize, without_default_selection
from autopeft.supernet import (
    SearchSpace,
    SubnetConfig,
    cheapest_nonempty,
    check_budget,
    fixed_subnet,
    load_space,
    method_config,
    size_genes,
)
from autopeft.train import TrainConfig

Pruner = Literal["none", "median", "successive_halving", "hyperband"]
METRIC = "val_acc"


@dataclass
class SweepConfig:
    """``autopeft search``'s config: standalone trials drawn from ``space``, trained on train and scored on val."""

    backbone: BackboneConfig = option(factory=BackboneConfig, help="The timm backbone every trial fine-tunes.")
    data: DataConfig = option(
        factory=lambda: DataConfig(name="digits"),
        help="The dataset: trials train on its train split and are scored on val; the test split is never read.",
    )
    space: str | dict[str, Any] = option(
        "full",
        help="The search space: a built-in name (cnn, demo, full, noah, suite_demo, vtab1k), a YAML file (a relative "
        "path is read from the config file's folder) or an inline mapping of methods and train ranges.",
    )
    train: TrainConfig = option(
        factory=lambda: TrainConfig(epochs=3, lr=3e-3, warmup_epochs=0),
        help="Every trial's training schedule; a space that searches lr or weight_decay overrides them per trial.",
    )
    trials: int = option(
        16,
        help="Trials to finish (completed or pruned; at least 1); on the optuna engine a trial over the budget "
        "does not count.",
    )
    sampler: str = option(
        "tpe",
        help="The Optuna sampler that proposes trials (on ray too, through OptunaSearch): tpe, nsga2, gp or random.",
    )
    pareto: bool = option(
        False,
        help="true: two objectives, val accuracy up and trainable parameters down (needs pruner none); "
        "false: val accuracy only.",
    )
    budget: int | None = option(
        None,
        help="The most trainable parameters (head excluded) a trial may have; larger ones are pruned unscored "
        "(optuna engine only; the ray engine refuses a budget). null: no limit.",
    )
    pruner: Pruner = option(
        "median",
        help="Stops weak trials early on their val accuracy per epoch (single objective only): the named Optuna "
        "pruner on the optuna engine, ASHA on ray for any value but none; none: every trial runs all its epochs.",
    )
    retries: int = option(
        1,
        help="How often a trial whose process died is run again from its checkpoint (>= 0): through Tune's "
        "max_failures on ray; on optuna, when the sweep is resumed with --resume.",
    )
    seed: int = option(
        0,
        help="Seeds the sampler's proposals (a worker joining a running shared study draws its own) and every "
        "trial's training run (initialization, data order).",
    )
    selection: SelectionConfig = option(
        factory=SelectionConfig,
        help="How the winner is chosen among the best trials: with kfold or several seeds the shortlist is "
        "re-scored first, else its trials' own val scores are compared.",
    )

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler: got {self.sampler!r}; allowed: {', '.join(SAMPLERS)}")
        if self.trials < 1 or self.retries < 0:
            raise ConfigError(f"need trials >= 1 and retries >= 0, got {self.trials} and {self.retries}")
        if self.pareto and self.pruner != "none":
            raise ConfigError(
                f"pruner: {self.pruner!r} stops trials on one metric, but pareto: true has two objectives; "
                f"set pruner: none or pareto: false"
            )


def parse_sweep(data: Any, where: str, base: Path | None = None) -> SweepConfig:
    """A SweepConfig from a mapping; errors name ``where`` and the key. A relative ``space`` YAML
    path resolves against ``base`` (the config file's folder)."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(SweepConfig.__dataclass_fields__)}")
    space = data.get("space")
    if base is not None and isinstance(space, str) and space.endswith((".yaml", ".yml")):
        data = {**data, "space": str(base / space)}
    try:
        return parse_options(SweepConfig, data, "")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def dump_sweep(config: SweepConfig) -> str:
    """The sweep config as its run directory's config.yaml holds it."""
    return dump_yaml(claimed_sweep(config))


def claimed_sweep(config: SweepConfig) -> dict[str, Any]:
    return without_default_selection(asdict(config))


@dataclass
class Prepared:
    """The checked space and the backbone's block count, for ``suggest``."""

    space: SearchSpace
    depth: int


def prepare(config: SweepConfig) -> Prepared:
    """Load the space and check that the backbone hosts every method at its largest size and that
    the budget admits a candidate that switches a method on; fails before anything is written."""
    space = load_space(config.space)
    depth = backbone_depth(config.backbone)
    params_of(config, space, fixed_subnet(space, depth, {n: max(v) for n, v in size_genes(space, depth).items()}))
    if config.budget is not None:
        count = partial(params_of, config, space)
        check_budget(config.budget, count(cheapest_nonempty(space, depth, count)))
    return Prepared(space, depth)


def params_of(config: SweepConfig, space: SearchSpace, subnet: SubnetConfig) -> int:
    """Trainable parameters of ``subnet`` on the backbone (head excluded), built on the meta device."""
    return methods_count(config.backbone, method_config(space, subnet))


def trial_run(config: SweepConfig, space: SearchSpace, subnet: SubnetConfig) -> RunConfig:
    """The run config of one trial: on train, scored on val, test never read."""
    train = replace(config.train, **dict(subnet.train))
    return RunConfig(config.backbone, config.data, method_config(space, subnet), train, test=False, seed=config.seed)


def run_trial(
    config: SweepConfig,
    space: SearchSpace,
    subnet: SubnetConfig,
    out: Path,
    on_epoch: Callable[[dict[str, Any]], bool],
    resume: bool = False,
    display: RunProgress | None = None,
) -> RunRecord:
    """Train one trial into ``out`` (resuming its checkpoint when ``resume``); returns its record.
    ``on_epoch`` sees every epoch's metrics and returns True to stop the trial there (pruning)."""
    return train_run(trial_run(config, space, subnet), out, resume, display, stop_after=on_epoch)


def scored_by(config: SweepConfig, epochs: int | None = None) -> str:
    """How a trial's score was measured (``epochs``: where a pruned trial stopped)."""
    total = config.train.epochs
    done = f"{epochs} of {total} epochs, pruned" if epochs is not None and epochs < total else f"{total} epochs"
    return f"val accuracy (%) of a standalone run on train ({done})"


@dataclass
class Where:
    """Where a sweep runs, for either engine: the Optuna study's storage and name; the Ray cluster
    address, storage path, resources per trial and concurrency (0: as many as the cluster holds)."""

    storage: str | None = None
    study: str = "autopeft"
    address: str | None = None
    storage_path: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0


@dataclass
class SweepTally:
    """How a sweep's trials ended, and what they processed (summed over every trial's epochs)."""

    engine: str
    storage: str
    study: str | None = None
    address: str | None = None
    nodes: list[str] = field(default_factory=list)
    trials_completed: int = 0
    trials_pruned: int = 0
    trials_failed: int = 0
    trials_retried: int = 0
    compute: Compute = field(default_factory=Compute)


def finish_sweep(
    config: SweepConfig,
    space: SearchSpace,
    rundir: RunDir,
    candidates: list[Candidate],
    tally: SweepTally,
    start: float,
    progress: StageProgress | None = None,
) -> SearchRecord:
    """Write candidates.csv, pareto.csv, best.yaml and result.json; returns the search record. Under a
    ``selection`` with kfold or several seeds, the best ``shortlist`` trials are re-scored and chosen first."""
    out = rundir.path
    completed = [c for c in candidates if not c.scored_by]
    if not completed:
        raise SearchFailed(f"search: no trial completed ({tally}); nothing to choose from")
    write_candidates(out / "candidates.csv", candidates, scored_by(config))
    write_candidates(out / "pareto.csv", candidate_front(completed), scored_by(config))
    shortlist = ranked(completed)[: config.selection.shortlist]
    best, val_acc, val_loss = shortlist[0], None, None
    if config.selection.mode == "kfold" or config.selection.seeds > 1:
        best, selection = _rescore(config, space, out, shortlist, progress)
        evidence = selection.evidence[selection.choice["winner"]]
        val_acc, val_loss = evidence["accuracy"], evidence["loss"]
    else:  # the shortlist's own val scores, each from its trial's run: compared unpaired
        scores = {f"trial{c.round:04d}": (c.score, None if math.isnan(c.loss) else c.loss, c.params) for c in shortlist}
        selection = select_on_counts(config.selection, scores, split_sizes(config.data)[1])
        best = shortlist[list(scores).index(selection.choice["winner"])]
    run = trial_run(config, space, best.subnet)
    write_text(out / "best.yaml", dump_run_config(replace(run, final=True, test=True)))
    wall = round(time.perf_counter() - start, 2)
    record = SearchRecord(
        engine=tally.engine,
        dataset=config.data.label,
        backbone=config.backbone.name,
        methods=run.methods,
        train={"lr": run.train.lr, "weight_decay": run.train.weight_decay},
        trainable_params=best.params,
        val_acc=best.score if val_acc is None else val_acc,
        val_loss=best.loss if val_loss is None else val_loss,
        seed=config.seed,
        epochs=config.train.epochs,
        candidates=len(candidates),
        best_trial=best.round,
        trials_completed=tally.trials_completed,
        trials_pruned=tally.trials_pruned,
        trials_failed=tally.trials_failed,
        trials_retried=tally.trials_retried,
        storage=tally.storage,
        study=tally.study,
        address=tally.address,
        nodes=tally.nodes,
        wall_time_s=wall,
        compute=replace(tally.compute, wall_s=wall),
        provenance=machine_provenance(test_read=False, train=config.train),
        selection=selection,
    )
    return rundir.write(record)


def _rescore(
    config: SweepConfig, space: SearchSpace, out: Path, shortlist: list[Candidate], progress: StageProgress | None
) -> tuple[Candidate, SelectionSummary]:
    """The shortlist's trials scored again as ``config.selection`` says (per fold and seed, in ``out/shortlist``),
    and the one chosen; ``selection.json`` records how."""
    progress = progress or SilentProgress()
    progress.say(f"shortlist: the best {len(shortlist)} trials by val, re-scored; {config.selection.describe()}")
    trials = {f"trial{c.round:04d}": c for c in shortlist}
    runs = {name: trial_run(config, space, c.subnet) for name, c in trials.items()}
    params = {name: c.params for name, c in trials.items()}

    def train(run: RunConfig, where: Path) -> RunRecord:
        return train_or_reuse(run, where, progress.run(f"shortlist/{where.name}"))

    sizes = split_sizes(config.data)
    selected, records = select_runs(runs, config.selection, params, out / "shortlist", train, sizes)
    if selected.choice.winner is None:
        raise SearchFailed(f"search: every shortlisted trial failed when re-scored: {selected.choice.excluded}")
    summary = summarize(config.selection, selected, records)
    write_json(out / "selection.json", asdict(summary))
    return trials[selected.choice.winner], summary


def sweep_dir(out: Path, resume: bool, engine: str) -> RunDir:
    """A sweep's run directory."""
    return RunDir(out, resume, f"search --engine {engine}")
