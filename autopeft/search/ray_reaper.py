"""The watchdog of a local Ray that ``autopeft search --engine ray`` started: when the command dies without
shutting Ray down (``kill -9``, an OOM kill), it kills every process the command had started. Ray fate-shares
its head processes with the driver, but the agents its raylet starts (the dashboard and runtime-env agents)
outlive it by about a minute.

Run as ``python -m autopeft.search.ray_reaper PID`` with a pipe on stdin: the command writes ``done`` before a
clean shutdown; end of input without it means the command died.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys

import psutil

DONE = b"done\n"
POLL_S = 1.0  # how often the command's descendants are listed while it lives


def start() -> subprocess.Popen:
    """The watchdog of this process, in a session of its own (a Ctrl-C to the command's group spares it)."""
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(os.getpid())], stdin=subprocess.PIPE, start_new_session=True
    )


def stop(watchdog: subprocess.Popen) -> None:
    """Tell the watchdog that Ray was shut down cleanly, and wait for it to leave."""
    with contextlib.suppress(OSError):  # a watchdog that is gone already
        watchdog.stdin.write(DONE)
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=10 * POLL_S)
    except subprocess.TimeoutExpired:
        watchdog.kill()


def watch(driver: int) -> None:
    """List ``driver``'s descendants every ``POLL_S`` until its pipe says done or ends; at an end without done,
    kill the last list (and whatever of it has children by then)."""
    known: list[psutil.Process] = []
    while True:
        ready, _, _ = select.select([sys.stdin.buffer], [], [], POLL_S)
        if ready:
            line = sys.stdin.buffer.readline()
            if line == DONE:
                return
            if not line:
                break
        try:
            known = [p for p in psutil.Process(driver).children(recursive=True) if p.pid != os.getpid()]
        except psutil.Error:
            break
    for process in known:
        with contextlib.suppress(psutil.Error):
            process.kill()


if __name__ == "__main__":
    watch(int(sys.argv[1]))
