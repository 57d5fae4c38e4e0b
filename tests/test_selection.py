"""Selection modes: fold-by-fold scoring and racing (pure, over a scoring callback), and `autopeft run` under
kfold with a race that drops a far-worse candidate after the first fold and resumes after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml

from autopeft.errors import ConfigError
from autopeft.records import Compute, Outcomes, read_record
from autopeft.selection import SelectionConfig, score_candidates
from tests.test_pipeline import cli_command, env
from tests.test_train import cli

FOLD = 100  # examples per fold in the synthetic races


def synthetic(accuracy: dict[str, float], seeds: int = 1, failing: str = ""):
    """A scoring callback: candidate ``name`` right on each example with probability ``accuracy[name]``."""
    calls: list[tuple[str, int]] = []

    def run(name: str, fold: int):
        calls.append((name, fold))
        if name == failing:
            return None, Compute(10, 0, 1.0)
        rng = np.random.default_rng([fold, sorted(accuracy).index(name)])
        ids = np.arange(fold * FOLD, (fold + 1) * FOLD)
        runs = [Outcomes("val", rng.random(FOLD) < accuracy[name], ids=ids) for _ in range(seeds)]
        return runs, Compute(100, FOLD, 2.0)

    return run, calls


def test_a_race_drops_a_far_worse_candidate_after_the_first_fold():
    run, calls = synthetic({"good": 0.9, "close": 0.88, "bad": 0.2})
    config = SelectionConfig(mode="kfold", folds=3, race=True)
    selected = score_candidates(["good", "close", "bad"], run, config, {"good": 10, "close": 5, "bad": 1})
    first = selected.rounds[0]
    assert first.fold == 0 and first.scored == 3 and list(first.dropped) == ["bad"]
    assert first.compute == Compute(300, 300, 6.0)
    assert ("bad", 1) not in calls and ("good", 2) in calls and ("close", 2) in calls
    assert selected.evidence["bad"].n == FOLD and selected.evidence["good"].n == 3 * FOLD
    assert selected.choice.excluded["bad"].startswith("dropped by the race after fold 0: ")
    assert "bad" not in selected.choice.tied and selected.choice.leader in ("good", "close")


def test_without_a_race_every_candidate_runs_every_fold_and_a_failure_is_excluded():
    run, calls = synthetic({"a": 0.9, "b": 0.2, "c": 0.5}, failing="c")
    selected = score_candidates(["a", "b", "c"], run, SelectionConfig(mode="kfold", folds=3), {})
    assert sorted(calls) == sorted([("a", f) for f in range(3)] + [("b", f) for f in range(3)] + [("c", 0)])
    assert selected.choice.tied == ("a",) and selected.choice.excluded == {"c": "failed"}
    assert len(selected.evidence["a"].values) == 3  # one accuracy per fold


def test_seeds_are_averaged_per_example_and_the_rule_includes_their_variance():
    run, _ = synthetic({"a": 0.8, "b": 0.78}, seeds=3)
    selected = score_candidates(["a", "b"], run, SelectionConfig(seeds=3), {})
    assert selected.evidence["a"].outcomes.correct.shape == (3, FOLD)
    (interval,) = selected.choice.intervals.values()
    assert interval.test == f"paired bootstrap over {FOLD} shared examples, seeds then examples"
    assert "seed variance not included" not in selected.choice.rule


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"folds": 1}, "selection.folds"),
        ({"race": True}, "selection.race"),
        ({"alpha": 1.5}, "selection.alpha"),
        ({"seeds": 0}, "selection.seeds"),
    ],
)
def test_bad_selection_settings_name_the_key(fields, key):
    with pytest.raises(ConfigError, match=key):
        SelectionConfig(**fields)


def test_the_plan_line_says_what_kfold_costs():
    assert SelectionConfig().describe() == "selection: scored on the holdout val split"
    assert SelectionConfig(mode="kfold", folds=5, seeds=2).describe().endswith(": 10x the selection stage's compute")


RACE = {
    "backbone": {"name": "vit_demo_fmnist"},
    "data": {"name": "digits"},
    "space": {"methods": {"lora": {"sizes": [0, 2, 4]}, "adapter": {"sizes": [0, 4]}}},
    "supernet": {"train": {"epochs": 1, "batch_size": 100, "lr": 0.01, "warmup_epochs": 0}},
    "search": {"evolution": {"population": 4, "parents": 2, "mutations": 2, "crossovers": 2, "generations": 1}},
    "retrain": {
        "top_k": 1,
        "lrs": [0.01, 0.011, 1e-7],  # two near-equal candidates and one that cannot learn in an epoch
        "train": {"epochs": 1, "batch_size": 100, "lr": 0.01, "warmup_epochs": 0},
        "select_epochs": 1,
        "seeds": [0],
    },
    "baselines": ["lora"],
}
KFOLD = ["--set", "selection.mode=kfold", "--set", "selection.folds=3", "--set", "selection.race=true"]


def test_kfold_race_drops_the_far_worse_candidate_and_resumes_without_retraining_a_fold(tmp_path):
    config = tmp_path / "race.yaml"
    config.write_text(yaml.safe_dump(RACE))
    out, retrain = tmp_path / "run", tmp_path / "run" / "retrain"
    args = ["run", str(config), "--out", str(out), *KFOLD]
    process = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.time() + 600
    while not (retrain / "01-lr0.01-fold1" / "result.json").is_file() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.parent.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in retrain.glob("*/result.json")}
    assert {"01-lr0.01-fold0", "01-lr1e-07-fold0", "01-lr0.01-fold1"} <= set(finished)
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    for name, (mtime, content) in finished.items():  # a finished fold is read back, not trained again
        path = retrain / name / "result.json"
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, content), name
    assert sorted(p.name for p in retrain.iterdir()) == [
        *(f"01-lr0.01-fold{k}" for k in range(3)),
        *(f"01-lr0.011-fold{k}" for k in range(3)),
        "01-lr1e-07-fold0",  # dropped after the first fold: never trained on the others
    ]
    fold_ids = []
    for k in range(3):
        outcomes = Outcomes.read(retrain / f"01-lr0.01-fold{k}" / "val_outcomes.npz")
        assert set(outcomes.fold.tolist()) == {k}
        fold_ids.append(set(outcomes.ids.tolist()))
        saved = yaml.safe_load((retrain / f"01-lr0.01-fold{k}" / "config.yaml").read_text())["data"]
        assert (saved["folds"], saved["fold"]) == (3, k)
    assert sorted(set().union(*fold_ids)) == list(range(1000)) and sum(map(len, fold_ids)) == 1000
    record = read_record(out / "result.json")
    selection = record.selection
    assert (selection.mode, selection.folds, selection.race) == ("kfold", 3, True)
    assert [list(r.dropped) for r in selection.rounds] == [["01-lr1e-07"], [], []]
    assert selection.choice["excluded"]["01-lr1e-07"].startswith("dropped by the race after fold 0")
    assert set(selection.choice["tied"]) <= {"01-lr0.01", "01-lr0.011"}
    assert selection.evidence["01-lr0.01"]["n"] == 1000 and selection.evidence["01-lr1e-07"]["n"] < 400
    assert json.loads((out / "selection.json").read_text())["choice"] == selection.choice
    summary = (out / "summary.md").read_text()
    assert "Selection: scored on 3 folds of train+val, raced" in summary and "Race, fold 0: 3 scored" in summary
    assert record.table[0].val_acc == pytest.approx(selection.evidence[selection.choice["winner"]]["accuracy"])
    report = cli("report", str(out), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    board = (tmp_path / "report" / "leaderboard.md").read_text()
    assert f"| digits | {out} | 3 folds, raced | {selection.choice['winner']} |" in board
