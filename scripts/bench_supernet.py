"""Supernet train step vs the same subnet built standalone, and the search cost of a pipeline run.

    HF_HUB_OFFLINE=1 python scripts/bench_supernet.py        # writes results/bench/supernet.json

Step: the demo space (all five methods at their largest size in every block) on the demo
backbone architecture, ``digits`` at 32 px, batch 64, AdamW over every trainable tensor, 2
threads. For each of ``--subnets`` uniformly sampled subnets, the supernet with that subnet
active and a standalone model built from the same subnet's config (``autopeft.apply``) take
turns, one step each, ``--steps`` times after 3 warm-up steps; the ratio of their median step
times is reported per subnet and as the median over subnets.

Search cost: an ``autopeft run`` on ``digits`` (demo space and search) whose supernet trains on
the same schedule as the final standalone run (6 epochs each), top 8 selected with 1-epoch
runs, one seed, no baselines; its ``search_cost_ratio`` is supernet training + candidate
search + selection runs over the wall time of that one final run, all timed inside the run
(``--run``, reused if it has finished).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import autopeft
from autopeft.backbones import build_demo_architecture
from autopeft.data import DataConfig, load_task
from autopeft.data.transforms import input_config, normalize
from autopeft.progress import PipelineProgress
from autopeft.search.pipeline import parse_pipeline, run_pipeline
from autopeft.supernet import Supernet, load_space, method_config
from autopeft.train import TrainConfig, make_optimizer

OUT = Path(__file__).resolve().parents[1] / "results" / "bench" / "supernet.json"
COMMAND = "HF_HUB_OFFLINE=1 python scripts/bench_supernet.py"
SAME_SCHEDULE = {
    "data": {"name": "digits"},
    "supernet": {"train": {"epochs": 6, "lr": 2e-3, "warmup_epochs": 1}},
    "retrain": {"train": {"epochs": 6, "lr": 3e-3, "warmup_epochs": 1}, "select_epochs": 1, "seeds": [0]},
    "baselines": [],
}


def stepper(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor):
    """One timed AdamW training step on a fixed batch (seconds)."""
    optimizer = make_optimizer(model, TrainConfig(lr=1e-4))
    model.train()

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def step_ratios(subnets: int, steps: int, batch: int) -> list[dict]:
    torch.manual_seed(0)
    base = build_demo_architecture("vit_demo_fmnist", 10)
    size, mean, std = input_config(base)
    images, labels = load_task(DataConfig(name="digits"), size).split("train").batch(torch.arange(batch))
    inputs = normalize(images, mean, std)
    space = load_space("demo")
    supernet = Supernet(copy.deepcopy(base), space)
    rng = random.Random(0)
    rows = []
    for _ in range(subnets):
        subnet = supernet.sample(rng)
        supernet.set_subnet(subnet)
        standalone = autopeft.apply(copy.deepcopy(base), method_config(space, subnet))
        runs = {"supernet": stepper(supernet.model, inputs, labels), "standalone": stepper(standalone, inputs, labels)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for index in range(steps + 3):
            for name, step in runs.items():
                seconds = step()
                if index >= 3:
                    times[name].append(seconds)
        ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
        rows.append(
            {
                "params": supernet.count(subnet),
                "supernet_ms": round(ms["supernet"], 2),
                "standalone_ms": round(ms["standalone"], 2),
                "ratio": round(ms["supernet"] / ms["standalone"], 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def search_cost(run: Path) -> dict:
    if not (run / "result.json").is_file():
        config = parse_pipeline(SAME_SCHEDULE, "bench_supernet")
        run_pipeline(config, run, resume=(run / "config.yaml").is_file(), progress=PipelineProgress())
    result = json.loads((run / "result.json").read_text())
    cost = result["search_cost_s"]
    return {
        "run": str(run),
        "config": SAME_SCHEDULE,
        "dataset": result["dataset"],
        "seconds": cost,
        "one_final_run_s": result["table"][0]["run_s"],
        "ratio": result["search_cost_ratio"],
        "schedules": {"select_epochs": result["select_epochs"], "final_epochs": result["epochs"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/bench_search_cost"))
    parser.add_argument("--subnets", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = step_ratios(args.subnets, args.steps, args.batch)
    ratio = statistics.median(r["ratio"] for r in rows)
    cost = search_cost(args.run)
    result = {
        "command": COMMAND,
        "torch": torch.__version__,
        "settings": {
            "model": "vit_demo_fmnist architecture",
            "space": "search_spaces/demo.yaml",
            "batch": args.batch,
            "threads": 2,
            "subnets": args.subnets,
            "steps": args.steps,
        },
        "step": rows,
        "search_cost": cost,
        "targets": {
            "supernet_step_vs_standalone": {"value": ratio, "target": "<= 1.15", "pass": ratio <= 1.15},
            "search_cost_vs_one_run": {"value": cost["ratio"], "target": "<= 3", "pass": cost["ratio"] <= 3},
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"]))


if __name__ == "__main__":
    main()
