"""The records of the evidence scripts' finished runs, committed, so a fresh clone can audit every row of
their reports and continue a script where another machine stopped (``runs/`` itself is local and ignored).

    python scripts/ledger.py save      # runs/ -> results/runs/: the records of every finished run
    python scripts/ledger.py restore   # results/runs/ -> runs/: the records this clone's runs/ lacks

A finished run is a directory holding ``result.json``: a training run of the shared cache
(``runs/cache/<config key>/``) or a search of ``scripts/search_vs_sweep.py``
(``runs/search_vs_sweep/<task>/<strategy>_seed<n>/``) or a fold run of ``scripts/selection_regret.py``
(``runs/selection_regret/folds/<config key>/``). Its ``config.yaml``, ``best.yaml``, ``val_outcomes.npz`` and
``result.json`` are kept; weights, checkpoints and a search's inner runs are not. The scripts read a restored run
back as they read any finished one, so nothing recorded is trained again.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from autopeft.jobs.rundir import RESULT
from autopeft.records import OUTCOMES

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
LEDGER = ROOT / "results" / "runs"
# under runs/: where the run directories the scripts read back lie
FOLDERS = {"cache": "*", "search_vs_sweep": "*/*", "selection_regret/folds": "*"}
KEPT = ("config.yaml", "best.yaml", OUTCOMES, RESULT)  # result.json last: it marks the copy finished


def finished(root: Path, pattern: str) -> list[Path]:
    """The run directories matching ``pattern`` under ``root`` that hold a result.json."""
    return sorted(result.parent for result in root.glob(f"{pattern}/{RESULT}"))


def copy_records(source: Path, target: Path, pattern: str) -> int:
    """The records of each finished run under ``source`` that ``target`` lacks; returns how many were copied."""
    copied = 0
    for run in finished(source, pattern):
        dest = target / run.relative_to(source)
        if (dest / RESULT).is_file():  # a finished run's records never change
            continue
        dest.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            if (run / name).is_file():
                shutil.copyfile(run / name, dest / name)
        copied += 1
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("save", "restore"))
    args = parser.parse_args()
    source, target = (RUNS, LEDGER) if args.action == "save" else (LEDGER, RUNS)
    for folder, pattern in FOLDERS.items():
        copied = copy_records(source / folder, target / folder, pattern)
        print(f"{args.action}: {copied} finished runs from {source.relative_to(ROOT) / folder}")


if __name__ == "__main__":
    main()
