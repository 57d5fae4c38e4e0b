"""Epoch time on a 224 px VTAB-1k-layout folder of real JPEG files: decode-once cache vs PIL every epoch.

    HF_HUB_OFFLINE=1 python scripts/bench_data.py            # writes results/bench/data.json

The folder (``--root``, default a temporary directory) holds ``--images`` JPEG files (random
500x375 crops, flips and colour shifts of scikit-learn's two sample photos, quality 90) listed
in train800/val200/train800val200/test files. One epoch = every ``trainval`` image once, in
batches of 64, ending in a normalised float batch ready for the model (no model step).

- cache: ``autopeft.data.load_task`` (epoch 1 decodes and writes the cache; later epochs
  index the uint8 pool and normalise);
- PIL: a map-style dataset that opens, converts, resizes and normalises every image every
  epoch, read by a torch DataLoader with 0 and with 2 worker processes.

Epochs 2..N are timed (median). Also reported: the cache's memory (uint8 pool bytes) and
the time to build it and to reload it from disk.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torch.utils.data import DataLoader, Dataset

from autopeft.data import DataConfig, load_task
from autopeft.data.transforms import normalize

COMMAND = "HF_HUB_OFFLINE=1 python scripts/bench_data.py"
OUT = Path(__file__).resolve().parents[1] / "results" / "bench" / "data.json"
MEAN = STD = (0.5, 0.5, 0.5)


def write_folder(root: Path, count: int, seed: int = 0) -> Path:
    """A VTAB-1k task folder with ``count`` trainval JPEG files (80/20) and 200 test files."""
    folder = root / "photos"
    rng = np.random.default_rng(seed)
    photos = [np.asarray(p) for p in load_sample_images().images]
    lines: dict[str, list[str]] = {"train800.txt": [], "val200.txt": [], "test.txt": []}
    n_train = count * 4 // 5
    for index in range(count + 200):
        split_file = "train800.txt" if index < n_train else "val200.txt" if index < count else "test.txt"
        photo = photos[index % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - 375), rng.integers(0, photo.shape[1] - 500)
        crop = photo[top : top + 375, left : left + 500].astype(np.float32) * rng.uniform(0.7, 1.3, 3)
        crop = np.clip(crop, 0, 255).astype(np.uint8)[:, :: rng.choice([1, -1])]
        relative = f"images/{split_file[:-4]}/{index}.jpg"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / relative, quality=90)
        lines[split_file].append(f"{relative} {index % 10}")
    lines["train800val200.txt"] = lines["train800.txt"] + lines["val200.txt"]
    for name, content in lines.items():
        (folder / name).write_text("\n".join(content) + "\n")
    return folder


class PILDataset(Dataset):
    """The usual path: decode, resize and normalise each image whenever it is read."""

    def __init__(self, folder: Path, size: int) -> None:
        rows = [line.rsplit(maxsplit=1) for line in (folder / "train800val200.txt").read_text().splitlines()]
        self.items = [(folder / path, int(label)) for path, label in rows]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        with Image.open(path) as image:
            array = np.array(image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR))
        return normalize(torch.from_numpy(array).permute(2, 0, 1)[None], MEAN, STD)[0], label


def time_epochs(run_epoch, epochs: int) -> list[float]:
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        run_epoch()
        times.append(time.perf_counter() - start)
    return times


def cache_epochs(folder: Path, size: int, batch: int, epochs: int) -> tuple[list[float], int, float]:
    config = DataConfig(format="vtab", root=str(folder.parent), task=folder.name)
    state: dict = {}

    def epoch() -> None:
        if "split" not in state:
            state["split"] = load_task(config, size).split("trainval")
        split = state["split"]
        for positions in torch.randperm(len(split)).split(batch):
            images, _ = split.batch(positions)
            normalize(images, MEAN, STD)

    times = time_epochs(epoch, epochs)
    start = time.perf_counter()
    load_task(config, size).split("trainval")
    reload = time.perf_counter() - start
    pool = state["split"].pool
    return times, pool.numel() * pool.element_size(), reload


def pil_epochs(folder: Path, size: int, batch: int, epochs: int, workers: int) -> list[float]:
    loader = DataLoader(
        PILDataset(folder, size), batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )

    def epoch() -> None:
        for _images, _labels in loader:
            pass

    return time_epochs(epoch, epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(args.root or Path(tmp), args.images)
        cache, pool_bytes, reload = cache_epochs(folder, args.size, args.batch, args.epochs)
        pil = {w: pil_epochs(folder, args.size, args.batch, args.epochs, w) for w in (0, 2)}
    later = {
        "cache": statistics.median(cache[1:]),
        **{f"pil_workers_{w}": statistics.median(t[1:]) for w, t in pil.items()},
    }
    fastest_pil = min(later["pil_workers_0"], later["pil_workers_2"])
    result = {
        "command": COMMAND,
        "machine": {
            "cpu_count": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "settings": {
            "images": args.images,
            "size": args.size,
            "batch": args.batch,
            "epochs": args.epochs,
            "jpeg": "500x375, quality 90, crops of sklearn sample photos",
        },
        "epoch_seconds": {"cache": cache, **{f"pil_workers_{w}": t for w, t in pil.items()}},
        "median_epoch_seconds_from_epoch_2": later,
        "cache_build_seconds_epoch_1": cache[0],
        "cache_reload_from_disk_seconds": reload,
        "cache_pool_mb": pool_bytes / 1e6,
        "targets": {
            "speedup_vs_fastest_pil": {
                "value": round(fastest_pil / later["cache"], 1),
                "target": ">= 3",
                "pass": fastest_pil / later["cache"] >= 3,
            },
            "cache_memory_mb": {
                "value": round(pool_bytes / 1e6, 1),
                "target": "<= 160",
                "pass": pool_bytes / 1e6 <= 160,
            },
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_epoch_seconds_from_epoch_2"]), json.dumps(result["targets"]))


if __name__ == "__main__":
    main()
