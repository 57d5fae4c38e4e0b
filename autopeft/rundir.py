"""Run directories: one writer at a time, never overwritten, resumed only with the config they began with.

``locked(out)`` holds an OS-level lock (``flock`` on ``<out>/.lock``) while a command writes ``out``;
the operating system releases it when its process dies, so a lock left by a killed run is taken over
silently, and the file names the holder (host, pid, start time) for the message a second writer gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autopeft.errors import ConfigError, RunLocked
from autopeft.files import write_text
from autopeft.runconfig import dump_yaml, load_yaml, read_yaml
from autopeft.runkey import refuse_changes

LOCK = ".lock"


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


def claim_dir(out: Path, resume: bool, config: dict[str, Any], again: str) -> None:
    """Refuse to overwrite a run, or to resume one with a config that changes a result-changing key
    (``again``: the command that resumes it as started); write config.yaml. Call it holding the lock."""
    saved = out / "config.yaml"
    if resume and not saved.is_file():
        raise ConfigError(f"--resume: {out} holds no run to continue (config.yaml missing); nothing was changed")
    current = load_yaml(dump_yaml(config))
    if resume:
        refuse_changes(read_yaml(saved), current, out, again)
    elif out.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise ConfigError(f"{out}: already holds a run; choose another --out, or pass --resume to continue it")
    out.mkdir(parents=True, exist_ok=True)
    write_text(saved, dump_yaml(current))
