"""Is the search worth running? The supernet pipeline against tuned single methods, Optuna and random
search on standalone trials, and the largest LoRA that fits, under one parameter budget and counted compute.

    HF_HUB_OFFLINE=1 python scripts/search_vs_sweep.py --plan        # runs per stage, done, estimated CPU time
    HF_HUB_OFFLINE=1 python scripts/search_vs_sweep.py --workers 2   # results/search_vs_sweep.md + bench json

The ground (tasks, budget, grids, seeds, schedules) is fixed in ``autopeft/ground.yaml`` and the constants
below, and written into the header of the report before any run; see the report for the protocol. Every
standalone run is cached by its config hash (``runs/cache``); searches resume from their run directories
(``runs/search_vs_sweep``), and a finished one is read back (``scripts/ledger.py restore`` brings the committed
records of both to a fresh clone).
``--tasks`` runs a subset; the report covers it and the tasks the bench JSON already holds, and names the
missing ones. ``--render`` rewrites both reports from ``results/bench/search_vs_sweep.json`` without running
anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from lib.charges import charge, images_per_run, seconds_per_image
from lib.study import PlanRow, plan_table, recorded_time, run_jobs, study_arguments

from autopeft.data import BUILTIN_TASKS, DataConfig, builtin_arrays
from autopeft.errors import ConfigError
from autopeft.ground import load_ground
from autopeft.jobs.rundir import RESULT
from autopeft.jobs.train import cached, cached_run
from autopeft.records import Compute, RunRecord, SearchRecord, read_record
from autopeft.runconfig import BackboneConfig, RunConfig, dump_yaml, load_yaml, read_yaml
from autopeft.runkey import changed_keys
from autopeft.search.candidates import best_on_val
from autopeft.search.engines import run_sweep
from autopeft.search.pipeline import parse_pipeline, run_pipeline
from autopeft.search.prune_stage import claimed
from autopeft.search.sweep import Where, parse_sweep
from autopeft.selection import without_default_selection
from autopeft.stats import paired_seeds, t_interval, verdict
from autopeft.supernet import SPACES

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "search_vs_sweep.md"
BASELINES = ROOT / "results" / "baselines.md"  # every single method at its best size and lr, from the same runs
JSON = ROOT / "results" / "bench" / "search_vs_sweep.json"
COMMAND = "HF_HUB_OFFLINE=1 python scripts/search_vs_sweep.py"
BACKBONE = "vit_demo_fmnist"
TASKS = ("digits", "mnist5k", "shapes_position", "shapes_orientation")
FINAL_SEEDS = (0, 1, 2)
SEARCH_SEEDS = (0, 1)
HALF = [0, 0, 0, 1, 1, 1]
# SSF's transformer sites when this comparison's runs were made: the later default adds "merging", Swin's patch
# merging, which this ViT lacks (no numbers change), but which would change the run keys and retrain every SSF run.
SSF_SITES = ["patch_embed", "norm1", "qkv", "proj", "norm2", "fc1", "fc2", "norm"]
SIZES: dict[str, list[dict[str, Any]]] = {  # 3 sizes (SSF: placements) per method, all inside the budget
    "lora": [{"rank": r, "targets": ["q", "v"]} for r in (2, 4, 8)],
    "adapter": [{"dim": k} for k in (4, 8, 15)],
    "vpt": [{"length": p} for p in (2, 8, 32)],
    "kv_prompt": [{"length": t} for t in (2, 8, 32)],
    "ssf": [{"enabled": e, "sites": SSF_SITES} for e in (1, HALF, [1 - e for e in HALF])],
}
REFERENCE_LRS = {"linear": None, "full": (1e-4, 3e-4, 1e-3)}  # None: the ground's grid; full FT needs smaller lrs
LARGEST_LORA = {"lora": {"rank": 8, "targets": ["q", "v"]}}
PIPELINE_TOP_K = 2  # supernet finalists, each trained with every lr of the grid (3 would pass C_sweep / 3)
SEARCHES = {"supernet pipeline": "supernet", "Optuna TPE": "tpe", "random in budget": "random"}  # name: run folder
# --plan's fallbacks: seconds per image of a run (1 thread, 2 jobs on 2 cores) for a method the cache has no run of,
# and a search's compute as a fraction of C_sweep when the JSON records none (the pipeline's design bound)
SECONDS_PER_IMAGE = 0.010
SEARCH_FRACTION = 1 / 3


def backbone() -> BackboneConfig:
    return BackboneConfig(name=BACKBONE)


def run_config(task: str, methods: dict, lr: float, final: bool = False, seed: int = 0) -> RunConfig:
    train = load_ground().schedule(BACKBONE, task).train(lr=lr)
    return RunConfig(backbone(), DataConfig(name=task), methods, train, final=final, test=final, seed=seed)


# Jobs (each a process of its own, 1 thread) ---------------------------------------------------------------------


def standalone_job(job: tuple[str, dict, float, bool, int, Path]) -> RunRecord:
    task, methods, lr, final, seed, cache = job
    torch.set_num_threads(1)
    return cached_run(run_config(task, methods, lr, final, seed), cache)


def with_comparison_sites(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``methods`` with SSF at this comparison's sites: a search resolves them to the library's current default."""
    return {name: {**options, "sites": SSF_SITES} if name == "ssf" else options for name, options in methods.items()}


def choice(record: SearchRecord) -> dict[str, Any]:
    """What a searched strategy chose, and what choosing cost."""
    return {
        "methods": with_comparison_sites(record.methods),
        "lr": record.train["lr"],
        "val_acc": record.val_acc,
        "compute": asdict(record.compute),
        "params": record.trainable_params,
    }


def pipeline_job(job: tuple[str, int, Path]) -> dict[str, Any]:
    """autopeft's supernet pipeline stopped at its winner (every finalist at every lr of the grid)."""
    task, seed, root = job
    torch.set_num_threads(1)
    ground = load_ground()
    schedule = ground.schedule(BACKBONE, task)
    config = parse_pipeline(
        {
            "backbone": asdict(backbone()),
            "data": {"name": task},
            "space": "demo",
            "supernet": {"train": asdict(schedule.train())},
            "search": {"budget": ground.budget, "seed": seed},
            "retrain": {
                "top_k": PIPELINE_TOP_K,
                "train": asdict(schedule.train()),
                "select_epochs": None,
                "lrs": list(ground.lr_grid),
                "seeds": [0],
            },
            "seed": seed,
        },
        "search_vs_sweep",
    )
    out = root / task / f"supernet_seed{seed}"
    resume = (out / "config.yaml").is_file()
    return choice(finished(out, claimed(config)) or run_pipeline(config, out, resume, choose_only=True))


def sweep_job(job: tuple[str, str, int, int, Path]) -> dict[str, Any]:
    """Optuna TPE or random sampling over the same space, standalone trials at the full schedule."""
    task, sampler, seed, trials, root = job
    torch.set_num_threads(1)
    ground = load_ground()
    schedule = ground.schedule(BACKBONE, task)
    low, high = min(ground.lr_grid), max(ground.lr_grid)
    space = {**read_yaml(SPACES / "demo.yaml"), "train": {"lr": {"low": low, "high": high}}}  # the supernet's space
    config = parse_sweep(
        {
            "backbone": asdict(backbone()),
            "data": {"name": task},
            "space": space,
            "train": asdict(schedule.train()),
            "trials": trials,
            "sampler": sampler,
            "pruner": "none",
            "budget": ground.budget,
            "seed": seed,
        },
        "search_vs_sweep",
    )
    out = root / task / f"{sampler}_seed{seed}"
    resume = (out / "study.db").is_file()
    return choice(
        finished(out, without_default_selection(asdict(config)))
        or run_sweep("optuna", config, out, Where(), resume, None)
    )


def finished(out: Path, config: dict[str, Any]) -> SearchRecord | None:
    """The record of a search that finished in ``out`` with ``config`` (as its config.yaml keeps it): read back,
    also where ``scripts/ledger.py`` restored only its records (no supernet, no trials)."""
    if not (out / RESULT).is_file():
        return None
    changed = changed_keys(read_yaml(out / "config.yaml"), load_yaml(dump_yaml(config)))
    if changed:
        raise ConfigError(f"{out}: finished with another {', '.join(changed)}; move it away to search again")
    record = read_record(out / RESULT)
    if not isinstance(record, SearchRecord):
        raise ConfigError(f"{out / RESULT}: a '{record.command}' result, not a search")
    return record


# The comparison ---------------------------------------------------------------------------------------------------


@dataclass
class Choice:
    """A strategy's choice on one task (one search seed): methods, lr, val accuracy, and its finals."""

    methods: dict[str, dict[str, Any]]
    lr: float
    val_acc: float | None
    params: int | None = None
    tests: list[float | None] = field(default_factory=list)  # per final seed


@dataclass
class Strategy:
    name: str
    choices: list[Choice]  # one per search seed (one for the deterministic strategies)
    compute: Compute  # mean over search seeds, of choosing (finals not included)
    note: str = ""
    outside_budget: bool = False

    def per_seed(self) -> list[float]:
        """Test accuracy per final seed, averaged over the search seeds (the values paired with other strategies)."""
        return [statistics.mean(c.tests[i] for c in self.choices) for i in range(len(FINAL_SEEDS))]

    def pooled(self) -> list[float]:
        return [t for c in self.choices for t in c.tests]


def best_of(runs: dict[tuple, RunRecord]) -> tuple[tuple, RunRecord]:
    """The key and run best on val (``best_on_val``'s rule)."""
    key = list(runs)[best_on_val(list(runs.values()))]
    return key, runs[key]


def paired(strategy: list[float], baseline: list[float]) -> tuple[float, float]:
    """Mean paired difference over final seeds and the half-width of its 95% t-interval."""
    diff = paired_seeds(dict(zip(FINAL_SEEDS, strategy, strict=True)), dict(zip(FINAL_SEEDS, baseline, strict=True)))
    return diff.mean, math.nan if diff.half is None else diff.half


def grid_jobs(task: str, cache: Path) -> list[tuple]:
    lrs = load_ground().lr_grid
    jobs = [(task, {m: o}, lr, False, 0, cache) for m, sizes in SIZES.items() for o in sizes for lr in lrs]
    return jobs + [(task, {m: {}}, lr, False, 0, cache) for m, grid in REFERENCE_LRS.items() for lr in (grid or lrs)]


def final_jobs(task: str, choice: Choice, cache: Path) -> list[tuple]:
    return [(task, choice.methods, choice.lr, True, seed, cache) for seed in FINAL_SEEDS]


@dataclass
class TaskResult:
    task: str
    strategies: list[Strategy]
    per_method: dict[str, tuple[dict, float, float | None]]  # method -> (options, lr, val acc) best on val
    c_sweep: Compute
    trials: int
    run_s: float | None = None  # recorded wall time of every distinct run and search behind the task, 1 thread each
    priced: int = 0  # runs whose wall time was never recorded, priced at their method's median seconds per image

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskResult:
        """The inverse of ``asdict``: a task as ``results/bench/search_vs_sweep.json`` keeps it."""
        strategies = [
            Strategy(
                s["name"], [Choice(**c) for c in s["choices"]], Compute(**s["compute"]), s["note"], s["outside_budget"]
            )
            for s in data["strategies"]
        ]
        per_method = {m: (options, lr, acc) for m, (options, lr, acc) in data["per_method"].items()}
        c_sweep = Compute(**data["c_sweep"])
        return cls(
            data["task"], strategies, per_method, c_sweep, data["trials"], data.get("run_s"), data.get("priced", 0)
        )


def run_task(task: str, pool: ProcessPoolExecutor, cache: Path, root: Path) -> TaskResult:
    """Every strategy on ``task``: its choice on val and its final runs (the test split read once each)."""
    cost = seconds_per_image(cache, BACKBONE, [*SIZES, *REFERENCE_LRS], SECONDS_PER_IMAGE)
    jobs = grid_jobs(task, cache)
    grid_bills = charged(jobs, run_jobs(pool, standalone_job, jobs, f"{task}: size x lr grid"), cost)
    grid = dict(zip(((json.dumps(j[1], sort_keys=True), j[2]) for j in jobs), (r for r, _ in grid_bills), strict=True))
    pipelines = run_jobs(pool, pipeline_job, [(task, s, root) for s in SEARCH_SEEDS], f"{task}: supernet pipelines")
    c_sweep = Compute.total(r.compute for (key, _), r in grid.items() if _method(key) in SIZES)
    one_run = statistics.median(r.compute.images for (key, _), r in grid.items() if _method(key) in SIZES)
    c_pipe = statistics.mean(Compute(**p["compute"]).images for p in pipelines)
    trials = max(1, round(c_pipe / one_run))
    sweeps = {
        sampler: run_jobs(
            pool, sweep_job, [(task, sampler, s, trials, root) for s in SEARCH_SEEDS], f"{task}: {sampler}"
        )
        for sampler in ("tpe", "random")
    }
    searched = {"supernet": pipelines, **sweeps}
    strategies = [_tuned(grid, c_sweep)]
    strategies += [s for name, folder in SEARCHES.items() for s in _searched(name, searched[folder])]
    strategies += [_fixed("largest LoRA (rank 8, q v), lr tuned", grid, LARGEST_LORA)]
    strategies += [_fixed(f"{m} (reference)", grid, {m: {}}, outside=True) for m in REFERENCE_LRS]
    jobs = [job for s in strategies for c in s.choices for job in final_jobs(task, c, cache)]
    final_bills = charged(jobs, run_jobs(pool, standalone_job, jobs, f"{task}: final runs"), cost)
    records = [r for r, _ in final_bills]
    finals = iter(records)
    for strategy in strategies:
        for choice in strategy.choices:
            choice.tests = [next(finals).test_acc for _ in FINAL_SEEDS]
    distinct = {json.dumps(job[:5], sort_keys=True): r.compute for job, r in zip(jobs, records, strict=True)}
    searches = [Compute(**r["compute"]) for results in searched.values() for r in results]
    run_s = Compute.total([*(r.compute for r in grid.values()), *searches, *distinct.values()]).wall_s
    per_method = {}
    for method in SIZES:
        (key, lr), best = best_of({k: r for k, r in grid.items() if _method(k[0]) == method})
        per_method[method] = (json.loads(key)[method], lr, best.val_acc)
    priced = sum(priced for _, priced in [*grid_bills, *final_bills])
    return TaskResult(task, strategies, per_method, c_sweep, trials, run_s, priced)


def charged(jobs: list[tuple], records: list[RunRecord], cost: dict[str, float]) -> list[tuple[RunRecord, bool]]:
    """Each job's record with the compute the ledger charges it (``lib.charges``: its schedule's images, its wall
    time as recorded or priced), and whether it was priced; cache hits pay as the runs they read back."""
    bills = []
    for job, record in zip(jobs, records, strict=True):
        config = run_config(*job[:5])
        bill = charge(config, record, cost, len(builtin_arrays(config.data.name)["test"][1]))
        bills.append((replace(record, compute=bill.compute), bill.priced))
    return bills


def _method(key: str) -> str:
    return next(iter(json.loads(key)))


def _tuned(grid: dict, c_sweep: Compute) -> Strategy:
    (key, lr), best = best_of({k: r for k, r in grid.items() if _method(k[0]) in SIZES})
    choice = Choice(json.loads(key), lr, best.val_acc, best.trainable_params)
    return Strategy("tuned single method (best on val)", [choice], c_sweep, note=f"{_method(key)}")


def _searched(name: str, results: list[dict]) -> list[Strategy]:
    choices = [Choice(r["methods"], r["lr"], r["val_acc"], r["params"]) for r in results]
    compute = Compute.total(Compute(**r["compute"]) for r in results)
    n = len(results)
    mean = Compute(compute.train_images // n, compute.eval_images // n, round(compute.wall_s / n, 1))
    return [Strategy(name, choices, mean, note=f"{n} search seeds pooled")]


def _fixed(name: str, grid: dict, methods: dict, outside: bool = False) -> Strategy:
    key = json.dumps(methods, sort_keys=True)
    runs = {k: r for k, r in grid.items() if k[0] == key}
    (_, lr), best = best_of(runs)
    compute = Compute.total(r.compute for r in runs.values())
    return Strategy(name, [Choice(methods, lr, best.val_acc, best.trainable_params)], compute, outside_budget=outside)


# --plan -----------------------------------------------------------------------------------------------------------


def is_cached(job: tuple, cache: Path) -> bool:
    return cached(run_config(*job[:5]), cache) is not None


def plan(tasks: list[str], cache: Path, root: Path, workers: int) -> str:
    """Per task and stage: runs needed, how many are done, and a rough CPU time. Seconds per image are measured on
    the cache's runs; a search costs the largest searched / C_sweep ratio the JSON records (SEARCH_FRACTION when
    none) of the grid's C_sweep; finals whose choices are not recorded yet count as not done."""
    cost = seconds_per_image(cache, BACKBONE, [*SIZES, *REFERENCE_LRS], SECONDS_PER_IMAGE)
    known = recorded()
    ratios = [s.compute.images / r.c_sweep.images for r in known.values() for s in r.strategies if s.name in SEARCHES]
    fraction = max(ratios, default=SEARCH_FRACTION)
    mean = statistics.mean(cost.values())  # a searched subnet's runs, priced as the mean single method
    rows: list[PlanRow] = []
    for task in tasks:
        train_images, final_images = images_per_run(task, load_ground().schedule(BACKBONE, task).epochs)
        grid = [(job, is_cached(job, cache), train_images * cost[next(iter(job[1]))]) for job in grid_jobs(task, cache)]
        left = sum(seconds for _, done, seconds in grid if not done)
        rows.append((task, "size x lr grid (train)", len(grid), sum(done for _, done, _ in grid), left))
        c_sweep_s = sum(seconds for job, _, seconds in grid if next(iter(job[1])) in SIZES)
        for name, folder in SEARCHES.items():
            done = sum((root / task / f"{folder}_seed{seed}" / RESULT).is_file() for seed in SEARCH_SEEDS)
            left = (len(SEARCH_SEEDS) - done) * fraction * c_sweep_s
            rows.append((task, f"{name}, 1 per search seed", len(SEARCH_SEEDS), done, left))
        if task in known:  # the recorded choices: a run again makes the same ones
            choices = [c for strategy in known[task].strategies for c in strategy.choices]
            jobs = {json.dumps(job[:5], sort_keys=True): job for c in choices for job in final_jobs(task, c, cache)}
            todo = [job for job in jobs.values() if not is_cached(job, cache)]
            left = sum(final_images * cost.get(next(iter(job[1])), mean) for job in todo)
            rows.append((task, "final runs (train+val, tested)", len(jobs), len(jobs) - len(todo), left))
        else:
            # the tuned single method, every search seed's choice, the largest LoRA, the references; none shared
            n = len(FINAL_SEEDS) * (1 + len(SEARCHES) * len(SEARCH_SEEDS) + 1 + len(REFERENCE_LRS))
            rows.append((task, "final runs (train+val, tested)", n, 0, n * final_images * mean))
    return plan_table(
        rows,
        workers,
        cost,
        f"; a search at {fraction:.2f} C_sweep",
        "(finals of searched subnets at the mean single-method cost; stages that wait on results count as not done)",
    )


# Report -----------------------------------------------------------------------------------------------------------


def header() -> list[str]:
    """The ground, written before any run and never changed after seeing results."""
    ground = load_ground()
    schedules = ", ".join(
        f"{t} {ground.schedule(BACKBONE, t).epochs} ep" for t in TASKS if t in ground.schedules.get(BACKBONE, {})
    )
    sizes = "; ".join(
        f"{m} {', '.join(json.dumps(o[next(iter(o))]) if m != 'ssf' else _placement(o) for o in opts)}"
        for m, opts in SIZES.items()
    )
    lrs = ", ".join(f"{lr:g}" for lr in ground.lr_grid)
    return [
        "# Search vs sweep: is autopeft's search worth running?",
        "",
        "## Ground (fixed before the first comparison run)",
        "",
        f"- Backbone `{BACKBONE}` (shipped weights); tasks {', '.join(TASKS)} (chance: "
        + ", ".join(f"{BUILTIN_TASKS[t].chance:.1f}%" for t in TASKS)
        + "); parameter budget "
        f"{ground.budget:,} trainable parameters (head excluded), the largest LoRA on q, v (rank 8).",
        f"- Final schedules from the convergence check (`autopeft/ground.yaml`, `results/convergence.md`): "
        f"{schedules}; AdamW, batch 64, weight decay 1e-4, warm-up then cosine.",
        f"- Learning-rate grid for every method and strategy: {lrs} (full fine-tuning: "
        f"{', '.join(f'{lr:g}' for lr in REFERENCE_LRS['full'])}).",
        f"- Tuned single methods: sizes {sizes}; every size x lr trained to the full schedule on train, "
        "scored on val (no halving); best per method, and best method, on val (accuracy, ties by val loss). "
        "C_sweep = the compute of all these runs.",
        f"- autopeft's supernet pipeline (`search --engine supernet`): the demo space (per block: LoRA 0/2/4/8, "
        "adapter 0/4/8/16, VPT 0/2/5, KV prompts 0/2/5, SSF off/on), supernet with the library defaults, "
        "evolution scored by the library default (search.scoring: refit, a linear head fitted per candidate on its "
        f"train features, ranked by val loss; results/ranking.md), the top {PIPELINE_TOP_K} trained standalone at "
        "every lr of the grid; "
        "target compute <= C_sweep / 3.",
        "- Optuna TPE and random sampling inside the budget over the same space with lr in "
        f"[{min(ground.lr_grid):g}, {max(ground.lr_grid):g}] (log), standalone trials at the full schedule, as many "
        "trials as the supernet pipeline's compute (its mean over search seeds) buys.",
        "- The free heuristic: the largest LoRA that fits, lr tuned on val. Linear probe and full fine-tuning "
        "as reference rows (outside the budget).",
        f"- Finals: each choice retrained on train+val, seeds {', '.join(map(str, FINAL_SEEDS))}, test read once per "
        f"run; searched strategies run with search seeds {', '.join(map(str, SEARCH_SEEDS))}, each seed's choice "
        f"gets its own finals, and the row pools them ({len(SEARCH_SEEDS) * len(FINAL_SEEDS)} runs).",
        "- Differences: paired over final seeds (a searched strategy's two search seeds averaged per final seed) "
        "against the tuned single method (and the pipeline's against Optuna TPE), 95% t-interval (2 degrees of "
        "freedom); win/loss when the interval "
        "excludes 0, tie when it covers 0 with a half-width <= 1 point, undecided when it is wider. Suite: mean "
        "over tasks with a 95% t-interval over tasks.",
        "- Compute: images processed (forward+backward training images + forward-only evaluation images / 3), "
        "and wall time (1 thread per job, 2 jobs at once on 2 cores).",
        "",
    ]


def _placement(options: dict) -> str:
    enabled = options["enabled"]
    return "all blocks" if enabled == 1 else ("last half" if enabled == HALF else "first half")


def _size(method: str, options: dict) -> str:
    """A grid point as the report shows it: SSF by its placement (its sites are the header's), others as options."""
    return _placement(options) if method == "ssf" else json.dumps(options)


@dataclass
class SuiteRow:
    """The pipeline on one task: paired differences (mean, 95% half-width) to the tuned single method and to
    Optuna TPE at equal compute, and its compute as a fraction of C_sweep."""

    task: str
    vs_tuned: tuple[float, float]
    vs_tpe: tuple[float, float]
    compute_ratio: float

    @classmethod
    def of(cls, result: TaskResult) -> SuiteRow:
        by_name = {s.name: s for s in result.strategies}
        pipeline = by_name["supernet pipeline"].per_seed()
        return cls(
            result.task,
            paired(pipeline, result.strategies[0].per_seed()),
            paired(pipeline, by_name["Optuna TPE"].per_seed()),
            by_name["supernet pipeline"].compute.images / result.c_sweep.images,
        )


def render(results: list[TaskResult], missing: list[str]) -> str:
    lines = header()
    for result in results:
        lines += _task_lines(result)
    rows = [SuiteRow.of(r) for r in results]
    if rows:
        lines += _suite_lines(rows) + _target_lines(rows)
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)} (the suite figures cover the tasks above only).", ""]
    lines += [
        "",
        f"Regenerate: `{COMMAND} --workers 2` ({platform.machine()}, torch {torch.__version__}, 1 thread per job; "
        "`--tasks` runs some tasks and keeps the others); `--render` rewrites this file and `results/baselines.md` "
        f"from the JSON alone. {recorded_time({r.task: r.run_s for r in results})} Every final run's test accuracy "
        "per seed and every strategy's compute: `results/bench/search_vs_sweep.json`.",
        "",
    ]
    return "\n".join(lines)


def _task_lines(result: TaskResult) -> list[str]:
    chance = BUILTIN_TASKS[result.task].chance
    tuned = result.strategies[0].per_seed()
    lines = [
        f"## {result.task} (chance {chance:.1f}%)",
        "",
        f"C_sweep = {result.c_sweep.images:,.0f} images ({result.c_sweep.wall_s / 60:.0f} min"
        + (f"; {result.priced} runs' wall time priced, not measured" if result.priced else "")
        + f"); Optuna and random get {result.trials} trials each. Best per method on val: "
        + "; ".join(f"{m} {_size(m, o)} lr {lr:g} ({acc:.1f})" for m, (o, lr, acc) in result.per_method.items())
        + ".",
        "",
        "| strategy | choice | params | val % | test % (mean +- std, runs) | vs tuned single [95% CI] | verdict "
        "| compute (images, x C_sweep) |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    for s in result.strategies:
        pooled = [t for t in s.pooled() if t is not None]
        test = f"{statistics.mean(pooled):.2f} +- {statistics.stdev(pooled):.2f} ({len(pooled)})" if pooled else "-"
        if s is result.strategies[0]:
            versus, call = "-", "-"
        else:
            mean, half = paired(s.per_seed(), tuned)
            versus, call = (
                f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (width {2 * half:.2f})",
                verdict(mean, half),
            )
        choice = "; ".join(f"{_describe(c.methods)} lr {c.lr:.3g}" for c in s.choices)
        params = " / ".join(f"{c.params:,}" for c in s.choices if c.params is not None)
        val = " / ".join(f"{c.val_acc:.1f}" for c in s.choices if c.val_acc is not None)
        name = s.name + (" *" if s.outside_budget else "")
        lines.append(
            f"| {name} | {choice} | {params} | {val} | {test} | {versus} | {call} | "
            f"{s.compute.images:,.0f} ({s.compute.images / result.c_sweep.images:.2f}) |"
        )
    lines += ["", "\\* outside the budget (reference row).", ""]
    return lines


def render_baselines(results: list[TaskResult]) -> str:
    """Each single method at its best size and learning rate on val, per task (the grid's runs, no extra
    compute), and the test accuracy of the rows that have final runs."""
    lines = [
        "# Single methods, tuned on val",
        "",
        "From the runs of `results/search_vs_sweep.md` (no extra compute): for every task, each single method's "
        "best size and learning rate on val (accuracy, ties by val loss) over the grid in that file's ground, on the "
        "converged schedule. Test accuracy is read only for the choices that got final runs there (the best method "
        "on val, the largest LoRA, the linear probe and full fine-tuning).",
        "",
        "| task | method | best size | lr | val % |",
        "|---|---|---|---:|---:|",
    ]
    for result in results:
        for method, (options, lr, acc) in result.per_method.items():
            lines.append(f"| {result.task} | {method} | {_size(method, options)} | {lr:g} | {acc:.1f} |")
    lines += ["", f"| task | row | test % (mean +- std over {len(FINAL_SEEDS)} seeds) |", "|---|---|---|"]
    for result in results:
        for s in result.strategies:
            if s.name.startswith(("tuned", "largest", "linear", "full")):
                tests = [t for t in s.pooled() if t is not None]
                lines.append(
                    f"| {result.task} | {s.name} | {statistics.mean(tests):.2f} +- {statistics.stdev(tests):.2f} |"
                )
    lines += ["", f"Regenerate: `{COMMAND}` (writes this file too).", ""]
    return "\n".join(lines)


def _describe(methods: dict) -> str:
    from autopeft.methods import describe_methods

    return describe_methods(methods)


def _interval(mean: float, half: float) -> str:
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def _suite_mean(diffs: list[float]) -> tuple[float, float]:
    mean, half = t_interval(diffs)
    return mean, math.nan if half is None else half


def _suite_lines(rows: list[SuiteRow]) -> list[str]:
    lines = [
        "## Suite",
        "",
        "| task | pipeline - tuned single [95% CI] | verdict | pipeline - Optuna TPE [95% CI] | verdict "
        "| pipeline compute / C_sweep |",
        "|---|---|---|---|---|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.task} | {_interval(*row.vs_tuned)} | {verdict(*row.vs_tuned)} | {_interval(*row.vs_tpe)} | "
            f"{verdict(*row.vs_tpe)} | {row.compute_ratio:.2f} |"
        )
    calls = [verdict(*row.vs_tuned) for row in rows]
    lines.append("")
    if len(rows) > 1:
        for versus, diffs in (
            ("the tuned single method", [row.vs_tuned[0] for row in rows]),
            ("Optuna TPE", [row.vs_tpe[0] for row in rows]),
        ):
            lines.append(
                f"Suite mean, pipeline minus {versus}: {_interval(*_suite_mean(diffs))} "
                f"(95% t-interval over {len(rows)} tasks)."
            )
    lines += [
        f"Against the tuned single method, wins / ties / undecided / losses: {calls.count('win')} / "
        f"{calls.count('tie')} / {calls.count('undecided')} / {calls.count('loss')}.",
        "",
    ]
    return lines


def _target_lines(rows: list[SuiteRow]) -> list[str]:
    """Each target of the comparison, met or missed and by how much, on the tasks run so far."""
    worst = max(rows, key=lambda r: r.compute_ratio)
    over = [r.task for r in rows if r.compute_ratio > 1 / 3]
    losses = [r.task for r in rows if verdict(*r.vs_tuned) == "loss"]
    return [
        "## Targets",
        "",
        "- Pipeline compute <= C_sweep / 3 on every task: "
        + (f"missed on {', '.join(over)}" if over else "met")
        + f" (largest {worst.compute_ratio:.2f}, {worst.task}).",
        "- Suite mean, pipeline minus the best tuned single method, >= 0: "
        + _mean_target([r.vs_tuned[0] for r in rows]),
        "- No task where the pipeline loses to the tuned single method with its interval excluding 0: "
        + (f"missed on {', '.join(losses)}." if losses else f"met (no loss on {len(rows)} tasks)."),
        "- The pipeline at least ties Optuna TPE on standalone trials at equal compute, on the suite mean: "
        + _mean_target([r.vs_tpe[0] for r in rows]),
        "",
    ]


def _mean_target(diffs: list[float]) -> str:
    """Whether a suite mean difference is >= 0, with its interval and what the interval can decide."""
    mean, half = _suite_mean(diffs)
    if len(diffs) < 2:
        return f"{mean:+.2f} on one task, no interval yet."
    met = f"met on the mean ({_interval(mean, half)})" if mean >= 0 else f"missed by {-mean:.2f} points"
    call = verdict(mean, half)
    if call in ("win", "loss"):
        return f"{met}; the interval excludes 0."
    return f"{met}; the interval covers 0 (width {2 * half:.2f}), so the suite does not decide it."


def write_reports(results: list[TaskResult]) -> None:
    """The comparison and the baselines reports for the tasks in ``results``, naming the ones not run yet."""
    missing = [t for t in TASKS if t not in {r.task for r in results}]
    OUT.write_text(render(results, missing))
    BASELINES.write_text(render_baselines(results))


def recorded() -> dict[str, TaskResult]:
    """The tasks ``results/bench/search_vs_sweep.json`` holds: a run of other tasks keeps them in the reports."""
    return {t["task"]: TaskResult.from_json(t) for t in json.loads(JSON.read_text())} if JSON.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(parser, TASKS, "runs/search_vs_sweep")
    parser.add_argument("--header-only", action="store_true", help="write the report's ground and stop")
    parser.add_argument("--render", action="store_true", help="rewrite the reports from the JSON, run nothing")
    parser.add_argument("--plan", action="store_true", help="print runs per stage, done, estimated time; run nothing")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.plan:
        print(plan(args.tasks, args.cache, args.runs, args.workers))
        return
    if args.header_only:
        OUT.write_text("\n".join([*header(), "No comparison run yet.", ""]))
        return
    if args.render:
        write_reports(list(recorded().values()))
        print(f"wrote {OUT} and {BASELINES} from {JSON}")
        return
    done = recorded()
    with ProcessPoolExecutor(args.workers) as pool:
        for task in args.tasks:
            done[task] = run_task(task, pool, args.cache, args.runs)
            results = [done[t] for t in TASKS if t in done]
            write_reports(results)
            JSON.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    print(f"wrote {OUT} and {JSON}")


if __name__ == "__main__":
    main()
