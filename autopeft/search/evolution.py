"""Evolutionary search over subnet genes (NOAH's scheme, with its faults fixed).

Fitness is the val loss with inherited supernet weights (accuracy breaks ties), computed once per
distinct ``SubnetConfig``. Unlike NOAH, mutation may change any gene (NOAH's never changed an existing
block's size) and duplicates are never scored twice. The initial population is drawn uniformly
among the subnets inside the parameter budget, and a child over the budget is drawn again (another
mutation or crossover of the parents) rather than repaired: shrinking random genes until a child
fits would stack every candidate just under the cap, whatever its fitness.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from autopeft.config import option
from autopeft.errors import ConfigError
from autopeft.search.candidates import Candidate, Scorer, ranked
from autopeft.supernet import SubnetConfig, Supernet

Genes = dict[str, object]


@dataclass
class EvolutionConfig:
    """Population size, parents kept, children per generation, generations, per-gene mutation rate.
    (The seed is the search stage's, given to ``evolve``.)"""

    population: int = option(
        50,
        help="Candidates of the first generation, drawn uniformly among the distinct subnets within the budget "
        "(fewer when too few are found).",
    )
    parents: int = option(
        10,
        help="The best candidates by val loss each generation keeps as parents of the next, carried over "
        "unchanged (1 to population).",
    )
    mutations: int = option(
        25,
        help="Mutated children per generation: a random parent with each gene redrawn at mutation_prob (a "
        "duplicate or over-budget child is drawn again).",
    )
    crossovers: int = option(
        25,
        help="Crossover children per generation: each gene taken from one of two random parents with even odds "
        "(none with fewer than two parents).",
    )
    generations: int = option(
        20,
        help="Generations, the first (the initial population) included; 1 scores the initial population only.",
    )
    mutation_prob: float = option(
        0.1, help="The probability (0 to 1) that a mutation redraws a gene, uniformly among its choices."
    )

    def __post_init__(self) -> None:
        if not 1 <= self.parents <= self.population:
            raise ConfigError(f"evolution.parents: got {self.parents}; allowed: 1..population ({self.population})")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ConfigError(f"evolution.mutation_prob: got {self.mutation_prob}; allowed: 0..1")


def evolve(
    supernet: Supernet,
    score: Scorer,
    config: EvolutionConfig,
    budget: int | None = None,
    on_candidate: Callable[[Candidate], None] | None = None,
    seed: int = 0,
) -> list[Candidate]:
    """Every candidate scored, in order; ``budget`` caps trainable parameters (head excluded)."""
    search = _Evolution(supernet, score, config, budget, on_candidate, seed)
    population = search.initial()
    for generation in range(1, config.generations):
        parents = ranked(population, "loss")[: config.parents]
        population = parents + search.children(parents, generation)
    return search.scored


class _Evolution:
    def __init__(self, supernet, score, config, budget, on_candidate, seed) -> None:
        self.supernet, self.score_fn, self.config, self.budget = supernet, score, config, budget
        self.on_candidate = on_candidate
        self.rng = random.Random(seed)
        self.choices = supernet.genes
        self.seen: set[SubnetConfig] = set()
        self.scored: list[Candidate] = []
        if budget is not None:
            supernet.check_budget(budget)

    def initial(self) -> list[Candidate]:
        population: list[Candidate] = []
        for _ in range(self.config.population * 1000):  # rejection sampling: in-budget subnets can be rare
            if len(population) == self.config.population:
                break
            population += self._admit({name: self.rng.choice(values) for name, values in self.choices.items()}, 0)
        return population

    def children(self, parents: list[Candidate], generation: int) -> list[Candidate]:
        made: list[Candidate] = []
        for _ in range(self.config.mutations * 20):
            if len(made) >= self.config.mutations:
                break
            made += self._admit(self._mutate(dict(self.rng.choice(parents).genes)), generation)
        crossed: list[Candidate] = []
        for _ in range(self.config.crossovers * 20):
            if len(crossed) >= self.config.crossovers or len(parents) < 2:
                break
            first, second = self.rng.sample(parents, 2)
            crossed += self._admit(self._cross(dict(first.genes), dict(second.genes)), generation)
        return made + crossed

    def _mutate(self, genes: Genes) -> Genes:
        for name, values in self.choices.items():
            if self.rng.random() < self.config.mutation_prob:
                genes[name] = self.rng.choice(values)
        return genes

    def _cross(self, first: Genes, second: Genes) -> Genes:
        return {name: (first if self.rng.random() < 0.5 else second)[name] for name in self.choices}

    def _admit(self, genes: Genes, generation: int) -> list[Candidate]:
        """Score ``genes`` unless they are over the budget or an equal subnet was seen."""
        subnet = self.supernet.from_genes(genes)
        params = self.supernet.count(subnet)
        if subnet in self.seen or (self.budget is not None and params > self.budget):
            return []
        self.seen.add(subnet)
        accuracy, loss = self.score_fn(subnet)
        candidate = Candidate(subnet, tuple(sorted(genes.items())), params, accuracy, generation, loss)
        self.scored.append(candidate)
        if self.on_candidate is not None:
            self.on_candidate(candidate)
        return [candidate]
