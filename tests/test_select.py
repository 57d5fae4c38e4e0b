"""`autopeft select` end to end in real subprocesses on a tiny ViT: the choice on val, test read only
by the final runs, mean +- std over seeds, report on the final runs, resume after SIGKILL, bad suites."""

from __future__ import annotations

import csv
import json
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import autopeft
from autopeft.backbones import create_backbone
from autopeft.data import DataConfig
from autopeft.jobs.rundir import locked
from autopeft.search.candidates import standalone_order
from autopeft.search.select import METHOD_SIZES, _sizes_in_budget, parse_suite
from tests.killpoints import epochs_done, kill_and_resume
from tests.test_pipeline import cli_command, env
from tests.test_train import TINY, cli

TRAIN = {"epochs": 1, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0}
SUITE = {
    "backbone": {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY},
    "datasets": ["digits", "shapes_position"],
    "strategies": ["lora", "ssf", "supernet"],
    "budget": 2000,
    "sweep": {"trials": 2, "pruner": "none", "train": TRAIN},
    "supernet": {
        "space": {"methods": {"lora": {"sizes": [0, 2]}, "ssf": {"sizes": [0, 1]}}},
        "supernet": {"train": TRAIN},
        "search": {"evolution": {"population": 4, "parents": 2, "mutations": 2, "crossovers": 2, "generations": 1}},
        "retrain": {"top_k": 2},
    },
    "finalists": 2,
    "final": {"train": TRAIN, "seeds": [0, 1, 2]},
}


def write(folder: Path, **changes) -> Path:
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **changes}))
    return path


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_select_chooses_on_val_and_reads_test_only_in_final_runs(tmp_path):
    out = tmp_path / "out"
    done = cli("select", str(write(tmp_path)), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "| dataset | chosen |" in done.stdout
    result = load(out / "result.json")
    assert result["command"] == "select" and [d["dataset"] for d in result["datasets"]] == ["digits", "shapes_position"]
    assert (result["provenance"]["device"], result["provenance"]["dtype"]) == ("cpu", "fp32")  # leaderboard device
    final_dirs = []
    for row in result["datasets"]:
        selection = load(out / row["dataset"] / "selection.json")
        scored = [s for s in selection["strategies"] if s["status"] == "completed"]
        assert {s["name"] for s in selection["strategies"]} == {"lora", "ssf", "supernet"}
        order = standalone_order([(s["val_acc"], s["val_loss"]) for s in scored])[::-1]
        assert selection["ranking"] == [scored[i]["name"] for i in order]
        finalists = [f["row"] for f in selection["finalists"]]
        assert [f["name"] for f in finalists] == selection["ranking"][:2]
        best = standalone_order([(f["val_acc"], None) for f in finalists])[-1]  # the finalist best on val is chosen
        assert row["chosen"] == selection["chosen"] == finalists[best]["name"]
        assert row["val_acc"] == max(f["val_acc"] for f in finalists)
        for finalist in finalists:
            seeds = [
                load(out / row["dataset"] / "final" / finalist["name"] / f"seed{s}" / "result.json") for s in (0, 1, 2)
            ]
            assert all(r["command"] == "train" and r["val_acc"] is None and r["test_acc"] is not None for r in seeds)
            assert [r["seed"] for r in seeds] == [0, 1, 2] and all(r["methods"] == finalist["methods"] for r in seeds)
            tests = [r["test_acc"] for r in seeds]
            assert finalist["test_accs"] == tests and finalist["test_acc"] == statistics.mean(tests)
            assert finalist["test_acc_std"] == statistics.stdev(tests)
            assert finalist["compute"]["train_images"] == sum(r["compute"]["train_images"] for r in seeds) > 0
            final_dirs += [str(out / row["dataset"] / "final" / finalist["name"] / f"seed{s}") for s in (0, 1, 2)]
            if finalist["name"] == row["chosen"]:
                assert (row["test_acc"], row["test_acc_std"]) == (finalist["test_acc"], finalist["test_acc_std"])
        for strategy in scored:  # every selection run: scored on val, test never read
            runs = list(Path(strategy["run_dir"]).rglob("result.json"))
            assert runs and all(load(p)["test_acc"] is None for p in runs)
            assert strategy["compute"]["train_images"] > 0  # what the strategy's selection processed
            searched = load(Path(strategy["run_dir"]) / "result.json")  # the lr and wd it won at (the supernet's
            assert strategy["train"] == searched["train"]  # winner may win at any lr of retrain.lrs)
    report = cli("report", str(out), *final_dirs, "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    with (tmp_path / "report" / "leaderboard.csv").open(newline="") as handle:
        selected = next(r for r in csv.DictReader(handle) if r["method"] == "selected per dataset")
    for row in result["datasets"]:  # the suite's own row: each dataset's chosen strategy
        assert float(selected[row["dataset"]]) == pytest.approx(row["test_acc"], abs=0.005)


def test_budget_skips_a_method_whose_smallest_size_is_over_it(tmp_path):
    out = tmp_path / "out"
    suite = write(tmp_path, datasets=["digits"], strategies=["lora", "ssf"], budget=600, finalists=1)
    done = cli("select", str(suite), "--out", str(out))
    assert done.returncode == 0, done.stderr
    selection = load(out / "digits" / "selection.json")
    ssf = next(s for s in selection["strategies"] if s["name"] == "ssf")
    assert ssf["status"] == "skipped" and "over budget" in ssf["reason"] and not (out / "digits" / "ssf").exists()
    assert selection["chosen"] == "lora" and selection["finalists"][0]["row"]["params"] <= 600


def test_killed_select_resumes_without_redoing_a_finished_dataset(tmp_path):
    out, suite = tmp_path / "out", write(tmp_path)
    process = subprocess.Popen(
        cli_command("select", str(suite), "--out", str(out)),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = out / "digits" / "selection.json"
    deadline = time.time() + 300
    while not first.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.is_file() and not (out / "result.json").is_file()
    before = first.read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "digits").rglob("*") if p.is_file()}
    resumed = cli("select", str(suite), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert first.read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in (out / "digits").rglob("*") if p.is_file()} == stamps
    result = load(out / "result.json")
    assert [d["dataset"] for d in result["datasets"]] == ["digits", "shapes_position"]
    assert load(out / "shapes_position" / "selection.json")["chosen"] == result["datasets"][1]["chosen"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategies": ["lora", "bitfit"]}, "strategies: unknown strategy 'bitfit'; allowed: lora"),
        ({"final": {"seeds": [0, 1]}}, "final.seeds: got [0, 1]; allowed: at least 3 different seeds"),
        ({"datasets": []}, "datasets: empty"),
        ({"datasets": ["digits", "nosuch"]}, "datasets[1]: unknown built-in dataset 'nosuch'"),
        ({"sweep": {"trials": 2, "budget": 5}}, "sweep.budget: set by select"),
        ({"finalist": 2}, "unknown option 'finalist'"),
    ],
)
def test_bad_suites_exit_with_one_line_and_write_nothing(tmp_path, changes, message, run_cli):
    out = tmp_path / "out"
    code, stderr = run_cli("select", str(write(tmp_path, **changes)), "--out", str(out))
    assert code == 2 and not out.exists()
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert str(tmp_path / "suite.yaml") in stderr


def test_pro_tuning_is_a_strategy_whose_sizes_are_kept_within_the_budget():
    counts = {
        k: autopeft.count_trainable(
            autopeft.apply(create_backbone("vit_tiny_patch16_224", 10, **TINY), {"pro_tuning": {"dim": k}})
        )
        for k in METHOD_SIZES["pro_tuning"]
    }
    budget = counts[8]
    suite = parse_suite({**SUITE, "strategies": ["pro_tuning"], "budget": budget}, "suite")
    assert _sizes_in_budget(suite, DataConfig(name="digits"), "pro_tuning") == ([4, 8], "")
    assert counts[4] < counts[8] < counts[16]


def test_kfold_re_scores_each_strategys_winner_before_the_finalists(tmp_path):
    out = tmp_path / "out"
    suite = write(tmp_path, datasets=["digits"], strategies=["lora", "ssf"], finalists=1)
    kfold = ["--set", "selection.mode=kfold", "--set", "selection.folds=2"]
    done = cli("select", str(suite), "--out", str(out), *kfold)
    assert done.returncode == 0, done.stderr
    selection = load(out / "digits" / "selection.json")
    assert sorted(p.name for p in (out / "digits" / "rescore").iterdir()) == [
        "lora-fold0",
        "lora-fold1",
        "ssf-fold0",
        "ssf-fold1",
    ]
    summary = selection["selection"]
    assert (summary["mode"], summary["folds"]) == ("kfold", 2)
    assert {name: e["n"] for name, e in summary["evidence"].items()} == {"lora": 1000, "ssf": 1000}
    assert selection["chosen"] == summary["choice"]["winner"] == selection["ranking"][0]
    assert [f["row"]["name"] for f in selection["finalists"]] == [selection["chosen"]]
    assert "Selection: scored on 2 folds of train+val" in (out / "summary.md").read_text()


def test_select_killed_at_seeded_moments_ends_as_the_uninterrupted_one(tmp_path):
    """Five SIGKILLs at seeded moments over sweeps, supernet and final runs, each resumed: the same choice and
    test accuracies per dataset, every epoch trained once, the lock free."""
    suite = write(tmp_path, datasets=["digits"], strategies=["lora", "supernet"])
    whole, out = tmp_path / "whole", tmp_path / "killed"
    assert cli("select", str(suite), "--out", str(whole)).returncode == 0
    kill_and_resume(["select", str(suite)], out, epochs=epochs_done(whole), seed=4)
    first, second = load(whole / "result.json"), load(out / "result.json")
    keys = ("dataset", "chosen", "val_acc", "test_acc", "test_acc_std", "methods")
    assert [{k: d[k] for k in keys} for d in first["datasets"]] == [{k: d[k] for k in keys} for d in second["datasets"]]
    assert load(whole / "digits" / "selection.json")["ranking"] == load(out / "digits" / "selection.json")["ranking"]
    for metrics in out.rglob("metrics.jsonl"):  # every run trained each epoch once
        trained = [json.loads(line)["epoch"] for line in metrics.open()]
        assert trained == list(range(1, len(trained) + 1)), metrics
    assert epochs_done(out) == epochs_done(whole)
    with locked(out):
        pass
