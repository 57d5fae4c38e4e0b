"""The sweep engines by name, the one entry point of both; each is imported only when it runs (Ray is heavy),
and neither engine imports this module."""

from __future__ import annotations

from pathlib import Path

from autopeft.errors import ConfigError
from autopeft.progress import StageProgress
from autopeft.records import SearchRecord
from autopeft.search.sweep import SweepConfig, Where

ENGINES = ("optuna", "ray")


def run_sweep(
    engine: str, config: SweepConfig, out: Path, where: Where, resume: bool, progress: StageProgress | None
) -> SearchRecord:
    """The sweep on ``engine`` (one of ENGINES)."""
    if engine == "optuna":
        from autopeft.search.optuna_sweep import optuna_sweep

        return optuna_sweep(config, out, where, resume, progress)
    if engine == "ray":
        from autopeft.search.ray_sweep import ray_sweep

        return ray_sweep(config, out, where, resume, progress)
    raise ConfigError(f"engine: got {engine!r}; allowed: {', '.join(ENGINES)}")
