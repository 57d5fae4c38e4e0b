"""Ranking statistics and panels: pure logic, no training."""

from __future__ import annotations

import re

import pytest

from autopeft.errors import BudgetError, ConfigError
from autopeft.search.ranking import (
    bootstrap,
    draw_panel,
    kendall_tau,
    spearman,
    subnets_in_range,
    top_pick_regret,
)
from autopeft.supernet import Supernet, parse_space
from tests.conftest import tiny_vit


def test_kendall_tau_and_spearman_on_known_orders():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one discordant pair of six: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert kendall_tau([1, None, 3], [1, 2, 3]) == 1.0  # a missing score drops its pair
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None and kendall_tau([1], [2]) is None


def test_bootstrap_interval_brackets_the_value_and_is_seeded():
    first = [float(i) for i in range(30)]
    noisy = [x + (7 if i % 5 == 0 else 0) for i, x in enumerate(first)]
    estimate = bootstrap(kendall_tau, first, noisy, samples=500, seed=1)
    assert estimate.low <= estimate.value <= estimate.high and estimate.high <= 1.0
    assert estimate == bootstrap(kendall_tau, first, noisy, samples=500, seed=1)
    assert estimate.excludes_zero()
    unrelated = bootstrap(kendall_tau, first, [(i * 7919) % 31 for i in range(30)], samples=500)
    assert unrelated.low < 0 < unrelated.high and not unrelated.excludes_zero()


def test_top_pick_regret():
    assert top_pick_regret([0.3, 0.1, 0.2], [0.5, 0.7, 0.4]) == (1, pytest.approx(0.3))
    assert top_pick_regret([0.1, 0.1], [0.2, 0.1]) == (0, pytest.approx(0.1))  # ties: the first


SPACE = {"methods": {"lora": {"sizes": [0, 2, 4]}, "adapter": {"sizes": [0, 4]}}}


def supernet(space: dict = SPACE) -> Supernet:
    return Supernet(tiny_vit(), parse_space(space, "space"))


def test_panels_are_distinct_seeded_and_inside_their_range():
    net = supernet()
    budget = net.count(net.largest()) // 2
    panel = draw_panel(net, 12, seed=3, high=budget)
    assert len(set(panel)) == 12 and all(net.count(s) <= budget for s in panel)
    assert panel == draw_panel(net, 12, seed=3, high=budget)
    band = draw_panel(net, 5, seed=3, high=budget, low=int(0.9 * budget))
    assert all(0.9 * budget <= net.count(s) <= budget for s in band)


def test_a_panel_larger_than_the_range_holds_is_one_line():
    net = supernet()
    budget = net.count(net.largest()) // 2
    holds = subnets_in_range(net, budget)
    assert 0 < holds < 6**3
    with pytest.raises(BudgetError, match=rf"panel size: got {holds + 1}; the space holds {holds} subnets"):
        draw_panel(net, holds + 1, seed=0, high=budget)
    assert len(draw_panel(net, holds, seed=0, high=budget)) == holds  # exactly all of them


def test_a_space_with_one_subnet_and_a_budget_no_subnet_fits():
    single = supernet({"methods": {"lora": {"sizes": [2]}}})
    assert subnets_in_range(single, None) == 1
    with pytest.raises(BudgetError, match=re.escape("panel size: got 2; the space holds 1 subnets")):
        draw_panel(single, 2, seed=0, high=None)
    with pytest.raises(BudgetError, match=re.escape("the space holds 0 subnets with 1..10 trainable parameters")):
        draw_panel(supernet(), 1, seed=0, high=10, low=1)
    with pytest.raises(ConfigError, match="panel size: got 0; allowed: >= 1"):
        draw_panel(single, 0, seed=0, high=None)
