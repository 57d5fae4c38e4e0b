"""K-fold selection splits: disjoint, stratified, covering train + val once, seeded, fold 0 = val where it can be."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from autopeft.data import DataConfig, assign_folds, canonical, fold_data, load_task
from autopeft.errors import ConfigError
from autopeft.runconfig import parse_run_config
from autopeft.runkey import config_key

RUN = {
    "backbone": {"name": "vit_demo_fmnist"},
    "data": {"name": "digits"},
    "methods": {"lora": {"rank": 4}},
    "train": {"epochs": 10, "lr": 0.01},
}


def labels(n, classes, seed):
    return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize(("n_train", "n_val", "folds"), [(800, 200, 5), (800, 200, 3), (90, 37, 4)])
def test_folds_are_disjoint_stratified_and_cover_the_pool_once(n_train, n_val, folds):
    train, val = labels(n_train, 7, 0), labels(n_val, 7, 1)
    fold = assign_folds(train, val, folds, seed=3)
    everything = np.concatenate([train, val])
    assert fold.shape == (n_train + n_val,) and set(fold.tolist()) == set(range(folds))  # one fold per element
    sizes = np.bincount(fold, minlength=folds)
    assert sizes.sum() == n_train + n_val and sizes.max() - sizes.min() <= 1
    for label in np.unique(everything):
        per_fold = np.bincount(fold[everything == label], minlength=folds)
        if canonical(n_train, n_val, folds):  # val is fold 0 as drawn; train is dealt over the other folds
            per_fold = per_fold[1:]
        assert per_fold.max() - per_fold.min() <= 1, f"class {label}: {per_fold}"


def test_the_same_fold_seed_gives_the_same_folds_and_another_seed_others():
    train, val = labels(400, 5, 0), labels(100, 5, 1)
    first = assign_folds(train, val, 3, seed=0)
    assert np.array_equal(first, assign_folds(train, val, 3, seed=0))
    assert not np.array_equal(first, assign_folds(train, val, 3, seed=1))


def test_fold_zero_is_the_val_split_when_val_is_one_fold_of_the_pool():
    train, val = labels(800, 10, 0), labels(200, 10, 1)
    assert canonical(800, 200, 5) and not canonical(800, 200, 3)
    fold = assign_folds(train, val, 5, seed=9)
    assert np.array_equal(np.flatnonzero(fold == 0), np.arange(800, 1000))


def test_a_folded_task_trains_on_the_other_folds_and_leaves_test_alone():
    plain = load_task(DataConfig(name="digits"), 16)
    folded = load_task(DataConfig(name="digits", folds=3, fold=1, fold_seed=0), 16)
    train, val = folded.split("train"), folded.split("val")
    assert len(train.index) + len(val.index) == 1000 and not set(train.index.tolist()) & set(val.index.tolist())
    expected = np.flatnonzero(
        assign_folds(plain.split("train").labels.numpy(), plain.split("val").labels.numpy(), 3, 0) == 1
    )
    assert torch.equal(val.index, torch.from_numpy(expected))
    assert torch.equal(val.labels, plain.split("trainval").labels[val.index])
    assert torch.equal(folded.split("test").labels, plain.split("test").labels)
    assert torch.equal(folded.split("trainval").index, plain.split("trainval").index)
    assert folded.fingerprint() == plain.fingerprint() != load_task(DataConfig(name="digits", seed=1), 16).fingerprint()


def test_a_canonical_fold_zero_run_is_the_holdout_run_and_keeps_its_key():
    base = parse_run_config(RUN, "test")
    assert config_key(base) == "8d8a0a0fe88ad4d4"  # the pinned key (tests/test_runkey.py)
    assert fold_data(base.data, 0, 5, 0, is_canonical=True) == base.data
    folded = dataclasses.replace(base, data=fold_data(base.data, 1, 5, 0, is_canonical=True))
    assert config_key(folded) != config_key(base)
    drawn = dataclasses.replace(base, data=fold_data(base.data, 0, 3, 0, is_canonical=False))
    assert config_key(drawn) not in {config_key(base), config_key(folded)}


@pytest.mark.parametrize(
    ("fields", "key"),
    [({"folds": 0}, "data.folds"), ({"folds": 3, "fold": 3}, "data.fold"), ({"fold_seed": -1}, "data.fold_seed")],
)
def test_bad_fold_settings_name_the_key(fields, key):
    with pytest.raises(ConfigError, match=key):
        DataConfig(name="digits", **fields)
