"""Every command in docs/ runs: each page's shell blocks in order, in a folder of their own, with tiny ``--set``
overrides appended so that a page takes seconds (a tiny ViT, one epoch, few trials). A block that cannot run
here carries ``<!-- no-test: reason -->`` on the line above it. (README's commands run elsewhere: its quickstart
is docs/run.md's ``autopeft run`` plus the install, its "your data" block runs in tests/test_docs.py and its
test command is CI.)"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_optuna_sweep import SWEEP
from tests.test_pipeline import CONFIG as PIPELINE
from tests.test_select import SUITE, TRAIN
from tests.test_train import TINY

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
BACKBONE = {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY}
SMALL_TRAIN = {"epochs": 1, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0}
SETS = {  # per command (and, for search, engine): the overrides that make it tiny
    "train": {"backbone": BACKBONE, "train": SMALL_TRAIN},
    "run": {
        "backbone": BACKBONE,
        "supernet": {"train": SMALL_TRAIN},
        "retrain": {"top_k": 1, "train": SMALL_TRAIN, "select_epochs": 1, "seeds": [0]},
        "baselines": ["lora"],
    },
    "search": {"backbone": BACKBONE, "train": SMALL_TRAIN, "trials": 2},
    "select": {
        "backbone": BACKBONE,
        "datasets": ["digits"],
        **{key: SUITE[key] for key in ("strategies", "budget", "sweep", "supernet", "final")},
    },
    "retrain": {"train": TRAIN},
}
FILES = {  # the configs the pages call yours, as tiny ones
    "my_run.yaml": PIPELINE,
    "sweep.yaml": {**SWEEP, "trials": 2},
    "suite.yaml": {**SUITE, "datasets": ["digits"]},
}


def shell_blocks(page: Path) -> list[tuple[str, str | None]]:
    """The page's shell blocks, each with the reason it is not run (None: run it)."""
    found = re.findall(r"(?:<!-- no-test: (.*?) -->\n)?```(?:bash|sh)?\n(.*?)```", page.read_text(), re.S)
    return [(block, reason or None) for reason, block in found if re.search(r"^autopeft ", block, re.M)]


def commands(block: str) -> list[str]:
    """The block's command lines, continuations joined and trailing comments dropped."""
    lines = block.replace("\\\n", " ").splitlines()
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in lines if line.strip()]


def tiny(command: str) -> str:
    """``command`` with the overrides that make it tiny."""
    words = shlex.split(command)
    if words[0] != "autopeft":
        return command
    kind = "run" if words[1] == "search" and "supernet" in words else words[1]
    sets = SETS.get(kind, {})
    return command + "".join(
        f" --set {shlex.quote(f'{key}={yaml.safe_dump(value, default_flow_style=True, width=1000).strip()}')}"
        for key, value in sets.items()
    )


def out_of(command: str) -> Path | None:
    words = shlex.split(command)
    return Path(words[words.index("--out") + 1]) if "--out" in words else None


@pytest.mark.parametrize("page", DOCS, ids=[p.stem for p in DOCS])
def test_every_command_of_a_docs_page_runs(page, tmp_path):
    blocks = [block for block, reason in shell_blocks(page) if reason is None]
    if not blocks:
        pytest.skip(f"{page.name}: no command to run here")
    (tmp_path / "search_spaces").symlink_to(ROOT / "search_spaces")
    for name, config in FILES.items():
        (tmp_path / name).write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for block in blocks:
        for command in commands(block):
            out = out_of(command)
            if "--resume" in command and out is not None and not (tmp_path / out).exists():
                first = tiny(command.replace(" --resume", ""))  # "after a kill": the run it continues, first
                done = subprocess.run(first, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
                assert done.returncode == 0, f"{page.name}: {first}\n{done.stderr}"
            done = subprocess.run(tiny(command), shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{page.name}: {tiny(command)}\n{done.stderr}"


def test_a_block_left_out_says_why():
    reasons = [reason for page in DOCS for _, reason in shell_blocks(page) if reason is not None]
    assert reasons and all(len(reason.split()) >= 3 for reason in reasons)
