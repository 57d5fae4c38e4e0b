"""`autopeft search --engine optuna` in real processes: run files, resume after SIGKILL, workers
sharing one study on a journal file and on a real PostgreSQL server."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml

from autopeft.api import apply, count_trainable
from autopeft.backbones import build_demo_architecture
from autopeft.jobs.rundir import locked
from autopeft.runconfig import load_run_config
from autopeft.search.optuna_sweep import open_storage
from autopeft.search.sweep import SweepConfig, params_of, prepare
from autopeft.supernet import method_config, suggest
from tests.killpoints import kill_and_resume
from tests.test_pipeline import cli_command, env
from tests.test_train import TINY, cli

SWEEP = {
    "backbone": {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY},
    "data": {"name": "digits"},
    "space": {
        "methods": {"lora": {"sizes": [0, 2, 4], "search": {"alpha": [1.0, 4.0]}}, "ssf": {"sizes": [0, 1]}},
        "train": {"lr": {"low": 1.0e-3, "high": 1.0e-2}},
        "sizes_per": "model",
    },
    "train": {"epochs": 3, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0},
    "trials": 5,
}


def write(folder: Path, **changes) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}))
    return path


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def finished(storage: str, study: str = "autopeft") -> dict[int, tuple]:
    """Trial number -> (state, value, params) of every finished trial."""
    loaded = optuna.load_study(study_name=study, storage=storage)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return {t.number: (t.state, t.value, t.params) for t in loaded.get_trials(states=done)}


def test_sweep_writes_the_run_files_and_never_reads_test(tmp_path):
    out = tmp_path / "run"
    done = cli("search", str(write(tmp_path)), "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["command"] == "search" and result["engine"] == "optuna" and result["test_acc"] is None
    assert result["trials_completed"] + result["trials_pruned"] == 5 and result["trials_failed"] == 0
    assert (result["provenance"]["device"], result["provenance"]["dtype"]) == ("cpu", "fp32")  # its trials' machine
    candidates = rows(out / "candidates.csv")
    assert len(candidates) == 5 and [int(r["rank"]) for r in candidates] == [1, 2, 3, 4, 5]
    assert sum("pruned" in r["scored_by"] for r in candidates) == result["trials_pruned"]
    best = candidates[0]
    assert int(best["round"]) == result["best_trial"] and float(best["score"]) == pytest.approx(result["val_acc"], 1e-4)
    assert int(best["params"]) == result["trainable_params"]
    run = load_run_config(out / "best.yaml")
    assert run.final and run.methods == result["methods"] and run.train.lr == result["train"]["lr"]
    trial_results = [json.loads(p.read_text()) for p in (out / "trials").glob("*/result.json")]
    assert trial_results and all(r["test_acc"] is None for r in trial_results)
    assert set(finished(f"sqlite:///{out / 'study.db'}")) == {int(r["round"]) for r in candidates}
    choice = result["selection"]["choice"]  # the shortlist's tied set, from the trials' own val counts
    assert result["selection"]["mode"] == "holdout" and choice["winner"] == f"trial{result['best_trial']:04d}"
    assert "Newcombe" in choice["rule"] and "Selection: scored on the holdout val split" in done.stdout


def test_killed_sweep_resumes_without_losing_or_repeating_a_trial(tmp_path):
    out, config = tmp_path / "run", write(tmp_path, pruner="none")
    process = subprocess.Popen(
        cli_command("search", str(config), "--out", str(out)),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    trial = out / "trials" / "0002"
    while not ((trial / "checkpoint.pt").is_file() and not (trial / "result.json").is_file()):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # in trial 2, after one of its epochs was saved
    process.wait()
    storage = f"sqlite:///{out / 'study.db'}"
    before = finished(storage)
    assert len(before) == 2 and not (out / "result.json").is_file()
    resumed = cli("search", str(config), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = finished(storage)
    assert {n: after[n] for n in before} == before  # nothing finished was lost or changed
    result = json.loads((out / "result.json").read_text())
    assert len(after) == 5 and result["trials_completed"] == 5 and result["trials_retried"] == 1
    retried = [
        t for t in optuna.load_study(study_name="autopeft", storage=storage).trials if "retry_of" in t.user_attrs
    ]
    for trial in retried:  # the retry continued the killed trial's epochs in the killed trial's folder
        assert (
            trial.params
            == optuna.load_study(study_name="autopeft", storage=storage).trials[trial.user_attrs["retry_of"]].params
        )
        history = [json.loads(line) for line in (out / "trials" / f"{trial.number:04d}" / "metrics.jsonl").open()]
        assert [h["epoch"] for h in history] == [1, 2, 3]
    assert len(rows(out / "candidates.csv")) == 5
    trials = optuna.load_study(study_name="autopeft", storage=storage).trials
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_complete]
    ran = [t for t in trials if t.datetime_complete]
    first = sum(s for t, s in zip(ran, seconds, strict=True) if t.number < 2)  # the killed session's trials
    second = sum(s for t, s in zip(ran, seconds, strict=True) if t.number >= 2 and t.state.name == "COMPLETE")
    assert result["wall_time_s"] >= first + second  # both sessions counted, not only the resumed one
    assert result["compute"]["wall_s"] == result["wall_time_s"]
    whole = tmp_path / "whole"  # the same sweep uninterrupted proposes the same trials in the same order
    assert cli("search", str(config), "--out", str(whole)).returncode == 0
    uninterrupted = finished(f"sqlite:///{whole / 'study.db'}")
    proposed = [after[n][2] for n in sorted(after)]
    assert proposed == [uninterrupted[n][2] for n in sorted(uninterrupted)]  # a restarted sampler repeated trial 0


def two_workers(tmp_path: Path, storage: str, trials: int = 6) -> None:
    """Two processes on one study; together they finish exactly ``trials`` trials, none run twice."""
    config = write(tmp_path, trials=trials, pruner="none")
    command = ["search", str(config), "--storage", storage, "--study", "shared"]
    workers = [
        subprocess.Popen(
            cli_command(*command, "--out", str(tmp_path / f"worker{i}")),
            env={**env(), "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == trials
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both workers ran trials
    ran = [p for i in range(2) for p in (tmp_path / f"worker{i}" / "trials").glob("*/result.json")]
    assert sorted(int(p.parent.name) for p in ran) == sorted(t.number for t in done)  # each trial ran once
    for i in range(2):  # both workers wrote the same view of the study
        assert len(rows(tmp_path / f"worker{i}" / "candidates.csv")) >= len(done) - 1


def test_two_workers_share_a_journal_file(tmp_path):
    two_workers(tmp_path, str(tmp_path / "study.journal"))


@pytest.mark.skipif(
    not os.environ.get("AUTOPEFT_TEST_POSTGRES_URL"),
    reason="needs a PostgreSQL server: .ci/run starts one (see .ci/postgres.sh)",
)
def test_two_workers_share_a_postgresql_study(tmp_path):
    storage = os.environ["AUTOPEFT_TEST_POSTGRES_URL"]
    optuna.delete_study(study_name="shared", storage=storage) if "shared" in optuna.get_all_study_names(
        storage
    ) else None
    two_workers(tmp_path, storage)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--storage", "postgresql+psycopg://nobody@127.0.0.1:1/none"],
            "--storage postgresql+psycopg://nobody@127.0.0.1:1/none: cannot open",
        ),
        (["--resume"], "holds no run to continue"),
        (["--set", "pareto=true"], "pruner: 'median' stops trials on one metric"),
        (["--set", "budget=10"], "budget: got 10 trainable parameters; allowed: >= "),
        (["--set", "sampler=grid"], "sampler: got 'grid'"),
    ],
)
def test_bad_sweeps_fail_on_one_line_and_write_nothing(tmp_path, args, message, run_cli):
    out = tmp_path / "run"
    code, stderr = run_cli("search", str(write(tmp_path)), "--out", str(out), *args)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_trial_parameter_counts_match_the_built_model():
    config = SweepConfig()  # the default: the full space on the demo backbone
    prepared = prepare(config)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(4):
        subnet = suggest(study.ask(), prepared.space, prepared.depth)
        model = build_demo_architecture("vit_demo_fmnist", 10)
        expected = count_trainable(apply(model, method_config(prepared.space, subnet)))
        assert params_of(config, prepared.space, subnet) == expected


def test_retrain_runs_the_best_trial_per_seed_and_reports_mean_and_std(tmp_path):
    out = tmp_path / "run"
    assert cli("search", str(write(tmp_path, trials=2)), "--out", str(out)).returncode == 0
    done = cli("retrain", str(out), "--seeds", "0", "1")
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "retrain" / "result.json").read_text())
    seeds = [json.loads((out / "retrain" / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
    assert [r["seed"] for r in seeds] == [0, 1] and all(r["provenance"]["train_split"] == "trainval" for r in seeds)
    assert result["test_acc"] == statistics.mean(r["test_acc"] for r in seeds)
    assert result["test_acc_std"] == statistics.stdev(r["test_acc"] for r in seeds)
    assert result["methods"] == json.loads((out / "result.json").read_text())["methods"]
    report = cli("report", str(out / "retrain"), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert f"{result['test_acc']:.2f}" in (tmp_path / "report" / "leaderboard.md").read_text()
    missing = cli("retrain", str(tmp_path), "--seeds", "0")
    assert missing.returncode == 2 and "best.yaml missing" in missing.stderr
    shorter = cli("retrain", str(out), "--seeds", "0", "--set", "train.epochs=2", "--out", str(tmp_path / "shorter"))
    assert shorter.returncode == 0, shorter.stderr
    assert " +- " in done.stdout and " +- " not in shorter.stdout  # one seed has no spread to print
    assert json.loads((tmp_path / "shorter" / "seed0" / "result.json").read_text())["epochs"] == 2 != seeds[0]["epochs"]
    bad = cli("retrain", str(out), "--seeds", "0", "--set", "train.epoch=2", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "train: unknown option 'epoch'" in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_kfold_re_scores_the_shortlist_and_chooses_among_it(tmp_path):
    out = tmp_path / "run"
    kfold = ["--set", "selection.mode=kfold", "--set", "selection.folds=2", "--set", "selection.shortlist=2"]
    done = cli("search", str(write(tmp_path, trials=3, pruner="none")), "--out", str(out), *kfold)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    shortlist = [r for r in rows(out / "candidates.csv")][:2]
    names = [f"trial{int(r['round']):04d}" for r in shortlist]
    assert sorted(p.name for p in (out / "shortlist").iterdir()) == sorted(
        f"{n}-fold{k}" for n in names for k in (0, 1)
    )
    selection = result["selection"]
    assert (selection["mode"], selection["folds"], selection["race"]) == ("kfold", 2, False)
    assert selection["choice"]["winner"] in names and set(selection["choice"]["tied"]) <= set(names)
    winner = selection["evidence"][selection["choice"]["winner"]]
    assert winner["n"] == 1000 and result["val_acc"] == winner["accuracy"]  # pooled over both folds of train+val
    assert result["best_trial"] == int(selection["choice"]["winner"].removeprefix("trial"))
    assert json.loads((out / "selection.json").read_text()) == selection
    assert "Selection: scored on 2 folds of train+val" in done.stdout and "| candidate |" in done.stdout


def test_a_search_killed_at_seeded_moments_ends_as_the_uninterrupted_one(tmp_path):
    """Five SIGKILLs at seeded moments, each resumed: the same proposals in the same order, each trained to its
    last epoch once, and the lock free."""
    config = write(tmp_path, trials=4, pruner="none", retries=5, train={**SWEEP["train"], "epochs": 8})
    whole, out = tmp_path / "whole", tmp_path / "killed"
    assert cli("search", str(config), "--out", str(whole)).returncode == 0
    kill_and_resume(["search", str(config)], out, epochs=4 * 8, seed=5)
    uninterrupted, resumed = (finished(f"sqlite:///{d / 'study.db'}") for d in (whole, out))
    assert [resumed[n][2] for n in sorted(resumed)] == [uninterrupted[n][2] for n in sorted(uninterrupted)]
    assert [r["subnet"] for r in rows(out / "candidates.csv")] == [r["subnet"] for r in rows(whole / "candidates.csv")]
    for number in resumed:  # each proposal trained once, to its last epoch (a killed trial continued in its folder)
        history = [json.loads(line) for line in (out / "trials" / f"{number:04d}" / "metrics.jsonl").open()]
        assert [h["epoch"] for h in history] == list(range(1, 9))
    assert len(list((out / "trials").glob("*/result.json"))) == len(resumed) == 4
    with locked(out):  # no process holds the run directory
        pass
