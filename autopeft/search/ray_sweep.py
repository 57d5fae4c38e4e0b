"""The ray engine of `autopeft search`: one Ray Tune trial per sweep trial, on a local Ray or a cluster.

Ray's ``OptunaSearch`` draws each trial from the space's define-by-run function (``suggest``);
ASHA stops weak trials early (single objective, unless ``pruner: none``). Each trial trains in a
``run`` folder of its working directory on whichever node Ray places it and reports val accuracy
with that folder as a Tune checkpoint after every epoch, so a trial whose process or node dies is
run again from its last epoch (``retries`` times). Results and checkpoints live under
``--storage-path`` (default ``out/ray``), which ``--resume`` restores the experiment from.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from autopeft.errors import ConfigError, RunInterrupted
from autopeft.jobs.rundir import RunDir
from autopeft.progress import StageProgress
from autopeft.records import Compute, Epoch, SearchRecord
from autopeft.search import ray_reaper
from autopeft.search.candidates import Candidate
from autopeft.search.optuna_search import make_sampler
from autopeft.search.sweep import (
    METRIC,
    Prepared,
    SweepConfig,
    SweepTally,
    Where,
    claimed_sweep,
    finish_sweep,
    params_of,
    prepare,
    run_trial,
    scored_by,
    sweep_dir,
)
from autopeft.supernet import SearchSpace, suggest

EXPERIMENT = "sweep"  # the Tune experiment's folder under the storage path


def ray_sweep(
    config: SweepConfig, out: Path, where: Where, resume: bool, display: StageProgress | None = None
) -> SearchRecord:
    """Run ``config.trials`` trials with Ray Tune (or finish an interrupted sweep); write the run files."""
    start = time.perf_counter()
    if config.budget is not None:
        raise ConfigError("budget: the ray engine cannot constrain parameters; use --engine optuna or drop budget")
    prepared = prepare(config)
    if where.address not in (None, "auto"):
        _check_reachable(where.address)
    rundir = sweep_dir(out, resume, "ray")
    with rundir.writing(claimed_sweep(config), None):
        return _tune(config, prepared, rundir, where, start, display)


def _tune(
    config: SweepConfig, prepared: Prepared, rundir: RunDir, where: Where, start: float, display: StageProgress | None
) -> SearchRecord:
    """The sweep's Tune experiment, started or restored, its trials scored into the run files."""
    out, resume = rundir.path, rundir.resume
    address, storage_path, max_concurrent = where.address, where.storage_path, where.max_concurrent
    cpus_per_trial, gpus_per_trial = where.cpus_per_trial, where.gpus_per_trial
    path = Path(storage_path or out / "ray").resolve() / EXPERIMENT
    if resume and not tune.Tuner.can_restore(str(path)):
        raise ConfigError(f"--resume: {path} holds no Ray Tune experiment; nothing was changed")
    # Tune's own output goes (TrialLines says a line per trial): its new output engine prints an experiment box
    # at any verbosity, and it warns on every checkpoint of a short trial that snapshots come often
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    watchdog = _connect(address)
    try:
        if display is not None:
            display.say(f"search: ray tune, {config.trials} trials on {address or 'a local Ray'}, results in {path}")
        trainable = tune.with_resources(
            tune.with_parameters(
                _trial, sweep=config, space=prepared.space, depth=prepared.depth, threads=max(1, int(cpus_per_trial))
            ),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )
        if resume:
            tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=_tune_config(
                    config, prepared.space, prepared.depth, max_concurrent or _slots(cpus_per_trial, gpus_per_trial)
                ),
                run_config=tune.RunConfig(
                    name=EXPERIMENT,
                    storage_path=str(path.parent),
                    failure_config=tune.FailureConfig(max_failures=config.retries),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    verbose=0,
                    callbacks=[TrialLines(config.trials, display)] if display is not None else None,
                ),
            )
        tuner.fit()
        analysis = tune.ExperimentAnalysis(str(path))
        _check_finished(analysis, config.trials)
    finally:
        if watchdog is not None:
            ray.shutdown()
            ray_reaper.stop(watchdog)
    tally = SweepTally("ray", str(path), address=address or "local")
    candidates = _collect(config, prepared.space, prepared.depth, analysis, tally)
    return finish_sweep(config, prepared.space, rundir, candidates, tally, start, display)


class TrialLines(tune.Callback):
    """One line per finished or failed trial, in place of Tune's status tables."""

    def __init__(self, trials: int, display: StageProgress) -> None:
        self.trials, self.display, self.ended = trials, display, 0

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.ended += 1
        result = trial.last_result or {}
        score = f"val {result[METRIC]:.2f}%" if METRIC in result else "no val score"
        self.display.say(
            f"search: trial {self.ended}/{self.trials} finished: {score}, {result.get('params', 0):,} parameters"
        )

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.ended += 1
        self.display.say(f"search: trial {self.ended}/{self.trials} failed (its error is in {trial.local_path})")


def _connect(address: str | None) -> subprocess.Popen | None:
    """Join the cluster at ``address`` or start a local Ray; for a local Ray, which this process shuts down,
    the watchdog that kills its processes should this process die first."""
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        return ray_reaper.start()
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(f"--address {address}: no Ray cluster reachable ({err})") from err
    return None


def _slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the cluster's resources hold at once (when the sweep starts). Tune's own
    default with a searcher starts one trial at a time, which leaves a cluster idle."""
    resources = ray.cluster_resources()
    fits = [resources.get("CPU", 0) / cpus_per_trial] if cpus_per_trial > 0 else []
    fits += [resources.get("GPU", 0) / gpus_per_trial] if gpus_per_trial > 0 else []
    return max(1, int(min(fits, default=1)))


def _check_reachable(address: str) -> None:
    """A TCP connect to ``[ray://]host:port`` with a short timeout, so a wrong address fails in seconds."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        raise ConfigError(f"--address {address}: no Ray cluster reachable ({err.strerror or err})") from err


def _tune_config(config: SweepConfig, space: SearchSpace, depth: int, max_concurrent: int) -> tune.TuneConfig:
    """OptunaSearch over ``suggest``; ASHA on val accuracy for one objective, FIFO for the Pareto front."""
    metric, mode = ([METRIC, "params"], ["max", "min"]) if config.pareto else (METRIC, "max")
    define_by_run = partial(_define_by_run, space, depth)  # picklable: Tune saves the searcher with the experiment
    search = OptunaSearch(define_by_run, metric=metric, mode=mode, sampler=make_sampler(config.sampler, config.seed))
    if config.pareto or config.pruner == "none":
        scheduler = FIFOScheduler()
    else:
        scheduler = ASHAScheduler(
            time_attr="training_iteration", metric=METRIC, mode="max", max_t=config.train.epochs, grace_period=1
        )
    return tune.TuneConfig(
        search_alg=search, scheduler=scheduler, num_samples=config.trials, max_concurrent_trials=max_concurrent
    )


def _define_by_run(space: SearchSpace, depth: int, trial: optuna.Trial) -> None:
    suggest(trial, space, depth)


def _trial(params: dict[str, Any], sweep: SweepConfig, space: SearchSpace, depth: int, threads: int) -> None:
    """One Tune trial: train the subnet of ``params``, reporting every epoch with the run folder as checkpoint."""
    torch.set_num_threads(threads)
    subnet = suggest(optuna.trial.FixedTrial(params), space, depth)
    run = Path.cwd() / "run"  # Ray runs each trial in its own local working directory, which it does not sync
    checkpoint = tune.get_checkpoint()
    shutil.rmtree(run, ignore_errors=True)  # a failed attempt's files on this node
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            shutil.copytree(saved, run)
    extra = {"params": params_of(sweep, space, subnet), "node": ray.get_runtime_context().get_node_id()}

    def report(metrics: Epoch) -> bool:
        keys = {key: getattr(metrics, key) for key in (METRIC, "val_loss", "epoch", "train_images", "eval_images")}
        tune.report({**keys, **extra}, checkpoint=tune.Checkpoint.from_directory(run))
        return False  # ASHA stops a trial through Tune itself

    record = run_trial(sweep, space, subnet, run, report, resume=checkpoint is not None)
    if record.status != "completed":
        raise RuntimeError(f"trial failed: {record.reason}")


def _check_finished(analysis: tune.ExperimentAnalysis, trials: int) -> None:
    """Refuse to score a sweep that Ctrl-C (which ``fit`` survives) left with unfinished trials."""
    done = [t for t in analysis.trials if t.status in (Trial.TERMINATED, Trial.ERROR)]
    if len(done) < trials:
        raise RunInterrupted(f"interrupted after {len(done)} of {trials} trials")


def _collect(
    config: SweepConfig, space: SearchSpace, depth: int, analysis: tune.ExperimentAnalysis, tally: SweepTally
) -> list[Candidate]:
    """Candidates (finished trials at their last report; stopped ones marked pruned); counts the
    trials, their nodes and the images every report of every trial processed into ``tally``."""
    candidates, nodes = [], set()
    for trial in analysis.trials:
        index = int(trial.experiment_tag.split("_", 1)[0]) - 1  # Tune tags trials "<count>_<params>"; retries move
        frame = analysis.trial_dataframes.get(trial.trial_id)
        if frame is not None and "node" in frame:
            nodes.update(frame["node"])
            tally.compute += Compute(int(frame["train_images"].sum()), int(frame["eval_images"].sum()))
        last = trial.last_result
        if trial.status != Trial.TERMINATED or METRIC not in last:
            tally.trials_failed += 1
            continue
        tally.trials_retried += trial.num_failures > 0
        epochs = int(last["epoch"])
        pruned = epochs < config.train.epochs
        if pruned:
            tally.trials_pruned += 1
        else:
            tally.trials_completed += 1
        subnet = suggest(optuna.trial.FixedTrial(trial.config), space, depth)
        genes = tuple(sorted(trial.config.items()))
        score = scored_by(config, epochs) if pruned else ""
        candidates.append(Candidate(subnet, genes, int(last["params"]), last[METRIC], index, last["val_loss"], score))
    tally.nodes = sorted(nodes)
    return candidates
