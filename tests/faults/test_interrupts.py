"""SIGTERM, Ctrl-C and SIGHUP during ingest and migrate (issue #15, faults to survive).

A service manager, `kill` or a container shutting down sends SIGTERM; a person sends
Ctrl-C to the whole foreground process group (the decoder processes included); a
terminal or SSH session that closes has the shell send SIGHUP to the job's whole
process group. Every way the command finishes or drops the batch in hand, releases the
index lock, leaves no decoder process behind, prints one line saying what is kept and
exits 143, 130 or 129 (128 + the signal); the next run completes with exact counts.
Each test is one trial per signal, at a moment chosen by the progress the command
reports, through the real console entry point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from support import draw_collection

pytestmark = pytest.mark.slow

KEPT = {signal.SIGTERM: "Terminated; everything committed so far is kept.",
        signal.SIGINT: "Interrupted; everything committed so far is kept.",
        signal.SIGHUP: "Hung up; everything committed so far is kept."}
SIGNALS = pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                                  ids=["SIGTERM", "Ctrl-C", "SIGHUP"])


def descendants(pid: int) -> set[int]:
    """Every living process below `pid` (from /proc: no psutil needed)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":  # a zombie is already dead
                parents[int(entry)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


class Command:
    """The console entry point in its own session (as a shell runs a foreground job),
    its stderr read line by line as it comes."""

    def __init__(self, args: list[str], env: dict):
        self.process = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", *args], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, condition, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(condition(line) for line in list(self.lines)):
            assert self.process.poll() is None, "\n".join(self.lines)
            assert time.monotonic() < deadline, "\n".join(self.lines)
            time.sleep(0.05)

    def interrupt(self, signum: int) -> tuple[int, str, set[int]]:
        """Ctrl-C and SIGHUP go to the whole process group, as a terminal and a closing
        shell send them; SIGTERM to the command alone, as `kill` sends it. Returns the
        exit code, stderr, and the processes that were below the command when the
        signal went."""
        children = descendants(self.process.pid)
        if signum in (signal.SIGINT, signal.SIGHUP):
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=120)
        self._reader.join(timeout=10)
        return code, "\n".join(self.lines), children


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "clipsearch.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def command_env(tmp_path: Path, model: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLIPSEARCH_")}
    env.update(CLIPSEARCH_MODEL=str(model), CLIPSEARCH_DEVICE="cpu", CLIPSEARCH_CACHE_DIR=str(tmp_path / "cache"),
               CLIPSEARCH_PROGRESS_SECONDS="0.1", HF_HUB_OFFLINE="1")
    return env


def count(index: str, env: dict, collection: str | None = None) -> int:
    import json

    args = ["status", "--index", index, "--json"] + (["--collection", collection] if collection else [])
    return int(json.loads(run(args, env).stdout)["points"])


@SIGNALS
def test_ingest_stops_cleanly_and_the_next_run_completes(tmp_path, tiny_model_dir, signum, default_sighup):
    """1 trial per signal: stopped once at least 8 images are embedded."""
    photos = tmp_path / "photos"
    # The first progress line after the model loads finds 90-220 images embedded: 240
    # left the signal arriving after the last one now and then (a failed CI run).
    files = draw_collection(photos, 600)
    env = command_env(tmp_path, tiny_model_dir)
    index = str(tmp_path / "index")
    command = Command(["ingest", str(photos), "--index", index, "--batch-size", "4", "--workers", "1"], env)

    def embedded_some(line: str) -> bool:
        return line.startswith("found") and int(line.split("embedded ")[1].split(",")[0]) >= 8

    command.wait_for(embedded_some)
    code, stderr, children = command.interrupt(signum)
    assert code == 128 + signum, stderr
    assert KEPT[signum] in stderr and "Traceback" not in stderr, stderr
    assert children, "the decoder pool was running when the signal went"
    time.sleep(0.5)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and _alive(pid)], "decoders left behind"
    # The lock is free (status and ingest open the index), the count is what was committed,
    # and the next run embeds exactly the rest.
    kept = count(index, env)
    assert 8 <= kept < len(files)
    # It said how many it kept, before the line naming the signal.
    assert f"stopped: ingested {kept}, unchanged 0" in stderr.split(KEPT[signum])[0], stderr
    again = run(["ingest", str(photos), "--index", index, "--json", "--workers", "1"], env)
    import json

    summary = json.loads(again.stdout)
    assert summary["unchanged"] == kept and summary["embedded"] == len(files) - kept, summary
    assert count(index, env) == len(files)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@SIGNALS
def test_migrate_stops_cleanly_and_the_next_run_completes(tmp_path, tiny_model_dir, encoder, signum, default_sighup):
    """1 trial per signal: stopped once the first batches are copied."""
    from clipsearch.index.edge import EdgeIndex

    total = 6000
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(total, encoder.identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    source = str(tmp_path / "source")
    with EdgeIndex(source, "images", create=True) as index:
        index.ensure_collection(encoder.identity)
        ids = [f"00000000-0000-5000-8000-{i:012d}" for i in range(total)]
        for start in range(0, total, 1000):
            index.upsert(ids[start:start + 1000], vectors[start:start + 1000],
                         [{"path": f"/photos/{i}.jpg", "dirs": ["/photos", "/"]} for i in range(start, start + 1000)])
    env = command_env(tmp_path, tiny_model_dir)
    target = str(tmp_path / "target")
    command = Command(["migrate", "--index", source, "--collection", "images", "--to", target, "--batch-size", "2"],
                      env)
    command.wait_for(lambda line: line.startswith("migrated ") and not line.startswith("migrated 0/"))
    code, stderr, _ = command.interrupt(signum)
    assert code == 128 + signum, stderr
    assert KEPT[signum] in stderr and "Traceback" not in stderr, stderr
    copied = count(target, env, "images")
    assert 0 < copied < total
    assert count(source, env, "images") == total  # the source is never touched
    run(["migrate", "--index", source, "--collection", "images", "--to", target, "--batch-size", "500"], env)
    assert count(target, env, "images") == total


def test_ingest_loses_nothing_when_its_terminal_closes(tmp_path, tiny_model_dir, default_sighup):
    """An SSH session dropped mid-ingest, for real: the command runs on a pseudo-terminal
    (its controlling terminal, as a login shell's job has) and the terminal hangs up.
    Every later write to it fails, yet the command commits what it holds, exits 129
    and leaves the lock free; the next run embeds exactly the rest."""
    import fcntl
    import json
    import pty
    import re
    import struct
    import termios

    photos = tmp_path / "photos"
    files = draw_collection(photos, 600)
    env = command_env(tmp_path, tiny_model_dir)
    index = str(tmp_path / "index")
    pid, terminal = pty.fork()
    if pid == 0:  # the child: straight into the command, nothing of pytest's run here
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # progress is cut to its width
        os.execve(sys.executable, [sys.executable, "-m", "clipsearch.cli", "ingest", str(photos), "--index", index,
                                   "--batch-size", "4", "--workers", "1"], env)
    shown = b""
    deadline = time.monotonic() + 120
    while not [n for n in re.findall(rb"embedded (\d+)", shown) if int(n) >= 8]:
        assert time.monotonic() < deadline, shown.decode(errors="replace")
        try:
            shown += os.read(terminal, 4096)
        except OSError:  # EIO: the command ended before it embedded 8
            raise AssertionError(shown.decode(errors="replace")) from None
    os.close(terminal)  # the session is gone: the terminal hangs up
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGHUP, shown.decode(errors="replace")
    kept = count(index, env)
    assert 8 <= kept < len(files)
    summary = json.loads(run(["ingest", str(photos), "--index", index, "--json", "--workers", "1"], env).stdout)
    assert summary["unchanged"] == kept and summary["embedded"] == len(files) - kept, summary
