"""One training run in a run directory: config.yaml, metrics.jsonl, result.json, adapter, checkpoint."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

import autopeft
from autopeft.api import WEIGHTS_FILE, apply, count_trainable, load_adapter, save_adapter
from autopeft.backbones import DEMO_BACKBONES, build_demo_architecture, create_backbone, error_gist
from autopeft.data import Split, TaskData, load_task, split_sizes
from autopeft.data.transforms import input_config
from autopeft.errors import AutopeftError, ConfigError, RunInterrupted
from autopeft.files import write_atomic, write_text
from autopeft.inject import block_count
from autopeft.methods import REGISTRY
from autopeft.optim import Masks
from autopeft.progress import RunProgress, StageProgress
from autopeft.records import (
    OUTCOMES,
    Compute,
    FinalRow,
    Outcomes,
    Provenance,
    RetrainRecord,
    RunRecord,
    Schedule,
    read_record,
)
from autopeft.runconfig import BackboneConfig, RunConfig, dump_run_config, load_run_config
from autopeft.rundir import locked
from autopeft.runkey import config_key, key_fields, refuse_changes, row_key
from autopeft.train import (
    NonFiniteLoss,
    Normalization,
    Precision,
    Scored,
    StepLoss,
    TrainConfig,
    evaluate,
    make_optimizer,
    make_scheduler,
    resolve_device,
    score,
    train_epoch,
)

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
METRICS = "metrics.jsonl"


def build_model(config: RunConfig, with_methods: bool = True) -> tuple[torch.nn.Module, TaskData, Normalization]:
    """Backbone with a head for the task (methods applied, then ``config.init``'s adapter loaded when
    set); the task; the backbone's normalisation.

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
        if config.init is not None:
            load_adapter(model, config.init)
    return model, task, Normalization(mean, std)


def build_backbone(backbone: BackboneConfig) -> torch.nn.Module:
    kwargs = {"drop_path_rate": backbone.drop_path, **backbone.options}
    if backbone.name in DEMO_BACKBONES and not backbone.pretrained:
        return build_demo_architecture(backbone.name, 1, **kwargs)
    hub = backbone.pretrained and backbone.checkpoint is None and backbone.name not in DEMO_BACKBONES
    return create_backbone(backbone.name, 1, backbone.checkpoint, pretrained=hub, **kwargs)


def methods_count(backbone: BackboneConfig, methods: dict[str, Any]) -> int:
    """Trainable parameters (head excluded) of ``methods`` on the backbone, counted on the meta device
    (the architecture alone: no weights are loaded or allocated)."""
    with torch.device("meta"):
        model = build_backbone(replace(backbone, pretrained=False, checkpoint=None))
        return count_trainable(apply(model, methods))


def check_buildable(config: RunConfig, where: str) -> None:
    """What parsing cannot see, checked on the architecture alone before a run directory is touched: the
    backbone exists, the method options fit it, the data is there. One error line starting with ``where``
    (the config file) and naming the full key."""
    try:
        with torch.device("meta"):
            model = build_backbone(replace(config.backbone, pretrained=False, checkpoint=None))
    except AutopeftError as err:
        raise type(err)(f"{where}: backbone.name: {err}") from err
    try:
        with torch.device("meta"):
            apply(model, config.methods)
    except AutopeftError as err:
        key = "methods." if str(err).split(".", 1)[0] in REGISTRY else "methods: "
        raise type(err)(f"{where}: {key}{err}") from err
    try:
        split_sizes(config.data)
    except AutopeftError as err:
        key = "data.name" if config.data.name is not None else "data.root"
        raise type(err)(f"{where}: {key}: {err}") from err


def backbone_depth(backbone: BackboneConfig) -> int:
    """The backbone's block count, from its architecture alone."""
    with torch.device("meta"):
        return block_count(build_backbone(replace(backbone, pretrained=False, checkpoint=None)))


def machine_provenance(test_read: bool | None, train: TrainConfig) -> Provenance:
    """Versions, git sha and the machine ``train`` runs on: the provenance of a result that spans several runs."""
    device = resolve_device(train.device)
    return Provenance(
        autopeft=autopeft.__version__,
        git_sha=git_sha(),
        torch=torch.__version__,
        timm=timm.__version__,
        test_read=test_read,
        device=str(device),
        accelerator=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        dtype=Precision(device, train.amp).label,
        threads=torch.get_num_threads(),
    )


def provenance(config: RunConfig, task: TaskData, norm: Normalization, test_read: bool | None = None) -> Provenance:
    """Everything a training run's numbers depend on besides its config: versions, weights, data, machine."""
    return replace(
        machine_provenance(test_read, config.train),
        checkpoint=_weights(config.backbone),
        normalization=f"mean={list(norm.mean)} std={list(norm.std)}",
        data_format=task.data_format,
        train_split="trainval" if config.final else "train",
    )


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


def prepare_run_dir(out: Path, resume: bool, config: RunConfig) -> None:
    """Refuse to overwrite a finished or unfinished run unless resuming one, and to resume a run with
    a config that changes any result-changing key (the device may change)."""
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"--resume: {out} holds no checkpoint ({CHECKPOINT}) to continue from")
        stored = load_run_config(out / "config.yaml")
        again = f"autopeft train {out / 'config.yaml'} --out {out} --resume"
        refuse_changes(key_fields(stored), key_fields(config), out, again)
        return
    if (out / RESULT).is_file() or (out / CHECKPOINT).is_file():
        raise ConfigError(f"{out}: already holds a run; choose another --out, or pass --resume to continue it")


def train_run(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    progress: RunProgress | None = None,
    stop_after: Callable[[dict[str, Any]], bool] | None = None,
) -> RunRecord:
    """Train ``config`` into ``out`` (select on val, test read once for the final epoch); return its record.

    Everything is checked before the first epoch: the device, the directory (locked against a second
    writer; a resume must keep every result-changing key), and every image of every split.
    ``stop_after(metrics)`` sees every epoch and returns True to end the run there (status
    ``stopped``: a search's pruner; the test split is then never read)."""
    device = resolve_device(config.train.device)
    Precision(device, config.train.amp)  # fp16 without CUDA: one line before anything is written
    check_buildable(config, f"the run config for {out}")
    with locked(out):
        prepare_run_dir(out, resume, config)
        write_text(out / "config.yaml", dump_run_config(config))
        model, task, norm = build_model(config)
        task.check()
        model.to(device)
        record = _base_record(config, task, model, norm)
        start = time.perf_counter()
        try:
            history, start = fit(model, task, norm, config, out, FitHooks(resume, progress, after_epoch=stop_after))
        except NonFiniteLoss as err:
            return _finish(out, replace(record, status="failed", reason=str(err)), err.history, task, start)
        save_adapter(model, out)
        record.val_acc, record.val_loss = history[-1]["val_acc"], history[-1]["val_loss"]
        if len(history) < config.train.epochs:
            record.status, record.reason = "stopped", f"stopped after epoch {len(history)} of {config.train.epochs}"
        elif config.test:
            record.test_acc = evaluate(model, task.split("test"), norm, config.train.eval_batch_size, config.train.amp)
        return _finish(out, record, history, task, start)


def train_or_reuse(config: RunConfig, out: Path, progress: RunProgress | None = None) -> RunRecord:
    """``train_run`` unless ``out`` already holds a finished (completed or failed) run, whose
    record is returned; an interrupted one is resumed. For pipelines run again after a stop."""
    if (out / RESULT).is_file():
        return read_run(out)
    return train_run(config, out, resume=(out / CHECKPOINT).is_file(), progress=progress)


def cached_run(config: RunConfig, root: Path, progress: RunProgress | None = None) -> RunRecord:
    """``config`` trained in ``root/<config_key>``: read back when finished there, resumed when
    interrupted, trained otherwise (the run cache of benchmarks and scripts)."""
    return train_or_reuse(config, Path(root) / config_key(config), progress)


def read_run(out: Path) -> RunRecord:
    """The record of a finished ``autopeft train`` run directory."""
    record = read_record(out / RESULT)
    if not isinstance(record, RunRecord):
        raise ConfigError(f"{out / RESULT}: a '{record.command}' result, not a training run")
    return record


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
    after_epoch: Callable[[dict[str, Any]], bool | None] | None = None


def fit(
    model: torch.nn.Module,
    task: TaskData,
    norm: Normalization,
    config: RunConfig,
    out: Path,
    hooks: FitHooks = FitHooks(),
) -> tuple[list[dict[str, Any]], float]:
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
            history.append(
                {
                    "epoch": epoch + 1,
                    **stats,
                    "eval_images": evaluated,
                    "val_acc": val,
                    "val_loss": val_loss,
                    "lr": scheduler.get_last_lr()[0],
                }
            )
            _save_checkpoint(out, model, optimizer, scheduler, generator, history, time.perf_counter() - start)
            if progress is not None:
                progress.epoch(history[-1])
            if after_epoch is not None and after_epoch(history[-1]):
                break
    except KeyboardInterrupt as err:
        if not history:
            raise RunInterrupted(
                f"interrupted before the first epoch finished; nothing was saved to resume: start again with "
                f"`autopeft train {out / 'config.yaml'} --out {out}`"
            ) from err
        raise RunInterrupted(
            f"interrupted; {len(history)} epoch{'s' if len(history) > 1 else ''} saved in {out / CHECKPOINT}: "
            f"continue with `autopeft train {out / 'config.yaml'} --out {out} --resume`"
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


def _base_record(config: RunConfig, task: TaskData, model: torch.nn.Module, norm: Normalization) -> RunRecord:
    train = config.train
    return RunRecord(
        dataset=task.name,
        backbone=config.backbone.name,
        methods=config.methods,
        trainable_params=count_trainable(model),
        seed=config.seed,
        epochs=train.epochs,
        config_key=config_key(config),
        row_key=row_key(config),
        schedule=Schedule.of(train),
        provenance=provenance(config, task, norm, test_read=config.test),
    )


def _finish(out: Path, record: RunRecord, history: list[dict], task: TaskData, start: float) -> RunRecord:
    """Record the compute and wall time, write metrics.jsonl and result.json."""
    record.wall_time_s = round(time.perf_counter() - start, 2)
    tested = len(task.split("test")) if record.test_acc is not None else 0
    record.compute = replace(history_compute(history), wall_s=record.wall_time_s)
    record.compute.eval_images += tested
    write_text(out / METRICS, "".join(json.dumps(line) + "\n" for line in history))
    record.write(out / RESULT)
    return record


def history_compute(history: list[dict[str, Any]]) -> Compute:
    """Images a training history processed: every forward+backward pass, and the val evaluations."""
    return Compute(sum(h["train_images"] for h in history), sum(h["eval_images"] for h in history))


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


def saved_history(out: Path) -> list[dict[str, Any]]:
    """The epoch history in ``out``'s checkpoint (empty without one): the epochs a resume continues after."""
    path = out / CHECKPOINT
    return torch.load(path, weights_only=True)["history"] if path.is_file() else []


def _restore(path, model, optimizer, scheduler, generator) -> tuple[list[dict], float]:
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
    return state["history"], state["elapsed"]


MERGED_SUFFIXES = (".safetensors", ".pt", ".pth")


def export_run(run_dir: Path, out: Path, merge: bool) -> Path:
    """Export a finished run: its adapter folder, or with ``merge`` plain timm weights (``.safetensors``,
    or a torch file for ``.pt`` / ``.pth``) that name the timm model, its keyword arguments and the
    input normalisation, so plain timm can load them."""
    from safetensors.torch import save_file

    from autopeft.api import merge as merge_methods

    check_finished(run_dir)
    if merge and (out.suffix not in MERGED_SUFFIXES or out.is_dir()):
        raise ConfigError(
            f"export --merge --out {out}: allowed: a file path ending in {', '.join(MERGED_SUFFIXES)} "
            f"(.safetensors or a torch file), not {'a directory' if out.is_dir() else repr(out.suffix or 'no suffix')}"
        )
    if not merge and out.is_file():
        raise ConfigError(f"export --out {out}: is a file; allowed: a folder for the adapter (or add --merge)")
    config = load_run_config(run_dir / "config.yaml")
    model, _, norm = build_model(config, with_methods=False)
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
    meta = timm_metadata(config.backbone, model, norm)
    if out.suffix == ".safetensors":
        write_atomic(out, lambda tmp: save_file(tensors, tmp, metadata={k: json.dumps(v) for k, v in meta.items()}))
    else:
        write_atomic(out, lambda tmp: torch.save({"state_dict": tensors, **meta}, tmp))
    return out


def check_finished(run_dir: Path) -> None:
    """One line unless ``run_dir`` holds a finished training run (its result and its adapter)."""
    if not (run_dir / RESULT).is_file() or not (run_dir / WEIGHTS_FILE).is_file():
        raise ConfigError(f"{run_dir}: not a finished run (needs {RESULT} and {WEIGHTS_FILE})")


def timm_metadata(backbone: BackboneConfig, model: torch.nn.Module, norm: Normalization) -> dict[str, Any]:
    """How plain timm rebuilds the model: ``timm.create_model(timm_model, **timm_kwargs)``, then the
    weights; inputs scaled to [0, 1] and normalised with ``mean`` / ``std``."""
    name, kwargs = backbone.name, dict(backbone.options)
    if name in DEMO_BACKBONES:
        name, kwargs = DEMO_BACKBONES[name]["timm_name"], {**DEMO_BACKBONES[name]["timm"], **kwargs}
    kwargs["num_classes"] = model.num_classes
    return {"timm_model": name, "timm_kwargs": kwargs, "mean": list(norm.mean), "std": list(norm.std)}


def retrain_run(
    run_dir: Path, seeds: list[int], out: Path, progress: StageProgress | None = None, overrides: list[str] = ()
) -> RetrainRecord:
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
    row = FinalRow.of_runs("retrain", best.methods, runs[0].trainable_params, None, runs)
    record = RetrainRecord(
        dataset=runs[0].dataset,
        backbone=best.backbone.name,
        methods=best.methods,
        trainable_params=runs[0].trainable_params,
        seeds=seeds,
        epochs=best.train.epochs,
        search=str(run_dir),
        test_accs=row.test_accs,
        row_key=row.row_key,
        test_acc=row.test_acc,
        test_acc_std=row.test_acc_std,
        seeds_completed=row.seeds_completed,
        wall_time_s=round(time.perf_counter() - start, 2),
        status="completed" if row.seeds_completed else "failed",
        compute=row.compute,
        provenance=runs[0].provenance,
    )
    record.write(out / RESULT)
    return record
