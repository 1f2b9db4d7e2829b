"""Photo facts carry the version of the reader that made them (photo_facts.FACTS_VERSION):
an ingest of unchanged files reads again, from their EXIF alone (no decode, no model), the
facts of points an older clipsearch made, so that `--camera fuji` finds the FUJIFILM
photos indexed before camera words had their beginnings. A current point costs a look at
its payload, nothing read; moved and copied files carry the version with the facts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from test_ingest_lazy import HEAVY

from clipsearch import IngestOptions, Settings, ingest
from clipsearch.index import open_index
from clipsearch.photo_facts import FACTS_VERSION, FACTS_VERSION_FIELD

from support import exif_photo

ANNOUNCED = "reading again the photo facts"


def _library(photos):
    exif_photo(photos / "fuji.jpg", "red", "2024:05:01 09:00:00", "FUJIFILM", "X-T3")
    exif_photo(photos / "canon.jpg", "green", "2023:07:14 10:22:31", "Canon", "Canon EOS 5D")
    exif_photo(photos / "plain.jpg", "blue")  # no EXIF: no facts, a version all the same


def _old_reader(payload: dict) -> dict:
    """A point as clipsearch left it before facts had a version: camera words without
    their beginnings (fujifilm, never fuji)."""
    old = {k: v for k, v in payload.items() if k != FACTS_VERSION_FIELD}
    if "camera" in old:
        old["camera_words"] = old["camera"].casefold().split()
    return old


def _rewrite(settings, change) -> None:
    with open_index(settings) as opened:
        records = list(opened.scroll(with_vectors=True))
        opened.upsert([r.id for r in records], np.stack([r.vector for r in records]),
                      [change(dict(r.payload)) for r in records])


def _payloads(settings) -> dict:
    with open_index(settings) as opened:
        return {os.path.basename(r.path): r.payload for r in opened.scroll()}


def _with_camera(settings, camera: str) -> set[str]:
    """What `search --camera CAMERA` finds."""
    from clipsearch.encoders import Encoder
    from clipsearch.search.engine import Searcher
    from clipsearch.search.filters import build_where

    with open_index(settings) as index:
        hits = Searcher(Encoder(settings.model, "cpu"), index).text("a photo", k=20,
                                                                    where=build_where(None, None, camera, None))
    return {os.path.basename(h.path) for h in hits}


def _ingest_in_fresh_process(args: list) -> tuple[dict, set[str], list[str]]:
    """`clipsearch ingest ARGS --json` in a new process: its summary, the top-level
    packages it imported, and the lines it wrote on stderr."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "clipsearch", "ingest", *map(str, args),
                           "--json"], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    said = [line for line in lines if not line.startswith("import time:")]
    return json.loads(done.stdout.splitlines()[-1]), imported, said


def test_an_old_index_gets_its_facts_read_again_without_the_model(tmp_path, tiny_model_dir, monkeypatch):
    photos, index = tmp_path / "photos", tmp_path / "index"
    _library(photos)
    exif_photo(photos / "broken.jpg", "white", "2022:01:01 00:00:00", "FUJIFILM", "X100V")
    exif_photo(photos / "gone.jpg", "black", "2022:01:01 00:00:00", "FUJIFILM", "GFX100")
    settings = Settings.resolve(index=str(index), model=str(tiny_model_dir))
    assert ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True)).embedded == 5
    assert {p[FACTS_VERSION_FIELD] for p in _payloads(settings).values()} == {FACTS_VERSION}
    _rewrite(settings, _old_reader)
    assert _with_camera(settings, "fuji") == set()  # what a user upgrading saw: every photo missed

    # Unchanged by size and mtime, but no image now: its point keeps what it has; and one gone.
    broken = photos / "broken.jpg"
    st = broken.stat()
    broken.write_bytes(bytes(st.st_size))
    os.utime(broken, ns=(st.st_atime_ns, st.st_mtime_ns))
    (photos / "gone.jpg").unlink()
    old = _payloads(settings)

    args = [photos, "--index", index, "--model", tiny_model_dir, "-w", "0"]
    summary, imported, said = _ingest_in_fresh_process(args)
    assert (summary["embedded"], summary["upgraded"], summary["unchanged"]) == (0, 3, 4), summary
    assert not imported & HEAVY, sorted(imported & HEAVY)  # no model loaded
    assert sum(ANNOUNCED in line for line in said) == 1, said
    payloads = _payloads(settings)
    assert payloads["fuji.jpg"]["camera_words"][:3] == ["fujifilm", "x-t3", "x"]
    assert "fuji" in payloads["fuji.jpg"]["camera_words"]
    assert payloads["fuji.jpg"]["taken"] == "2024-05-01T09:00:00"
    assert "eos" in payloads["canon.jpg"]["camera_words"] and "cano" in payloads["canon.jpg"]["camera_words"]
    for name in ("fuji.jpg", "canon.jpg", "plain.jpg"):
        assert payloads[name][FACTS_VERSION_FIELD] == FACTS_VERSION, payloads[name]
    assert "camera" not in payloads["plain.jpg"]
    assert payloads["broken.jpg"] == old["broken.jpg"] and payloads["gone.jpg"] == old["gone.jpg"]
    assert _with_camera(settings, "fuji") == {"fuji.jpg"}

    # Current points: their payload says so, nothing is read (the unreadable one is tried again).
    from clipsearch.ingest import relink

    read = []
    real = relink.header_facts
    monkeypatch.setattr(relink, "header_facts", lambda path: read.append(os.path.basename(path)) or real(path))
    again = ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert (again.embedded, again.upgraded, again.unchanged) == (0, 0, 4), again
    assert read == ["broken.jpg"]


def test_a_point_from_a_newer_clipsearch_is_left_as_it_is(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    _library(photos)
    settings = Settings.resolve(index=str(tmp_path / "index"), model=str(tiny_model_dir))
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    _rewrite(settings, lambda p: {**p, FACTS_VERSION_FIELD: FACTS_VERSION + 1, "camera_words": ["its", "own"]})
    again = ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert (again.upgraded, again.unchanged) == (0, 3), again
    assert _payloads(settings)["fuji.jpg"]["camera_words"] == ["its", "own"]


def test_moved_and_copied_files_carry_the_version_or_get_their_facts_read_again(tmp_path, tiny_model_dir, capsys):
    photos, index = tmp_path / "photos", tmp_path / "index"
    _library(photos / "card")
    settings = Settings.resolve(index=str(index), model=str(tiny_model_dir))
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))

    # From a current point: the version travels with the facts.
    shutil.copy2(photos / "card" / "fuji.jpg", photos / "fuji-copy.jpg")
    summary = ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert (summary.copied, summary.upgraded) == (1, 0), summary
    payloads = _payloads(settings)
    assert payloads["fuji-copy.jpg"][FACTS_VERSION_FIELD] == FACTS_VERSION
    assert payloads["fuji-copy.jpg"]["camera_words"] == payloads["fuji.jpg"]["camera_words"]

    # From an old point (under a folder this run does not walk, so still old): the new
    # file's facts are read, not the old ones copied.
    _rewrite(settings, _old_reader)
    arrived = photos / "arrived"
    arrived.mkdir()
    shutil.copy2(photos / "card" / "fuji.jpg", arrived / "fuji-again.jpg")
    os.rename(photos / "card" / "canon.jpg", arrived / "canon-moved.jpg")
    capsys.readouterr()
    summary = ingest([str(arrived)], settings=settings, options=IngestOptions(workers=0))
    assert (summary.embedded, summary.copied, summary.moved, summary.upgraded) == (0, 1, 1, 2), summary
    assert capsys.readouterr().err.count(ANNOUNCED) == 1
    payloads = _payloads(settings)
    assert set(payloads) == {"fuji.jpg", "plain.jpg", "fuji-copy.jpg", "fuji-again.jpg", "canon-moved.jpg"}
    for name in ("fuji-again.jpg", "canon-moved.jpg"):
        assert payloads[name][FACTS_VERSION_FIELD] == FACTS_VERSION, payloads[name]
    assert "fuji" in payloads["fuji-again.jpg"]["camera_words"]
    assert "cano" in payloads["canon-moved.jpg"]["camera_words"]
    assert FACTS_VERSION_FIELD not in payloads["fuji.jpg"]  # its own turn comes when its folder is walked


def test_points_from_before_fingerprints_get_the_version_with_their_facts(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    _library(photos)
    settings = Settings.resolve(index=str(tmp_path / "index"), model=str(tiny_model_dir))
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    _rewrite(settings, lambda p: {k: v for k, v in _old_reader(p).items() if k != "fingerprint"})
    again = ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert (again.embedded, again.upgraded) == (0, 3), again
    payloads = _payloads(settings)
    assert all(p[FACTS_VERSION_FIELD] == FACTS_VERSION and "fingerprint" in p for p in payloads.values())
    assert "fuji" in payloads["fuji.jpg"]["camera_words"]
