"""One training run in a run directory: config.yaml, metrics.jsonl, result.json, adapter, checkpoint."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import timm
import torch

import autopeft
from autopeft.api import apply, count_trainable, save_adapter
from autopeft.backbones import DEMO_BACKBONES, build_demo_architecture, create_backbone
from autopeft.data import TaskData, load_task
from autopeft.data.transforms import input_config
from autopeft.errors import AutopeftError, ConfigError
from autopeft.files import write_atomic, write_json, write_text
from autopeft.methods import REGISTRY
from autopeft.optim import Masks
from autopeft.runconfig import BackboneConfig, RunConfig, dump_run_config, load_run_config
from autopeft.train import (
    NonFiniteLoss,
    Normalization,
    StepLoss,
    evaluate,
    evaluate_with_loss,
    make_optimizer,
    make_scheduler,
    resolve_device,
    train_epoch,
)

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
METRICS = "metrics.jsonl"


class RunInterrupted(AutopeftError):
    """Ctrl-C during training; the last epoch checkpoint is on disk."""


def build_model(config: RunConfig, with_methods: bool = True) -> tuple[torch.nn.Module, TaskData, Normalization]:
    """Backbone with a head for the task (methods applied); the task; the backbone's normalisation.

    Seeded first, so a randomly initialised backbone (``pretrained: false``) is rebuilt identically
    by ``export`` and by a resumed run.
    """
    torch.manual_seed(config.seed)
    model = build_backbone(config.backbone)
    size, mean, std = input_config(model)
    task = load_task(config.data, size)
    model.reset_classifier(task.num_classes)
    if with_methods:
        apply(model, config.methods)
    return model, task, Normalization(mean, std)


def build_backbone(backbone: BackboneConfig) -> torch.nn.Module:
    kwargs = {"drop_path_rate": backbone.drop_path, **backbone.options}
    if backbone.name in DEMO_BACKBONES and not backbone.pretrained:
        return build_demo_architecture(backbone.name, 1, **kwargs)
    hub = backbone.pretrained and backbone.checkpoint is None and backbone.name not in DEMO_BACKBONES
    return create_backbone(backbone.name, 1, backbone.checkpoint, pretrained=hub, **kwargs)


def provenance(config: RunConfig, task: TaskData, norm: Normalization) -> dict[str, Any]:
    return {
        "autopeft": autopeft.__version__,
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "checkpoint": _weights(config.backbone),
        "normalization": f"mean={list(norm.mean)} std={list(norm.std)}",
        "data_format": task.data_format,
        "selection": "val",
        "reported_epoch": "final",
        "train_split": "trainval" if config.final else "train",
    }


def _weights(backbone: BackboneConfig) -> str:
    if not backbone.pretrained:
        return "random init"
    if backbone.checkpoint:
        return backbone.checkpoint
    return "shipped with autopeft" if backbone.name in DEMO_BACKBONES else "timm Hub"


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Refuse to overwrite a finished or unfinished run unless resuming one."""
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"--resume: {out} holds no checkpoint ({CHECKPOINT}) to continue from")
        return
    if (out / RESULT).is_file() or (out / CHECKPOINT).is_file():
        raise ConfigError(f"{out}: already holds a run; choose another --out, or pass --resume to continue it")
    out.mkdir(parents=True, exist_ok=True)


def train_run(config: RunConfig, out: Path, resume: bool = False, progress: Any = None) -> dict[str, Any]:
    """Train ``config`` into ``out`` (select on val, test read once for the final epoch); return result.json."""
    prepare_run_dir(out, resume)
    write_text(out / "config.yaml", dump_run_config(config))
    model, task, norm = build_model(config)
    model.to(resolve_device(config.train.device))
    result = _base_result(config, task, model, norm)
    start = time.perf_counter()
    try:
        history, start = fit(model, task, norm, config, out, resume, progress)
    except NonFiniteLoss as err:
        return _finish(out, {**result, "status": "failed", "reason": str(err)}, err.history, start)
    save_adapter(model, out)
    result["val_acc"], result["val_loss"] = history[-1]["val_acc"], history[-1]["val_loss"]
    if config.test:
        result["test_acc"] = evaluate(model, task.split("test"), norm, config.train.eval_batch_size)
    return _finish(out, {**result, "status": "completed"}, history, start)


def train_or_reuse(config: RunConfig, out: Path, progress: Any = None) -> dict[str, Any]:
    """``train_run`` unless ``out`` already holds a finished (completed or failed) run, whose
    result.json is returned; an interrupted one is resumed. For pipelines run again after a stop."""
    if (out / RESULT).is_file():
        return json.loads((out / RESULT).read_text())
    return train_run(config, out, resume=(out / CHECKPOINT).is_file(), progress=progress)


def fit(
    model: torch.nn.Module,
    task: TaskData,
    norm: Normalization,
    config: RunConfig,
    out: Path,
    resume: bool = False,
    progress: Any = None,
    step_loss: StepLoss | None = None,
    active: Callable[[], Masks] | None = None,
    before_eval: Callable[[], None] | None = None,
    after_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Train on train (trainval when ``config.final``), val accuracy per epoch, a checkpoint in
    ``out`` after every epoch; returns the per-epoch history and the start time (perf_counter,
    shifted back by the time already spent before a resume).

    A supernet passes ``step_loss`` (its subnets' forward and backward per batch), ``active`` (the
    masks of what each step may move: a MaskedAdamW) and ``before_eval`` (the subnet val scores);
    ``after_epoch`` sees each epoch's history line once its checkpoint is written.
    Raises NonFiniteLoss (with ``.history``) or RunInterrupted.
    """
    out.mkdir(parents=True, exist_ok=True)
    train_split = task.split("trainval" if config.final else "train")
    val_split = None if config.final else task.split("val")
    optimizer = make_optimizer(model, config.train, active)
    scheduler = make_scheduler(optimizer, config.train, -(-len(train_split) // config.train.batch_size))
    generator = torch.Generator().manual_seed(config.seed)
    history, elapsed = _restore(out / CHECKPOINT, model, optimizer, scheduler, generator) if resume else ([], 0.0)
    start = time.perf_counter() - elapsed
    if progress is not None:
        progress.start(config.train.epochs, len(train_split), len(history))
    runner = torch.compile(model) if config.train.compile else model
    on_step = progress.step if progress is not None else None
    try:
        for epoch in range(len(history), config.train.epochs):
            try:
                stats = train_epoch(
                    runner, train_split, optimizer, scheduler, config.train, norm, generator, on_step, step_loss
                )
            except NonFiniteLoss as err:
                raise NonFiniteLoss(str(err), history) from err
            if before_eval is not None:
                before_eval()
            val, val_loss = (
                evaluate_with_loss(runner, val_split, norm, config.train.eval_batch_size)
                if val_split is not None
                else (None, None)
            )
            history.append(
                {"epoch": epoch + 1, **stats, "val_acc": val, "val_loss": val_loss, "lr": scheduler.get_last_lr()[0]}
            )
            _save_checkpoint(out, model, optimizer, scheduler, generator, history, time.perf_counter() - start)
            if progress is not None:
                progress.epoch(history[-1])
            if after_epoch is not None:
                after_epoch(history[-1])
    except KeyboardInterrupt as err:
        raise RunInterrupted(
            f"interrupted; {len(history)} epochs saved in {out / CHECKPOINT}: "
            f"continue with `autopeft train {out / 'config.yaml'} --out {out} --resume`"
        ) from err
    finally:
        if progress is not None:
            progress.stop()
    return history, start


def _base_result(config: RunConfig, task: TaskData, model: torch.nn.Module, norm: Normalization) -> dict[str, Any]:
    return {
        "command": "train",
        "dataset": task.name,
        "backbone": config.backbone.name,
        "methods": config.methods,
        "trainable_params": count_trainable(model),
        "val_acc": None,
        "val_loss": None,
        "test_acc": None,
        "seed": config.seed,
        "epochs": config.train.epochs,
        "wall_time_s": None,
        "provenance": provenance(config, task, norm),
    }


def _finish(out: Path, result: dict[str, Any], history: list[dict], start: float) -> dict[str, Any]:
    result["wall_time_s"] = round(time.perf_counter() - start, 2)
    write_text(out / METRICS, "".join(json.dumps(line) + "\n" for line in history))
    write_json(out / RESULT, result)
    return result


def _save_checkpoint(out, model, optimizer, scheduler, generator, history, elapsed) -> None:
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state = {
        "trainable": trainable,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "elapsed": elapsed,
    }
    write_atomic(out / CHECKPOINT, lambda tmp: torch.save(state, tmp))
    write_text(out / METRICS, "".join(json.dumps(line) + "\n" for line in history))


def _restore(path, model, optimizer, scheduler, generator) -> tuple[list[dict], float]:
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:
        raise ConfigError(f"{path}: checkpoint cannot be read ({type(err).__name__})") from err
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state["history"], state["elapsed"]


def export_run(run_dir: Path, out: Path, merge: bool) -> Path:
    """Export a finished run: its adapter folder, or with ``merge`` a timm checkpoint (.safetensors)."""
    from safetensors.torch import save_file

    from autopeft.api import load_adapter
    from autopeft.api import merge as merge_methods

    if not (run_dir / RESULT).is_file() or not (run_dir / "adapter.safetensors").is_file():
        raise ConfigError(f"{run_dir}: not a finished run (needs {RESULT} and adapter.safetensors)")
    config = load_run_config(run_dir / "config.yaml")
    model, _, _ = build_model(config, with_methods=False)
    load_adapter(model, run_dir)
    if not merge:
        save_adapter(model, out)
        return out
    unmergeable = [m for m in config.methods if REGISTRY[m].needs_vit and not REGISTRY[m].mergeable]
    if unmergeable:
        raise ConfigError(
            f"export --merge: {', '.join(unmergeable)} cannot be folded into timm weights; export without --merge"
        )
    merge_methods(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    write_atomic(out, lambda tmp: save_file(tensors, tmp, metadata={"backbone": config.backbone.name}))
    return out


def retrain_run(
    run_dir: Path, seeds: list[int], out: Path, progress: Any = None, overrides: list[str] = ()
) -> dict[str, Any]:
    """Train a finished search's ``best.yaml`` (with ``key=value`` overrides, e.g. a longer
    ``train.epochs``) on train+val once per seed into ``out/seed<s>`` (each reads the test split
    once; finished seeds are reused, interrupted ones resumed) and write ``out/result.json`` with
    the test mean and std over seeds."""
    if not (run_dir / "best.yaml").is_file():
        raise ConfigError(f"{run_dir}: holds no finished search (best.yaml missing); run autopeft search or run first")
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    best = load_run_config(run_dir / "best.yaml", overrides)
    start = time.perf_counter()
    runs = []
    for seed in seeds:
        display = progress.run(f"seed{seed}") if progress is not None else None
        runs.append(train_or_reuse(replace(best, final=True, test=True, seed=seed), out / f"seed{seed}", display))
    tests = [r["test_acc"] for r in runs if r["status"] == "completed"]
    result = {
        "command": "retrain",
        "dataset": runs[0]["dataset"],
        "backbone": best.backbone.name,
        "methods": best.methods,
        "trainable_params": runs[0]["trainable_params"],
        "test_acc": statistics.mean(tests) if tests else None,
        "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else (0.0 if tests else None),
        "seeds": seeds,
        "seeds_completed": len(tests),
        "epochs": best.train.epochs,
        "search": str(run_dir),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "provenance": runs[0]["provenance"],
        "status": "completed" if tests else "failed",
    }
    write_json(out / RESULT, result)
    return result
