"""Jobs: one shape for every command that turns a config file into a run directory and its record.

A job parses its config (``parse``), runs it into a ``RunDir`` that owns the directory's lifecycle
(``run``), and says in a line or two what it wrote (``done``). ``autopeft train``, ``run``, ``search``
and ``select`` are jobs; ``cli.py`` reads the config file, applies ``--set`` overrides and picks the
output folder once for all of them. This module imports nothing heavy: a job's module is imported
when the job is made (``make``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from autopeft.progress import StageProgress
    from autopeft.records import Record

ConfigT = TypeVar("ConfigT")
RecordT = TypeVar("RecordT", bound="Record")

JOBS = {
    "train": "autopeft.jobs.train:TrainJob",
    "run": "autopeft.jobs.search:PipelineJob",
    "search supernet": "autopeft.jobs.search:SupernetSearchJob",
    "search sweep": "autopeft.jobs.search:SweepJob",
    "select": "autopeft.jobs.search:SelectJob",
}


class Job(Protocol[ConfigT, RecordT]):
    """One command from its config to its record."""

    name: str  # the run folder's default stem when no config file is given

    def parse(self, data: Any, where: str, base: Path | None) -> ConfigT:
        """The typed config from YAML data (``where`` names the file in errors; ``base`` resolves its paths)."""
        ...

    def run(self, config: ConfigT, out: Path, resume: bool, progress: StageProgress) -> RecordT:
        """Run (or continue) ``config`` into ``out``; the record it wrote as result.json."""
        ...

    def done(self, record: RecordT, out: Path) -> str:
        """What the command prints when it ends: the result and the files to read next."""
        ...


def make(kind: str, **options: Any) -> Job:
    """The job ``kind`` (a key of JOBS) made with ``options``."""
    module, _, name = JOBS[kind].partition(":")
    return getattr(importlib.import_module(module), name)(**options)
