"""`autopeft search --engine ray` in real processes on loopback: a two-node Ray cluster started by
the test, a worker node killed mid-sweep, and the refusals that must come before any Ray work."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from autopeft.cli import main
from autopeft.jobs.rundir import LOCK
from autopeft.search.sweep import dump_sweep, parse_sweep
from tests.test_train import TINY, cli

CONFIG = {
    "backbone": {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY},
    "data": {"name": "digits"},
    "space": {"methods": {"lora": {"sizes": [0, 2]}, "ssf": {"sizes": [0, 1]}}, "sizes_per": "model"},
    "train": {"epochs": 2, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0},
    "trials": 4,
    "pruner": "none",
}
ENV = {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
RAY = str(Path(sys.executable).parent / "ray")


def write(folder: Path, **changes) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **changes}))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    """A Ray head and one worker node on loopback, one CPU each, each in its own process group."""

    address: str
    head: subprocess.Popen
    worker: subprocess.Popen


def family(node: subprocess.Popen) -> list[psutil.Process]:
    """A node's ``ray start`` process and every process it started (GCS, raylet, Ray workers)."""
    try:
        return [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill(node: subprocess.Popen) -> None:
    """SIGKILL a node's process group and any of its processes that left the group."""
    processes = family(node)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    node.wait(timeout=30)


def start_node(*args: str, temp: str) -> subprocess.Popen:
    command = [RAY, "start", "--num-cpus", "1", "--block", f"--dashboard-agent-listen-port={free_port()}", *args]
    env = {**os.environ, **ENV, "RAY_TMPDIR": temp}
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    head = start_node(
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        f"--temp-dir={temp}",
        temp=temp,
    )
    worker = start_node(f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", temp=temp)
    nodes = Cluster(f"127.0.0.1:{port}", head, worker)
    try:
        wait_for_nodes(nodes, 2)
        yield nodes
    finally:
        left = family(worker) + family(head)
        kill(worker)
        kill(head)
        shutil.rmtree(temp, ignore_errors=True)
        assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def wait_for_nodes(nodes: Cluster, count: int, timeout: float = 60) -> None:
    """Until ``count`` raylets run (one per node)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raylets = [p for p in family(nodes.head) + family(nodes.worker) if p.name() == "raylet"]
        if len(raylets) == count:
            return
        for node in (nodes.head, nodes.worker):
            assert node.poll() is None, f"a Ray node exited: {node.stderr.read().decode()[-2000:]}"
        time.sleep(0.5)
    raise TimeoutError(f"{count} Ray nodes did not start in {timeout}s")


def test_a_two_node_cluster_runs_every_trial_across_both_nodes(tmp_path, cluster):
    out = tmp_path / "run"
    done = cli(
        "search",
        str(write(tmp_path)),
        "--engine",
        "ray",
        "--address",
        cluster.address,
        "--max-concurrent",
        "2",
        "--out",
        str(out),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["engine"] == "ray" and result["address"] == cluster.address
    assert (result["trials_completed"], result["trials_pruned"], result["trials_failed"]) == (4, 0, 0)
    assert len(result["nodes"]) == 2
    with (out / "candidates.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    ended = re.findall(r"search: trial (\d)/4 finished: val [\d.]+%", done.stderr)
    assert sorted(ended) == ["1", "2", "3", "4"]  # a line per trial in place of Tune's tables (~90 lines for 2)
    assert "Trial status" not in done.stdout + done.stderr and "Configuration for experiment" not in done.stdout
    assert (out / "best.yaml").is_file() and (out / "pareto.csv").is_file()


def wait_for_trial(node: subprocess.Popen, sweep: subprocess.Popen, storage: Path, timeout: float = 120) -> str:
    """The name of a trial running on ``node`` once the driver has its second epoch (and so a checkpoint).
    Ray runs a trial in a working directory named like the trial's folder in the storage."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sweep.poll() is None:
        for process in family(node):
            with contextlib.suppress(psutil.Error, OSError):
                name = Path(process.cwd()).name
                if len((storage / name / "result.json").read_text().splitlines()) >= 2:
                    return name
        time.sleep(0.05)
    raise TimeoutError(f"no trial reported twice from the worker node (sweep exit code {sweep.poll()})")


def test_a_killed_worker_node_has_its_trial_retried_on_the_head(tmp_path, cluster):
    out = tmp_path / "run"
    config = write(tmp_path, train={**CONFIG["train"], "epochs": 6}, retries=1)
    command = [sys.executable, "-m", "autopeft.cli", "search", str(config), "--engine", "ray"]
    command += ["--address", cluster.address, "--max-concurrent", "2", "--out", str(out)]
    with (tmp_path / "log").open("w") as log:
        sweep = subprocess.Popen(command, env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT)
        try:
            killed = wait_for_trial(cluster.worker, sweep, out / "ray" / "sweep")
            kill(cluster.worker)
            assert sweep.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
        finally:
            sweep.kill()
    result = json.loads((out / "result.json").read_text())
    assert (result["trials_completed"], result["trials_failed"], result["trials_retried"]) == (4, 0, 1)
    assert len(result["nodes"]) == 2
    reports = [json.loads(line) for line in (out / "ray" / "sweep" / killed / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in reports].count(1) == 1  # the retry continued from the killed trial's checkpoint


def search(capsys, *args: str) -> tuple[int, str]:
    """``autopeft search`` in this process (refusals come before any Ray work): exit code, stderr."""
    code = main(["search", *args])
    return code, capsys.readouterr().err


def test_a_killed_sweep_leaves_no_ray_process_behind(tmp_path):
    """kill -9 of a sweep on a local Ray: Ray's own fate sharing ends its head processes, and the watchdog the
    agents the raylet started (they outlived the command by about a minute)."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "autopeft.cli",
        "search",
        str(write(tmp_path)),
        "--engine",
        "ray",
        "--out",
        str(out),
    ]
    sweep = subprocess.Popen(
        [*command, "--set", "train.epochs=500"],
        env={**os.environ, **ENV, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, started = time.monotonic() + 120, []
    while time.monotonic() < deadline and not any(p.name() == "raylet" for p in started):
        time.sleep(0.5)
        with contextlib.suppress(psutil.Error):
            started = psutil.Process(sweep.pid).children(recursive=True)
    time.sleep(10)  # the trials and the raylet's agents are up
    started = psutil.Process(sweep.pid).children(recursive=True)
    assert any("Agent" in " ".join(p.cmdline()) or p.name().startswith("ray::") for p in started)
    sweep.kill()
    sweep.wait()
    time.sleep(8)
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], [p.cmdline()[:1] for p in left]


def test_an_unreachable_address_fails_in_seconds_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    started = time.monotonic()
    code, err = search(
        capsys, str(write(tmp_path)), "--engine", "ray", "--address", f"127.0.0.1:{free_port()}", "--out", str(out)
    )
    assert code == 2 and time.monotonic() - started < 10
    assert err.count("\n") == 1 and "--address 127.0.0.1:" in err and "no Ray cluster reachable" in err
    assert not out.exists()  # refused before the run directory is made


def test_a_budget_is_refused_by_the_ray_engine(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = search(capsys, str(write(tmp_path)), "--engine", "ray", "--set", "budget=1000", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "budget" in err and "--engine optuna" in err
    assert not out.exists()


def test_resume_refuses_a_directory_without_a_ray_experiment(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = search(capsys, str(write(tmp_path)), "--engine", "ray", "--out", str(out), "--resume")
    assert code == 2 and "config.yaml missing" in err and not out.exists()
    out.mkdir()
    (out / "config.yaml").write_text(dump_sweep(parse_sweep(CONFIG, "test")))
    code, err = search(capsys, str(out / "config.yaml"), "--engine", "ray", "--out", str(out), "--resume")
    assert code == 2 and err.count("\n") == 1
    assert f"{out.resolve() / 'ray' / 'sweep'} holds no Ray Tune experiment" in err
    assert [p.name for p in out.iterdir() if p.name != LOCK] == ["config.yaml"]  # and the lock the search held
