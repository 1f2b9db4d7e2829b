"""What a script reads from clipsearch's exit status, and where its words go, when
the caller closed a standard stream. Through the real console script in a
subprocess: the status and the streams are the process's own.

1: a failure to look at; 2: clipsearch called wrongly (a bad flag value, a bad
setting); 75 (EX_TEMPFAIL): the index is busy, try again later."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clipsearch.config import Settings
from clipsearch.index import open_index

from support import draw_collection


def run(*args, env, close: int | None = None) -> subprocess.CompletedProcess:
    """The console script, as `clipsearch ARGS` in a shell; `close`: a descriptor the
    caller closed (`>&-` is 1, `2>&-` is 2), closed by a shell as a user's is. Not by a
    preexec_fn: Python code run between fork and exec in this process, which holds the
    gRPC double's threads, could die on gRPC's fork handling (SIGABRT, seen in CI)."""
    command = [sys.executable, "-c", "from clipsearch.cli import main; main()", *map(str, args)]
    if close is not None:
        command = ["sh", "-c", f'exec "$@" {close}>&-', "sh", *command]
    return subprocess.run(command, capture_output=close is None, env=env, timeout=240,
                          stdout=subprocess.PIPE if close is not None else None,
                          stderr=subprocess.PIPE if close is not None else None)


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("exit-codes")
    draw_collection(root / "photos", count=4)
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLIPSEARCH_")}
    env.update(CLIPSEARCH_MODEL=str(tiny_model_dir), CLIPSEARCH_INDEX=str(root / "index"),
               CLIPSEARCH_CACHE_DIR=str(root / "cache"), HF_HUB_OFFLINE="1")
    done = run("ingest", root / "photos", "--workers", "0", env=env)
    assert done.returncode == 0, done.stderr
    return {"root": root, "env": env}


def test_a_bad_setting_is_a_usage_error(library):
    done = run("search", "a cat", env={**library["env"], "CLIPSEARCH_DEVICE": "foo"})
    assert done.returncode == 2
    assert done.stderr.decode().splitlines()[-1].startswith("Error: CLIPSEARCH_DEVICE='foo' is not one of")


def test_an_index_in_use_is_busy_not_broken(library):
    """A cron job tells "try later" from "page someone" by the status alone."""
    index = open_index(Settings.resolve(index=library["env"]["CLIPSEARCH_INDEX"],
                                        model=library["env"]["CLIPSEARCH_MODEL"]))
    try:
        for args in (("search", "a cat"), ("status",), ("ingest", library["root"] / "photos")):
            done = run(*args, env=library["env"])
            assert done.returncode == 75, (args, done.stderr)
            assert f"is in use by pid {os.getpid()}" in done.stderr.decode().splitlines()[-1]
    finally:
        index.close()
    assert run("status", env=library["env"]).returncode == 0


def test_a_search_with_stdout_closed_fails_instead_of_answering_nowhere(library):
    done = run("search", "a cat", env=library["env"], close=1)
    assert done.returncode == 2  # called wrongly; `status --check`'s 1 means damage
    assert done.stderr.decode().splitlines()[-1] == (
        "Error: standard output is closed: nowhere to write the answer (redirect it: > FILE, or > /dev/null "
        "to discard it)")


def test_an_ingest_with_stdout_closed_does_its_work(library, tmp_path):
    """Its work is the index; the summary it would print goes nowhere. And the files it
    opens never land on descriptor 1 (output written into an index file)."""
    draw_collection(tmp_path / "more", count=2)
    done = run("ingest", tmp_path / "more", "--workers", "0", "--json", env=library["env"], close=1)
    assert done.returncode == 0, done.stderr
    listed = run("search", "a cat", "-k", "50", "-f", "paths", env=library["env"])
    assert sum(line.startswith(str(tmp_path / "more").encode()) for line in listed.stdout.splitlines()) == 2


def test_an_error_with_stderr_closed_is_not_written_to_stdout(library, tmp_path):
    """A script parsing stdout as JSON got `Error: ...` there."""
    done = run("search", "a cat", "-f", "json", env={**library["env"], "CLIPSEARCH_INDEX": str(tmp_path / "none")},
               close=2)
    assert done.returncode == 1 and done.stdout == b""
