"""`autopeft run` end to end in real subprocesses on a tiny ViT: files, protocol, resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import yaml

from autopeft.runconfig import load_run_config
from tests.test_train import TINY, cli

CONFIG = {
    "backbone": {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY},
    "data": {"name": "digits"},
    "space": {"methods": {"lora": {"sizes": [0, 2, 4]}, "adapter": {"sizes": [0, 4]}, "vpt": {"sizes": [0, 2]}}},
    "supernet": {"train": {"epochs": 2, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0}},
    "search": {"evolution": {"population": 6, "parents": 2, "mutations": 3, "crossovers": 3, "generations": 2}},
    "retrain": {"top_k": 3, "train": {"epochs": 1, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0}, "seeds": [0, 1]},
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
    with (run / "candidates.csv").open() as handle:
        candidates = list(csv.DictReader(handle))
    assert len(candidates) == summary["candidates"] >= 6
    with (run / "pareto.csv").open() as handle:
        assert {row["subnet"] for row in csv.DictReader(handle)} <= {row["subnet"] for row in candidates}
    selection = results(run / "retrain") + results(run / "baselines")
    assert len(selection) == 3 + 2 and all(r["test_acc"] is None and r["val_acc"] is not None for r in selection)
    finals = [json.loads(p.read_text()) for p in (run / "final").glob("*/seed*/result.json")]
    assert len(finals) == 3 * 2 and all(r["test_acc"] is not None and r["val_acc"] is None for r in finals)
    searched = [json.loads((run / "final" / "searched" / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
    assert summary["test_acc"] == sum(r["test_acc"] for r in searched) / 2
    best = load_run_config(run / "best.yaml")
    assert best.final and best.methods == summary["methods"] and best.methods == searched[0]["methods"]
    assert summary["kendall_tau"] is None or -1.0 <= summary["kendall_tau"] <= 1.0
    assert "| searched |" in done.stdout and "| linear | 0 |" in done.stdout


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
    assert first["table"] == second["table"] and first["methods"] == second["methods"]
    assert (tmp_path / "whole" / "candidates.csv").read_text() == (out / "candidates.csv").read_text()
    again = cli("run", str(out / "config.yaml"), "--out", str(out), "--resume", "--set", "seed=1")
    assert again.returncode == 2 and "differs from the one" in again.stderr
    assert json.loads((out / "result.json").read_text()) == second


def cli_command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "autopeft.cli", *args]


def env() -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_existing_run_directory_needs_resume(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("x: 1\n")
    result = cli("run", str(write(tmp_path)), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "pass --resume" in result.stderr and len(result.stderr.splitlines()) == 1


def test_bad_pipeline_configs_fail_on_one_line(tmp_path):
    for config, problem in [
        ({**CONFIG, "bogus": 1}, "unknown option 'bogus'"),
        ({**CONFIG, "search": {"engine": "grid"}}, "search.engine: got 'grid'"),
        ({**CONFIG, "retrain": {"top_k": 0}}, "top_k >= 1"),
        ({**CONFIG, "space": "nonexistent"}, "space: "),
        ({**CONFIG, "space": {"methods": {"lora": {"sizes": [0, 2], "search": {"targets": ["q"]}}}}}, "targets"),
    ]:
        result = cli("run", str(write(tmp_path, config)), "--out", str(tmp_path / "never"))
        assert result.returncode == 2, (problem, result.stderr)
        assert problem in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
