"""Candidate search with Optuna samplers over the space's define-by-run function.

Single objective: val loss down (with inherited weights). Multi-objective (``pareto``): val loss
down and trainable parameters down, for NSGA-II, TPE or GP. A hard ``budget`` marks larger subnets infeasible
(``Trial.set_constraint``), so samplers learn to avoid them instead of seeing a fake score.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from autopeft.errors import ConfigError
from autopeft.search.candidates import Candidate, Scorer
from autopeft.supernet import SubnetConfig, Supernet

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "gp": optuna.samplers.GPSampler,
    "random": optuna.samplers.RandomSampler,
}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The named Optuna sampler, seeded."""
    if name in SAMPLERS:
        return SAMPLERS[name](seed=seed)
    raise ConfigError(f"search.sampler: got {name!r}; allowed: {', '.join(SAMPLERS)}")


def optuna_search(
    supernet: Supernet,
    score: Scorer,
    sampler: str = "tpe",
    trials: int = 100,
    pareto: bool = True,
    budget: int | None = None,
    seed: int = 0,
    on_candidate: Callable[[Candidate], None] | None = None,
) -> list[Candidate]:
    """Run ``trials`` Optuna trials in process; every distinct feasible subnet is scored once."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["minimize", "minimize"] if pareto else ["minimize"]
    study = optuna.create_study(directions=directions, sampler=make_sampler(sampler, seed))
    losses: dict[SubnetConfig, float] = {}
    candidates: list[Candidate] = []

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        subnet = supernet.suggest(trial)
        params = supernet.count(subnet)
        over = 0.0 if budget is None else float(params - budget)
        trial.set_constraint("params_over_budget", over)
        if over > 0:
            raise optuna.TrialPruned(f"{params:,} trainable parameters, over the budget of {budget:,}")
        if subnet not in losses:
            accuracy, losses[subnet] = score(subnet)
            candidates.append(
                Candidate(subnet, tuple(sorted(trial.params.items())), params, accuracy, trial.number, losses[subnet])
            )
            if on_candidate is not None:
                on_candidate(candidates[-1])
        return (losses[subnet], float(params)) if pareto else losses[subnet]

    study.optimize(objective, n_trials=trials)
    return candidates
