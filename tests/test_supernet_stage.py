"""Supernet training (one subnet per step, resumable) and scoring with inherited weights."""

from __future__ import annotations

import pytest
import torch

from autopeft.runconfig import parse_run_config
from autopeft.runs import RunInterrupted, build_model
from autopeft.search.supernet_stage import inherited_score, step_sampler, train_supernet
from autopeft.supernet import Supernet, parse_space

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
SPACE = {"methods": {"lora": {"sizes": [0, 2, 4]}, "adapter": {"sizes": [0, 4]}, "vpt": {"sizes": [0, 2]}}}


def setup(epochs: int = 2):
    config = parse_run_config(
        {
            "backbone": {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY},
            "data": {"name": "digits"},
            "methods": {"linear": {}},
            "train": {"epochs": epochs, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0},
        },
        "test",
    )
    model, task, norm = build_model(config, with_methods=False)
    return Supernet(model, parse_space(SPACE, "space")), task, norm, config


def trainable(supernet: Supernet) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in supernet.model.named_parameters() if p.requires_grad}


def test_training_updates_every_method_and_val_is_the_largest_subnets(tmp_path):
    supernet, task, norm, config = setup()
    before = trainable(supernet)
    history, seconds = train_supernet(supernet, task, norm, config, tmp_path)
    after = trainable(supernet)
    assert [name for name in before if torch.equal(before[name], after[name])] == []
    assert [h["epoch"] for h in history] == [1, 2]
    assert supernet.subnet == supernet.largest()
    scored = inherited_score(supernet, task, norm)(supernet.largest())
    assert (history[-1]["val_acc"], history[-1]["val_loss"]) == scored
    assert 0 < seconds < 600


def test_resumed_training_ends_with_the_same_weights(tmp_path):
    supernet, task, norm, config = setup(epochs=2)
    train_supernet(supernet, task, norm, config, tmp_path / "whole")
    whole = trainable(supernet)
    first, task, norm, config = setup(epochs=2)
    with pytest.raises(RunInterrupted):
        train_supernet(first, task, norm, config, tmp_path / "split", progress=CtrlCAfterFirstEpoch())
    resumed, task, norm, config = setup(epochs=2)
    train_supernet(resumed, task, norm, config, tmp_path / "split", resume=True)
    assert all(torch.equal(whole[name], tensor) for name, tensor in trainable(resumed).items())


class CtrlCAfterFirstEpoch:
    """A progress display whose user presses Ctrl-C once the first epoch is saved."""

    def start(self, *args) -> None: ...

    def step(self, *args) -> None: ...

    def stop(self) -> None: ...

    def epoch(self, record: dict) -> None:
        raise KeyboardInterrupt


def test_sandwich_rule_cycles_largest_smallest_random():
    supernet, *_ = setup()
    activate = step_sampler(supernet, "sandwich", seed=0)
    seen = []
    for step in range(6):
        activate(step)
        seen.append(supernet.subnet)
    assert seen[0] == seen[3] == supernet.largest() and seen[1] == seen[4] == supernet.smallest()
    activate(2)
    assert supernet.subnet == seen[2]  # the same step always draws the same subnet
