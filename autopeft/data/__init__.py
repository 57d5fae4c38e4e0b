"""Datasets: formats on disk, built-in offline tasks, a decode-once cache, tensor transforms."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from autopeft.config import option
from autopeft.data.builtin import BUILTIN_TASKS, builtin_arrays
from autopeft.data.cache import cached_pool, resize_arrays
from autopeft.data.folds import assign_folds, canonical, fold_data
from autopeft.data.formats import SPLITS, FileTask, Item, read_fgvc, read_imagefolder, read_vtab
from autopeft.errors import ConfigError, DataError

__all__ = [
    "BUILTIN_TASKS",
    "SPLITS",
    "DataConfig",
    "Split",
    "TaskData",
    "assign_folds",
    "canonical",
    "fold_data",
    "from_arrays",
    "load_task",
    "split_sizes",
]


@dataclass
class DataConfig:
    """Where a task's images come from: a built-in ``name``, or ``format`` + ``root`` (+ ``task``); ``folds`` may
    re-cut its train/val split into folds."""

    name: str | None = option(
        None,
        help="A built-in offline task (autopeft datasets lists them); null when format and root give the data. "
        "Give exactly one of name and format.",
    )
    format: Literal["vtab", "imagefolder", "fgvc"] | None = option(
        None,
        help="The layout of the dataset folder: vtab (VTAB-1k list files of <path> <label> lines), imagefolder "
        "(class subfolders, optionally under train/val/test) or fgvc (train/val/test JSON files); null with a name.",
    )
    root: str | None = option(None, help="The dataset folder, required with format; null with a built-in name.")
    task: str | None = option(
        None, help="The task's subfolder of root (e.g. one VTAB-1k task); null: root itself holds the task."
    )
    seed: int = option(
        0,
        help="Seed (>= 0) of the data itself: a built-in task's images and splits, and the val/test split carved "
        "from an imagefolder dataset that lacks those folders; vtab and fgvc lists ignore it.",
    )
    cache: Literal["disk", "memory"] = option(
        "disk",
        help="disk keeps the decoded images of a dataset folder in .autopeft-cache inside the task folder, so later "
        "runs skip decoding; memory decodes in every run and writes nothing. Built-in tasks are always in memory.",
    )
    folds: int = option(
        1,
        help="1 keeps the task's own train/val split; K >= 2 re-cuts train + val into K folds stratified by label: "
        "val is fold data.fold, train the other folds.",
    )
    fold: int = option(
        0,
        help="Which fold is val, 0..folds-1 (only 0 when folds is 1); fold 0 is the task's own val split when that "
        "is exactly one K-th of train + val (VTAB-1k's val200 at 5 folds).",
    )
    fold_seed: int = option(
        0, help="Seed (>= 0) of the stratified assignment of images to folds, used when folds >= 2."
    )
    test_size: int | None = option(
        None,
        help="Images in a built-in task's test split (e.g. 4000, for a smaller standard error); train and val stay "
        "as they are. null: the task's own (1,000; digits: the 797 images left). Only runs that read test "
        "(test: true) key on it.",
    )

    def __post_init__(self) -> None:
        if (self.name is None) == (self.format is None):
            raise ConfigError(
                f"data: give either name (a built-in task: {', '.join(BUILTIN_TASKS)}) or format + root, not both"
            )
        if self.format is not None and not self.root:
            raise ConfigError(f"data.root: required with format '{self.format}' (the dataset folder)")
        if self.folds < 1:
            raise ConfigError(f"data.folds: got {self.folds}; allowed: 1 (the holdout split) or K >= 2 folds")
        if not 0 <= self.fold < self.folds:
            raise ConfigError(
                f"data.fold: got {self.fold}; allowed: 0..{self.folds - 1} (with data.folds {self.folds})"
            )
        if self.fold_seed < 0:
            raise ConfigError(f"data.fold_seed: got {self.fold_seed}; allowed: an integer >= 0")
        if self.test_size is not None and (self.name is None or self.test_size < 1):
            raise ConfigError(
                f"data.test_size: got {self.test_size}; allowed: null, or a positive integer with a built-in name"
            )

    @property
    def label(self) -> str:
        """A short dataset name for reports: the built-in name or the task folder."""
        return self.name or self.task or Path(self.root).name


@dataclass(frozen=True)
class Split:
    """One split: indices into a shared uint8 image pool ``(U, 3, S, S)`` and the labels."""

    pool: torch.Tensor
    index: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels at ``positions`` of this split."""
        return self.pool[self.index[positions]], self.labels[positions]


@dataclass
class TaskData:
    """A loaded task. Splits decode on first use; ``test`` is kept apart so it is read only when asked.

    ``disk_cache``: the loaders read back a disk cache, so a released pool costs no second decode.
    """

    name: str
    num_classes: int
    image_size: int
    data_format: str
    loaders: dict[str, Callable[[], dict[str, Split]]]
    disk_cache: bool = False
    _splits: dict[str, Split] = field(default_factory=dict)
    _fingerprint: str = ""

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ConfigError(f"split '{name}': allowed: {', '.join(SPLITS)}")
        if name not in self._splits:
            group = "test" if name == "test" else "trainval"
            self._splits.update(self.loaders[group]())
        return self._splits[name]

    def fingerprint(self) -> str:
        """16 hex digits of sha256 over the name, the trainval pool and its index and labels: the data that
        per-example ids (pool positions) refer to; the same for every fold of a task."""
        if not self._fingerprint:
            trainval = self.split("trainval")
            digest = hashlib.sha256(f"{self.name}:{tuple(trainval.pool.shape)}".encode())
            for tensor in (trainval.pool, trainval.index, trainval.labels):
                digest.update(tensor.contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def check(self) -> None:
        """Decode every split now, so a missing or corrupt image (test included) fails before the first epoch.

        Images decode into the cache as on first use, so none is decoded twice; nothing is evaluated. The test pool
        is then released when a disk cache holds it, and kept in memory otherwise.
        """
        for group, load in self.loaders.items():
            if ("test" if group == "test" else "train") in self._splits:
                continue
            splits = load()
            if group != "test" or not self.disk_cache:
                self._splits.update(splits)


def load_task(config: DataConfig, image_size: int) -> TaskData:
    """Open the task described by ``config`` with images at ``image_size`` px (train/val re-cut into folds)."""
    task = _builtin_task(config, image_size) if config.name is not None else _file_task(config, image_size)
    if config.folds > 1:
        task.loaders["trainval"] = _folded(task.loaders["trainval"], config.folds, config.fold, config.fold_seed)
    return task


def _folded(load: Callable[[], dict[str, Split]], folds: int, fold: int, seed: int) -> Callable[[], dict[str, Split]]:
    """``load`` with train = train + val minus fold ``fold`` and val = that fold (train-then-val order)."""

    def folded() -> dict[str, Split]:
        splits = load()
        train, val = splits["train"], splits["val"]
        index, labels = torch.cat([train.index, val.index]), torch.cat([train.labels, val.labels])
        held = torch.from_numpy(assign_folds(train.labels.numpy(), val.labels.numpy(), folds, seed) == fold)
        return {
            **splits,
            "train": Split(train.pool, index[~held], labels[~held]),
            "val": Split(train.pool, index[held], labels[held]),
        }

    return folded


def split_sizes(config: DataConfig) -> tuple[int, int]:
    """Images in the task's train and val splits, from its lists alone (nothing decoded)."""
    if config.name is not None:
        arrays = builtin_arrays(config.name, config.seed)
        return len(arrays["train"][1]), len(arrays["val"][1])
    files = _read_files(config)
    return len(files.items["train"]), len(files.items["val"])


def _read_files(config: DataConfig) -> FileTask:
    readers = {
        "vtab": lambda: read_vtab(Path(config.root), config.task),
        "fgvc": lambda: read_fgvc(Path(config.root), config.task),
        "imagefolder": lambda: read_imagefolder(Path(config.root) / (config.task or ""), config.seed),
    }
    return readers[config.format]()


def _file_task(config: DataConfig, image_size: int) -> TaskData:
    files = _read_files(config)
    return TaskData(
        config.label,
        files.num_classes,
        image_size,
        files.data_format,
        {group: _file_loader(files, group, image_size, config.cache == "disk") for group in ("trainval", "test")},
        config.cache == "disk",
    )


def _file_loader(files: FileTask, group: str, size: int, persist: bool) -> Callable[[], dict[str, Split]]:
    names = ["test"] if group == "test" else ["train", "val", "trainval"]

    def load() -> dict[str, Split]:
        unique: dict[Path, Item] = {}
        for name in names:
            for item in files.items[name]:
                unique.setdefault(item.path, item)
        position = {path: i for i, path in enumerate(unique)}
        pool = cached_pool(list(unique.values()), size, files.folder if persist else None, group)
        return {
            name: Split(
                pool,
                torch.tensor([position[item.path] for item in files.items[name]]),
                torch.tensor([item.label for item in files.items[name]]),
            )
            for name in names
        }

    return load


def from_arrays(
    name: str,
    arrays: Callable[[], dict[str, tuple[np.ndarray, np.ndarray]]],
    image_size: int,
    data_format: str = "arrays",
) -> TaskData:
    """A task from in-memory uint8 images: ``arrays()`` returns ``{"train"|"val"|"test": (images, labels)}``.

    Images are (N, H, W) grayscale or (N, H, W, 3) RGB; ``trainval`` is train followed by val.
    """

    def trainval() -> dict[str, Split]:
        (train_x, train_y), (val_x, val_y) = arrays()["train"], arrays()["val"]
        pool = resize_arrays(np.concatenate([train_x, val_x]), image_size)
        labels = torch.as_tensor(np.concatenate([train_y, val_y]), dtype=torch.int64)
        n = len(train_y)
        return {
            "train": Split(pool, torch.arange(n), labels[:n]),
            "val": Split(pool, torch.arange(n, len(labels)), labels[n:]),
            "trainval": Split(pool, torch.arange(len(labels)), labels),
        }

    def test() -> dict[str, Split]:
        images, labels = arrays()["test"]
        return {
            "test": Split(
                resize_arrays(images, image_size), torch.arange(len(labels)), torch.tensor(labels, dtype=torch.int64)
            )
        }

    num_classes = int(max(labels.max() for _, labels in arrays().values())) + 1
    return TaskData(name, num_classes, image_size, data_format, {"trainval": trainval, "test": test})


def _builtin_task(config: DataConfig, image_size: int) -> TaskData:
    if config.name not in BUILTIN_TASKS:
        raise DataError(f"unknown built-in dataset '{config.name}'; allowed: {', '.join(BUILTIN_TASKS)}")
    arrays = functools.partial(builtin_arrays, config.name, config.seed, config.test_size)
    return from_arrays(config.name, arrays, image_size, "builtin")
