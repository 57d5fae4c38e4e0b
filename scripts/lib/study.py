"""What the long evidence studies (``search_vs_sweep.py``, ``cnn_transfer.py``, ``e2vpt.py``,
``selection_regret.py``) share: their common options, a process pool's map that says on stderr how far each stage
has come (so hours of work are never silent), the plan's table, and the lines that say how to regenerate a report,
where its files are and what the runs behind it cost (what one run costs is ``lib.charges``). The run cache itself
is the package's (``autopeft.jobs.train.cached_run`` trains or reads back, ``cached`` only reads)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def study_arguments(parser: argparse.ArgumentParser, tasks: Iterable[str], runs: str | None = None) -> None:
    """The options every study takes: the run cache, its own runs folder (where it has one), the workers and the
    tasks."""
    tasks = list(tasks)
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    if runs is not None:
        parser.add_argument("--runs", type=Path, default=Path(runs))
    parser.add_argument("--workers", type=int, default=2, help="jobs at once, 1 thread each")
    parser.add_argument("--tasks", nargs="+", default=tasks, choices=tasks)


def shown(path: Path) -> str:
    """``path`` as a report shows it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_jobs(pool: Executor, job: Callable[[Any], Any], args: Iterable[Any], stage: str) -> list[Any]:
    """``pool.map(job, args)``, in order, with a line per finished job: ``stage: k/n done (m min)``."""
    start = time.perf_counter()
    futures = [pool.submit(job, a) for a in args]
    for done, _ in enumerate(as_completed(futures), 1):
        minutes = (time.perf_counter() - start) / 60
        print(f"{stage}: {done}/{len(futures)} done ({minutes:.0f} min)", file=sys.stderr, flush=True)
    return [f.result() for f in futures]


def recorded_time(seconds: dict[str, float | None]) -> str:
    """The reports' cost line: per task, the recorded wall time of every run behind it (1 thread each), which is
    what regenerating it from an empty cache takes whichever calls ran it; None: not recorded."""
    hours = {task: s / 3600 for task, s in seconds.items() if s is not None}
    per_task = [f"{task} {hours[task]:.1f} h" if task in hours else f"{task} not recorded" for task in seconds]
    scope = "in all" if len(hours) == len(seconds) else "for the tasks recorded"
    return f"Recorded run time, 1 thread per run: {', '.join(per_task)}; {sum(hours.values()):.1f} h {scope}."


def report_command(script: str, argv: list[str]) -> str:
    """The command a report shows: ``script``'s call with ``argv`` less ``--tasks`` and its values, since a call
    on some tasks keeps the report's others, and the command regenerates them all."""
    kept, in_tasks = [], False
    for arg in argv:
        in_tasks = arg == "--tasks" or (in_tasks and not arg.startswith("-"))
        if not in_tasks and not arg.startswith("--tasks="):
            kept.append(arg)
    return f"HF_HUB_OFFLINE=1 {shlex.join(['python', script, *kept])}"


PlanRow = tuple[str, str, int, int, float]  # task, stage, runs, done, CPU seconds left


def plan_table(rows: list[PlanRow], workers: int, cost: dict[str, float], priced: str, notes: str) -> str:
    """``--plan``'s table: runs per task and stage, how many are done, the CPU hours left, and the total, priced
    at ``cost`` (seconds per image per method) and what ``priced`` adds; ``notes`` says what the prices leave out."""
    total = sum(r[4] for r in rows)
    lines = [f"{'task':<19} {'stage':<38} {'runs':>5} {'done':>5} {'CPU h':>6}"]
    lines += [f"{t:<19} {stage:<38} {n:>5} {d:>5} {h / 3600:>6.2f}" for t, stage, n, d, h in rows]
    lines += [
        "",
        f"estimated CPU time {total / 3600:.1f} h, about {total / 3600 / workers:.1f} h wall with --workers {workers} "
        f"(1 thread each); seconds per image from the cache's runs: "
        + ", ".join(f"{m} {s * 1000:.1f} ms" for m, s in cost.items())
        + priced,
        notes,
    ]
    return "\n".join(lines)
