"""The leaderboard: rows = methods, columns = datasets, plus VTAB-1k group means, G and plain means."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

from autopeft.report.load import STRATEGY_ROWS, Entry
from autopeft.report.vtab import GROUPS, TASKS, is_vtab

MISSING = "-"


@dataclass(frozen=True)
class Cell:
    """Test accuracy (%) mean and std over ``seeds`` seeds, and trainable parameters (head excluded)."""

    mean: float
    std: float | None
    seeds: int
    params: int | None


@dataclass(frozen=True)
class Summary:
    """A derived column value; ``value`` None means not computable, ``have``/``need`` say how much was present."""

    value: float | None
    have: int
    need: int


@dataclass
class Row:
    name: str
    cells: dict[str, Cell | None] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    summary: dict[str, Summary] = field(default_factory=dict)

    @property
    def mean_params(self) -> float | None:
        """Trainable parameters averaged over the row's datasets (searched subnets differ per dataset)."""
        return sum(self.params.values()) / len(self.params) if self.params else None


@dataclass
class Leaderboard:
    datasets: list[str]
    rows: list[Row]
    summary_columns: list[str]
    score_column: str | None


def build_leaderboard(entries: list[Entry]) -> Leaderboard:
    """Combine entries into rows (seeds of identical configurations pooled) and compute the summary columns."""
    datasets = _ordered_datasets({e.dataset for e in entries})
    rows: dict[str, Row] = {}
    for (name, dataset), group in _grouped(entries).items():
        row = rows.setdefault(name, Row(name))
        row.entries.extend(group)
        row.cells[dataset] = pool(group)
        params = [e.params for e in group if e.params is not None]
        if params:
            row.params[dataset] = params[0]
    columns = summary_columns(datasets)
    for row in rows.values():
        row.summary = summarize(row, datasets)
    score = score_column(columns)
    ranked = sorted(rows.values(), key=lambda r: _rank(r, score))
    return Leaderboard(datasets, ranked, columns, score)


def score_column(columns: list[str]) -> str | None:
    """The column rows are ranked and plotted by: G for a full VTAB-1k set, else the one plain mean (None if mixed)."""
    if columns[-1] == "M19":
        return "G"
    means = [c for c in columns if c.startswith("Mean")]
    return means[0] if len(means) == 1 else None


def _rank(row: Row, score: str | None) -> tuple[int, float]:
    value = row.summary[score].value if score else None
    return (0, -value) if value is not None else (1, 0.0)


def _ordered_datasets(names: set[str]) -> list[str]:
    return [t for t in TASKS if t in names] + sorted(n for n in names if not is_vtab(n))


def _grouped(entries: list[Entry]) -> dict[tuple[str, str], list[Entry]]:
    """Group by (row name, dataset), pooling only entries of one configuration (``Entry.key``). Where a
    name holds several configurations on one dataset, each gets its own row there, named with what
    tells them apart: the schedule when that differs, else the run directory; on the datasets where
    the name holds one configuration its seeds still pool into the plain row. Strategy rows
    ("searched", "selected per dataset") hold one choice per run directory and dataset by design."""
    configs: dict[tuple[str, str], set] = {}
    schedules: dict[tuple[str, str], set] = {}
    for e in entries:
        configs.setdefault((e.name, e.dataset), set()).add(_config(e))
        schedules.setdefault((e.name, e.dataset), set()).add(e.schedule)
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        name, where = e.name, (e.name, e.dataset)
        if len(configs[where]) > 1:
            name = f"{name} [{e.schedule}]" if len(schedules[where]) > 1 and e.schedule else f"{name} [{e.source}]"
        groups.setdefault((name, e.dataset), []).append(e)
    return groups


def _config(entry: Entry) -> object:
    if entry.name in STRATEGY_ROWS:
        return entry.source
    return entry.key or (str(sorted(entry.methods.items())), str(entry.source))


def pool(entries: list[Entry]) -> Cell | None:
    """Mean and sample std over all seeds of ``entries``, each given as (seeds, mean, std)."""
    measured = [e for e in entries if e.mean is not None and e.seeds > 0]
    if not measured:
        return None
    n = sum(e.seeds for e in measured)
    mean = sum(e.seeds * e.mean for e in measured) / n
    squares = sum((e.seeds - 1) * (e.std or 0.0) ** 2 + e.seeds * (e.mean - mean) ** 2 for e in measured)
    std = math.sqrt(squares / (n - 1)) if n > 1 else None
    return Cell(mean, std, n, measured[0].params)


def summary_columns(datasets: list[str]) -> list[str]:
    """Labels of the derived columns for this set of datasets."""
    vtab = [d for d in datasets if is_vtab(d)]
    other = [d for d in datasets if not is_vtab(d)]
    columns = []
    if vtab:
        columns += [f"{group} ({len(tasks)} tasks)" for group, tasks in GROUPS.items()]
        columns += ["G", "M19" if len(vtab) == len(TASKS) else f"Mean ({len(vtab)} VTAB tasks)"]
    if other:
        columns.append(f"Mean ({len(other)} {'other ' if vtab else ''}dataset{'s' if len(other) > 1 else ''})")
    return columns


def summarize(row: Row, datasets: list[str]) -> dict[str, Summary]:
    """Group means (only with all of a group's tasks), G (only with all three groups) and plain means."""
    values = {d: c.mean for d, c in row.cells.items() if c is not None}
    vtab = [d for d in datasets if is_vtab(d)]
    other = [d for d in datasets if not is_vtab(d)]
    columns = summary_columns(datasets)
    result: dict[str, Summary] = {}
    if vtab:
        groups = [_mean(values, tasks) for tasks in GROUPS.values()]
        result.update(zip(columns[:3], groups, strict=True))
        done = [g.value for g in groups if g.value is not None]
        result["G"] = Summary(sum(done) / 3 if len(done) == 3 else None, len(done), 3)
        result[columns[4]] = _mean(values, vtab)
    if other:
        result[columns[-1]] = _mean(values, other)
    return result


def _mean(values: dict[str, float], over: list[str] | tuple[str, ...]) -> Summary:
    have = [values[d] for d in over if d in values]
    return Summary(sum(have) / len(have) if len(have) == len(over) else None, len(have), len(over))


def format_cell(cell: Cell | None, pm: str = " ± ") -> str:
    if cell is None:
        return MISSING
    return f"{cell.mean:.2f}" if cell.std is None else f"{cell.mean:.2f}{pm}{cell.std:.2f}"


def format_summary(summary: Summary) -> str:
    return f"{summary.value:.2f}" if summary.value is not None else f"{MISSING} ({summary.have}/{summary.need})"


def format_params(params: float | None) -> str:
    """Millions with three significant digits (0.0418, 0.43, 85.8); '-' when unknown."""
    if params is None:
        return MISSING
    millions = params / 1e6
    if millions == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(millions))))
    return f"{millions:.{decimals}f}"


def header(board: Leaderboard) -> list[str]:
    return ["method", "params (M)", *board.datasets, *board.summary_columns]


def text_rows(board: Leaderboard, pm: str = " ± ") -> list[list[str]]:
    """Every row as display strings, in header order."""
    return [
        [
            row.name,
            format_params(row.mean_params),
            *(format_cell(row.cells.get(d), pm) for d in board.datasets),
            *(format_summary(row.summary[c]) for c in board.summary_columns),
        ]
        for row in board.rows
    ]


def to_csv(board: Leaderboard) -> str:
    """One line per row; per dataset its mean, std and seeds; a missing value is an empty field."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    per_dataset = [f"{d}{suffix}" for d in board.datasets for suffix in ("", "_std", "_seeds")]
    writer.writerow(["method", "params_M", *per_dataset, *board.summary_columns])
    for row in board.rows:
        cells = [row.cells.get(d) for d in board.datasets]
        values = [v for c in cells for v in ((c.mean, c.std, c.seeds) if c else (None, None, None))]
        summaries = [row.summary[c].value for c in board.summary_columns]
        params = row.mean_params
        writer.writerow(
            [row.name, _csv(None if params is None else params / 1e6), *map(_csv, values), *map(_csv, summaries)]
        )
    return out.getvalue()


def _csv(value: float | int | None) -> str:
    return "" if value is None else (str(value) if isinstance(value, int) else f"{value:.4f}")


TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    return "".join(TEX_ESCAPES.get(char, char) for char in text)


def to_latex(board: Leaderboard) -> str:
    """A booktabs tabular (needs ``\\usepackage{booktabs}``); missing values are '--'."""

    def line(cells: list[str]) -> str:
        return " & ".join(cells) + r" \\" + "\n"

    rows = [
        [
            tex_escape(c).replace(" ± ", r" $\pm$ ").replace(MISSING + " (", "-- (") if c != MISSING else "--"
            for c in cells
        ]
        for cells in text_rows(board)
    ]
    spec = "l" + "r" * (len(header(board)) - 1)
    return (
        f"\\begin{{tabular}}{{{spec}}}\n\\toprule\n"
        + line([tex_escape(h) for h in header(board)])
        + "\\midrule\n"
        + "".join(line(cells) for cells in rows)
        + "\\bottomrule\n\\end{tabular}\n"
    )
