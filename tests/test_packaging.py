"""A wheel install, outside the repository, holds the demo backbone and the named search spaces."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from autopeft.supernet import SPACES

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_install_finds_the_demo_backbone_and_every_named_space(tmp_path):
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)], check=True)
    (wheel,) = tmp_path.glob("autopeft-*.whl")
    spaces = {f"autopeft/search_spaces/{p.relative_to(SPACES).as_posix()}" for p in SPACES.rglob("*.yaml")}
    assets = {f"autopeft/assets/vit_demo_fmnist.{suffix}" for suffix in ("safetensors", "md")}
    assets.add("autopeft/ground.yaml")  # the evaluation ground: schedules, budget, learning-rate grid
    assert len(spaces) == 22 and spaces | assets <= set(zipfile.ZipFile(wheel).namelist())
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    code = (
        "import autopeft; from autopeft.supernet import load_space; "
        "print(autopeft.__file__); print(sorted(load_space('demo').methods)); "
        "print(autopeft.count_trainable(autopeft.create_backbone('vit_demo_fmnist', 10))); "
        "from autopeft.ground import load_ground; print(load_ground().budget)"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    where, methods, params, budget = done.stdout.splitlines()
    assert Path(where).is_relative_to(site)
    assert methods == "['adapter', 'kv_prompt', 'lora', 'ssf', 'vpt']"
    assert int(params) == 1_204_608  # the shipped weights passed their sha256 check on load
    assert int(budget) == 24_576
