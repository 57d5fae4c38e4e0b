"""The ``autopeft`` command in a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "autopeft.cli", *args], capture_output=True, text=True, env=env)


def test_methods_lists_exact_counts():
    result = run_cli("methods", "--backbone", "vit_tiny_patch16_224", "--num-classes", "10")
    assert result.returncode == 0, result.stderr
    rows = {
        line.split("│")[1].strip(): line.split("│")[-2].strip() for line in result.stdout.splitlines() if "│" in line
    }
    d, layers = 192, 12
    assert rows["lora"] == f"{4 * 8 * d * layers:,}"
    assert rows["adapter"] == f"{(2 * d * 8 + 8 + d) * layers:,}"
    assert rows["linear"] == "0"


def test_methods_on_a_built_in_backbone_count_the_architecture_without_loading_its_weights():
    result = run_cli("methods", "--backbone", "vit_demo_fmnist", "--num-classes", "10")
    assert result.returncode == 0 and result.stderr == ""  # loading weights onto the meta device warned per tensor
    rows = {
        line.split("│")[1].strip(): line.split("│")[-2].strip() for line in result.stdout.splitlines() if "│" in line
    }
    assert rows["lora"] == "24,576"  # rank 8 on q and v: the ground's budget


def test_bad_backbone_is_one_line_without_traceback():
    result = run_cli("methods", "--backbone", "vit_tiny_patch16_22")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "autopeft: error: unknown backbone 'vit_tiny_patch16_22'; did you mean vit_tiny_patch16_224"
    )
    assert "Traceback" not in result.stderr


def test_datasets_shows_every_name_and_source_whole_in_a_pipe_and_on_a_wide_terminal():
    """At 80 columns or in a pipe the table cut names to `shapes_posi…`."""
    from autopeft.data import BUILTIN_TASKS

    for columns in ("80", "160"):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": columns}
        done = subprocess.run(
            [sys.executable, "-m", "autopeft.cli", "datasets"], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        assert "…" not in done.stdout
        flat = " ".join(done.stdout.replace("│", " ").split())  # a source may wrap over lines of a table cell
        for name, task in BUILTIN_TASKS.items():
            assert f" {name} " in f" {flat} ".replace(":", " ")
            if columns == "80":
                assert " ".join(task.source.split()) in flat


def test_options_are_described_and_spelled_as_a_config_spells_them():
    from autopeft.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    undescribed = [
        f"{name} {action.dest}"
        for name, sub in commands.items()
        for action in sub._actions
        if action.dest != "help" and not action.help
    ]
    assert undescribed == []
    top = run_cli("--help")
    assert "``" not in top.stdout and "COMMAND --help" in top.stdout
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    methods = subprocess.run(
        [sys.executable, "-m", "autopeft.cli", "methods", "--backbone", "vit_tiny_patch16_224"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert "{rank: 8, alpha: null, targets: [q, v], dropout: 0.0}" in methods.stdout  # YAML, not a Python repr
    assert "{length: 5, shared: true}" in methods.stdout
    bad = run_cli("methods", "--num-classes", "0")
    assert (
        bad.returncode == 2 and bad.stderr.strip() == "autopeft: error: --num-classes: got 0; allowed: an integer >= 1"
    )
