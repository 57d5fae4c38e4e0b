"""What a forward-only evaluation image costs against a training image, per method family, on the studies' ground.

    HF_HUB_OFFLINE=1 python scripts/bench_eval_weight.py    # writes results/bench/eval_weight.json

The ledgers weigh an evaluation image as EVAL_WEIGHT (1/3) of a training one. Here each method of the studies'
grid (its middle size) on the demo ViT times a training step (batch 64: forward, backward, AdamW) and an
evaluation pass (batch 256, no grad) in one process, 1 thread, interleaved rounds, median of 5 steps after 2
warm-up steps; the weight is eval ms per image over train ms per image.
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

import torch
from search_vs_sweep import SIZES, run_config
from timing import Timed, forward_step, run_interleaved, train_step

from autopeft.build import build_model
from autopeft.records import EVAL_WEIGHT

OUT = Path(__file__).resolve().parents[1] / "results" / "bench" / "eval_weight.json"
TASK = "shapes_orientation"
TRAIN_BATCH, EVAL_BATCH, WARMUP, STEPS = 64, 256, 2, 5


def timed_pair(method: str, options: dict) -> tuple[Timed, Timed]:
    model, task, norm = build_model(run_config(TASK, {method: options}, 0.01))
    images = task.split("train").batch(torch.arange(EVAL_BATCH))[0].float() / 255
    inputs = (images - torch.tensor(norm.mean).view(1, 3, 1, 1)) / torch.tensor(norm.std).view(1, 3, 1, 1)
    labels = task.split("train").labels[:TRAIN_BATCH]
    model.train()
    train = Timed(f"{method} train", train_step(model, inputs[:TRAIN_BATCH], labels), TRAIN_BATCH)
    evaluate = Timed(f"{method} eval", forward_step(model, inputs), EVAL_BATCH)
    return train, evaluate


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pairs = {method: timed_pair(method, sizes[len(sizes) // 2]) for method, sizes in SIZES.items()}
    run_interleaved([t for pair in pairs.values() for t in pair], WARMUP, STEPS, per_round=1, seed=0)
    rows = {
        method: {
            "train_ms_per_img": round(train.ms_per_img, 4),
            "eval_ms_per_img": round(evaluate.ms_per_img, 4),
            "eval_weight": round(evaluate.ms_per_img / train.ms_per_img, 3),
        }
        for method, (train, evaluate) in pairs.items()
    }
    result = {
        "task": TASK,
        "backbone": "vit_demo_fmnist",
        "batches": {"train": TRAIN_BATCH, "eval": EVAL_BATCH},
        "steps": {"warmup": WARMUP, "timed": STEPS},
        "threads": 1,
        "machine": platform.processor() or platform.machine(),
        "assumed": round(EVAL_WEIGHT, 3),
        "methods": rows,
        "median_eval_weight": round(statistics.median(r["eval_weight"] for r in rows.values()), 3),
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["methods"], indent=1), f"\nmedian eval weight {result['median_eval_weight']}")


if __name__ == "__main__":
    main()
