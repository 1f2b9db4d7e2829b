"""ingest/prune.py on its own: gone files are grouped by the nearest folder still there,
and a group of more than half of that folder's images (and more than PRUNE_FLOOR) is left."""

from __future__ import annotations

import os
from collections import Counter

from clipsearch.ingest.prune import PRUNE_FLOOR, plan


def test_groups_thresholds_and_counts_under_each_folder(tmp_path):
    library = tmp_path / "library"
    (library / "kept").mkdir(parents=True)
    (library / "share").mkdir()  # an empty mount point
    for i in range(40):
        (library / "kept" / f"{i}.jpg").write_bytes(b"x")
    held = Counter({str(library / "kept"): 40, str(library / "share" / "2023"): 30,
                    str(library / "gone-album"): 12})
    share = [(f"s{i}", str(library / "share" / "2023" / f"{i}.jpg"), None) for i in range(30)]
    album = [(f"a{i}", str(library / "gone-album" / f"{i}.jpg"), None) for i in range(12)]  # its folder deleted too
    still_there = [("k0", str(library / "kept" / "0.jpg"), None)]

    remove, left = plan(held, share + album + still_there, allow_missing=False)
    assert sorted(remove) == sorted(i for i, _, _ in album)  # 12 of the library's 82: a folder deleted whole
    assert left == (f"not pruned: 30 of the 30 images under {library / 'share'} are gone (a drive or share that "
                    "is not mounted?); mount it and run again, or give --allow-missing if they were deleted")
    remove, left = plan(held, share, allow_missing=True)
    assert len(remove) == 30 and left is None
    few = share[:PRUNE_FLOOR]  # at most the floor: pruned whatever the share
    assert plan(held, few, allow_missing=False) == ([i for i, _, _ in few], None)
    # However few: gone files whose points record another file system than the one their
    # nearest folder is on now (the share's own, not mounted) are left.
    share_dev = os.stat(library).st_dev + 1
    unmounted = [(i, path, share_dev) for i, path, _ in few]
    remove, left = plan(held, unmounted + album, allow_missing=False)
    assert sorted(remove) == sorted(i for i, _, _ in album)
    assert left.startswith(f"not pruned: {PRUNE_FLOOR} images under {library / 'share'}, whose file system is not "
                           "the one there now are gone")
    same_disk = [(i, path, os.stat(library).st_dev) for i, path, _ in few]
    assert plan(held, same_disk, allow_missing=False) == ([i for i, _, _ in few], None)
    assert plan(held, unmounted, allow_missing=True) == ([i for i, _, _ in few], None)


def test_one_file_gone_in_each_of_many_folders_is_pruned(tmp_path):
    """One file deleted in each of 3000 folders (say every *_thumb.jpg) among 20000:
    each folder is its own group, small against its folder's images."""
    root = tmp_path / "big"
    folders = [root / f"{i // 100}" / f"{i}" for i in range(3000)]
    for folder in folders:
        folder.mkdir(parents=True)
    held = Counter({str(root / f"{i // 100}" / f"{i}"): 5 for i in range(20000)})
    unseen = [(f"id{i}", os.path.join(folder, "x_thumb.jpg"), None) for i, folder in enumerate(map(str, folders))]
    remove, left = plan(held, unseen, allow_missing=False)
    assert len(remove) == 3000 and left is None
