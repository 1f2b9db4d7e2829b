"""A folder or file linked into the library is indexed under its own (canonical) path,
outside the root: once the link is deleted or points elsewhere, `ingest --prune` must
forget it (it would still be searched and served), unless another link or a root at
its own path still reaches it. Real files, real symlinks, the embedded index, the tiny
CLIP."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, Ingestor, walk_images

from support import draw_image, run_ingest, settings_for


@pytest.fixture
def index(tmp_path, tiny_model_dir):
    with open_index(settings_for("edge", tmp_path, tiny_model_dir), create=True) as idx:
        yield idx


@pytest.fixture
def library(tmp_path) -> tuple[Path, Path, list[Path]]:
    """(the root /photos with one photo of its own, a private folder outside it with two
    photos, those two)."""
    photos = tmp_path / "photos"
    draw_image(photos / "beach.png", "blue", "square", mark=1)
    private = tmp_path / "home" / "private"
    secrets = [draw_image(private / "diary.png", "purple", "triangle", mark=2),
               draw_image(private / "sub" / "letter.png", "orange", "circle", mark=3)]
    return photos, private, secrets


def paths_in(index) -> set[str]:
    return {r.payload["path"] for r in index.scroll()}


def real(path) -> str:
    return os.path.realpath(path)


def search_in(index, folder) -> set[str]:
    """What `--in FOLDER` finds: every point whose `dirs` holds the folder (as search
    spells it: canonical)."""
    return {hit.path for hit in index.query(np.ones(index_dim(index), dtype=np.float32), 50, under=real(folder))}


def index_dim(index) -> int:
    return next(iter(index.scroll(with_vectors=True))).vector.shape[0]


def test_a_deleted_link_to_a_folder_is_pruned(library, encoder, index):
    photos, private, secrets = library
    (photos / "private").symlink_to(private)
    run_ingest([photos], encoder, index)
    assert {real(p) for p in secrets} <= paths_in(index)
    # --in the root finds what the walk of the root reached through the link
    assert {real(p) for p in secrets} <= search_in(index, photos)

    (photos / "private").unlink()
    summary = run_ingest([photos], encoder, index, prune=True)
    assert summary.removed == 2 and summary.not_pruned is None
    assert paths_in(index) == {real(photos / "beach.png")}


def test_a_deleted_link_to_a_file_is_pruned(library, encoder, index):
    photos, private, secrets = library
    (photos / "pub.png").symlink_to(secrets[0])
    run_ingest([photos], encoder, index)
    assert real(secrets[0]) in paths_in(index)
    (photos / "pub.png").unlink()
    run_ingest([photos], encoder, index, prune=True)
    assert paths_in(index) == {real(photos / "beach.png")}


def test_a_retargeted_link_prunes_the_old_target(library, tmp_path, encoder, index):
    photos, private, secrets = library
    other = tmp_path / "home" / "other"
    kept = draw_image(other / "lake.png", "green", "square", mark=4)
    (photos / "private").symlink_to(private)
    run_ingest([photos], encoder, index)
    (photos / "private").unlink()
    (photos / "private").symlink_to(other)
    run_ingest([photos], encoder, index, prune=True)
    assert paths_in(index) == {real(photos / "beach.png"), real(kept)}


def test_a_file_still_reached_through_another_link_keeps_its_point(library, encoder, index):
    photos, private, secrets = library
    (photos / "a").symlink_to(private)
    (photos / "b").symlink_to(private)
    run_ingest([photos], encoder, index)
    (photos / "a").unlink()
    summary = run_ingest([photos], encoder, index, prune=True)
    assert summary.removed == 0 and summary.embedded == 0
    assert {real(p) for p in secrets} <= paths_in(index)
    (photos / "b").unlink()
    run_ingest([photos], encoder, index, prune=True)
    assert paths_in(index) == {real(photos / "beach.png")}


def test_a_file_reached_by_two_roots_through_links_keeps_its_point_while_one_does(library, tmp_path, encoder,
                                                                                  index):
    """The walk of several roots meets the linked folder once per link: both are
    recorded, so a prune of one root alone keeps what the other still reaches."""
    photos, private, secrets = library
    shared = tmp_path / "shared"
    shared.mkdir()
    (photos / "private").symlink_to(private)
    (shared / "private").symlink_to(private)
    run_ingest([photos, shared], encoder, index)
    (photos / "private").unlink()
    run_ingest([photos], encoder, index, prune=True)
    assert {real(p) for p in secrets} <= paths_in(index)


def test_a_file_reached_both_directly_and_through_a_link_keeps_its_point_while_either_does(library, encoder,
                                                                                          index):
    photos, private, secrets = library
    (photos / "private").symlink_to(private)
    run_ingest([private], encoder, index)  # a root of its own, ingested on its own
    run_ingest([photos], encoder, index)
    (photos / "private").unlink()
    summary = run_ingest([photos], encoder, index, prune=True)
    assert summary.removed == 0
    assert {real(p) for p in secrets} <= paths_in(index)
    assert not {real(p) for p in secrets} & search_in(index, photos)  # no longer under /photos

    # and the other way round: the link stays, the private folder is pruned as a root
    (photos / "private").symlink_to(private)
    run_ingest([photos, private], encoder, index)  # one run: the link and the root reach the same folder
    run_ingest([private], encoder, index, prune=True)
    assert {real(p) for p in secrets} <= paths_in(index)
    (photos / "private").unlink()
    run_ingest([photos], encoder, index, prune=True)
    assert {real(p) for p in secrets} <= paths_in(index)  # still reached at its own path, by ~/private


def test_a_link_into_a_share_not_mounted_keeps_its_points(library, tmp_path, encoder, index):
    """The link is there, its target's files are not (an empty mount point): the gone
    rules judge them, as for files under the root itself (most of a folder gone at
    once: left, and said)."""
    photos = library[0]
    share = tmp_path / "mnt" / "nas"
    many = [draw_image(share / f"n{i}.png", "red", "circle", mark=10 + i) for i in range(12)]
    (photos / "nas").symlink_to(share)
    run_ingest([photos], encoder, index)
    for path in many:
        path.unlink()
    summary = run_ingest([photos], encoder, index, prune=True)
    assert summary.removed == 0 and summary.not_pruned
    assert {real(p) for p in many} <= paths_in(index)


def test_an_excluded_link_is_pruned(library, encoder, index):
    photos, private, secrets = library
    (photos / "private").symlink_to(private)
    run_ingest([photos], encoder, index)
    run_ingest([photos], encoder, index, prune=True, exclude=("private",))
    assert paths_in(index) == {real(photos / "beach.png")}


def test_without_prune_the_points_stay(library, encoder, index):
    photos, private, secrets = library
    (photos / "private").symlink_to(private)
    run_ingest([photos], encoder, index)
    (photos / "private").unlink()
    run_ingest([photos], encoder, index)
    assert {real(p) for p in secrets} <= paths_in(index)


def test_a_point_made_before_links_were_recorded_is_pruned_after_the_next_ingest(library, encoder, index):
    """An index made by an older clipsearch has no record of the link: the next ingest
    that reaches the file through it writes one (rewriting the payload, nothing
    embedded), so a prune after the link is gone removes it."""
    photos, private, secrets = library
    (photos / "private").symlink_to(private)
    run_ingest([photos], encoder, index)
    old = []
    for record in index.scroll(with_vectors=True):  # as an older clipsearch wrote them
        payload = {k: v for k, v in record.payload.items() if k not in ("via", "direct")}
        payload["dirs"] = [d for d in payload["dirs"] if not d.startswith(str(photos))] \
            if payload["path"] != real(photos / "beach.png") else payload["dirs"]
        old.append((record.id, record.vector, payload))
    index.upsert([o[0] for o in old], np.stack([o[1] for o in old]), [o[2] for o in old])
    summary = run_ingest([photos], encoder, index)
    assert summary.embedded == 0
    (photos / "private").unlink()
    run_ingest([photos], encoder, index, prune=True)
    assert paths_in(index) == {real(photos / "beach.png")}


def test_search_in_a_link_side_folder_finds_what_it_reaches(library, encoder, index):
    photos, private, secrets = library
    (photos / "private").symlink_to(private)
    run_ingest([photos], encoder, index)
    assert search_in(index, photos / "private") == {real(p) for p in secrets}
    assert search_in(index, photos / "private" / "sub") == {real(secrets[1])}


def test_the_watchers_removal_of_a_deleted_link(library, encoder, index):
    """Ingestor.remove, as serve --watch calls it for a deleted path: a link's points
    go, those another way still reaches stay."""
    photos, private, secrets = library
    (photos / "a").symlink_to(private)
    (photos / "pub.png").symlink_to(secrets[1])
    run_ingest([photos], encoder, index)
    ingestor = Ingestor(encoder, index, IngestOptions(workers=0, quiet=True))
    (photos / "a").unlink()
    assert ingestor.remove([str(photos / "a")]) == 1  # the letter is still reached through pub.png
    assert paths_in(index) == {real(photos / "beach.png"), real(secrets[1])}
    (photos / "pub.png").unlink()
    assert ingestor.remove([str(photos / "pub.png")]) == 1
    assert paths_in(index) == {real(photos / "beach.png")}


def test_the_walk_says_how_it_reached_a_linked_file(library):
    photos, private, secrets = library
    (photos / "private").symlink_to(private)
    entries = {e.path: e for e in walk_images([str(photos)])}
    assert entries[real(photos / "beach.png")].direct is True
    diary = entries[real(secrets[0])]
    assert (diary.direct, diary.via) == (False, (os.path.join(real(photos), "private", "diary.png"),))
    # with the private folder a root of the same run, it is reached at its own path
    entries = {e.path: e for e in walk_images([str(photos), str(private)])}
    assert entries[real(secrets[0])].direct is True and entries[real(secrets[0])].via == ()


def test_a_reindex_keeps_how_a_file_was_reached(library, tmp_path, tiny_model_dir, other_model_dir):
    """Reindex writes every point anew: one that lost its `via` would look reached at
    its own path, and a prune after the link is deleted would keep the private photo."""
    from clipsearch.ingest import ingest
    from clipsearch.ingest.reindex import reindex

    photos, private, secrets = library
    (photos / "private").symlink_to(private)
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    quiet = IngestOptions(workers=0, quiet=True, precision="")
    ingest([str(photos)], settings=settings, options=quiet)
    reindexed = settings.with_overrides(model=str(other_model_dir))
    assert reindex(reindexed, quiet).embedded == 3
    (photos / "private").unlink()
    summary = ingest([str(photos)], settings=reindexed, options=IngestOptions(workers=0, quiet=True, prune=True))
    assert summary.removed == 2
    with open_index(reindexed) as index:
        assert paths_in(index) == {real(photos / "beach.png")}


def vias(index) -> dict[str, tuple[bool | None, set[str]]]:
    """path -> (direct, via) of every point."""
    return {r.payload["path"]: (r.payload.get("direct"), set(r.payload.get("via", ()))) for r in index.scroll()}


def test_a_share_not_mounted_keeps_what_a_link_on_it_reached(library, tmp_path, encoder, index, tmpfs):
    """/photos/nas -> the share, and on the share albums/best -> ../archive/2019: the
    way to its photos goes through a link on the share, which cannot be followed while
    the share is not mounted. That is no deleted link: the gone rules judge the files
    (their file system is not the one there now: kept, and said)."""
    photos = library[0]
    share = tmpfs.mount(tmp_path / "mnt")
    archive = [real(draw_image(share / "archive" / "2019" / f"a{i}.png", "red", "circle", mark=20 + i))
               for i in range(3)]
    (share / "albums").mkdir()
    (share / "albums" / "best").symlink_to("../archive/2019")
    (photos / "nas").symlink_to(share)
    run_ingest([photos], encoder, index)
    reached = vias(index)
    assert all(reached[p][1] == {os.path.join(real(photos), "nas", "albums", "best", os.path.basename(p))}
               for p in archive)  # the first way the walk met them: through the link on the share

    tmpfs.unmount(share)
    summary = run_ingest([photos], encoder, index, prune=True)
    assert summary.removed == 0
    assert "file system is not the one there now" in summary.not_pruned
    assert set(archive) <= paths_in(index)


def test_a_root_on_a_share_not_mounted_keeps_what_its_links_reached(library, tmp_path, encoder, index, tmpfs):
    """The root is the share's mount point and a link on it leads to a folder on this
    machine: unmounted, the root is an empty folder that lacks the link's name, as a
    folder whose link was deleted would. It cannot be told which: the photos the link
    reached keep their points."""
    private, secrets = library[1], library[2]
    root = tmpfs.mount(tmp_path / "mnt")
    own = real(draw_image(root / "own.png", "green", "square", mark=30))
    (root / "private").symlink_to(private)
    Ingestor(encoder, index, IngestOptions(workers=0, quiet=True)).run([str(root)])
    assert {own, *map(real, secrets)} == paths_in(index)

    tmpfs.unmount(root)
    pruning = Ingestor(encoder, index, IngestOptions(workers=0, quiet=True, prune=True))
    summary = pruning.run([str(root)], allow_empty=True)
    assert summary.removed == 0 and summary.not_pruned
    assert {own, *map(real, secrets)} == paths_in(index)


def test_a_link_deleted_beside_other_files_is_told_from_a_share_not_mounted(library, encoder, index):
    """The other side of the rule above: the link's folder still holds other names
    and lies on the private photos' file system, so the link is shown deleted."""
    from clipsearch.ingest.prune import reached_via

    photos, private, secrets = library
    (photos / "private").symlink_to(private)
    via = os.path.join(real(photos), "private", "diary.png")
    assert reached_via(via, real(secrets[0])) is True
    (photos / "private").unlink()
    assert reached_via(via, real(secrets[0])) is False
    (photos / "beach.png").unlink()  # the folder is empty now: as an unmounted share's mount point
    assert reached_via(via, real(secrets[0])) is None


def test_files_in_the_root_met_first_through_a_link_to_its_parent_are_reached_directly(tmp_path, encoder, index):
    """photos/2020 is the root, photos/2020/everything -> photos: the walk meets
    2020/june through the link first (it comes first by name). The files are in the
    root all the same: deleting the link keeps them, for a watcher's removal and for
    --prune alike."""
    photos = tmp_path / "photos"
    root = photos / "2020"
    kept = [draw_image(root / "img0.png", "blue", "square", mark=1),
            draw_image(root / "june" / "img1.png", "green", "circle", mark=2),
            draw_image(root / "june" / "img2.png", "red", "triangle", mark=3)]
    elsewhere = draw_image(photos / "2019" / "old.png", "purple", "square", mark=4)
    (root / "everything").symlink_to(photos)

    entries = {e.path: e for e in walk_images([str(root)])}
    assert all(entries[real(p)].direct is True and entries[real(p)].via == () for p in kept)
    assert entries[real(elsewhere)].direct is False  # reached only through the link

    run_ingest([root], encoder, index)
    assert all(vias(index)[real(p)] == (True, set()) for p in kept)
    (root / "everything").unlink()
    ingestor = Ingestor(encoder, index, IngestOptions(workers=0, quiet=True))
    assert ingestor.remove([str(root / "everything")]) == 1
    assert paths_in(index) == {real(p) for p in kept}
    assert run_ingest([root], encoder, index, prune=True).removed == 0
    assert paths_in(index) == {real(p) for p in kept}


def test_a_point_recorded_as_reached_only_through_a_link_is_set_right_by_the_next_ingest(tmp_path, encoder,
                                                                                         index):
    """An index written while the walk recorded such files as reached only through
    the link (direct False): the next ingest records them as reached directly."""
    photos = tmp_path / "photos"
    root = photos / "2020"
    june = draw_image(root / "june" / "img1.png", "green", "circle", mark=2)
    (root / "everything").symlink_to(photos)
    run_ingest([root], encoder, index)
    record = next(iter(index.scroll(with_vectors=True)))
    wrong = {**record.payload, "direct": False, "via": [os.path.join(real(root), "everything", "2020", "june",
                                                                     "img1.png")]}
    index.upsert([record.id], record.vector[None, :], [wrong])
    assert run_ingest([root], encoder, index).embedded == 0
    assert vias(index)[real(june)][0] is True
    (root / "everything").unlink()
    assert run_ingest([root], encoder, index, prune=True).removed == 0
    assert paths_in(index) == {real(june)}


def test_a_folder_linked_from_three_places_is_walked_once(tmp_path, monkeypatch):
    """Its files are stat'ed once a run, not once a link; every link is still heard
    of (on_again), so deleting one leaves what the others reach."""
    photos = tmp_path / "photos"
    shared = tmp_path / "shared"
    files = [draw_image(shared / "sub" / f"s{i}.png", "red", "circle", size=(8, 8), mark=i) for i in range(4)]
    draw_image(photos / "own.png", "blue", "square", size=(8, 8))
    for name in ("anna", "ben", "carl"):
        (photos / name).mkdir()
        (photos / name / "shared").symlink_to(shared)

    stats: dict[str, int] = {}
    real_scandir = os.scandir

    class Counted:
        def __init__(self, entry):
            self._entry = entry

        def __getattr__(self, name):
            return getattr(self._entry, name)

        def stat(self, **kwargs):
            stats[self._entry.path] = stats.get(self._entry.path, 0) + 1
            return self._entry.stat(**kwargs)

    class Listing:
        def __init__(self, path):
            self._it = real_scandir(path)

        def __enter__(self):
            return [Counted(e) for e in self._it]

        def __exit__(self, *exc):
            self._it.close()

    monkeypatch.setattr(os, "scandir", Listing)
    again: list[tuple[str, str]] = []
    entries = {e.path: e for e in walk_images([str(photos)], on_again=lambda p, v: again.append((p, v)))}
    monkeypatch.undo()

    assert max(stats.values()) == 1 and len(stats) == 5
    for path in map(real, files):
        first = entries[path].via
        others = {v for p, v in again if p == path}
        ways = {os.path.join(real(photos), name, "shared", "sub", os.path.basename(path))
                for name in ("anna", "ben", "carl")}
        assert entries[path].direct is False and len(first) == 1 and {*first, *others} == ways


def test_the_watchers_removal_of_a_deleted_link_to_another_file_system(library, tmp_path, encoder, index, tmpfs):
    """The watcher saw the link deleted: that is no share gone (which sends no event
    for its names), though the link's folder is not on the file system of the photos
    it reached (prune.reached_via cannot tell that from a share not mounted)."""
    photos = library[0]
    share = tmpfs.mount(tmp_path / "usb")
    photo = real(draw_image(share / "private" / "p.png", "orange", "square", mark=40))
    (photos / "usb").symlink_to(share / "private")
    run_ingest([photos], encoder, index)
    assert photo in paths_in(index)
    (photos / "usb").unlink()
    ingestor = Ingestor(encoder, index, IngestOptions(workers=0, quiet=True))
    assert ingestor.remove([str(photos / "usb")]) == 1
    assert paths_in(index) == {real(photos / "beach.png")}
