"""Which points `ingest --prune` removes: those of files the walk's rules now leave out
(under a hidden or system folder, --exclude'd), and those whose file is gone, except
where most of a folder's images are gone at once.

--prune makes the index hold what the run would ingest: a file the walk passes over
on purpose is not to be searched, so its point goes, as one taken in before @eaDir was
left out, or before an --exclude was added (it was the only way to drop them short of
a new index). Not being seen by the walk is not enough otherwise: a file it could not
reach (another shard's, one in a folder it could not read) is still there and keeps its
point. And a drive or share that is not mounted looks like a folder whose photos were
all deleted: pruning it would cost every vector of it, and a night of embedding to get
them back.

A file reached through a link (its point's `via`: a folder of the library linked to
one outside it, `ln -s ~/private /photos/private`) is under the root by that link
only: once the link is deleted, or points elsewhere, the root no longer reaches it and
the point goes, though its file is there (reached_via), unless something else still
reaches it (another link, or a root at its own path: `direct`). Only a link shown
deleted or pointing elsewhere does that: a link on a share not mounted, or into one,
cannot be followed, and the gone rules above judge the file then (reached_via).
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from typing import Iterable, Sequence

from clipsearch.names import shown

from .walk import exclude_patterns, excluded_target, passed_over, root_of, walked_path

# Gone files are grouped by the nearest folder that still exists (an unmounted share's
# empty mount point, say). A group of more than this share of that folder's images, and
# more than PRUNE_FLOOR, is left alone unless --allow-missing.
PRUNE_SHARE = 0.5
PRUNE_FLOOR = 10


class FolderListings:
    """Whether a file is gone, by its folder's listing (read once a folder). The exact
    name must be listed: a rename that changes only the case of a name, on a file system
    that ignores case, leaves the old spelling's file gone though lstat would find it. A
    folder that cannot be read now (no permission, an I/O error) gone-checks nothing.

    A listed name that is no file now (a photo replaced by a folder of its name, the
    photo moved into it) is gone too: the walk indexes what is in that folder, never the
    name itself, so its old point would answer searches for good. A link to a file is a
    file; a name that cannot be looked at now (a link into a share not mounted, no
    permission) is not gone."""

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str] | None] = {}

    def gone(self, path: str) -> bool:
        folder, name = os.path.split(path)
        if folder not in self._names:
            try:
                self._names[folder] = frozenset(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                self._names[folder] = frozenset()  # the folder itself is gone
            except OSError:
                self._names[folder] = None  # cannot tell now: not gone
        names = self._names[folder]
        if names is None:
            return False
        return name not in names or not _a_file(path)


def _a_file(path: str) -> bool:
    """Whether `path`, listed in its folder, is a regular file or a link to one; True
    where it cannot be told now (keep the point: gone must be sure)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True


def nearest_folder(path: str, known: dict[str, bool]) -> str:
    """The nearest folder above `path` that exists (`known` caches the checks)."""
    folder = os.path.dirname(path)
    while True:
        if folder not in known:
            known[folder] = os.path.isdir(folder)
        parent = os.path.dirname(folder)
        if known[folder] or parent == folder:
            return folder
        folder = parent


def reached_via(via: str, path: str, roots: Sequence[str] | None = None, exclude: Sequence[str] = ()
                ) -> bool | None:
    """Whether the path `via` (as a walk spelled it, through links) still leads to the
    file at `path` (canonical): True, False, or None where it cannot be told now. With
    `roots`, a `via` under one of them must also pass the walk's rules below it
    (hidden, system, --exclude'd, a link into an excluded folder): what the walk
    leaves out does not reach anything.

    False only where the way is shown to lead elsewhere: it leads to another file, a
    link on it points to another folder that is there (retargeted), or a name on it
    above its links is missing from its folder's listing, that folder holding other
    names and lying on the file's file system (the link, or a folder it was in,
    deleted). A share not mounted looks otherwise the same: its empty mount point lists
    nothing, and what lies behind a link into it cannot be looked at. Those, and
    anything else not known for sure, are None: the gone rules judge the file, as one
    under the root."""
    root = root_of(via, roots) if roots else None
    if root is not None and via != root:
        patterns = exclude_patterns(exclude)
        current = root
        for part in os.path.relpath(via, root).split(os.sep):
            parent, current = current, os.path.join(current, part)
            if passed_over(part, os.path.join(os.path.realpath(parent), part), patterns):
                return False
            if patterns and os.path.islink(current) and excluded_target(os.path.realpath(current), patterns):
                return False
    if os.path.realpath(via) == path:
        return True
    try:
        if os.path.exists(via):
            return False  # the whole way is there, and leads to another file
        return _way_broken(via, path)
    except OSError:
        return None


def _way_broken(via: str, path: str) -> bool | None:
    """reached_via where a name on the way `via` cannot be found: False where that is
    shown to be because the link was deleted or points elsewhere, else None."""
    parts = via.strip(os.sep).split(os.sep)
    current = os.sep
    followed: str | None = None  # where the last link on the way leads now
    below = 0  # where the names below that link begin in `parts`
    for at, part in enumerate(parts):
        here = os.path.join(current, part)
        try:
            st = os.lstat(here)
        except (FileNotFoundError, NotADirectoryError):
            if followed is None:  # above every link: the link's own folder, or one above it
                return False if _listed_gone(current, part, path) else None
            if path.startswith(followed.rstrip(os.sep) + os.sep):
                return None  # the link leads where it did: what is missing lies behind it
            if path.endswith(os.sep + os.path.join(*parts[below:])):
                return False  # it led to the folder holding `path`; now to another one, that is there
            return None  # links below it too: where it led before cannot be told
        if stat.S_ISLNK(st.st_mode):
            current = os.path.realpath(here)
            if not os.path.exists(current):
                return None  # its target cannot be looked at (a share not mounted)
            followed, below = current, at + 1
        else:
            current = here
    return None


def _listed_gone(folder: str, name: str, path: str) -> bool:
    """Whether `name` is shown gone from `folder`: the folder can be listed, lacks it,
    holds other names (an unmounted share's mount point is empty) and lies on the file
    system the file at `path` is on now (a mount point with nothing mounted on it lies
    on the one below)."""
    try:
        names = os.listdir(folder)
        return name not in names and bool(names) and os.stat(folder).st_dev == os.stat(path).st_dev
    except OSError:
        return False


class GoneFiles:
    """Whether a point's file is gone (FolderListings), the nearest folder left above it,
    and whether that folder is on another file system than the one the point records
    (the mount point of a drive or share not mounted). Every check cached, for a run."""

    def __init__(self) -> None:
        self.gone = FolderListings().gone
        self._known: dict[str, bool] = {}
        self._devs: dict[str, int | None] = {}

    def anchor(self, path: str) -> str:
        return nearest_folder(path, self._known)

    def elsewhere(self, path: str, dev: int) -> bool:
        folder = self.anchor(path)
        if folder not in self._devs:
            try:
                self._devs[folder] = os.stat(folder).st_dev
            except OSError:
                self._devs[folder] = None
        return self._devs[folder] != dev


def left_out(unseen: Iterable[tuple[str, str, int | None]], roots: Sequence[str], exclude: Sequence[str]
             ) -> tuple[list[str], list[tuple[str, str, int | None]]]:
    """(the ids of `unseen` whose paths the walk's rules leave out under `roots`: a
    hidden or system folder, an --exclude glob; the others of `unseen`, for plan)."""
    ruled_out: list[str] = []
    others: list[tuple[str, str, int | None]] = []
    for record in unseen:
        if walked_path(record[1], roots, exclude) is None:
            ruled_out.append(record[0])
        else:
            others.append(record)
    return ruled_out, others


def plan(held_folders: Counter, unseen: Iterable[tuple[str, str, int | None]], allow_missing: bool
         ) -> tuple[list[str], str | None]:
    """(the ids to remove, the line that says what was left, or None). `held_folders`:
    how many of the pruned points (this shard's, under the roots) each folder holds;
    `unseen`: (id, path, the file system the point records or None) of those the walk
    did not see. A gone file whose nearest folder left is on another file system than
    its own was (the mount point of a drive not mounted) is left, however few."""
    files = GoneFiles()
    groups: dict[str, list[str]] = {}
    elsewhere: dict[str, int] = {}  # anchor -> gone files whose file system is not mounted there
    for pid, path, dev in unseen:
        if files.gone(path):
            anchor = files.anchor(path)
            if dev is not None and not allow_missing and files.elsewhere(path, dev):
                elsewhere[anchor] = elsewhere.get(anchor, 0) + 1
            else:
                groups.setdefault(anchor, []).append(pid)
    held_under: Counter = Counter()  # each folder's count added to every anchor above it: depth, not anchors x folders
    for folder, count in held_folders.items():
        while True:
            if folder in groups:
                held_under[folder] += count
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    remove: list[str] = []
    left: list[str] = [f"{count} images under {shown(anchor)}, whose file system is not the one there now"
                       for anchor, count in sorted(elsewhere.items())]
    for anchor, ids in sorted(groups.items()):
        held = held_under[anchor]
        if len(ids) > max(PRUNE_FLOOR, PRUNE_SHARE * held) and not allow_missing:
            left.append(f"{len(ids)} of the {held} images under {shown(anchor)}")
        else:
            remove += ids
    if not left:
        return remove, None
    return remove, (f"not pruned: {'; '.join(left)} are gone (a drive or share that is not mounted?); mount it "
                    "and run again, or give --allow-missing if they were deleted")
