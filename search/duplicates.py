"""Groups of duplicate images in an index: byte-identical files (one content
fingerprint, bytes compared) and, on request, near-duplicates (resized, re-encoded,
lightly edited copies) found through the index's own nearest-neighbour queries.

Nothing here deletes or changes anything; a group lists files for a person to look at.

    from clipsearch.search import find_duplicates
    with open_index(settings) as index:
        for group in find_duplicates(index, similar=0.95).groups:
            print(group.kind, [m.path for m in group.members])
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterable

from clipsearch.errors import ClipsearchError
from clipsearch.fingerprint import same_bytes

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from clipsearch.index import Hit, Index

# How many nearest neighbours each image asks for when looking for near-duplicates.
# Links join transitively, so a group larger than this is still found whole as long
# as each member sees some of the others: up to 2 * NEIGHBOURS + 1 copies of one image
# (with nothing else as close) always end up as one group, since every part of a split
# would need NEIGHBOURS + 1 members to hold all its members' links.
NEIGHBOURS = 16

# HNSW beam for the near-duplicate queries. They are image vectors asking for their own
# nearest images (near-duplicates sit at 0.9 or more), the easy case for a graph search:
# the wide DEFAULT_HNSW_EF is for text queries far from the images. At 5,000 points a
# beam of 17 already found every planted pair (bench/duplicates_speed.py) in half the
# time of 64; 64 keeps a margin for real collections, denser than the bench's clusters.
NEIGHBOUR_EF = 64


@dataclass(frozen=True)
class Member:
    path: str
    id: str
    size: int | None
    score: float  # cosine to the group's first member (1.0 for byte-identical copies; NaN: point gone)
    rank: int  # place in its group, from 1 (the gallery shows it)

    def to_dict(self) -> dict:
        score = None if math.isnan(self.score) else round(self.score, 6)  # NaN is not JSON
        return {"path": self.path, "id": self.id, "size": self.size, "score": score}


@dataclass
class DuplicateGroup:
    kind: str  # "identical" or "similar"
    members: list[Member] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "files": [m.to_dict() for m in self.members]}


@dataclass
class Duplicates:
    """What one run found: the groups (identical ones first), and what it could not
    look at, for the notes a person needs to trust an empty answer."""

    groups: list[DuplicateGroup] = field(default_factory=list)
    no_fingerprint: int = 0  # points indexed before fingerprints: invisible to the identical pass
    # Files the index lists that are gone or unreadable now: left out of every group (a
    # group is for deciding what to delete, and its first file is the one to keep).
    unreadable: list[str] = field(default_factory=list)
    # (path, the path kept): one file reached twice (a hard link, a share mounted at two
    # places). Not a copy: deleting "the duplicate" could delete the photo itself.
    same_file: list[tuple[str, str]] = field(default_factory=list)
    # Why the answer is empty where the run can tell (a server's: nothing indexed under --in).
    note: str | None = None


def check_threshold(threshold: float, name: str = "--similar") -> None:
    """A cosine similarity in (0, 1]; anything else (NaN too) is a one-line error naming
    `name` (the flag, or the API's field)."""
    if not 0 < threshold <= 1:
        raise ClipsearchError(f"{name} must be a cosine similarity in (0, 1], e.g. 0.95; got {threshold:g}")


def find_duplicates(index: Index, similar: float | None = None, under: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Duplicates:
    """Byte-identical groups, then (with `similar`, a cosine threshold) near-duplicate
    groups; a set of files already listed as identical is not listed again as similar.
    `under` keeps only files below that folder (both sides of every pair).
    `progress(done, total)` is called once per image of the similar pass."""
    if similar is not None:
        check_threshold(similar)  # before any work: no half-printed answer ends in an error
    if under is not None:
        from clipsearch.index import canonical_path

        under = canonical_path(under)  # as the `dirs` payload spells folders
    found = identical_groups(index, under)
    aliases: dict[str, str] = {}  # path -> the path kept for its file
    gone: list[str] = []
    found.groups = _one_path_per_file(found.groups, aliases, gone)
    if similar is not None:
        seen = {frozenset(m.id for m in g.members) for g in found.groups}
        similar_found = similar_groups(index, similar, under, progress, present=_present_noting(gone))
        found.groups += [g for g in _one_path_per_file(similar_found, aliases, gone)
                         if frozenset(m.id for m in g.members) not in seen]
    found.same_file = sorted(aliases.items())
    found.unreadable = sorted({*found.unreadable, *gone})
    return found


def _one_path_per_file(groups: list[DuplicateGroup], aliases: dict[str, str],
                       gone: list[str]) -> list[DuplicateGroup]:
    """The groups with each file once, and those left with two files or more: a member
    that is an earlier member's very file (same device and inode: a hard link, or one
    share reached by two bind mounts; two network mounts of one share usually differ in
    device and are not caught) is left out and noted in `aliases`; one gone since the
    groups were made is left out and noted in `gone`."""
    kept_groups = []
    for group in groups:
        first: dict[tuple[int, int], str] = {}
        kept = []
        for member in group.members:
            try:
                st = os.stat(member.path)
            except OSError:  # gone meanwhile: never listed, above all not as the copy to keep
                gone.append(member.path)
                continue
            other = first.setdefault((st.st_dev, st.st_ino), member.path)
            if other == member.path:
                kept.append(member)
            else:
                aliases[member.path] = other
        if len(kept) == len(group.members):
            kept_groups.append(group)
        elif len(kept) > 1:
            kept_groups.append(DuplicateGroup(group.kind, [replace(m, rank=rank) for rank, m in enumerate(kept, 1)]))
    return kept_groups


# -- byte-identical ----------------------------------------------------------------------


def identical_groups(index: Index, under: str | None = None) -> Duplicates:
    """Files whose content fingerprints match and whose bytes are the same. A point
    ingested before fingerprints existed has none until the next ingest adds it: it is
    counted in `no_fingerprint`."""
    # Each point is kept as path, id and size only: a payload (folders, photo facts)
    # weighs ten times more, and every point is held until the scan ends.
    by_print: dict[str, list[Member]] = defaultdict(list)
    found = Duplicates()
    for record in index.scroll(under=under):
        mark = record.payload.get("fingerprint")
        if isinstance(mark, str):
            by_print[mark].append(Member(record.path, record.id, _size(record.payload), 1.0, 0))
        else:
            found.no_fingerprint += 1
    for files in by_print.values():
        if len(files) < 2:
            continue
        sets, unreadable = _split_by_bytes(files)
        found.unreadable += unreadable
        found.groups += [DuplicateGroup("identical", [replace(f, rank=rank) for rank, f in enumerate(same, start=1)])
                         for same in sets if len(same) > 1]
    found.groups.sort(key=lambda g: g.members[0].path)
    found.unreadable.sort()
    return found


def _split_by_bytes(files: list[Member]) -> tuple[list[list[Member]], list[str]]:
    """Files of one fingerprint split into sets of equal bytes: the fingerprint hashes
    only the size, the first MiB and the last KiB, so files that differ in between
    share it. A file that cannot be read now (gone, or no permission) is left out and
    named, never guessed at: each set's first file was readable when it was chosen."""
    sets: list[list[Member]] = []
    unreadable: list[str] = []
    for file in sorted(files, key=lambda f: f.path):
        if not _readable(file.path):
            unreadable.append(file.path)
            continue
        try:
            home = next((s for s in sets if same_bytes(s[0].path, file.path)), None)
        except OSError:  # it or a set's first file went away during the comparison
            unreadable.append(file.path)
            continue
        if home is None:
            sets.append([file])
        else:
            home.append(file)
    return sets, unreadable


def _present_noting(gone: list[str]) -> Callable[[str], bool]:
    """Whether a file can be read now, noting in `gone` each one that cannot: a person
    deleting all but each group's first file must never be told to keep one that is
    not there, nor find a gone copy listed as if it could be looked at."""

    def present(path: str) -> bool:
        if _readable(path):
            return True
        gone.append(path)
        return False

    return present


def _readable(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False


# -- near-duplicates -----------------------------------------------------------------------


class _Links:
    """Union-find over point ids: A~B and B~C put A, B and C in one group."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def root(self, node: str) -> str:
        parent = self.parent
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps later look-ups short
            node = parent[node]
        return node

    def join(self, a: str, b: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[rb] = ra

    def groups(self) -> Iterable[list[str]]:
        members: dict[str, list[str]] = defaultdict(list)
        for node in list(self.parent):
            members[self.root(node)].append(node)
        return (ids for ids in members.values() if len(ids) > 1)


def similar_groups(index: Index, threshold: float, under: str | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   present: Callable[[str], bool] | None = None) -> list[DuplicateGroup]:
    """Images whose vectors are at least `threshold` cosine alike, joined transitively:
    one nearest-neighbour query per image, answered by the index (HNSW where it has
    built one), never an all-pairs scan here. `under` must be canonical. With
    `present(path)`, a point whose file it denies joins no group, nor joins two others
    through itself (find_duplicates leaves out files gone since ingest); without it, the
    index alone is grouped."""
    check_threshold(threshold)
    links = _Links()
    where: dict[str, tuple[str, int | None]] = {}  # id -> (path, size), for linked points only
    known: dict[str, bool] = {}  # id -> present(path), asked once per linked point

    def kept(point_id: str, path: str) -> bool:
        if present is None:
            return True
        if point_id not in known:
            known[point_id] = present(path)
        return known[point_id]

    total = index.count(under=under)
    for done, record in enumerate(index.scroll(under=under, with_vectors=True), start=1):
        if record.vector is not None:
            for hit in _neighbours(index, record.id, record.vector, threshold, under):
                if not (kept(record.id, record.path) and kept(hit.id, hit.path)):
                    continue
                links.join(record.id, hit.id)
                where.setdefault(record.id, (record.path, _size(record.payload)))
                where.setdefault(hit.id, (hit.path, _size(hit.payload)))
        if progress is not None:
            progress(done, total)
    groups = [_scored_group(index, ids, where) for ids in links.groups()]
    return sorted(groups, key=lambda g: g.members[0].path)


def _neighbours(index: Index, own_id: str, vector: np.ndarray, threshold: float, under: str | None) -> list[Hit]:
    """The other images within `threshold` of point `own_id`, among its nearest. One
    more is asked for than kept: the image itself usually comes back first (not
    filtered out by id inside the index, which would cost a filter on every query)."""
    hits = index.query(vector, NEIGHBOURS + 1, under=under, hnsw_ef=NEIGHBOUR_EF)
    return [hit for hit in hits if hit.id != own_id and hit.score >= threshold][:NEIGHBOURS]


def _scored_group(index: Index, ids: list[str], where: dict[str, tuple[str, int | None]]) -> DuplicateGroup:
    """A group in path order, each member scored by its cosine to the first one, from
    the stored vectors: members joined through a chain were never compared directly."""
    import numpy as np

    ordered = sorted(ids, key=lambda i: where[i][0])
    vectors = {r.id: r.vector for r in index.retrieve(ordered, with_vectors=True)}
    first = vectors.get(ordered[0])
    scores = []
    for i in ordered:
        other = vectors.get(i)
        if first is None or other is None:  # removed since the scan (a server shared with an ingest)
            scores.append(math.nan)
            continue
        a, b = np.asarray(first, dtype=np.float64), np.asarray(other, dtype=np.float64)
        scores.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return DuplicateGroup("similar", [Member(where[i][0], i, where[i][1], s, rank)
                                      for rank, (i, s) in enumerate(zip(ordered, scores), start=1)])


def _size(payload: dict) -> int | None:
    size = payload.get("size")
    return size if isinstance(size, int) else None
