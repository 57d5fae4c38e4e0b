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
    """Fitness peaking at TARGET: minus the number of per-block sizes that differ from it (loss 0)."""
    return -float(sum(a != b for m, sizes in TARGET.items() for a, b in zip(subnet.size(m), sizes, strict=True))), 0.0


def test_evolution_climbs_to_the_optimum_and_never_scores_a_subnet_twice():
    scored = []
    candidates = evolve(supernet(), lambda s: scored.append(s) or closeness(s), SMALL)
    assert len(scored) == len(set(scored)) == len(candidates)
    best = max(candidates, key=lambda c: c.score)
    initial_best = max(c.score for c in candidates if c.round == 0)
    assert best.score > initial_best and best.score >= -1.0  # random start is ~ -6 of 9 genes wrong
    assert [c.round for c in candidates] == sorted(c.round for c in candidates)


def test_budget_is_respected_by_repair_not_by_dropping_candidates():
    net = supernet()
    budget = net.count(net.largest()) // 4
    candidates = evolve(net, closeness, SMALL, budget=budget)
    assert all(c.params <= budget and c.params == net.count(c.subnet) for c in candidates)
    assert sum(c.round == 0 for c in candidates) == SMALL.population


def test_same_seed_same_search():
    first = [(c.subnet, c.score) for c in evolve(supernet(), closeness, SMALL)]
    assert first == [(c.subnet, c.score) for c in evolve(supernet(), closeness, SMALL)]
    assert first != [(c.subnet, c.score) for c in evolve(supernet(), closeness, SMALL, seed=1)]


def test_depth_gene_is_repaired_too():
    net = supernet({**SPACE, "depths": [2, DEPTH], "methods": {"lora": {"sizes": [4, 8]}}})
    budget = net.count(SubnetConfig.of({"lora": [8, 8, 0]}))
    candidates = evolve(net, closeness_lora, EvolutionConfig(population=4, parents=2, generations=3), budget=budget)
    assert candidates and all(c.params <= budget for c in candidates)


def closeness_lora(subnet: SubnetConfig) -> tuple[float, float]:
    return float(sum(subnet.size("lora"))), 0.0


def test_impossible_budget_and_bad_settings_fail_clearly():
    with pytest.raises(ConfigError, match="below the smallest subnet"):
        evolve(supernet({"methods": {"lora": {"sizes": [2, 4]}}}), closeness_lora, SMALL, budget=10)
    with pytest.raises(ConfigError, match="parents: got 5"):
        EvolutionConfig(population=4, parents=5)
