"""Do ImageNet weights carry over through autopeft's CNN methods (EfficientNet-Lite0 on the built-in tasks)?

EfficientNet-Lite0 with its ImageNet weights against the same network at random init (linear probe, full
fine-tuning) and every PEFT method on the real weights, on the learnable built-in tasks at a small input size
(64 px by default), with the demo ViT's rows beside them.

    HF_HUB_OFFLINE=1 python scripts/cnn_transfer.py --plan        # per stage: runs needed, cached, CPU hours
    HF_HUB_OFFLINE=1 python scripts/cnn_transfer.py --workers 2   # results/cnn_transfer.md + bench json

Needs the ``cnn`` extra (``pip install 'autopeft[cnn]'``: the ImageNet weights). The protocol is fixed in the
constants below and written into the report's header. Every run is cached by its config hash (``runs/cache``,
shared with the other scripts) and an interrupted one resumes, so running the command again continues where it
stopped. ``--tasks`` runs a subset; the report covers every task whose runs are all in the cache or recorded in
the bench JSON by an earlier run at the same input size, and names the missing ones. The demo ViT's rows are the
configs ``scripts/search_vs_sweep.py`` trains, so they come out of the shared cache once that script has run the
task (trained here otherwise; two scripts training the same run at once is refused with one line by the run's
lock: run again). ``--quick-epochs N`` is a smoke test of the plumbing only (every run N epochs, outputs
elsewhere): never a report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from lib.study import recorded_time, report_command, run_jobs, shown, study_arguments
from search_vs_sweep import REFERENCE_LRS
from search_vs_sweep import SIZES as VIT_SIZES  # the demo ViT's grid: the same runs, read from the shared cache

from autopeft.backbones import DEMO_BACKBONES, demo_weights
from autopeft.data import BUILTIN_TASKS, DataConfig
from autopeft.data.builtin import SIZES as SPLIT_SIZES
from autopeft.errors import BackboneError
from autopeft.ground import load_ground
from autopeft.jobs.train import cached, cached_run
from autopeft.methods import describe_methods
from autopeft.records import Compute, RunRecord
from autopeft.runconfig import BackboneConfig, RunConfig
from autopeft.search.candidates import best_on_val
from autopeft.stats import paired_seeds, verdict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
REPORT, JSON = Path("cnn_transfer.md"), Path("bench") / "cnn_transfer.json"  # under --out (results/)
CNN = "efficientnet_lite0_imagenet"
VIT = "vit_demo_fmnist"  # the ground's schedules are fixed on this backbone; the CNN runs reuse them
TASKS = ("digits", "mnist5k", "shapes_position", "shapes_orientation")
FINAL_SEEDS = (0, 1, 2)  # rows the target compares (and the ViT rows, as search_vs_sweep trains them)
OTHER_SEEDS = (0,)  # every other row
PEFT = ("ssf", "adapter", "lora", "bitfit", "ln_tune", "pro_tuning")  # each at the library's CNN defaults
FULL_LRS = REFERENCE_LRS["full"]  # full fine-tuning needs smaller lrs
GROUPS = ("imagenet", "random", "vit")

# CPU ms per image, 1 thread, for --plan: a training image (forward + backward + step) per method, and an evaluation
# image; EfficientNet-Lite0 at 64 px (scaled by (size / 64)^2 at other sizes), the demo ViT at 32 px. Measured with
# --measure (batch 64, 5 batches after one warm-up batch, 320 images evaluated) on a 2-core x86_64 machine while
# two other 1-thread jobs ran on it, as the runs themselves will (the demo ViT's cached search_vs_sweep runs took
# 6-13 ms per weighted image there, in line; a second --measure gave 10-35% lower CNN rates). Load moves them by up
# to 2x: a 1-epoch smoke test with 5-6 jobs on the 2 cores ran 2x slower than these predict. Building a run's model
# and data adds under a second per run (not counted).
STEP_MS = {
    "cnn": {"linear": 2.9, "full": 13.2, "ssf": 5.1, "adapter": 6.9, "lora": 5.6, "bitfit": 5.1, "ln_tune": 4.7,
            "pro_tuning": 5.8, "eval": 4.0},
    "vit": {"linear": 2.8, "full": 8.6, "lora": 7.1, "adapter": 6.1, "vpt": 8.3, "kv_prompt": 5.9, "ssf": 7.0,
            "eval": 3.8},
}  # fmt: skip


@dataclass(frozen=True)
class Setup:
    """What every run of one invocation shares: the CNN's input size, and the smoke test's epochs if any."""

    img_size: int = 64
    quick_epochs: int | None = None

    def backbone(self, group: str) -> BackboneConfig:
        if group == "vit":
            return BackboneConfig(name=VIT)  # as search_vs_sweep.backbone()
        options = {}
        if self.img_size != DEMO_BACKBONES[CNN]["img_size"]:  # timm's overlay sets the size images are resized to
            options = {"pretrained_cfg_overlay": {"input_size": [3, self.img_size, self.img_size]}}
        return BackboneConfig(name=CNN, pretrained=group == "imagenet", options=options)

    def config(self, group: str, task: str, methods: dict, lr: float, final: bool = False, seed: int = 0) -> RunConfig:
        """One run; the ViT's exactly as search_vs_sweep.run_config builds it."""
        train = load_ground().schedule(VIT, task).train(lr=lr)
        if self.quick_epochs is not None:
            train = replace(train, epochs=self.quick_epochs, warmup_epochs=0)
        return RunConfig(
            self.backbone(group), DataConfig(name=task), methods, train, final=final, test=final, seed=seed
        )


@dataclass(frozen=True)
class RowSpec:
    """A row of the report: a backbone group and the configurations (methods as JSON, lr) selected among on val."""

    group: str
    name: str
    candidates: tuple[tuple[str, float], ...]


def row_specs() -> list[RowSpec]:
    grid = load_ground().lr_grid

    def one(group: str, method: str, lrs=grid) -> RowSpec:
        return RowSpec(group, method, tuple((json.dumps({method: {}}), lr) for lr in lrs))

    vit_grid = tuple((json.dumps({m: o}), lr) for m, sizes in VIT_SIZES.items() for o in sizes for lr in grid)
    return [
        one("imagenet", "linear"),
        one("imagenet", "full", FULL_LRS),
        *(one("imagenet", m) for m in PEFT),
        one("random", "linear"),
        one("random", "full", FULL_LRS),
        one("vit", "linear"),
        one("vit", "full", FULL_LRS),
        RowSpec("vit", "best PEFT", vit_grid),  # search_vs_sweep's "tuned single method (best on val)"
    ]


COMPARED = {("imagenet", "linear"), ("random", "full")}  # with the best PEFT row on the real weights


# Results ------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    group: str
    name: str
    methods: dict[str, dict[str, Any]]  # the choice on val, every option spelled out
    lr: float
    val_acc: float | None
    val_loss: float | None
    params: int | None  # trainable, head excluded
    grid: list[dict[str, Any]]  # every candidate: methods, lr, val acc and loss, params, compute
    grid_compute: Compute
    seeds: list[int] = field(default_factory=list)
    tests: list[float | None] = field(default_factory=list)  # per seed
    final_compute: Compute = field(default_factory=Compute)

    def per_seed(self) -> dict[int, float | None]:
        return dict(zip(self.seeds, self.tests, strict=True))


@dataclass
class TaskResult:
    task: str
    chance: float
    rows: list[Row]
    best_peft: str  # the PEFT method best on val on the real weights
    versus: dict[str, dict[str, Any]]  # "linear (ImageNet)" / "full (random init)": paired difference

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskResult:
        """The inverse of ``asdict``: a task as the bench JSON keeps it."""
        rows = [
            Row(**{**r, "grid_compute": Compute(**r["grid_compute"]), "final_compute": Compute(**r["final_compute"])})
            for r in data["rows"]
        ]
        return cls(**{**data, "rows": rows})


def recorded(json_path: Path, setup: Setup) -> dict[str, TaskResult]:
    """The tasks a previous run of the same setup recorded in ``json_path`` (none if it is missing or differs)."""
    if not json_path.is_file():
        return {}
    data = json.loads(json_path.read_text())
    if (data["img_size"], data["quick_epochs"]) != (setup.img_size, setup.quick_epochs):
        return {}
    return {t["task"]: TaskResult.from_json(t) for t in data["tasks"]}


Fetch = Callable[[list[RunConfig]], list[RunRecord] | None]  # records in order, or None when not all available


def selection_configs(spec: RowSpec, task: str, setup: Setup) -> list[RunConfig]:
    return [setup.config(spec.group, task, json.loads(m), lr) for m, lr in spec.candidates]


def make_row(spec: RowSpec, configs: list[RunConfig], records: list[RunRecord]) -> Row:
    """A row's choice on val among its trained candidates."""
    pick = best_on_val(records)
    config, best = configs[pick], records[pick]
    grid = [_candidate(c, r) for c, r in zip(configs, records, strict=True)]
    return Row(
        spec.group, spec.name, config.methods, config.train.lr, best.val_acc, best.val_loss, best.trainable_params,
        grid, Compute.total(r.compute for r in records),
    )  # fmt: skip


def best_peft(rows: list[Row]) -> Row:
    """The PEFT method best on val on the real weights (ties: the earlier in PEFT)."""
    peft = [r for r in rows if r.group == "imagenet" and r.name in PEFT]
    return peft[best_on_val(peft)]


def seeds_for(group: str, name: str, best: str | None) -> tuple[int, ...]:
    compared = (group, name) in COMPARED or group == "vit" or (group == "imagenet" and name == best)
    return FINAL_SEEDS if compared else OTHER_SEEDS


def final_configs(task: str, setup: Setup, row: Row) -> list[RunConfig]:
    return [setup.config(row.group, task, row.methods, row.lr, final=True, seed=s) for s in row.seeds]


def task_result(task: str, setup: Setup, fetch: Fetch) -> TaskResult | None:
    """Every row of ``task``: its choice on val, then its final runs; None when ``fetch`` cannot supply them all."""
    specs = row_specs()
    per_row = [selection_configs(spec, task, setup) for spec in specs]
    records = fetch([c for configs in per_row for c in configs])
    if records is None:
        return None
    done = iter(records)
    rows = [make_row(s, configs, [next(done) for _ in configs]) for s, configs in zip(specs, per_row, strict=True)]
    best = best_peft(rows)
    for row in rows:
        row.seeds = list(seeds_for(row.group, row.name, best.name))
    records = fetch([c for row in rows for c in final_configs(task, setup, row)])
    if records is None:
        return None
    done = iter(records)
    for row in rows:
        runs = [next(done) for _ in row.seeds]
        row.tests = [r.test_acc for r in runs]
        row.final_compute = Compute.total(r.compute for r in runs)
    find = {(r.group, r.name): r for r in rows}
    versus = {
        label: _paired(best, find[key])
        for label, key in (("linear (ImageNet)", ("imagenet", "linear")), ("full (random init)", ("random", "full")))
    }
    return TaskResult(task, BUILTIN_TASKS[task].chance, rows, best.name, versus)


def _candidate(config: RunConfig, record: RunRecord) -> dict[str, Any]:
    return {
        "methods": config.methods,
        "lr": config.train.lr,
        "val_acc": record.val_acc,
        "val_loss": record.val_loss,
        "params": record.trainable_params,
        "status": record.status,
        "compute": asdict(record.compute),
    }


def _paired(row: Row, baseline: Row) -> dict[str, Any]:
    """``row`` minus ``baseline`` over the seeds both ran: mean, 95% t-interval, verdict."""
    a, b = row.per_seed(), baseline.per_seed()
    diff, seeds = paired_seeds(a, b), [s for s in a if s in b]
    out = {"seeds": seeds, "diffs": list(diff.diffs)}
    if len(diff.diffs) < 2 or len(diff.diffs) < len(seeds):  # a verdict needs 2+ diffs, every seed both ran finished
        return out | {"mean": None, "low": None, "high": None, "verdict": "n/a"}
    mean, half = diff.mean, diff.half
    return out | {"mean": mean, "low": mean - half, "high": mean + half, "verdict": verdict(mean, half)}


def holds(result: TaskResult) -> bool:
    return all(v["verdict"] == "win" for v in result.versus.values())


# Fetching: train (a pool of 1-thread jobs), or read the cache only -----------------------------------------------


def run_job(job: tuple[RunConfig, Path]) -> RunRecord:
    config, cache = job
    torch.set_num_threads(1)
    return cached_run(config, cache)


def training(pool: ProcessPoolExecutor, cache: Path) -> Fetch:
    def fetch(configs: list[RunConfig]) -> list[RunRecord]:
        stage = f"{configs[0].data.name}: {'final' if configs[0].final else 'selection'} runs"
        return run_jobs(pool, run_job, [(c, cache) for c in configs], stage)

    return fetch


def from_cache(cache: Path) -> Fetch:
    def fetch(configs: list[RunConfig]) -> list[RunRecord] | None:
        records = [cached(c, cache) for c in configs]
        return None if any(r is None for r in records) else records

    return fetch


# The plan ---------------------------------------------------------------------------------------------------------


def estimate_s(config: RunConfig, step_ms: dict[str, dict[str, float]], img_size: int) -> float:
    """CPU seconds of one run from per-image step times: every training image, every val (or test) image."""
    family = "vit" if config.backbone.name == VIT else "cnn"
    rates = step_ms[family]
    scale = (img_size / 64) ** 2 if family == "cnn" else 1.0
    method = next(iter(config.methods))
    epochs = config.train.epochs
    train = epochs * SPLIT_SIZES["train"] + (epochs * SPLIT_SIZES["val"] if config.final else 0)
    evaluated = SPLIT_SIZES["test"] if config.final else epochs * SPLIT_SIZES["val"]
    return scale * (train * rates[method] + evaluated * rates["eval"]) / 1000


def plan(tasks: list[str], setup: Setup, cache: Path, workers: int, step_ms: dict) -> list[str]:
    """Per task and stage: runs needed, already in the cache, CPU hours of the rest. A row whose selection is
    cached has exactly known finals; the others' are counted by the row rules at their first candidate's cost (the
    best PEFT method's two extra seeds, unknown until every PEFT row is selected, at the mean PEFT cost)."""
    lines = [
        f"cnn_transfer plan: {CNN} at {setup.img_size} px (+ {VIT} rows), cache {cache}, {workers} workers at 1 thread",
        f"{'task':<20} {'stage':<10} {'runs':>5} {'cached':>7} {'to run':>7} {'CPU h':>7}",
    ]
    totals = [0, 0, 0.0]
    for task in tasks:
        specs, rows = row_specs(), {}
        selection = []
        for spec in specs:
            configs = selection_configs(spec, task, setup)
            records = [cached(c, cache) for c in configs]
            selection += [(c, r is not None) for c, r in zip(configs, records, strict=True)]
            if all(r is not None for r in records):
                rows[spec] = make_row(spec, configs, records)
        peft = [s for s in specs if s.group == "imagenet" and s.name in PEFT]
        best = best_peft(list(rows.values())).name if all(s in rows for s in peft) else None
        finals, unknown = [], []  # (config, cached); CPU seconds of finals not yet known
        for spec in specs:
            seeds = seeds_for(spec.group, spec.name, best)
            if spec in rows:
                rows[spec].seeds = list(seeds)
                finals += [(c, cached(c, cache) is not None) for c in final_configs(task, setup, rows[spec])]
            else:
                first = json.loads(spec.candidates[0][0])
                config = setup.config(spec.group, task, first, spec.candidates[0][1], final=True)
                unknown += [estimate_s(config, step_ms, setup.img_size)] * len(seeds)
        if best is None:  # the best PEFT method's two extra seeds
            costs = [estimate_s(setup.config("imagenet", task, {s.name: {}}, 0.01, True), step_ms, setup.img_size)
                     for s in peft]  # fmt: skip
            unknown += [statistics.mean(costs)] * (len(FINAL_SEEDS) - len(OTHER_SEEDS))
        for stage, runs, extra in (("selection", selection, []), ("finals", finals, unknown)):
            to_run = [c for c, done in runs if not done]
            seconds = sum(estimate_s(c, step_ms, setup.img_size) for c in to_run) + sum(extra)
            count, left = len(runs) + len(extra), len(to_run) + len(extra)
            totals = [totals[0] + count, totals[1] + count - left, totals[2] + seconds]
            lines.append(f"{task:<20} {stage:<10} {count:>5} {count - left:>7} {left:>7} {seconds / 3600:>7.2f}")
    runs, done, seconds = totals
    rates = "; ".join(f"{f}: " + ", ".join(f"{m} {v:g}" for m, v in r.items()) for f, r in step_ms.items())
    lines += [
        f"{'total':<31} {runs:>5} {done:>7} {runs - done:>7} {seconds / 3600:>7.2f}",
        f"about {seconds / 3600 / workers:.1f} h wall with {workers} workers. CPU time from the ms per image "
        f"{'measured now' if step_ms is not STEP_MS else 'in STEP_MS'} ({rates}; the CNN's at 64 px, "
        f"x{(setup.img_size / 64) ** 2:.2f} at {setup.img_size} px).",
    ]
    return lines


def measure_step_ms(img_size: int) -> dict[str, dict[str, float]]:
    """Time training and evaluation per image for every method of the plan (1 thread; about a minute)."""
    from autopeft.build import build_model
    from autopeft.data import Split
    from autopeft.train import TrainConfig, evaluate, make_optimizer, make_scheduler, train_epoch

    torch.set_num_threads(1)
    setup, rates = Setup(img_size), {"cnn": {}, "vit": {}}
    methods = {"cnn": ["linear", "full", *PEFT], "vit": ["linear", "full", *VIT_SIZES]}
    for family, names in methods.items():
        evals = []
        for name in names:
            config = setup.config("vit" if family == "vit" else "imagenet", "digits", {name: {}}, 1e-3)
            config = replace(config, train=TrainConfig(epochs=1, batch_size=64, warmup_epochs=0, lr=1e-3))
            model, task, norm = build_model(config)
            train = task.split("train")
            first, timed = (Split(train.pool, train.index[a:b], train.labels[a:b]) for a, b in ((0, 64), (64, 384)))
            optimizer = make_optimizer(model, config.train)
            scheduler = make_scheduler(optimizer, config.train, 6)
            generator = torch.Generator().manual_seed(0)
            train_epoch(model, first, optimizer, scheduler, config.train, norm, generator)
            start = time.perf_counter()
            train_epoch(model, timed, optimizer, scheduler, config.train, norm, generator)
            rates[family][name] = round(1000 * (time.perf_counter() - start) / len(timed), 1)
            start = time.perf_counter()
            evaluate(model, timed, norm)
            evals.append(1000 * (time.perf_counter() - start) / len(timed))
        rates[family]["eval"] = round(statistics.median(evals), 1)
    if img_size != 64:  # the plan scales the CNN's rates from 64 px
        rates["cnn"] = {k: round(v * (64 / img_size) ** 2, 2) for k, v in rates["cnn"].items()}
    return rates


# Report -----------------------------------------------------------------------------------------------------------


def group_label(group: str, setup: Setup) -> str:
    return {
        "imagenet": f"EfficientNet-Lite0, ImageNet weights, {setup.img_size} px",
        "random": f"EfficientNet-Lite0, random init, {setup.img_size} px",
        "vit": "demo ViT (Fashion-MNIST weights), 32 px",
    }[group]


def header(setup: Setup) -> list[str]:
    """The protocol, written before any run and never changed after seeing results."""
    ground = load_ground()
    schedules = ", ".join(
        f"{t} {s.epochs} epochs ({s.warmup_epochs} warm-up)" for t in TASKS for s in [ground.schedule(VIT, t)]
    )
    defaults = RunConfig(setup.backbone("imagenet"), DataConfig(name=TASKS[0]), {m: {} for m in PEFT}).methods
    lrs = ", ".join(f"{lr:g}" for lr in ground.lr_grid)
    quick = (
        [f"**QUICK CHECK (`--quick-epochs {setup.quick_epochs}`): every run {setup.quick_epochs} epoch(s); a test "
         "of the plumbing, not the protocol. Not a result.**", ""]
        if setup.quick_epochs is not None else []
    )  # fmt: skip
    return [
        "# CNN transfer: do ImageNet weights carry over through autopeft's CNN methods?",
        "",
        *quick,
        "Target, per task: **the best PEFT method on the real weights beats both the linear probe on the real "
        "weights and full fine-tuning from random init.**",
        "",
        "## Protocol (fixed before the first run)",
        "",
        f"- Backbone `{CNN}`: timm `tf_efficientnet_lite0` with Google's ImageNet-1k weights (the `cnn` extra; "
        f"`results/efficientnet_lite0.md`), against the same architecture at random init (seeded by the run's "
        f"seed). Input {setup.img_size} x {setup.img_size} px (the built-in tasks' images resized once, bilinear, "
        f"from their 8-32 px; set with timm's `pretrained_cfg_overlay: {{input_size: [3, {setup.img_size}, "
        f"{setup.img_size}]}}` in `backbone.options`), normalised (x - 127) / 128 as the weights were trained.",
        f"- Tasks: {', '.join(TASKS)} (chance "
        + ", ".join(f"{BUILTIN_TASKS[t].chance:.1f}%" for t in TASKS)
        + "): the VTAB-1k protocol, 800 train / 200 val / test (797 for digits, 1,000 otherwise).",
        f"- Schedules: the ground's final schedules (`autopeft/ground.yaml`), fixed for the demo ViT `{VIT}` by "
        f"the convergence check (`results/convergence.md`) and reused unchanged for the CNN (not re-checked on it): "
        f"{schedules}; AdamW, batch 64, weight decay 1e-4, linear warm-up then cosine, no augmentation.",
        "- Rows on the real weights: linear probe, full fine-tuning, and every PEFT method at one size, the "
        "library's CNN default: "
        + "; ".join(f"{m} `{json.dumps(o)}`" for m, o in defaults.items())
        + " (LoRA on the 1x1 convolutions of every block, `conv_pw` and `conv_pwl`: EfficientNet-Lite0's blocks "
        "hold no Linear). At random init: linear probe and full fine-tuning.",
        f"- Learning rates, each trained to the full schedule on train and scored on val: {lrs} (the ground's grid) "
        f"for every PEFT method and the linear probes; {', '.join(f'{lr:g}' for lr in FULL_LRS)} for full "
        "fine-tuning (smaller lrs, as in `scripts/search_vs_sweep.py`).",
        "- BatchNorm: the library default `train.bn: auto`: running statistics frozen (BatchNorms in eval mode) "
        "for the linear probes and every PEFT method, updated in full fine-tuning (both inits).",
        f"- Selection on val: accuracy, ties by val loss (then the earlier lr). Finals: the choice retrained on "
        f"train+val, test read once per run; seeds {', '.join(map(str, FINAL_SEEDS))} for the rows the target "
        f"compares (the best PEFT method on val on the real weights, the linear probe on the real weights, full "
        f"fine-tuning from random init) and for the ViT rows (as `search_vs_sweep` trains them); seed "
        f"{', '.join(map(str, OTHER_SEEDS))} for every other row (cost: each final of the CNN costs a selection run).",
        "- Verdict: the best PEFT method minus each baseline, paired by seed over the 3 seeds, 95% t-interval "
        "(2 degrees of freedom); win when the interval lies above 0 (the target holds only with both wins), loss "
        "when below, tie when it covers 0 with a half-width <= 1 point, undecided when wider.",
        f"- Demo ViT rows beside them (`{VIT}`, shipped weights pretrained on Fashion-MNIST, 32 px): the linear "
        "probe, full fine-tuning and the best single PEFT method on val over `search_vs_sweep`'s grid (LoRA ranks "
        "2/4/8 on q, v; adapter 4/8/15; VPT and KV prompts 2/8/32; SSF in all, the last or the first half of the "
        "blocks; x the same lrs), its identical runs.",
        "- Params: trainable parameters, head excluded, from the run records. Compute: images processed "
        "(forward+backward training images + forward-only evaluation images / 3), of the row's lr grid (the ViT's "
        "best PEFT row: its whole grid) and of its finals; 1 thread per run.",
        "",
    ]


def render(results: list[TaskResult], missing: list[str], setup: Setup, command: str, json_name: str) -> str:
    lines = header(setup)
    if results:
        lines += _summary_lines(results)
    for result in results:
        lines += _task_lines(result, setup)
    if missing:
        lines += [f"Not finished yet: {', '.join(missing)} (the tables above cover the other tasks only).", ""]
    lines += [
        f"Command: `{command}` ({platform.machine()}, torch {torch.__version__}, 1 thread per job; `--tasks` runs "
        "some tasks and keeps the others). "
        + recorded_time({r.task: sum(w.grid_compute.wall_s + w.final_compute.wall_s for w in r.rows) for r in results})
        + f" Every run's val and test numbers and compute: `{json_name}`.",
        "",
    ]
    return "\n".join(lines)


def _interval(v: dict[str, Any]) -> str:
    if v["mean"] is None:
        return "n/a (a final run failed)"
    return f"{v['mean']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}]"


def _test(row: Row) -> str:
    tests = [t for t in row.tests if t is not None]
    failed = len(row.tests) - len(tests)
    if not tests:
        return "failed"
    spread = f" +- {statistics.stdev(tests):.2f}" if len(tests) > 1 else ""
    return f"{statistics.mean(tests):.2f}{spread} ({len(tests)})" + (f", {failed} failed" if failed else "")


def _summary_lines(results: list[TaskResult]) -> list[str]:
    lines = [
        "## Verdict",
        "",
        "| task | chance % | best PEFT on val (ImageNet) | its test % | minus linear probe, ImageNet [95% CI] "
        "| verdict | minus full FT, random init [95% CI] | verdict | target |",
        "|---|---:|---|---|---|---|---|---|---|",
    ]
    for result in results:
        best = next(r for r in result.rows if r.group == "imagenet" and r.name == result.best_peft)
        lin, full = result.versus["linear (ImageNet)"], result.versus["full (random init)"]
        lines.append(
            f"| {result.task} | {result.chance:.1f} | {describe_methods(best.methods)} lr {best.lr:g} | {_test(best)} "
            f"| {_interval(lin)} | {lin['verdict']} | {_interval(full)} | {full['verdict']} "
            f"| {'holds' if holds(result) else '**does not hold**'} |"
        )
    lines.append("")
    failures = [r for r in results if not holds(r)]
    for result in failures:
        parts = []
        for label, v in result.versus.items():
            if v["verdict"] != "win":
                by = (
                    ""
                    if v["mean"] is None
                    else f" by {v['mean']:+.2f} points (95% CI {v['low']:+.2f} to {v['high']:+.2f})"
                )
                parts.append(f"vs {label}: {v['verdict']}{by}")
        lines.append(f"- {result.task}: the target does not hold; best PEFT ({result.best_peft}) {'; '.join(parts)}.")
    if failures:
        lines.append("")
    held = sum(holds(r) for r in results)
    lines += [f"The target holds on {held} of {len(results)} finished task(s).", ""]
    return lines


def _task_lines(result: TaskResult, setup: Setup) -> list[str]:
    lines = [
        f"## {result.task} (chance {result.chance:.1f}%)",
        "",
        "| backbone, input | row | choice on val | params | val % | test % (mean +- std (n)) | compute: lr grid "
        "+ finals (images) |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for row in result.rows:
        name = row.name
        if row.group == "imagenet" and row.name == result.best_peft:
            name = f"**{row.name}** (best PEFT on val)"
        elif row.group == "vit" and row.name == "best PEFT":
            name = f"best PEFT on val: {next(iter(row.methods))}"
        val = "-" if row.val_acc is None else f"{row.val_acc:.1f}"
        params = "-" if row.params is None else f"{row.params:,}"
        lines.append(
            f"| {group_label(row.group, setup)} | {name} | {describe_methods(row.methods)} lr {row.lr:g} | {params} "
            f"| {val} | {_test(row)} | {row.grid_compute.images:,.0f} + {row.final_compute.images:,.0f} |"
        )
    cnn_peft = Compute.total(r.grid_compute for r in result.rows if r.group == "imagenet" and r.name in PEFT)
    lines += [
        "",
        f"Choosing the best PEFT method on the real weights took every PEFT row's lr grid: {cnn_peft.images:,.0f} "
        f"images ({cnn_peft.wall_s / 60:.0f} CPU min).",
        "",
    ]
    return lines


# Main -------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(parser, TASKS)
    parser.add_argument("--img-size", type=int, default=64, help="the CNN's input size in px (default 64)")
    parser.add_argument("--plan", action="store_true", help="print runs needed, cached and CPU hours; start nothing")
    parser.add_argument("--measure", action="store_true", help="with --plan: time the steps here first (~1-2 min)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder (default results/)")
    parser.add_argument("--quick-epochs", type=int, help="smoke test: every run this many epochs (never a report)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        demo_weights(CNN)
    except BackboneError as err:
        sys.exit(f"cnn_transfer: {err}")
    shared = args.out.resolve() == RESULTS.resolve() or args.cache.resolve() == Path("runs/cache").resolve()
    if args.quick_epochs is not None and shared and not args.plan:
        sys.exit("cnn_transfer: --quick-epochs is a smoke test; pass an --out DIR and a --cache DIR of its own")
    setup = Setup(args.img_size, args.quick_epochs)
    if args.plan:
        step_ms = measure_step_ms(args.img_size) if args.measure else STEP_MS
        print("\n".join(plan(args.tasks, setup, args.cache, args.workers, step_ms)))
        return
    command = report_command("scripts/cnn_transfer.py", sys.argv[1:])
    report, json_path = args.out / REPORT, args.out / JSON
    json_path.parent.mkdir(parents=True, exist_ok=True)
    kept = recorded(json_path, setup)  # tasks whose runs this cache no longer holds keep their recorded results
    with ProcessPoolExecutor(args.workers) as pool:
        for task in args.tasks:
            task_result(task, setup, training(pool, args.cache))
            results = [r for t in TASKS if (r := task_result(t, setup, from_cache(args.cache)) or kept.get(t))]
            missing = [t for t in TASKS if t not in {r.task for r in results}]
            report.write_text(render(results, missing, setup, command, shown(json_path)))
            json_path.write_text(
                json.dumps(
                    {
                        "command": command,
                        "img_size": setup.img_size,
                        "quick_epochs": setup.quick_epochs,
                        "final_seeds": list(FINAL_SEEDS),
                        "tasks": [asdict(r) for r in results],
                        "missing": missing,
                    },
                    indent=1,
                )
                + "\n"
            )
    print(f"wrote {report} and {json_path}")


if __name__ == "__main__":
    main()
