"""scripts/ledger.py: the committed records of finished runs bring a run cache to a fresh clone, where a
cached run is read back, not trained again."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from autopeft.jobs.train import cached_run
from autopeft.runconfig import load_run_config
from autopeft.runkey import config_key
from tests.test_train import write_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ledger.py"


def ledger_module():
    spec = importlib.util.spec_from_file_location("ledger", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saved_records_are_read_back_in_a_fresh_cache_without_training(tmp_path):
    ledger = ledger_module()
    config = load_run_config(write_config(tmp_path, epochs=1))
    trained = cached_run(config, tmp_path / "cache")
    (tmp_path / "cache" / "interrupted").mkdir()  # no result.json: not a finished run, never saved

    assert ledger.copy_records(tmp_path / "cache", tmp_path / "ledger", "*") == 1
    assert ledger.copy_records(tmp_path / "cache", tmp_path / "ledger", "*") == 0  # already there
    saved = tmp_path / "ledger" / config_key(config)
    assert sorted(p.name for p in saved.iterdir()) == ["config.yaml", "result.json", "val_outcomes.npz"]  # no weights

    assert ledger.copy_records(tmp_path / "ledger", tmp_path / "fresh", "*") == 1
    assert cached_run(config, tmp_path / "fresh") == trained
    assert not (tmp_path / "fresh" / config_key(config) / "checkpoint.pt").exists()  # read back, not trained
