"""Files the index already knows by content: moved and copied files get the vector of
the point with their fingerprint (no decode, no encode, no model), and points made
before fingerprints existed get theirs, and their photo facts, by reading the file once.
Points whose photo facts an older reader made (clipsearch/photo_facts.py FACTS_VERSION)
get them read again from the file's EXIF, as does a moved or copied file whose point's
facts are that old.

A move (the old path is gone, or holds other content now) removes the old point in the
same run (or leaves it for that other content's own ingest); a copy (the old path still
holds it) keeps both. Content-derived payload (size in pixels, capture time,
camera, location, fingerprint) travels with the vector; path, folders, size and mtime
are the new file's.

- Gone means missing from its folder's listing (prune.py's FolderListings). A drive or
  share that is not mounted looks the same, and its points must not go because a copy
  of one of its photos turned up elsewhere: where the nearest folder still there above
  the old path is on another file system than the one the point records (`dev`: the
  mount point is on the file system below), or, for a point from before `dev`, is
  empty, the old point stays, as for a copy, unless --allow-missing.
- A file renamed onto a name that was indexed (renumbering, a swap) is a changed file:
  it is matched by content like a new one, and its old content's point, if that content
  now lives elsewhere, is found the same way.
- Byte-identical files that are new in one run (a card copied twice) are embedded once:
  the others wait (`held`) until the first one's point is written, then get its vector.
"""

from __future__ import annotations

import base64
import os
from typing import Callable, Sequence

import numpy as np

from clipsearch.fingerprint import content_hash, covers_whole, fingerprint
from clipsearch.index import Index, ancestor_dirs
from clipsearch.index import canonical_point_id as point_id
from clipsearch.names import PATH_BYTES, is_text, name_bytes, path_fields, path_of, stored
from clipsearch.photo_facts import FACT_FIELDS, FACTS_VERSION_FIELD, facts_outdated, photo_facts, versioned

from .prune import GoneFiles
from .walk import FileEntry

# Payload that describes the picture, not where it is: kept by a moved or copied file.
CONTENT_FIELDS = ("width", "height", *FACT_FIELDS, FACTS_VERSION_FIELD, "fingerprint", "content_hash")
# What a lookup by fingerprint reads of each point: its content and where it is. Not the
# rest (`dirs`, a list of every ancestor folder, costs more to read than the vector).
LOOKUP_FIELDS = (*CONTENT_FIELDS, "path", PATH_BYTES, "size", "mtime_ns", "dev")

# Where a matching point's own file is now (Relinker._source_state).
THERE, GONE, REPLACED, UNSURE = "there", "gone", "replaced", "unsure"


def place_payload(entry: FileEntry) -> dict:
    """The payload fields that say where a file is and which version of it. `dev`, the
    file system it was on, tells a file that is gone from one whose drive or share is
    not mounted (Relinker._source_state); the reach fields (reach_fields), how the
    walk got to it."""
    place = {**path_fields(entry.path), **reach_fields(entry.path, entry.via, entry.direct), "size": entry.size,
             "mtime": entry.mtime, "mtime_ns": entry.mtime_ns}
    if entry.dev >= 0:
        place["dev"] = entry.dev
    return place


def reach_fields(path: str, via: Sequence[str], direct: bool | None) -> dict:
    """`dirs`, every folder above the file: at its own path, and at each path in `via`
    (the paths through links by which a walk reached it), with those paths themselves,
    so that `--in`, a prune of a root and a watcher's deleted link find a file reached
    through a link under them. `via` (reversible: via_value) where there are any, and
    `direct`, whether a root reaches the file at its own path (absent: a point made
    before this was recorded, or from a path not walked)."""
    dirs = ancestor_dirs(path)
    for reached_by in via:
        dirs += [stored(reached_by), *ancestor_dirs(reached_by)]
    fields: dict = {"dirs": list(dict.fromkeys(dirs)) if via else dirs}
    if via:
        fields["via"] = [via_value(reached_by) for reached_by in via]
    if direct is not None:
        fields["direct"] = direct
    return fields


# A `via` path that is not UTF-8 is kept as its bytes, in base64 after this prefix: a
# real path starts with "/", so the two cannot be confused.
_VIA_BYTES = "bytes:"


def via_value(path: str) -> str:
    """A path of `via` as payload text, from which via_path gives it back exactly."""
    if is_text(path):
        return path
    return _VIA_BYTES + base64.b64encode(name_bytes(path)).decode("ascii")


def via_path(value: str) -> str:
    if value.startswith(_VIA_BYTES):
        try:
            return os.fsdecode(base64.b64decode(value[len(_VIA_BYTES):], validate=True))
        except ValueError:
            return ""
    return value


def recorded_reach(payload: dict) -> tuple[list[str], bool | None]:
    """(the paths through links a point's file was reached by, whether a root reaches it
    at its own path: None for a point that does not say)."""
    via = payload.get("via")
    paths = [via_path(v) for v in via if isinstance(v, str)] if isinstance(via, list) else []
    direct = payload.get("direct")
    return [p for p in paths if p], direct if isinstance(direct, bool) else None


def with_reach(payload: dict, via: Sequence[str], direct: bool | None) -> dict:
    """`payload` with its reach fields made these (no `via` where there are none)."""
    rest = {k: v for k, v in payload.items() if k not in ("via", "direct")}
    return {**rest, **reach_fields(path_of(payload), via, direct)}


def merged_reach(payload: dict, entry: FileEntry) -> tuple[tuple[str, ...], bool | None, bool]:
    """(via, direct, whether that differs from what the point records): how the walk
    reached the file now (`entry`) added to what its point records. Reached now
    through a link, a point that does not say whether a root reaches it at its own
    path (made before that was recorded) is taken as reached only through links: a
    deleted link must not leave a private folder's photos searchable. One reached at
    its own path, as before, is left as it is (no rewrite of every older point)."""
    if entry.direct and "via" not in payload and payload.get("direct") is not False:
        return entry.via, entry.direct, False  # the common case: nothing to add, nothing to write
    via, direct = recorded_reach(payload)
    if entry.direct is None:
        return tuple(via), direct, False
    new_via = tuple(dict.fromkeys([*via, *entry.via]))
    new_direct: bool | None = True if entry.direct else direct is True
    if entry.direct and not via and direct is None:
        new_direct = None
    return new_via, new_direct, set(new_via) != set(via) or new_direct != direct


def recorded_dev(payload: dict) -> int | None:
    """The file system a point's file was on (place_payload), None for a point from before."""
    dev = payload.get("dev")
    return dev if isinstance(dev, int) else None


class Relinker:
    """Per ingest call. Counts into `counts` (the call's summary: moved, copied, and
    unchanged for a file only touched; upgraded); says once that it upgrades older
    points. `settle()` waits for the writes in flight: a lookup must not see a point's
    payload from before a write that lands before its vector is copied."""

    def __init__(self, index: Index, say: Callable[[str], None], counts, allow_missing: bool = False,
                 settle: Callable[[], None] = lambda: None):
        self.index = index
        self.say = say
        self.counts = counts
        self.allow_missing = allow_missing
        self.settle = settle
        self._announced: set[str] = set()  # which upgrades this call has said it makes
        self._known: bool | None = None  # whether any point has a fingerprint to match
        # Twins new in this run. Sizes first (the first file of each size, as its path; a
        # second of that size makes both read for their fingerprints), then hash() of
        # the fingerprints of files being embedded (ints: 500k files stay small; a
        # collision only holds a file back for a lookup).
        self._sizes: dict[int, str | None] = {}
        self._queued: set[int] = set()
        self._held: list[FileEntry] = []
        # Where the old paths of matching points are, for the whole run: a folder of
        # 100k files listed once, not once a lookup chunk.
        self._gone = GoneFiles()
        self._empty: dict[str, bool] = {}

    def relink(self, entries: Sequence[FileEntry], ids: Sequence[str] | None = None, hold: bool = True
               ) -> list[FileEntry]:
        """Reuse vectors for `entries` (new or changed files; `ids`, their point ids, when
        the caller has them) whose content has a point; the entries left to embed are
        returned. With `hold`, a file whose content another file of this run is being
        embedded for waits in `take_held()` instead."""
        if not entries:
            return []
        indexed = self._has_fingerprints()
        if not indexed:
            return self._first_of_their_content(entries) if hold else list(entries)
        id_of = dict(zip((e.path for e in entries), ids if ids is not None else (point_id(e.path) for e in entries)))
        prints = {}
        for entry in entries:
            try:
                prints[entry.path] = fingerprint(entry.path, entry.size)
            except OSError:
                pass  # unreadable now: the decoder will say why
        sources: dict[str, list] = {}
        if prints:
            self.settle()
            for record in self.index.find("fingerprint", sorted(set(prints.values())), fields=LOOKUP_FIELDS):
                sources.setdefault(record.payload.get("fingerprint"), []).append(record)
        states: dict[str, str] = {}

        def state(record) -> str:
            if record.id not in states:
                states[record.id] = self._source_state(record)
            return states[record.id]

        preference = {GONE: 0, REPLACED: 1, UNSURE: 2, THERE: 2}
        left: list[FileEntry] = []
        copies: list[tuple[FileEntry, str, object, str]] = []  # (entry, its id, source, moved|copied|refreshed)
        used: set[str] = set()
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
                kind = "refreshed"
            elif source.id not in used and state(source) in (GONE, REPLACED):
                used.add(source.id)
                kind = "moved"
            else:
                kind = "copied"
            copies.append((entry, own, source, kind))
        if copies:
            payloads = [{**place_payload(entry), **{k: v for k, v in source.payload.items() if k in CONTENT_FIELDS}}
                        for entry, _, source, _ in copies]
            fresh = self._fresh_facts(payloads)
            missing = self.index.copy_points(
                [source.id for _, _, source, _ in copies], [own for _, own, _, _ in copies], payloads)
            # A source deleted since the lookup (another writer): that file is embedded.
            left += [entry for entry, own, _, _ in copies if own in missing]
            done = [(own, source, kind) for _, own, source, kind in copies if own not in missing]
            self.counts.moved += sum(kind == "moved" for _, _, kind in done)
            self.counts.copied += sum(kind == "copied" for _, _, kind in done)
            self.counts.unchanged += sum(kind == "refreshed" for _, _, kind in done)
            written = {own for own, _, _ in done}
            self.counts.upgraded += sum(copies[at][1] in written for at in fresh)
            gone = {source.id for _, source, kind in done if kind == "moved" and state(source) == GONE}
            if gone - written:  # after the new points are written: a kill between leaves both, never neither
                self.index.delete(ids=sorted(gone - written))
        return left

    def _first_of_their_content(self, entries: Sequence[FileEntry]) -> list[FileEntry]:
        """An index with no fingerprints yet (a first ingest): nothing to look up, but a
        file byte-identical to one this run embeds waits for its vector. Only files of a
        size met before are read for their fingerprints."""
        left = []
        for entry in entries:
            first = self._sizes.setdefault(entry.size, entry.path)
            if first == entry.path:
                left.append(entry)
                continue
            if first is not None:  # the first of this size: its fingerprint now, once
                self._sizes[entry.size] = None
                try:
                    self._queued.add(hash(fingerprint(first, entry.size)))
                except OSError:
                    pass
            try:
                key = hash(fingerprint(entry.path, entry.size))
            except OSError:
                left.append(entry)  # unreadable now: the decoder will say why
                continue
            if key in self._queued:
                self._held.append(entry)
            else:
                self._queued.add(key)
                left.append(entry)
        return left

    def take_held(self) -> list[FileEntry]:
        """The files held back for a twin being embedded, now that its point is written
        (relink them with hold=False: a twin that failed to embed leaves them to embed)."""
        held, self._held = self._held, []
        self._known = None  # this run's points carry fingerprints now
        return held

    def _source_state(self, record) -> str:
        """Whether the file a matching point was made from is still at its path (THERE:
        this is a copy), gone from its folder (GONE: a move, its point removed), or
        replaced by other content (REPLACED: a move, the point left for that file's own
        ingest). UNSURE, kept as for a copy: gone, but the nearest folder left above it
        is not on the file system the file was on (a drive or share not mounted: its
        mount point is on the one below), or, for a point that does not record one, is
        empty (a mount point). --allow-missing takes UNSURE for GONE."""
        path = record.path
        if self._gone.gone(path):
            if self.allow_missing:
                return GONE
            recorded = recorded_dev(record.payload)
            if recorded is not None:
                return UNSURE if self._gone.elsewhere(path, recorded) else GONE
            return UNSURE if self._is_empty(self._gone.anchor(path)) else GONE
        try:
            st = os.stat(path)
        except OSError:
            return THERE  # listed, but cannot be looked at now: keep its point
        size, mtime_ns = record.payload.get("size"), record.payload.get("mtime_ns")
        if size is None or mtime_ns is None or (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
            return THERE
        try:  # changed by size or time: its bytes tell (only touched: still there, a copy)
            same = fingerprint(path, st.st_size) == record.payload.get("fingerprint")
        except OSError:
            return THERE
        return THERE if same else REPLACED

    def _is_empty(self, folder: str) -> bool:
        if folder not in self._empty:
            try:
                with os.scandir(folder) as found:
                    self._empty[folder] = not any(not e.name.startswith(".") for e in found)
            except OSError:
                self._empty[folder] = True  # cannot look: do not call it a move
        return self._empty[folder]

    def announce(self, reading: bool = True, facts: bool = False) -> None:
        """Says once a call that it upgrades points made by an older clipsearch: by
        reading their files (fingerprints, facts), by reading their EXIF again (`facts`:
        facts an older reader made), or only noting each file's file system."""
        kind = "facts" if facts else "reading" if reading else "dev"
        if kind in self._announced:
            return
        self._announced.add(kind)
        if kind == "reading":
            self.say("adding content fingerprints and photo facts to images indexed before them "
                     "(reading each file once; nothing is embedded again)")
        elif kind == "facts":
            self.say("reading again the photo facts (date, camera, place) of images an older clipsearch indexed, "
                     "for --camera and the other filters (only each file's EXIF; nothing is embedded again)")
        else:
            self.say("noting which file system (drive or share) holds each image indexed before that was "
                     "recorded (nothing is read or embedded again)")

    def refresh_facts(self, points: Sequence[tuple[str, dict, str]]) -> dict[str, dict]:
        """{id: its payload with the facts its file gives now} for the points given as
        (id, payload, path) whose facts an older reader made (facts_outdated), their
        files unchanged since: only the EXIF is read, the vector and the rest of the
        payload stay. A file that cannot be read now (gone, unreadable, not an image any
        more) is left out: its point keeps what it has, and the next run tries again.
        The caller writes them and counts them as upgraded."""
        refreshed = {}
        for pid, payload, path in points:
            facts = _facts_now(path)
            if facts is not None:
                self.announce(facts=True)  # once one is: a file that stays unreadable is not news each run
                refreshed[pid] = _with_facts(payload, facts)
        return refreshed

    def _fresh_facts(self, payloads: list[dict]) -> set[int]:
        """Read again, from the new file (the same bytes), the facts an older reader
        made that moved or copied files take from their point (`payloads`, changed in
        place); the positions of those refreshed."""
        fresh = set()
        for at, payload in enumerate(payloads):
            if facts_outdated(payload):
                facts = _facts_now(path_of(payload))
                if facts is not None:
                    self.announce(facts=True)
                    payloads[at] = _with_facts(payload, facts)
                    fresh.add(at)
        return fresh

    def upgrade(self, entries: Sequence[FileEntry]) -> None:
        """Give points made before fingerprints their fingerprint, photo facts and
        file system, from the file (unchanged since, by size and mtime), keeping their
        vector."""
        if not entries:
            return
        self.announce()
        stored = {r.id: r for r in self.index.retrieve([point_id(e.path) for e in entries], with_vectors=True)}
        ids, vectors, payloads = [], [], []
        for entry in entries:
            record = stored.get(point_id(entry.path))
            if record is None or record.vector is None:
                continue
            try:
                read = header_facts(entry.path)  # None: not an image any more, no facts (the point stays)
                facts = {"fingerprint": fingerprint(entry.path, entry.size), **versioned(read or {})}
                if not covers_whole(entry.size):
                    facts["content_hash"] = content_hash(entry.path)
            except OSError:
                continue  # unreadable now: left as it is, tried again next run
            ids.append(record.id)
            vectors.append(np.asarray(record.vector, dtype=np.float32))
            # The facts read now replace the old ones whole (an older reader kept junk a
            # fresh index drops), and the place gains what older points lack (`dev`).
            kept = {k: v for k, v in record.payload.items() if k not in FACT_FIELDS}
            payloads.append({**kept, **place_payload(entry), **facts})
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


def header_facts(path: str) -> dict | None:
    """Photo facts from the file's header, without decoding its pixels where the format
    allows (JPEG, TIFF, WebP keep EXIF before the image data). None where it is not an
    image any more or a plugin fails on it; OSError where it cannot be read."""
    from PIL import UnidentifiedImageError

    from clipsearch.images import open_image

    try:
        with open_image(path) as img:
            return photo_facts(img)
    except UnidentifiedImageError:
        return None
    except OSError:
        raise
    except Exception:  # a plugin bug
        return None


def _facts_now(path: str) -> dict | None:
    """The file's facts as photo_facts() reads them now; None where it cannot tell."""
    try:
        return header_facts(path)
    except OSError:
        return None


def _with_facts(payload: dict, facts: dict) -> dict:
    """`payload` with these facts, just read, in place of the ones it had (all of them:
    a field the file no longer gives, or gives no sound value for, goes)."""
    return {**{k: v for k, v in payload.items() if k not in FACT_FIELDS}, **versioned(facts)}
