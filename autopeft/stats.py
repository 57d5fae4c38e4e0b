"""The intervals and verdicts every comparison report uses: the mean of per-seed (or per-task) values, or of paired
differences, with the half-width of its two-sided 95% Student t-interval, and what such an interval decides."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def t_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean of ``values`` and the half-width of its two-sided 95% t-interval (None below two values)."""
    from scipy.stats import t

    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def verdict(mean: float, half: float, decisive: float = 1.0) -> str:
    """What a difference's interval says: win / loss when it excludes 0; tie when it covers 0 and its half-width
    is at most ``decisive`` points; undecided when it covers 0 but is too wide to say anything."""
    if mean - half > 0:
        return "win"
    if mean + half < 0:
        return "loss"
    return "tie" if half <= decisive else "undecided"
