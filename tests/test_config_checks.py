"""Config values as users write them: YAML numbers like 3e-3, range checks on the train section, devices."""

from __future__ import annotations

import math
import re

import pytest
import torch

from autopeft.cli import main
from autopeft.config import parse_options
from autopeft.errors import ConfigError
from autopeft.runconfig import (
    BackboneConfig,
    RunConfig,
    dump_run_config,
    load_run_config,
    load_yaml,
    parse_run_config,
)
from autopeft.train import TrainConfig, resolve_device

EXPONENT_FLOATS = [
    ("3e-3", 3e-3),
    ("1e-3", 1e-3),
    ("1E-4", 1e-4),
    ("5e2", 500.0),
    ("-2.5e-3", -2.5e-3),
    ("+1e3", 1000.0),
    ("1.5e3", 1500.0),
    (".5e3", 500.0),
    ("2.0E5", 200000.0),
]


@pytest.mark.parametrize(("text", "value"), EXPONENT_FLOATS, ids=[t for t, _ in EXPONENT_FLOATS])
def test_yaml_exponent_numbers_are_floats(text, value):
    loaded = load_yaml(text)
    assert type(loaded) is float and loaded == value
    assert load_yaml(f"lr: {text}") == {"lr": value}
    assert load_yaml(f"[{text}, 2]") == [value, 2]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("3", 3), ("-7", -7), ("1_000", 1000), ("0x10", 16), ("0.25", 0.25), ("1.0e-3", 1e-3), ("true", True)],
        *[("3e", "3e"), ("e3", "e3"), ("1e", "1e"), ("v1e3", "v1e3"), ("'3e-3'", "3e-3"), ("adamw", "adamw")],
        ("~", None),
    ],
)
def test_yaml_ints_and_strings_stay_what_they_were(text, value):
    loaded = load_yaml(text)
    assert type(loaded) is type(value) and loaded == value


def test_yaml_inf_and_nan_as_pyyaml_reads_them():
    assert load_yaml(".inf") == math.inf and load_yaml("-.inf") == -math.inf
    assert math.isnan(load_yaml(".nan"))


def test_exponent_numbers_in_a_file_and_in_set_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-5\n")
    config = load_run_config(path)
    assert (config.train.lr, config.train.weight_decay) == (1e-3, 5e-5)
    config = load_run_config(path, ["train.lr=3e-3", "train.weight_decay=1e-4"])
    assert (config.train.lr, config.train.weight_decay) == (3e-3, 1e-4)


def test_saved_config_reads_back_equal_with_exponent_like_strings(tmp_path):
    config = RunConfig(backbone=BackboneConfig(name="3e-3"), train=TrainConfig(lr=3e-3, weight_decay=1e-5))
    data = load_yaml(dump_run_config(config))
    assert data["backbone"]["name"] == "3e-3" and data["train"]["lr"] == 3e-3
    assert parse_run_config(data, "config.yaml") == config


BAD_TRAIN = [
    ({"epochs": 0}, "train.epochs: got 0; allowed: an integer >= 1"),
    ({"batch_size": 0}, "train.batch_size: got 0; allowed: an integer >= 1"),
    ({"eval_batch_size": -4}, "train.eval_batch_size: got -4; allowed: an integer >= 1"),
    ({"lr": 0}, "train.lr: got 0.0; allowed: a finite number > 0"),
    ({"lr": -3e-3}, "train.lr: got -0.003; allowed: a finite number > 0"),
    ({"lr": math.inf}, "train.lr: got inf; allowed: a finite number > 0"),
    ({"weight_decay": -1e-4}, "train.weight_decay: got -0.0001; allowed: a finite number >= 0"),
    ({"warmup_epochs": -1}, "train.warmup_epochs: got -1; allowed: 0..30 (at most train.epochs = 30)"),
    ({"epochs": 2, "warmup_epochs": 3}, "train.warmup_epochs: got 3; allowed: 0..2 (at most train.epochs = 2)"),
    ({"momentum": 1}, "train.momentum: got 1.0; allowed: 0 <= momentum < 1"),
    ({"momentum": -0.1}, "train.momentum: got -0.1; allowed: 0 <= momentum < 1"),
    ({"label_smoothing": 1.5}, "train.label_smoothing: got 1.5; allowed: 0 <= label_smoothing < 1"),
    ({"grad_clip": 0}, "train.grad_clip: got 0.0; allowed: a number > 0, or null for none"),
    ({"shift": -2}, "train.shift: got -2; allowed: an integer >= 0"),
    ({"device": "gpu"}, "train.device: got 'gpu'; allowed: auto, cpu, cuda, cuda:N, mps"),
    ({"device": "cuda:x"}, "train.device: got 'cuda:x'; allowed: auto, cpu, cuda, cuda:N, mps"),
]


@pytest.mark.parametrize(("train", "message"), BAD_TRAIN, ids=[m for _, m in BAD_TRAIN])
def test_bad_train_values_raise_one_line_naming_the_key(train, message):
    with pytest.raises(ConfigError) as info:
        parse_run_config({"train": train}, "cfg.yaml")
    assert str(info.value) == f"cfg.yaml: {message}"


@pytest.mark.parametrize(
    "train",
    [
        {},
        {"epochs": 1, "warmup_epochs": 0},
        {"epochs": 1, "warmup_epochs": 1},  # the scheduler ends warm-up at the last step at most
        {"epochs": 6, "lr": 2e-3, "warmup_epochs": 1},
        {"epochs": 3, "lr": 3e-3, "warmup_epochs": 0},
        {"lr": 1e38, "optimizer": "sgd", "warmup_epochs": 0, "momentum": 0, "weight_decay": 0},
        {"grad_clip": 1.0, "label_smoothing": 0.1, "shift": 2, "device": "cuda:1"},
        {"device": "cpu"},
        {"device": "mps"},
    ],
)
def test_good_train_values_pass(train):
    assert parse_run_config({"train": train}, "cfg.yaml").train == TrainConfig(**train)


def test_bad_train_value_fails_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {epochs: 2, lr: 3e-3}\n")
    out = tmp_path / "run"
    assert main(["train", str(path), "--set", "train.epochs=0", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"autopeft: error: {path}: train.epochs: got 0; allowed: an integer >= 1\n"
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_cuda_device_is_one_line(device):
    mps = torch.backends.mps.is_available()
    with pytest.raises(ConfigError) as info:
        resolve_device(device)
    assert str(info.value) == (
        f"train.device: got '{device}' but torch sees no CUDA device on this machine; "
        f"allowed here: auto, cpu{', mps' if mps else ''}"
    )
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an MPS device")
def test_mps_without_an_mps_device_is_one_line():
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    here = ", ".join(["auto", "cpu", *(["cuda"] if cuda else []), *(f"cuda:{i}" for i in range(cuda))])
    with pytest.raises(ConfigError) as info:
        resolve_device("mps")
    assert str(info.value) == (
        f"train.device: got 'mps' but torch sees no MPS device on this machine; allowed here: {here}"
    )


def test_cuda_index_past_the_devices_is_one_line():
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=r"^train\.device: got 'cuda:99' but torch sees "):
        resolve_device("cuda:99")
    if cuda:
        assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize(("epochs", "warmup"), [(1, 0), (2, 1), (3, 2), (4, 3), (30, 3)])
def test_unwritten_warmup_is_clipped_below_a_short_schedule(epochs, warmup):
    """`train: {epochs: 2}` used to fail on train.warmup_epochs, a key the user never wrote."""
    assert parse_options(TrainConfig, {"epochs": epochs}, "train").warmup_epochs == warmup
    assert parse_run_config({"train": {"epochs": epochs}}, "run.yaml").train.warmup_epochs == warmup


def test_a_written_warmup_is_kept_or_refused():
    assert parse_options(TrainConfig, {"epochs": 3, "warmup_epochs": 3}, "train").warmup_epochs == 3
    with pytest.raises(ConfigError, match=re.escape("train.warmup_epochs: got 3; allowed: 0..2")):
        parse_options(TrainConfig, {"epochs": 2, "warmup_epochs": 3}, "train")


@pytest.mark.parametrize(
    ("suite", "message"),
    [
        ({"sweep": {"trails": 3}}, "suite.yaml: sweep: unknown option 'trails'; allowed: train, trials, sampler"),
        ({"sweep": {"trials": "x"}}, "suite.yaml: sweep.trials: got 'x'; allowed: an integer"),
        ({"sweep": {"train": {"epoch": 2}}}, "suite.yaml: sweep.train: unknown option 'epoch'"),
        ({"sweep": {"space": "demo"}}, "suite.yaml: sweep.space: set by select"),
        ({"supernet": {"retrain": {"top_k": "two"}}}, "suite.yaml: supernet.retrain.top_k: got 'two'"),
        ({"supernet": {"baselines": []}}, "suite.yaml: supernet.baselines: set by select"),
    ],
)
def test_a_suite_s_overrides_are_checked_as_the_options_they_override(suite, message):
    from autopeft.search.select import parse_suite

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_suite(suite, "suite.yaml")


def test_a_suite_s_overrides_are_kept_as_written():
    from autopeft.runkey import changed_keys
    from autopeft.search.prune_stage import claimed
    from autopeft.search.select import data_configs, parse_suite, supernet_config, sweep_config

    written = {"sweep": {"pruner": "none", "train": {"epochs": 3}}, "supernet": {"retrain": {"top_k": 2}}}
    suite = parse_suite(written, "suite.yaml")
    kept = claimed(suite)
    assert (kept["sweep"], kept["supernet"]) == (written["sweep"], written["supernet"])
    before = {**kept, "sweep": {"train": {"epochs": 3}, "pruner": "none"}}  # as a folder made before kept it
    assert changed_keys(before, kept) == []
    data = data_configs(suite)[0]
    sweep = sweep_config(suite, data, "lora")
    assert (sweep.pruner, sweep.train.epochs, sweep.train.lr) == ("none", 3, TrainConfig().lr)
    assert supernet_config(suite, data).retrain.top_k == 2
