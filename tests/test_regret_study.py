"""The selection-regret study's arithmetic (scripts/lib/regret.py) on tables whose answers are known: the oracle
never scores with the fold it chose on, each rule reads only the folds its replicate lets it see, racing is the
library's and saves compute, leave-one-task-out never reads the task, and the bootstrap's row 0 is the measured
value."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from autopeft.records import Compute, Outcomes
from autopeft.selection import SelectionConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from lib import regret

FOLDS, VAL, TEST = 5, 200, 4000


def outcomes(accuracy: float, fold: int, seed: int) -> Outcomes:
    """A fold's val outcomes at ``accuracy`` (exactly), examples named by their place in the task's pool."""
    correct = np.zeros(VAL, dtype=np.uint8)
    correct[np.random.default_rng(seed).permutation(VAL)[: round(accuracy * VAL)]] = 1
    return Outcomes("val", correct, 1.0 - correct * 0.5, fold * VAL + np.arange(VAL), np.full(VAL, fold))


def table(val: list[list[float]], test: list[list[float]], families=None, task="t") -> regret.Table:
    members = len(val)
    test_outcomes = np.zeros((members, FOLDS, TEST), dtype=np.uint8)
    for m in range(members):
        for f in range(FOLDS):
            test_outcomes[m, f, : round(test[m][f] * TEST)] = 1
    return regret.Table(
        task,
        tuple(f"m{m}" for m in range(members)),
        tuple(1000 * (m + 1) for m in range(members)),
        tuple(families or ["a"] * members),
        tuple(tuple(outcomes(val[m][f], f, 10 * m + f) for f in range(FOLDS)) for m in range(members)),
        tuple(tuple(Compute(train_images=100, eval_images=10, wall_s=1.0) for _ in range(FOLDS)) for _ in val),
        test_outcomes,
    )


def test_the_oracle_chooses_on_the_other_folds_and_is_scored_on_the_held_out_one():
    # m1 is best on fold 2's model alone: the oracle of replicate 2 is m0 (better on the other four), scored 80
    t = table([[0.8] * FOLDS] * 2, [[0.8] * FOLDS, [0.7, 0.7, 0.9, 0.7, 0.7]])
    accuracy = regret.test_accuracy(t.test, regret.image_weights(TEST, 0, np.random.default_rng(0)))
    assert regret.oracle(accuracy, 2)[0] == 0
    assert regret.regrets(accuracy, [1, 1, 1, 1, 1])[0].tolist() == pytest.approx([10, 10, -10, 10, 10])


def test_holdout_reads_the_next_fold_alone_and_kfold_pools_the_four():
    # m1 wins fold 1 by a little; m0 wins folds 2-4 by more: replicate 0's holdout takes m1, k-fold m0
    t = table([[0.8, 0.70, 0.8, 0.8, 0.8], [0.8, 0.72, 0.7, 0.7, 0.7]], [[0.8] * FOLDS] * 2)
    holdout = regret.library_rule(SelectionConfig())(t, 0)
    kfold = regret.library_rule(SelectionConfig(mode="kfold", folds=FOLDS - 1))(t, 0)
    assert (holdout.member, kfold.member) == (1, 0)
    assert holdout.compute.train_images == 2 * 100 and kfold.compute.train_images == 2 * 4 * 100
    assert regret.library_rule(SelectionConfig())(t, 1).member == 0  # replicate 1 sees fold 2 first


def test_the_race_drops_a_far_member_after_its_first_fold_and_costs_less():
    t = table([[0.9] * FOLDS, [0.9] * FOLDS, [0.3] * FOLDS], [[0.8] * FOLDS] * 3)
    race = regret.library_rule(SelectionConfig(mode="kfold", folds=FOLDS - 1, race=True))(t, 0)
    kfold = regret.library_rule(SelectionConfig(mode="kfold", folds=FOLDS - 1))(t, 0)
    assert race.member in (0, 1) and 2 not in race.tied
    assert race.compute.train_images == (3 + 2 + 2 + 2) * 100 < kfold.compute.train_images == 12 * 100


def test_leave_one_task_out_never_reads_the_task_it_chooses_for():
    families = ["a", "b"]
    favours_a = table([[0.95] * FOLDS, [0.5] * FOLDS], [[0.8] * FOLDS] * 2, families, "t0")
    favours_b = [table([[0.5] * FOLDS, [0.99] * FOLDS], [[0.8] * FOLDS] * 2, families, f"t{i}") for i in (1, 2)]
    assert regret.best_fixed_family([favours_a, *favours_b], 0, 0, families) == "b"
    assert regret.best_fixed_family([favours_a, *favours_b], 1, 0, families) == "b"
    assert regret.best_fixed_family([favours_a, favours_b[0]], 1, 0, families) == "a"


def test_suite_means_start_with_the_measured_mean_and_resample_tasks_and_replicates():
    per_task = [np.full((101, FOLDS), 1.0), np.full((101, FOLDS), 3.0)]
    means = regret.suite_means(per_task, np.random.default_rng(0))
    assert means[0] == 2.0 and len(means) == 101
    assert set(np.round(means[1:], 6)) <= {1.0, 2.0, 3.0} and len(set(np.round(means[1:], 6))) == 3
    weights = regret.image_weights(TEST, 50, np.random.default_rng(1))
    assert weights.shape == (51, TEST) and np.allclose(weights.sum(axis=1), 1) and np.all(weights[0] == 1 / TEST)


def test_the_analysis_of_a_suite_where_holdout_is_fooled_and_k_fold_is_not():
    # per task: m0 the true best (test 85 on every fold model), m1 lucky on one fold's val, m2 worse everywhere;
    # holdout is fooled in the replicates whose first seen fold is m1's lucky one, k-fold never is, and the race is
    # fooled as holdout is (m1's lucky fold, seen first, drops m0 at alpha / 4)
    tables = []
    for i in range(3):
        lucky = i + 1
        val = [[0.8] * FOLDS, [0.9 if f == lucky else 0.7 for f in range(FOLDS)], [0.6] * FOLDS]
        tables.append(table(val, [[0.85] * FOLDS, [0.80] * FOLDS, [0.70] * FOLDS], ["a", "b", "mixed"], f"t{i}"))
    result = regret.analyse(tables, ["a", "b"], {"m2": 1}, resamples=200)
    by_name = {r.name: r for r in result.rules}
    assert by_name["holdout"].suite.value == pytest.approx(5 * 1 / FOLDS)  # fooled once in five, by 5 points
    assert by_name[regret.KFOLD].suite.value == 0 and by_name[regret.KFOLD].versus_holdout.value == pytest.approx(-1)
    assert by_name[regret.RACE].suite.value == pytest.approx(1) and by_name[regret.RACE].versus_holdout.value == 0
    assert by_name["m2"].suite.value == pytest.approx(15)
    assert result.headroom["t0"].value == 0 and result.ratioed == [] and by_name["holdout"].captured is None
    assert by_name[regret.KFOLD].compute["t0"].train_images == 3 * 4 * 100
    assert result.coverage == 1.0 and result.epsilon_size == 1.0


def study():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "selection_regret.py"
    spec = importlib.util.spec_from_file_location("selection_regret_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_report_keeps_the_header_written_before_the_first_run():
    script = study()
    committed = script.OUT.read_text().splitlines()
    assert committed[: len(script.header())] == script.header()


def test_the_results_section_names_every_rule_with_its_interval():
    script = study()
    tables = [
        table([[0.8] * FOLDS, [0.7] * FOLDS], [[0.85] * FOLDS, [0.80] * FOLDS], ["lora", "adapter"], f"t{i}")
        for i in range(2)
    ]
    analysis = regret.analyse(tables, ["lora", "adapter"], {"m1": 3}, resamples=50)
    lines = script.render(analysis, tables, ["shapes_count"])
    text = "\n".join(lines)
    for name in [*regret.FOLD_RULES, "m1", regret.FIXED]:
        assert f"| {name} | " in text
    assert "| holdout | +0.00 [+0.00, +0.00] | +0.00 [+0.00, +0.00] | 1.00x" in text
    assert "| m1 | +5.00 [+4." in text  # the 200 test images only m0 gets right, resampled
    assert "Not yet in the table: shapes_count." in text


def test_calibration_says_whether_fold_models_rank_as_finals_do():
    lines = study().calibration_lines({"t0": [("a", 80.0, 81.0), ("b", 70.0, 72.5)], "t1": []})
    assert lines[-2:] == ["- t0: tau +1.00 (a 80.00 / 81.00; b 70.00 / 72.50)", "- t1: tau n/a (no final yet)"]
