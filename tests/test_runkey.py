"""The run key: what enters it, what stays out, and that keys already made never move."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from autopeft.runconfig import parse_run_config
from autopeft.runkey import config_key, row_key

BASE = {
    "backbone": {"name": "vit_demo_fmnist"},
    "data": {"name": "digits"},
    "methods": {"lora": {"rank": 4}},
    "train": {"epochs": 10, "lr": 0.01},
}


def config(**train):
    return parse_run_config({**BASE, "train": {**BASE["train"], **train}}, "test")


def test_key_is_pinned_so_cached_runs_stay_reusable():
    # Made by the first run cache; a change here orphans every cached run and needs a migration.
    assert config_key(config()) == "8d8a0a0fe88ad4d4"


def test_seed_splits_config_keys_but_not_row_keys():
    a, b = config(), dataclasses.replace(config(), seed=1)
    assert config_key(a) != config_key(b)
    assert row_key(a) == row_key(b)


def test_device_stays_out_of_the_key():
    assert config_key(config(device="cpu")) == config_key(config(device="auto"))


def test_a_later_field_enters_the_key_only_away_from_its_default():
    assert config_key(config(amp="auto")) == config_key(config())
    assert config_key(config(amp="bf16")) != config_key(config())


def test_a_start_from_saved_weights_keys_on_their_content_not_their_path(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter.safetensors").write_bytes(b"same weights")
    a, b = (dataclasses.replace(config(), init=str(tmp_path / name)) for name in ("a", "b"))
    assert config_key(a) == config_key(b) != config_key(config())
    (tmp_path / "b" / "adapter.safetensors").write_bytes(b"other weights")
    assert config_key(dataclasses.replace(b)) != config_key(a)


TRIAL = {  # one trial of the default sweep (the full space on digits)
    **{f"lora.{i}": r for i, r in enumerate((2, 8, 8, 16, 0, 4))},
    **{f"adapter.{i}": k for i, k in enumerate((8, 32, 16, 0, 16, 8))},
    **{f"vpt.{i}": p for i, p in enumerate((5, 10, 5, 10, 10, 50))},
    **{f"kv_prompt.{i}": t for i, t in enumerate((10, 5, 0, 1, 10, 1))},
    **{f"ssf.{i}": on for i, on in enumerate((0, 0, 0, 0, 0, 1))},
    "lora.alpha": 8.0,
    "adapter.position": "parallel",
    "adapter.scale": 4.0,
    "lr": 0.0014081551171078593,
    "weight_decay": 0.0004100183366103222,
}


def test_the_runs_of_a_sweep_a_pipeline_and_a_suite_keep_their_keys():
    # The run configs the commands make from their defaults, keyed as when the studies' caches were filled:
    # a change here orphans those runs.
    import optuna

    from autopeft.runconfig import read_yaml
    from autopeft.search.pipeline import _run_config, parse_pipeline
    from autopeft.search.select import _selection_run, data_configs, parse_suite
    from autopeft.search.suite_records import StrategyOutcome
    from autopeft.search.sweep import parse_sweep, prepare, trial_run
    from autopeft.supernet import suggest

    sweep = parse_sweep({}, "the default sweep")
    prepared = prepare(sweep)
    subnet = suggest(optuna.trial.FixedTrial(TRIAL), prepared.space, prepared.depth)
    assert config_key(trial_run(sweep, prepared.space, subnet)) == "112a94619e64047c"
    pipeline = parse_pipeline({}, "the embedded default")
    assert config_key(_run_config(pipeline, {"lora": {}})) == "a518043dbb2b4fd4"  # a baseline on train
    assert config_key(_run_config(pipeline, {"lora": {}}, seed=0)) == "9d3e007b1f9398fd"  # its final run
    spaces = Path(__file__).resolve().parents[1] / "autopeft" / "search_spaces"
    suite = parse_suite(read_yaml(spaces / "suite_demo.yaml"), "suite_demo.yaml", spaces)
    lora = StrategyOutcome("lora", "completed", methods={"lora": {"rank": 4}}, train={"lr": 0.01, "weight_decay": 0.0})
    assert config_key(_selection_run(suite, data_configs(suite)[0], lora)) == "6ceb13dfb0a97796"


LEDGER = Path(__file__).resolve().parents[1] / "results" / "runs" / "cache"


def test_every_committed_run_keeps_the_key_it_was_cached_under():
    # The evidence studies' committed runs (results/runs/cache/<key>/config.yaml), keyed again today: a change
    # orphans them. Runs started from saved weights key on those weights' content, which the ledger does not keep.
    from autopeft.runconfig import read_yaml

    runs = [(d.name, read_yaml(d / "config.yaml")) for d in sorted(LEDGER.iterdir())]
    keyed = [(name, config_key(parse_run_config(data, name))) for name, data in runs if not data.get("init")]
    assert len(keyed) >= 179
    assert [name for name, key in keyed if name != key] == []


def grid_run(**data):
    """A run of the studies' grid: LoRA rank 8 on shapes_orientation at its ground schedule."""
    return parse_run_config(
        {
            "backbone": {"name": "vit_demo_fmnist"},
            "data": {"name": "shapes_orientation", **data},
            "methods": {"lora": {"rank": 8, "targets": ["q", "v"]}},
            "train": {"epochs": 20, "lr": 0.01, "warmup_epochs": 2, "batch_size": 64, "weight_decay": 1e-4},
            "test": False,
        },
        "grid run",
    )


def test_a_fold_run_and_a_large_test_final_keep_their_keys():
    # The selection-regret study's runs: fold 0 is the committed holdout run (fold_data keeps it as it is), the
    # other folds and a final read on a 4,000-image test set are new keys, pinned before its first run.
    from autopeft.data.folds import fold_data

    holdout = grid_run()
    assert config_key(holdout) == "ce094179a75d30a9" and (LEDGER / config_key(holdout)).is_dir()
    assert fold_data(holdout.data, 0, 5, 0, is_canonical=True) == holdout.data
    assert config_key(grid_run(folds=5, fold=3)) == "d5d164c914b1ef4d"
    final = dataclasses.replace(holdout, final=True, test=True)
    assert config_key(final) == "aa8e550f5a6b6f5c" and (LEDGER / config_key(final)).is_dir()
    large = dataclasses.replace(final, data=dataclasses.replace(final.data, test_size=4000))
    assert config_key(large) == "2f7a8d0e45c95679"


def test_the_test_size_keys_only_a_run_that_reads_test():
    large = dataclasses.replace(grid_run(), data=dataclasses.replace(grid_run().data, test_size=4000))
    assert config_key(large) == config_key(grid_run())  # a train-split run is the same run at any test size
    tested = dataclasses.replace(large, test=True)
    assert config_key(tested) != config_key(dataclasses.replace(grid_run(), test=True))
    assert config_key(dataclasses.replace(tested, data=dataclasses.replace(tested.data, test_size=None))) == (
        config_key(dataclasses.replace(grid_run(), test=True))
    )
