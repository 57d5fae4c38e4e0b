"""Figures: the Pareto front of accuracy vs trainable parameters, and the sizes of each searched subnet."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from autopeft.methods import REGISTRY
from autopeft.pareto import pareto_front

FRONT_COLOR = "#d62728"
OTHER_COLOR = "#1f77b4"


@dataclass(frozen=True)
class Point:
    name: str
    params: float
    score: float


def pareto_plot(points: list[Point], score_label: str) -> tuple[bytes, bytes]:
    """PNG and SVG of score vs trainable parameters (M, log x; zero-parameter rows drawn at the left edge)."""
    front = pareto_front(points, cost=lambda p: p.params, badness=lambda p: -p.score)
    positive = [p.params for p in points if p.params > 0]
    floor = min(positive) / 3 if positive else 1e-3
    x = {p.name: max(p.params, floor) for p in points}
    fig, ax = _figure(8, 5)
    others = [p for p in points if p not in front]
    if others:
        ax.scatter([x[p.name] for p in others], [p.score for p in others], color=OTHER_COLOR, s=40, label="dominated")
    ax.plot(
        [x[p.name] for p in front],
        [p.score for p in front],
        color=FRONT_COLOR,
        marker="o",
        markersize=9,
        linewidth=2,
        drawstyle="steps-post",
        label="Pareto front",
    )
    for p in points:
        label = p.name if p.params > 0 else f"{p.name} (0 params)"
        ax.annotate(label, (x[p.name], p.score), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (M, head excluded, log scale)")
    ax.set_ylabel(score_label)
    ax.set_title("Accuracy vs trainable parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(0.15)  # room for the labels at the edges
    ax.legend(loc="best")
    return _save(fig, "png"), _save(fig, "svg")


def subnet_sizes(methods: dict[str, Any]) -> tuple[list[str], list[list[int]]]:
    """Per method with a size option: its label and its size in each block (an int means every block)."""
    sized = {
        m: o[REGISTRY[m].size_option]
        for m, o in methods.items()
        if m in REGISTRY and REGISTRY[m].size_option and isinstance(o, dict) and REGISTRY[m].size_option in o
    }
    depth = max((len(s) for s in sized.values() if isinstance(s, list)), default=1)
    labels = [f"{m} {REGISTRY[m].size_option}" for m in sized]
    grid = [list(s) if isinstance(s, list) else [int(s)] * depth for s in sized.values()]
    return labels, grid


def subnet_plot(methods: dict[str, Any], title: str) -> bytes | None:
    """PNG heatmap of a searched subnet: blocks on x, methods on y, the size as value (0 = off); None if unsized."""
    labels, grid = subnet_sizes(methods)
    if not labels:
        return None
    depth = len(grid[0])
    fig, ax = _figure(1.6 + 0.6 * depth, 1.2 + 0.45 * len(labels))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    largest = max(map(max, grid))
    for i, sizes in enumerate(grid):
        for j, size in enumerate(sizes):
            color = "white" if size < largest / 2 else "black"
            ax.text(j, i, str(size), ha="center", va="center", fontsize=9, color=color)
    ax.set_xticks(range(depth), [str(b) for b in range(depth)])
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("block")
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, label="size")
    return _save(fig, "png")


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas (no pyplot: no global state, nothing to close)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig: Figure, fmt: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()
