"""`autopeft run` end to end in real subprocesses on a tiny ViT: files, protocol, resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from autopeft.errors import ConfigError
from autopeft.jobs.rundir import locked
from autopeft.runconfig import load_run_config
from autopeft.search.pipeline import parse_pipeline
from tests.killpoints import epochs_done, kill_and_resume
from tests.test_train import TINY, cli

CONFIG = {
    "backbone": {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY},
    "data": {"name": "digits"},
    "space": {"methods": {"lora": {"sizes": [0, 2, 4]}, "adapter": {"sizes": [0, 4]}, "vpt": {"sizes": [0, 2]}}},
    "supernet": {"train": {"epochs": 2, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0}},
    "search": {"evolution": {"population": 6, "parents": 2, "mutations": 3, "crossovers": 3, "generations": 2}},
    "retrain": {
        "top_k": 3,
        "train": {"epochs": 2, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0},
        "select_epochs": 1,
        "seeds": [0, 1],
    },
    "baselines": ["linear", "lora"],
}


def write(folder: Path, config: dict = CONFIG) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/result.json"))]


def test_run_writes_every_file_and_reads_test_only_in_the_final_runs(tmp_path):
    done = cli("run", str(write(tmp_path)), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "result.json").read_text())
    assert summary["command"] == "run" and summary["status"] == "completed"
    assert [row["name"] for row in summary["table"]] == ["searched", "linear", "lora"]
    lora = summary["table"][2]["params"]  # the default budget: the largest baseline at its default size
    assert summary["budget"] == lora == 2 * 8 * 64 * 2 and summary["trainable_params"] <= lora
    with (run / "candidates.csv").open() as handle:
        candidates = list(csv.DictReader(handle))
    assert len(candidates) == summary["candidates"] >= 6
    with (run / "pareto.csv").open() as handle:
        assert {row["subnet"] for row in csv.DictReader(handle)} <= {row["subnet"] for row in candidates}
    selection = results(run / "retrain") + results(run / "baselines")
    assert len(selection) == 3 + 2 and all(r["test_acc"] is None and r["val_acc"] is not None for r in selection)
    assert {r["epochs"] for r in selection} == {1}  # the short selection schedule
    finals = [json.loads(p.read_text()) for p in (run / "final").glob("*/seed*/result.json")]
    assert len(finals) == 3 * 2 and all(r["test_acc"] is not None and r["val_acc"] is None for r in finals)
    assert {r["epochs"] for r in finals} == {2}
    searched = [json.loads((run / "final" / "searched" / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
    assert summary["test_acc"] == sum(r["test_acc"] for r in searched) / 2
    best = load_run_config(run / "best.yaml")
    assert best.final and best.methods == summary["methods"] and best.methods == searched[0]["methods"]
    assert "kendall_tau" not in summary  # a tau over the top-k means nothing; results/ranking.md measures it
    assert set(summary["search_cost_s"]) == {"supernet", "search", "retrain_top_k"}
    retrain_s = sum(r["wall_time_s"] for r in results(run / "retrain"))
    assert summary["search_cost_s"]["retrain_top_k"] == round(retrain_s, 2)
    assert all(seconds > 0 for seconds in summary["search_cost_s"].values())
    one_run = sum(r["wall_time_s"] for r in searched) / 2
    assert summary["table"][0]["run_s"] == round(one_run, 2)
    assert summary["search_cost_ratio"] == round(sum(summary["search_cost_s"].values()) / round(one_run, 2), 2)
    assert "| searched |" in done.stdout and "| linear | 0 |" in done.stdout
    scored = re.findall(r"search: (\d+)/12 candidates scored, best so far val [\d.]+%", done.stderr)  # 6 + 1 x (3 + 3)
    assert [int(n) for n in scored] == list(range(1, len(candidates) + 1))  # 12 planned: a line per candidate


def test_search_engine_supernet_is_the_pipeline_stopped_at_its_val_winner(tmp_path):
    config = write(tmp_path)
    assert cli("run", str(config), "--out", str(tmp_path / "run")).returncode == 0
    out = tmp_path / "search"
    done = cli("search", str(config), "--engine", "supernet", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["command"] == "search" and result["engine"] == "supernet" and result["status"] == "completed"
    assert result["test_acc"] is None and result["provenance"]["test_read"] is False
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",  # the run directory's writer lock, free once the command ended
        "best.yaml",
        "candidates.csv",
        "config.yaml",
        "pareto.csv",
        "result.json",
        "retrain",
        "search_time.json",
        "selection.json",
        "supernet",
    ]
    standalone = results(out / "retrain")
    assert len(standalone) == 3 and all(r["test_acc"] is None for r in standalone)
    assert {"methods": result["methods"], "val_acc": result["val_acc"]} in [
        {"methods": r["methods"], "val_acc": r["val_acc"]} for r in standalone
    ]
    for name in ("candidates.csv", "best.yaml"):  # the same stages as `autopeft run`, to the same winner
        assert (out / name).read_text() == (tmp_path / "run" / name).read_text()
    assert load_run_config(out / "best.yaml").methods == result["methods"]
    tested = cli("retrain", str(out), "--seeds", "0", "--out", str(tmp_path / "tested"))
    assert tested.returncode == 0, tested.stderr
    run_seed0 = json.loads((tmp_path / "run" / "final" / "searched" / "seed0" / "result.json").read_text())
    assert json.loads((tmp_path / "tested" / "result.json").read_text())["test_acc"] == run_seed0["test_acc"]
    again = cli("search", str(config), "--engine", "supernet", "--out", str(out))
    assert again.returncode == 2 and "pass --resume" in again.stderr


def test_run_killed_mid_pipeline_resumes_to_the_same_result(tmp_path):
    config = write(tmp_path)
    whole = cli("run", str(config), "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    env_cmd = ["run", str(config), "--out", str(out)]
    process = subprocess.Popen(cli_command(*env_cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.time() + 300
    while not (out / "retrain" / "02" / "result.json").is_file() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "result.json").is_file()
    resumed = cli(*env_cmd, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    first, second = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("whole", "killed"))
    assert untimed(first["table"]) == untimed(second["table"]) and first["methods"] == second["methods"]
    assert (tmp_path / "whole" / "candidates.csv").read_text() == (out / "candidates.csv").read_text()
    # the search ran in the killed session: its time is kept, not replaced by the replay's near-zero
    searched = json.loads((out / "search_time.json").read_text())["wall_s"]
    assert second["compute"]["search"]["wall_s"] == round(searched, 2) > 0.3 * first["compute"]["search"]["wall_s"]
    assert second["wall_time_s"] == round(sum(stage["wall_s"] for stage in second["compute"].values()), 2)
    again = cli("run", str(out / "config.yaml"), "--out", str(out), "--resume", "--set", "seed=1")
    assert again.returncode == 2 and f"--resume: seed differs from the run {out} was started with" in again.stderr
    assert json.loads((out / "result.json").read_text()) == second


def untimed(table: list[dict]) -> list[dict]:
    """A result table without its wall times, which differ between any two runs."""
    return [
        {**{k: v for k, v in row.items() if k != "run_s"}, "compute": {**row["compute"], "wall_s": 0}} for row in table
    ]


def cli_command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "autopeft.cli", *args]


def env() -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_existing_run_directory_needs_resume(tmp_path, run_cli):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("x: 1\n")
    code, stderr = run_cli("run", str(write(tmp_path)), "--out", str(tmp_path / "run"))
    assert code == 2 and "pass --resume" in stderr and len(stderr.splitlines()) == 1


def test_bad_pipeline_configs_fail_on_one_line(tmp_path, run_cli):
    for config, problem in [
        ({**CONFIG, "bogus": 1}, "unknown option 'bogus'"),
        ({**CONFIG, "search": {"engine": "grid"}}, "search.engine: got 'grid'"),
        ({**CONFIG, "retrain": {"top_k": 0}}, "top_k >= 1"),
        ({**CONFIG, "space": "nonexistent"}, "space: "),
        ({**CONFIG, "space": {"methods": {"lora": {"sizes": [0, 2], "search": {"targets": ["q"]}}}}}, "targets"),
        ({**CONFIG, "search": {"budget": 10}}, "search.budget: got 10 trainable parameters; allowed: >= 64,"),
        (  # a space the backbone cannot host (VPT on a CNN)
            {**CONFIG, "backbone": {"name": "resnet18", "pretrained": False}},
            "vpt: needs a transformer's token blocks; backbone 'resnet18' is a CNN (resnet)",
        ),
    ]:
        code, stderr = run_cli("run", str(write(tmp_path, config)), "--out", str(tmp_path / "never"))
        assert code == 2, (problem, stderr)
        assert problem in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert not (tmp_path / "never").exists()


def test_a_relative_space_path_resolves_against_the_config_file(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "tiny_space.yaml").write_text("methods: {lora: {sizes: [0, 2]}, ssf: {sizes: [0, 1]}}\n")
    retrain = {**CONFIG["retrain"], "top_k": 2, "seeds": [0], "final_baselines": "best"}
    config = {**CONFIG, "space": "tiny_space.yaml", "retrain": retrain}
    done = cli("run", str(write(folder, config)), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    baselines = {
        name: json.loads((tmp_path / "run" / "baselines" / name / "result.json").read_text())
        for name in ["linear", "lora"]
    }
    best = max(baselines, key=lambda name: (baselines[name]["val_acc"], -baselines[name]["val_loss"]))
    assert sorted(p.name for p in (tmp_path / "run" / "final").iterdir()) == sorted(["searched", best])
    assert [(r["name"], r["seeds_run"]) for r in summary["table"]] == [
        ("searched", 1),
        ("linear", int(best == "linear")),
        ("lora", int(best == "lora")),
    ]
    assert "not run (not best on val)" in done.stdout
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["space"] == str(folder / "tiny_space.yaml")
    with (tmp_path / "run" / "candidates.csv").open() as handle:
        methods = {name for row in csv.DictReader(handle) for name in json.loads(row["subnet"])["sizes"]}
    assert methods == {"lora", "ssf"}


def test_finalists_tried_at_several_learning_rates_carry_the_winners_lr(tmp_path):
    config = {**CONFIG, "retrain": {**CONFIG["retrain"], "top_k": 2, "lrs": [0.003, 0.03]}}
    out = tmp_path / "search"
    done = cli("search", str(write(tmp_path, config)), "--engine", "supernet", "--out", str(out))
    assert done.returncode == 0, done.stderr
    runs = {p.parent.name: json.loads(p.read_text()) for p in (out / "retrain").glob("*/result.json")}
    assert sorted(runs) == ["01-lr0.003", "01-lr0.03", "02-lr0.003", "02-lr0.03"]
    winner = max(runs, key=lambda name: (runs[name]["val_acc"], -runs[name]["val_loss"]))
    best = load_run_config(out / "best.yaml")
    assert best.train.lr == runs[winner]["schedule"]["lr"] == float(winner.split("-lr")[1])
    result = json.loads((out / "result.json").read_text())
    assert result["train"]["lr"] == best.train.lr and result["val_acc"] == runs[winner]["val_acc"]
    retrain_images = sum(r["compute"]["train_images"] for r in runs.values())
    assert result["compute"]["train_images"] > retrain_images  # the supernet's training counted too


def test_a_search_key_the_engine_does_not_read_is_refused():
    """`search.trials` used to be accepted and silently ignored by the default evolution engine."""
    with pytest.raises(ConfigError, match=r"run.yaml: search.trials: the evolution engine does not read it"):
        parse_pipeline({"search": {"trials": 8}}, "run.yaml")
    with pytest.raises(ConfigError, match=r"run.yaml: search.evolution: search.engine tpe does not read it"):
        parse_pipeline({"search": {"engine": "tpe", "evolution": {"population": 4}}}, "run.yaml")
    assert parse_pipeline({"search": {"engine": "tpe", "trials": 8}}, "run.yaml").search.trials == 8
    saved = asdict(parse_pipeline({}, "run.yaml"))  # a run directory's config.yaml spells out every key
    assert parse_pipeline(saved, "config.yaml") == parse_pipeline({}, "run.yaml")


def test_run_killed_at_seeded_moments_ends_as_the_uninterrupted_one(tmp_path):
    """Five SIGKILLs at seeded moments over every stage, each resumed: the same table, candidates and choice,
    every run trained once, the lock free."""
    config, whole, out = write(tmp_path), tmp_path / "whole", tmp_path / "killed"
    assert cli("run", str(config), "--out", str(whole)).returncode == 0
    kill_and_resume(["run", str(config)], out, epochs=18, seed=3)
    first, second = (json.loads((d / "result.json").read_text()) for d in (whole, out))
    assert untimed(first["table"]) == untimed(second["table"]) and first["methods"] == second["methods"]
    for name in ("candidates.csv", "best.yaml"):
        assert (whole / name).read_text() == (out / name).read_text()
    chosen = (json.loads((d / "selection.json").read_text())["choice"] for d in (whole, out))
    assert next(chosen) == next(chosen)
    for metrics in out.rglob("metrics.jsonl"):  # every run trained each epoch once
        trained = [json.loads(line)["epoch"] for line in metrics.open()]
        assert trained == list(range(1, len(trained) + 1)), metrics
    assert epochs_done(out) == epochs_done(whole)
    with locked(out):
        pass
