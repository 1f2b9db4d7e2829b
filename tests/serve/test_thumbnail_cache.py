"""serve's thumbnail cache is bounded: beyond --thumbnail-megabytes the thumbnails
served least recently are removed, so a 500k-photo library does not fill the disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.index import point_id
from clipsearch.serve.files import Thumbnails


def photos(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):  # noise: every thumbnail about the same size
        path = folder / f"p{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def serve(thumbnails: Thumbnails, path: str) -> bytes:
    st = os.stat(path)
    data = thumbnails.get(point_id(path), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}, 128,
                          os.open(path, os.O_RDONLY))
    time.sleep(0.01)  # distinct times of last use
    return data


def cached_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.jpg"))


def cached_points(folder: Path) -> set[str]:
    return {f.name.split("-128-")[0] for f in folder.rglob("*.jpg")}


def test_the_least_recently_served_thumbnails_go_beyond_the_limit(tmp_path):
    paths = photos(tmp_path / "photos", 8)
    one = len(serve(Thumbnails(tmp_path / "probe"), paths[0]))
    limit = int(one * 4.5)  # room for four
    cache = tmp_path / "thumbnails"
    thumbnails = Thumbnails(cache, limit)
    first = [serve(thumbnails, p) for p in paths[:4]]
    assert cached_bytes(cache) <= limit and len(cached_points(cache)) == 4
    assert serve(thumbnails, paths[0]) == first[0]  # served again: now the most recent
    serve(thumbnails, paths[4])  # over the limit: down to 90% of it, oldest first
    assert cached_bytes(cache) <= limit * 0.9
    kept = cached_points(cache)
    assert point_id(paths[0]) in kept and point_id(paths[4]) in kept
    assert point_id(paths[1]) not in kept  # the least recently served
    for path in paths[5:]:
        serve(thumbnails, path)
        assert cached_bytes(cache) <= limit
    assert serve(thumbnails, paths[1]) == first[1]  # a removed one is made again, the same


def test_a_restarted_server_counts_what_the_cache_already_holds(tmp_path):
    paths = photos(tmp_path / "photos", 6)
    cache = tmp_path / "thumbnails"
    unbounded = Thumbnails(cache)
    sizes = [len(serve(unbounded, p)) for p in paths[:5]]
    limit = int(sum(sizes) * 0.7)  # a smaller limit than the cache now holds
    restarted = Thumbnails(cache, limit)
    serve(restarted, paths[5])
    assert cached_bytes(cache) <= limit * 0.9
    assert point_id(paths[5]) in cached_points(cache) and point_id(paths[0]) not in cached_points(cache)


def test_the_cache_is_private_to_its_user(tmp_path):
    cache = tmp_path / "thumbnails"
    cache.mkdir(mode=0o755)  # as an older serve left it
    thumbnails = Thumbnails(cache)
    serve(thumbnails, photos(tmp_path / "photos", 1)[0])
    assert cache.stat().st_mode & 0o777 == 0o700  # a chmod 600 photo is not readable small by everyone


def test_at_most_the_allowed_decodes_run_at_once(tmp_path, monkeypatch):
    import threading

    from clipsearch.serve import files

    paths = photos(tmp_path / "photos", 8)
    running, most, lock = [0], [0], threading.Lock()
    real = files.make_thumbnail

    def counted(fd, size):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)  # long enough for the others to pile up
            return real(fd, size)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(files, "make_thumbnail", counted)
    thumbnails = Thumbnails(tmp_path / "thumbnails", decodes=2)
    threads = [threading.Thread(target=serve, args=(thumbnails, p)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most[0] == 2 and len(cached_points(tmp_path / "thumbnails")) == 8
