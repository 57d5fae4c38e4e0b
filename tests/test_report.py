"""`autopeft report`: leaderboards over fixture run directories with known numbers, in real subprocesses."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from autopeft.report.load import Entry
from autopeft.report.plots import subnet_sizes
from autopeft.report.table import build_leaderboard, pool
from autopeft.report.vtab import TASKS
from tests.test_train import cli

ROOT = Path(__file__).resolve().parents[1]
# NOAH's published per-task VTAB-1k row, in TASKS order: G 75.48, M19 73.25.
NOAH = dict(
    zip(
        TASKS,
        (
            69.6,
            92.7,
            70.2,
            99.1,
            90.4,
            86.1,
            53.7,
            84.4,
            95.4,
            83.9,
            75.8,
            82.8,
            68.9,
            49.9,
            81.7,
            81.8,
            48.3,
            32.8,
            44.2,
        ),
        strict=True,
    )
)
SEARCHED = {"lora": {"rank": [0, 4, 8, 8], "targets": ["q", "v"]}, "adapter": {"dim": 8}, "ssf": {"enabled": 1}}
PROVENANCE = {"autopeft": "0.1.0", "git_sha": "0123456789abcdef", "checkpoint": "shipped", "selection": "val"}


def write_result(path: Path, result: dict) -> Path:
    path.mkdir(parents=True)
    (path / "result.json").write_text(json.dumps(result))
    return path


def run_result(dataset: str, rows: list[tuple[str, dict, int, float | None, float, int]]) -> dict:
    """An `autopeft run` result.json; rows are (name, methods, params, test mean, test std, seeds completed)."""
    table = [
        {
            "name": n,
            "methods": m,
            "params": p,
            "val_acc": 50.0,
            "test_acc": acc,
            "test_acc_std": std,
            "seeds_run": 3,
            "seeds_completed": seeds,
            "run_s": 10.0,
        }
        for n, m, p, acc, std, seeds in rows
    ]
    return {
        "command": "run",
        "dataset": dataset,
        "backbone": "vit",
        "methods": table[0]["methods"],
        "trainable_params": table[0]["params"],
        "test_acc": table[0]["test_acc"],
        "table": table,
        "search_cost_s": {"supernet": 30.0},
        "search_cost_ratio": 3.0,
        "wall_time_s": 600.0,
        "provenance": {**PROVENANCE, "device": "cuda"},
        "status": "completed",
    }


def train_result(dataset: str, methods: dict, test_acc: float | None, seed: int = 0, status: str = "completed") -> dict:
    return {
        "command": "train",
        "dataset": dataset,
        "backbone": "vit",
        "methods": methods,
        "trainable_params": 4096,
        "val_acc": 50.0,
        "test_acc": test_acc,
        "seed": seed,
        "wall_time_s": 12.5,
        "provenance": PROVENANCE,
        "status": status,
        **({"reason": "loss became NaN"} if status != "completed" else {}),
    }


def csv_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "leaderboard.csv") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def md_row(out: Path, name: str) -> list[str]:
    for line in (out / "leaderboard.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in leaderboard.md")


@pytest.fixture(scope="module")
def vtab_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """19 VTAB-1k run dirs: searched = NOAH's row; adapter (dominated) = NOAH - 5 with more parameters;
    lora = NOAH - 10; linear lacks two natural tasks."""
    root = tmp_path_factory.mktemp("vtab")
    dirs = []
    for i, task in enumerate(TASKS):
        rows = [
            ("searched", SEARCHED, 430_000, NOAH[task], 0.5, 3),
            ("lora", {"lora": {"rank": 8}}, 290_000, NOAH[task] - 10, 1.0, 3),
        ]
        rows.append(("adapter", {"adapter": {"dim": 8}}, 500_000, NOAH[task] - 5, 1.0, 3))
        if task not in ("dtd", "svhn"):
            rows.append(("linear", {"linear": {}}, 0, NOAH[task] - 20, 0.0, 3))
        dataset = f"vtab-1k/{task}" if i % 2 else task  # with and without the prefix
        dirs.append(write_result(root / task, run_result(dataset, rows)))
    out = root / "report"
    done = cli("report", *map(str, dirs), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_vtab_group_means_g_and_m19(vtab_report: Path) -> None:
    rows = csv_rows(vtab_report)
    noah = rows["searched"]
    assert round(float(noah["G"]), 2) == 75.48
    assert round(float(noah["M19"]), 2) == 73.25
    natural, specialized, structured = (
        float(noah[f"{g} ({n} tasks)"]) for g, n in (("Natural", 7), ("Specialized", 4), ("Structured", 8))
    )
    assert (natural, specialized, structured) == pytest.approx((561.8 / 7, 339.5 / 4, 490.4 / 8), abs=1e-3)
    assert float(rows["lora"]["G"]) == pytest.approx(float(noah["G"]) - 10, abs=1e-3)
    assert float(noah["cifar"]) == pytest.approx(69.6) and float(noah["cifar_std"]) == pytest.approx(0.5)
    assert list(rows) == ["searched", "adapter", "lora", "linear"]  # ranked by G, rows without G last


def test_vtab_partial_groups_show_counts(vtab_report: Path) -> None:
    header = md_row(vtab_report, "method")
    linear = dict(zip(header, md_row(vtab_report, "linear"), strict=True))
    assert linear["dtd"] == "-" and linear["svhn"] == "-"
    assert linear["Natural (7 tasks)"] == "- (5/7)"
    assert linear["G"] == "- (2/3)" and linear["M19"] == "- (17/19)"
    assert linear["Specialized (4 tasks)"] == f"{sum(NOAH[t] - 20 for t in TASKS[7:11]) / 4:.2f}"
    assert csv_rows(vtab_report)["linear"]["G"] == ""  # missing is empty in CSV, never 0


def test_vtab_published_table_is_quoted(vtab_report: Path) -> None:
    for name in ("leaderboard.md", "leaderboard.html"):
        text = (vtab_report / name).read_text()
        assert "Published results (quoted, not run here)" in text and "V-PETL Bench" in text
        assert "75.48" in text and "NOAH" in text


def test_outputs_exist_and_are_valid(vtab_report: Path) -> None:
    names = {p.name for p in vtab_report.iterdir()}
    assert {
        "leaderboard.md",
        "leaderboard.csv",
        "leaderboard.tex",
        "leaderboard.html",
        "pareto.png",
        "pareto.svg",
    } <= names
    subnets = sorted(n for n in names if n.startswith("subnet_"))
    assert len(subnets) == 19  # one per searched subnet
    for png in ["pareto.png", *subnets]:
        assert (vtab_report / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    svg = (vtab_report / "pareto.svg").read_text()
    assert re.search(r"<svg[\s>]", svg) and svg.rstrip().endswith("</svg>")
    tex = (vtab_report / "leaderboard.tex").read_text()
    assert tex.startswith("\\begin{tabular}") and "\\toprule" in tex and "\\bottomrule" in tex
    assert "$\\pm$" in tex and "smallnorb\\_azi" in tex


def test_html_is_self_contained(vtab_report: Path) -> None:
    html = (vtab_report / "leaderboard.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "<link" not in html and "<script" not in html and "<style>" in html
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 20 and all(src.startswith("data:image/png;base64,") for src in images)


def test_cost_and_provenance(vtab_report: Path) -> None:
    md = (vtab_report / "leaderboard.md").read_text()
    cost = md_row(vtab_report, "cifar")  # first cell of a cost line is the dataset
    assert cost[3:] == ["completed", "10.0 min", "-", "cuda", "3.00x"]  # no image counts in a schema-1 file
    assert "0123456789ab" in md and "shipped" in md


def test_missing_search_and_failed_runs(tmp_path: Path) -> None:
    lora = {"lora": {"rank": 8}}
    dirs = [
        write_result(tmp_path / "a_s0", train_result("digits", lora, 80.0, seed=0)),
        write_result(tmp_path / "a_s1", train_result("digits", lora, 82.0, seed=1)),
        write_result(tmp_path / "b", train_result("mnist5k", lora, 70.0)),
        write_result(tmp_path / "failed", train_result("mnist5k", {"ssf": {}}, None, status="failed")),
        write_result(tmp_path / "sweep", {**train_result("digits", lora, None), "command": "search"}),
        tmp_path / "never_ran",
    ]
    out = tmp_path / "report"
    done = cli("report", *map(str, dirs), "--out", str(out))
    assert done.returncode == 0, done.stderr
    header = md_row(out, "method")
    assert header[2:] == ["digits", "mnist5k", "Mean (2 datasets)"]
    assert md_row(out, "lora")[2:] == ["81.00 ± 1.41", "70.00", "75.50"]  # two seeds pooled
    assert md_row(out, "ssf")[2:] == ["-", "-", "- (0/2)"]
    assert md_row(out, "search: lora")[2:] == ["-", "-", "- (0/2)"]
    assert csv_rows(out)["search: lora"]["digits"] == ""
    md = (out / "leaderboard.md").read_text()
    missing = md[md.index("## Missing") :]
    assert f"| {tmp_path / 'failed'} | ssf on mnist5k | status failed: loss became NaN |" in missing
    assert f"{tmp_path / 'sweep'} | search: lora on digits | search result: val accuracy only" in missing
    assert f"| {tmp_path / 'never_ran'} | whole run | directory does not exist |" in missing
    assert "Published results" not in md and "| 0.00 |" not in md


@pytest.mark.parametrize(
    ("content", "why"),
    [("{not json", "not valid JSON"), (json.dumps({"command": "train", "dataset": "digits"}), "missing required")],
)
def test_malformed_result_is_one_line_error(tmp_path: Path, content: str, why: str) -> None:
    good = write_result(tmp_path / "good", train_result("digits", {"lora": {"rank": 8}}, 80.0))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "result.json").write_text(content)
    out = tmp_path / "report"
    done = cli("report", str(good), str(bad), "--out", str(out))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad / "result.json") in lines[0] and why in lines[0], done.stderr
    assert not out.exists()


def test_pool_matches_statistics_over_seeds() -> None:
    seeds = [[70.0, 72.0, 75.0], [71.0, 69.0]]
    entries = [Entry("x", "d", {}, 1, statistics.mean(s), statistics.stdev(s), len(s), Path("."), "run") for s in seeds]
    cell = pool(entries)
    everything = [v for s in seeds for v in s]
    assert cell is not None and cell.seeds == 5
    assert (cell.mean, cell.std) == pytest.approx((statistics.mean(everything), statistics.stdev(everything)))


def test_subnet_sizes_per_block() -> None:
    labels, grid = subnet_sizes(SEARCHED)
    assert labels == ["lora rank", "adapter dim", "ssf enabled"]
    assert grid == [[0, 4, 8, 8], [8, 8, 8, 8], [1, 1, 1, 1]]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not on PATH (Debian: apt-get install chromium)")
def test_chromium_screenshot_shows_table_and_plot(vtab_report: Path, tmp_path: Path) -> None:
    script = ROOT / "scripts" / "screenshot_report.py"
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [sys.executable, str(script), str(vtab_report / "leaderboard.html"), str(shot), "--dominated"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    no_plot = tmp_path / "no_plot.html"  # the same page with its images removed must fail the check
    no_plot.write_text(re.sub(r"<img [^>]*>", "", (vtab_report / "leaderboard.html").read_text()))
    done = subprocess.run(
        [sys.executable, str(script), str(no_plot), str(shot)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1 and "Pareto front" in done.stderr, done.stdout + done.stderr


def test_seeds_pool_on_a_dataset_even_where_the_name_splits_on_another() -> None:
    """Three seeds of one lora config on digits pool into one cell although "lora" holds two
    configurations on shapes_position (the README's pattern plus another run of the method)."""
    seeds = [
        Entry("lora", "digits", {}, 10, acc, None, 1, Path(f"final/lora/seed{i}"), "train", key="k1", schedule="1 ep")
        for i, acc in enumerate([70.0, 72.0, 74.0])
    ]
    other = [
        Entry(
            "lora",
            "shapes_position",
            {},
            10,
            acc,
            None,
            1,
            Path(f"other{i}"),
            "train",
            key=f"k{i + 2}",
            schedule=f"{i + 1} ep",
        )
        for i, acc in enumerate([60.0, 65.0])
    ]
    board = build_leaderboard(seeds + other)
    cells = {row.name: row.cells for row in board.rows}
    assert set(cells) == {"lora", "lora [1 ep]", "lora [2 ep]"}
    digits = cells["lora"]["digits"]
    assert digits is not None and (digits.seeds, digits.mean, digits.std) == (3, 72.0, 2.0)
    assert cells["lora [1 ep]"]["shapes_position"].mean == 60.0 and cells["lora [2 ep]"]["shapes_position"].mean == 65.0
