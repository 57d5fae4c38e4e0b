"""The optuna engine of `autopeft search`: trials in this process, the study in a shared storage.

The study lives in SQLite in the run directory by default, or in any SQLAlchemy URL
(PostgreSQL, MySQL) or an Optuna journal file (``*.log`` / ``*.journal``, for shared
filesystems). Several processes, on one machine or many, work on one study by pointing at the
same storage and study name; together they finish ``trials`` trials, each run once.

Trials run through ``ask``/``tell``: a trial whose number comes after ``trials`` live or finished
trials (two workers asking at the same moment) is given back unrun. ``--resume`` declares the
workers of the study stopped: their unfinished (RUNNING) trials are failed and run again under
a new number, continuing from their last epoch checkpoint, at most ``retries`` times each.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autopeft.errors import ConfigError, RunInterrupted, SearchFailed
from autopeft.fit import CHECKPOINT, saved_history
from autopeft.jobs.rundir import CONFIG
from autopeft.progress import StageProgress
from autopeft.records import Compute, Epoch, SearchRecord
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

RETRY_OF = "retry_of"  # user attr: the trial number a retried trial continues
SURPLUS = "surplus"  # user attr: asked after the study had all its trials; given back unrun
IMAGES = ("train_images", "eval_images")  # user attrs: images a trial processed, summed over its epochs
OVER_BUDGET = "over_budget"  # user attr: more trainable parameters than the budget; never trained
LIVE = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
ENDINGS = {TrialState.COMPLETE: "trials_completed", TrialState.PRUNED: "trials_pruned"}


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage for a SQLAlchemy URL, a journal storage for a ``.log``/``.journal`` path;
    an unreachable database is one clear error."""
    if url.endswith((".log", ".journal")) and "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as err:  # SQLAlchemy and driver errors have no common base worth naming
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--storage {_redact(url)}: cannot open ({reason})") from err


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}}
    return {}


def _redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    head, sep, tail = url.partition("://")
    if not sep or "@" not in tail:
        return url
    credentials, _, host = tail.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{head}://{user}:***@{host}" if ":" in credentials else url


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }[name]()


def optuna_sweep(
    config: SweepConfig, out: Path, where: Where, resume: bool = False, display: StageProgress | None = None
) -> SearchRecord:
    """Work on the study ``where.study`` in ``where.storage`` (default: SQLite in ``out``) until it has
    ``config.trials`` finished trials; write the run files."""
    storage, study_name, shared = where.storage, where.study, where.storage is not None
    start = time.perf_counter()
    prepared = prepare(config)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    # a shared study: workers may share one run directory too, and its storage is reached before --out is touched
    rundir = sweep_dir(out, resume or (shared and (out / CONFIG).is_file()), "optuna")

    def reach() -> optuna.storages.BaseStorage | None:
        return open_storage(url) if shared else None

    # its own study is this command's alone; workers sharing a study share --out, unlocked
    with rundir.writing(claimed_sweep(config), None, reach, lock=not shared) as backend:
        study, seed = _open_study(config, backend or open_storage(url), study_name, resume, url, shared)
        if resume:
            _retry_unfinished(study, config.retries)
            start -= earlier_sessions_s(study)  # the record's wall time sums every session, not this one alone
        say = display.say if display is not None else (lambda message: None)
        say(f"search: optuna {config.sampler} on {_redact(url)}, study {study_name!r}, {config.trials} trials")
        try:
            _work(config, prepared, study, seed, out, display)
        except KeyboardInterrupt as err:
            raise RunInterrupted("interrupted; finished trials are kept in the study") from err
        candidates = study_candidates(config, prepared, study)
        tally = _accounting(study, SweepTally("optuna", _redact(url), study_name))
        return finish_sweep(config, prepared.space, rundir, candidates, tally, start, display)


def _work(
    config: SweepConfig, prepared: Prepared, study: optuna.Study, seed: int, out: Path, display: StageProgress | None
) -> None:
    """Ask, train and tell trials until the study holds ``config.trials`` finished ones."""
    while _finished(study) < config.trials:
        _check_failures(study, config.trials)
        study.sampler = make_sampler(config.sampler, proposal_seed(seed, study))
        trial = study.ask()
        if _surplus(study, trial, config.trials):
            trial.set_user_attr(SURPLUS, True)
            study.tell(trial, state=TrialState.FAIL)
            break
        _run(config, prepared.space, prepared.depth, study, trial, out, display)


def _open_study(
    config: SweepConfig, backend: optuna.storages.BaseStorage, name: str, resume: bool, url: str, shared: bool
) -> tuple[optuna.Study, int]:
    """Create the study, or join it when it exists; with the seed its proposals derive from (``proposal_seed``).
    The first worker's is ``config.seed``, and a resumed one keeps it; a worker joining a running study draws
    its own, so that two workers never propose the same sequence. Resuming a run directory whose own study was
    never created (killed while starting) creates it; a shared storage without the study is refused."""
    exists = name in {s.study_name for s in optuna.get_all_study_summaries(backend, include_best_trial=False)}
    if resume and shared and not exists:
        raise ConfigError(f"--resume: {_redact(url)} holds no study {name!r}; nothing was changed")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if config.pareto else ["maximize"]
    seed = config.seed if not exists or resume else random.SystemRandom().randrange(2**31)
    study = optuna.create_study(
        storage=backend,
        study_name=name,
        directions=directions,
        sampler=make_sampler(config.sampler, seed),
        pruner=make_pruner(config.pruner),
        load_if_exists=True,
    )
    if len(study.directions) != len(directions):
        raise ConfigError(f"study {name!r} exists with other objectives; pareto must match the study's")
    return study, seed


def proposal_seed(seed: int, study: optuna.Study) -> int:
    """The sampler's seed for the study's next proposal: a function of ``seed`` and how many proposals the study
    already holds (its trials, less the retries of killed ones, which repeat a proposal), so that a resumed sweep
    proposes what the uninterrupted one would have, where a sampler seeded once restarts its stream on resume."""
    proposals = sum(1 for t in study.get_trials(deepcopy=False) if _proposed(t) and RETRY_OF not in t.user_attrs)
    return (seed * 1_000_003 + proposals) % 2**32


def _proposed(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` got its whole subnet (a trial killed while it was being suggested did not)."""
    return "params" in trial.user_attrs or OVER_BUDGET in trial.user_attrs


def _counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial takes one of the sweep's ``trials`` slots."""
    return trial.state in LIVE and not trial.user_attrs.get(OVER_BUDGET)


def _finished(study: optuna.Study) -> int:
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if _counted(t))


def _check_failures(study: optuna.Study, trials: int) -> None:
    """Stop a sweep whose trials keep failing (a diverging learning rate, a broken dataset)."""
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if "reason" in t.user_attrs]
    if len(failed) > trials:
        raise SearchFailed(f"search: {len(failed)} trials failed, the last with: {failed[-1].user_attrs['reason']}")


def _surplus(study: optuna.Study, trial: optuna.Trial, trials: int) -> bool:
    """Whether ``trials`` earlier trials are already running or finished (another worker took the last slot)."""
    earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and _counted(t)]
    return len(earlier) >= trials


def _retry_unfinished(study: optuna.Study, retries: int) -> None:
    """Fail every RUNNING trial (its worker is gone) and enqueue its parameters again, to
    continue from its checkpoint, unless it already was retried ``retries`` times. A trial killed before its
    subnet was whole is not retried: the next proposal makes it again (``proposal_seed`` does not count it).
    A retry killed as early is retried with its original's parameters, from the folder it had not yet taken."""
    trials = study.get_trials(deepcopy=False)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        attempts = int(trial.user_attrs.get("attempt", 0))
        if attempts >= retries or not (_proposed(trial) or RETRY_OF in trial.user_attrs):
            continue
        source = trial
        while not _proposed(source):  # a retry killed early: its original holds the parameters and the folder
            source = trials[source.user_attrs[RETRY_OF]]
        folder = trial.number if _proposed(trial) else trial.user_attrs[RETRY_OF]
        study.enqueue_trial(source.params, user_attrs={RETRY_OF: folder, "attempt": attempts + 1})


def _run(
    config: SweepConfig, space: SearchSpace, depth: int, study: optuna.Study, trial: optuna.Trial, out: Path, display
) -> None:
    """Train one trial, reporting val accuracy per epoch to the pruner; tell the study how it ended."""
    subnet = suggest(trial, space, depth)
    params = params_of(config, space, subnet)
    if config.budget is not None and params > config.budget:
        trial.set_user_attr(OVER_BUDGET, True)
        trial.set_constraint("params_over_budget", float(params - config.budget))
        study.tell(trial, state=TrialState.PRUNED)
        return
    trial.set_user_attr("params", params)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    folder = out / "trials" / f"{trial.number:04d}"
    resume = _take_over(out, trial, folder)

    def report(metrics: Epoch) -> bool:
        """Report the epoch to the study; True when its pruner stops the trial."""
        trial.report(getattr(metrics, METRIC), metrics.epoch)
        trial.set_user_attr("val_loss", metrics.val_loss)
        for key in IMAGES:  # what the trial processed so far (pruned and killed trials count too)
            trial.set_user_attr(key, trial.user_attrs.get(key, 0) + getattr(metrics, key))
        return not config.pareto and trial.should_prune()

    if resume:  # the epochs trained before the kill, reported to the retry too (their images stay counted)
        for line in saved_history(folder):
            trial.report(getattr(line, METRIC), line.epoch)
            trial.set_user_attr("val_loss", line.val_loss)
    bar = display.run(f"trial {trial.number}") if display is not None else None
    run = run_trial(config, space, subnet, folder, report, resume, bar)
    if run.status == "stopped":
        study.tell(trial, state=TrialState.PRUNED)
        return
    if run.status != "completed":
        trial.set_user_attr("reason", run.reason)
        study.tell(trial, state=TrialState.FAIL)
        return
    study.tell(trial, [run.val_acc, float(params)] if config.pareto else run.val_acc)


def _take_over(out: Path, trial: optuna.Trial, folder: Path) -> bool:
    """Move a retried trial's run directory to its new number; True when it has a checkpoint to resume."""
    retry_of = trial.user_attrs.get(RETRY_OF)
    if retry_of is None:
        return False
    old = out / "trials" / f"{retry_of:04d}"
    if not (old / CHECKPOINT).is_file():
        shutil.rmtree(old, ignore_errors=True)
        return False
    shutil.move(old, folder)
    return True


def study_candidates(config: SweepConfig, prepared: Prepared, study: optuna.Study) -> list[Candidate]:
    """Every scored trial of the study: completed ones, and pruned ones at their last val score."""
    candidates = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if not _counted(trial) or not trial.intermediate_values:
            continue
        epochs = max(trial.intermediate_values)
        pruned = trial.state == TrialState.PRUNED
        subnet = suggest(optuna.trial.FixedTrial(trial.params), prepared.space, prepared.depth)
        candidates.append(
            Candidate(
                subnet,
                tuple(sorted(trial.params.items())),
                int(trial.user_attrs["params"]),
                trial.intermediate_values[epochs],
                trial.number,
                float(trial.user_attrs.get("val_loss", float("nan"))),
                scored_by(config, epochs) if pruned else "",
            )
        )
    return candidates


def earlier_sessions_s(study: optuna.Study) -> float:
    """The seconds earlier sessions spent on ``study``'s finished trials: the length of the union of their
    start-to-finish intervals (trials that ran side by side count once; a killed session's unfinished trial and
    the time between trials are not counted)."""
    spans = sorted(
        (t.datetime_start.timestamp(), t.datetime_complete.timestamp())
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and t.datetime_start and t.datetime_complete
    )
    covered, reach = 0.0, -math.inf
    for begin, end in spans:
        covered += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    return covered


def _accounting(study: optuna.Study, tally: SweepTally) -> SweepTally:
    """How many trials ended in each way (surplus and over-budget asks are not trials of the sweep), and
    the images every trial processed."""
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(SURPLUS) or t.user_attrs.get(OVER_BUDGET):
            continue
        key = ENDINGS.get(t.state, "trials_failed")
        setattr(tally, key, getattr(tally, key) + 1)
        tally.trials_retried += RETRY_OF in t.user_attrs
        tally.compute += Compute(*(int(t.user_attrs.get(key, 0)) for key in IMAGES))
    return tally
