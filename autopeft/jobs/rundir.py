"""Run directories: one writer at a time, never overwritten, resumed only with the config they began with.

``RunDir`` is the one owner of a command's run-directory lifecycle: it validates before anything is
written, holds an OS-level lock (``flock`` on ``<out>/.lock``) while the command writes (and clears the
temporary files of writes a killed run left), refuses to
overwrite a run or to resume one with a changed result-changing key, writes ``config.yaml``, turns
Ctrl-C into the command that continues, and writes the record. The operating system releases the
lock when its process dies, so a lock left by a killed run is taken over silently; the file names the
holder (host, pid, start time) for the message a second writer gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from autopeft.errors import ConfigError, RunInterrupted, RunLocked
from autopeft.files import TEMPORARY_SUFFIX, write_text
from autopeft.runconfig import dump_yaml, load_yaml, read_yaml
from autopeft.runkey import refuse_changes

if TYPE_CHECKING:
    from autopeft.records import Record

LOCK = ".lock"
CONFIG = "config.yaml"
RESULT = "result.json"
Checked = TypeVar("Checked")
RecordT = TypeVar("RecordT", bound="Record")


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the lock of run directory ``out`` (created if missing) for the body; one line naming the
    holder when another live process has it."""
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLocked(
                f"{out}: another autopeft command is writing this run directory ({holder}); wait for it to "
                f"finish or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def remove_stale_temporaries(out: Path) -> None:
    """Delete what an atomic write killed half-way left under ``out`` (``files.write_atomic``'s temporary
    files). Call it holding the lock: no live writer has one open then."""
    for path in out.rglob(f"*{TEMPORARY_SUFFIX}"):
        if path.name.startswith(".") and path.is_file():
            path.unlink()


def _same(data: Any) -> Any:
    return data


@dataclass(frozen=True)
class RunDir:
    """A command's run directory (``path``), started fresh or continued (``resume``).

    ``command`` is how the command is spelled before its ``--out`` (``"train"``, ``"search --engine optuna"``),
    for the line that says how to continue it. ``resumes_from`` is the file a resume needs; ``holds_run`` the
    files that mean the folder already holds a run (empty: any file but the lock; a training run may go into
    a folder that ``autopeft prune`` prepared)."""

    path: Path
    resume: bool = False
    command: str = "train"
    resumes_from: str = CONFIG
    holds_run: tuple[str, ...] = ()

    @property
    def again(self) -> str:
        """The command line that continues this run as it was started."""
        return f"{self.start} --resume"

    @property
    def start(self) -> str:
        """The command line that starts this run from its config.yaml."""
        name, _, flags = self.command.partition(" ")
        return f"autopeft {name} {self.path / CONFIG}{' ' + flags if flags else ''} --out {self.path}"

    @contextmanager
    def writing(
        self,
        config: dict[str, Any] | None,
        kept: str | None,
        check: Callable[[], Checked] = lambda: None,
        key: Callable[[Any], Any] = _same,
        lock: bool = True,
    ) -> Iterator[Checked]:
        """The body writes this run directory: ``check()`` first (its value is yielded; whatever it refuses
        leaves the folder untouched), then the lock (``lock=False`` for workers that share a folder), the
        claim of ``config`` (None: the folder must be new or empty) and config.yaml. Ctrl-C in the body says
        what is ``kept`` (None: what the interruption said it saved) and how to continue."""
        checked = check()
        self._check_resumable()  # before the lock makes the folder
        with locked(self.path) if lock else nullcontext():
            if lock:
                remove_stale_temporaries(self.path)
            self._claim(config, key)
            try:
                yield checked
            except RunInterrupted as err:
                raise self._interrupted(err, kept) from err

    def _interrupted(self, err: RunInterrupted, kept: str | None) -> RunInterrupted:
        if kept is not None:
            return RunInterrupted(f"interrupted; {kept} saved in {self.path}: continue with `{self.again}`")
        if err.resumable:
            return RunInterrupted(f"{err}: continue with `{self.again}`")
        return RunInterrupted(f"{err}: start again with `{self.start}`", resumable=False)

    def _claim(self, config: dict[str, Any] | None, key: Callable[[Any], Any]) -> None:
        """Refuse to overwrite a run, or to resume one with a config whose ``key`` view changes a
        result-changing value; write config.yaml. Call it holding the lock."""
        saved = self.path / CONFIG
        current = None if config is None else load_yaml(dump_yaml(config))
        if self.resume and current is not None:
            refuse_changes(key(read_yaml(saved)), key(current), self.path, self.again)
        elif self._holds_run():
            if config is None:
                allowed = f"a new or empty folder for autopeft {self.command}'s output"
                raise ConfigError(f"{self.path}: already holds files; allowed: {allowed}")
            raise ConfigError(
                f"{self.path}: already holds a run; choose another --out, or pass --resume to continue it"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        if current is not None:
            write_text(saved, dump_yaml(current))

    def _check_resumable(self) -> None:
        if self.resume and not (self.path / self.resumes_from).is_file():
            raise ConfigError(
                f"--resume: {self.path} holds no run to continue ({self.resumes_from} missing); nothing was changed"
            )

    def _holds_run(self) -> bool:
        if self.holds_run:
            return any((self.path / name).is_file() for name in self.holds_run)
        return self.path.exists() and any(p.name != LOCK for p in self.path.iterdir())

    def write(self, record: RecordT) -> RecordT:
        """Write ``record`` as the run's result.json (atomically); returns it."""
        record.write(self.path / RESULT)
        return record
