"""A damaged embedded index folder (issue #15): each kind of damage, met through the real
`clipsearch search`, `ingest` and `status`, is one line saying what is wrong and what to
do, or (where nothing is lost) just works; never a traceback, never silently empty or
short results. `status --check` names the damage it can open.

Each case damages a copy of one healthy index of 40 tiny PNGs made by the real console
script with the tiny CLIP; one trial per case (14 cases, ~3 CLI runs each, ~60 s).
What each damage does to the engine was measured first (qdrant-edge 0.9): a truncated
id tracker or a deleted segment loads as a smaller shard, with no error (caught by the
point count recorded at the last close); a truncated vector chunk or payload page loads
and fails at the first read; a truncated payload tracker loads with empty payloads.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from clipsearch.index.edge import MARKER

from faults.conftest import Cli, export_text_tower, one_line_error, tiny_pngs

pytestmark = pytest.mark.slow

PHOTOS = 40
SHARD = Path("images") / "shard"


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, tiny_model_dir, encoder) -> tuple[Cli, Path, Path]:
    root = tmp_path_factory.mktemp("damaged")
    cli = Cli(tiny_model_dir, root / "cache")
    export_text_tower(cli.cache, tiny_model_dir, encoder)
    photos = root / "photos"
    tiny_pngs(photos, PHOTOS)
    done = cli.ingest(photos, root / "index")
    assert done.returncode == 0, done.stderr
    # Opened once since: the load folds the engine's journals into their files, as any
    # index that has been searched has had them folded (the damage cases assume it).
    assert cli.status(root / "index").returncode == 0
    return cli, photos, root / "index"


def segment(index: Path) -> Path:
    """The shard's one segment (40 points, no HNSW: a single appendable segment)."""
    (only,) = (index / SHARD / "segments").iterdir()
    return only


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


def dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid -= 1


OK = ()  # the command works


@dataclass
class Case:
    damage: Callable[[Path], None]
    search: tuple[str, ...]  # the words its one-line error names; OK when it works
    ingest: tuple[str, ...]
    status: tuple[str, ...]
    check: tuple[str, ...] = ("PROBLEM",)  # in `status --check` output (exit 1), or OK


LOST_POINTS = ("but held 40 when it was last closed", "from a backup", "clipsearch migrate")
CANNOT_OPEN = ("cannot open collection", "the index is damaged", "ingest again")

CASES = {
    "truncated id tracker": Case(
        lambda index: truncate(segment(index) / "mutable_id_tracker.mappings", 100),
        LOST_POINTS, LOST_POINTS, LOST_POINTS),
    "segment folder deleted": Case(
        lambda index: shutil.rmtree(segment(index)), LOST_POINTS, LOST_POINTS, LOST_POINTS),
    "truncated vector chunk": Case(
        lambda index: truncate(segment(index) / "vector_storage" / "vectors" / "chunk_0.mmap", 1000),
        ("failed answering a query", "status --check"), OK, OK, ("PROBLEM  points", "the index is damaged")),
    "truncated payload page": Case(
        lambda index: truncate(segment(index) / "payload_storage" / "page_0.dat", 1000),
        ("failed answering a query", "status --check"), ("failed reading points", "status --check"), OK,
        ("PROBLEM  points",)),
    "shard folder deleted": Case(
        lambda index: shutil.rmtree(index / SHARD),
        *[("has lost its shard", "ingest again")] * 3, ("PROBLEM  open: collection 'images'",)),
    "WAL emptied": Case(
        lambda index: truncate(index / SHARD / "wal" / "open-1", 0), CANNOT_OPEN, CANNOT_OPEN, CANNOT_OPEN),
    "shard config garbled": Case(
        lambda index: (index / SHARD / "edge_config.json").write_text("{garbage"),
        CANNOT_OPEN, CANNOT_OPEN, CANNOT_OPEN),
    "model.json missing": Case(
        lambda index: (index / "images" / "model.json").unlink(),
        *[("model.json is missing", "restore the file", "ingest again")] * 3),
    "model.json truncated": Case(
        lambda index: truncate(index / "images" / "model.json", 20),
        *[("cannot read the model record", "model.json", "ingest again")] * 3),
    "marker from a newer clipsearch": Case(
        lambda index: (index / MARKER).write_text(json.dumps({"format": 2, "backend": "qdrant-edge"})),
        *[("written by a newer clipsearch", "upgrade clipsearch")] * 3),
    "marker garbled": Case(
        lambda index: (index / MARKER).write_text("not json"),
        *[("index marker", "is damaged", '{"format": 1}')] * 3),
    "lock file left by a dead process": Case(
        lambda index: (index / "images.lock").write_text(f"{dead_pid()}\n"), OK, OK, OK, OK),
    "lock path is a folder": Case(
        lambda index: ((index / "images.lock").unlink(), (index / "images.lock").mkdir()),
        *[("cannot open the lock file", "images.lock", "remove that path")] * 3),
    "collection creation killed before its rename": Case(
        lambda index: (shutil.copytree(index / "images", index / ".images.creating"),
                       truncate(index / ".images.creating" / "model.json", 3)),
        OK, OK, OK, OK),
}


def expect(result, words: tuple[str, ...]) -> None:
    if words == OK:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    else:
        one_line_error(result, *words)


@pytest.mark.parametrize("name", CASES)
def test_damage_is_one_line_that_says_what_to_do(name, healthy, tmp_path):
    cli, photos, original = healthy
    case = CASES[name]
    index = tmp_path / "index"
    shutil.copytree(original, index)
    case.damage(index)

    found = cli.search(index)
    expect(found, case.search)
    if case.search == OK:  # never silently short
        assert len(found.stdout.split()) == 5
    expect(cli.status(index), case.status)
    check = cli.status(index, "--check")
    if case.check == OK:
        assert check.returncode == 0 and "healthy" in check.stdout, check.stdout + check.stderr
    else:
        assert check.returncode == 1 and "Traceback" not in check.stderr + check.stdout, check.stderr
        assert check.stdout.rstrip().endswith("found"), check.stdout  # "N problem(s) found"
        for word in case.check:
            assert word in check.stdout, check.stdout
    ingested = cli.ingest(photos, index, "--json", "-q")
    expect(ingested, case.ingest)
    if case.ingest == OK:
        assert json.loads(ingested.stdout)["unchanged"] + json.loads(ingested.stdout)["embedded"] == PHOTOS
    assert not (index / ".images.creating").exists()  # a staging folder never outlives an open


def test_a_truncated_payload_tracker_is_refused_by_search_and_healed_by_ingest(healthy, tmp_path):
    """The engine loads it with empty payloads (measured): search refuses hits without
    one, --check counts them, and an ingest re-embeds those files (their points no
    longer show the size and mtime of an unchanged file), after which all is well."""
    cli, photos, original = healthy
    index = tmp_path / "index"
    shutil.copytree(original, index)
    truncate(segment(index) / "payload_storage" / "tracker.dat", 100)
    one_line_error(cli.search(index), "without its payload", "status --check")
    check = cli.status(index, "--check")
    assert check.returncode == 1 and "points without a path" in check.stdout, check.stdout
    ingested = cli.ingest(photos, index, "--json")
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["embedded"] > 0
    healed = cli.status(index, "--check")
    assert healed.returncode == 0 and "healthy" in healed.stdout, healed.stdout
    assert len(cli.search(index).stdout.split()) == 5


def test_new_files_into_an_index_with_a_truncated_vector_chunk_are_one_line(healthy, tmp_path):
    """Ingesting new files reads and writes the damaged segment: the engine fails (not
    a crash, measured), the line says to check the index, and the check says what."""
    cli, photos, original = healthy
    index = tmp_path / "index"
    shutil.copytree(original, index)
    truncate(segment(index) / "vector_storage" / "vectors" / "chunk_0.mmap", 1000)
    more = tmp_path / "more"
    tiny_pngs(more, 3, offset=PHOTOS)
    one_line_error(cli.ingest(more, index, "-q"), "failed", "status --check")
    check = cli.status(index, "--check")
    assert check.returncode == 1 and "PROBLEM" in check.stdout and "Traceback" not in check.stderr, check.stdout
