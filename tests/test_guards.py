"""Guarded runs: one writer per run directory, resumes that keep their config, one-line errors."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autopeft.cli import one_line
from autopeft.errors import ConfigError, RunInterrupted, RunLocked
from autopeft.jobs.rundir import LOCK, RunDir, locked
from autopeft.jobs.train import train_run
from autopeft.records import RunRecord
from autopeft.runconfig import load_run_config
from autopeft.runkey import changed_keys
from tests.test_train import cli, write_config


def hold_lock(folder: str, ready, release) -> None:
    with locked(Path(folder)):
        ready.set()
        release.wait(30)


def test_a_second_writer_gets_one_line_naming_the_holder(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=hold_lock, args=(str(tmp_path / "run"), ready, release))
    holder.start()
    try:
        assert ready.wait(300)  # a spawned interpreter imports torch first: slow on a loaded machine
        done = cli("train", str(write_config(tmp_path)), "--out", str(tmp_path / "run"))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert (
            f"another autopeft command is writing this run directory (pid {holder.pid} on {socket.gethostname()}"
            in (done.stderr)
        )
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK]  # nothing written
    finally:
        release.set()
        holder.join(30)
    with locked(tmp_path / "run"):  # the holder's lock ended with its process
        assert f"pid {os.getpid()}" in (tmp_path / "run" / LOCK).read_text()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=hold_lock, args=(str(tmp_path / "run"), ready, release))
    holder.start()
    assert ready.wait(300)  # a spawned interpreter imports torch first: slow on a loaded machine
    holder.kill()
    holder.join(30)
    assert f"pid {holder.pid}" in (tmp_path / "run" / LOCK).read_text()  # the dead holder's file is still there
    done = cli("train", str(write_config(tmp_path, epochs=1)), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr


def test_two_writers_in_one_process_are_refused_too(tmp_path):
    with locked(tmp_path), pytest.raises(RunLocked, match="another autopeft command is writing"), locked(tmp_path):
        pass  # RunLocked, a ConfigError: a caller that waits for the holder catches the class, not the text


def test_resume_refuses_a_changed_config_and_changes_nothing(tmp_path):
    config = write_config(tmp_path, epochs=3)
    run = tmp_path / "run"
    assert cli("train", str(config), "--out", str(run), "--set", "train.epochs=1").returncode == 0
    (run / "result.json").unlink()  # as if killed after its checkpoint
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK}
    done = cli("train", str(config), "--out", str(run), "--resume", "--set", "train.lr=3e-2")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--resume: train.epochs, train.lr differ from the run" in done.stderr
    assert f"autopeft train {run / 'config.yaml'} --out {run} --resume" in done.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK} == before
    device_only = cli("train", str(run / "config.yaml"), "--out", str(run), "--resume", "--set", "train.device=cpu")
    assert device_only.returncode == 0, device_only.stderr  # the device never changes a result


def test_a_field_added_later_resumes_at_its_default_only():
    """A run directory written before ``train.bn`` existed resumes under a config that has it at its default,
    at any depth (a search's ``supernet.train``); any other value, or another missing key, is a change."""
    old = {"supernet": {"train": {"lr": 0.01}}, "retrain": {"train": {"lr": 0.01}}, "seed": 0}
    new = {"supernet": {"train": {"lr": 0.01, "bn": "auto"}}, "retrain": {"train": {"lr": 0.01, "bn": "update"}}}
    assert changed_keys(old, {**new, "seed": 0}) == ["retrain.train.bn"]
    assert changed_keys({"seed": 0}, {"seed": 0, "init": None}) == []  # top-level init, at its default
    assert changed_keys({"methods": {"vpt": {}}}, {"methods": {"vpt": {"init": None}}}) == ["methods.vpt.init"]
    assert changed_keys(old, new) == ["retrain.train.bn", "seed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lr=[1,"], "--set 'train.lr=[1,': the value is not valid YAML"),
        (["--set", "train.epochs=0"], "train.epochs: got 0; allowed: an integer >= 1"),
        (["--set", "train.device=gpu"], "train.device: got 'gpu'; allowed: auto, cpu, cuda, cuda:N, mps"),
        (["--set", "train.amp=fp16", "--set", "train.device=cpu"], "train.amp: got 'fp16' on cpu"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(tmp_path, args, message, run_cli):
    code, stderr = run_cli("train", str(write_config(tmp_path)), "--out", str(tmp_path / "run"), *args)
    assert code == 2 and message in stderr and len(stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_out_naming_a_file_and_bad_threads_are_one_line(tmp_path, run_cli):
    (tmp_path / "taken").write_text("not a folder")
    code, stderr = run_cli("train", str(write_config(tmp_path)), "--out", str(tmp_path / "taken"))
    assert code == 2 and str(tmp_path / "taken") in stderr and len(stderr.splitlines()) == 1
    assert (tmp_path / "taken").read_text() == "not a folder"
    code, stderr = run_cli("--threads", "0", "train", str(write_config(tmp_path)), "--out", str(tmp_path / "run"))
    assert code == 2 and "--threads: got 0; allowed: an integer >= 1" in stderr


def test_exponent_learning_rates_train(tmp_path):
    done = cli("train", str(write_config(tmp_path, epochs=1)), "--out", str(tmp_path / "run"), "--set", "train.lr=3e-3")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["schedule"]["lr"] == 0.003 and record["compute"]["train_images"] == 800
    provenance = record["provenance"]  # the leaderboard's device column reads these
    assert (provenance["device"], provenance["dtype"], provenance["test_read"]) == ("cpu", "fp32", True)


def wait_for_sigint_handler(pid: int) -> None:
    """Until Python in process ``pid`` catches SIGINT (before that, a slow machine's Ctrl-C kills the
    interpreter outright, which no program can answer)."""
    status = Path(f"/proc/{pid}/status")
    for _ in range(600):
        caught = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never installed a SIGINT handler")


def test_ctrl_c_while_starting_up_is_one_line(tmp_path):
    command = [sys.executable, "-m", "autopeft.cli", "train", str(write_config(tmp_path)), "--out", str(tmp_path / "r")]
    process = subprocess.Popen(
        command,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal, even when the
    )  # test itself runs in the background, where SIGINT is ignored and the child would inherit that
    wait_for_sigint_handler(process.pid)
    time.sleep(0.3)  # the command line is up, torch and timm are still loading
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert stderr.strip().startswith("autopeft: error: interrupted")


class CtrlCInFirstEpoch:
    """A progress display whose user presses Ctrl-C during the first epoch, before any checkpoint."""

    def start(self, *args) -> None: ...

    def step(self, *args) -> None:
        raise KeyboardInterrupt

    def epoch(self, metrics) -> None: ...

    def stop(self) -> None: ...


def test_ctrl_c_during_training_exits_130_with_the_resume_command(tmp_path):
    """Ctrl-C inside an epoch became RunInterrupted and exited 2, as a bad config does."""
    out = tmp_path / "r"
    command = [
        sys.executable,
        "-m",
        "autopeft.cli",
        "train",
        str(write_config(tmp_path, epochs=200)),
        "--out",
        str(out),
    ]
    process = subprocess.Popen(
        command,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for _ in range(1200):  # until the first epoch's checkpoint is written
        if (out / "checkpoint.pt").is_file() or process.poll() is not None:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr.strip().splitlines()[-1]


def test_ctrl_c_before_the_first_checkpoint_says_nothing_can_be_resumed(tmp_path):
    config = load_run_config(write_config(tmp_path))
    with pytest.raises(RunInterrupted) as err:
        train_run(config, tmp_path / "run", progress=CtrlCInFirstEpoch())
    assert "before the first epoch finished; nothing was saved to resume: start again with" in str(err.value)
    assert "--resume" not in str(err.value) and not (tmp_path / "run" / "checkpoint.pt").exists()
    train_run(config, tmp_path / "run")  # the advice works: the same command without --resume


def test_file_system_errors_are_one_line():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/result.json")
    assert one_line(full) == "/data/run/result.json: no space left on device"
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/run")
    assert one_line(denied) == "/data/run: Permission denied"


def test_a_checkpoint_from_another_model_is_refused_in_one_line_and_kept(tmp_path):
    config = load_run_config(write_config(tmp_path, epochs=1))
    train_run(config, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["trainable"] = {f"old.{name}": tensor for name, tensor in state["trainable"].items()}
    torch.save(state, checkpoint)
    before = checkpoint.read_bytes()
    with pytest.raises(ConfigError, match=r"checkpoint holds parameter 'old\.[^']+' that this model does not have"):
        train_run(config, tmp_path / "run", resume=True)
    assert checkpoint.read_bytes() == before


def test_a_damaged_checkpoint_is_one_line_with_the_next_step_and_kept(tmp_path):
    config = load_run_config(write_config(tmp_path, epochs=1))
    train_run(config, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a write cut short
    before = checkpoint.read_bytes()
    with pytest.raises(ConfigError) as err:
        train_run(config, tmp_path / "run", resume=True)
    message = str(err.value)
    assert message.startswith(f"{checkpoint}: checkpoint cannot be read (") and "\n" not in message
    assert message.endswith("delete it to start the run over, or train into a new --out")
    assert checkpoint.read_bytes() == before


def test_a_run_dir_checks_before_it_writes_and_names_the_command_that_continues(tmp_path):
    out = tmp_path / "run"
    rundir = RunDir(out, command="search --engine optuna")

    def refuse() -> None:
        raise ConfigError("bad space")

    with pytest.raises(ConfigError, match="bad space"), rundir.writing({"a": 1}, "finished trials", refuse):
        pass
    assert not out.exists()  # the check failed before the folder was made
    with pytest.raises(RunInterrupted) as err, rundir.writing({"a": 1}, "finished trials"):
        raise RunInterrupted("interrupted")
    assert str(err.value) == (
        f"interrupted; finished trials saved in {out}: continue with "
        f"`autopeft search {out / 'config.yaml'} --engine optuna --out {out} --resume`"
    )
    assert (out / "config.yaml").read_text() == "a: 1\n" and not locked_elsewhere(out)
    with pytest.raises(ConfigError, match="already holds a run"), rundir.writing({"a": 1}, None):
        pass
    resumed = RunDir(out, resume=True, command="search --engine optuna")
    with pytest.raises(ConfigError, match="--resume: a differs"), resumed.writing({"a": 2}, None):
        pass
    with resumed.writing({"a": 1}, None):
        record = resumed.write(RunRecord(dataset="d", backbone="b", methods={}, trainable_params=1, seed=0, epochs=1))
    assert json.loads((out / "result.json").read_text())["trainable_params"] == record.trainable_params


def locked_elsewhere(out: Path) -> bool:
    """Whether another writer would be refused now (the lock still held)."""
    try:
        with locked(out):
            return False
    except RunLocked:
        return True
