"""How well a predictor ranks subnets: Kendall tau and Spearman with bootstrap intervals, the regret
of its top pick, and panels of subnets drawn at random inside a parameter range."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autopeft.errors import BudgetError, ConfigError
from autopeft.supernet import SubnetConfig, Supernet

ENUMERATE_UP_TO = 20_000  # spaces this small are enumerated to know exactly how many subnets a range holds


def kendall_tau(first: Sequence[float | None], second: Sequence[float | None]) -> float | None:
    """Kendall's tau-b between paired scores, pairs with a missing score dropped (None when fewer
    than two pairs remain or a list does not vary)."""
    from scipy.stats import kendalltau

    pairs = _pairs(first, second)
    if len(pairs) < 2:
        return None
    tau = kendalltau(*zip(*pairs, strict=True)).statistic
    return None if math.isnan(tau) else float(tau)


def spearman(first: Sequence[float | None], second: Sequence[float | None]) -> float | None:
    """Spearman's rank correlation between paired scores (None as for ``kendall_tau``)."""
    from scipy.stats import spearmanr

    pairs = _pairs(first, second)
    if len(pairs) < 2:
        return None
    rho = spearmanr(*zip(*pairs, strict=True)).statistic
    return None if math.isnan(rho) else float(rho)


def _pairs(first: Sequence[float | None], second: Sequence[float | None]) -> list[tuple[float, float]]:
    return [(a, b) for a, b in zip(first, second, strict=True) if a is not None and b is not None]


@dataclass(frozen=True)
class Estimate:
    """A statistic over paired scores with its 95% percentile-bootstrap interval over the pairs."""

    value: float | None
    low: float | None
    high: float | None

    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def bootstrap(
    statistic: Callable[[list[float], list[float]], float | None],
    first: Sequence[float],
    second: Sequence[float],
    samples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """``statistic`` of the pairs, and the 2.5-97.5 percentiles of it over ``samples`` resamples of
    the pairs (with replacement; resamples where it is undefined are left out)."""
    pairs = _pairs(first, second)
    value = statistic(*map(list, zip(*pairs, strict=True))) if len(pairs) >= 2 else None
    rng = random.Random(seed)
    values = []
    for _ in range(samples):
        drawn = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        result = statistic(*map(list, zip(*drawn, strict=True))) if drawn else None
        if result is not None:
            values.append(result)
    if not values:
        return Estimate(value, None, None)
    values.sort()
    return Estimate(value, _percentile(values, 0.025), _percentile(values, 0.975))


def _percentile(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def top_pick_regret(predicted: Sequence[float], truth: Sequence[float]) -> tuple[int, float]:
    """The index the predictor ranks best (lowest predicted value, first on ties) and how much worse
    its true value is than the best true value (both lower-is-better, e.g. val loss)."""
    pick = min(range(len(predicted)), key=lambda i: (predicted[i], i))
    return pick, truth[pick] - min(truth)


def draw_panel(supernet: Supernet, size: int, seed: int, high: int | None, low: int = 0) -> list[SubnetConfig]:
    """``size`` distinct subnets drawn uniformly among those with ``low <= count <= high`` (``high``
    None: no cap), in draw order. One line when the range holds fewer than ``size`` subnets."""
    if size < 1:
        raise ConfigError(f"panel size: got {size}; allowed: >= 1")
    holds = subnets_in_range(supernet, high, low)
    if holds is not None and holds < size:
        raise BudgetError(
            f"panel size: got {size}; the space holds {holds} subnets with {low:,}..{_show(high)} trainable "
            f"parameters; allowed: at most {holds}"
        )
    rng = random.Random(seed)
    panel: list[SubnetConfig] = []
    for _ in range(200 * size):
        subnet = supernet.sample_within(rng, high, low)
        if subnet not in panel:
            panel.append(subnet)
            if len(panel) == size:
                return panel
    raise BudgetError(
        f"panel size: got {size}; {200 * size:,} draws found {len(panel)} distinct subnets with "
        f"{low:,}..{_show(high)} trainable parameters; allowed: a smaller panel or a wider range"
    )


def subnets_in_range(supernet: Supernet, high: int | None, low: int = 0) -> int | None:
    """How many distinct subnets have ``low <= count <= high``, when the space is small enough to
    enumerate (None otherwise)."""
    genes = supernet.genes
    if math.prod(len(values) for values in genes.values()) > ENUMERATE_UP_TO:
        return None
    cap = math.inf if high is None else high
    subnets = {
        supernet.from_genes(dict(zip(genes, values, strict=True))) for values in itertools.product(*genes.values())
    }
    return sum(low <= supernet.count(subnet) <= cap for subnet in subnets)


def _show(high: int | None) -> str:
    return "any" if high is None else f"{high:,}"
