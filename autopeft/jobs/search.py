"""The search jobs: the pipeline (``autopeft run``), a search on val (supernet or a sweep of standalone
trials) and a suite's per-dataset selection (``autopeft select``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopeft.progress import StageProgress
from autopeft.records import PipelineRecord, SearchRecord, SelectionRecord
from autopeft.report.summaries import percent, selection_lines
from autopeft.search.pipeline import PipelineConfig, parse_pipeline, run_pipeline
from autopeft.search.select import SuiteConfig, parse_suite, run_select
from autopeft.search.sweep import SweepConfig, Where, parse_sweep

DEMO_NOTE = (
    "This is the embedded demo: every row is at one parameter budget, but its schedules are short, chosen so "
    "the demo ends in minutes, and its learning rates are not tuned. The converged, compute-fair comparison of "
    "the search against tuned single methods, Optuna and random search is results/search_vs_sweep.md in "
    "autopeft's repository."
)


@dataclass(frozen=True)
class PipelineJob:
    """``autopeft run``: supernet, search, top-k retrain, baselines, final runs and the comparison table."""

    name: str = "demo"
    embedded: bool = False  # the embedded default config: its summary says what the demo is

    def parse(self, data: Any, where: str, base: Path | None) -> PipelineConfig:
        return parse_pipeline(data, where, base)

    def run(self, config: PipelineConfig, out: Path, resume: bool, progress: StageProgress) -> PipelineRecord:
        return run_pipeline(config, out, resume, progress, note=DEMO_NOTE if self.embedded else "")

    def done(self, record: PipelineRecord, out: Path) -> str:
        return (
            (out / "summary.md").read_text()
            + f"\n{out}: result.json, candidates.csv, pareto.csv, best.yaml (train the winner: autopeft train "
            f"{out}/best.yaml)"
        )


@dataclass(frozen=True)
class SupernetSearchJob:
    """``autopeft search --engine supernet``: the pipeline up to its winner on val (the test split never read)."""

    name: str = "search"

    def parse(self, data: Any, where: str, base: Path | None) -> PipelineConfig:
        return parse_pipeline(data, where, base)

    def run(self, config: PipelineConfig, out: Path, resume: bool, progress: StageProgress) -> SearchRecord:
        return run_pipeline(config, out, resume, progress, choose_only=True)

    def done(self, record: SearchRecord, out: Path) -> str:
        return (
            f"{out}: winner of {record.candidates} candidates: val {percent(record.val_acc, '%')}  "
            f"trainable {record.trainable_params:,}\n"
            f"{out}: candidates.csv, pareto.csv, best.yaml (test it on train+val: autopeft retrain {out})"
            + _selection(record)
        )


@dataclass(frozen=True)
class SweepJob:
    """``autopeft search --engine optuna|ray``: a sweep of standalone trials, scheduled as ``where`` says."""

    engine: str
    where: Where
    name: str = "search"

    def parse(self, data: Any, where: str, base: Path | None) -> SweepConfig:
        return parse_sweep(data, where, base)

    def run(self, config: SweepConfig, out: Path, resume: bool, progress: StageProgress) -> SearchRecord:
        from autopeft.search.engines import run_sweep

        return run_sweep(self.engine, config, out, self.where, resume, progress)

    def done(self, record: SearchRecord, out: Path) -> str:
        return (
            f"{out}: best trial {record.best_trial}: val {percent(record.val_acc, '%')}  "
            f"trainable {record.trainable_params:,}  ({record.trials_completed} completed, "
            f"{record.trials_pruned} pruned, {record.trials_failed} failed)\n"
            f"{out}: candidates.csv, pareto.csv, best.yaml (train the winner: autopeft train {out}/best.yaml)"
            + _selection(record)
        )


@dataclass(frozen=True)
class SelectJob:
    """``autopeft select``: per-dataset method selection over a suite (strategies on val, finalists per seed)."""

    engine: str | None = None  # overrides the suite's sweep engine
    name: str = "select"

    def parse(self, data: Any, where: str, base: Path | None) -> SuiteConfig:
        return parse_suite({**data, "engine": self.engine} if self.engine else data, where, base)

    def run(self, config: SuiteConfig, out: Path, resume: bool, progress: StageProgress) -> SelectionRecord:
        return run_select(config, out, resume, progress)

    def done(self, record: SelectionRecord, out: Path) -> str:
        return (
            (out / "summary.md").read_text()
            + f"\n{out}: result.json, summary.md, <dataset>/selection.json; final runs in "
            "<dataset>/final/<strategy>/seed<s>"
        )


def _selection(record: SearchRecord) -> str:
    """How a search's winner was chosen: the tied set and each interval (when its selection recorded one)."""
    return "" if record.selection is None else "\n\n" + "\n".join(selection_lines(record.selection))
