"""When autopeft picks a configuration on validation data, how far is it from the one it should have picked, and
does spending more compute on the choice (k-fold, racing) close that gap? A cross-fitted oracle table.

    HF_HUB_OFFLINE=1 python scripts/selection_regret.py --plan         # runs per stage, done, CPU hours
    HF_HUB_OFFLINE=1 python scripts/selection_regret.py --workers 2    # every stage, resumable

Stages, each resumable and each reading back what is finished (the run cache and the study's folders):
1. screen: each task's single-method grid on the canonical split (fold 0; the shared cache ``runs/cache``, the same
   runs as ``search_vs_sweep.py``), its learning rates extended until each method's best is interior;
2. proposals: the supernet pipeline's winners (search seeds 0 and 1, shared with ``search_vs_sweep.py``) and two
   random near-cap subnets, each at its best grid lr on fold 0;
3. pool: the members, fixed by the rule in the report's header from stages 1-2 alone, written to the JSON before
   any other fold runs;
4. folds: every member trained on each of the 5 folds (``runs/selection_regret/folds``, weights kept);
5. oracle: every fold model scored on the 4,000-image test set into ``test_outcomes.npz``, which no rule reads.
The report's header is written before the first run and never changed (``results/selection_regret.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lib import regret
from lib.charges import images_per_run, seconds_per_image
from lib.study import PlanRow, plan_table, run_jobs, shown, study_arguments
from search_vs_sweep import (
    BACKBONE,
    LARGEST_LORA,
    SECONDS_PER_IMAGE,
    SIZES,
    pipeline_job,
    run_config,
    standalone_job,
    with_comparison_sites,
)

from autopeft.api import WEIGHTS_FILE, load_adapter
from autopeft.build import build_model
from autopeft.data import BUILTIN_TASKS, builtin_arrays
from autopeft.data.folds import fold_data
from autopeft.ground import load_ground
from autopeft.jobs.rundir import CONFIG, RESULT
from autopeft.jobs.train import cached, cached_run, read_run
from autopeft.records import OUTCOMES, Compute, Outcomes, RunRecord
from autopeft.runconfig import RunConfig, parse_run_config, read_yaml
from autopeft.runkey import config_key
from autopeft.search.candidates import best_on_val
from autopeft.search.ranking import draw_panel, kendall_tau
from autopeft.supernet import SPACES, Supernet, load_space, method_config
from autopeft.train import score

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "selection_regret.md"
JSON = ROOT / "results" / "bench" / "selection_regret.json"
COMMAND = "HF_HUB_OFFLINE=1 python scripts/selection_regret.py --workers 2"
TASKS = ("mnist5k", "shapes_position", "shapes_orientation", "shapes_count", "shapes_distance")
SANITY = ("digits",)  # its headroom is inside the noise: a sanity row, not a replicate of the comparison
FOLDS = 5
FOLD_SEED = 0
TEST_SIZE = 4000  # every task above can draw it (digits' test is the 797 images left)


def test_size(task: str) -> int | None:
    """The oracle's test set size: TEST_SIZE, or the sanity task's own (None)."""
    return None if task in SANITY else TEST_SIZE


LR_LIMITS = (1e-4, 1.0)  # no extension past these
STOP_SE = 2.0  # an extension stops when its best val loss is >= this many SE worse than the best so far
TOP_PER_METHOD = 3
PROPOSAL_SEEDS = (0, 1)  # the supernet pipeline's search seeds whose winners join the pool
RANDOM_SEED = 31  # the draw of the random near-cap subnets (the same subnets on every task)
RANDOM_MEMBERS = 2
BAND = 0.9  # near-cap: at least this share of the budget
EPSILON = 0.5  # points: the epsilon-optimal set is every member within this of the oracle
ALPHA = 0.05
CALIBRATED = 4  # members per task with a calibration final
POOL_GUESS, PIPELINE_RUNS = 20, 15  # --plan's prices before a pool is fixed / for a pipeline (its runs' worth)


def step_beyond(lr: float, up: bool) -> float:
    """The next lr past ``lr`` on the grid's 1-3 half-decade ladder (0.03 -> 0.1 -> 0.3, 0.003 -> 0.001)."""
    ladder = [round(m * 10.0**e, 6) for e in range(-6, 1) for m in (1, 3)]
    return min(v for v in ladder if v > lr * 1.01) if up else max(v for v in ladder if v < lr / 1.01)


# Stage 1: the screen on fold 0 ------------------------------------------------------------------------------------


@dataclass
class GridPoint:
    """One (method, size, lr) run on fold 0, as the screen and the report read it."""

    method: str
    options: dict[str, Any]
    lr: float
    val_acc: float | None
    val_loss: float | None
    loss_se: float | None  # SE of the mean val loss (per-example losses), where the run kept them
    params: int | None
    status: str
    key: str

    @property
    def methods(self) -> dict[str, dict[str, Any]]:
        return {self.method: self.options}


def point_of(method: str, options: dict[str, Any], lr: float, record: RunRecord, cache: Path) -> GridPoint:
    outcomes = cache / record.config_key / OUTCOMES
    se = None
    if outcomes.is_file():
        loss = Outcomes.read(outcomes).loss
        se = None if loss is None else float(np.std(loss[0], ddof=1) / math.sqrt(loss.shape[1]))
    return GridPoint(
        method,
        options,
        lr,
        record.val_acc,
        record.val_loss,
        se,
        record.trainable_params,
        record.status,
        record.config_key,
    )


def grid_jobs(task: str, lrs: list[float], cache: Path, methods: dict[str, list[dict]] = SIZES) -> list[tuple]:
    return [(task, {m: o}, lr, False, 0, cache) for m, sizes in methods.items() for o in sizes for lr in lrs]


def screen(task: str, pool: ProcessPoolExecutor, cache: Path) -> list[GridPoint]:
    """The grid at the ground's lrs; then, per method whose best val loss (over sizes) sits at an end of the lrs,
    every size at a step beyond that end, again while the newest lr is neither diverged nor >= STOP_SE of its SE
    worse than the best, within LR_LIMITS."""
    lrs = sorted(load_ground().lr_grid)
    points = _run_grid(grid_jobs(task, lrs, cache), pool, cache, f"{task}: screen grid")
    for method, sizes in SIZES.items():
        tried, up = list(lrs), None
        while (step := _next_lr([p for p in points if p.method == method], tried, up)) is not None:
            lr, up = step
            tried = sorted([*tried, lr])
            points += _run_grid(
                grid_jobs(task, [lr], cache, {method: sizes}), pool, cache, f"{task}: {method} lr {lr:g}"
            )
    return points


def _run_grid(jobs: list[tuple], pool: ProcessPoolExecutor, cache: Path, stage: str) -> list[GridPoint]:
    records = run_jobs(pool, standalone_job, jobs, stage)
    return [
        point_of(method, options, job[2], record, cache)
        for job, record in zip(jobs, records, strict=True)
        for method, options in job[1].items()
    ]


def _best_at(points: list[GridPoint], lr: float) -> GridPoint | None:
    """The lowest finite val loss among ``points`` at ``lr`` (None: every run there diverged)."""
    here = [p for p in points if p.lr == lr and p.status == "completed" and p.val_loss is not None]
    return min((p for p in here if math.isfinite(p.val_loss)), key=lambda p: p.val_loss, default=None)


def _next_lr(points: list[GridPoint], tried: list[float], up: bool | None) -> tuple[float, bool] | None:
    """The next lr of one method's extension and its direction, or None when its best is interior."""
    best = {lr: p for lr in tried if (p := _best_at(points, lr)) is not None}
    if not best:
        return None
    winner = min(best, key=lambda lr: best[lr].val_loss)
    if up is None:  # the ground's grid: extend past the end holding the best, if either does
        if winner not in (tried[0], tried[-1]):
            return None
        up = winner == tried[-1]
    else:  # extending: go on unless the newest lr diverged or is clearly worse
        newest = best.get(tried[-1] if up else tried[0])
        if newest is None or newest.val_loss >= best[winner].val_loss + STOP_SE * (newest.loss_se or 0.0):
            return None
    beyond = step_beyond(tried[-1] if up else tried[0], up)
    return (beyond, up) if LR_LIMITS[0] <= beyond <= LR_LIMITS[1] else None


# Stage 2: the supernet's and random proposals ---------------------------------------------------------------------


@dataclass
class Member:
    """One configuration of a task's pool: methods with their options and the lr, and why it is in the pool."""

    name: str
    source: str
    methods: dict[str, dict[str, Any]]
    lr: float
    params: int | None

    @property
    def identity(self) -> str:
        return json.dumps([self.methods, self.lr], sort_keys=True)


def random_subnets() -> list[dict[str, dict[str, Any]]]:
    """RANDOM_MEMBERS subnets of the demo space drawn uniformly in [BAND x budget, budget] (the same on every task:
    the draw needs only the backbone's depth and the space)."""
    from autopeft.build import build_backbone
    from autopeft.runconfig import BackboneConfig

    space = load_space(str(SPACES / "demo.yaml"))
    supernet = Supernet(build_backbone(BackboneConfig(name=BACKBONE)), space)
    budget = load_ground().budget
    drawn = draw_panel(supernet, RANDOM_MEMBERS, RANDOM_SEED, budget, int(BAND * budget))
    return [with_comparison_sites(method_config(space, subnet)) for subnet in drawn]


def proposals(task: str, pool: ProcessPoolExecutor, cache: Path, searches: Path) -> list[Member]:
    """The supernet pipeline's winner per search seed (its own lr choice), then each random near-cap subnet at its
    best grid lr on fold 0."""
    winners = run_jobs(pool, pipeline_job, [(task, s, searches) for s in PROPOSAL_SEEDS], f"{task}: supernet pipelines")
    members = [
        Member(f"supernet seed {seed}", "supernet", w["methods"], w["lr"], w["params"])
        for seed, w in zip(PROPOSAL_SEEDS, winners, strict=True)
    ]
    lrs = sorted(load_ground().lr_grid)
    subnets = random_subnets()
    jobs = [(task, methods, lr, False, 0, cache) for methods in subnets for lr in lrs]
    records = run_jobs(pool, standalone_job, jobs, f"{task}: random near-cap subnets")
    for i, methods in enumerate(subnets):
        runs = records[i * len(lrs) : (i + 1) * len(lrs)]
        best = best_on_val(runs)
        members.append(Member(f"random {i}", "random", methods, lrs[best], runs[best].trainable_params))
    return members


# Stage 3: the pool, by the header's rule ----------------------------------------------------------------------------


def ranked(points: list[GridPoint]) -> list[GridPoint]:
    """Best first on val (accuracy, ties by lower loss, then grid order): best_on_val's order."""
    from autopeft.search.candidates import standalone_order

    return [points[i] for i in reversed(standalone_order([(p.val_acc, p.val_loss) for p in points]))]


def pool_of(points: list[GridPoint], proposed: list[Member]) -> list[Member]:
    """Per method its TOP_PER_METHOD best (size, lr) on fold 0; the largest LoRA at its best lr; the proposals; the
    first of any two identical members kept."""
    members = []
    for method in SIZES:
        for rank, p in enumerate(ranked([p for p in points if p.method == method])[:TOP_PER_METHOD]):
            members.append(Member(f"{method} #{rank + 1}", "grid", p.methods, p.lr, p.params))
    largest = ranked([p for p in points if p.methods == LARGEST_LORA])[0]
    members.append(Member("largest LoRA", "heuristic", largest.methods, largest.lr, largest.params))
    kept: dict[str, Member] = {}
    for member in [*members, *proposed]:
        kept.setdefault(member.identity, member)
    return list(kept.values())


# Stage 4: every member on every fold; stage 5: the oracle pass ------------------------------------------------------


def fold_config(task: str, member: Member, fold: int) -> RunConfig:
    """``member`` trained on train + val less fold ``fold`` and scored on it (fold 0: the task's own val split)."""
    config = run_config(task, member.methods, member.lr)
    return replace(config, data=fold_data(config.data, fold, FOLDS, FOLD_SEED, is_canonical=True))


def kept(run: Path, scored: dict[str, np.ndarray]) -> bool:
    """Whether a finished run folder has what the study reads: its record, its val outcomes, and its weights or
    (a run restored from the ledger) its oracle outcomes already in ``scored``."""
    readable = all((run / name).is_file() for name in (RESULT, OUTCOMES))
    return readable and ((run / WEIGHTS_FILE).is_file() or run.name in scored)


def fold_dir(task: str, member: Member, fold: int, folds: Path, cache: Path) -> Path | None:
    """Where ``member``'s finished run on ``fold`` is: the study's own cache ``folds``, or for fold 0 the shared
    cache where that run kept its val outcomes and its weights or oracle outcomes; None while it has not run."""
    key = config_key(fold_config(task, member, fold))
    if (folds / key / RESULT).is_file():
        return folds / key
    return cache / key if fold == 0 and kept(cache / key, committed_test_outcomes(task)) else None


def fold_job(job: tuple[str, Member, int, Path, Path]) -> str:
    """``member``'s run on ``fold`` (trained in ``folds`` unless ``fold_dir`` finds it), then its oracle pass while
    its weights are here (the run cache keeps no weights across clones); its folder."""
    task, member, fold, folds, cache = job
    torch.set_num_threads(1)
    found = fold_dir(task, member, fold, folds, cache)
    if found is None:
        cached_run(fold_config(task, member, fold), folds)
        found = folds / config_key(fold_config(task, member, fold))
    scored = oracle_path(folds, task, found.name)
    if found.name not in committed_test_outcomes(task) and not scored.is_file():
        scored.parent.mkdir(parents=True, exist_ok=True)
        np.save(scored.with_suffix(".tmp.npy"), np.packbits(score_on_test(found)))
        scored.with_suffix(".tmp.npy").replace(scored)
    return str(found)


def oracle_path(folds: Path, task: str, key: str) -> Path:
    """Where the oracle pass leaves one fold model's packed test outcomes until they join the committed file."""
    return folds.parent / "oracle" / task / f"{key}.npy"


def score_on_test(run: Path) -> np.ndarray:
    """The oracle pass of one model: per test image (``test_size``'s) whether the finished run ``run`` is right."""
    config = parse_run_config(read_yaml(run / CONFIG), str(run))
    config = replace(config, data=replace(config.data, test_size=test_size(config.data.name)))
    model, task, norm = build_model(config, with_methods=False)
    load_adapter(model, run)
    return score(model, task.split("test"), norm).correct.numpy().astype(np.uint8)


# The report's header: fixed before the first run ---------------------------------------------------------------------


def header() -> list[str]:
    """The protocol and the targets, written before the first run and never changed (later additions go into a
    dated section below it)."""
    ground = load_ground()
    schedules = ", ".join(f"{t} {ground.schedule(BACKBONE, t).epochs} ep" for t in (*TASKS, *SANITY))
    lrs = ", ".join(f"{lr:g}" for lr in sorted(ground.lr_grid))
    sizes = "; ".join(f"{m} {len(options)} sizes" for m, options in SIZES.items())
    se50 = 100 * math.sqrt(0.25 / TEST_SIZE)
    return [
        "# Selection regret: how far is autopeft's choice on val from the one it should have made?",
        "",
        "**This study reads the test split of every candidate, to evaluate the selection rules (an oracle table).** "
        "No rule sees it: the rules read val outcomes only, and the test outcomes live in their own file "
        "(`results/bench/selection_regret/test_outcomes_<task>.npz`), written by a separate pass that no rule's "
        "code reads.",
        "",
        "## Protocol and targets (fixed before the first run)",
        "",
        f"- Backbone `{BACKBONE}` (shipped weights); tasks {', '.join(TASKS)} (chance "
        + ", ".join(f"{BUILTIN_TASKS[t].chance:.1f}%" for t in TASKS)
        + f"); {SANITY[0]} as a sanity row (its headroom is inside the noise; not in the suite figures). Budget "
        f"{ground.budget:,} trainable parameters (head excluded). Schedules from `autopeft/ground.yaml`: {schedules}; "
        "AdamW, batch 64, weight decay 1e-4, warm-up then cosine.",
        f"- Screen (fold 0, the canonical 800/200 split; the runs of `search_vs_sweep.py`'s grid, shared): {sizes} "
        f"at lrs {lrs}. Interior lrs: per method, when its lowest val loss (over sizes) sits at the largest or "
        f"smallest lr, every size runs one step beyond on the 1-3 ladder (0.1, 0.3, ...; 0.001, ...), again while "
        f"the newest lr neither diverges nor is >= {STOP_SE:g} SE (of its mean per-example val loss) worse than the "
        f"best, within [{LR_LIMITS[0]:g}, {LR_LIMITS[1]:g}]. A size optimum at the budget cap is reported 'at cap' "
        "and kept.",
        f"- The pool, fixed from the screen before any other fold runs: per method its {TOP_PER_METHOD} best "
        "(size, lr) on fold 0 (accuracy, ties by val loss); the largest LoRA (rank 8, q v) at its best lr; the "
        f"supernet pipeline's winner for search seeds {', '.join(map(str, PROPOSAL_SEEDS))} (library defaults, its "
        f"own lr choice; shared with `search_vs_sweep.py`); {RANDOM_MEMBERS} random subnets of the demo space in "
        f"[{BAND:.0%}, 100%] of the budget (draw seed {RANDOM_SEED}, the same on every task), each at its best grid "
        "lr on fold 0. Identical members are kept once (about 20 per task).",
        f"- Folds: train + val (1,000 images) in K = {FOLDS} stratified folds (fold seed {FOLD_SEED}; fold 0 is the "
        "task's own val split); every member trained on each fold's 800 and scored on its 200 (per-example val "
        f"outcomes kept), then re-scored on a {TEST_SIZE:,}-image test set (a larger draw of the task's test "
        "generator) in the separate oracle pass.",
        f"- Test noise: a test accuracy's SE is at most {se50:.2f} points (at 50%; "
        f"{100 * math.sqrt(0.9 * 0.1 / TEST_SIZE):.2f} at 90%); the paired SE of a 1-point difference between two "
        f"members on the same images is {100 * math.sqrt(0.05 / TEST_SIZE):.2f}-"
        f"{100 * math.sqrt(0.20 / TEST_SIZE):.2f} points for 5-20% of images on which they disagree.",
        f"- Cross-fitted replicates r = 0..{FOLDS - 1}: fold r is held out for scoring only. A rule sees the val "
        "outcomes of the other folds' models (holdout: fold r+1 mod K alone; k-fold: all four, pooled per example; "
        "race: the four in the order r+1, r+2, ... with `choose`'s Bonferroni-adjusted drops after each); its "
        "choice is scored by that member's fold-r model on the test set. The oracle is the member with the best "
        "mean test accuracy over the other folds' models, scored by its fold-r model: no model's luck both chooses "
        "and scores. Caveat: the rules' k-fold here is 4-fold on 800 images, not the library's 5-fold on 1,000.",
        "- Rules: holdout (today's default); k-fold; raced k-fold; `choose`'s tied set on the k-fold evidence with "
        "`prefer: best` and with `prefer: fewest_params`; the largest LoRA with its lr by holdout; the best fixed "
        "method chosen leave-one-task-out (the method with the best mean k-fold val accuracy of its holdout choice "
        "on the other tasks; on this task its member by holdout). Seeds-only repeats are not run (not affordable).",
        "- Per rule: regret = oracle test minus the chosen member's test (points), per task and over the suite, "
        "with a 95% percentile bootstrap interval resampling tasks, replicates and test images; compute in images "
        "(training + evaluation / 3) and measured CPU-seconds of the fold runs it reads; the share of the oracle's "
        "headroom over the best fixed method it captures (a ratio of suite means, bootstrap interval; tasks whose "
        "headroom is below its SE are listed, not ratioed).",
        "- Calibration: one train+val final (test read once, 4,000 images) for the 4 members chosen most often per "
        "task, to check that the fold models rank as shipped finals do (Kendall tau of their mean fold test vs "
        "final test).",
        "- Power: the smallest suite regret difference this design detects at 80% power (two-sided 5%) is about "
        "2.8 x its SE; assuming per-task regret differences with an SD of 1.5 points across tasks (this backbone's "
        "seed noise is 0.6-2.2 points), SE = 1.5 / sqrt(5) = 0.67 and the detectable difference is about 1.9 "
        "points. The results section recomputes it from the data; the targets below do not move.",
        "- Targets (a miss is written down with its size, never re-tuned):",
        "  1. raced k-fold's suite regret is below holdout's, the interval of the difference excluding 0, at <= 2x "
        "holdout's selection compute;",
        "  2. the default rule captures >= 50% of the oracle's headroom over the best fixed method (published "
        "VTAB-1k tuning logs: val200 selection captures about 20%);",
        f"  3. `choose`'s tied set (alpha {ALPHA:g}) covers the epsilon-optimal set (members within {EPSILON:g} "
        f"points of the oracle's test) in >= {1 - ALPHA:.0%} of task x replicate cases; its size is reported beside "
        "that set's.",
        "- Then `selection`'s default becomes the mode with the lowest suite regret at <= 2x holdout's compute whose "
        "regret interval against holdout excludes 0; otherwise holdout stays, and the report says so.",
        "",
    ]


# The analysis and the report ---------------------------------------------------------------------------------------


def family(member: Member) -> str:
    """The method family a member counts in for the best fixed method: its single method, else ``mixed``."""
    return next(iter(member.methods)) if len(member.methods) == 1 and member.source != "random" else "mixed"


def load_table(task: str, members: list[Member], folds: Path, cache: Path) -> regret.Table | None:
    """The task's oracle table from its fold runs and its oracle pass; None until every fold model is scored."""
    scored = committed_test_outcomes(task)
    runs = [[fold_dir(task, m, f, folds, cache) for f in range(FOLDS)] for m in members]
    if any(run is None or run.name not in scored for row in runs for run in row):
        return None
    return regret.Table(
        task,
        tuple(m.name for m in members),
        tuple(m.params or 0 for m in members),
        tuple(family(m) for m in members),
        tuple(tuple(Outcomes.read(run / OUTCOMES) for run in row) for row in runs),
        tuple(tuple(read_run(run).compute for run in row) for row in runs),
        np.array([[np.unpackbits(scored[run.name])[: _test_images(task)] for run in row] for row in runs]),
    )


def calibration(table: regret.Table, members: list[Member], cache: Path) -> list[tuple[str, float, float]]:
    """Per calibrated member with a finished final: its mean test accuracy over the fold models, and the final's."""
    rows = []
    for m in most_chosen(table):
        record = cached(calibration_config(table.task, members[m]), cache)
        if record is not None and record.test_acc is not None:
            rows.append((members[m].name, float(100 * table.test[m].mean()), record.test_acc))
    return rows


def calibration_lines(rows: dict[str, list[tuple[str, float, float]]]) -> list[str]:
    """Whether fold models rank members as their shipped finals do: Kendall tau per task."""
    lines = [
        "",
        "Calibration: fold models (mean test over 5) against one train+val final (test once, 4,000 images).",
        "",
    ]
    for task, members in rows.items():
        tau = kendall_tau([f for _, f, _ in members], [t for _, _, t in members]) if len(members) > 1 else None
        shown_tau = "n/a" if tau is None else f"{tau:+.2f}"
        pairs = "; ".join(f"{name} {fold:.2f} / {final:.2f}" for name, fold, final in members)
        lines.append(f"- {task}: tau {shown_tau} ({pairs or 'no final yet'})")
    return lines


def _test_images(task: str) -> int:
    return test_size(task) or len(builtin_arrays(task)["test"][1])


def estimate(e: regret.Estimate | None, unit: str = "") -> str:
    if e is None or math.isnan(e.value):
        return "n/a"
    return f"{e.value:+.2f}{unit} [{e.low:+.2f}, {e.high:+.2f}]"


def render(
    analysis: regret.Analysis,
    tables: list[regret.Table],
    pending: list[str],
    calibrated: dict[str, list[tuple[str, float, float]]] | None = None,
) -> list[str]:
    """The results section (dated), below the header."""
    holdout = next(r for r in analysis.rules if r.name == regret.BASELINE)

    def cost(rule: regret.RuleResult) -> str:
        total = Compute.total(rule.compute.values())
        base = Compute.total(holdout.compute.values())
        return f"{total.images / base.images:.2f}x ({total.wall_s / 3600 / len(tables):.2f} CPU-h per task)"

    lines = [
        f"## Results ({len(tables)} of {len(TASKS)} tasks: {', '.join(t.task for t in tables)})",
        "",
        "Regret: the oracle's test accuracy minus the chosen member's (points; lower is better), mean over tasks "
        "and replicates, 95% bootstrap interval over tasks, replicates and test images. Compute: the fold runs a "
        "rule reads, against holdout's, and their measured CPU time (1 thread per run).",
        "",
        "| rule | suite regret | minus holdout | selection compute | headroom captured |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.name} | {estimate(r.suite)} | {estimate(r.versus_holdout)} | {cost(r)} | "
        f"{estimate(r.captured) if r.captured else 'n/a'} |"
        for r in analysis.rules
    ]
    lines += ["", "| rule | " + " | ".join(t.task for t in tables) + " |", "|---|" + "---:|" * len(tables)]
    lines += [f"| {r.name} | " + " | ".join(estimate(r.regret[t.task]) for t in tables) + " |" for r in analysis.rules]
    headroom = ", ".join(f"{task} {estimate(h)}" for task, h in analysis.headroom.items())
    lines += [
        "",
        f"- Headroom of the oracle over the best fixed method: {headroom}; ratioed: "
        f"{', '.join(analysis.ratioed) or 'none'} (the others' headroom is below its SE).",
        f"- `choose`'s k-fold tied set holds every member within {EPSILON:g} points of the oracle in "
        f"{analysis.coverage:.0%} of task x replicate cases; mean sizes: tied set {analysis.tied_size:.1f}, "
        f"epsilon-optimal set {analysis.epsilon_size:.1f}.",
        f"- Detectable difference (2.8 x the SE of raced k-fold minus holdout over the suite, from these data): "
        f"{analysis.detectable:.2f} points (the header's pre-run estimate: 1.9).",
    ]
    if pending:
        lines += [f"- Not yet in the table: {', '.join(pending)}."]
    if calibrated:
        lines += calibration_lines(calibrated)
    return [*lines, ""]


# The study's JSON, the plan and the driver -------------------------------------------------------------------------


def recorded() -> dict[str, Any]:
    """What ``results/bench/selection_regret.json`` holds: per task its screen and its fixed pool."""
    return json.loads(JSON.read_text()) if JSON.is_file() else {"tasks": {}}


def write_json(data: dict[str, Any]) -> None:
    JSON.parent.mkdir(parents=True, exist_ok=True)
    tmp = JSON.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(JSON)


def fixed_pool(task: str, pool: ProcessPoolExecutor, cache: Path, searches: Path) -> list[Member]:
    """The task's pool: read back once recorded (it never changes), else screened, proposed and recorded."""
    data = recorded()
    if task in data["tasks"]:
        return [Member(**m) for m in data["tasks"][task]["pool"]]
    points = screen(task, pool, cache)
    members = pool_of(points, proposals(task, pool, cache, searches))
    data["tasks"][task] = {"screen": [asdict(p) for p in points], "pool": [asdict(m) for m in members]}
    write_json(data)
    return members


def run_task(task: str, pool: ProcessPoolExecutor, args: argparse.Namespace) -> None:
    members = fixed_pool(task, pool, args.cache, args.searches)
    jobs = [(task, m, fold, args.runs / "folds", args.cache) for m in members for fold in range(FOLDS)]
    run_jobs(pool, fold_job, jobs, f"{task}: {len(members)} members x {FOLDS} folds")
    write_test_outcomes(task, args.runs / "folds")
    table = load_table(task, members, args.runs / "folds", args.cache)
    finals = [(task, members[m], args.cache) for m in most_chosen(table)]
    run_jobs(pool, calibration_job, finals, f"{task}: calibration finals")


def most_chosen(table: regret.Table) -> list[int]:
    """The CALIBRATED members the task's fold rules pick most often over the replicates (ties: pool order)."""
    counts = np.zeros(len(table.members), dtype=int)
    for config in regret.FOLD_RULES.values():
        for r in range(table.folds):
            counts[regret.library_rule(config)(table, r).member] += 1
    return sorted(np.argsort(-counts, kind="stable")[:CALIBRATED].tolist())


def calibration_config(task: str, member: Member) -> RunConfig:
    """``member`` as a shipped final: train + val, test read once on the oracle's test set."""
    config = run_config(task, member.methods, member.lr, final=True)
    return replace(config, data=replace(config.data, test_size=test_size(task)))


def calibration_job(job: tuple[str, Member, Path]) -> RunRecord:
    task, member, cache = job
    torch.set_num_threads(1)
    return cached_run(calibration_config(task, member), cache)


def test_outcomes_path(task: str) -> Path:
    return JSON.parent / "selection_regret" / f"test_outcomes_{task}.npz"


def committed_test_outcomes(task: str) -> dict[str, np.ndarray]:
    """The task's test outcomes as committed: packed bits per fold model, keyed by run key."""
    path = test_outcomes_path(task)
    return dict(np.load(path)) if path.is_file() else {}


def write_test_outcomes(task: str, folds: Path) -> None:
    """Join the oracle pass's per-model outcomes to the task's committed file (nothing scored is ever dropped)."""
    have = committed_test_outcomes(task)
    new = {p.stem: np.load(p) for p in sorted((folds.parent / "oracle" / task).glob("*.npy")) if p.stem not in have}
    if new:
        path = test_outcomes_path(task)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path.with_suffix(".tmp.npz"), **have, **new)
        path.with_suffix(".tmp.npz").replace(path)


def plan(tasks: list[str], args: argparse.Namespace) -> str:
    """Per task and stage: runs, done, CPU hours, priced at the cache's median seconds per image per method."""
    cost = seconds_per_image(args.cache, BACKBONE, SIZES, SECONDS_PER_IMAGE)
    mean = statistics.mean(cost.values())
    data = recorded()
    rows: list[PlanRow] = []
    for task in tasks:
        train_images, _ = images_per_run(task, load_ground().schedule(BACKBONE, task).epochs)
        grid = grid_jobs(task, sorted(load_ground().lr_grid), args.cache)
        done = [cached(run_config(*job[:5]), args.cache) is not None for job in grid]
        left = sum(train_images * cost[next(iter(job[1]))] for job, d in zip(grid, done, strict=True) if not d)
        rows.append((task, "screen: grid on fold 0", len(grid), sum(done), left))
        fixed = task in data["tasks"]
        members = [Member(**m) for m in data["tasks"][task]["pool"]] if fixed else []
        pipelines = sum((args.searches / task / f"supernet_seed{s}" / RESULT).is_file() for s in PROPOSAL_SEEDS)
        left = (len(PROPOSAL_SEEDS) - pipelines) * PIPELINE_RUNS * train_images * mean
        rows.append((task, "proposals: supernet pipelines", len(PROPOSAL_SEEDS), pipelines, left))
        random_runs = RANDOM_MEMBERS * len(grid) // len(SIZES) // len(next(iter(SIZES.values())))
        rows.append(
            (
                task,
                "proposals: random subnets x grid lrs",
                random_runs,
                random_runs * fixed,
                (not fixed) * random_runs * train_images * mean,
            )
        )
        size = len(members) or POOL_GUESS
        folds = [
            fold_dir(task, m, f, args.runs / "folds", args.cache) is not None for m in members for f in range(FOLDS)
        ]
        rows.append(
            (
                task,
                f"folds: {size} members x {FOLDS}",
                size * FOLDS,
                sum(folds),
                (size * FOLDS - sum(folds)) * train_images * mean,
            )
        )
        rows.append((task, "calibration finals", CALIBRATED, 0, CALIBRATED * train_images * 1.25 * mean))
    notes = (
        f"(a pipeline priced at {PIPELINE_RUNS} runs, a pool not yet fixed at {POOL_GUESS} members; the screen's lr "
        "steps are known only after its grid and are not priced)"
    )
    return plan_table(rows, args.workers, cost, "", notes)


def write_report(args: argparse.Namespace) -> None:
    """The report: the header as written before the first run, then the results of the tasks whose oracle tables
    are complete (at least two: the best fixed method is chosen on the other tasks)."""
    pools = {task: [Member(**m) for m in entry["pool"]] for task, entry in recorded()["tasks"].items()}
    for task in pools:
        write_test_outcomes(task, args.runs / "folds")
    tables = [
        table
        for task in TASKS
        if task in pools and (table := load_table(task, pools[task], args.runs / "folds", args.cache)) is not None
    ]
    body = ["No task has a complete oracle table yet.", ""]
    if len(tables) >= 2:
        analysis = regret.analyse(tables, list(SIZES), {"largest LoRA": len(load_ground().lr_grid)}, EPSILON)
        calibrated = {t.task: calibration(t, pools[t.task], args.cache) for t in tables}
        body = render(analysis, tables, [t for t in TASKS if t not in {table.task for table in tables}], calibrated)
        data = recorded()
        data["analysis"] = asdict(analysis)
        write_json(data)
    OUT.write_text(
        "\n".join([*header(), *body, f"Regenerate: `{COMMAND}` (`--render`: this file from the runs on disk).", ""])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(parser, (*TASKS, *SANITY), "runs/selection_regret")
    parser.add_argument("--searches", type=Path, default=Path("runs/search_vs_sweep"), help="the pipelines' folder")
    parser.add_argument("--header-only", action="store_true", help="write the report's header and stop")
    parser.add_argument("--plan", action="store_true", help="print runs per stage, done, CPU hours; run nothing")
    parser.add_argument("--render", action="store_true", help="write the report from the runs on disk; run nothing")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.plan:
        print(plan(args.tasks, args))
        return
    if args.header_only:
        OUT.write_text("\n".join([*header(), "No run yet.", ""]))
        return
    if not args.render:
        with ProcessPoolExecutor(args.workers) as pool:
            for task in args.tasks:
                run_task(task, pool, args)
    write_report(args)
    print(f"wrote {shown(OUT)} and {shown(JSON)}")


if __name__ == "__main__":
    main()
