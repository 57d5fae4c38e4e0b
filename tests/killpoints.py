"""Kill-point runs: a command SIGKILLed at seeded moments and resumed each time, for the tests that compare it
with an uninterrupted run."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

from tests.test_train import cli


def epochs_done(out: Path) -> int:
    """Epochs every run under ``out`` has finished (written to its metrics.jsonl) so far."""
    return sum(len(path.read_text().splitlines()) for path in out.rglob("metrics.jsonl"))


def kill_and_resume(command: list[str], out: Path, epochs: int, seed: int, kills: int = 5) -> None:
    """Run ``autopeft *command --out out`` and SIGKILL it ``kills`` times, resuming after each: once while it
    starts up, then at seeded counts of finished epochs (of ``epochs`` in all) plus up to 0.2 s, so the kills
    land in training, checkpoint and record writes; then resume it to the end."""
    rng = random.Random(seed)
    for target in [0, *sorted(rng.sample(range(1, epochs), kills - 1))]:
        resume = ["--resume"] if (out / "config.yaml").is_file() else []
        process = subprocess.Popen(
            [sys.executable, "-m", "autopeft.cli", *command, "--out", str(out), *resume],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        deadline = time.time() + 120
        while target and epochs_done(out) < target:
            assert process.poll() is None and time.time() < deadline, process.communicate()[1]
            time.sleep(0.01)
        time.sleep(rng.uniform(0.5, 3.0) if target == 0 else rng.uniform(0.0, 0.2))
        process.kill()
        process.communicate()
    if not (out / "result.json").is_file():  # (a last kill may come after the record was written)
        done = cli(*command, "--out", str(out), "--resume")
        assert done.returncode == 0, done.stderr
    assert not list(out.rglob(".*.tmp")), "a temporary file of a killed write was left behind"
