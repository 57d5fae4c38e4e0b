"""Images/s of autopeft's training engine with LoRA vs a plain loop with HF peft's LoRA, same model and data.

    HF_HUB_OFFLINE=1 python scripts/bench_train.py        # writes results/bench/train.json

Model: the demo backbone's architecture (weights do not change speed), 10 classes; data: the
built-in ``digits`` task at 32 px, 800 training images, batch 64, AdamW, 2 threads. autopeft runs
``autopeft.train.train_epoch`` (what ``autopeft train`` calls: shuffling, uint8 -> float
normalisation per batch, cosine schedule, loss check); the plain loop iterates pre-normalised
float tensors with a peft ``LoraConfig(r=8, target_modules=["qkv"])`` model. Epochs alternate
between the two for ``--rounds`` rounds after one warm-up epoch each; medians are reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import peft
import torch
import torch.nn.functional as F

import autopeft
from autopeft.backbones import build_demo_architecture
from autopeft.data import DataConfig, load_task
from autopeft.data.transforms import input_config, normalize
from autopeft.train import Normalization, TrainConfig, make_optimizer, make_scheduler, train_epoch

OUT = Path(__file__).resolve().parents[1] / "results" / "bench" / "train.json"


def autopeft_epoch(model, split, norm, config):
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, -(-len(split) // config.batch_size))
    generator = torch.Generator().manual_seed(0)

    def run() -> float:
        return train_epoch(model, split, optimizer, scheduler, config, norm, generator)["images_per_s"]

    return run


def peft_epoch(model, split, norm, batch_size):
    images, labels = split.batch(torch.arange(len(split)))
    inputs = normalize(images, norm.mean, norm.std)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def run() -> float:
        model.train()
        start = time.perf_counter()
        for index in torch.randperm(len(labels)).split(batch_size):
            loss = F.cross_entropy(model(inputs[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return len(labels) / (time.perf_counter() - start)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    base = build_demo_architecture("vit_demo_fmnist", 10)
    size, mean, std = input_config(base)
    norm = Normalization(mean, std)
    split = load_task(DataConfig(name="digits"), size).split("train")
    config = TrainConfig(batch_size=64, epochs=args.rounds + 1, warmup_epochs=0)
    ours_qkv = autopeft.apply(copy.deepcopy(base), {"lora": {"rank": 8, "targets": ["qkv"]}})
    ours_qv = autopeft.apply(copy.deepcopy(base), {"lora": {"rank": 8}})
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=8, lora_alpha=8, target_modules=["qkv"]))
    for param in theirs.base_model.model.head.parameters():
        param.requires_grad_(True)
    runs = {
        "autopeft_lora_qkv": autopeft_epoch(ours_qkv, split, norm, config),
        "autopeft_lora_qv": autopeft_epoch(ours_qv, split, norm, config),
        "peft_lora_qkv_plain_loop": peft_epoch(theirs, split, norm, config.batch_size),
    }
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(args.rounds + 1):
        for name, run in runs.items():
            speed = run()
            if round_index:
                speeds[name].append(speed)
    median = {name: statistics.median(values) for name, values in speeds.items()}
    ratio = median["autopeft_lora_qkv"] / median["peft_lora_qkv_plain_loop"]
    result = {
        "command": "HF_HUB_OFFLINE=1 python scripts/bench_train.py",
        "torch": torch.__version__,
        "peft": peft.__version__,
        "settings": {
            "model": "vit_demo_fmnist architecture",
            "data": "digits train (800) at 32 px",
            "batch": 64,
            "threads": 2,
            "rounds": args.rounds,
        },
        "images_per_s": speeds,
        "median_images_per_s": median,
        "targets": {
            "autopeft_vs_peft_plain_loop": {"value": round(ratio, 3), "target": ">= 0.95", "pass": ratio >= 0.95},
            "autopeft_default_qv_vs_peft": round(median["autopeft_lora_qv"] / median["peft_lora_qkv_plain_loop"], 3),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(median), json.dumps(result["targets"]))


if __name__ == "__main__":
    main()
