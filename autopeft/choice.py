"""Choosing above the noise: the leader, the candidates its evidence cannot tell from it, and the winner.

``choose`` is pure (no I/O, no torch) over ``name -> Evidence``. It ranks by accuracy, ties by lower mean loss
(then by the order given), and puts an interval on each candidate's accuracy minus the leader's, in points:
a percentile bootstrap over the examples both were scored on when they share ids (two stages, folds or seeds
first, when several ran), Newcombe's hybrid-score interval of the two proportions otherwise. A candidate whose
interval reaches 0 is tied with the leader; the winner is the leader, or the smallest tied candidate.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from autopeft.errors import ConfigError
from autopeft.records import Evidence, Outcomes
from autopeft.stats import bootstrap_means, holm, newcombe, newcombe_p, percentile_interval, seed_means

RESAMPLES = 2000
Prefer = Literal["best", "fewest_params"]
Adjust = Literal["none", "holm"]


@dataclass(frozen=True)
class Interval:
    """A candidate's accuracy minus the leader's (points): the observed difference, its two-sided interval at
    ``level``, the p-value of no difference, the test that made it and whether it leaves the two tied."""

    difference: float
    low: float
    high: float
    p: float
    level: float
    test: str
    tied: bool


@dataclass(frozen=True)
class Choice:
    """The answer of ``choose``: ``leader`` (best measured), ``winner`` (what to use), the ``tied`` set (leader
    first, then the rest from best to worst), each other candidate's ``intervals`` to the leader, the ``rule``
    applied and the ``excluded`` candidates with why."""

    leader: str | None
    winner: str | None
    tied: tuple[str, ...]
    intervals: dict[str, Interval]
    rule: str
    excluded: dict[str, str]

    @property
    def clear(self) -> bool:
        """Whether the evidence tells the leader from every other candidate."""
        return len(self.tied) <= 1

    def summary(self) -> str:
        """One line: the winner and the tied set (or that the choice is clear)."""
        if self.leader is None:
            return "no candidate to choose from" + (f" ({len(self.excluded)} excluded)" if self.excluded else "")
        picked = (
            self.winner if self.winner == self.leader else f"{self.winner} (the smallest tied; leader {self.leader})"
        )
        if self.clear:
            return f"{picked}: the choice is clear"
        return f"{picked}: tied with the leader: {', '.join(self.tied[1:])}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Choice:
        """The inverse of ``to_dict``."""
        intervals = {name: Interval(**interval) for name, interval in data["intervals"].items()}
        return cls(data["leader"], data["winner"], tuple(data["tied"]), intervals, data["rule"], dict(data["excluded"]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "winner": self.winner,
            "tied": list(self.tied),
            "intervals": {name: asdict(interval) for name, interval in self.intervals.items()},
            "rule": self.rule,
            "excluded": dict(self.excluded),
        }


def choose(
    evidence: Mapping[str, Evidence | None],
    alpha: float = 0.05,
    prefer: Prefer = "best",
    adjust: Adjust = "none",
    seed: int = 0,
) -> Choice:
    """The choice among ``evidence`` (name -> Evidence; None, failed or NaN candidates are excluded, named)."""
    _check(alpha, prefer, adjust)
    excluded = {name: _why_excluded(e) for name, e in evidence.items() if e is None or e.failed}
    ranked = sorted(
        (name for name in evidence if name not in excluded),
        key=lambda name: _rank_key(evidence[name], list(evidence).index(name)),
    )
    if not ranked:
        return Choice(None, None, (), {}, "no candidate finished", excluded)
    leader, others = ranked[0], ranked[1:]
    tests = {name: _difference(evidence[name], evidence[leader], seed) for name in others}
    levels = holm([t.p for t in tests.values()], alpha) if adjust == "holm" else [alpha] * len(others)
    intervals = {name: test.at(level) for (name, test), level in zip(tests.items(), levels, strict=True)}
    tied = (leader, *(name for name in others if intervals[name].tied))
    winner = leader if prefer == "best" else _smallest(tied, evidence)
    return Choice(leader, winner, tied, intervals, _rule(evidence, ranked, intervals, alpha, adjust), excluded)


def _check(alpha: float, prefer: str, adjust: str) -> None:
    if not 0 < alpha < 1:
        raise ConfigError(f"selection.alpha: got {alpha}; allowed: a level between 0 and 1 (e.g. 0.05)")
    if prefer not in ("best", "fewest_params"):
        raise ConfigError(f"selection.prefer: got {prefer!r}; allowed: best, fewest_params")
    if adjust not in ("none", "holm"):
        raise ConfigError(f"selection.adjust: got {adjust!r}; allowed: none, holm")


def _why_excluded(evidence: Evidence | None) -> str:
    if evidence is None:
        return "failed: no evidence"
    return "no examples scored" if evidence.n == 0 else f"accuracy is {evidence.accuracy}"


def _rank_key(evidence: Evidence, order: int) -> tuple[float, float, int]:
    loss = evidence.loss if evidence.loss is not None and math.isfinite(evidence.loss) else math.inf
    return -evidence.accuracy, loss, order


def _smallest(tied: tuple[str, ...], evidence: Mapping[str, Evidence | None]) -> str:
    unknown = [name for name in tied if evidence[name].params is None]
    if unknown:
        raise ConfigError(f"prefer fewest_params: no parameter count for {', '.join(unknown)} (give params)")
    return min(tied, key=lambda name: (evidence[name].params, tied.index(name)))  # tied runs best first


@dataclass(frozen=True)
class _Test:
    """A comparison before its level is known: bootstrap replicates, or the counts Newcombe's interval needs."""

    difference: float
    p: float
    test: str
    replicates: np.ndarray | None = None
    counts: tuple[float, float, float, float] | None = None

    def at(self, level: float) -> Interval:
        if self.replicates is not None:
            low, high, _ = percentile_interval(self.replicates, level)
        else:
            low, high = (100 * bound for bound in newcombe(*self.counts, level))
        return Interval(self.difference, low, high, self.p, level, self.test, high >= -1e-9)


def _difference(candidate: Evidence, leader: Evidence, seed: int) -> _Test:
    difference = candidate.accuracy - leader.accuracy
    pair = _aligned(candidate.outcomes, leader.outcomes)
    if pair is None:
        counts = (candidate.accuracy / 100, candidate.n, leader.accuracy / 100, leader.n)
        return _Test(difference, newcombe_p(*counts), "Newcombe hybrid score (unpaired)", counts=counts)
    (ours, theirs), groups = pair
    rng = np.random.default_rng(seed)
    several_seeds = max(ours.shape[0], theirs.shape[0]) > 1
    if several_seeds:
        values = 100 * (seed_means(ours, RESAMPLES, rng) - seed_means(theirs, RESAMPLES, rng))
    else:
        values = 100 * (ours[0].astype(np.float64) - theirs[0])
    replicates = bootstrap_means(values, groups, RESAMPLES, rng)
    stages = [name for name, on in (("seeds", several_seeds), ("folds", groups is not None)) if on]
    test = f"paired bootstrap over {ours.shape[1]} shared examples" + (
        f", {' then '.join(stages)} then examples" if stages else ""
    )
    return _Test(difference, percentile_interval(replicates, 0.05)[2], test, replicates)


def _aligned(ours: Outcomes | None, theirs: Outcomes | None):
    """Both candidates' ``correct`` in the order of their shared ids, and the folds they agree on (None if one
    fold); None when they are not paired (no ids, other id sets, or other data)."""
    if ours is None or theirs is None or ours.ids is None or theirs.ids is None:
        return None
    if ours.fingerprint != theirs.fingerprint or ours.n != theirs.n:
        return None
    a, b = np.argsort(ours.ids), np.argsort(theirs.ids)
    if not np.array_equal(ours.ids[a], theirs.ids[b]):
        return None
    folds = None
    if ours.fold is not None and theirs.fold is not None and np.array_equal(ours.fold[a], theirs.fold[b]):
        folds = ours.fold[a] if len(np.unique(ours.fold)) > 1 else None
    return (ours.correct[:, a], theirs.correct[:, b]), folds


def _rule(
    evidence: Mapping[str, Evidence | None],
    ranked: list[str],
    intervals: dict[str, Interval],
    alpha: float,
    adjust: str,
) -> str:
    tests = sorted({interval.test for interval in intervals.values()})
    level = f"two-sided {100 * (1 - alpha):g}% intervals" + (", Holm-adjusted" if adjust == "holm" else "")
    parts = [f"accuracy, ties by lower mean loss; {level} of (candidate - leader), tied when they reach 0"]
    parts += tests
    runs = [evidence[name].outcomes.correct.shape[0] if evidence[name].outcomes else 1 for name in ranked]
    if max(runs) == 1:
        parts.append("seed variance not included (one run per candidate)")
    return "; ".join(parts)


def choice_table(choice: Choice, evidence: Mapping[str, Evidence | None]) -> list[str]:
    """The choice as markdown: each candidate's accuracy, interval to the leader and place, then the answer."""
    lines = [
        "| candidate | accuracy | n | params | minus leader (interval) | |",
        "|---|---|---|---|---|---|",
    ]
    for name in choice.tied + tuple(n for n in choice.intervals if n not in choice.tied):
        e, interval = evidence[name], choice.intervals.get(name)
        versus = (
            "leader" if interval is None else f"{interval.difference:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}]"
        )
        place = ("winner" if name == choice.winner else "") + (", tied" if name in choice.tied[1:] else "")
        params = "-" if e.params is None else f"{e.params:,}"
        lines.append(f"| {name} | {e.accuracy:.2f}% | {e.n} | {params} | {versus} | {place.strip(', ')} |")
    for name, why in choice.excluded.items():
        e = evidence.get(name)
        seen = (
            "| - | - | - |"
            if e is None
            else f"| {e.accuracy:.2f}% | {e.n} | {'-' if e.params is None else f'{e.params:,}'} |"
        )
        lines.append(f"| {name} {seen} excluded: {why} | |")
    return [*lines, "", f"Choice: {choice.summary()}.", f"Rule: {choice.rule}."]


def versus(name: str, ours: Evidence, other: str, theirs: Evidence, alpha: float = 0.05, seed: int = 0) -> str:
    """One line: whether ``name`` is tied with ``other``, ahead or behind, with the interval of the difference."""
    choice = choose({name: ours, other: theirs}, alpha, seed=seed)
    if choice.leader is None or len(choice.intervals) != 1:
        return f"{name} versus {other}: not comparable ({', '.join(choice.excluded.values()) or 'no evidence'})"
    trailing, interval = next(iter(choice.intervals.items()))
    verdict = "tied" if interval.tied else f"{choice.leader} ahead"
    return (
        f"{name} versus {other} on the same {ours.n} val images: {verdict} ({trailing} minus {choice.leader} "
        f"{interval.difference:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}] points, {interval.test})"
    )


TABLE_COLUMNS = ("name", "correct", "n")


def read_table(path: Path) -> dict[str, Evidence]:
    """Candidates from a CSV with columns name, correct, n and optionally params, loss (one row each)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"{path}: cannot read the table ({error})") from error
    missing = [c for c in TABLE_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise ConfigError(
            f"{path}: missing column(s) {', '.join(missing)}; required: name, correct, n (optional params, loss)"
        )
    table: dict[str, Evidence] = {}
    for line, row in enumerate(rows, start=2):
        name = row["name"].strip()
        if not name or name in table:
            raise ConfigError(f"{path}: line {line}: name {name!r} is empty or repeats; each candidate once")
        try:
            correct, n = int(row["correct"]), int(row["n"])
            params = int(row["params"]) if (row.get("params") or "").strip() else None
            loss = float(row["loss"]) if (row.get("loss") or "").strip() else None
            table[name] = Evidence.from_counts(correct, n, params, loss)
        except ValueError as error:
            raise ConfigError(
                f"{path}: line {line}: {error}; correct and n are counts with 0 <= correct <= n"
            ) from error
    return table
