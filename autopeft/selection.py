"""How candidates are scored before the choice: the ``selection:`` block and the fold-by-fold (raced) scoring.

``holdout`` scores every candidate once on the val split; ``kfold`` trains it once per fold of train + val
(``autopeft.data.folds``) and pools its out-of-fold outcomes; ``seeds`` repeats each run with other seeds;
``race`` drops a candidate after a fold once the out-of-fold examples seen so far tell it from the leader at
``alpha / folds`` (Bonferroni over the looks). ``score_candidates`` is pure over a callback that trains or reads runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autopeft.choice import Choice, choose
from autopeft.config import option
from autopeft.data import canonical, fold_data
from autopeft.errors import ConfigError
from autopeft.records import OUTCOMES, Compute, Evidence, Outcomes, RaceRound, RunRecord, SelectionSummary, stack_seeds

if TYPE_CHECKING:
    from autopeft.runconfig import RunConfig


@dataclass
class SelectionConfig:
    """``selection:``: how candidates are scored (``mode``, ``folds``, ``fold_seed``, ``seeds``), raced
    (``race``) and chosen (``alpha``, ``prefer``); ``shortlist``: a sweep's best trials re-scored under kfold."""

    mode: Literal["holdout", "kfold"] = option(
        "holdout",
        help="holdout: each candidate trained on train and scored once on the val split; kfold: trained once per "
        "fold of train+val and scored on its out-of-fold examples, pooled (folds times the compute).",
    )
    folds: int = option(
        5,
        help="kfold only: the number of folds K (an integer >= 2), stratified by label; when val is exactly one "
        "fold of train+val, fold 0 is the val split itself (the holdout run).",
    )
    fold_seed: int = option(0, help="kfold only: the seed of the examples' assignment to folds (an integer >= 0).")
    seeds: int = option(
        1,
        help="Runs per candidate (and fold), with the run's seed plus 0, 1, ...; their outcomes are pooled "
        "(an integer >= 1; each seed adds the cost of one more run).",
    )
    alpha: float = option(
        0.05,
        help="The level (0 < alpha < 1) of the (1 - alpha) interval on each candidate's val accuracy minus the "
        "leader's: a candidate whose interval reaches 0 is tied with the leader; race tests at alpha / folds.",
    )
    prefer: Literal["best", "fewest_params"] = option(
        "best",
        help="The winner: best, the leader (highest val accuracy, lower loss breaking ties); fewest_params, the "
        "candidate tied with the leader that has the fewest trainable parameters.",
    )
    race: bool = option(
        False,
        help="kfold only: true drops a candidate after a fold once the out-of-fold examples seen so far tell it "
        "from the leader at alpha / folds, saving its remaining folds.",
    )
    shortlist: int = option(
        4,
        help="autopeft search (a sweep) only: the best trials by val compared at the choice, re-scored as mode and "
        "seeds say under kfold or seeds > 1 (an integer >= 1).",
    )

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ConfigError(f"selection.folds: got {self.folds}; allowed: an integer >= 2")
        if self.fold_seed < 0:
            raise ConfigError(f"selection.fold_seed: got {self.fold_seed}; allowed: an integer >= 0")
        if self.seeds < 1 or self.shortlist < 1:
            raise ConfigError(
                f"selection.seeds / selection.shortlist: got {self.seeds} / {self.shortlist}; allowed: integers >= 1"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError(f"selection.alpha: got {self.alpha}; allowed: a level between 0 and 1 (e.g. 0.05)")
        if self.race and self.mode != "kfold":
            raise ConfigError(
                "selection.race: got true with mode holdout; allowed: race with mode kfold (it races folds)"
            )

    @property
    def rounds(self) -> int:
        """Folds scored one after another (1 on the holdout split)."""
        return self.folds if self.mode == "kfold" else 1

    def describe(self) -> str:
        """What the selection stage does and what it costs, for the plan and the first progress line."""
        how = "the holdout val split" if self.mode == "holdout" else f"{self.folds} folds of train+val"
        seeds = f", {self.seeds} seeds each" if self.seeds > 1 else ""
        race = f", raced (a candidate drops once a fold's test at alpha {self.alpha:g}/{self.folds} excludes it)"
        cost = self.rounds * self.seeds
        times = f": {cost}x the selection stage's compute" + (" at most" if self.race else "") if cost > 1 else ""
        return f"selection: scored on {how}{seeds}{race if self.race else ''}{times}"


# candidate, fold -> its val outcomes per seed (None when a run failed) and what training them cost
ScoreFold = Callable[[str, int], tuple[list[Outcomes] | None, Compute]]


@dataclass(frozen=True)
class Selected:
    """The selection's outcome: the choice, each candidate's evidence (over the folds it ran), the rounds."""

    choice: Choice
    evidence: dict[str, Evidence | None]
    rounds: list[RaceRound]


def score_candidates(
    candidates: Sequence[str], run: ScoreFold, config: SelectionConfig, params: Mapping[str, int], seed: int = 0
) -> Selected:
    """Score ``candidates`` fold by fold with ``run`` (racing when ``config.race``) and choose among those left."""
    alive, folds, rounds = list(candidates), {name: [] for name in candidates}, []
    failed: set[str] = set()
    for fold in range(config.rounds):
        compute = Compute()
        for name in alive:
            outcomes, cost = run(name, fold)
            compute = Compute.total([compute, cost])
            if outcomes is None:
                failed.add(name)
            else:
                folds[name].append(stack_seeds(outcomes))
        dropped = {name: "failed" for name in alive if name in failed}
        alive = [name for name in alive if name not in failed]
        last = fold == config.rounds - 1
        if config.race and not last and len(alive) > 1:
            look = choose(_evidence(alive, folds, params), config.alpha / config.rounds, seed=seed)
            for name in alive:
                if name not in look.tied:
                    interval = look.intervals[name]
                    dropped[name] = (
                        f"{interval.difference:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}] to {look.leader}"
                    )
            alive = [name for name in alive if name not in dropped]
        rounds.append(RaceRound(fold, len(alive) + len(dropped), dropped, compute))
        if config.race and len(alive) <= 1:
            break
    evidence = _evidence(candidates, folds, params)
    final = {name: (evidence[name] if name in alive else None) for name in candidates}
    choice = choose(final, config.alpha, config.prefer, seed=seed)
    excluded = {name: _why(name, failed, rounds) for name in candidates if name not in alive}
    return Selected(replace(choice, excluded=excluded), evidence, rounds)


def select_runs(
    candidates: Mapping[str, RunConfig],
    config: SelectionConfig,
    params: Mapping[str, int],
    root: Path,
    train: Callable[[RunConfig, Path], RunRecord],
    sizes: tuple[int, int],
) -> tuple[Selected, dict[str, list[RunRecord]]]:
    """Score run configs (scored on val, not final) as ``config`` says: each run trains (or is read back) by
    ``train`` into ``root/<name>[-fold<k>][-seed<s>]``; the holdout run (a canonical fold 0 too) is ``root/<name>``.
    ``sizes``: the task's train and val sizes (whether val is one fold)."""
    is_canonical = canonical(*sizes, config.folds)
    runs: dict[str, list[RunRecord]] = {name: [] for name in candidates}

    def run(name: str, fold: int) -> tuple[list[Outcomes] | None, Compute]:
        base = candidates[name]
        data = base.data
        if config.mode == "kfold":
            data = fold_data(base.data, fold, config.folds, config.fold_seed, is_canonical)
        where = [root / _run_dir(name, fold, s, data is base.data) for s in range(config.seeds)]
        records = [train(replace(base, data=data, seed=base.seed + s), d) for s, d in enumerate(where)]
        runs[name] += records
        outcomes = [_val_outcomes(d, r) for d, r in zip(where, records, strict=True)]
        return (None if None in outcomes else outcomes), Compute.total(r.compute for r in records)

    seed = next(iter(candidates.values())).seed if candidates else 0
    return score_candidates(list(candidates), run, config, params, seed), runs


def summarize(config: SelectionConfig, selected: Selected, runs: Mapping[str, list[RunRecord]]) -> SelectionSummary:
    """The record of a selection: its settings, the choice, each candidate's evidence, the rounds, the cost."""
    return SelectionSummary(
        config.mode,
        config.rounds,
        config.seeds,
        config.alpha,
        config.prefer,
        config.race,
        selected.choice.to_dict(),
        {name: None if e is None else e.to_json() for name, e in selected.evidence.items()},
        selected.rounds,
        Compute.total(r.compute for records in runs.values() for r in records),
    )


def select_on_counts(
    config: SelectionConfig, scores: Mapping[str, tuple[float, float | None, int]], n: int
) -> SelectionSummary:
    """The choice among candidates each scored in its own holdout run: ``name -> (val accuracy %, val loss,
    params)`` on ``n`` val images, compared unpaired (no runs made, no compute)."""
    evidence = {
        name: Evidence.from_counts(round(accuracy * n / 100), n, params, loss)
        for name, (accuracy, loss, params) in scores.items()
    }
    selected = Selected(choose(evidence, config.alpha, config.prefer), evidence, [])
    return summarize(config, selected, {})


def _run_dir(name: str, fold: int, seed: int, holdout: bool) -> str:
    """``01`` for the holdout run (a canonical fold 0 too), ``01-fold2``, ``01-fold2-seed1``, ..."""
    return name + ("" if holdout else f"-fold{fold}") + (f"-seed{seed}" if seed else "")


def _val_outcomes(where: Path, record: RunRecord) -> Outcomes | None:
    """A selection run's val outcomes; None when it did not complete (its candidate is excluded)."""
    if record.status != "completed":
        return None
    if not (where / OUTCOMES).is_file():
        raise ConfigError(f"{where}: no {OUTCOMES} (trained by an older autopeft); remove the folder to retrain it")
    return Outcomes.read(where / OUTCOMES)


def without_default_selection(claimed: dict[str, Any]) -> dict[str, Any]:
    """A config as its run directory claims it: ``selection`` only away from its default (the holdout), so a
    run directory claimed before selection modes existed resumes as it was."""
    if claimed.get("selection") == asdict(SelectionConfig()):
        return {k: v for k, v in claimed.items() if k != "selection"}
    return claimed


def _evidence(names: Sequence[str], folds: Mapping[str, list[Outcomes]], params: Mapping[str, int]):
    return {name: Evidence.pooled(folds[name], params.get(name)) if folds[name] else None for name in names}


def _why(name: str, failed: set[str], rounds: list[RaceRound]) -> str:
    if name in failed:
        return "failed"
    fold = next(r.fold for r in rounds if name in r.dropped)
    return f"dropped by the race after fold {fold}: {rounds[fold].dropped[name]}"
