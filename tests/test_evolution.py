"""Evolutionary search on a real supernet with a known fitness landscape."""

from __future__ import annotations

import pytest

from autopeft.errors import ConfigError
from autopeft.search.evolution import EvolutionConfig, evolve
from autopeft.supernet import SubnetConfig, Supernet, parse_space
from tests.conftest import DEPTH, tiny_vit

SPACE = {"methods": {"lora": {"sizes": [0, 2, 4, 8]}, "adapter": {"sizes": [0, 4, 8]}, "vpt": {"sizes": [0, 1, 5]}}}
TARGET = {"lora": (8, 0, 4), "adapter": (0, 8, 4), "vpt": (5, 5, 0)}
SMALL = EvolutionConfig(population=12, parents=4, mutations=8, crossovers=8, generations=12, mutation_prob=0.2)


def supernet(space: dict = SPACE) -> Supernet:
    return Supernet(tiny_vit(), parse_space(space, "space"))


def closeness(subnet: SubnetConfig) -> tuple[float, float]:
    """A landscape peaking at TARGET: loss = the number of per-block sizes that differ from it (accuracy 0)."""
    return 0.0, float(sum(a != b for m, sizes in TARGET.items() for a, b in zip(subnet.size(m), sizes, strict=True)))


def test_evolution_climbs_to_the_optimum_and_never_scores_a_subnet_twice():
    scored = []
    candidates = evolve(supernet(), lambda s: scored.append(s) or closeness(s), SMALL)
    assert len(scored) == len(set(scored)) == len(candidates)
    best = min(c.loss for c in candidates)
    initial_best = min(c.loss for c in candidates if c.round == 0)
    assert best < initial_best and best <= 1.0  # a random start has ~6 of 9 genes wrong
    assert [c.round for c in candidates] == sorted(c.round for c in candidates)


def test_budget_is_respected_without_stacking_candidates_at_the_cap():
    net = supernet()
    budget = net.count(net.largest()) // 4
    candidates = evolve(net, closeness, SMALL, budget=budget)
    assert all(c.params <= budget and c.params == net.count(c.subnet) for c in candidates)
    assert sum(c.round == 0 for c in candidates) == SMALL.population
    # children over the budget are drawn again, not shrunk until they fit: many stay well below the cap
    assert sum(c.params < 0.8 * budget for c in candidates) > len(candidates) / 4


def test_same_seed_same_search():
    first = [(c.subnet, c.loss) for c in evolve(supernet(), closeness, SMALL)]
    assert first == [(c.subnet, c.loss) for c in evolve(supernet(), closeness, SMALL)]
    assert first != [(c.subnet, c.loss) for c in evolve(supernet(), closeness, SMALL, seed=1)]


def test_depth_gene_respects_the_budget_too():
    net = supernet({**SPACE, "depths": [2, DEPTH], "methods": {"lora": {"sizes": [4, 8]}}})
    budget = net.count(SubnetConfig.of({"lora": [8, 8, 0]}))
    candidates = evolve(net, closeness_lora, EvolutionConfig(population=4, parents=2, generations=3), budget=budget)
    assert candidates and all(c.params <= budget for c in candidates)


def closeness_lora(subnet: SubnetConfig) -> tuple[float, float]:
    return 0.0, -float(sum(subnet.size("lora")))


def test_impossible_budget_and_bad_settings_fail_clearly():
    with pytest.raises(ConfigError, match="budget: got 10 trainable parameters; allowed: >= "):
        evolve(supernet({"methods": {"lora": {"sizes": [2, 4]}}}), closeness_lora, SMALL, budget=10)
    with pytest.raises(ConfigError, match="parents: got 5"):
        EvolutionConfig(population=4, parents=5)
