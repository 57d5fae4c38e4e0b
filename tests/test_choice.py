"""autopeft.choose: calibrated ties, paired vs unpaired evidence, the winner rules and the CLI over a table."""

from __future__ import annotations

import json

import numpy as np
import pytest

import autopeft
from autopeft.choice import choose
from autopeft.cli import main
from autopeft.errors import ConfigError
from autopeft.records import Evidence, Outcomes, pool_folds

DRAWS = 2000


def mcnemar_fixture():
    """A 425/500 and B 415/500 on the same ids: 413 right in both, 12 right only in A, 2 right only in B."""
    a, b = np.zeros(500, np.uint8), np.zeros(500, np.uint8)
    a[:425], b[:413], b[425:427] = 1, 1, 1
    return a, b


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize(("n", "p"), [(200, 0.65), (200, 0.97), (1000, 0.5)])
def test_identical_candidates_are_tied_at_the_nominal_rate(n, p, paired):
    rng, tied = np.random.default_rng(7), 0
    for draw in range(DRAWS):
        a, b = (rng.random((2, n)) < p).astype(np.uint8)
        if paired:
            evidence = {k: Evidence.from_outcomes(x, ids=np.arange(n)) for k, x in (("a", a), ("b", b))}
        else:
            evidence = {k: Evidence.from_counts(int(x.sum()), n) for k, x in (("a", a), ("b", b))}
        choice = choose(evidence, seed=draw)
        assert choice.leader == max(evidence, key=lambda k: (evidence[k].accuracy, k == "a"))
        tied += len(choice.tied) == 2
    assert abs(tied / DRAWS - 0.95) <= 0.015, tied / DRAWS


@pytest.mark.parametrize("paired", [False, True])
def test_a_far_worse_candidate_is_dropped(paired):
    rng, dropped = np.random.default_rng(11), 0
    for draw in range(DRAWS):
        good, bad = (rng.random(1000) < 0.9).astype(np.uint8), (rng.random(1000) < 0.82).astype(np.uint8)
        if paired:
            evidence = {
                "good": Evidence.from_outcomes(good, ids=np.arange(1000)),
                "bad": Evidence.from_outcomes(bad, ids=np.arange(1000)),
            }
        else:
            evidence = {
                "good": Evidence.from_counts(int(good.sum()), 1000),
                "bad": Evidence.from_counts(int(bad.sum()), 1000),
            }
        dropped += choose(evidence, seed=draw).tied == ("good",)
    assert dropped / DRAWS >= 0.99


def test_pairing_sees_a_difference_the_counts_alone_cannot():
    a, b = mcnemar_fixture()
    paired = choose(
        {"A": Evidence.from_outcomes(a, ids=np.arange(500)), "B": Evidence.from_outcomes(b, ids=np.arange(500))}
    )
    unpaired = choose({"A": Evidence.from_counts(425, 500), "B": Evidence.from_counts(415, 500)})
    assert paired.tied == ("A",) and paired.intervals["B"].high < 0 and paired.intervals["B"].difference == -2.0
    assert paired.intervals["B"].test == "paired bootstrap over 500 shared examples"
    assert unpaired.tied == ("A", "B") and unpaired.intervals["B"].low < 0 < unpaired.intervals["B"].high
    assert "Newcombe" in unpaired.rule and "seed variance not included" in unpaired.rule
    # other ids (or shuffled ids naming other examples) are not paired: the counts decide
    shifted = choose(
        {"A": Evidence.from_outcomes(a, ids=np.arange(500)), "B": Evidence.from_outcomes(b, ids=np.arange(1, 501))}
    )
    assert shifted.tied == ("A", "B")


def test_paired_outcomes_align_by_id_not_by_position():
    a, b = mcnemar_fixture()
    order = np.random.default_rng(0).permutation(500)
    aligned = choose(
        {"A": Evidence.from_outcomes(a, ids=np.arange(500)), "B": Evidence.from_outcomes(b, ids=np.arange(500))}
    )
    shuffled = choose(
        {"A": Evidence.from_outcomes(a, ids=np.arange(500)), "B": Evidence.from_outcomes(b[order], ids=order)}
    )
    assert shuffled.intervals == aligned.intervals


def test_folds_and_seeds_make_a_two_stage_bootstrap_and_say_so():
    rng = np.random.default_rng(3)
    folds = [
        Outcomes("val", (rng.random((2, 100)) < 0.8).astype(np.uint8), ids=np.arange(k * 100, (k + 1) * 100))
        for k in range(3)
    ]
    others = [
        Outcomes("val", (rng.random((2, 100)) < 0.7).astype(np.uint8), ids=np.arange(k * 100, (k + 1) * 100))
        for k in range(3)
    ]
    a, b = Evidence.pooled(folds), Evidence.pooled(others)
    assert a.n == 300 and len(a.values) == 3 and a.accuracy == pytest.approx(np.mean(a.values))
    choice = choose({"a": a, "b": b})
    assert choice.intervals["b"].test == "paired bootstrap over 300 shared examples, seeds then folds then examples"
    assert "seed variance not included" not in choice.rule
    one_stage = choose(
        {
            "a": Evidence.from_outcomes(pool_folds(folds).correct[0], ids=np.arange(300)),
            "b": Evidence.from_outcomes(pool_folds(others).correct[0], ids=np.arange(300)),
        }
    )
    assert one_stage.intervals["b"].test == "paired bootstrap over 300 shared examples"


def test_prefer_fewest_params_takes_the_smallest_tied_candidate():
    evidence = {
        "lora": Evidence.from_counts(170, 200, params=9000),
        "adapter": Evidence.from_counts(168, 200, params=4000),
        "bitfit": Evidence.from_counts(166, 200, params=900),
        "linear": Evidence.from_counts(100, 200, params=10),
    }
    best, small = choose(evidence), choose(evidence, prefer="fewest_params")
    assert best.winner == best.leader == "lora" and best.tied == ("lora", "adapter", "bitfit")
    assert small.winner == "bitfit" and small.leader == "lora"
    with pytest.raises(ConfigError, match="no parameter count for b"):
        choose({"a": Evidence.from_counts(10, 20, params=1), "b": Evidence.from_counts(10, 20)}, prefer="fewest_params")


def test_holm_widens_intervals_over_several_comparisons():
    evidence = {"best": Evidence.from_counts(180, 200)} | {
        f"c{i}": Evidence.from_counts(168 - i, 200) for i in range(4)
    }
    plain, holm = choose(evidence), choose(evidence, adjust="holm")
    assert len(holm.tied) >= len(plain.tied)
    assert min(i.level for i in holm.intervals.values()) == pytest.approx(0.05 / 4)
    assert all(holm.intervals[k].low <= plain.intervals[k].low for k in plain.intervals)


def test_ties_in_accuracy_go_to_the_lower_loss_then_the_earlier_name():
    evidence = {"x": Evidence.from_counts(50, 100, loss=0.9), "y": Evidence.from_counts(50, 100, loss=0.5)}
    assert choose(evidence).leader == "y"
    assert choose({"p": Evidence.from_counts(5, 10), "q": Evidence.from_counts(5, 10)}).leader == "p"


def test_failed_candidates_are_excluded_and_named_and_empty_input_is_answered():
    choice = choose(
        {
            "ok": Evidence.from_counts(9, 10),
            "nan": Evidence(10, float("nan")),
            "gone": None,
            "empty": Evidence.from_counts(0, 0),
        }
    )
    assert choice.leader == choice.winner == "ok" and choice.clear
    assert set(choice.excluded) == {"nan", "gone", "empty"}
    nothing = choose({})
    assert nothing.leader is None and nothing.tied == () and "no candidate" in nothing.summary()
    single = choose({"only": Evidence.from_counts(1, 2)})
    assert single.winner == "only" and single.summary() == "only: the choice is clear"


def test_choose_is_deterministic_given_its_seed():
    a, b = mcnemar_fixture()
    evidence = {"A": Evidence.from_outcomes(a, ids=np.arange(500)), "B": Evidence.from_outcomes(b, ids=np.arange(500))}
    assert choose(evidence, seed=5).to_dict() == choose(evidence, seed=5).to_dict()


def test_test_outcomes_never_enter_evidence():
    with pytest.raises(TypeError, match="test outcomes never enter"):
        Evidence.from_outcomes(Outcomes("test", np.ones(10)))


def test_outcomes_round_trip_through_their_file(tmp_path):
    outcomes = Outcomes("val", [1, 0, 1], [0.25, 2.0, 0.5], ids=[7, 3, 9], fingerprint="f00d")
    outcomes.write(tmp_path / "val_outcomes.npz")
    back = Outcomes.read(tmp_path / "val_outcomes.npz")
    assert back.split == "val" and back.fingerprint == "f00d" and back.ids.tolist() == [7, 3, 9]
    assert (
        back.correct.tolist() == [[1, 0, 1]]
        and back.loss.tolist() == [[0.25, 2.0, 0.5]]
        and back.fold.tolist() == [0, 0, 0]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["val_outcomes.npz"]  # no temporary file left behind


def test_the_public_names_and_the_cli_table(tmp_path, capsys):
    assert autopeft.choose is choose and autopeft.Evidence is Evidence
    table = tmp_path / "val.csv"
    table.write_text("name,correct,n,params\nlora,425,500,9000\nadapter,415,500,4000\nlinear,300,500,10\n")
    assert main(["choose", str(table), "--json", "--prefer", "fewest_params"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["leader"] == "lora" and printed["winner"] == "adapter" and printed["tied"] == ["lora", "adapter"]
    assert main(["choose", str(table)]) == 0
    assert "Choice: lora: tied with the leader: adapter." in capsys.readouterr().out
    table.write_text("name,correct,n\nlora,501,500\n")
    assert main(["choose", str(table)]) == 2
    assert "line 2" in capsys.readouterr().err
