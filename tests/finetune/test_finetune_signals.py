"""Ctrl-C and SIGTERM during `clipsearch finetune`: the run stops with 130 or 143, says
which checkpoint it keeps, leaves that checkpoint whole and no model presented as
final, leaves no worker process behind, and `--resume` finishes it.

The end-to-end tests run the real console script in its own session (so that Ctrl-C
can be sent to its whole process group, as a terminal does) on the tiny CLIP, with a
checkpoint every 2 steps and images decoded by 2 DataLoader workers.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from clipsearch.cli import cli
from clipsearch.finetune import interrupts
from clipsearch.finetune.synthetic import write_dataset

CLIPSEARCH = Path(sys.executable).with_name("clipsearch")
KEPT = "everything committed so far is kept."


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """72 training pairs (9 steps an epoch at --batch-size 8), 18 held out."""
    return write_dataset(tmp_path_factory.mktemp("shapes"), per_train=2, per_heldout=1)


def _command(shapes, model: Path, out: Path, *more: str) -> list[str]:
    train, heldout = shapes
    return [str(CLIPSEARCH), "finetune", str(train), "--eval-data", str(heldout), "--base", str(model),
            "-o", str(out), "--epochs", "2", "--batch-size", "8", "--save-steps", "2", "--workers", "2",
            "--lr", "1e-3", "--device", "cpu", *more]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPSEARCH_", "QDRANT_"))}
    # A progress line at every step, into the log the test reads.
    return {**env, "HF_HUB_OFFLINE": "1", "CLIPSEARCH_PROGRESS_SECONDS": "0",
            "CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache")}


def _whole_checkpoints(checkpoints: Path) -> list[Path]:
    return sorted((c for c in checkpoints.glob("checkpoint-*") if (c / "trainer_state.json").is_file()),
                  key=lambda c: int(c.name.split("-")[1]))


def _in_group(pgid: int) -> list[psutil.Process]:
    """Every live process in the process group (the command and anything it started)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def _decoders(pid: int) -> list[psutil.Process]:
    """The command's child processes but multiprocessing's resource tracker (left by the
    image check's pool, and gone with the command): the DataLoader workers, and the
    torch_shm_manager each of them starts (in a session of its own, so outside the
    group; it leaves once neither the worker nor the command holds a batch)."""
    children = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                children.append(child)
        except psutil.Error:
            pass
    return children


def _stop_mid_training(tmp_path: Path, shapes, model: Path, out: Path, signum: int, whole_group: bool):
    """Start a fine-tune, wait until it trains with its DataLoader workers and has a
    checkpoint, send `signum`. Returns (exit code, stderr, the workers it had, its process
    group, which is its pid)."""
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(_command(shapes, model, out), stdout=subprocess.DEVNULL, stderr=stderr,
                                   env=_env(tmp_path), start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and process.poll() is None:
            training = "training: " in log.read_text()
            workers = _decoders(process.pid) if training else []
            if training and len(workers) >= 2 and _whole_checkpoints(out / "checkpoints"):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"training never got going (exit {process.poll()}):\n{log.read_text()[-3000:]}")
        if whole_group:
            os.killpg(process.pid, signum)  # Ctrl-C at a terminal reaches every process of the job
        else:
            os.kill(process.pid, signum)  # `kill`, a service manager stopping the main process
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return code, log.read_text(), workers, process.pid


def _nothing_left(pgid: int, workers: list[psutil.Process]) -> None:
    """No process of the command's group, and none it started, outlives it (a moment's
    grace for the kernel)."""

    def alive() -> list[psutil.Process]:
        running = []
        for process in workers:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
            except psutil.NoSuchProcess:
                pass
        return running

    deadline = time.monotonic() + 5
    while (_in_group(pgid) or alive()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _in_group(pgid), [p.cmdline() for p in _in_group(pgid)]
    assert not alive(), [p.cmdline() for p in alive()]


def _kept_checkpoint(stderr: str, out: Path) -> Path:
    """The checkpoint the stop message names: the newest whole one, loadable weights and all."""
    whole = _whole_checkpoints(out / "checkpoints")
    assert whole, stderr
    newest = whole[-1]
    assert (f"fine-tune stopped; its last checkpoint, {newest}, is kept: run the same command with --resume "
            "to continue from it") in stderr
    assert load_file(str(newest / "model.safetensors"))  # whole, not a half-written file
    assert (newest / "optimizer.pt").is_file() and (newest / "scheduler.pt").is_file()
    assert not (out / "modules.json").exists() and not (out / "eval.json").exists()  # no final model
    assert json.loads((out / "finetune_run.json").read_text())["status"] == "training"
    return newest


@pytest.mark.slow
def test_ctrl_c_mid_training_keeps_the_last_checkpoint_and_resume_finishes(tmp_path, shapes, tiny_model_dir):
    out = tmp_path / "out"
    code, stderr, workers, group = _stop_mid_training(tmp_path, shapes, tiny_model_dir, out, signal.SIGINT,
                                                      whole_group=True)
    assert code == 130, stderr
    assert "Traceback" not in stderr and f"Interrupted; {KEPT}" in stderr
    kept = _kept_checkpoint(stderr, out)
    assert len(workers) >= 2
    _nothing_left(group, workers)

    resumed = subprocess.run(_command(shapes, tiny_model_dir, out, "--resume"), env=_env(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {kept}" in resumed.stderr
    record = json.loads((out / "eval.json").read_text())
    assert record["train"]["resumed_from"] == kept.name and record["train"]["steps"] == 18
    assert json.loads((out / "finetune_run.json").read_text())["status"] == "done"
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_sigterm_mid_training_keeps_the_last_checkpoint_and_stops_the_workers(tmp_path, shapes, tiny_model_dir):
    out = tmp_path / "out"
    code, stderr, workers, group = _stop_mid_training(tmp_path, shapes, tiny_model_dir, out, signal.SIGTERM,
                                                      whole_group=False)
    assert code == 143, stderr
    assert "Traceback" not in stderr and f"Terminated; {KEPT}" in stderr
    _kept_checkpoint(stderr, out)
    assert len(workers) >= 2
    _nothing_left(group, workers)



@pytest.mark.slow
def test_the_terminal_closing_mid_training_keeps_the_last_checkpoint(tmp_path, shapes, tiny_model_dir,
                                                                     default_sighup):
    """An SSH session dropped mid-training, for real: the fine-tune runs on a
    pseudo-terminal (its controlling terminal) that hangs up. Every later write to it
    fails (its stop message included), yet it stops as for SIGTERM: exit 129, the last
    checkpoint whole, no final model, no worker left, and --resume finishes."""
    import fcntl
    import pty
    import struct
    import termios

    out = tmp_path / "out"
    env = _env(tmp_path)
    pid, terminal = pty.fork()
    if pid == 0:  # the child: straight into the command, nothing of pytest's run here
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        os.execve(str(CLIPSEARCH), _command(shapes, tiny_model_dir, out), env)
    shown = bytearray()
    reader = threading.Thread(target=_drain, args=(terminal, shown), daemon=True)  # a full terminal blocks it
    reader.start()
    try:
        deadline = time.monotonic() + 180
        workers: list[psutil.Process] = []
        while not (len(workers) >= 2 and _whole_checkpoints(out / "checkpoints")):
            assert time.monotonic() < deadline and reader.is_alive(), bytes(shown[-3000:]).decode(errors="replace")
            workers = _decoders(pid)
            time.sleep(0.05)
        os.close(terminal)  # the session is gone: the terminal hangs up
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGHUP, bytes(shown[-3000:]).decode(errors="replace")
    kept = _whole_checkpoints(out / "checkpoints")[-1]
    assert load_file(str(kept / "model.safetensors")) and (kept / "optimizer.pt").is_file()
    assert not (out / "modules.json").exists()
    assert json.loads((out / "finetune_run.json").read_text())["status"] == "training"
    _nothing_left(pid, workers)
    resumed = subprocess.run(_command(shapes, tiny_model_dir, out, "--resume"), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and f"resuming from {kept}" in resumed.stderr, resumed.stderr[-3000:]


def _drain(terminal: int, shown: bytearray) -> None:
    while True:
        try:
            data = os.read(terminal, 65536)
        except OSError:  # closed, or the command has ended (EIO)
            return
        if not data:
            return
        shown += data


# -- in this process: the interrupt held back while a checkpoint is written ----------------


def test_an_interrupt_during_a_write_is_delivered_once_the_write_is_done():
    written = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a signal is handled between bytecodes: it would have landed here
            written.append("whole")
    assert written == ["whole"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_sigterm_during_a_write_goes_to_the_handler_that_was_in_place():
    class Stopped(Exception):
        pass

    def handler(signum, frame):
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        written = []
        with pytest.raises(Stopped):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                written.append("whole")
        assert written == ["whole"] and signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_ctrl_c_while_a_checkpoint_is_written_keeps_that_checkpoint_whole(tmp_path, shapes, tiny_model_dir,
                                                                         monkeypatch):
    """Ctrl-C arrives after the weights of checkpoint-2 and before its optimizer state and
    trainer_state.json: the checkpoint is finished first, and is the one kept."""
    from transformers import Trainer

    original = Trainer._save_optimizer_and_scheduler

    def interrupted_half_way(self, output_dir):
        if output_dir.endswith("checkpoint-2"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", interrupted_half_way)
    out = tmp_path / "out"
    args = _command(shapes, tiny_model_dir, out)[1:]
    args[args.index("--workers") + 1] = "0"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 130, result.output
    kept = _kept_checkpoint(result.stderr, out)
    assert kept.name == "checkpoint-2" and not (out / "checkpoints" / "checkpoint-4").exists()


@pytest.mark.slow
def test_ctrl_c_while_a_batch_is_handed_over_prints_no_traceback(tmp_path, shapes, tiny_model_dir):
    """Ctrl-C that lands while the training process takes a batch from a DataLoader
    worker: the worker must not print multiprocessing's traceback (BrokenPipeError,
    ConnectionResetError, EOFError from its resource sharer) under the stop message.
    12 interrupts at random moments of the hand-over loop, several to a process; with the
    batches handed over as descriptors, the first or second interrupt printed one.

    A loader started again in a process that took an interrupt can hang before its
    first batch (torch, rarely, under load; the command itself exits at its first
    Ctrl-C): that process is ended and the remaining rounds go on in a new one."""
    rounds, done, stderr, restarts = 12, 0, "", 0
    rng = random.Random(0)
    while done < rounds:
        process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("interrupted_loader.py")),
                                    str(tiny_model_dir), str(shapes[0].parent / "images"), str(rounds - done)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
                                   start_new_session=True)
        lines: queue.Queue[str] = queue.Queue()
        errors: list[str] = []
        threading.Thread(target=lambda out=process.stdout, into=lines: [into.put(line) for line in out],
                         daemon=True).start()
        reader = threading.Thread(target=lambda err=process.stderr, into=errors: into.extend(err), daemon=True)
        reader.start()
        hung = False
        try:
            for round_ in range(rounds - done):
                try:
                    line = lines.get(timeout=120)  # a hung loader is ended instead of hanging CI
                except queue.Empty:
                    hung = True
                    break
                assert line.strip() == f"ready {round_}", line + "".join(errors)[-3000:]
                time.sleep(rng.uniform(0, 0.2))
                os.killpg(process.pid, signal.SIGINT)
                done += 1
            if not hung:
                process.wait(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        reader.join(timeout=10)
        stderr += "".join(errors)
        if hung:
            restarts += 1
            assert restarts <= 2 and done > 0, f"the loader never got going:\n{stderr[-3000:]}"
        else:
            assert process.returncode == 0, stderr[-3000:]
    assert stderr.count("interrupted ") == rounds and "Traceback" not in stderr, stderr[-3000:]
