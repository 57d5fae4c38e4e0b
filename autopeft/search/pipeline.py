"""The main job: supernet -> search -> retrain top-k -> final runs with seeds -> comparison table.

Every stage writes into one run directory and is skipped or resumed when the pipeline is run
again with ``resume``: the supernet from its epoch checkpoint, the search by replaying the
deterministic engine with the scores already in ``candidates.csv``, the standalone runs from
their own run directories.

    out/
      config.yaml  result.json  summary.md  candidates.csv  pareto.csv  best.yaml  search_time.json
      supernet/        checkpoint.pt  metrics.jsonl
      retrain/<k>/     top-k candidates standalone on train, scored on val (no test)
      prune_choice.json  prune/<fraction>/   with prune.enabled: the winner's prompts pruned, rewound on train,
                       scored on val (no test); the fraction chosen (``autopeft.search.prune_stage``)
      baselines/<m>/   each single method at its default size on train, scored on val (no test)
      final/<row>/seed<s>/   the winner (from its pruned adapter when pruned) and each baseline on
                       train+val, test read once

`autopeft search --engine supernet` stops after retrain/ with best.yaml and a search result.json
(the winner's val score, no test); `autopeft retrain` then trains best.yaml per seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from autopeft.backbones import family_of
from autopeft.build import build_model, methods_count, provenance
from autopeft.choice import versus
from autopeft.config import option, parse_options
from autopeft.data import DataConfig, TaskData
from autopeft.errors import ConfigError, SearchFailed
from autopeft.files import write_json, write_text
from autopeft.fit import CHECKPOINT, history_compute
from autopeft.jobs.rundir import RunDir
from autopeft.jobs.train import train_or_reuse
from autopeft.methods import REGISTRY
from autopeft.progress import SilentProgress, StageProgress
from autopeft.records import (
    OUTCOMES,
    Compute,
    Evidence,
    FinalRow,
    Outcomes,
    PipelineRecord,
    RunRecord,
    SearchRecord,
    SelectionSummary,
)
from autopeft.report.summaries import render_table
from autopeft.runconfig import BackboneConfig, RunConfig, dump_run_config
from autopeft.search.candidates import (
    Candidate,
    Scorer,
    candidate_front,
    ranked,
    read_candidates,
    standalone_order,
    write_candidates,
)
from autopeft.search.evolution import EvolutionConfig, evolve
from autopeft.search.optuna_search import SAMPLERS, optuna_search
from autopeft.search.prune_stage import (
    PruneChoice,
    PruneStage,
    check_stage,
    choice_file,
    choose_pruning,
    claimed,
    prunes,
)
from autopeft.search.supernet_stage import Sampling, SupernetSteps, inherited_score, refit_score, train_supernet
from autopeft.selection import SelectionConfig, select_runs, summarize
from autopeft.supernet import SubnetConfig, Supernet, check_shareable, load_space, method_config
from autopeft.train import NonFiniteLoss, Normalization, TrainConfig

SEARCH_TIME = "search_time.json"  # seconds the candidate search took, over every session
SELECTION = "selection.json"  # how the winner was chosen: the choice, each candidate's evidence, the rounds
SCORED_BY = (
    "val loss and accuracy (%) on the supernet's features (search.scoring: refit or inherited head), ranked by loss"
)


@dataclass
class SupernetStage:
    """Supernet training (``autopeft.search.supernet_stage``): which subnets each step runs
    (``sampling``, inside ``search.budget``), in-place distillation, masked optimizer steps, and its
    length: with ``cost`` set, as many epochs as keep its training images (every pass of every subnet)
    within ``cost`` x one final run (``retrain.train`` on train+val), at the final run's learning rate,
    overriding ``train.epochs`` and ``train.lr``. The defaults are the variant and length that ranked
    subnets best near the budget cap in scripts/bench_ranking.py (results/ranking.md)."""

    train: TrainConfig = option(
        factory=lambda: TrainConfig(epochs=6, lr=2e-3, warmup_epochs=1),
        help="The supernet's training schedule (on train); with supernet.cost set, its epochs, warm-up and lr "
        "are replaced as cost says.",
    )
    sampling: Sampling = option(
        "sandwich",
        help="Which subnets a training step runs: uniform (one, every gene drawn uniformly, budget ignored), budget "
        "(one, drawn uniformly within search.budget) or sandwich (the largest in-budget subnet, the smallest "
        "non-empty one and random_subnets random in-budget ones, their gradients accumulated).",
    )
    random_subnets: int = option(
        2,
        help="sandwich only: random in-budget subnets per step, beside the largest and the smallest (an integer "
        ">= 0); each costs one more forward+backward pass of every batch.",
    )
    distill: bool = option(
        False,
        help="sandwich only: true makes every subnet after the largest learn the largest's predictions (in-place "
        "distillation) instead of the labels; it ranked subnets worse in results/ranking.md.",
    )
    masked: bool = option(
        True,
        help="true: slices of shared tensors that no subnet of a step used stay where they are (MaskedAdamW, "
        "needs supernet.train.optimizer adamw); false: the plain optimizer moves every trainable tensor.",
    )
    cost: float | None = option(
        3.0,
        help="Supernet training length as a multiple of one final run's training images (retrain.train on "
        "train+val), counting every pass of every subnet: it sets the epochs (warm-up a tenth of them, at least "
        "one) and the final run's lr, overriding supernet.train's; a positive number, or null for supernet.train "
        "as written.",
    )

    def __post_init__(self) -> None:
        if self.random_subnets < 0:
            raise ConfigError(f"supernet.random_subnets: got {self.random_subnets}; allowed: >= 0")
        if self.cost is not None and self.cost <= 0:
            raise ConfigError(f"supernet.cost: got {self.cost}; allowed: a positive number, or null for train.epochs")

    def passes(self) -> int:
        """Forward+backward passes of each batch in one step."""
        return 2 + self.random_subnets if self.sampling == "sandwich" else 1

    def schedule(self, final: TrainConfig, train_images: int, final_images: int) -> TrainConfig:
        """``train``, with ``cost`` given: its epochs set by the cost (warm-up: a tenth of them, at least one)
        and the final run's learning rate."""
        if self.cost is None:
            return self.train
        epochs = max(1, int(self.cost * final.epochs * final_images // (self.passes() * train_images)))
        return replace(self.train, epochs=epochs, lr=final.lr, warmup_epochs=min(max(1, epochs // 10), epochs - 1))


@dataclass
class SearchStage:
    """Candidate search on val with inherited weights: ``evolution`` or an Optuna sampler."""

    engine: str = option(
        "evolution",
        help="The search engine: evolution (autopeft.search.evolution) or an Optuna sampler: tpe, nsga2, gp or random.",
    )
    evolution: EvolutionConfig = option(
        factory=lambda: EvolutionConfig(population=16, parents=4, mutations=8, crossovers=8, generations=4),
        help="The evolution engine's sizes and mutation rate; read only by engine evolution (written with an Optuna "
        "engine it is refused).",
    )
    trials: int = option(
        64,
        help="Optuna engines only: trials run, each one sampled subnet (over the budget: pruned; a subnet seen "
        "before is not scored again); written with engine evolution it is refused.",
    )
    pareto: bool = option(
        True,
        help="Optuna engines only: true optimizes two objectives, val loss down and trainable parameters down; "
        "false, val loss alone.",
    )
    budget: int | Literal["baselines"] | None = option(
        "baselines",
        help="The most trainable parameters (head excluded) a candidate, and a budget or sandwich supernet step's "
        "subnets, may have: an integer; baselines: the count of the largest of the run's baselines at its default "
        "size (no budget when that is 0), so the searched subnet is never larger than what it is compared with; "
        "null: no budget.",
    )
    seed: int = option(0, help="The engine's random state (the evolution's or the Optuna sampler's seed).")
    scoring: Literal["inherited", "refit"] = option(
        "refit",
        help="How a candidate is scored on val: inherited, with the supernet's weights and shared head; refit, on "
        "its supernet features with a linear head fitted afresh on train (one more forward pass over train per "
        "candidate).",
    )

    def planned_candidates(self) -> int:
        """How many candidates the engine scores at most (evolution: fewer where duplicates or the budget
        leave a generation short)."""
        if self.engine != "evolution":
            return self.trials
        e = self.evolution
        return e.population + (e.generations - 1) * (e.mutations + e.crossovers)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"search.engine: got {self.engine!r}; allowed: {', '.join(ENGINES)}")


class SearchEngine(Protocol):
    """How the search stage proposes subnets of the supernet to ``score``: every candidate scored, in order, each
    also passed to ``on_candidate`` as it is scored."""

    def __call__(
        self, supernet: Supernet, score: Scorer, stage: SearchStage, on_candidate: Callable[[Candidate], None]
    ) -> list[Candidate]: ...


def _evolution(
    supernet: Supernet, score: Scorer, stage: SearchStage, on_candidate: Callable[[Candidate], None]
) -> list[Candidate]:
    return evolve(supernet, score, stage.evolution, stage.budget, on_candidate, stage.seed)


def _optuna(
    supernet: Supernet, score: Scorer, stage: SearchStage, on_candidate: Callable[[Candidate], None]
) -> list[Candidate]:
    return optuna_search(
        supernet, score, stage.engine, stage.trials, stage.pareto, stage.budget, stage.seed, on_candidate
    )


SEARCH_ENGINES: dict[str, SearchEngine] = {"evolution": _evolution, **dict.fromkeys(SAMPLERS, _optuna)}
ENGINES = tuple(SEARCH_ENGINES)


@dataclass
class RetrainStage:
    """Top-k candidates standalone on train for ``select_epochs`` (a short proxy of ``train``'s
    schedule), chosen on val; the winner on train+val per seed with the full ``train`` schedule."""

    top_k: int = option(
        8,
        help="How many of the search's best candidates (by val loss) are trained standalone on train and "
        "compared on val (an integer >= 1).",
    )
    train: TrainConfig = option(
        factory=lambda: TrainConfig(epochs=3, lr=3e-3, warmup_epochs=0),
        help="The schedule of the final runs on train+val, of the winner and of the baselines; the selection "
        "runs on train use it cut to select_epochs.",
    )
    select_epochs: int | None = option(
        1,
        help="Epochs of the selection runs on train (the top-k and the baselines, scored on val), a short proxy "
        "of retrain.train (warm-up cut to fit); an integer >= 1, or null for the full train.epochs.",
    )
    lrs: list[float] | None = option(
        None,
        help="Learning rates every top-k candidate is trained at in the selection runs, the winner's final runs "
        "keeping its own (baselines keep train.lr); a non-empty list of numbers > 0, or null for train.lr only.",
    )
    seeds: list[int] = option(
        factory=lambda: [0, 1],
        help="Seeds of the final runs on train+val, one run of each finalist per seed, test read once each "
        "(mean +- std over them); at least one.",
    )
    final_baselines: Literal["all", "best"] = option(
        "all",
        help="Which baselines get final runs beside the winner: all, or best (only the baseline best on val; the "
        "others show val only).",
    )

    def __post_init__(self) -> None:
        if self.top_k < 1 or not self.seeds:
            raise ConfigError(f"retrain: need top_k >= 1 and at least one seed, got {self.top_k} and {self.seeds}")
        if self.select_epochs is not None and self.select_epochs < 1:
            raise ConfigError(
                f"retrain.select_epochs: got {self.select_epochs}; allowed: >= 1, or null for train.epochs"
            )
        if self.lrs is not None and (not self.lrs or min(self.lrs) <= 0):
            raise ConfigError(f"retrain.lrs: got {self.lrs}; allowed: a non-empty list of numbers > 0, or null")

    def select_train(self) -> TrainConfig:
        """The schedule of the selection runs: ``train`` cut to ``select_epochs`` (warm-up included)."""
        if self.select_epochs is None:
            return self.train
        epochs = self.select_epochs
        return replace(self.train, epochs=epochs, warmup_epochs=min(self.train.warmup_epochs, epochs - 1))


@dataclass
class PipelineConfig:
    """``autopeft run``'s config; the defaults are the embedded offline demo."""

    backbone: BackboneConfig = option(factory=BackboneConfig, help="The timm backbone every run fine-tunes.")
    data: DataConfig = option(
        factory=lambda: DataConfig(name="digits"), help="The dataset and its splits (default: the built-in digits)."
    )
    space: str | dict[str, Any] = option(
        "demo",
        help="The search space: a named space (a file of autopeft/search_spaces/, e.g. demo, noah, vtab1k, full, "
        "cnn), a YAML path (relative to the config file's folder) or an inline mapping of methods and sizes.",
    )
    supernet: SupernetStage = option(factory=SupernetStage, help="The supernet training stage.")
    search: SearchStage = option(factory=SearchStage, help="The candidate search on val with the supernet.")
    retrain: RetrainStage = option(
        factory=RetrainStage, help="The top-k selection runs on train and the final runs on train+val."
    )
    baselines: list[str] = option(
        factory=lambda: ["linear", "lora", "adapter", "vpt", "ssf", "kv_prompt"],
        help="Methods each trained alone at its default size and compared with the searched subnet (names of "
        "autopeft's methods); those the backbone cannot take (vpt, kv_prompt on a CNN) are left out.",
    )
    seed: int = option(
        0,
        help="The seed of the supernet training and of the runs on train (selection runs, baselines); the final "
        "runs use retrain.seeds.",
    )
    prune: PruneStage = option(
        factory=PruneStage, help="E2VPT pruning of the winner's prompts, chosen on val, before its final runs."
    )
    selection: SelectionConfig = option(
        factory=SelectionConfig, help="How the top-k x lr selection runs are scored and the winner chosen."
    )

    def __post_init__(self) -> None:
        for name in self.baselines:
            if name not in REGISTRY:
                raise ConfigError(f"baselines: unknown method '{name}'; allowed: {', '.join(REGISTRY)}")


STAGES = ("supernet", "search", "retrain")  # given keys override the demo defaults one by one


def parse_pipeline(data: Any, where: str, base: Path | None = None) -> PipelineConfig:
    """A PipelineConfig from a mapping; every error names ``where`` and the key. A relative
    ``space`` YAML path resolves against ``base`` (the config file's folder)."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(PipelineConfig.__dataclass_fields__)}")
    space = data.get("space")
    if base is not None and isinstance(space, str) and space.endswith((".yaml", ".yml")):
        data = {**data, "space": str(base / space)}  # an absolute path stays as it is
    _refuse_unread_search_keys(data.get("search"), where)
    defaults = asdict(PipelineConfig())
    merged = {**data, **{k: _merge(defaults[k], data[k]) for k in STAGES if isinstance(data.get(k), dict)}}
    try:
        return parse_options(PipelineConfig, merged, "")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def _refuse_unread_search_keys(search: Any, where: str) -> None:
    """``search.trials`` sizes only the Optuna engines and ``search.evolution`` only evolution: one set away from
    its default for the other engine would be accepted and silently ignored. (At their defaults they pass: a run
    directory's config.yaml spells out every key.)"""
    if not isinstance(search, dict):
        return
    engine, defaults = search.get("engine", SearchStage.engine), SearchStage()
    if engine == "evolution" and search.get("trials", defaults.trials) != defaults.trials:
        raise ConfigError(
            f"{where}: search.trials: the evolution engine does not read it; its size is search.evolution "
            f"(population, generations, mutations, crossovers); trials is for search.engine {', '.join(SAMPLERS)}"
        )
    evolution = search.get("evolution", {})
    written = evolution.items() if isinstance(evolution, dict) else []
    if engine in SAMPLERS and any(getattr(defaults.evolution, k, None) != v for k, v in written):
        raise ConfigError(
            f"{where}: search.evolution: search.engine {engine} does not read it; its size is search.trials"
        )


def _merge(default: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    merged = dict(default)
    for key, value in given.items():
        both = isinstance(value, dict) and isinstance(default.get(key), dict)
        merged[key] = _merge(default[key], value) if both else value
    return merged


def run_pipeline(
    config: PipelineConfig,
    out: Path,
    resume: bool = False,
    progress: StageProgress | None = None,
    choose_only: bool = False,
    note: str = "",
) -> PipelineRecord | SearchRecord:
    """Run (or with ``resume`` continue) the whole pipeline into ``out``; returns its record.

    ``choose_only`` (`autopeft search --engine supernet`): stop once the winner is chosen on val, with
    ``best.yaml`` and a search result.json written (no baselines, no final runs, test never read).
    """
    start = time.perf_counter()
    if choose_only and config.prune.enabled:
        raise ConfigError(
            "prune.enabled: got true; allowed: false here (pruning is a step of autopeft run before its final runs; "
            "autopeft search --engine supernet stops at the val winner)"
        )
    command = "search --engine supernet" if choose_only else "run"
    rundir = RunDir(out, resume, command)
    progress = progress or SilentProgress()
    # a bad space, backbone, budget or prune section fails before anything is written
    try:
        with rundir.writing(claimed(config), "finished stages", lambda: _build(config)) as built:
            _say_left_out(config, built, progress)
            if choose_only:
                chosen = _choose(config, built, out, resume, progress)
                return _search_result(config, built, chosen, rundir, start)
            return _pipeline(config, built, rundir, progress, start, note)
    except NonFiniteLoss as err:
        raise SearchFailed(f"supernet training diverged ({err}); lower supernet.train.lr") from err


@dataclass
class _Built:
    """What ``_build`` checked and made: the supernet's run config, the supernet, the task, its normalisation."""

    run: RunConfig
    supernet: Supernet
    task: TaskData
    norm: Normalization
    budget: int | None  # search.budget resolved
    baselines: list[str]  # the config's baselines that the backbone takes


def _build(config: PipelineConfig) -> _Built:
    """The supernet on its backbone and the task, with the space and budget checked against them."""
    space = load_space(config.space)
    check_shareable(space)
    run = RunConfig(config.backbone, config.data, {"linear": {}}, config.supernet.train, seed=config.seed)
    model, task, norm = build_model(run, with_methods=False)
    sizes = len(task.split("train")), len(task.split("trainval"))
    run = replace(run, train=config.supernet.schedule(config.retrain.train, *sizes))
    supernet = Supernet(model, space)
    baselines = [name for name in config.baselines if REGISTRY[name].takes(family_of(model))]
    budget = config.search.budget
    if budget == "baselines":
        counts = [methods_count(config.backbone, {m: {}}) for m in baselines]
        budget = max(counts) if counts and max(counts) > 0 else None
    if budget is not None:
        supernet.check_budget(budget, "search.budget")
    check_stage(config.prune, config.backbone, {m: spec.options for m, spec in space.methods.items()})
    return _Built(run, supernet, task, norm, budget, baselines)


def _say_left_out(config: PipelineConfig, built: _Built, progress: StageProgress) -> None:
    """One line naming the baselines the backbone cannot take (VPT and key-value prompts on a CNN), left out of
    the run and of the budget; the config keeps them, so its key stays as written."""
    left_out = [name for name in config.baselines if name not in built.baselines]
    if left_out:
        family = family_of(built.supernet.model)
        progress.say(
            f"baselines: {', '.join(left_out)} left out: backbone '{config.backbone.name}' is a CNN ({family}) "
            f"without the token blocks they need"
        )


@dataclass
class _Chosen:
    """The search and selection stages' outcome: every candidate, the top-k, their standalone val
    runs, the winner's index in ``top`` and run directory, and what the supernet and the candidate search cost."""

    candidates: list[Candidate]
    top: list[Candidate]
    standalone: list[RunRecord]
    pick: int
    supernet: Compute
    search: Compute
    lr: float  # the winner's learning rate
    winner_dir: Path  # the winner's standalone run on train
    selection: SelectionSummary

    @property
    def row(self) -> RunRecord:
        return self.standalone[self.pick]

    @property
    def compute(self) -> dict[str, Compute]:
        """What each search stage processed and took."""
        return {"supernet": self.supernet, "search": self.search, "retrain_top_k": self.selection.compute}

    @property
    def cost(self) -> dict[str, float]:
        """Seconds of each search stage."""
        return {stage: compute.wall_s for stage, compute in self.compute.items()}


def _total(runs: list[RunRecord]) -> Compute:
    return Compute.total(r.compute for r in runs)


def _choose(config: PipelineConfig, built: _Built, out: Path, resume: bool, progress: StageProgress) -> _Chosen:
    """Supernet, search, top-k standalone on train scored on val; the winner's run config to best.yaml."""
    run, supernet, task, norm = built.run, built.supernet, built.task, built.norm
    space = supernet.space
    largest = supernet.count(supernet.largest())
    progress.say(f"supernet: {len(space.methods)} methods in {supernet.depth} blocks, {largest:,} parameters at most")
    supernet_dir = out / "supernet"
    resumed = (supernet_dir / CHECKPOINT).is_file()
    stage = config.supernet
    steps = SupernetSteps(supernet, stage.sampling, built.budget, config.seed, stage.random_subnets, stage.distill)
    bar = progress.run("supernet")
    history, supernet_s = train_supernet(steps, task, norm, run, supernet_dir, stage.masked, resumed, bar)
    trained = replace(history_compute(history), wall_s=round(supernet_s, 2))
    scorer = {"inherited": inherited_score, "refit": refit_score}[config.search.scoring]
    score = scorer(supernet, task, norm)
    candidates, search_s = _search(replace(config.search, budget=built.budget), supernet, score, out, resume, progress)
    per_candidate = len(task.split("val")) + (len(task.split("train")) if config.search.scoring == "refit" else 0)
    searched = Compute(0, per_candidate * len(candidates), round(search_s, 2))
    top = ranked(candidates, "loss")[: config.retrain.top_k]
    lrs = config.retrain.lrs or [config.retrain.train.lr]
    progress.say(
        f"retrain: the top {len(top)} of {len(candidates)} candidates standalone on train"
        + (f" at lr {', '.join(f'{lr:g}' for lr in lrs)}" if config.retrain.lrs else "")
        + ", chosen on val"
    )
    tried = {_retrain_dir(i, lr, lrs): (c, lr) for i, c in enumerate(top, 1) for lr in lrs}
    runs_of = {name: _run_config(config, method_config(space, c.subnet), lr=lr) for name, (c, lr) in tried.items()}
    params = {name: c.params for name, (c, _) in tried.items()}
    progress.say(config.selection.describe())
    sizes = len(task.split("train")), len(task.split("val"))
    train = partial(_train_or_reuse, progress=progress)
    selected, runs = select_runs(runs_of, config.selection, params, out / "retrain", train, sizes)
    name = selected.choice.winner
    if name is None:
        raise SearchFailed(f"every selection run failed: {selected.choice.excluded}")
    pick, lr, evidence = list(tried).index(name), tried[name][1], selected.evidence[name]
    standalone = [first for first, *_ in runs.values()]  # each candidate's first run: first fold, first seed
    if len(runs[name]) > 1:  # its val: the evidence pooled over folds and seeds
        standalone[pick] = replace(standalone[pick], val_acc=evidence.accuracy, val_loss=evidence.loss)
    final = replace(config.retrain.train, lr=lr)
    best = RunConfig(
        config.backbone, config.data, runs_of[name].methods, final, final=True, seed=config.retrain.seeds[0]
    )
    write_text(out / "best.yaml", dump_run_config(best))
    summary = summarize(config.selection, selected, runs)
    write_json(out / SELECTION, asdict(summary))
    return _Chosen(candidates, top, standalone, pick, trained, searched, lr, out / "retrain" / name, summary)


def _wall_s(start: float, stages: Iterable[Compute], resumed: bool) -> float:
    """The run's wall time: this session's, or for a resumed run the stages' own times summed over every
    session (this session alone would leave out what earlier ones did)."""
    return round(Compute.total(stages).wall_s if resumed else time.perf_counter() - start, 2)


def _retrain_dir(number: int, lr: float, lrs: list[float]) -> str:
    """``01``, ``02``, ... per candidate; ``01-lr0.01`` when candidates are tried at several lrs."""
    return f"{number:02d}" + (f"-lr{lr:g}" if len(lrs) > 1 else "")


def _pipeline(
    config: PipelineConfig, built: _Built, rundir: RunDir, progress: StageProgress, start: float, note: str
) -> PipelineRecord:
    run, task, norm, out, resume = built.run, built.task, built.norm, rundir.path, rundir.resume
    chosen = _choose(config, built, out, resume, progress)
    pruned = _prune(config, chosen, out, progress)
    rows = {"searched": chosen.row}
    for name in built.baselines:
        progress.say(f"baseline: {name} at its default size on train, scored on val")
        rows[name] = _train(config, {name: {}}, out / "baselines" / name, progress)
    chosen.selection.versus_lora = _versus_lora(chosen, out, rows)
    write_json(out / SELECTION, asdict(chosen.selection))
    finalists = _finalists(rows, config.retrain.final_baselines)
    progress.say(f"final: {', '.join(finalists)} on train+val, seeds {config.retrain.seeds}, test read once each")
    lrs, prunings = {"searched": chosen.lr}, {"searched": pruned}  # baselines keep the schedule's lr, unpruned
    table = [
        _final_row(config, name, run, out, progress, name in finalists, lrs.get(name), prunings.get(name))
        for name, run in rows.items()
    ]
    searched = table[0]
    spent = {} if pruned is None else {"prune": pruned.compute}
    cost = {**chosen.cost, **{stage: c.wall_s for stage, c in spent.items()}}
    compute = {
        **chosen.compute,
        **spent,
        "baselines": _total([r for name, r in rows.items() if name != "searched"]),
        "final": Compute.total(row.compute for row in table),
    }
    record = PipelineRecord(
        dataset=task.name,
        backbone=config.backbone.name,
        methods=searched.methods,
        trainable_params=searched.params,
        seed=config.seed,
        seeds=config.retrain.seeds,
        epochs=config.retrain.train.epochs,
        select_epochs=config.retrain.select_train().epochs,
        candidates=len(chosen.candidates),
        scoring=config.search.scoring,
        retrained=len(chosen.top),
        table=table,
        val_acc=searched.val_acc,
        test_acc=searched.test_acc,
        test_acc_std=searched.test_acc_std,
        budget=built.budget,
        search_cost_s=cost,
        search_cost_ratio=round(sum(cost.values()) / searched.run_s, 2) if searched.run_s else None,
        wall_time_s=_wall_s(start, compute.values(), resume),
        compute=compute,
        provenance=provenance(run, task, norm, test_read=True),
        selection=chosen.selection,
    )
    write_text(out / "summary.md", render_table(record) + (f"\n{note}\n" if note else ""))
    return rundir.write(record)


def _versus_lora(chosen: _Chosen, out: Path, rows: dict[str, RunRecord]) -> str | None:
    """Whether the winner is tied with the default LoRA baseline, where both were scored on the holdout val."""
    ours, theirs = out / "retrain" / chosen.selection.choice["winner"] / OUTCOMES, out / "baselines" / "lora" / OUTCOMES
    if "lora" not in rows or not ours.is_file() or not theirs.is_file():
        return None
    searched = Evidence.from_outcomes(Outcomes.read(ours), params=chosen.row.trainable_params)
    lora = Evidence.from_outcomes(Outcomes.read(theirs), params=rows["lora"].trainable_params)
    return versus("the searched subnet", searched, "the default LoRA baseline", lora, chosen.selection.alpha)


def _prune(config: PipelineConfig, chosen: _Chosen, out: Path, progress: StageProgress) -> PruneChoice | None:
    """With ``prune.enabled`` and a winner with prompts: its fraction chosen on val (``prune_choice.json``), or
    None."""
    if not prunes(config.prune, chosen.row.methods, "the searched subnet", progress):
        return None
    return choose_pruning(chosen.winner_dir, config.prune, out, progress)


def _search_result(
    config: PipelineConfig, built: _Built, chosen: _Chosen, rundir: RunDir, start: float
) -> SearchRecord:
    """result.json of a supernet search stopped at its winner: the winner's standalone val run, no test."""
    row, train = chosen.row, replace(config.retrain.select_train(), lr=chosen.lr)
    record = SearchRecord(
        engine="supernet",
        dataset=built.task.name,
        backbone=config.backbone.name,
        methods=row.methods,
        train={"lr": train.lr, "weight_decay": train.weight_decay},
        trainable_params=row.trainable_params,
        val_acc=row.val_acc,
        val_loss=row.val_loss,
        seed=config.seed,
        epochs=train.epochs,
        candidates=len(chosen.candidates),
        scoring=config.search.scoring,
        retrained=len(chosen.top),
        search_cost_s=chosen.cost,
        wall_time_s=_wall_s(start, chosen.compute.values(), rundir.resume),
        status=row.status,
        compute=Compute.total(chosen.compute.values()),
        provenance=provenance(built.run, built.task, built.norm, test_read=False),
        selection=chosen.selection,
    )
    return rundir.write(record)


def _search(
    stage: SearchStage, supernet: Supernet, score, out: Path, resume: bool, progress
) -> tuple[list[Candidate], float]:
    """Score candidates, and the seconds scoring them took over every session; on resume the engine replays
    with the scores already in candidates.csv (and the seconds spent on them in search_time.json)."""
    known = read_candidates(out / "candidates.csv") if resume and (out / "candidates.csv").is_file() else {}
    before = json.loads((out / SEARCH_TIME).read_text())["wall_s"] if known and (out / SEARCH_TIME).is_file() else 0.0
    start = time.perf_counter()
    found: list[Candidate] = []

    def cached(subnet: SubnetConfig) -> tuple[float, float]:
        return known[subnet] if subnet in known else score(subnet)

    planned = stage.planned_candidates()
    every = max(1, planned // 8)

    def record(candidate: Candidate) -> None:
        found.append(candidate)
        write_candidates(out / "candidates.csv", found, SCORED_BY, "loss")
        write_json(out / SEARCH_TIME, {"wall_s": before + time.perf_counter() - start})
        if len(found) % every == 0:
            best = ranked(found, "loss")[0]
            progress.say(
                f"search: {len(found)}/{planned} candidates scored, best so far val {best.score:.2f}% "
                f"(loss {best.loss:.4f}, {best.params:,} parameters), {(time.perf_counter() - start) / 60:.1f} min"
            )

    progress.say(
        f"search: {stage.engine} on val, {stage.scoring} head" + (f", budget {stage.budget:,}" if stage.budget else "")
    )
    candidates = SEARCH_ENGINES[stage.engine](supernet, cached, stage, record)
    if not candidates:
        raise ConfigError("search: no candidate fits the space and budget")
    write_candidates(out / "candidates.csv", candidates, SCORED_BY, "loss")
    write_candidates(out / "pareto.csv", candidate_front(candidates, "loss"), SCORED_BY, "loss")
    seconds = before + time.perf_counter() - start
    write_json(out / SEARCH_TIME, {"wall_s": seconds})
    return candidates, seconds


def _train(
    config: PipelineConfig,
    methods: dict,
    out: Path,
    progress: StageProgress,
    seed: int | None = None,
    lr: float | None = None,
    init: str | None = None,
) -> RunRecord:
    """A standalone run of ``_run_config`` into ``out`` (read back when finished there)."""
    return _train_or_reuse(_run_config(config, methods, seed, lr, init), out, progress)


def _run_config(
    config: PipelineConfig, methods: dict, seed: int | None = None, lr: float | None = None, init: str | None = None
) -> RunConfig:
    """A standalone run: on train scored on val (no test) when ``seed`` is None, else on train+val
    with that seed and the test split read once at the end; ``lr`` replaces the schedule's; ``init``: the
    adapter it starts from (a pruned one)."""
    final = seed is not None
    seed = config.seed if seed is None else seed
    train = config.retrain.train if final else config.retrain.select_train()
    train = train if lr is None else replace(train, lr=lr)
    return RunConfig(config.backbone, config.data, methods, train, final=final, test=final, seed=seed, init=init)


def _train_or_reuse(run: RunConfig, out: Path, progress: StageProgress) -> RunRecord:
    return train_or_reuse(run, out, progress.run(f"{out.parent.name}/{out.name}"))


def _finalists(rows: dict[str, RunRecord], which: str) -> list[str]:
    """The searched subnet and every baseline (``all``) or the baseline best on val (``best``)."""
    baselines = [name for name in rows if name != "searched"]
    if which == "best" and baselines:
        order = standalone_order([(rows[name].val_acc, rows[name].val_loss) for name in baselines])
        baselines = [baselines[order[-1]]]
    return ["searched", *baselines]


def _final_row(
    config: PipelineConfig,
    name: str,
    val_run: RunRecord,
    out: Path,
    progress: StageProgress,
    final: bool,
    lr: float | None = None,
    pruned: PruneChoice | None = None,
) -> FinalRow:
    """``val_run``'s methods retrained on train+val once per seed (when ``final``), test read once
    per run; mean and std over seeds. ``pruned``: they start from the pruned adapter chosen on val."""
    if pruned is None:
        methods, params, init, pruning = val_run.methods, val_run.trainable_params, None, None
    else:
        methods, params, init = pruned.methods, pruned.params_after, pruned.init
        pruning = pruned.summary(choice_file(out))
    seeds = config.retrain.seeds if final else []
    runs = [_train(config, methods, out / "final" / name / f"seed{s}", progress, s, lr, init) for s in seeds]
    return FinalRow.of_runs(name, methods, params, val_run.val_acc, runs, pruning)
