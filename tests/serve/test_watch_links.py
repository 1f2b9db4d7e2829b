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


def test_deleting_a_link_to_the_roots_parent_keeps_the_roots_images(tmp_path, encoder, index):
    """photos/2020 is watched; photos/2020/everything -> photos is met first by the
    walk, and leads to 2020/june again: its images are the root's own all the same."""
    root = tmp_path / "photos" / "2020"
    own = {real(draw_image(root / "img0.png", "blue", "square", mark=1)),
           real(draw_image(root / "june" / "img1.png", "green", "circle", mark=2)),
           real(draw_image(root / "june" / "img2.png", "red", "triangle", mark=3))}
    old = real(draw_image(tmp_path / "photos" / "2019" / "old.png", "purple", "square", mark=4))
    (root / "everything").symlink_to(tmp_path / "photos")
    ingestor = Ingestor(encoder, index, IngestOptions(prune=True, workers=0, quiet=True))
    watcher = FolderWatcher([str(root)], ingestor, debounce=0.3).start()
    try:
        assert watcher.wait_idle(TIMEOUT), watcher.state()
        assert paths_in(index) == own | {old}
        (root / "everything").unlink()
        settle(watcher, lambda: old not in paths_in(index))
        assert paths_in(index) == own
    finally:
        watcher.stop(timeout=TIMEOUT)


def test_a_walk_with_a_share_not_mounted_keeps_what_a_link_on_it_reached(tmp_path, photos, index, watch, tmpfs):
    """serve's walks of the folders (timed, after lost events) prune as ingest does:
    a link on a share not mounted cannot be followed, which is no deleted link."""
    share = tmpfs.mount(tmp_path / "mnt")
    archive = {real(draw_image(share / "archive" / "2019" / f"a{i}.png", "red", "circle", mark=20 + i))
               for i in range(3)}
    (share / "albums").mkdir()
    (share / "albums" / "best").symlink_to("../archive/2019")
    (photos / "nas").symlink_to(share)
    watcher = watch()
    assert archive <= paths_in(index)
    tmpfs.unmount(share)
    watcher.request_rescan("a test")
    settle(watcher, lambda: watcher.state()["rescans"] >= 1)
    assert archive <= paths_in(index)


def test_only_a_deletion_that_may_have_reached_images_is_queued(tmp_path, photos, private, encoder, index):
    """A deleted name that is no image nor folder is queued only where the index has
    files reached through it (a link to a folder, which inotify cannot tell from a
    file once deleted): a deleted RAW or sidecar costs the watcher nothing."""
    (photos / "private").symlink_to(private)
    for name in ("raw.cr2", "raw.xmp"):
        (photos / name).write_bytes(b"not an image")
    ingestor = Ingestor(encoder, index, IngestOptions(prune=True, workers=0, quiet=True))
    ingestor.run([str(photos)])
    watcher = FolderWatcher([str(photos)], ingestor, debounce=0.3)  # not started: note() alone
    for name in ("raw.cr2", "raw.xmp", "private"):
        (photos / name).unlink()
        watcher.note(str(photos / name), False)
    watcher.note(str(photos / "gone.png"), False)  # an image's name: queued as it is
    watcher.note(str(photos / "album"), True)  # a folder deleted
    assert watcher._queue == {os.path.join(real(photos), name) for name in ("private", "gone.png", "album")}
