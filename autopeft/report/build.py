"""``autopeft report``: render run directories into leaderboard tables, plots and one self-contained HTML page."""

from __future__ import annotations

import re
from pathlib import Path

from autopeft.files import write_atomic
from autopeft.report.html import Section, to_html
from autopeft.report.load import Loaded, load_runs
from autopeft.report.plots import Point, pareto_plot, subnet_plot
from autopeft.report.table import (
    MISSING,
    Leaderboard,
    build_leaderboard,
    format_params,
    header,
    text_rows,
    to_csv,
    to_latex,
)
from autopeft.report.vtab import PUBLISHED, PUBLISHED_COLUMNS, PUBLISHED_SOURCE, PUBLISHED_TITLE, is_vtab

LEGEND = (
    "Test accuracy (%) of the final runs (final epoch, selected on val), mean ± std over seeds where more than one "
    "ran; params: trainable parameters in millions, classifier head excluded, averaged over the row's datasets. "
    "'-' = missing (never zero; see Missing); '- (k/n)' = not computed, only k of the n datasets it needs are present."
)
VTAB_LEGEND = (
    "VTAB-1k: each group column is the mean over its tasks (only when all are present); G = mean of the three "
    "group means (as in papers); M19 = plain mean over the 19 tasks (as in V-PETL Bench); 'Mean (k VTAB tasks)' "
    "when not all 19 are in the report."
)


def write_report(run_dirs: list[Path], out: Path) -> list[Path]:
    """Read ``run_dirs`` (a malformed result.json raises before anything is written), write the report to ``out``."""
    files = render(load_runs(run_dirs))
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomic(out / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
    return [out / name for name in files]


def render(loaded: Loaded) -> dict[str, bytes]:
    """Every output file's name and bytes."""
    board = build_leaderboard(loaded.entries)
    images = _plots(board)
    sections = _sections(board, loaded, images)
    return {
        "leaderboard.md": _markdown(sections).encode(),
        "leaderboard.csv": to_csv(board).encode(),
        "leaderboard.tex": to_latex(board).encode(),
        "leaderboard.html": to_html("autopeft leaderboard", sections, images).encode(),
        **images,
    }


def _plots(board: Leaderboard) -> dict[str, bytes]:
    images: dict[str, bytes] = {}
    points = [
        Point(row.name, row.mean_params / 1e6, row.summary[board.score_column].value)
        for row in board.rows
        if board.score_column and row.summary[board.score_column].value is not None and row.mean_params is not None
    ]
    if points:
        images["pareto.png"], images["pareto.svg"] = pareto_plot(points, f"{board.score_column}, test accuracy (%)")
    for row in board.rows:
        for entry in (e for e in row.entries if e.name == "searched" and e.command == "run"):
            png = subnet_plot(entry.methods, f"searched subnet: {entry.dataset}\n{entry.source}")
            if png is not None:
                images[_unique(images, f"subnet_{_slug(entry.dataset)}")] = png
    return images


def _unique(taken: dict[str, bytes], stem: str) -> str:
    names = (f"{stem}.png", *(f"{stem}_{i}.png" for i in range(2, len(taken) + 3)))
    return next(name for name in names if name not in taken)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "dataset"


def _sections(board: Leaderboard, loaded: Loaded, images: dict[str, bytes]) -> list[Section]:
    vtab = any(is_vtab(d) for d in board.datasets)
    sections = [
        Section("Leaderboard", [LEGEND, *([VTAB_LEGEND] if vtab else [])], header(board), text_rows(board)),
        _pareto(board, images),
        Section(
            "Searched subnets",
            ["Size per block and method (0 = off; ssf: 1 = on)."],
            images=[(n, n) for n in images if n.startswith("subnet_")],
        ),
        _pruned(board),
        _choices(loaded),
        _costs(loaded),
    ]
    if vtab:
        sections.append(
            Section(PUBLISHED_TITLE, [PUBLISHED_SOURCE], list(PUBLISHED_COLUMNS), [list(r) for r in PUBLISHED])
        )
    sections += [_missing(loaded), _provenance(board)]
    return [s for s in sections if s.rows or s.images or s.title == "Missing"]


def _pareto(board: Leaderboard, images: dict[str, bytes]) -> Section:
    if "pareto.png" not in images:
        return Section("Accuracy vs parameters", ["No row has a score on every dataset: nothing to plot."])
    note = (
        f"{board.score_column} vs trainable parameters (mean over datasets, log scale) for rows with every dataset; "
        "the Pareto front (more accuracy, fewer parameters) in red. Also pareto.svg."
    )
    return Section("Accuracy vs parameters", [note], images=[("pareto.png", "Pareto plot")])


def _pruned(board: Leaderboard) -> Section:
    """The entries whose prompts were pruned before their final runs: level, fraction, params before and after."""
    rows = [
        [
            row.name,
            e.dataset,
            e.pruning.level,
            "none (not pruned)" if e.pruning.fraction is None else f"{e.pruning.fraction:g}",
            f"{e.pruning.params_before:,}",
            f"{e.pruning.params_after:,}",
            e.pruning.record,
        ]
        for row in board.rows
        for e in row.entries
        if e.pruning is not None
    ]
    note = (
        "E2VPT pruning of the prompts before the final runs: the fraction chosen on val by the rule in the "
        "record (test never read), trainable parameters (head excluded) before and after; the leaderboard's "
        "params are after."
    )
    header_ = ["row", "dataset", "level", "fraction", "params before", "params after", "record"]
    return Section("Pruned prompts", [note], header_, rows)


def _choices(loaded: Loaded) -> Section:
    """Each choice with its evidence: how candidates were scored, the winner and who it is tied with."""
    rows = []
    for c in sorted(loaded.choices, key=lambda c: (c.dataset, str(c.source))):
        s, choice = c.selection, c.selection.choice
        how = "holdout val" if s.mode == "holdout" else f"{s.folds} folds" + (", raced" if s.race else "")
        how += f", {s.seeds} seeds" if s.seeds > 1 else ""
        tied = [name for name in choice["tied"] if name != choice["winner"]]
        rows.append(
            [
                c.dataset,
                str(c.source),
                how,
                str(choice["winner"]),
                ", ".join(tied) or "none: the choice is clear",
                f"{s.compute.train_images:,} + {s.compute.eval_images:,}",
            ]
        )
    note = (
        "Each choice on val with its evidence (autopeft.choose): the candidates whose two-sided (1 - alpha) "
        "interval to the leader reaches 0 are tied with it (alpha and each interval: the run directory's "
        "selection.json); images processed by the scoring (training + evaluation)."
    )
    header_ = ["dataset", "run dir", "scored on", "winner", "tied with the winner", "images"]
    return Section("How each choice was made", [note], header_, rows)


def _costs(loaded: Loaded) -> Section:
    rows = [
        [
            c.dataset,
            str(c.source),
            c.command,
            c.status,
            _duration(c.wall_time_s),
            MISSING if c.compute is None else f"{c.compute.train_images:,} + {c.compute.eval_images:,}",
            c.device,
            MISSING if c.search_cost_ratio is None else f"{c.search_cost_ratio:.2f}x",
        ]
        for c in sorted(loaded.costs, key=lambda c: (c.dataset, str(c.source)))
    ]
    note = (
        "Wall time and images processed (forward+backward training images + forward-only evaluation images) of "
        "each run directory; search cost ratio = search cost over one final training run (run only)."
    )
    header_ = ["dataset", "run dir", "command", "status", "wall time", "images", "device", "search cost ratio"]
    return Section("Cost per dataset", [note], header_, rows)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _missing(loaded: Loaded) -> Section:
    rows = [[str(m.source), m.what, m.reason] for m in loaded.missing]
    return Section("Missing", [] if rows else ["Nothing is missing."], ["run dir", "what", "why"] if rows else [], rows)


def _provenance(board: Leaderboard) -> Section:
    rows = []
    for row in board.rows:
        for e in (e for e in row.entries if e.mean is not None):
            p = e.provenance
            rows.append(
                [
                    row.name,
                    e.dataset,
                    format_params(e.params),
                    p.autopeft or MISSING,
                    (p.git_sha or MISSING)[:12],
                    p.checkpoint or MISSING,
                    p.selection,
                    " ".join(str(v) for v in (p.device, p.dtype, p.threads and f"{p.threads} threads") if v) or MISSING,
                    str(e.source),
                ]
            )
    header_ = ["row", "dataset", "params (M)", "autopeft", "git sha", "checkpoint", "selection", "device", "run dir"]
    return Section("Provenance", ["One line per measured run directory and row."], header_, rows)


def _markdown(sections: list[Section]) -> str:
    parts = ["# autopeft leaderboard\n"]
    for section in sections:
        parts.append(f"\n## {section.title}\n\n")
        parts += [f"{note}\n\n" for note in section.notes]
        if section.header:
            lines = [section.header, ["---"] * len(section.header), *section.rows]
            parts.append("".join("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n" for cells in lines))
        parts += [f"![{alt}]({name})\n" for name, alt in section.images]
    return "".join(parts)
