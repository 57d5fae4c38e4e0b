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
from autopeft.data.cache import CACHE_FOLDER, decode_image
from autopeft.data.formats import VTAB_FILES, Item
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


# 16-bit images, class structure and the up-front check of every split ------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "dtype", "values", "mode"),
    [
        (".png", np.uint16, [0, 25700, 32768, 65535], "I;16"),
        (".tif", np.uint16, [0, 25700, 32768, 65535], "I;16"),
        (".tif", np.int32, [0, 2**31 // 255 * 100, 2**30, 2**31 - 1], "I"),
    ],
    ids=["png-16bit", "tiff-16bit", "tiff-32bit"],
)
def test_high_bit_depth_grayscale_is_scaled_not_clipped(tmp_path, suffix, dtype, values, mode):
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(np.repeat(np.array(values, dtype=dtype)[:, None], 4, axis=1)).save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    decoded = decode_image(Item(path, 0, "list.txt:1"), 4)
    assert decoded.dtype == np.uint8 and decoded.shape == (4, 4, 3)
    assert decoded[:, 0, 0].tolist() == [0, 100, 128, 255]
    assert (decoded == decoded[:, :1, :1]).all(), "every row is one gray value in all three channels"


def test_16bit_images_reach_the_pool_scaled(tmp_path):
    for split, name in (("train", "train800"), ("val", "val200"), ("test", "test")):
        for i, value in enumerate((0, 32768, 65535)):
            path = tmp_path / "toy" / "images" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((6, 6), value, dtype=np.uint16)).save(path)
        lines = [f"images/{name}/{i}.png {i % 2}" for i in range(3)]
        (tmp_path / "toy" / VTAB_FILES[split]).write_text("\n".join(lines) + "\n")
    (tmp_path / "toy" / "train800val200.txt").write_text(
        (tmp_path / "toy" / "train800.txt").read_text() + (tmp_path / "toy" / "val200.txt").read_text()
    )
    pool = vtab(tmp_path, size=6).split("test").pool
    assert pool[:, :, 3, 3].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]


def write_fgvc(folder: Path, splits: dict[str, dict[str, int]]) -> None:
    for i, (split, entries) in enumerate(splits.items()):
        for j, name in enumerate(entries):
            write_image(folder / name, 10 * i + j)
        (folder / f"{split}.json").write_text(json.dumps(entries))


def test_one_class_vtab_is_refused(tmp_path):
    folder = make_vtab(tmp_path, classes=1)
    with pytest.raises(DataError) as info:
        vtab(tmp_path)
    assert str(info.value) == f"{folder}: only 1 class (label 0); at least 2 classes are needed"


def test_one_class_fgvc_is_refused(tmp_path):
    folder = tmp_path / "birds"
    write_fgvc(folder, {"train": {"a.jpg": 5, "b.jpg": 5}, "val": {"c.jpg": 5}, "test": {"d.jpg": 5}})
    with pytest.raises(DataError) as info:
        load_task(DataConfig(format="fgvc", root=str(tmp_path), task="birds"), 8)
    assert str(info.value) == f"{folder}: only 1 class (label 5); at least 2 classes are needed"


@pytest.mark.parametrize("splits", [("train", "val", "test"), ("",)], ids=["split-folders", "class-folders"])
def test_one_class_imagefolder_is_refused(tmp_path, splits):
    make_imagefolder(tmp_path, splits=splits)
    for split in splits:
        for image in (tmp_path / split / "dog").iterdir():
            image.unlink()
        (tmp_path / split / "dog").rmdir()
    with pytest.raises(DataError) as info:
        load_task(DataConfig(format="imagefolder", root=str(tmp_path)), 8)
    folder = tmp_path / splits[0] if splits[0] else tmp_path
    assert str(info.value) == f"{folder}: only 1 class (folder 'cat'); at least 2 classes are needed"


@pytest.mark.parametrize("splits", [("train", "val", "test"), ("",)], ids=["split-folders", "class-folders"])
def test_imagefolder_class_folder_without_images_is_refused(tmp_path, splits):
    make_imagefolder(tmp_path, splits=splits)
    empty = tmp_path / splits[0] / "bird"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        load_task(DataConfig(format="imagefolder", root=str(tmp_path)), 8)
    assert str(info.value) == (
        f"{empty}: class folder holds no images (allowed: .jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp)"
    )


@pytest.mark.parametrize("split", ["val", "test"])
def test_fgvc_class_absent_from_train_is_refused(tmp_path, split):
    folder = tmp_path / "birds"
    splits = {"train": {"a.jpg": 1, "b.jpg": 3}, "val": {"c.jpg": 3}, "test": {"d.jpg": 1, "e.jpg": 3}}
    splits[split]["f.jpg"] = 7
    write_fgvc(folder, splits)
    with pytest.raises(DataError) as info:
        load_task(DataConfig(format="fgvc", root=str(tmp_path), task="birds"), 8)
    assert str(info.value) == (
        f"{folder / f'{split}.json'}: entry 'f.jpg': class 7 never occurs in {folder / 'train.json'}; "
        f"every {split} class must occur in train"
    )


def test_imagefolder_test_class_absent_from_train_is_refused(tmp_path):
    make_imagefolder(tmp_path)
    write_image(tmp_path / "test" / "cow" / "0.png", 1)
    with pytest.raises(DataError, match=r"test: class folder 'cow' is not among the training classes"):
        load_task(DataConfig(format="imagefolder", root=str(tmp_path)), 8)


def test_vtab_class_absent_from_train_only_warns(tmp_path, caplog):
    """VTAB-1k's own lists do this (SUN397's train800 holds 309 of its 397 classes), so it loads with a warning."""
    folder = make_vtab(tmp_path)
    test_list = folder / "test.txt"
    test_list.write_text(test_list.read_text() + "images/test/0.jpg 3\n")
    with caplog.at_level(logging.WARNING, logger="autopeft.data.formats"):
        task = vtab(tmp_path)
    assert task.num_classes == 4
    assert caplog.messages == [
        f"{test_list}: 1 of 4 classes never occur in {folder / 'train800val200.txt'}: 3 (first at line 5); "
        f"their images can only be scored wrong"
    ]


def test_check_names_a_missing_test_image_before_training(tmp_path):
    folder = make_vtab(tmp_path)
    (folder / "images/test/2.jpg").unlink()
    task = vtab(tmp_path)
    with pytest.raises(DataError) as info:
        task.check()
    assert str(info.value) == f"{folder / 'test.txt'}:3: image {folder / 'images/test/2.jpg'} does not exist"


def test_check_names_a_corrupt_val_image(tmp_path):
    folder = make_vtab(tmp_path)
    (folder / "images/val200/1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"val200\.txt:2: cannot decode image .*images/val200/1\.jpg"):
        vtab(tmp_path, cache="memory").check()


def test_check_decodes_every_split_once_into_the_disk_cache(tmp_path):
    folder = make_vtab(tmp_path)
    expected = {name: vtab(tmp_path, cache="memory").split(name).pool for name in ("train", "test")}
    task = vtab(tmp_path)
    task.check()
    assert sorted(p.name.split("-")[0] for p in (folder / CACHE_FOLDER).iterdir()) == ["test", "trainval"]
    for image in (folder / "images/test/0.jpg", folder / "images/train800/0.jpg"):
        stat = image.stat()
        image.write_bytes(bytes(stat.st_size))  # same size and mtime, no longer a JPEG: reading it would fail
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert torch.equal(task.split("test").pool, expected["test"])
    assert torch.equal(task.split("train").pool, expected["train"])


def test_check_keeps_memory_cached_splits_decoded(tmp_path):
    folder = make_vtab(tmp_path)
    task = vtab(tmp_path, cache="memory")
    task.check()
    for image in folder.glob("images/*/*.jpg"):
        image.unlink()
    assert [len(task.split(name)) for name in ("train", "val", "trainval", "test")] == [6, 3, 9, 4]


def test_check_of_in_memory_arrays_reads_the_test_split():
    rng = np.random.default_rng(0)
    arrays = {s: (rng.integers(0, 256, (4, 8, 8), dtype=np.uint8), np.arange(4) % 2) for s in ("train", "val")}
    arrays["test"] = (np.zeros((4, 8, 8), dtype=np.float32), np.arange(4) % 2)
    task = from_arrays("mine", lambda: arrays, 8)
    assert len(task.split("train")) == 4
    with pytest.raises(DataError, match=r"images: expected uint8 \(N, H, W\) or \(N, H, W, 3\), got torch.float32"):
        task.check()


def test_check_of_builtin_task():
    task = load_task(DataConfig(name="digits"), 32)
    task.check()
    assert [len(task.split(s)) for s in ("train", "val", "trainval")] == [800, 200, 1000]
    assert task.split("test").pool.shape[1:] == (3, 32, 32)
