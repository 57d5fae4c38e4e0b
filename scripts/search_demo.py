"""The searched subnet vs the best single method, on every built-in task, with the demo backbone.

    HF_HUB_OFFLINE=1 python scripts/search_demo.py       # writes results/search_demo.md

Per task, ``autopeft run`` with the embedded demo defaults except: final runs of 5 epochs (the
demo's 3, lengthened) with seeds 0, 1, 2;
a parameter budget equal to the largest single-method baseline at its default size, so that
the search competes at a comparable cost; and final runs only for the searched subnet and the
single method best on val (``retrain.final_baselines: best``). Everything is selected on val;
each final run reads test once. Runs go to ``--runs`` (default
``runs/search_demo/<weights sha256 prefix>/<task>``) and are resumed or reused when run again;
``--tasks`` runs a subset (e.g. two processes with ``--threads 1`` each). The report covers the
tasks finished so far and names the ones still missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from grid import runs_folder

from autopeft.api import apply, count_trainable
from autopeft.backbones import build_demo_architecture
from autopeft.data import BUILTIN_TASKS
from autopeft.progress import PipelineProgress
from autopeft.search.pipeline import PipelineConfig, parse_pipeline, run_pipeline

OUT = Path(__file__).resolve().parents[1] / "results" / "search_demo.md"
COMMAND = "HF_HUB_OFFLINE=1 python scripts/search_demo.py"
SEEDS = [0, 1, 2]


def budget(baselines: list[str]) -> int:
    """Trainable parameters of the largest baseline at its default size on the demo backbone."""
    return max(count_trainable(apply(build_demo_architecture("vit_demo_fmnist", 10), {m: {}})) for m in baselines)


def run_task(task: str, root: Path, cap: int) -> dict:
    out = root / task
    if (out / "result.json").is_file():
        return json.loads((out / "result.json").read_text())
    retrain = {"train": {"epochs": 5}, "seeds": SEEDS, "final_baselines": "best"}
    data = {"data": {"name": task}, "search": {"budget": cap}, "retrain": retrain}
    config = parse_pipeline(data, f"search_demo {task}")
    return run_pipeline(config, out, resume=(out / "config.yaml").is_file(), progress=PipelineProgress())


def row(result: dict) -> tuple[str, dict, dict]:
    searched = result["table"][0]
    single = next(r for r in result["table"][1:] if r["seeds_run"])
    return result["dataset"], searched, single


def cell(entry: dict) -> str:
    return f"{entry['test_acc']:.2f} +- {entry['test_acc_std']:.2f}"


def render(results: list[dict], cap: int, missing: list[str], threads: int) -> str:
    lines = [
        "| task | searched: params | val | test | best single (on val) | params | val | test | test diff "
        "| Kendall tau | search cost |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    diffs, wins, clear_wins, clear_losses = [], 0, 0, 0
    for result in results:
        task, searched, single = row(result)
        diff = searched["test_acc"] - single["test_acc"]
        spread = searched["test_acc_std"] + single["test_acc_std"]
        diffs.append(diff)
        wins += diff > 0
        clear_wins += diff > spread
        clear_losses += -diff > spread
        tau = "n/a" if result["kendall_tau"] is None else f"{result['kendall_tau']:.2f}"
        lines.append(
            f"| {task} | {searched['params']:,} | {searched['val_acc']:.1f} | {cell(searched)} | {single['name']} "
            f"| {single['params']:,} | {single['val_acc']:.1f} | {cell(single)} | {diff:+.2f} | {tau} "
            f"| {result['search_cost_ratio']:.1f}x |"
        )
    first = results[0]
    wall = sum(r["wall_time_s"] for r in results) / 60
    taus = [r["kendall_tau"] for r in results if r["kendall_tau"] is not None]
    return "\n".join(
        [
            "# Searched subnet vs the best single method on the built-in tasks",
            "",
            f"Shipped demo backbone `vit_demo_fmnist`; `autopeft run` with the embedded demo defaults (search space "
            f"`search_spaces/demo.yaml`, supernet {first['candidates']} candidates by evolution, top "
            f"{first['retrained']} retrained for {first['select_epochs']} epoch as the selection proxy) and a "
            f"parameter budget of {cap:,} (the largest single method at its default size, LoRA rank 8 on q, v). "
            f"Single methods at their default sizes: {', '.join(r['name'] for r in first['table'][1:])}; the one "
            f"best on val is compared. val: trained on train, scored on val (200 images). test: retrained on "
            f"train+val for {first['epochs']} epochs, final epoch, mean +- std over seeds {SEEDS} (1,000 or 797 "
            "images). Kendall tau: inherited vs standalone val ranking of the top candidates. Search cost: "
            "supernet + search + selection runs over one final training run of the searched subnet.",
            "",
            *lines,
            "",
            *(
                [f"Not run to the end yet: {', '.join(missing)} (run the command below to complete them).", ""]
                if missing
                else []
            ),
            f"The searched subnet has the higher mean test accuracy on {wins} of {len(results)} tasks (mean "
            f"difference {statistics.mean(diffs):+.2f} points); by more than the two standard deviations added "
            f"together on {clear_wins}, lower by more than that on {clear_losses}. Kendall tau: mean "
            f"{statistics.mean(taus):.2f} over {len(taus)} tasks.",
            "",
            "The search-cost column and wall times are as timed inside each run; on a machine shared with other "
            "jobs they move with the load (a stage timed under heavier load looks dearer), so compare them only "
            "within one run on a quiet machine; `results/bench/supernet.json` measures the cost on purpose.",
            "",
            f"Regenerate: `{COMMAND} --threads {threads}` ({wall:.0f} min of wall time over these runs on "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} thread"
            f"{'s' if threads > 1 else ''}).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=runs_folder("search_demo"))
    parser.add_argument("--tasks", nargs="+", default=list(BUILTIN_TASKS), choices=list(BUILTIN_TASKS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cap = budget(PipelineConfig().baselines)
    for task in args.tasks:
        result = run_task(task, args.runs, cap)
        print(f"{task}: searched test {result['test_acc']:.2f} ({result['wall_time_s'] / 60:.1f} min)", flush=True)
    finished = [args.runs / task / "result.json" for task in BUILTIN_TASKS]
    results = [json.loads(path.read_text()) for path in finished if path.is_file()]
    if results:
        missing = [task for task, path in zip(BUILTIN_TASKS, finished, strict=True) if not path.is_file()]
        OUT.write_text(render(results, cap, missing, args.threads))
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
