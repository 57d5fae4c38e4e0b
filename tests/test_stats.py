"""The report statistics: 95% t-intervals and verdicts, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from autopeft.stats import t_interval, verdict


def test_t_interval_uses_students_quantile_for_the_sample_size():
    mean, half = t_interval([1.0, 2.0, 3.0])  # std 1, n 3: t(0.975, 2) = 4.30265
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    mean, half = t_interval([0.5, -0.5])  # std sqrt(0.5), n 2: t(0.975, 1) = 12.7062
    assert mean == 0.0 and half == pytest.approx(12.706205 * math.sqrt(0.5) / math.sqrt(2), rel=1e-6)
    assert t_interval([4.0]) == (4.0, None)


def test_verdict_separates_decided_ties_from_intervals_too_wide_to_decide():
    assert verdict(0.6, 0.5) == "win" and verdict(-0.6, 0.5) == "loss"
    assert verdict(0.2, 0.9) == "tie" and verdict(0.2, 1.5) == "undecided"
    assert verdict(0.2, 1.5, decisive=2.0) == "tie"
