"""Every single method at its default size on every built-in task, with the shipped demo backbone.

    HF_HUB_OFFLINE=1 python scripts/baselines.py      # writes results/baselines.md

Each run is the method's example config ``search_spaces/train/demo_<method>.yaml`` (its learning
rate) on one task, with ``--epochs`` (default 5) and 1 warm-up epoch in place of the example's 30
and 3, to fit the CPU budget. No selection happens here: one run per cell, val and test as the run reported them.
Runs are kept under ``--runs`` (default ``runs/baselines/<weights sha256 prefix>``) and reused when run again.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
import yaml
from grid import run_all, runs_folder

from autopeft.data import BUILTIN_TASKS
from autopeft.methods import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "baselines.md"
COMMAND = "HF_HUB_OFFLINE=1 python scripts/baselines.py"


def example(method: str) -> dict:
    return yaml.safe_load((ROOT / "search_spaces" / "train" / f"demo_{method}.yaml").read_text())


def grid(epochs: int):
    for method in REGISTRY:
        for task in BUILTIN_TASKS:
            config = example(method)
            config["data"] = {"name": task}
            config["train"].update(epochs=epochs, warmup_epochs=1)
            yield f"{method}-{task}", config


def render(results: dict, epochs: int, threads: int) -> str:
    header = "| method | params | " + " | ".join(BUILTIN_TASKS) + " | mean |"
    lines = [header, "|---" * (len(BUILTIN_TASKS) + 3) + "|"]
    for method in REGISTRY:
        runs = [results[f"{method}-{task}"] for task in BUILTIN_TASKS]
        cells = [f"{r['val_acc']:.1f} / {r['test_acc']:.1f}" for r in runs]
        mean_val = sum(r["val_acc"] for r in runs) / len(runs)
        mean_test = sum(r["test_acc"] for r in runs) / len(runs)
        params = {r["trainable_params"] for r in runs}
        count = f"{runs[0]['trainable_params']:,}" if len(params) == 1 else "varies"
        lines.append(f"| {method} | {count} | " + " | ".join(cells) + f" | {mean_val:.1f} / {mean_test:.1f} |")
    settings = {m: example(m)["train"] for m in REGISTRY}
    lrs = ", ".join(f"{m} {s['lr']:g}" for m, s in settings.items())
    wall = sum(r["wall_time_s"] for r in results.values()) / 60
    return "\n".join(
        [
            "# Single-method baselines on the built-in tasks",
            "",
            "Val / test accuracy (%) of each method at its default size on the shipped demo backbone "
            "`vit_demo_fmnist`, one run per cell (seed 0, trained on the 800 train images, val = 200, "
            f"test = 797-1000). {epochs} epochs, batch 64, AdamW, weight decay 1e-4, 1 warm-up epoch then "
            f"cosine, no augmentation; learning rates from the example configs: {lrs}. "
            "Params = trainable parameters excluding the classification head (the head, 129 per "
            "class, is trained by every method).",
            "",
            *lines,
            "",
            "No hyperparameter was tuned per task, so a row is each method's out-of-the-box result, "
            "not its best; the supernet search (`autopeft run`) is what tunes sizes and placements.",
            "",
            f"Regenerate: `{COMMAND} --threads {threads}` ({len(results)} runs, {wall:.0f} min of training on "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} thread"
            f"{'s' if threads > 1 else ''}).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=runs_folder("baselines"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = run_all(grid(args.epochs), args.runs)
    OUT.write_text(render(results, args.epochs, args.threads))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
