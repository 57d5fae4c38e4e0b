"""Sweep throughput: trials per minute with 1 vs 2 concurrent trials, optuna vs ray.

    HF_HUB_OFFLINE=1 python scripts/bench_sweep.py        # writes results/bench/sweep.json

One sweep config for every case: the demo backbone on ``digits``, a space of LoRA rank and
adapter bottleneck per model, ``--trials`` trials of ``--epochs`` epoch(s), no pruning. Each
case is the real `autopeft search` command in a fresh process, timed from start to exit
(Python start, Ray start, every trial), every trial on 1 thread:

- ``optuna_1``: one worker process (SQLite study in its run directory);
- ``optuna_2``: two worker processes on one journal file, started together;
- ``ray_1`` / ``ray_2``: a local Ray with 2 CPUs, 1 CPU per trial, at most 1 / 2 trials at once.

Ray's overhead per trial is (ray_1 - optuna_1) / trials: everything Ray adds to a sequential
sweep (its start, trial actors, result and checkpoint reporting), spread over the trials.
Run it on an otherwise idle machine: concurrent jobs change every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

OUT = Path(__file__).resolve().parents[1] / "results" / "bench" / "sweep.json"
COMMAND = "HF_HUB_OFFLINE=1 python scripts/bench_sweep.py"


def sweep_config(trials: int, epochs: int) -> dict:
    return {
        "data": {"name": "digits"},
        "space": {"methods": {"lora": {"sizes": [2, 4, 8]}, "adapter": {"sizes": [0, 8, 16]}}, "sizes_per": "model"},
        "train": {"epochs": epochs, "lr": 3e-3, "warmup_epochs": 0},
        "trials": trials,
        "pruner": "none",
    }


def search(config: Path, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "autopeft.cli", "search", str(config), "--out", str(out), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def timed(*processes: subprocess.Popen) -> float:
    """Seconds until every process has exited successfully (timed from the call)."""
    start = time.perf_counter()
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"autopeft search failed:\n{err}")
    return time.perf_counter() - start


def case(seconds: float, trials: int, concurrent: int) -> dict:
    return {
        "concurrent_trials": concurrent,
        "wall_s": round(seconds, 1),
        "trials_per_min": round(trials / seconds * 60, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = root / "sweep.yaml"
        config.write_text(yaml.safe_dump(sweep_config(args.trials, args.epochs)))
        ray = ("--engine", "ray", "--cpus-per-trial", "1")
        starts = {
            "optuna_1": lambda: [search(config, root / "optuna_1")],
            "optuna_2": lambda: [
                search(config, root / f"optuna_2_{i}", "--storage", str(root / "shared.journal")) for i in range(2)
            ],
            "ray_1": lambda: [search(config, root / "ray_1", *ray, "--max-concurrent", "1")],
            "ray_2": lambda: [search(config, root / "ray_2", *ray, "--max-concurrent", "2")],
        }
        cases = {}
        for name, start in starts.items():
            seconds = timed(*start())
            cases[name] = case(seconds, args.trials, int(name[-1]))
            print(name, cases[name], flush=True)
    overhead = (cases["ray_1"]["wall_s"] - cases["optuna_1"]["wall_s"]) / args.trials
    report = {
        "what": "autopeft search throughput on the demo backbone, digits, 1 thread per trial",
        "trials": args.trials,
        "epochs_per_trial": args.epochs,
        "cases": cases,
        "speedup_2_vs_1": {
            "optuna": round(cases["optuna_1"]["wall_s"] / cases["optuna_2"]["wall_s"], 2),
            "ray": round(cases["ray_1"]["wall_s"] / cases["ray_2"]["wall_s"], 2),
        },
        "ray_overhead_s_per_trial": round(overhead, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": COMMAND,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
