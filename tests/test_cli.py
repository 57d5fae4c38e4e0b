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
