"""The shipped VTAB-1k suite on a fake VTAB-1k tree of tiny images: data.root set once, every task read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from autopeft.data import load_task
from autopeft.report.vtab import TASKS
from autopeft.runconfig import apply_overrides, read_yaml
from autopeft.search.select import data_configs, parse_suite
from autopeft.supernet import SPACES
from tests.test_train import TINY, cli

SUITE = SPACES / "vtab1k.yaml"
LISTS = {"train800": 8, "val200": 4, "test": 4}


def fake_vtab(root: Path, tasks: tuple[str, ...]) -> Path:
    """Every task with two classes of 16 px images: train800 (8), val200 (4), train800val200, test (4)."""
    rng = np.random.default_rng(0)
    for task in tasks:
        lines: dict[str, list[str]] = {}
        for split, count in LISTS.items():
            folder = root / task / "images" / split
            folder.mkdir(parents=True)
            lines[split] = []
            for i in range(count):
                label = i % 2
                pixels = rng.integers(0, 100, (16, 16, 3)) + 150 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
                lines[split].append(f"images/{split}/{i}.png {label}")
        lines["train800val200"] = lines["train800"] + lines["val200"]
        for split, rows in lines.items():
            (root / task / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def test_the_suite_reads_all_19_tasks_from_one_root(tmp_path):
    root = fake_vtab(tmp_path / "vtab-1k", TASKS)
    suite = parse_suite(apply_overrides(read_yaml(SUITE), [f"data.root={root}"]), str(SUITE))
    configs = data_configs(suite)
    assert [(c.format, c.root, c.task) for c in configs] == [("vtab", str(root), t) for t in TASKS]
    for config in configs:
        task = load_task(config, 32)
        task.check()  # every split of every task listed and decoded
        assert task.num_classes == 2 and len(task.split("test")) == 4


def test_select_runs_the_suite_task_by_task(tmp_path):
    root = fake_vtab(tmp_path / "vtab-1k", ("cifar", "dtd"))
    train = "{epochs: 1, batch_size: 8, lr: 0.01, warmup_epochs: 0}"
    overrides = [
        f"data.root={root}",
        "datasets=[cifar, dtd]",
        "strategies=[lora]",
        "backbone.name=vit_tiny_patch16_224",
        "backbone.checkpoint=null",
        "backbone.pretrained=false",
        "backbone.drop_path=0.0",
        f"backbone.options={json.dumps(TINY)}",
        "sweep.trials=1",
        f"sweep.train={train}",
        f"final.train={train}",
    ]
    out = tmp_path / "out"
    done = cli("select", str(SUITE), "--out", str(out), *(x for o in overrides for x in ("--set", o)))
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert [d["dataset"] for d in result["datasets"]] == ["cifar", "dtd"]
    assert all(d["chosen"] == "lora" and d["test_acc"] is not None for d in result["datasets"])
    for task in ("cifar", "dtd"):
        seeds = [
            json.loads((out / task / "final" / "lora" / f"seed{s}" / "result.json").read_text()) for s in (0, 1, 2)
        ]
        assert {r["dataset"] for r in seeds} == {task} and all(r["provenance"]["data_format"] == "vtab" for r in seeds)
