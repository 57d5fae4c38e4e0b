"""Evidence for E2VPT prompt pruning and rewinding on the demo ViT (report, JSON, step-time bench).

Does pruning cut the prompts' parameters and keep their test accuracy, against a shorter prompt trained from
scratch, random pruning and a linear probe?

    HF_HUB_OFFLINE=1 python scripts/e2vpt.py --workers 2   # results/e2vpt.md + results/bench/e2vpt.json (hours)
    HF_HUB_OFFLINE=1 python scripts/e2vpt.py --plan        # runs per stage, how many cached, estimated time
    HF_HUB_OFFLINE=1 python scripts/e2vpt.py --part bench  # the step-time section alone (minutes)
    python scripts/e2vpt.py --render                       # the markdown again from the JSON, nothing run

The protocol is fixed in the constants below and written into the report's header. Every training run is
cached by its config hash (``--cache``, default ``runs/cache``, the cache ``scripts/search_vs_sweep.py`` fills:
the vpt / kv_prompt size x lr grid is that script's, so its runs are read back, not retrained); pruned prompts
live in ``--runs`` (default ``runs/e2vpt/<task>/<method>/<fraction>/``: ``autopeft prune``'s directory plus
``val_no_rewind.json``). Every stage resumes: a finished pruning or run is read back, an interrupted run resumes;
a run that pruning starts from and that ``scripts/ledger.py restore`` brought without its weights is trained
again. ``--tasks`` runs a subset; the report covers it and the tasks the JSON holds from an earlier run of the
same protocol, and names the missing ones. The two parts
(``evidence``, ``bench``) each rewrite their own section of the JSON; the markdown is rendered from the JSON.

Quick checks only (the outputs are not the protocol; write them elsewhere with ``--md`` / ``--json`` and a
scratch ``--cache`` / ``--runs``): ``--methods``, ``--lrs``, ``--fractions``, ``--select-seeds``,
``--final-seeds`` and ``--epochs`` override the protocol, e.g.

    HF_HUB_OFFLINE=1 python scripts/e2vpt.py --tasks digits --methods vpt --lrs 0.03 --fractions 0.5 \\
        --final-seeds 0 1 --epochs 1 --workers 1 --cache /tmp/e2/cache --runs /tmp/e2/runs \\
        --md /tmp/e2/e2vpt.md --json /tmp/e2/e2vpt.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lib.charges import images_per_run, seconds_per_image
from lib.study import recorded_time, report_command, run_jobs, shown, study_arguments
from timing import Timed, floor_step, run_interleaved, train_step

import autopeft
from autopeft.api import WEIGHTS_FILE
from autopeft.build import build_backbone, build_model
from autopeft.data import BUILTIN_TASKS, DataConfig, from_arrays
from autopeft.errors import ConfigError, RunLocked
from autopeft.files import write_json
from autopeft.ground import load_ground
from autopeft.jobs.rundir import RESULT
from autopeft.jobs.train import cached, cached_run
from autopeft.pruning import prune_run, read_prune_run
from autopeft.records import Compute, RunRecord, SeedStats, read_record
from autopeft.runconfig import BackboneConfig, RunConfig, load_run_config
from autopeft.runkey import config_key
from autopeft.search.candidates import best_on_val
from autopeft.search.prune_stage import RULE, PruneCandidate, PruneStage, choose_fraction
from autopeft.stats import PairedSeeds, paired_seeds, verdict
from autopeft.train import evaluate_with_loss, resolve_device, train_mode

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "e2vpt.md"
JSON = ROOT / "results" / "bench" / "e2vpt.json"
BACKBONE = "vit_demo_fmnist"
TASKS = ("digits", "mnist5k", "shapes_position", "shapes_orientation")
METHODS = ("vpt", "kv_prompt")
# The same prompt sizes as scripts/search_vs_sweep.py's SIZES for vpt and kv_prompt, and the same run configs
# (run_config below builds them exactly as that script does), so the grid's runs are shared through the cache.
SIZES: dict[str, list[dict[str, Any]]] = {
    "vpt": [{"length": p} for p in (2, 8, 32)],
    "kv_prompt": [{"length": t} for t in (2, 8, 32)],
}
LINEAR: dict[str, dict[str, Any]] = {"linear": {}}  # search_vs_sweep's linear reference row: lr best on val
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
LEVEL = "token"  # the prune stage's default level
SELECT_SEEDS = (0, 1)  # the unpruned best config on train: seed 0 is the grid's run, seed 1 gives the rule its std
FINAL_SEEDS = (0, 1, 2)
RANDOM_SEED = 0  # the seed of random pruning's draws (one random subset; its finals use FINAL_SEEDS)
TARGET_CUT = 0.40  # prompt parameters removed
ARMS = ("unpruned", "pruned", "shorter", "random")
ARM_NAMES = {
    "unpruned": "unpruned (best size, lr)",
    "pruned": "pruned + rewound (E2VPT)",
    "shorter": "control 1: shorter prompt from scratch",
    "random": "control 2: random pruning + rewound",
    "linear": "linear probe (no prompt)",
}
NO_REWIND = "val_no_rewind.json"
LOCK_WAIT_S = 30  # a run another process is writing (the shared cache) is waited for, then read back
# --plan's fallback cost when the cache holds no run of a method to measure it from: seconds per image (training
# image + val image / 3), from the vpt / kv_prompt grid on digits and mnist5k (58-168 s for 8,667 images per
# 10-epoch run, 2 jobs on 2 cores, 1 thread each)
SECONDS_PER_IMAGE = 0.012
# --part bench
BENCH_LENGTH = 50
BENCH_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BENCH_TOLERANCE = 0.05  # |measured ratio - expected ratio from token counts| at every fraction


@dataclass(frozen=True)
class Setup:
    """The protocol as run (the constants above unless overridden for a quick check)."""

    methods: tuple[str, ...]
    lrs: tuple[float, ...]
    fractions: tuple[float, ...]
    select_seeds: tuple[int, ...]
    final_seeds: tuple[int, ...]
    epochs: int | None
    cache: Path
    runs: Path

    @property
    def protocol(self) -> bool:
        return (
            self.methods == METHODS
            and self.lrs == load_ground().lr_grid
            and self.fractions == FRACTIONS
            and self.select_seeds == SELECT_SEEDS
            and self.final_seeds == FINAL_SEEDS
            and self.epochs is None
        )

    def run_config(self, task: str, methods: dict, lr: float, final: bool = False, seed: int = 0) -> RunConfig:
        """As scripts/search_vs_sweep.py's ``run_config`` (byte-identical configs: shared cache keys)."""
        train = load_ground().schedule(BACKBONE, task).train(lr=lr)
        if self.epochs is not None:  # quick checks only
            train = replace(train, epochs=self.epochs, warmup_epochs=min(train.warmup_epochs, self.epochs))
        return RunConfig(
            BackboneConfig(name=BACKBONE), DataConfig(name=task), methods, train, final=final, test=final, seed=seed
        )


# Jobs (each a process of its own, 1 thread) ---------------------------------------------------------------------


def train_job(job: tuple[RunConfig, Path]) -> RunRecord:
    """One cached run; a run another process is writing right now is waited for."""
    config, cache = job
    torch.set_num_threads(1)
    while True:
        try:
            return cached_run(config, cache)
        except RunLocked:
            time.sleep(LOCK_WAIT_S)


def prune_job(job: tuple[Path, Path, float, str, int]) -> dict[str, Any]:
    """Prune the finished run ``source`` into ``out`` (a finished pruning is kept: its config.yaml is written
    last), then score the pruned prompts on val as they are, before any rewinding (kept in ``NO_REWIND``)."""
    source, out, fraction, importance, seed = job
    torch.set_num_threads(1)
    if not (out / "config.yaml").is_file():
        shutil.rmtree(out, ignore_errors=True)
        prune_run(source, out, fraction, LEVEL, importance=importance, seed=seed)
    if not (out / NO_REWIND).is_file():
        write_json(out / NO_REWIND, evaluate_pruned(out))
    return {
        "dir": shown(out),
        "prune": asdict(read_prune_run(out)),
        "no_rewind": json.loads((out / NO_REWIND).read_text()),
    }


def evaluate_pruned(out: Path) -> dict[str, Any]:
    """Val accuracy and loss of the pruned model of ``autopeft prune``'s directory ``out``, as it starts its
    rewinding (its config with the pruned adapter as ``init``)."""
    config = load_run_config(out / "config.yaml")
    model, task, norm = build_model(config)
    model.to(resolve_device(config.train.device))
    start = time.perf_counter()
    val = task.split("val")
    acc, loss = evaluate_with_loss(model, val, norm, config.train.eval_batch_size, config.train.amp)
    compute = Compute(0, len(val), round(time.perf_counter() - start, 2))
    return {"val_acc": acc, "val_loss": loss, "params": autopeft.count_trainable(model), "compute": asdict(compute)}


def run_all(pool: ProcessPoolExecutor, configs: list[RunConfig], cache: Path, stage: str) -> list[RunRecord]:
    return run_jobs(pool, train_job, [(c, cache) for c in configs], stage)


def summary(record: RunRecord) -> dict[str, Any]:
    """What the report keeps of a run."""
    return {
        "config_key": record.config_key,
        "methods": record.methods,
        "lr": record.schedule.lr if record.schedule else None,
        "seed": record.seed,
        "split": record.provenance.train_split,
        "params": record.trainable_params,
        "val_acc": record.val_acc,
        "val_loss": record.val_loss,
        "test_acc": record.test_acc,
        "status": record.status,
        "compute": asdict(record.compute),
    }


# The evidence ---------------------------------------------------------------------------------------------------


def run_task(task: str, pool: ProcessPoolExecutor, setup: Setup) -> dict[str, Any]:
    """Every stage of one task, both methods side by side at each stage (the test split is read by the final
    runs only)."""
    cache = setup.cache
    grid = [(m, o, lr) for m in setup.methods for o in SIZES[m] for lr in setup.lrs]
    configs = [setup.run_config(task, {m: o}, lr) for m, o, lr in grid]
    records = run_all(pool, configs + [setup.run_config(task, LINEAR, lr) for lr in setup.lrs], cache, f"{task}: grid")
    grid_runs, linear_runs = records[: len(grid)], records[len(grid) :]
    linear: dict[str, Any] = {"grid": [summary(r) for r in linear_runs], "lr": setup.lrs[best_on_val(linear_runs)]}
    results: dict[str, dict[str, Any]] = {}
    for method in setup.methods:
        runs = [(spec, r) for spec, r in zip(grid, grid_runs, strict=True) if spec[0] == method]
        (_, options, lr), _ = runs[best_on_val([r for _, r in runs])]
        results[method] = {
            "method": method,
            "grid": [{"options": spec[1], **summary(r)} for spec, r in runs],
            "best": {"methods": {method: options}, "lr": lr},
        }
    # the unpruned best config on train once per select seed (the first is its grid run, the one pruned)
    selects = {
        m: [setup.run_config(task, r["best"]["methods"], r["best"]["lr"], seed=s) for s in setup.select_seeds]
        for m, r in results.items()
    }
    done = iter(run_all(pool, [c for configs in selects.values() for c in configs], cache, f"{task}: select seeds"))
    for method, result in results.items():
        result["unpruned_train"] = [summary(next(done)) for _ in setup.select_seeds]
        result["source"] = shown(cache / config_key(selects[method][0]))
    with_weights(pool, [configs[0] for configs in selects.values()], cache, task)
    # pruning at every fraction (importance: mask gradients over train), val before rewinding, then rewinding
    jobs = [
        (ROOT / r["source"], setup.runs / task / m / f"{f:g}", f, "gradient", 0)
        for m, r in results.items()
        for f in setup.fractions
    ]
    pruned = iter(run_jobs(pool, prune_job, jobs, f"{task}: prunings"))
    for result in results.values():
        result["candidates"] = [{"fraction": f, **next(pruned)} for f in setup.fractions]
    rewinds = [load_run_config(ROOT / c["dir"] / "config.yaml") for r in results.values() for c in r["candidates"]]
    rewound = iter(run_all(pool, rewinds, cache, f"{task}: rewinds"))
    for result in results.values():
        for candidate in result["candidates"]:
            candidate["rewound"] = summary(next(rewound))
        choose(result)
    # control 2: random pruning of the same train-split run at the chosen fraction
    chosen = [r for r in results.values() if r["fraction"] is not None]
    jobs = [
        (ROOT / r["source"], random_dir(setup, task, r["method"], r["fraction"]), r["fraction"], "random", RANDOM_SEED)
        for r in chosen
    ]
    for result, answer in zip(chosen, run_jobs(pool, prune_job, jobs, f"{task}: random prunings"), strict=True):
        result["random"] = answer
    # final runs on train+val, each reading the test split once
    arms = final_arms(task, results, linear["lr"], setup)
    finals = iter(run_all(pool, [c for _, _, configs in arms for c in configs], cache, f"{task}: final runs"))
    for owner, arm, configs in arms:
        runs = [summary(next(finals)) for _ in configs]
        if owner == "linear":
            linear["finals"] = runs
        else:
            results[owner].setdefault("finals", {})[arm] = runs
    return {"task": task, "chance": BUILTIN_TASKS[task].chance, "methods": list(results.values()), "linear": linear}


def with_weights(pool: ProcessPoolExecutor, configs: list[RunConfig], cache: Path, task: str) -> None:
    """Make sure the cached runs of ``configs``, which pruning starts from, hold their weights: a run restored by
    ``scripts/ledger.py`` holds only its records, so it is trained again (same config and seed). A run that did
    not complete has no weights to prune: one ConfigError, nothing deleted."""
    restored = [c for c in configs if not (cache / config_key(c) / WEIGHTS_FILE).is_file()]
    for config in restored:
        record = read_record(cache / config_key(config) / RESULT)
        if record.status != "completed":
            raise ConfigError(
                f"{cache / config_key(config)}: pruning starts from this run, which ended {record.status} "
                f"({record.reason}); pick another config, or move the run away to train it again"
            )
    for config in restored:
        (cache / config_key(config) / RESULT).unlink()
    run_all(pool, restored, cache, f"{task}: weights of restored runs")


def random_dir(setup: Setup, task: str, method: str, fraction: float) -> Path:
    return setup.runs / task / method / f"random-{fraction:g}-seed{RANDOM_SEED}"


def final_arms(
    task: str, results: dict[str, dict[str, Any]], linear_lr: float, setup: Setup
) -> list[tuple[str, str, list[RunConfig]]]:
    """(method, arm, final configs): the unpruned best config; at the chosen fraction the pruned and rewound
    prompts (starting from the pruned adapter, as the prune stage's finals), the kept lengths from scratch and
    the randomly pruned prompts; the linear probe at its best lr."""
    arms = []
    for method, result in results.items():
        best = result["best"]
        arms.append((method, "unpruned", final_configs(task, best["methods"], best["lr"], setup)))
        if result["fraction"] is None:
            continue
        kept = load_run_config(ROOT / candidate_of(result)["dir"] / "config.yaml")
        arms.append((method, "pruned", final_configs(task, kept.methods, best["lr"], setup, kept.init)))
        arms.append((method, "shorter", final_configs(task, kept.methods, best["lr"], setup)))
        randomised = load_run_config(ROOT / result["random"]["dir"] / "config.yaml")
        arms.append((method, "random", final_configs(task, randomised.methods, best["lr"], setup, randomised.init)))
    arms.append(("linear", "linear", final_configs(task, LINEAR, linear_lr, setup)))
    return arms


def final_configs(task: str, methods: dict, lr: float, setup: Setup, init: str | None = None) -> list[RunConfig]:
    configs = [setup.run_config(task, copy.deepcopy(methods), lr, final=True, seed=s) for s in setup.final_seeds]
    return configs if init is None else [replace(c, init=init) for c in configs]


def candidate_of(result: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in result["candidates"] if c["fraction"] == result["fraction"])


def choose(result: dict[str, Any]) -> None:
    """The prune stage's rule (``choose_fraction``) on the rewound val losses, with the unpruned config's seed
    std over the select seeds (its tolerance only with a single seed)."""
    candidates = [
        PruneCandidate(
            fraction=c["fraction"],
            methods=c["rewound"]["methods"],
            init=str(ROOT / c["dir"] / "pruned"),
            params=c["rewound"]["params"],
            val_acc=c["rewound"]["val_acc"],
            val_loss=c["rewound"]["val_loss"],
            status=c["rewound"]["status"],
            run_dir=c["dir"],
        )
        for c in result["candidates"]
    ]
    losses = [r["val_loss"] for r in result["unpruned_train"]]
    fraction, limit = choose_fraction(losses, candidates, PruneStage().tolerance)
    result.update(rule=RULE, unpruned_val_losses=losses, limit=limit, fraction=fraction)


# Statistics -------------------------------------------------------------------------------------------------------


def tests(runs: list[dict[str, Any]]) -> list[float]:
    return [r["test_acc"] for r in runs if r["test_acc"] is not None]


def paired(a: list[dict], b: list[dict]) -> PairedSeeds:
    """``a - b`` over the final seeds both finished."""
    return paired_seeds({r["seed"]: r["test_acc"] for r in a}, {r["seed"]: r["test_acc"] for r in b})


def compute_of(runs: list[dict[str, Any]]) -> Compute:
    return Compute.total(Compute(**r["compute"]) for r in runs)


def stage_compute(task: dict[str, Any]) -> list[tuple[str, Compute]]:
    """Images and wall time per stage of one task (both methods), as the records count them."""
    methods = task["methods"]
    candidates = [c for m in methods for c in m["candidates"]]
    randoms = [m["random"] for m in methods if m.get("random")]
    rows = [
        (
            "prompt grid on train (sizes x lrs; search_vs_sweep's runs)",
            compute_of([g for m in methods for g in m["grid"]]),
        ),
        (
            "unpruned best, other select seeds on train",
            compute_of([r for m in methods for r in m["unpruned_train"][1:]]),
        ),
        ("pruning: importance passes over train", Compute.total(Compute(**c["prune"]["compute"]) for c in candidates)),
        (
            "pruned prompts scored on val before rewinding",
            Compute.total(Compute(**c["no_rewind"]["compute"]) for c in candidates),
        ),
        ("rewinding on train, scored on val", compute_of([c["rewound"] for c in candidates])),
        (
            "random pruning (no pass) and its val score",
            Compute.total(Compute(**r["no_rewind"]["compute"]) for r in randoms),
        ),
    ]
    for arm in ARMS:
        runs = [r for m in methods for r in m.get("finals", {}).get(arm, [])]
        if runs:
            rows.append((f"finals: {ARM_NAMES[arm]}", compute_of(runs)))
    rows.append(("linear probe: lr grid on train", compute_of(task["linear"]["grid"])))
    rows.append(("linear probe: finals", compute_of(task["linear"].get("finals", []))))
    return rows


# Report -----------------------------------------------------------------------------------------------------------


def header(setup: dict[str, Any]) -> list[str]:
    """The protocol, written before any run and never changed after seeing results."""
    ground = load_ground()
    schedules = ", ".join(f"{t} {ground.schedule(BACKBONE, t).epochs} ep" for t in TASKS)
    lrs = ", ".join(f"{lr:g}" for lr in ground.lr_grid)
    sizes = "; ".join(f"{m} length {', '.join(str(o['length']) for o in SIZES[m])}" for m in METHODS)
    return [
        "# E2VPT prompt pruning and rewinding on the demo ViT",
        "",
        "Does E2VPT's token pruning (Han et al., ICCV 2023; `autopeft.prune`, the `prune` step of `autopeft run` / "
        "`select`) cut the prompts' parameters and keep their test accuracy, and is it better than simply training "
        "a shorter prompt or pruning at random?",
        "",
        "## Protocol (fixed before the first run)",
        "",
        f"- Backbone `{BACKBONE}` (shipped weights); tasks {', '.join(TASKS)} (chance: "
        + ", ".join(f"{BUILTIN_TASKS[t].chance:.1f}% = 1/{BUILTIN_TASKS[t].num_classes}" for t in TASKS)
        + f"); schedules from the ground (`autopeft/ground.yaml`): {schedules}; AdamW, batch 64, weight decay 1e-4, "
        "warm-up then cosine; 1 thread per run.",
        f"- Methods {', '.join(METHODS)} at their best size: {sizes} x lr {lrs}, each trained on train (seed 0) and "
        "scored on val; best = highest val accuracy, ties by lower val loss. The grid is "
        "`results/search_vs_sweep.md`'s (same configs, runs shared through the run cache).",
        f"- The unpruned best config trained on train with seeds {', '.join(map(str, SELECT_SEEDS))}: the mean and "
        "std of its val loss feed the rule. Its seed-0 run is pruned.",
        f"- Pruning: {LEVEL} level (the prune stage's default) at fractions "
        f"{', '.join(f'{f:g}' for f in FRACTIONS)}: each layer loses floor(fraction x n) of its n tokens, the "
        "lowest by importance E|dL/d rho_k| over the train split (`autopeft.pruning.prune_run`). Each pruned model "
        "is scored on val as it is (no rewind) and after rewinding: retrained on train from the pruned weights with "
        "the same lr and schedule, scored on val.",
        f"- Rule (`autopeft.search.prune_stage.choose_fraction`, fixed in advance): {RULE}. Here the run has "
        f"{len(SELECT_SEEDS)} seeds, so the limit is mean + one seed std.",
        f"- Finals at the chosen fraction, each trained on train+val and tested once, seeds "
        f"{', '.join(map(str, FINAL_SEEDS))}: the unpruned best config; the pruned and rewound prompts (starting "
        "from the chosen fraction's pruned adapter, as the prune stage's finals); control 1: a prompt of the kept "
        "per-block lengths trained from scratch; control 2: random pruning at the same fraction (the same number of "
        f'tokens per layer, chosen by `prune(importance="random", seed={RANDOM_SEED})` from the same train-split '
        "run, its finals starting from that adapter); the linear probe at its val-best lr over the same grid "
        "(search_vs_sweep's linear row). No fraction passing the rule: the method is not pruned, its pruned finals "
        "are skipped.",
        "- Differences: pruned minus each row, paired by final seed, 95% t-interval (2 degrees of freedom).",
        f"- Targets (the issue's): prompt parameters cut by >= {TARGET_CUT:.0%}; test accuracy within one seed std "
        "(of the unpruned finals) of the unpruned prompts; above both controls and the linear probe (mean over "
        "seeds; the interval says whether 3 seeds resolve it).",
        "- Compute: images processed (forward+backward training images + forward-only evaluation images / 3), and "
        "wall time (1 thread per run, 2 runs at once on 2 cores).",
        "",
    ]


def render(data: dict[str, Any]) -> str:
    evidence, bench_part = data.get("evidence"), data.get("bench")
    lines = header(evidence["setup"] if evidence else {})
    if evidence:
        if not evidence["protocol"]:
            lines += [f"**Quick check, not the protocol:** {json.dumps(evidence['setup'])}", ""]
        if evidence["tasks"]:
            lines += summary_lines(evidence["tasks"])
        for task in evidence["tasks"]:
            lines += task_lines(task)
        if evidence["missing"]:
            lines += [f"Not run yet: {', '.join(evidence['missing'])}.", ""]
        seconds = {t["task"]: Compute.total(c for _, c in stage_compute(t)).wall_s for t in evidence["tasks"]}
        lines += [
            f"Evidence: `{evidence['command']}` ({evidence['machine']}, "
            f"torch {evidence['torch']}; `--tasks` runs some tasks and keeps the others). "
            + recorded_time(seconds)
            + f" Every number: `{evidence['json']}`.",
            "",
        ]
    else:
        lines += ["No evidence run yet (`--part evidence`).", ""]
    lines += bench_lines(bench_part) if bench_part else ["## Step time with long prompts", "", "Not measured yet.", ""]
    return "\n".join(lines)


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _interval(diff: PairedSeeds) -> str:
    if diff.mean is None:
        return "-"
    mean, half = diff.mean, diff.half
    return f"{mean:+.2f}" if half is None else f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def _kept(candidate: dict[str, Any]) -> str:
    counts = [len(layer["tokens"]) for layer in candidate["prune"]["layers"]]
    return f"{counts[0]} x {len(counts)} blocks" if len(set(counts)) == 1 else ", ".join(map(str, counts))


def task_lines(task: dict[str, Any]) -> list[str]:
    lines = [f"## {task['task']} (chance {task['chance']:.1f}%)", ""]
    for result in task["methods"]:
        lines += method_lines(task, result)
    linear = task["linear"]
    lines += [
        f"Linear probe: lr {linear['lr']:g} best on val ("
        + ", ".join(f"{r['lr']:g}: {_pct(r['val_acc'])}" for r in linear["grid"])
        + ").",
        "",
        "Compute per stage (both methods):",
        "",
        "| stage | images | wall (min) |",
        "|---|---:|---:|",
    ]
    for stage, compute in stage_compute(task):
        lines.append(f"| {stage} | {compute.images:,.0f} | {compute.wall_s / 60:.1f} |")
    return [*lines, ""]


def method_lines(task: dict[str, Any], result: dict[str, Any]) -> list[str]:
    best = result["best"]
    method = result["method"]
    options = best["methods"][method]
    head = next(g for g in result["grid"] if g["options"] == options and g["lr"] == best["lr"])
    losses = result["unpruned_val_losses"]
    std = SeedStats.of(losses).std
    lines = [
        f"### {task['task']}: {method}",
        "",
        f"Best on val: {json.dumps(options)} lr {best['lr']:g} (val {_pct(head['val_acc'])}%, loss "
        f"{_loss(head['val_loss'])}; {head['params']:,} prompt parameters). Unpruned on train, seeds "
        f"{', '.join(str(r['seed']) for r in result['unpruned_train'])}: val loss "
        f"{', '.join(_loss(v) for v in losses)} (std {_loss(std)}); rule limit {_loss(result['limit'])}.",
        "",
        "| fraction | kept tokens | params | val % no rewind | val loss no rewind | val % rewound | val loss rewound "
        "| within limit |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in result["candidates"]:
        rewound, plain = c["rewound"], c["no_rewind"]
        ok = rewound["val_loss"] is not None and result["limit"] is not None and rewound["val_loss"] <= result["limit"]
        lines.append(
            f"| {c['fraction']:g} | {_kept(c)} | {c['prune']['params_after']:,} | {_pct(plain['val_acc'])} | "
            f"{_loss(plain['val_loss'])} | {_pct(rewound['val_acc'])} | {_loss(rewound['val_loss'])} | "
            f"{'yes' if ok else 'no'} |"
        )
    lines.append("")
    finals = result.get("finals", {})
    if result["fraction"] is None:
        best_rewind = min(
            (c for c in result["candidates"] if c["rewound"]["val_loss"] is not None),
            key=lambda c: c["rewound"]["val_loss"],
            default=None,
        )
        closest = (
            f"; the lowest rewound val loss is {_loss(best_rewind['rewound']['val_loss'])} at fraction "
            f"{best_rewind['fraction']:g}, {best_rewind['rewound']['val_loss'] - result['limit']:+.4f} over the limit"
            if best_rewind and result["limit"] is not None
            else ""
        )
        lines += [
            f"**No fraction passes the rule**{closest}: {method} is not pruned on {task['task']}; its pruned "
            "finals are skipped.",
            "",
        ]
    else:
        chosen = candidate_of(result)
        before, after = chosen["prune"]["params_before"], chosen["prune"]["params_after"]
        lines += [
            f"Chosen fraction: **{result['fraction']:g}** (the largest within the limit): prompt parameters "
            f"{before:,} -> {after:,} ({1 - after / before:.1%} cut). Random pruning at {result['fraction']:g} "
            f"scores {_pct(result['random']['no_rewind']['val_acc'])}% on val before rewinding (gradient "
            f"importance: {_pct(chosen['no_rewind']['val_acc'])}%).",
            "",
        ]
    lines += [
        "| final (train+val, tested) | params | test % mean +- std | per seed | pruned - row [95% CI] |",
        "|---|---:|---|---|---|",
    ]
    rows = [(ARM_NAMES[arm], finals[arm]) for arm in ARMS if arm in finals]
    rows.append((ARM_NAMES["linear"], task["linear"].get("finals", [])))
    pruned = finals.get("pruned")
    for name, runs in rows:
        stats = SeedStats.of(tests(runs))
        spread = (
            "-"
            if stats.mean is None
            else f"{stats.mean:.2f}" + ("" if stats.std is None else f" +- {stats.std:.2f}") + f" ({len(stats)})"
        )
        versus = "-" if pruned is None or runs is pruned else _interval(paired(pruned, runs))
        params = f"{runs[0]['params']:,}" if runs else "-"
        lines.append(f"| {name} | {params} | {spread} | {', '.join(_pct(t, 2) for t in tests(runs))} | {versus} |")
    lines += ["", *verdict_lines(task, result), ""]
    return lines


def verdicts(task: dict[str, Any], result: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """Each target: met or not, and the figure that says by how much."""
    finals = result.get("finals", {})
    out: dict[str, tuple[bool, str]] = {}
    if result["fraction"] is None:
        out["cut"] = (False, f"0% cut: no fraction passes the rule; {TARGET_CUT:.0%} short")
        return out
    chosen = candidate_of(result)
    cut = 1 - chosen["prune"]["params_after"] / chosen["prune"]["params_before"]
    out["cut"] = (
        cut >= TARGET_CUT,
        f"{cut:.1%} cut" + ("" if cut >= TARGET_CUT else f", {TARGET_CUT - cut:.1%} short"),
    )
    pruned = SeedStats.of(tests(finals.get("pruned", []))).mean
    unpruned = SeedStats.of(tests(finals.get("unpruned", [])))
    std = unpruned.std  # None below two seeds
    if pruned is None or std is None:
        return out
    gap = pruned - unpruned.mean
    out["std"] = (
        gap >= -std,
        f"pruned - unpruned {gap:+.2f}, unpruned seed std {std:.2f}"
        + ("" if gap >= -std else f", missed by {-std - gap:.2f}"),
    )
    for arm, runs in (
        ("shorter", finals.get("shorter")),
        ("random", finals.get("random")),
        ("linear", task["linear"].get("finals")),
    ):
        other = SeedStats.of(tests(runs or [])).mean
        if other is None:
            continue
        margin = pruned - other  # the stated rule: above on the mean over seeds
        diff = paired(finals["pruned"], runs)
        resolved = "" if diff.half is None else f"; paired {_interval(diff)}: {verdict(diff.mean, diff.half)}"
        out[arm] = (margin > 0, f"{margin:+.2f} on the mean{resolved}")
    return out


TARGET_NAMES = {
    "cut": f"prompt parameters cut >= {TARGET_CUT:.0%}",
    "std": "test within one seed std of unpruned",
    "shorter": "above control 1 (shorter prompt)",
    "random": "above control 2 (random pruning)",
    "linear": "above the linear probe",
}


def verdict_lines(task: dict[str, Any], result: dict[str, Any]) -> list[str]:
    lines = [f"Verdict ({task['task']}, {result['method']}):", ""]
    for key, (met, figure) in verdicts(task, result).items():
        lines.append(f"- {TARGET_NAMES[key]}: {'met' if met else '**missed**'} ({figure})")
    return lines


def summary_lines(tasks: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Summary",
        "",
        "| task | method | fraction | params cut | pruned - unpruned [95% CI] | within std | - shorter | - random "
        "| - linear | targets met |",
        "|---|---|---:|---:|---|---|---|---|---|---|",
    ]
    for task in tasks:
        for result in task["methods"]:
            got = verdicts(task, result)
            finals = result.get("finals", {})
            pruned = finals.get("pruned")
            diffs = [
                _interval(paired(pruned, runs)) if pruned and runs else "-"
                for runs in (
                    finals.get("unpruned"),
                    finals.get("shorter"),
                    finals.get("random"),
                    task["linear"].get("finals"),
                )
            ]
            cut = got["cut"][1].split(" cut")[0] if result["fraction"] is not None else "0%"
            std = "-" if "std" not in got else ("yes" if got["std"][0] else "no")
            met = sum(ok for ok, _ in got.values())
            fraction = "none" if result["fraction"] is None else f"{result['fraction']:g}"
            lines.append(
                f"| {task['task']} | {result['method']} | {fraction} | {cut} | {diffs[0]} | {std} | {diffs[1]} | "
                f"{diffs[2]} | {diffs[3]} | {met} / {len(TARGET_NAMES)} |"
            )
    return [*lines, "", *tally_lines(tasks), ""]


def tally_lines(tasks: list[dict[str, Any]]) -> list[str]:
    """Per target, how many task x method rows meet it and which do not; then the rows meeting all of them."""
    rows = {f"{t['task']} {r['method']}": verdicts(t, r) for t in tasks for r in t["methods"]}
    lines = ["Targets per task x method row (the accuracy targets on the means over the final seeds):", ""]
    for key, name in TARGET_NAMES.items():
        judged = {row: got[key][0] for row, got in rows.items() if key in got}
        missed = [row for row, met in judged.items() if not met]
        lines.append(
            f"- {name}: {len(judged) - len(missed)} of {len(judged)} rows"
            + (f" (missed: {', '.join(missed)})" if missed else "")
        )
    every = sum(all(met for met, _ in got.values()) and len(got) == len(TARGET_NAMES) for got in rows.values())
    return [*lines, f"- all {len(TARGET_NAMES)} targets: {every} of {len(rows)} rows"]


# --plan -----------------------------------------------------------------------------------------------------------


def plan(setup: Setup, tasks: list[str], workers: int) -> str:
    """What every stage needs, what the cache already holds, and a rough CPU time (per-image costs measured on the
    cache's own runs); stages whose configs depend on results not there yet count as not cached."""
    cost = seconds_per_image(setup.cache, BACKBONE, (*METHODS, "linear"), SECONDS_PER_IMAGE)
    rows: list[tuple[str, str, int, int, float]] = []
    for task in tasks:
        epochs = setup.epochs or load_ground().schedule(BACKBONE, task).epochs
        train_images, final_images = images_per_run(task, epochs)

        def add(stage: str, method: str, configs: list[RunConfig | None], images: float, task: str = task) -> None:
            done = sum(c is not None and cached(c, setup.cache) is not None for c in configs)
            rows.append((task, stage, len(configs), done, (len(configs) - done) * images * cost[method]))

        linear = [setup.run_config(task, LINEAR, lr) for lr in setup.lrs]
        add("linear lr grid (train)", "linear", linear, train_images)
        records = [cached(c, setup.cache) for c in linear]
        linear_lr = setup.lrs[best_on_val(records)] if all(records) else None
        add(
            "linear finals",
            "linear",
            final_configs(task, LINEAR, linear_lr, setup) if linear_lr else [None] * len(setup.final_seeds),
            final_images,
        )
        for method in setup.methods:
            specs = [(o, lr) for o in SIZES[method] for lr in setup.lrs]
            grid = [setup.run_config(task, {method: o}, lr) for o, lr in specs]
            add(f"{method}: size x lr grid (train)", method, grid, train_images)
            records = [cached(c, setup.cache) for c in grid]
            best = specs[best_on_val(records)] if all(records) else None
            selects = [
                setup.run_config(task, {method: best[0]}, best[1], seed=s) if best else None for s in setup.select_seeds
            ]
            others = selects[1:] if setup.select_seeds[0] == 0 else selects  # seed 0 is the grid's run
            add(f"{method}: unpruned best, other select seeds (train)", method, others, train_images)
            dirs = [setup.runs / task / method / f"{f:g}" for f in setup.fractions]
            done = sum((d / "config.yaml").is_file() and (d / NO_REWIND).is_file() for d in dirs)
            prune_images = train_images / epochs  # one pass over train, val scored once
            rows.append(
                (
                    task,
                    f"{method}: prunings + val before rewind",
                    len(dirs),
                    done,
                    (len(dirs) - done) * prune_images * cost[method],
                )
            )
            rewinds = [load_run_config(d / "config.yaml") if (d / "config.yaml").is_file() else None for d in dirs]
            add(f"{method}: rewinds (train)", method, rewinds, train_images)
            records = [cached(c, setup.cache) if c else None for c in rewinds]
            finals = [None] * (4 * len(setup.final_seeds))  # assumes a fraction passes (an upper bound)
            if best is not None:
                finals[: len(setup.final_seeds)] = final_configs(task, {method: best[0]}, best[1], setup)
            selected = [cached(c, setup.cache) if c else None for c in selects]
            if all(records) and all(selected):
                result = {
                    "candidates": [
                        {"fraction": f, "dir": shown(d), "rewound": summary(r)}
                        for f, d, r in zip(setup.fractions, dirs, records, strict=True)
                    ],
                    "unpruned_train": [summary(r) for r in selected],
                }
                choose(result)
                if result["fraction"] is None:
                    finals = finals[: len(setup.final_seeds)]
                else:
                    kept = load_run_config(ROOT / candidate_of(result)["dir"] / "config.yaml")
                    k = len(setup.final_seeds)
                    finals[k : 2 * k] = final_configs(task, kept.methods, best[1], setup, kept.init)
                    finals[2 * k : 3 * k] = final_configs(task, kept.methods, best[1], setup)
                    folder = random_dir(setup, task, method, result["fraction"])
                    if (folder / "config.yaml").is_file():
                        randomised = load_run_config(folder / "config.yaml")
                        finals[3 * k :] = final_configs(task, randomised.methods, best[1], setup, randomised.init)
            add(f"{method}: finals, 4 arms (train+val)", method, finals, final_images)
    total = sum(r[4] for r in rows)
    lines = [f"{'task':<19} {'stage':<52} {'runs':>5} {'cached':>6} {'CPU h':>6}"]
    lines += [f"{t:<19} {s:<52} {n:>5} {c:>6} {h / 3600:>6.2f}" for t, s, n, c, h in rows]
    shared = sum(r[4] for r in rows if "grid" in r[1])
    needed = sum(r[2] for r in rows if "prunings" not in r[1])
    in_cache = sum(r[3] for r in rows if "prunings" not in r[1])
    lines += [
        "",
        f"training runs: {needed} needed, {in_cache} in the cache, {needed - in_cache} to train "
        f"(+ {sum(r[2] - r[3] for r in rows if 'prunings' in r[1])} prunings, each one pass over train)",
        f"estimated CPU time {total / 3600:.1f} h, about {total / 3600 / workers:.1f} h wall with --workers "
        f"{workers} (1 thread each), {shared / 3600:.1f} h of it the lr grids search_vs_sweep trains too (shared "
        "runs); seconds per image measured from the cache's runs: "
        + ", ".join(f"{m} {s * 1000:.1f} ms" for m, s in cost.items()),
        "(finals count 4 arms per method, as if a fraction passes; stages that wait on results count as not "
        "cached; pruned and shorter prompts cost less per image than the estimate)",
    ]
    return "\n".join(lines)


# --part bench -----------------------------------------------------------------------------------------------------


def random_task(seed: int) -> Any:
    """64 random 32 px images of 10 classes: pruning's importance needs a split; timing does not read it."""
    rng = np.random.default_rng(seed)
    arrays = {
        s: (rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), np.arange(64) % 10) for s in ("train", "val", "test")
    }
    return from_arrays("random", lambda: arrays, 32)


def token_flops(model: torch.nn.Module, method: str, kept: int) -> float:
    """Multiply-adds of a forward pass that depend on the sequence: per block 12 d^2 per query token (qkv, proj,
    MLP) + 2 d per query-key pair (scores, values), plus the patch embedding. VPT's prompts are queries and keys;
    key-value prompts are keys only."""
    d, depth = model.embed_dim, len(model.blocks)
    patches = model.patch_embed.num_patches
    tokens = patches + model.num_prefix_tokens
    queries = tokens + kept if method == "vpt" else tokens
    keys = tokens + kept
    return (
        depth * (12 * d * d * queries + 2 * d * queries * keys) + patches * model.patch_embed.proj.weight[0].numel() * d
    )


@dataclass
class PrunedPrompt:
    """One timed prompt model: its pruning fraction, prompt tokens kept per block and trainable parameters."""

    method: str
    fraction: float
    kept: int
    params: int
    timed: Timed


def bench(threads: int, warmup: int, steps: int, per_round: int, batch: int, seed: int) -> dict[str, Any]:
    """Median train-step time of VPT and key-value prompts of length BENCH_LENGTH on the demo ViT (random
    weights), pruned at each fraction (token level, ``autopeft.prune``), beside the frozen floor."""
    torch.set_num_threads(threads)
    load = os.getloadavg()
    torch.manual_seed(seed)
    base = build_backbone(BackboneConfig(name=BACKBONE, pretrained=False))
    base.reset_classifier(10)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    data = random_task(seed)
    floor = copy.deepcopy(base).requires_grad_(False)
    train_mode(floor, "auto")
    timed = [Timed("floor", floor_step(floor, images, labels))]
    prompts = []
    for method in METHODS:
        for fraction in BENCH_FRACTIONS:
            model = autopeft.apply(copy.deepcopy(base), {method: {"length": BENCH_LENGTH}})
            if fraction:
                autopeft.prune(model, data, fraction, LEVEL, batch_size=32)
            train_mode(model, "auto")  # prompt dropout on
            item = Timed(f"{method} {fraction}", train_step(model, images, labels))
            kept, params = autopeft.get_sizes(model, method)[0], autopeft.count_trainable(model)
            prompts.append(PrunedPrompt(method, fraction, kept, params, item))
            timed.append(item)
    run_interleaved(timed, warmup, steps, per_round, seed)
    methods = {}
    for method in METHODS:
        items = [p for p in prompts if p.method == method]
        medians = [p.timed.median for p in items]
        kept = [float(p.kept) for p in items]
        fit = statistics.linear_regression(kept, medians)
        rows = [
            {
                "fraction": t.fraction,
                "kept_tokens_per_block": t.kept,
                "params": t.params,
                "median_ms": round(ms, 3),
                "min_ms": round(min(t.timed.ms_per_step), 3),
                "ratio": round(ms / medians[0], 4),
                "expected_token_flops": round(
                    token_flops(base, method, t.kept) / token_flops(base, method, BENCH_LENGTH), 4
                ),
            }
            for t, ms in zip(items, medians, strict=True)
        ]
        deviation = max(abs(r["ratio"] - r["expected_token_flops"]) for r in rows)
        methods[method] = {
            "rows": rows,
            "ms_per_kept_token": round(fit.slope, 3),
            "intercept_ms": round(fit.intercept, 3),
            "r_squared": round(statistics.correlation(kept, medians) ** 2, 4),
            "max_deviation_from_expected": round(deviation, 4),
            "pass": deviation <= BENCH_TOLERANCE,
        }
    return {
        "backbone": f"{BACKBONE} architecture, random weights (pretrained=False), 10 classes",
        "length": BENCH_LENGTH,
        "batch": batch,
        "threads": threads,
        "warmup": warmup,
        "timed_steps": steps,
        "per_round": per_round,
        "seed": seed,
        "floor_ms": round(timed[0].median, 3),
        "methods": methods,
        "tolerance": BENCH_TOLERANCE,
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }


def bench_lines(b: dict[str, Any]) -> list[str]:
    lines = [
        "## Step time with long prompts",
        "",
        f"{b['backbone']}; VPT and key-value prompts of length {b['length']} in every block, pruned at each "
        f"fraction by `autopeft.prune` ({LEVEL} level: the removed tokens leave the parameters and the sequence); "
        f"train step (forward, cross-entropy, backward, AdamW step) on a batch of {b['batch']}, {b['threads']} "
        f"thread(s), median of {b['timed_steps']} steps per model after {b['warmup']} warm-up, interleaved in "
        f"shuffled rounds of {b['per_round']}. The frozen floor (forward and backward to the input, no weight "
        f"gradients, no optimizer): {b['floor_ms']:.1f} ms. Expected ratio from token counts: the multiply-adds "
        "that depend on the sequence (per block 12 d^2 per query token, 2 d per query-key pair; VPT's prompts are "
        "queries and keys, key-value prompts keys only) plus the patch embedding: F(kept) / F("
        f"{b['length']}). Target: the measured ratio within {b['tolerance']} of it at every fraction (time falls "
        "in proportion to the removed tokens' cost). A line through the medians gives the cost per kept token and "
        "the time at 0 tokens. Load average (1 min) "
        f"{b['load_average_before'][0]:.1f} before, {b['load_average_after'][0]:.1f} after ({b['machine']})"
        + (
            ": other jobs shared the cores, so each ratio carries a few points of noise."
            if max(b["load_average_before"][0], b["load_average_after"][0]) > 1.5
            else "."
        ),
        "",
    ]
    for method, result in b["methods"].items():
        lines += [
            f"| {method}: fraction | kept tokens | params | step ms (median) | ratio to unpruned | expected ratio "
            "(token counts) | measured - expected |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in result["rows"]:
            lines.append(
                f"| {r['fraction']:g} | {r['kept_tokens_per_block']} | {r['params']:,} | {r['median_ms']:.1f} | "
                f"{r['ratio']:.3f} | {r['expected_token_flops']:.3f} | {r['ratio'] - r['expected_token_flops']:+.3f} |"
            )
        dev = result["max_deviation_from_expected"]
        gaps = [r["ratio"] - r["expected_token_flops"] for r in result["rows"][1:]]
        below, above = sum(g < 0 for g in gaps), sum(g > 0 for g in gaps)
        call = (
            f"<= {b['tolerance']}: met"
            if result["pass"]
            else f"> {b['tolerance']}: **missed** by {dev - b['tolerance']:.3f}"
        )
        lines += [
            "",
            f"{method}: {result['ms_per_kept_token']:.2f} ms per kept token (R^2 {result['r_squared']:.2f}), "
            f"{result['intercept_ms']:.1f} ms at 0 tokens on the line (floor {b['floor_ms']:.1f} ms); largest "
            f"|measured - expected| {dev:.3f} {call}. Measured below expected (more time saved than the token "
            f"counts predict) at {below} of {len(gaps)} fractions, above at {above}.",
            "",
        ]
    lines += [f"Bench: `{b['command']}`.", ""]
    return lines


# Main -------------------------------------------------------------------------------------------------------------


def write(data: dict[str, Any], md: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    md.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    md.write_text(render(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "evidence", "bench"), default="all")
    parser.add_argument("--plan", action="store_true", help="print runs per stage, cached, estimated time; run nothing")
    parser.add_argument("--render", action="store_true", help="rewrite the markdown from the JSON; run nothing")
    study_arguments(parser, TASKS, "runs/e2vpt")
    parser.add_argument("--md", type=Path, default=OUT)
    parser.add_argument("--json", type=Path, default=JSON)
    quick = parser.add_argument_group("quick checks only (not the protocol; write elsewhere with --md / --json)")
    quick.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    quick.add_argument("--lrs", nargs="+", type=float, default=None)
    quick.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    quick.add_argument("--select-seeds", nargs="+", type=int, default=list(SELECT_SEEDS))
    quick.add_argument("--final-seeds", nargs="+", type=int, default=list(FINAL_SEEDS))
    quick.add_argument("--epochs", type=int, default=None)
    bench_options = parser.add_argument_group("--part bench")
    bench_options.add_argument("--threads", type=int, default=1)
    bench_options.add_argument("--warmup", type=int, default=3)
    bench_options.add_argument("--steps", type=int, default=20)
    bench_options.add_argument("--per-round", type=int, default=2)
    bench_options.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup = Setup(
        tuple(args.methods),
        tuple(args.lrs) if args.lrs else load_ground().lr_grid,
        tuple(args.fractions),
        tuple(args.select_seeds),
        tuple(args.final_seeds),
        args.epochs,
        args.cache.resolve(),
        args.runs.resolve(),
    )
    if args.plan:
        print(plan(setup, args.tasks, args.workers))
        return
    if not setup.protocol and (args.md.resolve() == OUT or args.json.resolve() == JSON):
        parser.error("quick-check overrides change the protocol: pass --md and --json outside results/")
    data = json.loads(args.json.read_text()) if args.json.is_file() else {}
    if args.render:
        if not data:
            parser.error(f"--render: {shown(args.json)} does not exist; run the evidence or the bench first")
        args.md.write_text(render(data))
        print(f"wrote {args.md}")
        return
    if args.part in ("all", "evidence"):
        shown_setup = json.loads(
            json.dumps({k: shown(v) if isinstance(v, Path) else v for k, v in asdict(setup).items()})
        )
        before = data.get("evidence") or {}
        done = {t["task"]: t for t in before.get("tasks", [])} if before.get("setup") == shown_setup else {}
        data["evidence"] = None
        with ProcessPoolExecutor(args.workers) as pool:
            for task in args.tasks:
                done[task] = run_task(task, pool, setup)
                data["evidence"] = {
                    "command": report_command("scripts/e2vpt.py", sys.argv[1:]),
                    "protocol": setup.protocol,
                    "setup": shown_setup,
                    "tasks": [done[t] for t in TASKS if t in done],  # earlier runs' tasks with the same setup kept
                    "missing": [t for t in TASKS if t not in done],
                    "machine": f"{platform.machine()}, 1 thread per run, {args.workers} at once",
                    "torch": torch.__version__,
                    "json": shown(args.json),
                }
                write(data, args.md, args.json)
    if args.part in ("all", "bench"):
        data["bench"] = {
            "command": report_command("scripts/e2vpt.py", sys.argv[1:]),
            **bench(args.threads, args.warmup, args.steps, args.per_round, args.batch, 0),
        }
        write(data, args.md, args.json)
    print(f"wrote {args.md} and {args.json}")


if __name__ == "__main__":
    main()
