"""Optuna samplers on the space's define-by-run function, the Pareto front and the candidate files."""

from __future__ import annotations

import re

import pytest

from autopeft.errors import ConfigError
from autopeft.search.candidates import Candidate, candidate_front, ranked, read_candidates, write_candidates
from autopeft.search.optuna_search import SAMPLERS, optuna_search
from autopeft.supernet import SubnetConfig
from tests.test_evolution import closeness, supernet


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("pareto", [False, True])
def test_every_sampler_scores_distinct_subnets_inside_the_budget(sampler, pareto):
    net = supernet()
    budget = net.count(net.largest()) // 2
    scored = []
    candidates = optuna_search(
        net, lambda s: scored.append(s) or closeness(s), sampler, trials=12, pareto=pareto, budget=budget, seed=0
    )
    assert candidates and len(scored) == len(set(scored)) == len(candidates)
    assert all(c.params <= budget and c.params == net.count(c.subnet) for c in candidates)
    assert [c.round for c in candidates] == sorted(c.round for c in candidates)


def test_same_seed_same_search():
    runs = [[c.subnet for c in optuna_search(supernet(), closeness, "tpe", trials=15, seed=3)] for _ in range(2)]
    assert runs[0] == runs[1]


def test_unknown_sampler_is_named():
    with pytest.raises(ConfigError, match=re.escape("search.sampler: got 'cmaes'; allowed: tpe, nsga2, gp, random")):
        optuna_search(supernet(), closeness, "cmaes", trials=1)


def candidate(score: float, params: int, round_: int = 0, loss: float = float("nan")) -> Candidate:
    return Candidate(SubnetConfig.of({"lora": [params]}), (), params, score, round_, loss)


def test_pareto_front_keeps_exactly_the_non_dominated():
    points = [candidate(90, 100), candidate(85, 50), candidate(95, 400), candidate(80, 60), candidate(90, 200)]
    assert [(c.score, c.params) for c in candidate_front(points)] == [(85, 50), (90, 100), (95, 400)]
    assert [(c.score, c.params) for c in ranked(points)][:3] == [(95, 400), (90, 100), (90, 200)]


def test_ties_on_accuracy_go_to_the_lower_val_loss_then_to_fewer_parameters():
    points = [candidate(90, 100, loss=0.7), candidate(90, 300, loss=0.4), candidate(90, 200, loss=0.4)]
    assert [c.params for c in ranked(points)] == [200, 300, 100]


def test_ranking_by_loss_breaks_ties_by_accuracy_and_its_front_trades_loss_for_parameters():
    points = [candidate(80, 100, loss=0.5), candidate(90, 300, loss=0.5), candidate(70, 50, loss=0.9)]
    points.append(candidate(60, 400, loss=0.3))
    assert [c.params for c in ranked(points, "loss")] == [400, 300, 100, 50]
    assert [c.params for c in candidate_front(points, "loss")] == [50, 100, 300, 400]  # 300: same loss, better accuracy


def test_candidates_file_round_trips(tmp_path):
    net = supernet()
    found = optuna_search(net, closeness, "random", trials=6, seed=1)
    write_candidates(tmp_path / "candidates.csv", found, "val, inherited supernet weights")
    rows = read_candidates(tmp_path / "candidates.csv")
    assert rows == {c.subnet: (c.score, c.loss) for c in found}
    header = (tmp_path / "candidates.csv").read_text().splitlines()[0]
    assert header == "rank,round,score,loss,params,scored_by,subnet"
