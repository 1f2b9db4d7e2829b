"""Helpers for the fault tests: the real console script in a child process, many tiny
image files, and a look into an embedded index from this process.

Every command runs as a user runs it: `.venv/bin/clipsearch`, the tiny CLIP the test
session builds, a cache folder of the test's own (no CLIPSEARCH_* or QDRANT_* setting
of the developer leaks in).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.config import Settings
from clipsearch.index import open_index, point_id

CLIPSEARCH = str(Path(sys.executable).parent / "clipsearch")


def tiny_pngs(folder: Path, count: int, offset: int = 0) -> list[Path]:
    """`count` small PNG files named by number, each of a colour of its own (distinct
    content: ingest would reuse the vector of a file it has seen under another name)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(offset, offset + count):
        path = folder / f"{i:04d}.png"
        Image.new("RGB", (24, 20), ((i * 37) % 256, i // 256 * 85 % 256, i % 256)).save(path)
        paths.append(path)
    return paths


def child_env(cache: Path, **settings: str) -> dict[str, str]:
    """This process's environment without our settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPSEARCH_", "QDRANT_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", CLIPSEARCH_CACHE_DIR=str(cache), **settings)
    return env


@dataclass
class Cli:
    """`clipsearch` as a child process, with the tiny model and a cache of its own."""

    model: Path
    cache: Path
    settings: dict[str, str] = field(default_factory=dict)

    def env(self, **settings: str) -> dict[str, str]:
        return child_env(self.cache, **{**self.settings, **settings})

    def run(self, *args: str, timeout: float = 300, **settings: str) -> subprocess.CompletedProcess:
        return subprocess.run([CLIPSEARCH, *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env(**settings))

    def ingest(self, photos: Path, index: Path, *more: str, **settings: str) -> subprocess.CompletedProcess:
        return self.run("ingest", str(photos), "--index", str(index), "--model", str(self.model),
                        "--workers", "0", *more, **settings)

    def search(self, index: Path, query: str = "a red square", k: int = 5) -> subprocess.CompletedProcess:
        return self.run("search", query, "--index", str(index), "--model", str(self.model), "-k", str(k),
                        "-f", "paths")

    def status(self, index: Path, *more: str) -> subprocess.CompletedProcess:
        return self.run("status", "--index", str(index), *more)


class ChildRun:
    """A `clipsearch` command (ingest, reindex) in a child process; a thread reads its
    progress lines: the count it has reported embedded, and whether it builds HNSW."""

    def __init__(self, cli: Cli, args: list[str]):
        self.process = subprocess.Popen([CLIPSEARCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=cli.env())
        self.embedded = 0  # the last count the run reported committed (by this run)
        self.building = threading.Event()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            if found := re.search(r"embedded (\d+)", line):
                self.embedded = int(found.group(1))
            if "building the HNSW" in line:
                self.building.set()

    def wait_for(self, ready, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, f"the run ended before {what}:\n{''.join(self.stderr)}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.002)

    def wait_for_embedded(self, count: int) -> None:
        self.wait_for(lambda: self.embedded >= count, f"{count} images embedded")

    def kill(self) -> int:
        """kill -9; the count the run had reported committed by then."""
        reported = self.embedded
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)
        # Its stderr ends when the last process holding it does: the decoders die with it,
        # silently (they printed a BrokenPipeError traceback each when they outlived it).
        self._reader.join(timeout=20)
        assert not self._reader.is_alive(), "a process of the killed run outlived it"
        assert self.process.returncode == -signal.SIGKILL, "".join(self.stderr)
        assert "Traceback" not in "".join(self.stderr), "".join(self.stderr)
        return reported


def export_text_tower(cache: Path, model: Path, encoder) -> None:
    """Export the model's text tower into `cache` from this process (its model is
    loaded once per session): a `clipsearch search` then takes ~1 s instead of ~10."""
    from support import fast_encoder_for

    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLIPSEARCH_CACHE_DIR", str(cache))
        fast_encoder_for(model, encoder)


@pytest.fixture
def cli(tmp_path, tiny_model_dir, encoder) -> Cli:
    export_text_tower(tmp_path / "cli-cache", tiny_model_dir, encoder)
    return Cli(tiny_model_dir, tmp_path / "cli-cache")


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with exactly one line on stderr, `Error: ...`, naming each
    of `needles` (case-insensitive), and no traceback. Returns the line."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


@dataclass
class Contents:
    """What an embedded index holds, read through the Index API."""

    count: int
    paths: list[str]  # one per point read
    ids: set[str]
    ids_match_paths: bool
    indexed_vectors: int
    hits: int  # hits of a query for 5


def read_index(index: Path, collection: str = "images") -> Contents:
    settings = Settings(index=str(index), collection=collection).validated()
    with open_index(settings) as opened:
        records = list(opened.scroll(with_vectors=False))
        facts = opened.describe()
        query = np.random.default_rng(0).standard_normal(facts["model"]["dim"]).astype(np.float32)
        hits = opened.query(query / np.linalg.norm(query), 5)
        assert all(h.path for h in hits)
        return Contents(count=opened.count(), paths=[r.payload.get("path", "") for r in records],
                        ids={r.id for r in records},
                        ids_match_paths=all(r.id == point_id(r.payload.get("path", "")) for r in records),
                        indexed_vectors=int(facts.get("indexed_vectors", 0)), hits=len(hits))


class SmallDisk:
    """A tmpfs of `size` at `path`, which `fill` leaves only `leave` bytes of."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir(parents=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {mounted.stderr.strip()}")
        self.filler = path / "filler"

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int = 0) -> None:
        with open(self.filler, "ab") as out:
            out.write(b"\0" * max(0, self.free_bytes() - leave))
        assert self.free_bytes() <= leave + 4096  # tmpfs may keep part of a page

    def free(self) -> None:
        self.filler.unlink()

    def files(self) -> list[Path]:
        """Every file on the disk but the filler (leftovers show up here)."""
        return sorted(p for p in self.path.rglob("*") if p.is_file() and p != self.filler)

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], check=True)  # a process still holds a file
