"""Typed result records: round trips, the schema-1 reader, seed statistics, compute, and report rows keyed
by configuration. Pure logic: records are written and read, nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopeft.errors import ConfigError
from autopeft.records import (
    Compute,
    FinalRow,
    PipelineRecord,
    Provenance,
    RunRecord,
    Schedule,
    SeedStats,
    read_record,
    record_from_json,
)
from autopeft.report.load import load_runs
from autopeft.report.table import build_leaderboard


def run_record(seed: int, epochs: int, test: float, key: str) -> RunRecord:
    return RunRecord(
        dataset="digits",
        methods={"lora": {"rank": 8}},
        trainable_params=24576,
        backbone="vit_demo_fmnist",
        seed=seed,
        epochs=epochs,
        config_key=f"{key}-{seed}",
        row_key=key,
        schedule=Schedule(epochs, 0.01, 1e-4, 64, 1),
        test_acc=test,
        wall_time_s=3.0,
        compute=Compute(800 * epochs, 200 * epochs + 797, 3.0),
        provenance=Provenance(device="cpu", threads=1),
    )


def test_seed_statistics_have_one_rule():
    assert SeedStats.of([90.0, 92.0, None]).mean == 91.0
    assert SeedStats.of([90.0, 92.0]).std == pytest.approx(2**0.5)
    assert SeedStats.of([90.0]).std is None and SeedStats.of([]).mean is None and len(SeedStats.of([1.0, None])) == 1


def test_compute_adds_and_weighs_evaluation_as_a_third():
    total = Compute.total([Compute(800, 300, 1.5), Compute(200, 0, 0.5)])
    assert total == Compute(1000, 300, 2.0) and total.images == 1100.0


def test_records_round_trip_through_json(tmp_path):
    record = run_record(0, 10, 95.5, "abc")
    record.write(tmp_path / "result.json")
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["command"] == "train" and data["schema"] == 2 and data["compute"]["train_images"] == 8000
    assert read_record(tmp_path / "result.json") == record
    row = FinalRow.of_runs("lora", record.methods, 24576, 97.0, [run_record(s, 10, 90.0 + s, "abc") for s in (0, 1)])
    assert (row.test_acc, row.seeds_completed, row.row_key, row.compute.train_images) == (90.5, 2, "abc", 16000)
    pipeline = PipelineRecord(dataset="digits", methods={}, table=[row])
    assert record_from_json(json.loads(json.dumps(pipeline.to_json())), "x") == pipeline


def test_schema_1_results_still_load():
    old = {
        "command": "run",
        "dataset": "digits",
        "methods": {"lora": {"rank": 2}},
        "kendall_tau": 0.1,  # a key the records no longer keep
        "table": [
            {
                "name": "searched",
                "methods": {},
                "params": 5,
                "val_acc": 50.0,
                "test_acc": 51.0,
                "test_acc_std": 1.0,
                "seeds_run": 2,
                "seeds_completed": 2,
                "run_s": 3.0,
            }
        ],
        "wall_time_s": 10.0,
        "provenance": {"autopeft": "0.1.0", "train_split": "trainval", "gone": 1},
    }
    record = record_from_json(old, "old/result.json")
    assert isinstance(record, PipelineRecord) and record.table[0].test_acc == 51.0
    assert record.table[0].test_accs == [] and record.provenance.autopeft == "0.1.0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"command": "train"}, "r.json: missing required keys dataset, methods, trainable_params"),
        ({"command": "fly"}, "r.json: 'command' is 'fly'; expected one of train, search, run, retrain, select"),
        ({"command": "train", "schema": 9}, "r.json: schema 9; this autopeft reads schemas 1 and 2"),
        ([], "r.json: expected a JSON object, got list"),
    ],
)
def test_malformed_records_are_one_line(data, message):
    with pytest.raises(ConfigError) as err:
        record_from_json(data, "r.json")
    assert str(err.value) == message


def test_report_pools_seeds_of_one_configuration_only(tmp_path):
    runs = {"a": run_record(0, 1, 30.0, "one-epoch"), "b": run_record(1, 1, 40.0, "one-epoch")}
    runs["c"] = run_record(0, 3, 80.0, "three-epochs")
    for name, record in runs.items():
        (tmp_path / name).mkdir()
        record.write(tmp_path / name / "result.json")
    board = build_leaderboard(load_runs([tmp_path / name for name in runs]).entries)
    cells = {row.name: row.cells["digits"] for row in board.rows}
    one, three = "lora [1 ep, lr 0.01, wd 0.0001, bs 64]", "lora [3 ep, lr 0.01, wd 0.0001, bs 64]"
    assert set(cells) == {one, three}
    assert (cells[one].mean, cells[one].seeds) == (35.0, 2) and (cells[three].mean, cells[three].seeds) == (80.0, 1)


def test_one_configuration_keeps_the_plain_row_name(tmp_path: Path):
    for seed in (0, 1):
        (tmp_path / str(seed)).mkdir()
        run_record(seed, 1, 30.0 + seed, "same").write(tmp_path / str(seed) / "result.json")
    board = build_leaderboard(load_runs([tmp_path / "0", tmp_path / "1"]).entries)
    assert [(row.name, row.cells["digits"].seeds) for row in board.rows] == [("lora", 2)]
