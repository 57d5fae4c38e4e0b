"""Progress for long work: a rich bar on a terminal, plain log lines otherwise.

Two small protocols: ``RunProgress`` follows one training run (epochs, steps), ``StageProgress``
narrates a multi-stage command (messages) and hands out a ``RunProgress`` per training run in it.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autopeft.records import Epoch


class RunProgress(Protocol):
    """What a training run reports: its start, every step, every epoch's metrics, its end."""

    def start(self, epochs: int, images_per_epoch: int, done_epochs: int) -> None: ...

    def step(self, images: int, loss: float) -> None: ...

    def epoch(self, metrics: dict[str, Any]) -> None: ...

    def stop(self) -> None: ...


class StageProgress(Protocol):
    """What a multi-stage command reports: stage messages, and a display per training run (or None)."""

    def say(self, message: str) -> None: ...

    def run(self, label: str) -> RunProgress | None: ...


class TrainProgress:
    """Epoch bar with loss, val accuracy, images/s and ETA; one line per epoch when not on a terminal."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.bar: Progress | None = None
        self.task: Any = None
        self.start_time = 0.0

    def start(self, epochs: int, images_per_epoch: int, done_epochs: int) -> None:
        self.epochs, self.start_time = epochs, time.perf_counter()
        if not self.stream.isatty():
            return
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(
            self._title(done_epochs), total=epochs * images_per_epoch, completed=done_epochs * images_per_epoch, info=""
        )

    def _title(self, epoch: int) -> str:
        return f"{self.label} epoch {min(epoch + 1, self.epochs)}/{self.epochs}"

    def step(self, images: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=images, info=f"loss {loss:.3f}")

    def epoch(self, metrics: Epoch) -> None:
        val = "-" if metrics.val_acc is None else f"{metrics.val_acc:.2f}%"
        line = f"loss {metrics.loss:.4f}  val {val}  {metrics.images_per_s:.0f} img/s"
        if self.bar is not None:
            self.bar.update(self.task, description=self._title(metrics.epoch), info=line)
        else:
            minutes = (time.perf_counter() - self.start_time) / 60
            print(f"{self.label} epoch {metrics.epoch}/{self.epochs}  {line}  {minutes:.1f} min", file=self.stream)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class PipelineProgress:
    """Stage messages for ``autopeft run``, and a TrainProgress for each training run in it."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr

    def say(self, message: str) -> None:
        print(f"autopeft: {message}", file=self.stream, flush=True)

    def run(self, label: str) -> TrainProgress:
        return TrainProgress(label, self.stream)


class SilentProgress:
    """A stage progress that shows nothing."""

    def say(self, message: str) -> None: ...

    def run(self, label: str) -> RunProgress | None:
        return None
