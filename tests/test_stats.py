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


def test_paired_seeds_pairs_only_the_seeds_both_finished():
    from autopeft.stats import paired_seeds

    diff = paired_seeds({0: 80.0, 1: 82.0, 2: None}, {0: 79.0, 1: 80.0, 2: 81.0, 3: 70.0})
    assert diff.seeds == (0, 1) and diff.diffs == (1.0, 2.0) and diff.left_out == (2, 3)
    assert diff.mean == 1.5  # std sqrt(0.5), n 2: t(0.975, 1) = 12.7062
    assert diff.half == pytest.approx(12.706205 * math.sqrt(0.5) / math.sqrt(2), rel=1e-6)
    assert diff.half == pytest.approx(6.353102, rel=1e-6)


def test_paired_seeds_gives_no_interval_for_one_pair():
    from autopeft.stats import paired_seeds

    diff = paired_seeds({0: 80.0, 1: 82.0}, {1: 80.5, 2: 81.0})
    assert (diff.seeds, diff.diffs, diff.mean, diff.half, diff.left_out) == ((1,), (1.5,), 1.5, None, (0, 2))


def test_paired_seeds_without_a_shared_finished_seed_has_no_mean():
    from autopeft.stats import paired_seeds

    diff = paired_seeds({0: 80.0, 1: None}, {1: 79.0, 2: 81.0})
    assert (diff.seeds, diff.diffs, diff.mean, diff.half, diff.left_out) == ((), (), None, None, (0, 1, 2))
