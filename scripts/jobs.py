"""Parallel jobs for the long evidence scripts (``search_vs_sweep.py``, ``cnn_transfer.py``, ``e2vpt.py``): a
process pool's map that says on stderr how far each stage has come, so hours of work are never silent."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, as_completed
from typing import Any


def run_jobs(pool: Executor, job: Callable[[Any], Any], args: Iterable[Any], stage: str) -> list[Any]:
    """``pool.map(job, args)``, in order, with a line per finished job: ``stage: k/n done (m min)``."""
    start = time.perf_counter()
    futures = [pool.submit(job, a) for a in args]
    for done, _ in enumerate(as_completed(futures), 1):
        minutes = (time.perf_counter() - start) / 60
        print(f"{stage}: {done}/{len(futures)} done ({minutes:.0f} min)", file=sys.stderr, flush=True)
    return [f.result() for f in futures]
