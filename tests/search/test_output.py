"""Where the answers go: stdout that cannot take them (a full disk, /dev/full) is one
line, not a traceback; a reader that stops early (`| head -1`) still gets the gallery
asked for; many queries' bare paths stay apart."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clipsearch import IngestOptions, ingest
from clipsearch.cli import cli

from support import draw_collection, groups_of


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("output")
    draw_collection(root / "photos", 12)
    index = root / "index"
    env = {"CLIPSEARCH_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        from clipsearch.config import Settings

        ingest([str(root / "photos")], settings=Settings.resolve(model=str(tiny_model_dir), index=str(index)),
               options=IngestOptions(workers=0, quiet=True))
    return root, ["--index", str(index), "--model", str(tiny_model_dir)], env


def command(indexed, *args: str, **how) -> subprocess.Popen:
    _, where, env = indexed
    return subprocess.Popen([sys.executable, "-m", "clipsearch", *args, *where], env={**os.environ, **env},
                            stderr=subprocess.PIPE, text=True, **how)


@pytest.mark.parametrize("args", [["search", "a red circle", "-f", "json"], ["status", "--json"]])
def test_output_that_cannot_be_written_is_one_line(indexed, args):
    with open("/dev/full", "w") as full:
        process = command(indexed, *args, stdout=full)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stderr.strip().splitlines()[-1] == "Error: cannot write the output: No space left on device", stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("args", [["search", "a red circle", "-k", "12"], ["duplicates", "--similar", "0.01"]])
def test_the_gallery_is_written_though_the_reader_of_stdout_went_away(indexed, tmp_path, args):
    page = tmp_path / "page.html"
    process = command(indexed, *args, "--gallery", str(page), stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()  # as `| head -1` does once it has its line: every write is EPIPE
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr
    assert page.exists() and page.read_text().count("<img") >= 2, stderr


def test_many_queries_in_bare_paths_keep_each_querys_hits_apart(indexed, tmp_path):
    _, where, env = indexed
    queries = tmp_path / "queries.txt"
    queries.write_text("a red circle\ngone.jpg\na green square\na blue triangle\n")
    runner = CliRunner()
    lines = runner.invoke(cli, ["search", "--queries", str(queries), "-k", "3", "-f", "paths", *where], env=env)
    assert lines.exit_code == 1  # the missing image's line is skipped, and said
    # The n-th group answers the n-th line: the skipped line's is empty.
    groups = groups_of(lines.stdout_bytes, b"\n")
    assert [len(group) for group in groups] == [3, 0, 3, 3]
    nul = runner.invoke(cli, ["search", "--queries", str(queries), "-k", "3", "-f", "paths0", *where], env=env)
    assert groups_of(nul.stdout_bytes, b"\0") == groups


@pytest.mark.parametrize("args", [["search", "a red circle", "-f", "paths"], ["duplicates", "--similar", "0.01",
                                                                             "-f", "paths"]])
def test_a_gallery_that_cannot_be_written_costs_nothing_else(indexed, tmp_path, monkeypatch, args):
    """Refused before any work where its folder is missing; failing later (a full disk),
    it fails the command after the hits or groups are out, not instead of them."""
    from clipsearch.errors import ClipsearchError
    from clipsearch.search import gallery

    _, where, env = indexed
    runner = CliRunner()
    missing = runner.invoke(cli, [*args, *where, "--gallery", str(tmp_path / "nowhere" / "g.html")], env=env)
    assert missing.exit_code == 1 and missing.stdout == ""
    assert f"--gallery {tmp_path}/nowhere/g.html: folder {tmp_path}/nowhere does not exist" in missing.stderr

    def full_disk(path, sections, **how):
        raise ClipsearchError(f"cannot write the gallery {path}: No space left on device")

    monkeypatch.setattr(gallery, "write_gallery", full_disk)
    failed = runner.invoke(cli, [*args, *where, "--gallery", str(tmp_path / "g.html")], env=env)
    assert failed.exit_code == 1
    assert failed.stderr.strip().splitlines()[-1] == f"Error: cannot write the gallery {tmp_path}/g.html: No space " \
                                                     "left on device"
    assert len(failed.stdout.split()) >= 2 and all(os.path.isfile(p) for p in failed.stdout.split())
