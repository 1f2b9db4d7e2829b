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
