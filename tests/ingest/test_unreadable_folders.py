"""A folder the walk cannot list: its images are not found (found counts files), so the
summary says how many folders could not be read, in its line and in --json."""

from __future__ import annotations

import errno
import json
import os

from click.testing import CliRunner

from clipsearch.cli import cli

from support import draw_collection


def test_the_summary_counts_the_folders_that_could_not_be_read(tmp_path, tiny_model_dir, monkeypatch):
    lib = tmp_path / "lib"
    draw_collection(lib / "open", 3)
    locked = [lib / "locked-1", lib / "locked-2"]
    for folder in locked:
        draw_collection(folder, 2)
    refused = {str(folder) for folder in locked}
    real_scandir = os.scandir

    def scandir(path="."):  # root reads every folder: the refusal is made up
        if os.fspath(path) in refused:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    args = ["ingest", str(lib), "--index", str(tmp_path / "index"), "--model", str(tiny_model_dir), "-w", "0", "-q"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["found"], summary["skipped"], summary["unreadable_folders"]) == (3, 2, 2)
    line = CliRunner().invoke(cli, args).stdout.strip()
    assert "unchanged 3, skipped 2 (2 folders that could not be read), removed 0" in line, line
