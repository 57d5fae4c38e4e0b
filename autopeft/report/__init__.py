"""Leaderboard reports over run directories: Markdown, CSV, LaTeX, plots and one self-contained HTML page."""

from autopeft.report.build import write_report

__all__ = ["write_report"]
