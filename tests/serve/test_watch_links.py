"""serve --watch and links into the library from outside it (serve/watch.py), with real
watchdog events, real symlinks, the embedded index and the tiny CLIP: deleting the link
(or pointing it elsewhere) takes the points of what only it reached, which serve would
otherwise go on sharing; what another way still reaches keeps its point."""

from __future__ import annotations

import os
import time

import pytest

from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, Ingestor
from clipsearch.serve.watch import FolderWatcher

from support import draw_image, settings_for

TIMEOUT = 60  # seconds; the machine is slow and shared


@pytest.fixture
def index(tmp_path, tiny_model_dir):
    with open_index(settings_for("edge", tmp_path, tiny_model_dir), create=True) as idx:
        yield idx


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    draw_image(folder / "beach.png", "blue", "square", mark=1)
    return folder


@pytest.fixture
def private(tmp_path):
    folder = tmp_path / "home" / "private"
    draw_image(folder / "diary.png", "purple", "triangle", mark=2)
    draw_image(folder / "sub" / "letter.png", "orange", "circle", mark=3)
    return folder


def paths_in(index) -> set[str]:
    return {r.payload["path"] for r in index.scroll()}


def real(path) -> str:
    return os.path.realpath(path)


def settle(watcher: FolderWatcher, until) -> None:
    """Wait until `until()` holds and the watcher is idle (watchdog holds inotify events
    about half a second first)."""
    deadline = time.monotonic() + TIMEOUT
    time.sleep(0.8)
    while True:
        assert watcher.wait_idle(max(0.1, deadline - time.monotonic())), watcher.state()
        if until():
            return
        assert time.monotonic() < deadline, (watcher.state(), paths_in(watcher.ingestor.index))
        time.sleep(0.2)


@pytest.fixture
def watch(photos, encoder, index):
    started = []

    def start(**options):
        options.setdefault("workers", 0)
        options.setdefault("quiet", True)
        ingestor = Ingestor(encoder, index, IngestOptions(prune=True, **options))  # serve's: prune
        watcher = FolderWatcher([str(photos)], ingestor, debounce=0.3)
        started.append(watcher.start())
        assert watcher.wait_idle(TIMEOUT), watcher.state()
        return watcher

    yield start
    for watcher in started:
        watcher.stop(timeout=TIMEOUT)


def test_deleting_a_link_present_at_start_removes_its_images(photos, private, index, watch):
    (photos / "private").symlink_to(private)
    watcher = watch()
    secrets = {real(private / "diary.png"), real(private / "sub" / "letter.png")}
    assert secrets <= paths_in(index)
    (photos / "private").unlink()
    settle(watcher, lambda: not secrets & paths_in(index))
    assert paths_in(index) == {real(photos / "beach.png")}


def test_deleting_a_link_made_while_watching_removes_its_images(photos, private, index, watch):
    watcher = watch()
    secrets = {real(private / "diary.png"), real(private / "sub" / "letter.png")}
    (photos / "private").symlink_to(private)
    settle(watcher, lambda: secrets <= paths_in(index))
    (photos / "private").unlink()
    settle(watcher, lambda: not secrets & paths_in(index))
    assert paths_in(index) == {real(photos / "beach.png")}


def test_deleting_a_link_to_a_file_removes_its_image(photos, private, index, watch):
    watcher = watch()
    diary = real(private / "diary.png")
    (photos / "pub.png").symlink_to(private / "diary.png")
    settle(watcher, lambda: diary in paths_in(index))
    (photos / "pub.png").unlink()
    settle(watcher, lambda: diary not in paths_in(index))


def test_a_link_pointed_elsewhere_takes_the_old_targets_images(tmp_path, photos, private, index, watch):
    other = tmp_path / "home" / "other"
    lake = real(draw_image(other / "lake.png", "green", "square", mark=4))
    (photos / "private").symlink_to(private)
    watcher = watch()
    (photos / "private.new").symlink_to(other)
    os.replace(photos / "private.new", photos / "private")  # as `ln -sfn` does it, in one step
    settle(watcher, lambda: lake in paths_in(index) and real(private / "diary.png") not in paths_in(index))
    assert paths_in(index) == {real(photos / "beach.png"), lake}


def test_what_another_link_still_reaches_stays(photos, private, index, watch):
    (photos / "a").symlink_to(private)
    (photos / "b").symlink_to(private / "sub")
    watcher = watch()
    letter, diary = real(private / "sub" / "letter.png"), real(private / "diary.png")
    assert {letter, diary} <= paths_in(index)
    (photos / "a").unlink()
    settle(watcher, lambda: diary not in paths_in(index))
    assert letter in paths_in(index)  # still reached through b
    (photos / "b").unlink()
    settle(watcher, lambda: letter not in paths_in(index))
