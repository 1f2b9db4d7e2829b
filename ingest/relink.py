"""Files the index already knows by content: moved and copied files get the vector of
the point with their fingerprint (no decode, no encode, no model), and points made
before fingerprints existed get theirs, and their photo facts, by reading the file once.

A move (the old path is gone) removes the old point in the same run; a copy (the old
path is still there) keeps both. Content-derived payload (size in pixels, capture time,
camera, location, fingerprint) travels with the vector; path, folders, size and mtime
are the new file's.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from clipsearch.fingerprint import content_hash, covers_whole, fingerprint
from clipsearch.index import Index, ancestor_dirs
from clipsearch.index import canonical_point_id as point_id
from clipsearch.names import PATH_BYTES, path_fields
from clipsearch.photo_facts import photo_facts

from .walk import FileEntry

# Payload that describes the picture, not where it is: kept by a moved or copied file.
CONTENT_FIELDS = ("width", "height", "taken", "camera", "camera_words", "location", "fingerprint", "content_hash")
# What a lookup by fingerprint reads of each point: its content and where it is. Not the
# rest (`dirs`, a list of every ancestor folder, costs more to read than the vector).
LOOKUP_FIELDS = (*CONTENT_FIELDS, "path", PATH_BYTES)


def place_payload(entry: FileEntry) -> dict:
    """The payload fields that say where a file is and which version of it."""
    return {**path_fields(entry.path), "dirs": ancestor_dirs(entry.path), "size": entry.size,
            "mtime": entry.mtime, "mtime_ns": entry.mtime_ns}


class Relinker:
    """Per ingest call. Counts into `counts` (the call's summary: moved, copied,
    upgraded); says once that it upgrades older points."""

    def __init__(self, index: Index, say: Callable[[str], None], counts):
        self.index = index
        self.say = say
        self.counts = counts
        self._announced = False
        self._known: bool | None = None  # whether any point has a fingerprint to match

    def relink(self, entries: Sequence[FileEntry], ids: Sequence[str] | None = None) -> list[FileEntry]:
        """Reuse vectors for `entries` (paths with no point; `ids`, their point ids, when
        the caller has them) whose content has one; the entries left to embed are returned."""
        if not entries or not self._has_fingerprints():
            return list(entries)
        id_of = dict(zip((e.path for e in entries), ids if ids is not None else (point_id(e.path) for e in entries)))
        prints = {}
        for entry in entries:
            try:
                prints[entry.path] = fingerprint(entry.path, entry.size)
            except OSError:
                pass  # unreadable now: the decoder will say why
        if not prints:
            return list(entries)
        sources: dict[str, list] = {}
        for record in self.index.find("fingerprint", sorted(set(prints.values())), fields=LOOKUP_FIELDS):
            sources.setdefault(record.payload.get("fingerprint"), []).append(record)
        left, new_ids, copied_from, payloads, gone = [], [], [], [], set()
        moved = copied = 0
        for entry in entries:
            candidates = _same_content(entry, sources.get(prints.get(entry.path), []))
            if not candidates:
                left.append(entry)
                continue
            # The point of a file that is gone first: that is the move this copy is.
            source = candidates[0] if len(candidates) == 1 else min(
                candidates, key=lambda r: (r.id in gone or os.path.lexists(r.path), r.path))
            if source.id not in gone and source.path != entry.path and not os.path.lexists(source.path):
                gone.add(source.id)
                moved += 1
            else:
                copied += 1
            new_ids.append(id_of[entry.path])
            copied_from.append(source.id)
            content = {k: source.payload[k] for k in CONTENT_FIELDS if k in source.payload}
            payloads.append({**place_payload(entry), **content})
        if new_ids:
            missing = self.index.copy_points(copied_from, new_ids, payloads)
            if missing:  # a source deleted since the lookup (another writer): embed those files
                left += [entry for entry in entries if id_of[entry.path] in missing]
                gone -= {source for source, i in zip(copied_from, new_ids) if i in missing}
                moved, copied = len(gone), len(new_ids) - len(missing) - len(gone)
            self.counts.moved += moved
            self.counts.copied += copied
        if gone:  # after the new points are written: a kill between leaves both, never neither
            self.index.delete(ids=sorted(gone - set(new_ids)))
        return left

    def upgrade(self, entries: Sequence[FileEntry]) -> None:
        """Give points made before fingerprints their fingerprint and photo facts, from
        the file (unchanged since, by size and mtime), keeping their vector."""
        if not entries:
            return
        if not self._announced:
            self._announced = True
            self.say("adding content fingerprints and photo facts to images indexed before them "
                     "(reading each file once; nothing is embedded again)")
        stored = {r.id: r for r in self.index.retrieve([point_id(e.path) for e in entries], with_vectors=True)}
        ids, vectors, payloads = [], [], []
        for entry in entries:
            record = stored.get(point_id(entry.path))
            if record is None or record.vector is None:
                continue
            try:
                facts = {"fingerprint": fingerprint(entry.path, entry.size), **read_facts(entry.path)}
                if not covers_whole(entry.size):
                    facts["content_hash"] = content_hash(entry.path)
            except OSError:
                continue  # unreadable now: left as it is, tried again next run
            ids.append(record.id)
            vectors.append(np.asarray(record.vector, dtype=np.float32))
            payloads.append({**record.payload, **facts})
        if ids:
            self.index.upsert(ids, np.stack(vectors), payloads)
            self.counts.upgraded += len(ids)
            self._known = True

    def _has_fingerprints(self) -> bool:
        if self._known is None:
            self._known = bool(self.index.find("fingerprint", None, limit=1))
        return self._known


def _same_content(entry: FileEntry, candidates: list) -> list:
    """The candidates (points with the entry's fingerprint) whose content is the entry's:
    all of them when the fingerprint read every byte, else those whose full hash is the
    file's (a point without one, or a file that cannot be read now, matches none)."""
    if not candidates or covers_whole(entry.size):
        return candidates
    try:
        full = content_hash(entry.path)
    except OSError:
        return []
    return [record for record in candidates if record.payload.get("content_hash") == full]


def read_facts(path: str) -> dict:
    """Photo facts from the file's header, without decoding its pixels where the format
    allows (JPEG, TIFF, WebP keep EXIF before the image data)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return photo_facts(img)
    except UnidentifiedImageError:  # not an image any more: no facts, the point stays
        return {}
    except OSError:
        raise
    except Exception:  # a plugin bug: no facts, the point stays
        return {}
