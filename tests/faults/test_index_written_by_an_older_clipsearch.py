"""An embedded index written to by a clipsearch that keeps no state.json (one from
before the point count was recorded) is read, not called damaged: that writer's
deletions (an `ingest --prune`) lower the count below the one a newer clipsearch
recorded at its last close. Real damage (a segment's files lost) is still caught, and
the way out it names keeps what the index still holds: migrate copies it into a new
index, where an ingest embeds only the images whose points were lost.

The older writer is the engine itself, used as such a clipsearch used it: points
deleted and flushed, state.json left as it was. The rest is the real console script.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from faults.conftest import one_line_error, tiny_pngs

PHOTOS = 12
SHARD = Path("images") / "shard"


def _indexed(cli, tmp_path: Path) -> tuple[Path, Path]:
    photos, index = tmp_path / "photos", tmp_path / "index"
    tiny_pngs(photos, PHOTOS)
    done = cli.ingest(photos, index, "-q")
    assert done.returncode == 0, done.stderr
    assert json.loads((index / "images" / "state.json").read_text())["points"] == PHOTOS
    return photos, index


def _older_writer_deletes(index: Path, photos: list[Path]) -> None:
    """What an older clipsearch's `ingest --prune` does to the shard: the engine's
    delete, flushed at its close; it knows no state.json."""
    import qdrant_edge

    from clipsearch.index import point_id

    shard = qdrant_edge.EdgeShard.load(str(index / SHARD), None)
    try:
        shard.update(qdrant_edge.UpdateOperation.delete_points([point_id(p) for p in photos]))
        shard.flush()
    finally:
        shard.close()


def _reads_whole(cli, index: Path, points: int) -> None:
    found = cli.search(index, k=points + 5)
    assert found.returncode == 0, found.stderr
    assert len(found.stdout.split()) == points
    status = cli.status(index, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["points"] == points
    check = cli.status(index, "--check")
    assert check.returncode == 0 and "healthy" in check.stdout, check.stdout + check.stderr


@pytest.mark.parametrize("record", ["this clipsearch's", "an earlier clipsearch's (the count alone)"])
def test_deletions_by_a_writer_that_keeps_no_record_are_not_damage(record, cli, tmp_path):
    photos, index = _indexed(cli, tmp_path)
    if record.startswith("an earlier"):
        (index / "images" / "state.json").write_text(json.dumps({"points": PHOTOS}))
        time.sleep(0.05)  # the older writer's flush comes after, as it did
    gone = sorted(photos.iterdir())[:3]
    for path in gone:
        path.unlink()
    _older_writer_deletes(index, gone)

    _reads_whole(cli, index, PHOTOS - 3)
    again = cli.ingest(photos, index, "--json", "-q")  # and this clipsearch writes it on
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["unchanged"] == PHOTOS - 3
    _reads_whole(cli, index, PHOTOS - 3)


def test_lost_files_are_damage_and_its_way_out_keeps_what_is_left(cli, tmp_path):
    """Points gone with no write at all: damage, said in one line with a way out that
    deletes nothing. Followed, it gives back every image, embedding only the lost ones."""
    photos, index = _indexed(cli, tmp_path)
    more = sorted(photos.iterdir())
    extra = tmp_path / "later"
    tiny_pngs(extra, 4, offset=PHOTOS)
    assert cli.ingest(extra, index, "-q").returncode == 0  # a second segment of the shard
    segments = sorted((index / SHARD / "segments").iterdir(), key=lambda s: s.stat().st_mtime_ns)
    before = json.loads((index / "images" / "state.json").read_text())["points"]
    assert before == PHOTOS + 4 and more
    shutil.rmtree(segments[0])  # a segment's files lost (a bad restore, a disk error)

    error = one_line_error(cli.search(index), f"but held {before} when it was last closed", "from a backup",
                           "clipsearch migrate", "--to NEW")
    assert "delete" not in error.lower()
    held = int(error.split(" holds ")[1].split()[0])
    assert 0 < held < before

    new = tmp_path / "new-index"
    copied = cli.run("migrate", "--index", str(index), "--to", str(new))
    assert copied.returncode == 0, copied.stderr
    assert f"copied {held}" in copied.stdout
    embedded = 0
    for folder in (photos, extra):
        healed = cli.ingest(folder, new, "--json", "-q")
        assert healed.returncode == 0, healed.stderr
        embedded += json.loads(healed.stdout)["embedded"]
    assert embedded == before - held
    _reads_whole(cli, new, before)
