"""Dataset layouts on disk: VTAB-1k lists, ImageFolder trees and FGVC JSON annotations."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path

from autopeft.errors import DataError

SPLITS = ("train", "val", "trainval", "test")
VTAB_FILES = {"train": "train800.txt", "val": "val200.txt", "trainval": "train800val200.txt", "test": "test.txt"}
FGVC_FILES = {"train": "train.json", "val": "val.json", "test": "test.json"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One image of a split: its file, label and where it was listed (for error messages)."""

    path: Path
    label: int
    origin: str


@dataclass(frozen=True)
class FileTask:
    """A dataset on disk: its folder, split items and number of classes."""

    folder: Path
    items: dict[str, list[Item]]
    num_classes: int
    data_format: str


def read_vtab(root: Path, task: str | None) -> FileTask:
    """``<root>/<task>/{train800,val200,train800val200,test}.txt`` with ``<path> <label>`` lines."""
    folder = _task_folder(root, task, "vtab")
    items = {split: read_list_file(folder / name) for split, name in VTAB_FILES.items()}
    num_classes = check_labels(items, folder, contiguous=True)
    for split, training in (("val", "train"), ("test", "trainval")):
        _warn_untrained(items, split, training, folder)
    return FileTask(folder, items, num_classes, "vtab")


def _warn_untrained(items: dict[str, list[Item]], split: str, training: str, folder: Path) -> None:
    """Log the classes of ``split`` that never occur in ``training``.

    A warning, not an error: VTAB-1k's own lists do this (SUN397's train800val200 holds 325 of its 397 classes).
    """
    trained = {item.label for item in items[training]}
    untrained = [item for item in items[split] if item.label not in trained]
    if untrained:
        labels = sorted({item.label for item in untrained})
        shown = ", ".join(map(str, labels[:5])) + (", ..." if len(labels) > 5 else "")
        log.warning(
            "%s: %d of %d classes never occur in %s: %s (first at line %s); their images can only be scored wrong",
            folder / VTAB_FILES[split],
            len(labels),
            len({item.label for item in items[split]}),
            folder / VTAB_FILES[training],
            shown,
            untrained[0].origin.rsplit(":", 1)[1],
        )


def read_list_file(file: Path) -> list[Item]:
    """Parse ``<image path relative to the file's folder> <integer label>`` lines."""
    if not file.is_file():
        raise DataError(f"{file}: split file not found (a VTAB-1k task folder holds {', '.join(VTAB_FILES.values())})")
    items = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{file}:{number}: expected '<image path> <integer label>', got {line.strip()!r}")
        items.append(Item(file.parent / parts[0], int(parts[1]), f"{file}:{number}"))
    if not items:
        raise DataError(f"{file}: the split is empty")
    return items


def read_fgvc(root: Path, task: str | None) -> FileTask:
    """``<root>/<task>/{train,val,test}.json`` mapping image paths (relative to the folder) to class ids.

    Class ids may be any integers (FGVC releases often start at 1); they map in sorted order to 0..K-1.
    """
    folder = _task_folder(root, task, "fgvc")
    raw = {split: _read_json_split(folder / name) for split, name in FGVC_FILES.items()}
    classes = sorted({item.label for items in raw.values() for item in items})
    _check_class_count([f"label {label}" for label in classes], folder)
    trained = {item.label for item in raw["train"]}
    for split in ("val", "test"):
        untrained = next((item for item in raw[split] if item.label not in trained), None)
        if untrained is not None:
            raise DataError(
                f"{untrained.origin}: class {untrained.label} never occurs in {folder / FGVC_FILES['train']}; "
                f"every {split} class must occur in train"
            )
    index = {cls: i for i, cls in enumerate(classes)}
    items = {split: [replace(item, label=index[item.label]) for item in raw[split]] for split in raw}
    items["trainval"] = items["train"] + items["val"]
    return FileTask(folder, items, check_labels(items, folder, contiguous=True), "fgvc")


def _read_json_split(file: Path) -> list[Item]:
    if not file.is_file():
        raise DataError(f"{file}: split file not found (an FGVC task folder holds {', '.join(FGVC_FILES.values())})")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from err
    if not isinstance(data, dict) or not data:
        raise DataError(f"{file}: expected a non-empty JSON object mapping image paths to integer labels")
    for path, label in data.items():
        if isinstance(label, bool) or not isinstance(label, int):
            raise DataError(f"{file}: entry {path!r} has label {label!r}; allowed: an integer")
    return [Item(file.parent / path, label, f"{file}: entry {path!r}") for path, label in data.items()]


def read_imagefolder(root: Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> FileTask:
    """``<root>/{train,val,test}/<class>/<image>``, or ``<root>/<class>/<image>`` split with a fixed seed.

    Classes are the sorted folder names. A missing ``val`` folder is carved from ``train``.
    """
    if not root.is_dir():
        raise DataError(f"{root}: ImageFolder root not found")
    if (root / "train").is_dir():
        classes = _class_folders(root / "train")
        items = {
            split: _folder_items(root / split, classes) for split in ("train", "val", "test") if (root / split).is_dir()
        }
        if "test" not in items:
            raise DataError(f"{root}: has train/ but no test/ folder; give both, or only class folders to split")
        if "val" not in items:
            items["train"], items["val"] = _carve(items["train"], val_fraction, seed)
    else:
        classes = _class_folders(root)
        rest, test = _carve(_folder_items(root, classes), test_fraction, seed)
        train, val = _carve(rest, val_fraction / (1 - test_fraction), seed)
        items = {"train": train, "val": val, "test": test}
    items["trainval"] = items["train"] + items["val"]
    for split, split_items in items.items():
        if not split_items:
            raise DataError(f"{root}: split '{split}' has no images")
    return FileTask(root, items, len(classes), "imagefolder")


def _class_folders(folder: Path) -> list[str]:
    """The class names under ``folder``: at least two folders, each holding images."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: no class folders (expected <class>/<image> inside)")
    for name in classes:
        if not _images(folder / name):
            raise DataError(f"{folder / name}: class folder holds no images (allowed: {', '.join(IMAGE_SUFFIXES)})")
    _check_class_count([f"folder '{name}'" for name in classes], folder)
    return classes


def _images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def _folder_items(folder: Path, classes: list[str]) -> list[Item]:
    unknown = sorted({p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")} - set(classes))
    if unknown:
        raise DataError(f"{folder}: class folder '{unknown[0]}' is not among the training classes {classes[:5]}...")
    return [
        Item(path, label, str(path))
        for label, name in enumerate(classes)
        if (folder / name).is_dir()
        for path in _images(folder / name)
    ]


def _carve(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Split off ``fraction`` of each class with a fixed seed (stratified)."""
    keep, carved = [], []
    rng = random.Random(seed)
    for label in sorted({item.label for item in items}):
        members = [item for item in items if item.label == label]
        rng.shuffle(members)
        count = round(len(members) * fraction)
        carved += members[:count]
        keep += members[count:]
    return keep, carved


def _task_folder(root: Path, task: str | None, data_format: str) -> Path:
    folder = root / task if task else root
    if not folder.is_dir():
        raise DataError(f"{folder}: {data_format} task folder not found")
    return folder


def check_labels(items: dict[str, list[Item]], where: Path, contiguous: bool) -> int:
    """Check labels are 0..K-1 with none missing; return K."""
    labels = sorted({item.label for split in items.values() for item in split})
    negative = next((item for split in items.values() for item in split if item.label < 0), None)
    if negative is not None:
        raise DataError(f"{negative.origin}: label {negative.label} is negative; labels must be 0..K-1")
    missing = sorted(set(range(labels[-1] + 1)) - set(labels))
    if contiguous and missing:
        raise DataError(
            f"{where}: labels are not contiguous: {missing[:5]} never occur between 0 and {labels[-1]}; "
            f"labels must be 0..K-1"
        )
    _check_class_count([f"label {label}" for label in labels], where)
    return labels[-1] + 1


def _check_class_count(classes: list[str], where: Path) -> None:
    """A classifier needs two classes; with one it scores 100% without learning anything."""
    if len(classes) < 2:
        raise DataError(f"{where}: only 1 class ({classes[0]}); at least 2 classes are needed")
