"""A cached thumbnail lives no longer than its photo: the cache shows every photo small,
and a photo deleted from the library must not stay readable there. Its thumbnails go
when the watcher removes its point (a file deleted, a folder moved away), when serve
answers 410 or 404 for it, when a newer version of the photo is indexed or its new
thumbnail written, and at start for what changed while serve was down."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from clipsearch.index import point_id
from clipsearch.serve import files
from clipsearch.serve.files import Thumbnails

from support import ServeProcess, draw_image

TIMEOUT = 60


def cached(cache: Path) -> list[str]:
    """Every file in the cache (names)."""
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


def cached_points(cache: Path) -> set[str]:
    return {name[:36] for name in cached(cache)}


def make(thumbnails: Thumbnails, path: Path, size: int = 128) -> bytes:
    st = os.stat(path)
    return thumbnails.get(point_id(path), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}, size,
                          os.open(path, os.O_RDONLY))


def edit(path: Path, colour: str) -> None:
    """A new version of the photo: other pixels, another size and mtime."""
    mtime_ns = os.stat(path).st_mtime_ns
    draw_image(path, colour, "triangle", size=(130, 100))
    os.utime(path, ns=(mtime_ns + 10**9, mtime_ns + 10**9))


# -- the cache by itself -----------------------------------------------------------------


def test_a_newer_version_of_a_photo_replaces_its_old_thumbnails(tmp_path):
    photo = draw_image(tmp_path / "photos" / "a.png", "red")
    other = draw_image(tmp_path / "photos" / "b.png", "blue")
    cache = tmp_path / "thumbnails"
    thumbnails = Thumbnails(cache)
    for size in (128, 256):
        make(thumbnails, photo, size)
    make(thumbnails, other)
    assert len(cached(cache)) == 3
    edit(photo, "green")
    make(thumbnails, photo, 128)
    st = os.stat(photo)
    assert cached(cache) == sorted([f"{point_id(photo)}-128-{st.st_size}-{st.st_mtime_ns}.jpg",
                                    next(n for n in cached(cache) if n.startswith(point_id(other)))])


def test_a_thumbnail_being_made_when_its_photo_is_forgotten_is_not_kept(tmp_path, monkeypatch):
    photo = draw_image(tmp_path / "photos" / "a.png", "red")
    cache = tmp_path / "thumbnails"
    thumbnails = Thumbnails(cache)
    real = files.make_thumbnail

    def deleted_meanwhile(fd, size):  # the watcher removes the point while the decode runs
        data = real(fd, size)
        thumbnails.forget([point_id(photo)])
        return data

    monkeypatch.setattr(files, "make_thumbnail", deleted_meanwhile)
    assert make(thumbnails, photo)[:2] == b"\xff\xd8"  # the request that asked before is answered
    assert cached(cache) == []


def test_a_photo_forgotten_after_its_record_was_read_gets_no_thumbnail(tmp_path):
    """The watcher removes the point between a request's read of its record and the
    decode: the thumbnail, made of a stale record, is answered but not kept."""
    photo = draw_image(tmp_path / "photos" / "a.png", "red")
    cache = tmp_path / "thumbnails"
    thumbnails = Thumbnails(cache)
    st = os.stat(photo)
    with thumbnails.making() as started:
        payload = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}  # the record, read
        thumbnails.forget([point_id(photo)])  # removed now, before any decode began
        data = thumbnails.get(point_id(photo), payload, 128, os.open(photo, os.O_RDONLY), started)
    assert data[:2] == b"\xff\xd8"
    assert cached(cache) == []
    make(thumbnails, photo)  # asked for again with no forget in between: kept
    assert cached_points(cache) == {point_id(photo)}


def test_the_thumbnail_route_keeps_no_thumbnail_of_a_point_removed_after_its_read(served, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from clipsearch.serve.app import create_app
    from clipsearch.serve.security import Guard
    from clipsearch.serve.uploads import UploadDecoder

    cache = tmp_path / "thumbnails"
    thumbnails = Thumbnails(cache)
    app = create_app(served.service, Guard(None), thumbnails, UploadDecoder(4.0), 2_000_000, version="test")
    photo = sorted((served.photos / "garden").glob("*"))[5]
    real = served.service.record

    def read_then_removed(point):  # the watcher's removal lands just after the route's read
        payload = real(point)
        thumbnails.forget([point])
        return payload

    monkeypatch.setattr(served.service, "record", read_then_removed)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get(f"/api/images/{point_id(photo)}/thumbnail?size=128").status_code == 200
    assert cached(cache) == []


# -- the application: 410 and 404 ----------------------------------------------------------


def test_a_410_removes_the_thumbnails_of_a_deleted_or_edited_photo(served, client):
    cache = served.root / "thumbnails"
    deleted, edited, kept = sorted((served.photos / "garden").glob("*"))[:3]
    for photo in (deleted, edited, kept):
        for size in (128, 256):
            assert client.get(f"/api/images/{point_id(photo)}/thumbnail?size={size}").status_code == 200
    assert {point_id(p) for p in (deleted, edited, kept)} <= cached_points(cache)
    deleted.unlink()
    edit(edited, "black")
    assert client.get(f"/api/images/{point_id(deleted)}/thumbnail").status_code == 410
    assert client.get(f"/api/images/{point_id(edited)}/file").status_code == 410  # the original's 410 too
    left = cached_points(cache)
    assert point_id(deleted) not in left and point_id(edited) not in left and point_id(kept) in left


def test_a_404_removes_the_thumbnails_of_a_point_no_longer_indexed(served, client):
    cache = served.root / "thumbnails"
    photo, kept = sorted((served.photos / "beach").glob("*"))[:2]
    for p in (photo, kept):
        assert client.get(f"/api/images/{point_id(p)}/thumbnail?size=128").status_code == 200
    served.service.index.delete(ids=[point_id(photo)])  # another writer's prune, say
    assert client.get(f"/api/images/{point_id(photo)}/thumbnail?size=128").status_code == 404
    assert point_id(photo) not in cached_points(cache) and point_id(kept) in cached_points(cache)


def test_a_sweep_asked_for_after_a_walk_removes_what_another_writer_deleted(served, client):
    """serve --watch asks for a sweep after each walk (--rescan); serve without --watch
    sweeps every --rescan minutes: a Qdrant server's other clients change the index too."""
    import time

    from clipsearch.serve.server import ThumbnailSweeper

    cache = served.root / "thumbnails"
    photo, kept = sorted((served.photos / "beach").glob("*"))[2:4]
    for p in (photo, kept):
        assert client.get(f"/api/images/{point_id(p)}/thumbnail?size=128").status_code == 200
    sweeper = ThumbnailSweeper(served.service, Thumbnails(cache), quiet=True).start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while sweeper.sweeps < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {point_id(photo), point_id(kept)} <= cached_points(cache)  # nothing stale yet: kept
        served.service.index.delete(ids=[point_id(photo)])  # not through serve
        sweeper.request()
        while sweeper.sweeps < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert point_id(photo) not in cached_points(cache) and point_id(kept) in cached_points(cache)
    finally:
        sweeper.stop()


# -- a real serve -----------------------------------------------------------------------------


def serve_args(tmp_path: Path, model: Path, *extra: str) -> list[str]:
    return ["--index", str(tmp_path / "index"), "--model", str(model), "--workers", "0", *extra]


def cache_of(tmp_path: Path) -> Path:
    folders = list((tmp_path / "cache" / "thumbnails").iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def fetch(server: ServeProcess, photos, sizes=(128, 512)) -> None:
    for photo in photos:
        for size in sizes:
            status, _ = server.get(f"/api/images/{point_id(photo)}/thumbnail?size={size}")
            assert status == 200, (photo, status)


def test_the_watcher_removes_the_thumbnails_of_deleted_moved_away_and_edited_photos(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    deleted = draw_image(photos / "deleted.png", "red")
    edited = draw_image(photos / "edited.png", "blue")
    kept = draw_image(photos / "kept.png", "purple")
    trip = [draw_image(photos / "trip" / "c.png", "green"), draw_image(photos / "trip" / "d.png", "yellow")]
    every = [deleted, edited, kept, *trip]
    with ServeProcess(serve_args(tmp_path, tiny_model_dir, "--watch", str(photos)), tmp_path / "serve.log",
                      env={"CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache")}) as server:
        server.wait_idle()
        fetch(server, every)
        cache = cache_of(tmp_path)
        assert cached_points(cache) == {point_id(p) for p in every} and len(cached(cache)) == 10
        old_edited = {n for n in cached(cache) if n.startswith(point_id(edited))}
        deleted.unlink()
        shutil.move(photos / "trip", tmp_path / "elsewhere")  # out of the library: one event, for the folder
        edit(edited, "orange")
        server.wait_until(lambda: cached_points(cache) == {point_id(kept)}, TIMEOUT,
                          f"the thumbnails of the removed and edited photos to go: {cached(cache)}")
        assert len(cached(cache)) == 2  # the kept photo's two sizes
        fetch(server, [edited], sizes=(128,))  # the new version: made anew
        new = {n for n in cached(cache) if n.startswith(point_id(edited))}
        assert len(new) == 1 and not new & old_edited


def test_serve_start_removes_the_thumbnails_of_what_changed_while_it_was_down(tmp_path, tiny_model_dir):
    from clipsearch import IngestOptions, ingest
    from clipsearch.config import Settings
    from clipsearch.index import open_index

    photos = tmp_path / "photos"
    pruned = draw_image(photos / "pruned.png", "red")  # its point deleted (an ingest --prune elsewhere)
    reindexed = draw_image(photos / "reindexed.png", "blue")  # indexed anew, edited
    vanished = draw_image(photos / "vanished.png", "green")  # its file deleted, still indexed
    kept = draw_image(photos / "kept.png", "purple")
    every = [pruned, reindexed, vanished, kept]
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu")
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    env = {"CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    with ServeProcess(serve_args(tmp_path, tiny_model_dir), tmp_path / "serve.log", env=env) as server:
        fetch(server, every)
    cache = cache_of(tmp_path)
    assert cached_points(cache) == {point_id(p) for p in every}
    kept_names = {n for n in cached(cache) if n.startswith(point_id(kept))}
    leftover = cache / "00" / f"{'0' * 8}-0000-5000-8000-{'0' * 12}-128-1-2.4194305-1.tmp"  # a killed serve's
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"\xff\xd8 a photo half written")

    with open_index(settings) as index:  # while serve is down
        index.delete(ids=[point_id(pruned)])
        record = index.retrieve([point_id(reindexed)], with_vectors=True)[0]
        payload = {**record.payload, "mtime_ns": record.payload["mtime_ns"] + 10**9}
        index.upsert([record.id], np.asarray([record.vector], dtype=np.float32), [payload])
    vanished.unlink()

    with ServeProcess(serve_args(tmp_path, tiny_model_dir), tmp_path / "serve2.log", env=env) as server:
        server.wait_until(lambda: set(cached(cache)) == kept_names, TIMEOUT,
                          f"the stale thumbnails to go: {cached(cache)}")
        assert server.get("/api/status")[0] == 200
    assert "removed 7 cached thumbnails" in (tmp_path / "serve2.log").read_text()
