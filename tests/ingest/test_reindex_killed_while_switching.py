"""A reindex on a Qdrant server killed (SIGKILL: no close, no finally) after it marked
the old collection as switching and before it switched: ingests into the name fail,
and their one line names the command that gets out of it, the reindex run again,
which finishes the switch and clears the mark; status names it too. Through the REST
double, the reindex in a child process that dies at that moment."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, ingest

from support import draw_collection, draw_image, export_server, settings_for

QUIET = IngestOptions(workers=0, quiet=True, batch_size=4, precision="")

# The reindex command, dying as a kill -9 would at the switch (after the mark and the
# last catch-up): os._exit runs no close and no finally.
_DIES_AT_THE_SWITCH = """
import os, sys
from clipsearch.index.client import ClientIndex
ClientIndex.switch = lambda *args, **kwargs: os._exit(137)
from clipsearch.cli import cli
cli(sys.argv[1:])
"""


def test_a_reindex_killed_while_switching_is_finished_by_the_command_ingest_names(tmp_path, tiny_model_dir,
                                                                                 other_model_dir, monkeypatch):
    export_server("rest", monkeypatch)  # the key and address, for the child and the commands
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    settings = settings_for("rest", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 8)
    ingest([str(tmp_path / "photos")], settings=settings, options=QUIET)

    killed = subprocess.run([sys.executable, "-c", _DIES_AT_THE_SWITCH, "reindex", "--index", settings.index,
                             "--collection", settings.collection, "--model", str(other_model_dir), "--workers", "0",
                             "-q"], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr

    draw_image(tmp_path / "more" / "new.png", "blue", "triangle", mark=5)
    with pytest.raises(ClipsearchError) as refused:
        ingest([str(tmp_path / "more")], settings=settings, options=QUIET)
    line = str(refused.value)
    assert "\n" not in line and "if no reindex is running" in line
    command = line.split("if no reindex is running")[1].split("`")[1]
    assert command.startswith("clipsearch reindex ") and f"--model {other_model_dir}" in command
    assert f"--collection {settings.collection}" in command and settings.index in command
    status = CliRunner().invoke(cli, ["status", "--index", settings.index, "--collection", settings.collection])
    assert f"`{command}` finishes it" in status.output

    done = CliRunner().invoke(cli, shlex.split(command)[1:] + ["--workers", "0", "-q"])
    assert done.exit_code == 0, done.output
    assert "now means" in done.output
    status = CliRunner().invoke(cli, ["status", "--index", settings.index, "--collection", settings.collection])
    assert "switching:" not in status.output
    again = ingest([str(tmp_path / "more")], settings=settings.with_overrides(model=str(other_model_dir)),
                   options=QUIET)
    assert again.embedded + again.unchanged == 1  # the refused batch went in, and the catch-up carried it
    with open_index(settings) as index:
        assert index.count() == 9
