"""Screenshot an `autopeft report` HTML page with headless Chromium and check it shows the table and the plot.

    python scripts/screenshot_report.py runs/report/leaderboard.html /tmp/report.png

Checks (exit 1 with a message when one fails): the screenshot is not blank; the leaderboard
table is rendered (its header colour forms a band, and the area below it is mostly not white:
header, striped rows, text); the Pareto plot is rendered (its front colour appears below the
table, and with --dominated the dominated points' colour too). The leaderboard comes first on
the page, the plot within the first 2000 pixels.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from autopeft.report.html import HEADER_COLOR
from autopeft.report.plots import FRONT_COLOR, OTHER_COLOR

WINDOW = (1400, 2000)


def screenshot(html: Path, png: Path, timeout: float = 120) -> float:
    """Render ``html`` into ``png`` with headless Chromium; returns the seconds it took."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not on PATH (Debian: apt-get install chromium)")
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--screenshot={png.resolve()}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        html.resolve().as_uri(),
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=timeout)
    return time.perf_counter() - start


def color_mask(pixels: np.ndarray, hex_color: str, tolerance: int = 12) -> np.ndarray:
    target = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(pixels.astype(int) - target) <= tolerance).all(axis=-1)


def _height(ink: np.ndarray, gap: int = 12) -> int:
    """Rows down to the first run of ``gap`` blank rows: the table's height from its header."""
    blank = ink.mean(axis=1) < 0.01
    for row in range(len(blank) - gap):
        if blank[row : row + gap].all():
            return row
    return len(blank)


def check(png: Path, dominated: bool = False) -> list[str]:
    """Problems with the screenshot; an empty list means it shows the table and the plot."""
    pixels = np.asarray(Image.open(png).convert("RGB"))
    ink = (pixels < 245).any(axis=-1)  # text, lines, the header and the row stripes
    if ink.mean() < 0.01:
        return [f"blank: only {ink.mean():.2%} of pixels are not white"]
    problems = []
    header_rows = np.flatnonzero(color_mask(pixels, HEADER_COLOR).sum(axis=1) > 200)
    if header_rows.size == 0:
        return ["no leaderboard table: its header colour never spans 200 px in a row"]
    top = header_rows[0]
    columns = np.flatnonzero(color_mask(pixels[top : top + 10], HEADER_COLOR).any(axis=0))
    table = ink[top : top + _height(ink[top:, columns[0] : columns[-1] + 1]), columns[0] : columns[-1] + 1]
    if table.mean() < 0.4:
        problems.append(f"table area is {table.mean():.0%} non-white (expected at least 40%: header, stripes, text)")
    below = pixels[top:]
    expected = [("Pareto front", FRONT_COLOR, 100)] + ([("dominated points", OTHER_COLOR, 30)] if dominated else [])
    for name, color, least in expected:
        found = int(color_mask(below, color).sum())
        if found < least:
            problems.append(f"plot: {found} px of the {name} colour {color} (expected at least {least})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--dominated", action="store_true", help="also expect dominated points in the plot")
    args = parser.parse_args()
    seconds = screenshot(args.html, args.png)
    problems = check(args.png, args.dominated)
    for problem in problems:
        print(f"screenshot_report: {problem}", file=sys.stderr)
    print(f"{args.png}: chromium {seconds:.1f} s, {'FAILED' if problems else 'shows the table and the plot'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
