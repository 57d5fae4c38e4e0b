"""Stratified K-fold selection splits over train + val: a run trains on "train minus fold k" and scores on fold k."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import numpy as np

_STREAM = 0xF01D  # fixed second word of the fold generator's seed, so fold draws never share a stream
Data = TypeVar("Data")


def canonical(n_train: int, n_val: int, folds: int) -> bool:
    """Whether val is exactly one fold of train + val (VTAB-1k's val200 at K=5): then fold 0 is that val split."""
    return folds >= 2 and n_val * folds == n_train + n_val


def assign_folds(train_labels: np.ndarray, val_labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """An int8 fold number per element of train followed by val, stratified by label.

    Canonical sizes keep val as fold 0 and deal train into folds 1..K-1; otherwise all of train + val is dealt into
    K folds. Per class a seeded permutation is dealt round-robin, the dealing continuing across classes, so fold
    sizes and each class's count per fold differ by at most one.
    """
    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    keep_val = canonical(len(train_labels), len(val_labels), folds)
    labels = train_labels if keep_val else np.concatenate([train_labels, val_labels])
    first, count = (1, folds - 1) if keep_val else (0, folds)
    dealt = np.empty(len(labels), dtype=np.int8)
    rng = np.random.default_rng([seed, _STREAM])
    offset = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        dealt[members] = first + (offset + np.arange(len(members))) % count
        offset += len(members)
    return np.concatenate([dealt, np.zeros(len(val_labels), dtype=np.int8)]) if keep_val else dealt


def fold_data(data: Data, fold: int, folds: int, fold_seed: int, is_canonical: bool) -> Data:
    """The data config for fold ``fold`` of ``folds``; fold 0 of a canonical split is the holdout run, unchanged."""
    if is_canonical and fold == 0:
        return data
    return dataclasses.replace(data, folds=folds, fold=fold, fold_seed=fold_seed)
