"""Does the supernet rank subnets the way standalone training does, where the search chooses?

    HF_HUB_OFFLINE=1 python scripts/bench_ranking.py --workers 2     # results/ranking.md + bench/ranking.json

On each task (digits, mnist5k) of the demo backbone, inside the demo budget of ``autopeft/ground.yaml``:

1. Panels, drawn once before any supernet variant is compared (seeded, the same for every variant
   and task): (a) 20 subnets uniform among those inside the budget, (b) 30 uniform among those within
   10% of the budget cap (the band every candidate the search keeps lives in) plus the largest LoRA
   that fits as a named reference, (c) 10 uniform over the whole space.
2. Truth: every panel subnet trained standalone on train with the task's final schedule (ground.yaml),
   scored on val, seeds 0 and 1; truth = mean val loss. Seed ceiling = tau(seed 0, seed 1).
3. Supernet variants, each trained on train and scoring every panel subnet on val with inherited
   weights (after every few epochs, so tau is tracked along training). Predictors: inherited val loss,
   inherited val accuracy, parameter count, a random order.
4. Kendall tau and Spearman of each predictor against the truth with 95% bootstrap intervals over
   panel subnets, the regret of each predictor's top pick, and every variant's cost in images
   (forward+backward passes) and wall time.

Every standalone run is cached by its config hash (``runs/cache``), every supernet variant resumes
from its checkpoint (``runs/ranking``); the test split is never read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from autopeft.build import build_model
from autopeft.data import DataConfig
from autopeft.fit import CHECKPOINT
from autopeft.ground import load_ground
from autopeft.jobs.train import cached_run
from autopeft.records import Epoch
from autopeft.runconfig import BackboneConfig, RunConfig
from autopeft.search.ranking import Estimate, bootstrap, draw_panel, kendall_tau, spearman, top_pick_regret
from autopeft.search.supernet_stage import SupernetSteps, inherited_score, refit_score, train_supernet
from autopeft.supernet import SubnetConfig, Supernet, load_space, method_config
from autopeft.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ranking.md"
JSON = ROOT / "results" / "bench" / "ranking.json"
COMMAND = "HF_HUB_OFFLINE=1 python scripts/bench_ranking.py"
BACKBONE = "vit_demo_fmnist"
SPACE = "demo"
TASKS = ("digits", "mnist5k")
SEEDS = (0, 1)
BAND = 0.9
PANELS = {"a": (20, 1, 0.0), "b": (30, 2, BAND), "c": (10, 3, None)}  # size, seed, low bound as a budget share
COST_CAP = 3.0  # supernet training images <= COST_CAP x one final run of the largest in-budget subnet
TRACK_POINTS = 6  # supernet epochs at which the panels are scored along training


@dataclass(frozen=True)
class Variant:
    """A way to train the supernet; ``epochs`` None = as many as the cost cap allows."""

    name: str
    sampling: str
    masked: bool
    distill: bool = False
    epochs: int | None = None
    lr: float | None = None  # None: the task's final-schedule lr
    seed: int = 0

    def passes(self) -> int:
        return 4 if self.sampling == "sandwich" else 1


VARIANTS = [
    Variant("wave 1 default", "uniform", masked=False, epochs=6, lr=2e-3),
    Variant("uniform", "uniform", masked=False),
    Variant("budget", "budget", masked=True),
    Variant("budget, unmasked", "budget", masked=False),
    Variant("sandwich", "sandwich", masked=True),
    Variant("sandwich + distill", "sandwich", masked=True, distill=True),
]


def backbone() -> BackboneConfig:
    return BackboneConfig(name=BACKBONE)


def build_supernet(task: str, seed: int = 0) -> tuple[Supernet, Any, Any, RunConfig]:
    """The demo supernet on ``task`` (its run config carries the task's final schedule when known)."""
    schedules = load_ground().schedules.get(BACKBONE, {})
    train = schedules[task].train() if task in schedules else TrainConfig()
    run = RunConfig(backbone(), DataConfig(name=task), {"linear": {}}, train, seed=seed)
    model, data, norm = build_model(run, with_methods=False)
    return Supernet(model, load_space(SPACE)), data, norm, run


def panels() -> dict[str, list[SubnetConfig]]:
    """The fixed panels (the backbone's depth and the space are all that drawing them needs)."""
    supernet, *_ = build_supernet(TASKS[0])
    budget = load_ground().budget
    drawn = {
        name: draw_panel(supernet, size, seed, None if low is None else budget, 0 if low is None else int(low * budget))
        for name, (size, seed, low) in PANELS.items()
    }
    drawn["b"].append(largest_lora(supernet))
    return drawn


def largest_lora(supernet: Supernet) -> SubnetConfig:
    """LoRA alone at the largest rank of the space that fits the budget in every block."""
    budget, depth = load_ground().budget, supernet.depth
    off = {m: [0] * depth for m in supernet.space.methods}
    fitting = [
        r
        for r in supernet.space.methods["lora"].sizes
        if supernet.count(SubnetConfig.of({**off, "lora": [r] * depth})) <= budget
    ]
    return SubnetConfig.of({**off, "lora": [max(fitting)] * depth})


def standalone_config(task: str, subnet: SubnetConfig, seed: int) -> RunConfig:
    space = load_space(SPACE)
    train = load_ground().schedule(BACKBONE, task).train()
    return RunConfig(backbone(), DataConfig(name=task), method_config(space, subnet), train, test=False, seed=seed)


def truth_job(job: tuple[str, dict, int, Path]) -> tuple[tuple[str, SubnetConfig, int], dict]:
    task, subnet_dict, seed, cache = job
    torch.set_num_threads(1)
    subnet = SubnetConfig.from_dict(subnet_dict)
    result = cached_run(standalone_config(task, subnet, seed), cache)
    print(
        f"truth {task} seed {seed}: {result.trainable_params:,} params, val loss {result.val_loss:.3f}",
        flush=True,
    )
    return (task, subnet, seed), result


def variant_epochs(variant: Variant, task: str) -> int:
    """The variant's epochs: given, or the most whose training images stay within the cost cap."""
    if variant.epochs is not None:
        return variant.epochs
    final = load_ground().schedule(BACKBONE, task).epochs * 1000  # one final run: train+val, 1000 images
    return int(COST_CAP * final // (variant.passes() * 800))


def variant_job(job: tuple[str, Variant, dict[str, list[dict]], Path]) -> tuple[tuple[str, str, int], dict]:
    """Train one supernet variant on one task (resumable) and score the panels along training."""
    task, variant, panel_dicts, root = job
    torch.set_num_threads(1)
    out = root / task / f"{variant.name.replace(' ', '_').replace(',', '').replace('+', 'plus')}_seed{variant.seed}"
    if (out / "scores.json").is_file():
        return (task, variant.name, variant.seed), json.loads((out / "scores.json").read_text())
    supernet, data, norm, run = build_supernet(task, variant.seed)
    epochs = variant_epochs(variant, task)
    train = replace(run.train, epochs=epochs, warmup_epochs=max(1, epochs // 10), lr=variant.lr or run.train.lr)
    run = replace(run, train=train)
    budget = load_ground().budget
    steps = SupernetSteps(supernet, variant.sampling, budget, variant.seed, distill=variant.distill)
    panel = {name: [SubnetConfig.from_dict(d) for d in dicts] for name, dicts in panel_dicts.items()}
    track = sorted({max(1, round(epochs * (i + 1) / TRACK_POINTS)) for i in range(TRACK_POINTS)})
    tracked_file = out / "tracked.json"
    tracked: dict[str, Any] = json.loads(tracked_file.read_text()) if tracked_file.is_file() else {}
    score = inherited_score(supernet, data, norm)

    def after_epoch(line: Epoch) -> None:
        if line.epoch in track and str(line.epoch) not in tracked:
            tracked[str(line.epoch)] = {n: [score(s) for s in subnets] for n, subnets in panel.items() if n != "c"}
            tracked_file.write_text(json.dumps(tracked))

    start = time.perf_counter()
    history, seconds = train_supernet(
        steps, data, norm, run, out, variant.masked, resume=(out / CHECKPOINT).is_file(), after_epoch=after_epoch
    )
    final = {name: [score(s) for s in subnets] for name, subnets in panel.items()}
    refit = refit_score(supernet, data, norm)
    final_refit = {name: [refit(s) for s in subnets] for name, subnets in panel.items()}
    result = {
        "epochs": epochs,
        "lr": train.lr,
        "train_images": sum(h["train_images"] for h in history),
        "train_s": round(seconds, 1),
        "score_s": round(time.perf_counter() - start - seconds, 1),
        "final": final,
        "final_refit": final_refit,
        "tracked": tracked,
    }
    (out / "scores.json").write_text(json.dumps(result))
    print(f"variant {variant.name} seed {variant.seed} on {task}: {epochs} epochs, {seconds:.0f} s", flush=True)
    return (task, variant.name, variant.seed), result


# Figures ---------------------------------------------------------------------------------------------------------


def truth_of(truth: dict, task: str, subnet: SubnetConfig) -> tuple[float, float]:
    """Mean val loss and accuracy over the seeds."""
    runs = [truth[(task, subnet, seed)] for seed in SEEDS]
    return statistics.mean(r.val_loss for r in runs), statistics.mean(r.val_acc for r in runs)


def predictors(
    scores: list[tuple[float, float]], refit: list[tuple[float, float]], counts: list[int], seed: int
) -> dict[str, list[float]]:
    """Each predictor as a lower-is-better value per subnet."""
    order = list(range(len(counts)))
    random.Random(seed).shuffle(order)
    return {
        "inherited val loss": [loss for _, loss in scores],
        "inherited val accuracy": [-acc for acc, _ in scores],
        "inherited features, refit head: val loss": [loss for _, loss in refit],
        "parameter count": [-c for c in counts],
        "random order": [float(i) for i in order],
    }


def figures(truth_loss: list[float], truth_acc: list[float], predicted: list[float]) -> dict[str, Any]:
    tau = bootstrap(kendall_tau, predicted, truth_loss)
    rho = bootstrap(spearman, predicted, truth_loss)
    pick, regret = top_pick_regret(predicted, truth_loss)
    return {
        "tau": tau,
        "spearman": rho,
        "pick": pick,
        "regret_loss": regret,
        "regret_acc": max(truth_acc) - truth_acc[pick],
    }


def show(e: Estimate) -> str:
    if e.value is None:
        return "n/a"
    interval = "" if e.low is None else f" [{e.low:+.2f}, {e.high:+.2f}]"
    return f"{e.value:+.2f}{interval}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    parser.add_argument("--runs", type=Path, default=Path("runs/ranking"))
    parser.add_argument("--workers", type=int, default=2, help="jobs at once, 1 thread each")
    parser.add_argument("--stage", choices=("truth", "all"), default="all", help="truth: only the standalone runs")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    drawn = panels()
    unique = list(dict.fromkeys(s for subnets in drawn.values() for s in subnets))
    jobs = [(task, s.to_dict(), seed, args.cache) for seed in SEEDS for task in TASKS for s in unique]
    panel_dicts = {name: [s.to_dict() for s in subnets] for name, subnets in drawn.items()}
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        truth = dict(pool.map(truth_job, jobs))
        if args.stage == "truth":
            return
        scores = dict(pool.map(variant_job, [(task, v, panel_dicts, args.runs) for v in VARIANTS for task in TASKS]))
        chosen, scoring = choose(drawn, truth, scores)
        again = [(task, replace(chosen, seed=1), panel_dicts, args.runs) for task in TASKS]
        scores.update(pool.map(variant_job, again))
    bench = tables(drawn, truth, scores, chosen, scoring)
    JSON.write_text(json.dumps(bench, indent=1, default=_plain) + "\n")
    OUT.write_text(render(bench, args.workers, (time.perf_counter() - start) / 60))
    print(f"wrote {OUT} and {JSON}")


SCORINGS = {"inherited val loss": "final", "inherited features, refit head: val loss": "final_refit"}


def choose(drawn, truth, scores) -> tuple[Variant, str]:
    """The rule fixed before the runs: the variant within the cost cap, and the scoring (inherited val loss,
    or val loss with a refit head), that rank panel (b) best (Kendall tau against the truth, mean over the
    tasks)."""

    def band_tau(pair: tuple[Variant, str]) -> float:
        variant, scoring = pair
        taus = []
        for task in TASKS:
            truth_loss = [truth_of(truth, task, s)[0] for s in drawn["b"]]
            predicted = [loss for _, loss in scores[(task, variant.name, 0)][SCORINGS[scoring]]["b"]]
            taus.append(kendall_tau(predicted, truth_loss))
        return statistics.mean(taus)

    return max(((v, scoring) for v in VARIANTS if v.epochs is None for scoring in SCORINGS), key=band_tau)


def tables(drawn, truth, scores, chosen: Variant, scoring: str) -> dict[str, Any]:
    """Every figure of the report, and every panel row, as plain data (results/bench/ranking.json)."""
    ground = load_ground()
    supernet, *_ = build_supernet(TASKS[0])
    counts = {s: supernet.count(s) for subnets in drawn.values() for s in subnets}
    lora = drawn["b"][-1]
    bench: dict[str, Any] = {
        "budget": ground.budget,
        "band": BAND,
        "tasks": {},
        "chosen": chosen.name,
        "scoring": scoring,
    }
    for task in TASKS:
        schedule = ground.schedule(BACKBONE, task)
        final_images = schedule.epochs * 1000
        per_task: dict[str, Any] = {"schedule": schedule.__dict__, "panels": {}, "variants": {}}
        for panel, subnets in drawn.items():
            loss = [truth_of(truth, task, s)[0] for s in subnets]
            acc = [truth_of(truth, task, s)[1] for s in subnets]
            seed_loss = [[truth[(task, s, seed)].val_loss for s in subnets] for seed in SEEDS]
            rows = [
                {
                    "subnet": s.to_dict(),
                    "params": counts[s],
                    "standalone": [
                        {
                            "seed": seed,
                            "val_loss": truth[(task, s, seed)].val_loss,
                            "val_acc": truth[(task, s, seed)].val_acc,
                        }
                        for seed in SEEDS
                    ],
                    "inherited": {
                        f"{name} seed{seed}": {
                            "val_acc": result["final"][panel][i][0],
                            "val_loss": result["final"][panel][i][1],
                            "refit_val_acc": result["final_refit"][panel][i][0],
                            "refit_val_loss": result["final_refit"][panel][i][1],
                        }
                        for (t, name, seed), result in scores.items()
                        if t == task
                    },
                    "largest_lora": s == lora,
                }
                for i, s in enumerate(subnets)
            ]
            figures_by_variant = {}
            for (t, name, seed), result in scores.items():
                if t != task:
                    continue
                refit = result["final_refit"][panel]
                predicted = predictors(result["final"][panel], refit, [counts[s] for s in subnets], seed=len(subnets))
                figures_by_variant[f"{name} seed{seed}"] = {p: figures(loss, acc, v) for p, v in predicted.items()}
            per_task["panels"][panel] = {
                "rows": rows,
                "seed_ceiling": bootstrap(kendall_tau, *seed_loss),
                "figures": figures_by_variant,
                "lora_truth_rank": 1 + sorted(loss).index(loss[subnets.index(lora)]) if lora in subnets else None,
            }
        for (t, name, seed), result in scores.items():
            if t != task:
                continue
            along = {
                epoch: {
                    panel: kendall_tau([v for _, v in values], [truth_of(truth, task, s)[0] for s in drawn[panel]])
                    for panel, values in tracked.items()
                }
                for epoch, tracked in sorted(result["tracked"].items(), key=lambda item: int(item[0]))
            }
            per_task["variants"][f"{name} seed{seed}"] = {
                "epochs": result["epochs"],
                "lr": result["lr"],
                "train_images": result["train_images"],
                "cost_x_final_run": result["train_images"] / final_images,
                "train_s": result["train_s"],
                "score_s": result["score_s"],
                "tau_along_epochs": along,
            }
        bench["tasks"][task] = per_task
    return bench


def _plain(value: Any) -> Any:
    if isinstance(value, Estimate):
        return {"value": value.value, "low": value.low, "high": value.high}
    raise TypeError(type(value))


PANEL_NAMES = {
    "a": "(a) uniform inside the budget",
    "b": f"(b) within {1 - BAND:.0%} of the budget cap",
    "c": "(c) the whole space",
}
PREDICTORS = (
    "inherited val loss",
    "inherited val accuracy",
    "inherited features, refit head: val loss",
    "parameter count",
    "random order",
)


def render(bench: dict[str, Any], workers: int, minutes: float) -> str:
    chosen = f"{bench['chosen']} seed0"
    lines = [
        "# Ranking fidelity of the supernet",
        "",
        f"Backbone `{BACKBONE}` (shipped weights), space `{SPACE}` (LoRA, adapter, VPT, KV prompts, SSF per block), "
        f"budget {bench['budget']:,} trainable parameters (`autopeft/ground.yaml`). Panels are drawn once, seeded, "
        "before any supernet variant is compared, and are the same for every variant and task: "
        + "; ".join(f"{PANEL_NAMES[p]}: {size} subnets" for p, (size, _, _) in PANELS.items())
        + " (panel (b) also holds the largest LoRA that fits, LoRA rank 8 on q, v in every block, as a named "
        "reference). Truth: each panel subnet trained standalone on train with the task's final schedule, "
        "scored on val, seeds 0 and 1; truth = mean val loss over the two seeds. Seed ceiling: Kendall tau "
        "between the seed-0 and seed-1 val losses (uncorrected: a ceiling for one run against one run). "
        "Predictors are compared as lower-is-better values against the truth, so tau > 0 means they agree. "
        "Intervals: 95% percentile bootstrap over panel subnets (2,000 resamples). The test split is never read.",
        "",
        "Supernet variants (every one trains on train, scores panel subnets on val with inherited weights; "
        f"all but the wave-1 default get the epochs that keep their training images within {COST_CAP:g}x one final "
        "standalone run of the largest in-budget subnet, i.e. the final schedule on train+val, 1,000 images per "
        "epoch): " + "; ".join(_describe(v) for v in VARIANTS) + ".",
        "",
        "Scorings: inherited val loss (the supernet's weights and its shared head), and inherited features with a "
        "linear head refit per subnet on its train features (L-BFGS logistic regression).",
        "",
        f"Kept (rule fixed before the runs: the variant within the cost cap and the scoring with the highest mean "
        f"tau on panel (b) over the tasks): **{bench['chosen']}**, scored by **{bench['scoring']}**.",
        "",
    ]
    for task, per_task in bench["tasks"].items():
        schedule = per_task["schedule"]
        lines += [
            f"## {task} (final schedule {schedule['epochs']} epochs, lr {schedule['lr']:g})",
            "",
            f"Predictors of the kept variant ({bench['chosen']}, supernet seed 0) against the truth:",
            "",
            "| panel | seed ceiling | predictor | Kendall tau [95%] | tau / ceiling | Spearman | top pick: regret "
            "val loss / val acc |",
            "|---|---|---|---|---:|---|---|",
        ]
        for panel, data in per_task["panels"].items():
            ceiling = data["seed_ceiling"]
            for predictor in PREDICTORS:
                f = data["figures"][chosen][predictor]
                ratio = f["tau"].value / ceiling.value if f["tau"].value is not None and ceiling.value else None
                lines.append(
                    f"| {PANEL_NAMES[panel]} ({len(data['rows'])}) | {show(ceiling)} | {predictor} | "
                    f"{show(f['tau'])} | "
                    f"{'n/a' if ratio is None else f'{ratio:.2f}'} | {show(f['spearman'])} | "
                    f"{f['regret_loss']:+.3f} / {f['regret_acc']:+.1f} |"
                )
        band = per_task["panels"]["b"]
        lora_row = next(i for i, row in enumerate(band["rows"]) if row["largest_lora"])
        pick = band["figures"][chosen][bench["scoring"]]["pick"]
        truth_loss = [statistics.mean(r["val_loss"] for r in row["standalone"]) for row in band["rows"]]
        lines += [
            "",
            f"Panel (b): the largest LoRA has truth rank {band['lora_truth_rank']} of {len(band['rows'])} "
            f"(val loss {truth_loss[lora_row]:.3f}); the kept scoring's top pick has val loss {truth_loss[pick]:.3f} "
            f"({'no worse than' if truth_loss[pick] <= truth_loss[lora_row] else 'worse than'} the largest LoRA).",
            "",
            "Variants (inherited val loss as the predictor; cost = supernet training images over one final run):",
            "",
            "| variant | epochs | lr | cost | train s | tau (a) | tau (b) | tau (b), accuracy | tau (b), refit head "
            "| regret (b) val loss |",
            "|---|---:|---:|---:|---:|---|---|---|---|---:|",
        ]
        for name, v in per_task["variants"].items():
            fa = per_task["panels"]["a"]["figures"][name]
            fb = band["figures"][name]
            lines.append(
                f"| {name} | {v['epochs']} | {v['lr']:g} | {v['cost_x_final_run']:.2f}x | {v['train_s']:.0f} | "
                f"{show(fa['inherited val loss']['tau'])} | {show(fb['inherited val loss']['tau'])} | "
                f"{show(fb['inherited val accuracy']['tau'])} | "
                f"{show(fb['inherited features, refit head: val loss']['tau'])} | "
                f"{fb['inherited val loss']['regret_loss']:+.3f} |"
            )
        lines += ["", "Kendall tau of inherited val loss along supernet training (panels a / b):", ""]
        for name, v in per_task["variants"].items():
            points = ", ".join(f"ep {e}: {t['a']:+.2f} / {t['b']:+.2f}" for e, t in v["tau_along_epochs"].items())
            lines.append(f"- {name}: {points}")
        lines.append("")
    lines += targets(bench) + changes(bench) + noise(bench)
    lines += [
        f"Regenerate: `{COMMAND} --workers {workers}` ({platform.machine()}, torch {torch.__version__}, "
        f"1 thread per job, {minutes:.0f} min for what was not cached). Every panel row (subnet, params, "
        "standalone val loss and accuracy per seed, inherited scores per variant) is in `results/bench/ranking.json`.",
        "",
    ]
    return "\n".join(lines)


# Each variant against the one before it: what the change bought.
CHANGES = [
    ("uniform", "wave 1 default", "training to the cost cap at the task's lr (instead of 6 epochs at 2e-3)"),
    ("budget, unmasked", "uniform", "sampling only subnets inside the budget"),
    ("budget", "budget, unmasked", "masked AdamW (inactive slices do not move)"),
    ("sandwich", "budget", "the sandwich step (largest + smallest + 2 random per step, same cost cap)"),
    ("sandwich + distill", "sandwich", "in-place distillation from the largest"),
]


def targets(bench: dict[str, Any]) -> list[str]:
    """The issue's targets for the kept variant and scoring, each with its figure and whether it is met."""
    chosen, scoring = f"{bench['chosen']} seed0", bench["scoring"]
    lines = ["## Targets (kept variant and scoring)", "", "| task | target | figure | met |", "|---|---|---|---|"]
    for task, per_task in bench["tasks"].items():
        a, b = per_task["panels"]["a"], per_task["panels"]["b"]
        fa, fb = a["figures"][chosen], b["figures"][chosen]
        tau_b, ceil_b = fb[scoring]["tau"], b["seed_ceiling"].value
        tau_a, ceil_a = fa[scoring]["tau"], a["seed_ceiling"].value
        count_a = fa["parameter count"]["tau"].value
        loss = [statistics.mean(r["val_loss"] for r in row["standalone"]) for row in b["rows"]]
        lora = next(i for i, row in enumerate(b["rows"]) if row["largest_lora"])
        pick = loss[fb[scoring]["pick"]]
        cost = per_task["variants"][chosen]["cost_x_final_run"]
        rows = [  # target, figure, shortfall (<= 0: met)
            ("(b) tau >= 0.7 x ceiling", f"{tau_b.value:+.2f} vs 0.7 x {ceil_b:+.2f}", 0.7 * ceil_b - tau_b.value),
            ("(b) interval excludes 0", show(tau_b), 1e-9 - (tau_b.low if tau_b.low is not None else -1.0)),
            ("(b) top pick no worse than largest LoRA", f"val loss {pick:.3f} vs {loss[lora]:.3f}", pick - loss[lora]),
            ("(a) tau >= 0.9 x ceiling", f"{tau_a.value:+.2f} vs 0.9 x {ceil_a:+.2f}", 0.9 * ceil_a - tau_a.value),
            ("(a) tau above parameter count", f"{tau_a.value:+.2f} vs {count_a:+.2f}", count_a - tau_a.value + 1e-9),
            ("cost <= 3x one final run", f"{cost:.2f}x", cost - COST_CAP),
        ]
        lines += [
            f"| {task} | {t} | {fig} | {'yes' if short <= 0 else f'**no**, short by {short:.3f}'} |"
            for t, fig, short in rows
        ]
    return [*lines, ""]


def noise(bench: dict[str, Any]) -> list[str]:
    """How far apart the panel subnets are in truth, against how far apart one subnet's two seeds are."""
    lines = [
        "## How much there is to rank",
        "",
        "Per panel: the spread of the truth (standard deviation over subnets of the 2-seed mean val loss, and "
        "its range) against seed noise (mean over subnets of |seed 0 - seed 1| val loss). Where the noise is "
        "as large as the spread, no predictor can rank far above the seed ceiling.",
        "",
        "| task | panel | truth std over subnets | truth range | mean seed-to-seed gap | seed ceiling |",
        "|---|---|---:|---:|---:|---|",
    ]
    for task, per_task in bench["tasks"].items():
        for panel, data in per_task["panels"].items():
            losses = [[r["val_loss"] for r in row["standalone"]] for row in data["rows"]]
            means = [statistics.mean(pair) for pair in losses]
            gap = statistics.mean(abs(pair[0] - pair[1]) for pair in losses)
            lines.append(
                f"| {task} | {PANEL_NAMES[panel]} | {statistics.stdev(means):.3f} | "
                f"{min(means):.3f}-{max(means):.3f} | {gap:.3f} | {show(data['seed_ceiling'])} |"
            )
    return [*lines, ""]


def changes(bench: dict[str, Any]) -> list[str]:
    """Tau of inherited val loss on panels (a) and (b), each variant against the one it changes."""
    lines = [
        "## What each change bought",
        "",
        "Change in Kendall tau of inherited val loss (supernet seed 0), per task as (a) / (b):",
        "",
        "| change | " + " | ".join(bench["tasks"]) + " |",
        "|---|" + "---|" * len(bench["tasks"]),
    ]
    for after, before, what in CHANGES:
        cells = []
        for per_task in bench["tasks"].values():
            deltas = []
            for panel in ("a", "b"):
                figs = per_task["panels"][panel]["figures"]
                deltas.append(
                    figs[f"{after} seed0"]["inherited val loss"]["tau"].value
                    - figs[f"{before} seed0"]["inherited val loss"]["tau"].value
                )
            cells.append(f"{deltas[0]:+.2f} / {deltas[1]:+.2f}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _describe(v: Variant) -> str:
    parts = [v.sampling, "masked AdamW" if v.masked else "plain AdamW"]
    if v.sampling == "sandwich":
        parts.append(
            "largest in-budget + smallest non-empty + 2 random per step"
            + (", in-place distillation" if v.distill else "")
        )
    if v.epochs is not None:
        parts.append(f"{v.epochs} epochs, lr {v.lr:g}")
    return f"*{v.name}* ({', '.join(parts)})"


if __name__ == "__main__":
    main()
