"""A photo whose name is now a folder (the photo moved into a folder of its own name,
or another picture put there) or something else that is no file: its old point goes
(`--prune`, a move), while a name that cannot be looked at now keeps its point."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.ingest.prune import plan

from support import draw_collection, draw_image, settings_for


@pytest.fixture(params=["edge", "memory"])
def index(request, tmp_path, tiny_model_dir):
    with open_index(settings_for(request.param, tmp_path, tiny_model_dir), create=True) as idx:
        yield idx


def run(root, encoder, index, **options):
    return ingest([str(root)], encoder, index, IngestOptions(workers=0, quiet=True, **options))


def paths(index) -> set[str]:
    return {r.payload["path"] for r in index.scroll()}


def test_a_photo_replaced_by_a_folder_of_its_name_loses_its_point_with_prune(tmp_path, encoder, index):
    lib = tmp_path / "perm"
    photos = draw_collection(lib / "d000", 12)
    run(lib, encoder, index)
    old = photos[3]
    old.unlink()
    old.mkdir()
    inner = draw_image(old / "inner.jpg", "black", "triangle", fmt="JPEG")  # another picture
    summary = run(lib, encoder, index, prune=True)
    assert (summary.embedded, summary.removed, summary.not_pruned) == (1, 1, None)
    assert str(old) not in paths(index) and str(inner) in paths(index)
    assert index.count() == 12


def test_a_photo_moved_into_a_folder_of_its_own_name_is_a_move(tmp_path, encoder, index):
    lib = tmp_path / "perm"
    photos = draw_collection(lib, 12)
    run(lib, encoder, index)
    old = photos[5]
    data = old.read_bytes()
    old.unlink()
    old.mkdir()
    (old / "inner.png").write_bytes(data)
    summary = run(lib, encoder, index)  # no --prune: the move itself takes the old point
    assert (summary.moved, summary.copied, summary.embedded) == (1, 0, 0)
    assert str(old) not in paths(index) and str(old / "inner.png") in paths(index)


def test_a_name_that_is_no_file_now_is_gone_unless_it_cannot_be_looked_at(tmp_path, encoder, index):
    """A named pipe is gone like a folder. A link to a file is a file; a link into a
    share that is not mounted (broken now) and a folder that cannot be read keep their
    points, as before."""
    lib = tmp_path / "lib"
    photos = draw_collection(lib, 12)
    run(lib, encoder, index)
    elsewhere = draw_image(tmp_path / "elsewhere" / "kept.png", "white", "square")
    photos[0].unlink()
    os.mkfifo(photos[0])
    photos[1].unlink()
    photos[1].symlink_to(elsewhere)
    photos[2].unlink()
    photos[2].symlink_to(tmp_path / "share-not-mounted" / "photo.png")
    summary = run(lib, encoder, index, prune=True)
    assert summary.removed == 1
    assert str(photos[0]) not in paths(index)
    assert {str(photos[1]), str(photos[2])} <= paths(index)


def test_the_plan_takes_a_folder_for_a_gone_file(tmp_path):
    lib = tmp_path / "lib"
    (lib / "a.jpg").mkdir(parents=True)
    (lib / "b.jpg").write_bytes(b"x")
    unseen = [("a", str(lib / "a.jpg"), None), ("b", str(lib / "b.jpg"), None)]
    assert plan(Counter({str(lib): 2}), unseen, allow_missing=False) == (["a"], None)
