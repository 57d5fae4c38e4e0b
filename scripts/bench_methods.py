"""Benchmark the CPU cost of every autopeft method on a small ViT, against HF peft and a frozen floor.

What it measures, on a pretrained=False ``vit_tiny_patch16_224`` shrunk to 32 px inputs (patch 4,
width 192, depth 12, 3 heads), batch 32, random inputs and labels, fixed seed, 2 threads:

* Training step (forward + cross-entropy + backward + AdamW step + zero_grad, model in train
  mode), in ms per image, for every method at its default options, autopeft LoRA rank 8 on the
  fused ``qkv``, HF peft LoRA rank 8 on ``qkv`` (head made trainable by hand, as autopeft does),
  and VPT / key-value prompts at lengths 1, 10 and 50 (a linear fit gives the cost per prompt
  token). The "floor" is the frozen backbone with an input that requires grad: forward +
  backward computing activation gradients only, no weight gradients, no optimizer.
* Inference (eval, no_grad): the plain backbone vs the same backbone with randomised LoRA + SSF
  merged into its weights (``autopeft.merge``), and unmerged for reference, plus the max abs
  difference between merged and unmerged outputs.
* Swin (``swin``): a pretrained=False ``swin_tiny_patch4_window7_224`` shrunk to 32 px (patch 4,
  window 4, widths 96/192/384 over depths 2/2/2): the floor, autopeft LoRA rank 8 on ``qkv`` against
  HF peft's, LoRA and SSF at their defaults, and the same inference comparison.
* CNN (``cnn``): the architecture of the built-in ``efficientnet_lite0_imagenet`` (``tf_efficientnet_lite0``,
  pretrained=False) at 96 px: the floor, LoRA on its 1x1 convolutions, SSF, Conv-Adapters and Pro-tuning at
  their defaults, and merged LoRA+SSF inference against plain.

All models are built first; timings are interleaved in rounds (each round runs a few steps of
every configuration, in a shuffled order) and each configuration reports its median over all
its timed steps, so slow drifts of a noisy machine hit every configuration alike.

Run from the repository root (on a quiet machine)::

    HF_HUB_OFFLINE=1 python scripts/bench_methods.py

It writes ``results/bench/methods.json`` (``--out`` to change; ``--part vit``, ``swin`` or ``cnn`` measures one
section and keeps the other as the file has it). A quick smoke run::

    HF_HUB_OFFLINE=1 python scripts/bench_methods.py --warmup 1 --steps 2 --out /tmp/methods_quick.json
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import peft
import timm
import torch
from timing import LEARNING_RATE, Timed, floor_step, forward_step, run_interleaved, train_step
from torch import nn

import autopeft
from autopeft.train import train_mode

COMMAND = "HF_HUB_OFFLINE=1 python scripts/bench_methods.py"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "bench" / "methods.json"
BACKBONE = "vit_tiny_patch16_224"
NUM_CLASSES = 10
MODEL_KWARGS: dict[str, Any] = {"img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 12, "num_heads": 3}
SWIN = "swin_tiny_patch4_window7_224"
SWIN_KWARGS: dict[str, Any] = {
    "img_size": 32,
    "patch_size": 4,
    "window_size": 4,
    "embed_dim": 96,
    "depths": (2, 2, 2),
    "num_heads": (3, 6, 12),
}
CNN = "tf_efficientnet_lite0"  # the architecture of the built-in efficientnet_lite0_imagenet (timing needs no weights)


@dataclass(frozen=True)
class Section:
    """Another family's section of the benchmark: its backbone, the methods timed on it, the input size, and
    whether HF peft's LoRA on ``qkv`` runs beside autopeft's."""

    backbone: str
    model_kwargs: dict[str, Any]
    timed_methods: tuple[str, ...]
    image_size: int
    peft_baseline: bool


SECTIONS = {
    "swin": Section(SWIN, SWIN_KWARGS, ("lora", "ssf"), 32, True),
    "cnn": Section(CNN, {}, ("lora", "ssf", "adapter", "pro_tuning"), 96, False),
}
DEFAULT_METHODS = ("lora", "adapter", "vpt", "ssf", "kv_prompt", "bitfit", "ln_tune", "linear", "full")
PROMPT_METHODS = ("vpt", "kv_prompt")
PROMPT_LENGTHS = (1, 10, 50)
LORA_QKV: dict[str, Any] = {"lora": {"rank": 8, "targets": ["qkv"]}}
MERGE_METHODS: dict[str, Any] = {"lora": {}, "ssf": {}}
FLOOR = "floor"
PEFT_LORA_QKV = "peft_lora_qkv"
OTHER_CONFIGS = {
    PEFT_LORA_QKV: "peft LoraConfig(r=8, lora_alpha=8, target_modules=['qkv'], lora_dropout=0.0) + head trainable",
    FLOOR: "frozen backbone, input requires grad: forward + backward to the input only, no optimizer",
}
TARGET_LORA_VS_PEFT = 1.05
TARGET_MERGED_VS_PLAIN = 1.02
TARGET_METHOD_VS_FLOOR = 1.3
RANDOMISE_STD = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    parser.add_argument("--per-round", type=int, default=2, help="consecutive steps per configuration per round")
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, inputs and round order")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output JSON (default results/bench/methods.json)"
    )
    parser.add_argument(
        "--part",
        choices=("all", "vit", *SECTIONS),
        default="all",
        help="measure one section (the ViT, Swin or the CNN), keeping the others as --out has them (default all)",
    )
    args = parser.parse_args(argv)
    for name in ("warmup", "steps", "per_round", "batch", "threads"):
        minimum = 0 if name == "warmup" else 1
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}")
    return args


# ---------------------------------------------------------------- models


def backbone(seed: int, name: str = BACKBONE, kwargs: Mapping[str, Any] = MODEL_KWARGS) -> nn.Module:
    """A fresh, identically initialised backbone."""
    torch.manual_seed(seed)
    return autopeft.create_backbone(name, NUM_CLASSES, **kwargs)


def section_backbone(part: str, seed: int) -> nn.Module:
    return backbone(seed, SECTIONS[part].backbone, SECTIONS[part].model_kwargs)


def autopeft_configs(
    methods: tuple[str, ...] = DEFAULT_METHODS, prompts: bool = True, lora_qkv: bool = True
) -> dict[str, dict[str, Any]]:
    """Name -> ``autopeft.apply`` methods for every autopeft training configuration."""
    configs: dict[str, dict[str, Any]] = {name: {name: {}} for name in methods}
    if lora_qkv:
        configs["lora_qkv"] = LORA_QKV
    for method in PROMPT_METHODS if prompts else ():
        for length in PROMPT_LENGTHS:
            configs[f"{method}@{length}"] = {method: {"length": length}}
    return configs


def peft_lora(model: nn.Module) -> nn.Module:
    """HF peft LoRA rank 8 on ``qkv``, with the timm head made trainable by hand."""
    config = peft.LoraConfig(r=8, lora_alpha=8, target_modules=["qkv"], lora_dropout=0.0)
    wrapped = peft.get_peft_model(model, config)
    for param in wrapped.base_model.model.head.parameters():
        param.requires_grad_(True)
    return wrapped


def training_models(
    configs: Mapping[str, dict[str, Any]], build: Callable[[], nn.Module], peft_baseline: bool = True
) -> dict[str, nn.Module]:
    """Every training configuration's model, HF peft's LoRA (``peft_baseline``) and the frozen floor, in train mode
    with BatchNorms (CNNs) in eval mode as autopeft's training keeps them, unless fully fine-tuned."""
    models = {name: autopeft.apply(build(), copy.deepcopy(m)) for name, m in configs.items()}
    if peft_baseline:
        models[PEFT_LORA_QKV] = peft_lora(build())
    models[FLOOR] = build().requires_grad_(False)
    for model in models.values():
        train_mode(model, "auto")  # as autopeft trains: BatchNorms frozen unless fully fine-tuned
    return models


@torch.no_grad()
def randomise_trainable(model: nn.Module, std: float = RANDOMISE_STD) -> None:
    """Perturb every trainable tensor so merged methods are not an identity."""
    for param in model.parameters():
        if param.requires_grad:
            param.add_(torch.randn_like(param) * std)


def inference_models(build: Callable[[], nn.Module]) -> dict[str, nn.Module]:
    """Plain backbone, randomised LoRA + SSF unmerged, and the same merged; all in eval mode."""
    unmerged = autopeft.apply(build(), copy.deepcopy(MERGE_METHODS))
    randomise_trainable(unmerged)
    merged = autopeft.merge(copy.deepcopy(unmerged))
    return {name: m.eval() for name, m in {"plain": build(), "merged": merged, "unmerged": unmerged}.items()}


def count_trainable(name: str, model: nn.Module) -> int:
    """Trainable parameters, classifier head excluded (0 for the frozen floor)."""
    if name == FLOOR:
        return 0
    if name == PEFT_LORA_QKV:
        return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".head." not in n)
    return autopeft.count_trainable(model)


# ---------------------------------------------------------------- steps


# ---------------------------------------------------------------- results


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    fit = statistics.linear_regression(xs, ys)
    return fit.slope, fit.intercept


def verdict(value: float, target: float) -> dict[str, Any]:
    return {"value": round(value, 4), "target": f"<= {target}", "pass": value <= target}


def prompt_cost(medians: Mapping[str, float], method: str, floor: float) -> dict[str, Any]:
    """Linear fit of ms/img against prompt length, and its intercept relative to the floor."""
    lengths = list(PROMPT_LENGTHS)
    ms = [medians[f"{method}@{length}"] for length in lengths]
    slope, intercept = linear_fit([float(x) for x in lengths], ms)
    return {
        "lengths": lengths,
        "ms_per_img": [round(v, 4) for v in ms],
        "slope_ms_per_img_per_token": round(slope, 5),
        "slope_per_token_rel_floor": round(slope / floor, 5),
        "intercept_ms_per_img": round(intercept, 4),
        "intercept_ratio_to_floor": verdict(intercept / floor, TARGET_METHOD_VS_FLOOR),
    }


def method_rows(
    timed: list[Timed], models: Mapping[str, nn.Module], configs: Mapping[str, Any], floor: float
) -> dict[str, dict[str, Any]]:
    configs = {**configs, **OTHER_CONFIGS}
    rows = {}
    for item in timed:
        rows[item.name] = {
            "config": configs[item.name],
            "ms_per_img": round(item.ms_per_img, 4),
            "ms_per_img_min": round(item.min_ms_per_img, 4),
            "timed_steps": len(item.ms_per_step),
            "ratio_to_floor": round(item.ms_per_img / floor, 4),
            "trainable_params": count_trainable(item.name, models[item.name]),
        }
    return rows


def targets(medians: Mapping[str, float], inference: Mapping[str, Any]) -> dict[str, Any]:
    floor = medians[FLOOR]
    vs_floor: dict[str, Any] = {}
    for method in DEFAULT_METHODS:
        if method in PROMPT_METHODS:
            vs_floor[method] = prompt_cost(medians, method, floor)
        else:
            vs_floor[method] = verdict(medians[method] / floor, TARGET_METHOD_VS_FLOOR)
    return {
        "lora_vs_peft": verdict(medians["lora_qkv"] / medians[PEFT_LORA_QKV], TARGET_LORA_VS_PEFT),
        "default_lora_qv_vs_peft_qkv": round(medians["lora"] / medians[PEFT_LORA_QKV], 4),
        "merged_inference_vs_plain": verdict(inference["merged_vs_plain"], TARGET_MERGED_VS_PLAIN),
        "method_vs_floor": vs_floor,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_1min_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "peft": peft.__version__,
        "autopeft": autopeft.__version__,
    }


def settings(args: argparse.Namespace, num_tokens: int) -> dict[str, Any]:
    return {
        "backbone": BACKBONE,
        "num_classes": NUM_CLASSES,
        "model_kwargs": MODEL_KWARGS,
        "pretrained": False,
        "tokens_per_image": num_tokens,
        "batch": args.batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "per_round": args.per_round,
        "seed": args.seed,
        "optimizer": f"AdamW(lr={LEARNING_RATE})",
        "loss": "cross_entropy",
        "timing": "median ms per image over interleaved timed steps",
    }


# ---------------------------------------------------------------- main


def bench_training(
    args: argparse.Namespace,
    images: torch.Tensor,
    labels: torch.Tensor,
    configs: Mapping[str, dict[str, Any]],
    build: Callable[[], nn.Module],
    peft_baseline: bool = True,
) -> dict[str, Any]:
    models = training_models(configs, build, peft_baseline)
    timed = [
        Timed(
            name,
            floor_step(model, images, labels) if name == FLOOR else train_step(model, images, labels),
            images=len(images),
        )
        for name, model in models.items()
    ]
    run_interleaved(timed, args.warmup, args.steps, args.per_round, args.seed)
    medians = {item.name: item.ms_per_img for item in timed}
    return {"medians": medians, "rows": method_rows(timed, models, configs, medians[FLOOR])}


def bench_inference(args: argparse.Namespace, images: torch.Tensor, build: Callable[[], nn.Module]) -> dict[str, Any]:
    models = inference_models(build)
    with torch.no_grad():
        max_abs_diff = (models["merged"](images) - models["unmerged"](images)).abs().max().item()
    timed = [Timed(name, forward_step(model, images), images=len(images)) for name, model in models.items()]
    run_interleaved(timed, args.warmup, args.steps, args.per_round, args.seed)
    ms = {item.name: item.ms_per_img for item in timed}
    return {
        "methods": MERGE_METHODS,
        "randomise_std": RANDOMISE_STD,
        **{f"{name}_ms_per_img": round(value, 4) for name, value in ms.items()},
        "merged_vs_plain": round(ms["merged"] / ms["plain"], 4),
        "unmerged_vs_plain": round(ms["unmerged"] / ms["plain"], 4),
        "max_abs_diff_merged_vs_unmerged": max_abs_diff,
    }


def bench_vit(args: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Every method on the small ViT, with the machine and the settings."""
    machine = machine_info()
    build = functools.partial(backbone, args.seed)
    training = bench_training(args, images, labels, autopeft_configs(), build)
    inference = bench_inference(args, images, build)
    num_tokens = (MODEL_KWARGS["img_size"] // MODEL_KWARGS["patch_size"]) ** 2 + 1
    return {
        "command": COMMAND,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine, "loadavg_1min_end": round(os.getloadavg()[0], 2)},
        "settings": settings(args, num_tokens),
        "methods": training["rows"],
        "inference": inference,
        "targets": targets(training["medians"], inference),
    }


def bench_section(args: argparse.Namespace, part: str) -> dict[str, Any]:
    """A few methods on another family (``SECTIONS[part]``): against the floor, LoRA on qkv against HF peft's
    where the section says so, and merged LoRA+SSF inference against plain."""
    section = SECTIONS[part]
    torch.manual_seed(args.seed)
    images = torch.randn(args.batch, 3, section.image_size, section.image_size)
    labels = torch.randint(0, NUM_CLASSES, (args.batch,))
    build = functools.partial(section_backbone, part, args.seed)
    load = os.getloadavg()[0]
    configs = autopeft_configs(section.timed_methods, prompts=False, lora_qkv=section.peft_baseline)
    training = bench_training(args, images, labels, configs, build, section.peft_baseline)
    inference = bench_inference(args, images, build)
    medians = training["medians"]
    vs_peft = medians["lora_qkv"] / medians[PEFT_LORA_QKV] if section.peft_baseline else None
    return {
        "command": f"{COMMAND} --part {part}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
        **asdict(section),
        "methods": training["rows"],
        "inference": inference,
        "targets": {
            **({"lora_vs_peft": verdict(vs_peft, TARGET_LORA_VS_PEFT)} if vs_peft else {}),
            "merged_inference_vs_plain": verdict(inference["merged_vs_plain"], TARGET_MERGED_VS_PLAIN),
            "method_vs_floor": {
                m: verdict(medians[m] / medians[FLOOR], TARGET_METHOD_VS_FLOOR) for m in section.timed_methods
            },
        },
    }


def summary(result: Mapping[str, Any]) -> str:
    lines = []
    for label, section in (("vit", result), *((part, result.get(part)) for part in SECTIONS)):
        if not section or "methods" not in section:
            continue
        lines.append(f"{label + ' config':<20}{'ms/img':>10}{'x floor':>10}{'trainable':>12}")
        for name, row in section["methods"].items():
            lines.append(
                f"{name:<20}{row['ms_per_img']:>10.3f}{row['ratio_to_floor']:>10.3f}{row['trainable_params']:>12}"
            )
        inf = section["inference"]
        lines.append(
            f"inference ms/img: plain {inf['plain_ms_per_img']:.3f}, merged {inf['merged_ms_per_img']:.3f}, "
            f"unmerged {inf['unmerged_ms_per_img']:.3f}; max |diff| {inf['max_abs_diff_merged_vs_unmerged']:.2e}"
        )
        lines += [f"{label} {key}: {json.dumps(value)}" for key, value in section["targets"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images = torch.randn(args.batch, 3, MODEL_KWARGS["img_size"], MODEL_KWARGS["img_size"])
    labels = torch.randint(0, NUM_CLASSES, (args.batch,))
    result = json.loads(args.out.read_text()) if args.part != "all" and args.out.is_file() else {}
    if args.part in ("all", "vit"):
        result.update(bench_vit(args, images, labels))
    for part in SECTIONS:
        if args.part in ("all", part):
            result[part] = bench_section(args, part)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
