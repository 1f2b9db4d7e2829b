"""Files the index already knows by content: moved and copied files get the vector of
the point with their fingerprint (no decode, no encode, no model), and points made
before fingerprints existed get theirs, and their photo facts, by reading the file once.

A move (the old path is gone) removes the old point in the same run; a copy (the old
path is still there) keeps both. Content-derived payload (size in pixels, capture time,
camera, location, fingerprint) travels with the vector; path, folders, size and mtime
are the new file's.

- Gone means missing from its folder's listing (prune.py's FolderListings). A drive or
  share that is not mounted looks the same, and its points must not go because a copy
  of one of its photos turned up elsewhere: where the nearest folder still there above
  the old path is empty (a mount point, an automount's parent), the old point stays, as
  for a copy, unless --allow-missing.
- A file renamed onto a name that was indexed (renumbering, a swap) is a changed file:
  it is matched by content like a new one, and its old content's point, if that content
  now lives elsewhere, is found the same way.
- Byte-identical files that are new in one run (a card copied twice) are embedded once:
  the others wait (`held`) until the first one's point is written, then get its vector.
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

from .prune import FolderListings, nearest_folder
from .walk import FileEntry

# Payload that describes the picture, not where it is: kept by a moved or copied file.
CONTENT_FIELDS = ("width", "height", "taken", "camera", "camera_words", "location", "fingerprint", "content_hash")
# What a lookup by fingerprint reads of each point: its content and where it is. Not the
# rest (`dirs`, a list of every ancestor folder, costs more to read than the vector).
LOOKUP_FIELDS = (*CONTENT_FIELDS, "path", PATH_BYTES, "size", "mtime_ns")

# Where a matching point's own file is now (Relinker._source_state).
THERE, GONE, REPLACED, UNSURE = "there", "gone", "replaced", "unsure"


def place_payload(entry: FileEntry) -> dict:
    """The payload fields that say where a file is and which version of it."""
    return {**path_fields(entry.path), "dirs": ancestor_dirs(entry.path), "size": entry.size,
            "mtime": entry.mtime, "mtime_ns": entry.mtime_ns}


class Relinker:
    """Per ingest call. Counts into `counts` (the call's summary: moved, copied,
    upgraded); says once that it upgrades older points."""

    def __init__(self, index: Index, say: Callable[[str], None], counts, allow_missing: bool = False):
        self.index = index
        self.say = say
        self.counts = counts
        self.allow_missing = allow_missing
        self._announced = False
        self._known: bool | None = None  # whether any point has a fingerprint to match
        # hash() of the fingerprints of files this run embeds (ints: a first ingest of
        # 500k files keeps this small; a collision only holds a file back for a lookup).
        self._queued: set[int] = set()
        self._held: list[FileEntry] = []

    def relink(self, entries: Sequence[FileEntry], ids: Sequence[str] | None = None, hold: bool = True
               ) -> list[FileEntry]:
        """Reuse vectors for `entries` (new or changed files; `ids`, their point ids, when
        the caller has them) whose content has a point; the entries left to embed are
        returned. With `hold`, a file whose content another file of this run is being
        embedded for waits in `take_held()` instead."""
        if not entries:
            return []
        indexed = self._has_fingerprints()
        if not indexed and not hold:
            return list(entries)
        id_of = dict(zip((e.path for e in entries), ids if ids is not None else (point_id(e.path) for e in entries)))
        prints = {}
        for entry in entries:
            try:
                prints[entry.path] = fingerprint(entry.path, entry.size)
            except OSError:
                pass  # unreadable now: the decoder will say why
        sources: dict[str, list] = {}
        if indexed and prints:
            for record in self.index.find("fingerprint", sorted(set(prints.values())), fields=LOOKUP_FIELDS):
                sources.setdefault(record.payload.get("fingerprint"), []).append(record)
        listings, known, empty = FolderListings(), {}, {}
        states: dict[str, str] = {}

        def state(record) -> str:
            if record.id not in states:
                states[record.id] = self._source_state(record, listings, known, empty)
            return states[record.id]

        preference = {GONE: 0, REPLACED: 1, UNSURE: 2, THERE: 2}
        left, new_ids, copied_from, payloads, gone, used = [], [], [], [], set(), set()
        moved = copied = refreshed = 0
        for entry in entries:
            print_ = prints.get(entry.path)
            candidates = _same_content(entry, sources.get(print_, []))
            if not candidates:
                if hold and print_ is not None:
                    if hash(print_) in self._queued:
                        self._held.append(entry)  # its twin is being embedded: its vector, later
                        continue
                    self._queued.add(hash(print_))
                left.append(entry)
                continue
            own = id_of[entry.path]
            # The file's own point (touched, same bytes), else the point of a file whose
            # content is no longer at its path: that is the move this is.
            source = next((r for r in candidates if r.id == own), None) or min(
                candidates, key=lambda r: (r.id in used, preference[state(r)], r.path))
            if source.id == own:
                refreshed += 1
            elif source.id not in used and state(source) in (GONE, REPLACED):
                used.add(source.id)
                if state(source) == GONE:
                    gone.add(source.id)
                moved += 1
            else:
                copied += 1
            new_ids.append(own)
            copied_from.append(source.id)
            content = {k: source.payload[k] for k in CONTENT_FIELDS if k in source.payload}
            payloads.append({**place_payload(entry), **content})
        if new_ids:
            missing = self.index.copy_points(copied_from, new_ids, payloads)
            if missing:  # a source deleted since the lookup (another writer): embed those files
                left += [entry for entry in entries if id_of[entry.path] in missing]
                lost = {source for source, i in zip(copied_from, new_ids) if i in missing}
                gone -= lost
                moved -= len(used & lost)
                copied = len(new_ids) - len(missing) - moved - refreshed
            self.counts.moved += moved
            self.counts.copied += copied
            self.counts.unchanged += refreshed
        if gone:  # after the new points are written: a kill between leaves both, never neither
            self.index.delete(ids=sorted(gone - set(new_ids)))
        return left

    def take_held(self) -> list[FileEntry]:
        """The files held back for a twin being embedded, now that its point is written
        (relink them with hold=False: a twin that failed to embed leaves them to embed)."""
        held, self._held = self._held, []
        self._known = None  # this run's points carry fingerprints now
        return held

    def _source_state(self, record, listings: FolderListings, known: dict, empty: dict) -> str:
        """Whether the file a matching point was made from is still at its path (THERE:
        this is a copy), gone from its folder (GONE: a move, its point removed), or
        replaced by other content (REPLACED: a move, the point left for that file's own
        ingest). UNSURE, kept as for a copy: gone, but the nearest folder left above it
        is empty, which is what a drive or share that is not mounted looks like."""
        path = record.path
        if listings.gone(path):
            if self.allow_missing:
                return GONE
            folder = nearest_folder(path, known)
            if folder not in empty:
                try:
                    with os.scandir(folder) as found:
                        empty[folder] = not any(not e.name.startswith(".") for e in found)
                except OSError:
                    empty[folder] = True  # cannot look: do not call it a move
            return UNSURE if empty[folder] else GONE
        try:
            st = os.stat(path)
        except OSError:
            return THERE  # listed, but cannot be looked at now: keep its point
        size, mtime_ns = record.payload.get("size"), record.payload.get("mtime_ns")
        if size is not None and mtime_ns is not None and (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return REPLACED
        return THERE

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
