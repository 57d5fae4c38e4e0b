"""Dataset formats, the decode-once cache and bad input, on real image files written to disk."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autopeft.data import DataConfig, from_arrays, load_task
from autopeft.data.cache import CACHE_FOLDER
from autopeft.data.transforms import augment, normalize
from autopeft.errors import ConfigError, DataError

SIZES = {"train800.txt": 6, "val200.txt": 3, "test.txt": 4}


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def make_vtab(root: Path, task: str = "toy", classes: int = 3) -> Path:
    """A VTAB-1k task folder with real JPEG files: 6 train, 3 val, 4 test images."""
    folder = root / task
    lines: dict[str, list[str]] = {}
    seed = 0
    for name, count in SIZES.items():
        split = name.split(".")[0]
        lines[name] = []
        for i in range(count):
            relative = f"images/{split}/{i}.jpg"
            write_image(folder / relative, seed)
            lines[name].append(f"{relative} {seed % classes}")
            seed += 1
    lines["train800val200.txt"] = lines["train800.txt"] + lines["val200.txt"]
    for name, content in lines.items():
        (folder / name).write_text("\n".join(content) + "\n")
    return folder


def vtab(root: Path, size: int = 16, cache: str = "disk"):
    return load_task(DataConfig(format="vtab", root=str(root), task="toy", cache=cache), size)


def test_vtab_layout_decodes_every_split(tmp_path):
    folder = make_vtab(tmp_path)
    task = vtab(tmp_path)
    assert (task.name, task.num_classes, task.data_format) == ("toy", 3, "vtab")
    assert {s: len(task.split(s)) for s in ("train", "val", "trainval", "test")} == {
        "train": 6,
        "val": 3,
        "trainval": 9,
        "test": 4,
    }
    train = task.split("train")
    assert train.pool.shape == (9, 3, 16, 16) and train.pool.dtype == torch.uint8
    assert task.split("trainval").pool is train.pool, "train, val and trainval share one decoded pool"
    images, labels = train.batch(torch.tensor([1]))
    with Image.open(folder / "images/train800/1.jpg") as image:
        expected = np.array(image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
    assert torch.equal(images[0], torch.from_numpy(expected).permute(2, 0, 1))
    assert labels.tolist() == [1]


def test_test_split_is_decoded_only_when_asked(tmp_path):
    make_vtab(tmp_path)
    task = vtab(tmp_path)
    task.split("train")
    cache = tmp_path / "toy" / CACHE_FOLDER
    assert [p.name.split("-")[0] for p in cache.iterdir()] == ["trainval"]
    task.split("test")
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["test", "trainval"]


def test_cache_hit_does_not_decode_again(tmp_path):
    folder = make_vtab(tmp_path)
    first = vtab(tmp_path).split("train").pool.clone()
    image = folder / "images/train800/0.jpg"
    stat = image.stat()
    data = bytearray(image.read_bytes())
    data[-200:-2] = bytes(198)  # same size, same mtime, different pixels
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert torch.equal(vtab(tmp_path).split("train").pool, first)


def test_cache_invalidated_by_label_file_and_size_changes(tmp_path):
    folder = make_vtab(tmp_path)
    vtab(tmp_path).split("train")
    cache = folder / CACHE_FOLDER
    (old,) = list(cache.glob("trainval-16px-*"))
    train_list = folder / "train800.txt"
    train_list.write_text(train_list.read_text().replace("images/train800/0.jpg 0", "images/train800/0.jpg 2"))
    (folder / "train800val200.txt").write_text(train_list.read_text() + (folder / "val200.txt").read_text())
    assert vtab(tmp_path).split("train").labels[0].item() == 2
    (new,) = list(cache.glob("trainval-16px-*"))
    assert new.name != old.name, "a changed label makes a new cache key; the stale file is removed"
    write_image(folder / "images/train800/2.jpg", seed=99)
    changed = vtab(tmp_path).split("train").pool
    (newest,) = list(cache.glob("trainval-16px-*"))
    assert newest.name != new.name
    assert changed.shape == (9, 3, 16, 16)
    vtab(tmp_path, size=24).split("train")
    assert len(list(cache.glob("trainval-24px-*"))) == 1 and len(list(cache.glob("trainval-16px-*"))) == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other-data"])
def test_corrupt_cache_is_rebuilt(tmp_path, damage, caplog):
    folder = make_vtab(tmp_path)
    expected = vtab(tmp_path, cache="memory").split("train").pool
    vtab(tmp_path).split("train")
    (file,) = list((folder / CACHE_FOLDER).glob("trainval-*"))
    if damage == "truncate":
        file.write_bytes(file.read_bytes()[:300])
    elif damage == "garbage":
        file.write_bytes(os.urandom(4096))
    else:
        from safetensors.torch import save_file

        save_file({"images": torch.zeros(9, 3, 16, 16, dtype=torch.uint8)}, str(file), metadata={"key": "x"})
    with caplog.at_level(logging.WARNING, logger="autopeft.data.cache"):
        assert torch.equal(vtab(tmp_path).split("train").pool, expected)
    assert "rebuilding" in caplog.text
    assert torch.equal(vtab(tmp_path).split("train").pool, expected)


def test_memory_cache_writes_nothing(tmp_path):
    folder = make_vtab(tmp_path)
    vtab(tmp_path, cache="memory").split("train")
    assert not (folder / CACHE_FOLDER).exists()


def make_imagefolder(root: Path, splits: tuple[str, ...] = ("train", "val", "test"), per_class: int = 5) -> None:
    seed = 0
    for split in splits:
        for name in ("cat", "dog"):
            for i in range(per_class):
                write_image(root / split / name / f"{i}.png", seed)
                seed += 1


def test_imagefolder_with_split_folders(tmp_path):
    make_imagefolder(tmp_path)
    task = load_task(DataConfig(format="imagefolder", root=str(tmp_path)), 8)
    assert task.num_classes == 2
    assert [len(task.split(s)) for s in ("train", "val", "trainval", "test")] == [10, 10, 20, 10]
    assert task.split("test").labels.tolist() == [0] * 5 + [1] * 5


def test_imagefolder_fixed_seed_split(tmp_path):
    make_imagefolder(tmp_path, splits=("",), per_class=20)
    config = DataConfig(format="imagefolder", root=str(tmp_path), cache="memory")
    first, again = load_task(config, 8), load_task(config, 8)
    sizes = [len(first.split(s)) for s in ("train", "val", "test")]
    assert sizes == [28, 4, 8]
    assert torch.equal(first.split("test").pool, again.split("test").pool)
    assert first.split("val").labels.tolist().count(0) == 2, "the split is stratified"
    other = load_task(DataConfig(format="imagefolder", root=str(tmp_path), seed=1, cache="memory"), 8)
    assert not torch.equal(first.split("test").pool, other.split("test").pool)


def test_fgvc_json_labels_map_to_contiguous(tmp_path):
    folder = tmp_path / "birds"
    for split, entries in {
        "train": {"a.jpg": 1, "b.jpg": 3},
        "val": {"c.jpg": 3},
        "test": {"d.jpg": 1, "e.jpg": 3},
    }.items():
        for i, name in enumerate(entries):
            write_image(folder / name, i)
        (folder / f"{split}.json").write_text(json.dumps(entries))
    task = load_task(DataConfig(format="fgvc", root=str(tmp_path), task="birds"), 8)
    assert task.num_classes == 2
    assert task.split("train").labels.tolist() == [0, 1]
    assert len(task.split("trainval")) == 3


def test_in_memory_arrays():
    rng = np.random.default_rng(0)
    arrays = {
        s: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 4)
        for s, n in {"train": 8, "val": 4, "test": 6}.items()
    }
    task = from_arrays("mine", lambda: arrays, 32)
    assert task.num_classes == 4
    test = task.split("test")
    assert test.pool.shape == (6, 3, 32, 32)
    assert torch.equal(test.pool[:, 0], test.pool[:, 2]), "grayscale is repeated to 3 channels"
    small, labels = from_arrays("mine", lambda: arrays, 28).split("train").batch(torch.arange(8))
    assert torch.equal(small[:, 0], torch.from_numpy(arrays["train"][0]))
    assert labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_builtin_task_follows_vtab_protocol():
    task = load_task(DataConfig(name="digits"), 32)
    assert [len(task.split(s)) for s in ("train", "val", "trainval")] == [800, 200, 1000]
    assert len(task.split("test")) >= 500
    assert task.split("train").pool.shape[1:] == (3, 32, 32)


BAD_VTAB = [
    ("missing split", lambda f: (f / "val200.txt").unlink(), "val200.txt: split file not found"),
    (
        "no label",
        lambda f: (f / "test.txt").write_text("images/test/0.jpg\n"),
        "test.txt:1: expected '<image path> <integer label>'",
    ),
    ("missing image", lambda f: (f / "images/test/2.jpg").unlink(), "test.txt:3: image"),
    ("undecodable", lambda f: (f / "images/test/1.jpg").write_bytes(b"not a jpeg"), "test.txt:2: cannot decode image"),
    (
        "not contiguous",
        lambda f: (f / "test.txt").write_text("images/test/0.jpg 7\n"),
        "labels are not contiguous: [3, 4, 5, 6]",
    ),
    ("negative", lambda f: (f / "test.txt").write_text("images/test/0.jpg -1\n"), "test.txt:1: label -1 is negative"),
    ("empty split", lambda f: (f / "test.txt").write_text("\n"), "test.txt: the split is empty"),
]


@pytest.mark.parametrize(("damage", "message"), [(d, m) for _, d, m in BAD_VTAB], ids=[n for n, _, _ in BAD_VTAB])
def test_bad_vtab_input_names_file_and_line(tmp_path, damage, message):
    folder = make_vtab(tmp_path)
    damage(folder)
    with pytest.raises(DataError) as info:
        task = vtab(tmp_path)
        task.split("train")
        task.split("test")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_data_config():
    with pytest.raises(ConfigError, match="give either name"):
        DataConfig(name="digits", format="vtab", root="/x")
    with pytest.raises(ConfigError, match=r"data\.root: required"):
        DataConfig(format="vtab")
    with pytest.raises(DataError, match="unknown built-in dataset 'digit'; allowed: mnist5k, digits"):
        load_task(DataConfig(name="digit"), 32)
    with pytest.raises(DataError, match="vtab task folder not found"):
        load_task(DataConfig(format="vtab", root="/nonexistent", task="cifar"), 32)


def test_normalize_and_augment():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(images, (0.5,) * 3, (0.5,) * 3), torch.ones(2, 3, 4, 4))
    ramp = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(64, 3, 4, 4)
    flipped = augment(ramp, torch.Generator().manual_seed(0), flip=True)
    mirrored = [torch.equal(img, ramp[0].flip(-1)) for img in flipped]
    assert 10 < sum(mirrored) < 54
    shifted = augment(ramp, torch.Generator().manual_seed(0), shift=1)
    assert shifted.shape == ramp.shape
