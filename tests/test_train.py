"""`autopeft train` / `export` end to end in real subprocesses on a tiny ViT and built-in data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from autopeft.backbones import create_backbone
from autopeft.data import DataConfig, load_task
from autopeft.records import OUTCOMES, Outcomes
from autopeft.runconfig import load_run_config
from autopeft.train import Normalization, evaluate

EXAMPLES = Path(__file__).resolve().parents[1] / "search_spaces" / "train"
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_YAML = yaml.safe_dump({"backbone": {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY}})
RESULT_KEYS = {
    "command",
    "dataset",
    "backbone",
    "methods",
    "trainable_params",
    "val_acc",
    "test_acc",
    "seed",
    "epochs",
    "wall_time_s",
    "provenance",
    "status",
}


def write_config(folder: Path, epochs: int = 2, **sections) -> Path:
    config = {
        "backbone": {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY},
        "data": {"name": "digits"},
        "methods": {"lora": {"rank": 4}},
        "train": {"epochs": epochs, "batch_size": 100, "lr": 0.003, "warmup_epochs": 1},
        "seed": 0,
    }
    config.update(sections)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "autopeft.cli", *args], capture_output=True, text=True, env=env, **kwargs
    )


EPOCH_KEYS = ["epoch", "loss", "images_per_s", "train_images", "eval_images", "val_acc", "val_loss", "lr"]


def test_train_writes_the_run_directory(tmp_path):
    result = cli("train", str(write_config(tmp_path)), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "result.json",
        "adapter.safetensors",
        "adapter_config.json",
        "checkpoint.pt",
    }
    summary = json.loads((run / "result.json").read_text())
    assert set(summary) >= RESULT_KEYS
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["trainable_params"] == 2 * 4 * 2 * 32 * 2  # rank 4 on q and v, 2 blocks, width 32
    assert 0.0 <= summary["test_acc"] <= 100.0 and summary["val_acc"] > 10.0
    assert summary["provenance"]["selection"] == "val" and summary["provenance"]["reported_epoch"] == "final"
    assert summary["provenance"]["checkpoint"] == "random init"  # pretrained: false
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert lines[-1]["val_acc"] == summary["val_acc"]
    assert "test_acc" not in lines[-1], "test is read once, after training"
    history = torch.load(run / "checkpoint.pt", weights_only=True)["history"]
    assert history == lines and list(lines[0]) == EPOCH_KEYS  # the checkpoints written before Epoch was typed
    assert yaml.safe_load((run / "config.yaml").read_text())["methods"]["lora"]["rank"] == 4
    outcomes = Outcomes.read(run / OUTCOMES)  # the last epoch's val outcomes, named by pool position
    assert outcomes.split == "val" and outcomes.correct.shape == (1, 200)
    assert outcomes.ids.tolist() == list(range(800, 1000)) and set(outcomes.fold.tolist()) == {0}
    assert 100 * outcomes.correct.mean() == pytest.approx(summary["val_acc"])
    assert outcomes.loss.mean() == pytest.approx(summary["val_loss"], rel=1e-3)  # stored as float16
    assert outcomes.fingerprint == load_task(DataConfig(name="digits"), 32).fingerprint()


def test_same_seed_same_metrics_and_resume_after_sigkill(tmp_path):
    config = write_config(tmp_path, epochs=5)
    assert cli("train", str(config), "--out", str(tmp_path / "straight")).returncode == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "autopeft.cli", "train", str(config), "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = killed / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "result.json").exists()
    resumed = cli("train", str(config), "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = json.loads((tmp_path / "straight" / "result.json").read_text())
    again = json.loads((killed / "result.json").read_text())
    assert (again["val_acc"], again["test_acc"]) == (straight["val_acc"], straight["test_acc"])
    strip = [
        {k: v for k, v in json.loads(line).items() if k != "images_per_s"}
        for line in (killed / "metrics.jsonl").read_text().splitlines()
    ]
    expected = [
        {k: v for k, v in json.loads(line).items() if k != "images_per_s"}
        for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    assert strip == expected


def test_export_merge_reloads_to_the_same_test_accuracy(tmp_path):
    # Trained clear of chance: a random tiny ViT's features barely vary between images, and an
    # untrained head gives near-tied logits where a 1e-6 weight change flips every prediction.
    train = {"epochs": 5, "batch_size": 100, "lr": 0.03, "warmup_epochs": 1}
    config = write_config(tmp_path, methods={"lora": {"rank": 4}, "ssf": {}}, train=train)
    assert cli("train", str(config), "--out", str(tmp_path / "run")).returncode == 0
    expected = json.loads((tmp_path / "run" / "result.json").read_text())["test_acc"]
    assert expected > 20.0
    exported = cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "merged.safetensors"), "--merge")
    assert exported.returncode == 0, exported.stderr
    model = create_backbone("vit_tiny_patch16_224", 10, checkpoint=tmp_path / "merged.safetensors", **TINY)
    task = load_task(DataConfig(name="digits"), 32)
    test = task.split("test")
    accuracy = evaluate(model, test, Normalization(model.pretrained_cfg["mean"], model.pretrained_cfg["std"]))
    # Folding changes the weights by ~1e-6, which may flip at most a borderline prediction or two.
    assert abs(accuracy - expected) <= 100.0 / len(test) + 1e-9
    adapter = cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "adapter"))
    assert adapter.returncode == 0 and (tmp_path / "adapter" / "adapter.safetensors").is_file()
    # plain timm rebuilds the model from the file's own metadata, .safetensors or a torch .pt file
    assert cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "merged.pt"), "--merge").returncode == 0
    with safe_open(tmp_path / "merged.safetensors", "pt") as handle:
        meta = {k: json.loads(v) for k, v in handle.metadata().items()}
    saved = torch.load(tmp_path / "merged.pt", weights_only=True)
    assert meta["timm_kwargs"] == {**TINY, "num_classes": 10} and meta["mean"] == [0.5, 0.5, 0.5]
    assert {k: saved[k] for k in meta} == meta
    images = test.batch(torch.arange(16))[0].float() / 255
    inputs = (images - 0.5) / 0.5
    expected = model.eval()(inputs)
    for weights in (load_file(tmp_path / "merged.safetensors"), saved["state_dict"]):
        plain = timm.create_model(meta["timm_model"], **meta["timm_kwargs"])
        plain.load_state_dict(weights)
        torch.testing.assert_close(plain.eval()(inputs), expected, rtol=0, atol=0)


def test_export_refuses_what_it_cannot_write(tmp_path, run_cli):
    assert cli("train", str(write_config(tmp_path, epochs=1)), "--out", str(tmp_path / "run")).returncode == 0
    for out, why in ((tmp_path / "x.bin", "not '.bin'"), (tmp_path, "not a directory")):
        code, stderr = run_cli("export", str(tmp_path / "run"), "--out", str(out), "--merge")
        assert code == 2 and why in stderr and len(stderr.splitlines()) == 1


def test_non_finite_loss_fails_the_run_cleanly(tmp_path):
    config = write_config(tmp_path, train={"epochs": 2, "lr": 1.0e38, "optimizer": "sgd", "warmup_epochs": 0})
    result = cli("train", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "run failed: loss became" in result.stderr and "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith("loss became")
    assert summary["test_acc"] is None


BAD = [
    ("broken yaml", "backbone: [unclosed\n", "config.yaml:2: not valid YAML"),
    ("unknown key", "learning_rate: 0.1\n", "config.yaml: unknown key 'learning_rate'; allowed: backbone, data"),
    ("wrong type", "train: {epochs: ten}\n", "config.yaml: train.epochs: got 'ten'; allowed: an integer"),
    (
        "bad method option",
        TINY_YAML + "methods: {lora: {rank: -2}}\n",
        "config.yaml: methods.lora.rank: got -2; allowed",
    ),
    (
        "missing data path",
        TINY_YAML + "data: {format: vtab, root: /x, task: cifar}\n",
        "config.yaml: data.root: /x/cifar",
    ),
    (
        "unknown dataset",
        TINY_YAML + "data: {name: digitz}\n",
        "config.yaml: data.name: unknown built-in dataset 'digitz'",
    ),
    (
        "unknown backbone",
        TINY_YAML.replace("vit_tiny_patch16_224", "vit_tiny_patch16_22"),
        "config.yaml: backbone.name: unknown backbone 'vit_tiny_patch16_22'",
    ),
]


@pytest.mark.parametrize(("text", "message"), [(t, m) for _, t, m in BAD], ids=[n for n, _, _ in BAD])
def test_bad_configs_exit_with_one_line(tmp_path, text, message):
    (tmp_path / "config.yaml").write_text(text)
    result = cli("train", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists()  # nothing written: no config.yaml, no .lock


def test_existing_run_is_never_overwritten(tmp_path):
    config = write_config(tmp_path, epochs=1)
    assert cli("train", str(config), "--out", str(tmp_path / "run")).returncode == 0
    before = (tmp_path / "run" / "result.json").read_bytes()
    again = cli("train", str(config), "--out", str(tmp_path / "run"))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert (tmp_path / "run" / "result.json").read_bytes() == before


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_parse(path):
    config = load_run_config(path)
    assert config.methods and config.train.epochs > 0
    assert path.stem.split("_", 1 if path.stem.startswith("demo") else 3)[-1] in config.methods


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    from autopeft.files import write_json

    write_json(tmp_path / "result.json", {"a": 1})
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "result.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode
    assert json.loads((tmp_path / "result.json").read_text()) == {"a": 1}
