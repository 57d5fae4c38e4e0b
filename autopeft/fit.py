"""The training loop of a run directory: an epoch at a time, val scored and a checkpoint after each; resumable."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autopeft.backbones import error_gist
from autopeft.data import Split, TaskData
from autopeft.errors import ConfigError, RunInterrupted
from autopeft.files import write_atomic, write_text
from autopeft.optim import Masks
from autopeft.progress import RunProgress
from autopeft.records import (
    OUTCOMES,
    Compute,
    Epoch,
    Outcomes,
)
from autopeft.runconfig import RunConfig
from autopeft.train import (
    NonFiniteLoss,
    Normalization,
    Scored,
    StepLoss,
    make_optimizer,
    make_scheduler,
    score,
    train_epoch,
)

CHECKPOINT = "checkpoint.pt"


METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class FitHooks:
    """How a caller drives ``fit`` beyond its run config. ``resume``: continue from the checkpoint in the run
    directory. ``progress`` follows the epochs and steps. A supernet passes ``step_loss`` (its subnets' forward
    and backward per batch), ``active`` (the masks of what each step may move: a MaskedAdamW) and
    ``before_eval`` (the subnet val scores). ``after_epoch`` sees each epoch's history line once its checkpoint
    is written; a True return ends training there (a search's pruner)."""

    resume: bool = False
    progress: RunProgress | None = None
    step_loss: StepLoss | None = None
    active: Callable[[], Masks] | None = None
    before_eval: Callable[[], None] | None = None
    after_epoch: Callable[[Epoch], bool | None] | None = None


def fit(
    model: torch.nn.Module,
    task: TaskData,
    norm: Normalization,
    config: RunConfig,
    out: Path,
    hooks: FitHooks = FitHooks(),
) -> tuple[list[Epoch], float]:
    """Train on train (trainval when ``config.final``), val accuracy per epoch, a checkpoint in
    ``out`` after every epoch; returns the per-epoch history and the start time (perf_counter,
    shifted back by the time already spent before a resume). Raises NonFiniteLoss (with ``.history``)
    or RunInterrupted.
    """
    progress, step_loss, after_epoch = hooks.progress, hooks.step_loss, hooks.after_epoch
    out.mkdir(parents=True, exist_ok=True)
    train_split = task.split("trainval" if config.final else "train")
    val_split = None if config.final else task.split("val")
    optimizer = make_optimizer(model, config.train, hooks.active)
    scheduler = make_scheduler(optimizer, config.train, -(-len(train_split) // config.train.batch_size))
    generator = torch.Generator().manual_seed(config.seed)
    restored = _restore(out / CHECKPOINT, model, optimizer, scheduler, generator) if hooks.resume else ([], 0.0)
    history, elapsed = restored
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
            if hooks.before_eval is not None:
                hooks.before_eval()
            val, val_loss = None, None
            if val_split is not None:
                scored = score(runner, val_split, norm, config.train.eval_batch_size, config.train.amp)
                val, val_loss = scored.accuracy, scored.loss
                _val_outcomes(scored, val_split, task, config).write(out / OUTCOMES)
            evaluated = len(val_split) if val_split is not None else 0
            lr = scheduler.get_last_lr()[0]
            history.append(Epoch(epoch + 1, **stats, eval_images=evaluated, val_acc=val, val_loss=val_loss, lr=lr))
            _save_checkpoint(out, model, optimizer, scheduler, generator, history, time.perf_counter() - start)
            if progress is not None:
                progress.epoch(history[-1])
            if after_epoch is not None and after_epoch(history[-1]):
                break
    except KeyboardInterrupt as err:
        if not history:
            raise RunInterrupted(
                "interrupted before the first epoch finished; nothing was saved to resume", False
            ) from err
        raise RunInterrupted(
            f"interrupted; {len(history)} epoch{'s' if len(history) > 1 else ''} saved in {out / CHECKPOINT}"
        ) from err
    finally:
        if progress is not None:
            progress.stop()
    return history, start


def _val_outcomes(scored: Scored, val: Split, task: TaskData, config: RunConfig) -> Outcomes:
    """This epoch's val outcomes, named by pool position (the same ids for every fold of the task)."""
    return Outcomes(
        "val",
        scored.correct.numpy(),
        scored.example_loss.numpy(),
        val.index.numpy(),
        np.full(len(val), config.data.fold),
        task.fingerprint(),
    )


def history_compute(history: list[Epoch]) -> Compute:
    """Images a training history processed: every forward+backward pass, and the val evaluations."""
    return Compute(sum(h.train_images for h in history), sum(h.eval_images for h in history))


def _save_checkpoint(out, model, optimizer, scheduler, generator, history, elapsed) -> None:
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state = {
        "trainable": trainable,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": [line.to_json() for line in history],
        "elapsed": elapsed,
    }
    write_atomic(out / CHECKPOINT, lambda tmp: torch.save(state, tmp))
    write_metrics(out, history)


def write_metrics(out: Path, history: list[Epoch]) -> None:
    """``out/metrics.jsonl``: a line per epoch."""
    write_text(out / METRICS, "".join(json.dumps(line.to_json()) + "\n" for line in history))


def saved_history(out: Path) -> list[Epoch]:
    """The epoch history in ``out``'s checkpoint (empty without one): the epochs a resume continues after."""
    path = out / CHECKPOINT
    return [Epoch.from_json(line) for line in torch.load(path, weights_only=True)["history"]] if path.is_file() else []


def _restore(path, model, optimizer, scheduler, generator) -> tuple[list[Epoch], float]:
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:
        raise ConfigError(
            f"{path}: checkpoint cannot be read ({type(err).__name__}: {error_gist(err)}); it is damaged (a full "
            f"disk?): delete it to start the run over, or train into a new --out"
        ) from err
    params = dict(model.named_parameters())
    foreign = sorted(set(state["trainable"]) - set(params))
    if foreign:
        raise ConfigError(
            f"{path}: checkpoint holds parameter '{foreign[0]}' that this model does not have (written by another "
            "autopeft version or model); train in a new folder, or delete the checkpoint to start over"
        )
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return [Epoch.from_json(line) for line in state["history"]], state["elapsed"]
