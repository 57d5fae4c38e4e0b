"""Scored candidates, their ranking and Pareto front, and their CSV files.

Two scores exist: val accuracy and val loss. Standalone sweeps rank by accuracy (ties by loss), the
supernet search by loss (ties by accuracy): on a 200-image val split accuracy moves in 0.5-point
steps, and the ranking benchmark (``results/ranking.md``) validates inherited val loss.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from autopeft.files import write_text
from autopeft.pareto import pareto_front
from autopeft.supernet import Scalar, SubnetConfig

COLUMNS = ("rank", "round", "score", "loss", "params", "scored_by", "subnet")
Scorer = Callable[[SubnetConfig], tuple[float, float]]  # subnet -> (val accuracy %, val loss)
RankBy = Literal["accuracy", "loss"]


@dataclass(frozen=True)
class Candidate:
    """A scored subnet: its genes, trainable parameters (head excluded), val score, the search
    round that produced it (evolution generation or trial number), its val loss, and how it was
    scored when that differs from the file's ``scored_by`` (a trial pruned early)."""

    subnet: SubnetConfig
    genes: tuple[tuple[str, Scalar], ...]
    params: int
    score: float
    round: int
    loss: float = math.nan
    scored_by: str = ""


def candidate_front(candidates: Iterable[Candidate], by: RankBy = "accuracy") -> list[Candidate]:
    """Candidates no other candidate beats on both the ranking score and params (lower), by params."""
    return pareto_front(candidates, cost=lambda c: c.params, badness=lambda c: _key(c, by))


def ranked(candidates: Iterable[Candidate], by: RankBy = "accuracy") -> list[Candidate]:
    """Best first by ``by`` (the other score breaks ties), then fewer parameters, then the earlier round."""
    return sorted(candidates, key=lambda c: (*_key(c, by), c.params, c.round))


def _key(c: Candidate, by: RankBy) -> tuple[float, float]:
    loss = math.inf if math.isnan(c.loss) else c.loss
    return (loss, -c.score) if by == "loss" else (-c.score, loss)


def write_candidates(path: Path, candidates: Iterable[Candidate], scored_by: str, by: RankBy = "accuracy") -> None:
    """``candidates.csv`` or ``pareto.csv``: one row per candidate (ranked ``by``), its subnet as JSON."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rank, c in enumerate(ranked(candidates, by), 1):
        subnet = json.dumps(c.subnet.to_dict(), separators=(",", ":"))
        writer.writerow([rank, c.round, f"{c.score:.4f}", f"{c.loss:.6f}", c.params, c.scored_by or scored_by, subnet])
    write_text(path, buffer.getvalue())


def read_candidates(path: Path) -> dict[SubnetConfig, tuple[float, float]]:
    """``subnet -> (score, loss)`` for every row of a file written by ``write_candidates``."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {SubnetConfig.from_dict(json.loads(r["subnet"])): (float(r["score"]), float(r["loss"])) for r in rows}


class OnVal(Protocol):
    """Anything scored on val: a run's record, a report's row."""

    val_acc: float | None
    val_loss: float | None


def best_on_val(runs: Sequence[OnVal]) -> int:
    """Index of the best of ``runs`` on val: accuracy, ties by lower val loss, then the earlier one."""
    return standalone_order([(r.val_acc, r.val_loss) for r in runs])[-1]


def standalone_order(scores: list[tuple[float | None, float | None]]) -> list[int]:
    """Indices of ``(val accuracy, val loss)`` pairs from worst to best by accuracy, ties broken by
    lower val loss and then by the earlier index (the better inherited rank); a failed run (accuracy
    None) counts as worst."""

    def key(i: int) -> tuple[float, float, int]:
        acc, loss = scores[i]
        return (-1.0 if acc is None else acc, -(loss if loss is not None else float("inf")), -i)

    return sorted(range(len(scores)), key=key)
