"""The training jobs: train one configuration into a run directory, retrain a search's choice per seed, export a run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from autopeft.api import WEIGHTS_FILE, count_trainable, load_adapter, save_adapter
from autopeft.build import build_model, check_buildable, provenance, timm_metadata
from autopeft.data import TaskData
from autopeft.errors import AutopeftError, ConfigError
from autopeft.files import write_atomic
from autopeft.fit import CHECKPOINT, FitHooks, fit, history_compute, write_metrics
from autopeft.jobs.rundir import CONFIG, RESULT, RunDir, locked
from autopeft.methods import REGISTRY
from autopeft.progress import RunProgress, StageProgress
from autopeft.records import (
    Epoch,
    FinalRow,
    RetrainRecord,
    RunRecord,
    Schedule,
    read_record,
)
from autopeft.report.summaries import percent
from autopeft.runconfig import RunConfig, load_run_config, parse_run_config
from autopeft.runkey import config_key, key_fields, row_key
from autopeft.train import (
    NonFiniteLoss,
    Normalization,
    Precision,
    evaluate,
    resolve_device,
)


def run_dir(out: Path, resume: bool) -> RunDir:
    """A training run's directory: a resume needs its checkpoint, and a folder that ``autopeft prune`` prepared
    (its config.yaml, pruned adapter and record) is not yet a run."""
    return RunDir(out, resume, "train", resumes_from=CHECKPOINT, holds_run=(RESULT, CHECKPOINT))


def train_run(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    progress: RunProgress | None = None,
    stop_after: Callable[[Epoch], bool] | None = None,
) -> RunRecord:
    """Train ``config`` into ``out`` (select on val, test read once for the final epoch); return its record.

    Everything is checked before the first epoch: the device, the architecture, the directory (locked
    against a second writer; a resume must keep every result-changing key), and every image of every
    split. ``stop_after(metrics)`` sees every epoch and returns True to end the run there (status
    ``stopped``: a search's pruner; the test split is then never read)."""
    device = resolve_device(config.train.device)

    def check() -> None:
        Precision(device, config.train.amp)  # fp16 without CUDA: one line before anything is written
        check_buildable(config, f"the run config for {out}")

    rundir = run_dir(out, resume)

    def key(data: dict[str, Any]) -> dict[str, Any]:  # a resume compares the result-changing keys (not the device)
        return key_fields(parse_run_config(data, str(out / CONFIG)))

    with rundir.writing(config.to_dict(), None, check, key):
        model, task, norm = build_model(config)
        task.check()
        model.to(device)
        record = _base_record(config, task, model, norm)
        start = time.perf_counter()
        try:
            history, start = fit(model, task, norm, config, out, FitHooks(resume, progress, after_epoch=stop_after))
        except NonFiniteLoss as err:
            return _finish(rundir, replace(record, status="failed", reason=str(err)), err.history, task, start)
        save_adapter(model, out)
        record.val_acc, record.val_loss = history[-1].val_acc, history[-1].val_loss
        if len(history) < config.train.epochs:
            record.status, record.reason = "stopped", f"stopped after epoch {len(history)} of {config.train.epochs}"
        elif config.test:
            record.test_acc = evaluate(model, task.split("test"), norm, config.train.eval_batch_size, config.train.amp)
        return _finish(rundir, record, history, task, start)


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


def cached(config: RunConfig, root: Path) -> RunRecord | None:
    """The finished run of ``config`` in the run cache ``root`` (``root/<config_key>``), or None: a look-up
    that trains nothing."""
    out = Path(root) / config_key(config)
    return read_run(out) if (out / RESULT).is_file() else None


def read_run(out: Path) -> RunRecord:
    """The record of a finished ``autopeft train`` run directory."""
    record = read_record(out / RESULT)
    if not isinstance(record, RunRecord):
        raise ConfigError(f"{out / RESULT}: a '{record.command}' result, not a training run")
    return record


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
        schedule=Schedule(
            train.epochs, train.lr, train.weight_decay, train.batch_size, train.warmup_epochs, train.optimizer
        ),
        provenance=provenance(config, task, norm, test_read=config.test),
    )


def _finish(rundir: RunDir, record: RunRecord, history: list[Epoch], task: TaskData, start: float) -> RunRecord:
    """Record the compute and wall time, write metrics.jsonl and result.json."""
    record.wall_time_s = round(time.perf_counter() - start, 2)
    tested = len(task.split("test")) if record.test_acc is not None else 0
    record.compute = replace(history_compute(history), wall_s=record.wall_time_s)
    record.compute.eval_images += tested
    write_metrics(rundir.path, history)
    return rundir.write(record)


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
    with locked(out):
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
    return RunDir(out, command="retrain").write(record)


@dataclass(frozen=True)
class TrainJob:
    """``autopeft train``: one configuration into a run directory."""

    name: str = "train"

    def parse(self, data: Any, where: str, base: Path | None) -> RunConfig:
        config = parse_run_config(data, where)
        check_buildable(config, where)
        return config

    def run(self, config: RunConfig, out: Path, resume: bool, progress: StageProgress) -> RunRecord:
        record = train_run(config, out, resume, progress.run(out.name))
        if record.status != "completed":
            raise AutopeftError(f"run failed: {record.reason} (status in {out / RESULT})")
        return record

    def done(self, record: RunRecord, out: Path) -> str:
        return (
            f"{out}: val {percent(record.val_acc)}  test {percent(record.test_acc)}  "
            f"trainable {record.trainable_params:,}  {record.wall_time_s:.0f} s"
        )
