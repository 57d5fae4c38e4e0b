"""The run key: what enters it, what stays out, and that keys already made never move."""

from __future__ import annotations

import dataclasses

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
