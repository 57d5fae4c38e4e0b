"""The intervals and verdicts every comparison uses: the mean of per-seed (or per-task) values, or of paired
differences, with its two-sided 95% Student t-interval; and the intervals of a difference in accuracy between two
candidates (paired bootstrap over shared examples, one or two stages, or Newcombe's interval for independent counts)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def t_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean of ``values`` and the half-width of its two-sided 95% t-interval (None below two values)."""
    from scipy.stats import t

    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


@dataclass(frozen=True)
class PairedSeeds:
    """``a - b`` per seed both finished: the differences, their mean and the half-width of its 95% t-interval
    (None below two differences), and the seeds either side left out (not run, or failed)."""

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mean: float | None
    half: float | None
    left_out: tuple[int, ...]


def paired_seeds(a: Mapping[int, float | None], b: Mapping[int, float | None]) -> PairedSeeds:
    """The one rule for a paired difference over seeds: pair the seeds where both ``a`` and ``b`` have a value."""
    both = tuple(s for s in a if s in b and a[s] is not None and b[s] is not None)
    left_out = tuple(sorted((set(a) | set(b)) - set(both)))
    diffs = tuple(a[s] - b[s] for s in both)
    mean, half = t_interval(diffs) if diffs else (None, None)
    return PairedSeeds(both, diffs, mean, half, left_out)


def verdict(mean: float, half: float, decisive: float = 1.0) -> str:
    """What a difference's interval says: win / loss when it excludes 0; tie when it covers 0 and its half-width
    is at most ``decisive`` points; undecided when it covers 0 but is too wide to say anything."""
    if mean - half > 0:
        return "win"
    if mean + half < 0:
        return "loss"
    return "tie" if half <= decisive else "undecided"


# Comparing two candidates on accuracy (points), for ``autopeft.choice.choose`` -------------------------------------


def wilson(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``p`` observed on ``n`` examples."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def newcombe(p1: float, n1: float, p2: float, n2: float, alpha: float) -> tuple[float, float]:
    """Newcombe's hybrid-score interval of ``p1 - p2`` for independent proportions (his method 10)."""
    return _newcombe(p1, n1, p2, n2, NormalDist().inv_cdf(1 - alpha / 2))


def newcombe_p(p1: float, n1: float, p2: float, n2: float) -> float:
    """The two-sided p-value of ``p1 == p2`` that Newcombe's interval inverts: the largest alpha at which the
    interval still covers 0 (bisection on the interval's z; 1 when the proportions are equal)."""
    if p1 == p2:
        return 1.0
    low, high = 0.0, 40.0  # z: the interval covers 0 at ``high`` and not at ``low``
    for _ in range(60):
        mid = (low + high) / 2
        lo, hi = _newcombe(p1, n1, p2, n2, mid)
        low, high = (low, mid) if lo <= 0 <= hi else (mid, high)
    return 2 * (1 - NormalDist().cdf(high))


def _newcombe(p1: float, n1: float, p2: float, n2: float, z: float) -> tuple[float, float]:
    (l1, u1), (l2, u2) = wilson(p1, n1, z), wilson(p2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def bootstrap_means(
    values: np.ndarray, groups: np.ndarray | None, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Percentile-bootstrap replicates of the mean of ``values`` (one per example, or ``(resamples, n)`` already
    resampled at an upper stage). With ``groups`` (a fold per example, more than one fold) two stages: folds with
    replacement, then examples inside each drawn fold; otherwise examples with replacement."""
    if values.ndim == 1 and (groups is None or len(np.unique(groups)) < 2):
        unique, counts = np.unique(values, return_counts=True)  # a multinomial over distinct values: the same draws
        draws = rng.multinomial(len(values), counts / counts.sum(), size=resamples)
        return draws @ unique / len(values)
    rows = np.broadcast_to(values, (resamples, values.shape[-1]))
    if groups is None or len(np.unique(groups)) < 2:
        picks = rng.integers(0, rows.shape[1], size=rows.shape)
        return np.take_along_axis(rows, picks, axis=1).mean(axis=1)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    chosen = rng.integers(0, len(members), size=(resamples, len(members)))
    sums, sizes = np.zeros(resamples), np.zeros(resamples)
    for slot in range(len(members)):
        for f, member in enumerate(members):
            which = np.flatnonzero(chosen[:, slot] == f)
            if which.size:
                picks = member[rng.integers(0, member.size, size=(which.size, member.size))]
                sums[which] += np.take_along_axis(rows[which], picks, axis=1).sum(axis=1)
                sizes[which] += member.size
    return sums / sizes


def seed_means(per_seed: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(resamples, n)``: per-example means over seeds drawn with replacement (the seed stage of a bootstrap)."""
    seeds = per_seed.shape[0]
    counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples)
    return counts @ per_seed / seeds


def percentile_interval(replicates: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """The two-sided (1 - alpha) percentile interval of ``replicates`` and the two-sided bootstrap p-value of 0."""
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(float(np.mean(replicates >= 0)), float(np.mean(replicates <= 0))))
    return float(low), float(high), p


def holm(p_values: Sequence[float], alpha: float) -> list[float]:
    """Per comparison, the level Holm's step-down procedure tests it at (``alpha / (m - rank)``, ranks by
    ascending p; after the first comparison that is kept, the rest are kept at that same level)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    levels = [alpha] * len(p_values)
    m, stopped = len(p_values), None
    for rank, i in enumerate(order):
        level = alpha / (m - rank) if stopped is None else stopped
        levels[i] = level
        if stopped is None and p_values[i] > level:
            stopped = level
    return levels
