"""The evidence scripts continue where they stopped: a finished search is read back only with the config it ran
with, recorded tasks survive a run of other tasks, and a pruning source restored without weights is trained
again to the same result, and one that failed is refused with its record kept."""

from __future__ import annotations

import importlib.util
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pytest

from autopeft.api import WEIGHTS_FILE
from autopeft.errors import ConfigError
from autopeft.jobs.rundir import RESULT
from autopeft.jobs.train import cached_run
from autopeft.records import Compute, RunRecord, SearchRecord
from autopeft.runconfig import dump_yaml, load_run_config
from autopeft.runkey import config_key
from tests.test_train import write_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


@pytest.fixture
def script(monkeypatch):
    """Loads ``scripts/<name>.py`` as a module, with the scripts folder importable as when it runs."""
    monkeypatch.syspath_prepend(str(SCRIPTS))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"script_{name.replace('/', '_')}", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        return module

    return load


def search_record() -> SearchRecord:
    return SearchRecord(
        dataset="digits", methods={"lora": {"rank": 4}}, trainable_params=1234, val_acc=81.5, engine="optuna", seed=1
    )


def test_a_finished_search_is_read_back_only_with_its_config(script, tmp_path):
    svs = script("search_vs_sweep")
    config = {"space": {"lora": {"rank": [2, 4]}}, "trials": 6, "train": {"lr": 0.01, "epochs": 20}, "seed": 1}
    out = tmp_path / "tpe_seed1"
    out.mkdir()
    (out / "config.yaml").write_text(dump_yaml(config))
    assert svs.finished(out, config) is None  # no result.json: still running, resumed by the caller

    search_record().write(out / RESULT)
    assert svs.finished(out, config) == search_record()

    changed = {**config, "trials": 8, "train": {"lr": 0.03, "epochs": 20}}
    with pytest.raises(ConfigError, match=r"tpe_seed1: finished with another train\.lr, trials; move it away"):
        svs.finished(out, changed)

    RunRecord(dataset="digits", methods={}, trainable_params=10).write(out / RESULT)
    with pytest.raises(ConfigError, match="a 'train' result, not a search"):
        svs.finished(out, config)


def test_search_vs_sweep_json_round_trips_through_its_task_records(script):
    svs = script("search_vs_sweep")
    recorded = json.loads(svs.JSON.read_text())
    assert recorded, "the committed comparison holds at least one task"
    for task in recorded:
        assert json.loads(json.dumps(asdict(svs.TaskResult.from_json(task)))) == {"priced": 0, **task}


def test_search_vs_sweep_plan_counts_what_is_done(script, tmp_path):
    svs = script("search_vs_sweep")
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    first = svs.grid_jobs("digits", cache)[0]
    done = cache / config_key(svs.run_config(*first[:5]))
    done.mkdir(parents=True)
    (done / "config.yaml").write_text(dump_yaml(svs.run_config(*first[:5]).to_dict()))
    RunRecord("digits", first[1], 0, backbone=svs.BACKBONE, compute=Compute(8000, 0, 80.0)).write(done / RESULT)
    (runs / "digits" / "tpe_seed1").mkdir(parents=True)
    (runs / "digits" / "tpe_seed1" / RESULT).write_text("{}")  # a search's is only looked for
    rows = [line.split() for line in svs.plan(["digits"], cache, runs, 2).splitlines()[1:6]]
    recorded = next(t for t in json.loads(svs.JSON.read_text()) if t["task"] == "digits")
    finals = {json.dumps([c["methods"], c["lr"]]) for s in recorded["strategies"] for c in s["choices"]}
    counts = [(int(r[-3]), int(r[-2])) for r in rows]  # runs, done
    assert counts == [(51, 1), (2, 0), (2, 1), (2, 0), (3 * len(finals), 0)]
    assert all(float(r[-1]) > 0 for r in rows)  # every stage has runs left to price
    # measured on the cached run: 80 s over its schedule's 10 x 800 training and 10 x 200 val images (a third each)
    assert "lora 9.2 ms" in svs.plan(["digits"], cache, runs, 2)


def test_cnn_transfer_keeps_recorded_tasks_of_the_same_setup_only(script, tmp_path):
    cnn = script("cnn_transfer")
    committed = json.loads((ROOT / "results" / "bench" / "cnn_transfer.json").read_text())
    path = tmp_path / "cnn_transfer.json"
    path.write_text(json.dumps(committed))
    setup = cnn.Setup(img_size=committed["img_size"], quick_epochs=committed["quick_epochs"])

    kept = cnn.recorded(path, setup)
    assert list(kept) == [t["task"] for t in committed["tasks"]]
    assert [json.loads(json.dumps(asdict(t))) for t in kept.values()] == committed["tasks"]
    assert cnn.recorded(path, cnn.Setup(img_size=committed["img_size"] + 32)) == {}  # another input size
    assert cnn.recorded(tmp_path / "missing.json", setup) == {}


def test_a_pruning_source_restored_without_weights_is_trained_again_identically(script, tmp_path):
    e2vpt = script("e2vpt")
    config = load_run_config(write_config(tmp_path, epochs=1))
    cache = tmp_path / "cache"
    weights = cache / config_key(config) / WEIGHTS_FILE
    with ProcessPoolExecutor(1) as pool:  # both trainings in the script's 1-thread job, as when it runs
        (trained,) = e2vpt.run_all(pool, [config], cache, "digits: source")
        original = weights.read_bytes()
        weights.unlink()  # what scripts/ledger.py restores: the records alone
        e2vpt.with_weights(pool, [config], cache, "digits")
    assert weights.read_bytes() == original
    retrained = cached_run(config, cache)
    assert (retrained.val_acc, retrained.val_loss, retrained.trainable_params) == (
        trained.val_acc,
        trained.val_loss,
        trained.trainable_params,
    )


def test_a_pruning_source_that_failed_is_refused_and_kept(script, tmp_path):
    e2vpt = script("e2vpt")
    config = load_run_config(write_config(tmp_path, epochs=1))
    run = tmp_path / "cache" / config_key(config)
    run.mkdir(parents=True)
    failed = RunRecord("digits", config.methods, 0, status="failed", reason="non-finite loss at epoch 1")
    failed.write(run / RESULT)
    with ProcessPoolExecutor(1) as pool, pytest.raises(ConfigError, match=r"ended failed \(non-finite loss"):
        e2vpt.with_weights(pool, [config], tmp_path / "cache", "digits")
    assert (run / RESULT).is_file()  # the record is kept: nothing retrained or deleted


def test_reports_show_the_command_for_every_task_and_the_recorded_time(script):
    jobs = script("lib/study")
    argv = ["--part", "evidence", "--tasks", "digits", "mnist5k", "--workers", "2", "--tasks=shapes_position"]
    assert jobs.report_command("scripts/e2vpt.py", argv) == (
        "HF_HUB_OFFLINE=1 python scripts/e2vpt.py --part evidence --workers 2"
    )
    assert jobs.recorded_time({"digits": 7200.0, "mnist5k": 5400.0}) == (
        "Recorded run time, 1 thread per run: digits 2.0 h, mnist5k 1.5 h; 3.5 h in all."
    )
    assert jobs.recorded_time({"digits": None, "mnist5k": 5400.0}) == (
        "Recorded run time, 1 thread per run: digits not recorded, mnist5k 1.5 h; 1.5 h for the tasks recorded."
    )
