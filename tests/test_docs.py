"""The README and docs/ say what the code does: their commands run, their tables are computed, the option
reference is current and every option has help."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import torch

import autopeft
from autopeft.build import build_backbone
from autopeft.docs import command_options, markdown_reference
from autopeft.runconfig import BackboneConfig
from tests.test_data import make_imagefolder

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_readme_is_a_front_door():
    assert len(README.splitlines()) <= 200
    linked = set(re.findall(r"\]\((docs/[\w.]+|results/[\w./]+)\)", README))
    assert linked and all((ROOT / path).is_file() for path in linked)


def test_your_data_in_three_commands_and_the_timm_reload(tmp_path):
    make_imagefolder(tmp_path / "photos", per_class=6)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    (commands,) = blocks(section("Your data in 3 commands"), "bash")
    for command in commands.strip().splitlines():
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}: {done.stderr}"
    (reload,) = blocks(section("Your data in 3 commands"), "python")
    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(reload, scope)
    finally:
        os.chdir(here)
    assert scope["model"].num_classes == 2 and "timm" in type(scope["model"]).__module__


def test_support_matrix_is_what_apply_does():
    table = README.split("<!-- support-matrix -->\n", 1)[1].split("<!-- /support-matrix -->", 1)[0].splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")][1:]
    assert header == list(autopeft.METHODS)
    for line in table[2:]:
        family, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = re.search(r"\(`([^`]+)`\)", family).group(1)
        with torch.device("meta"):
            model = build_backbone(BackboneConfig(name=name, pretrained=False))
            model.reset_classifier(10)
            takes = [_takes(model, method) for method in header]
        assert cells == ["yes" if ok else "no" for ok in takes], name


def _takes(model: torch.nn.Module, method: str) -> bool:
    try:
        autopeft.apply(copy.deepcopy(model), {method: {}})
    except (autopeft.ConfigError, autopeft.BackboneError):
        return False
    return True


def test_every_option_has_help_and_docs_config_md_is_current():
    undescribed = [
        f"{command}: {doc.key}" for command, (_, docs) in command_options().items() for doc in docs if not doc.help
    ]
    assert undescribed == []
    assert (ROOT / "docs" / "config.md").read_text() == markdown_reference(), (
        "docs/config.md is stale: autopeft config --markdown > docs/config.md"
    )
