"""CLIPSEARCH_TIMINGS (bench/cold_query.py's phase record) names a file to write: one
that cannot be written is said in a line, not silently dropped, and costs the command
nothing else."""

from __future__ import annotations

import json

from clipsearch.timings import Timings


def test_the_phases_are_written_where_asked(tmp_path):
    timings = Timings()
    with timings.phase("search"):
        pass
    timings.write(str(tmp_path / "t.json"), path="fast")
    data = json.loads((tmp_path / "t.json").read_text())
    assert set(data["phases"]) == {"search"} and data["path"] == "fast" and data["ended"] >= data["started"]


def test_a_file_that_cannot_be_written_is_said(tmp_path, capsys):
    Timings().write(str(tmp_path / "missing" / "t.json"))
    err = capsys.readouterr().err
    assert err == f"clipsearch: cannot write CLIPSEARCH_TIMINGS={tmp_path}/missing/t.json: No such file or directory\n"
